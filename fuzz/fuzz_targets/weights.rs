//! `Weights::from_safetensors(bytes, causal, "")`: a bare layer's `state_dict`, or a reference
//! case file with `input`, `mask` and `output` beside the parameters. Seeds: tests/golden.
#![no_main]

use compositional_attention::weights::Weights;
use compositional_attention_fuzz::{check_weights, guarded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let result = guarded(data.len(), || Weights::from_safetensors(data, false, ""));
    check_weights(&result, false);
});
