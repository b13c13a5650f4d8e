//! `Checkpoint::from_bytes(bytes, options)`: a checkpoint of any format (lucidrains, Keras
//! safetensors or `.weights.h5`, fairseq, xformers), with the constructor arguments and prefix
//! the first byte picks, then its lowering onto the layer's weights. Seeds: tests/golden and
//! tests/golden-variants (safetensors and .weights.h5).
#![no_main]

use compositional_attention::checkpoint::{Checkpoint, CheckpointOptions, Constructor};
use compositional_attention_fuzz::{check_checkpoint, guarded};
use libfuzzer_sys::fuzz_target;

/// Constructor arguments of the golden-variants cases, and none.
const CONSTRUCTORS: [Option<&str>; 6] = [
    None,
    Some(r#"{"format": "fairseq", "num_heads": 4}"#),
    Some(r#"{"format": "fairseq", "num_heads": 3, "num_rules": 3, "selection_dim": 5}"#),
    Some(r#"{"format": "xformers", "num_heads": 4}"#),
    Some(r#"{"format": "xformers", "num_heads": 3, "q_compose": true}"#),
    Some(r#"{"format": "keras", "name": "compositional_attention"}"#),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let options = CheckpointOptions {
        constructor: CONSTRUCTORS[selector as usize % CONSTRUCTORS.len()]
            .map(|json| Constructor::parse(json).expect("a valid constructor")),
        causal: selector & 0x80 != 0,
        prefix: if selector & 0x40 != 0 {
            "layers.0.attn.".into()
        } else {
            String::new()
        },
        ..Default::default()
    };
    let result = guarded(bytes.len(), || Checkpoint::from_bytes(bytes, &options));
    check_checkpoint(&result);
});
