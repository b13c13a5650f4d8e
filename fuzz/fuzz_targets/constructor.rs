//! The configuration file of `compattn forward --config`: the JSON constructor arguments
//! (`Constructor::parse`), then every golden-variants checkpoint read with them, so that each
//! argument's checks (missing, contradicting, unsupported, unknown) run on real weights. Seeds:
//! fuzz/seeds/constructor (each case's constructor with its "format").
#![no_main]

use compositional_attention::checkpoint::{Checkpoint, CheckpointOptions, Constructor};
use compositional_attention_fuzz::{check_checkpoint, guarded};
use libfuzzer_sys::fuzz_target;

const CHECKPOINTS: [&[u8]; 4] = [
    include_bytes!("../../tests/golden-variants/fairseq/f01_qk_rule.safetensors"),
    include_bytes!("../../tests/golden-variants/fairseq/f02_score_net_padding.safetensors"),
    include_bytes!("../../tests/golden-variants/xformers/x02_separate_proj_qk_rule.safetensors"),
    include_bytes!("../../tests/golden-variants/keras/k02_prenorm.weights.h5"),
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let constructor = match guarded(data.len(), || Constructor::parse(text)) {
        Ok(constructor) => constructor,
        Err(error) => return assert!(!error.to_string().is_empty()),
    };
    for bytes in CHECKPOINTS {
        // A fresh copy each time: a constructor records which arguments a reader asked for.
        let options = CheckpointOptions {
            constructor: Some(constructor.clone()),
            ..Default::default()
        };
        check_checkpoint(&Checkpoint::from_bytes(bytes, &options));
    }
});
