//! `Weights::from_safetensors(bytes, causal, "layers.0.attn.")`: a layer inside a larger model's
//! `state_dict`; tensors outside the prefix are ignored. Seeds: fuzz/seeds/weights_prefix (the
//! golden weights renamed under the prefix) and tests/golden.
#![no_main]

use compositional_attention::weights::Weights;
use compositional_attention_fuzz::{check_weights, guarded};
use libfuzzer_sys::fuzz_target;

/// The prefix of the seeds in fuzz/seeds/weights_prefix.
const PREFIX: &str = "layers.0.attn.";

fuzz_target!(|data: &[u8]| {
    let result = guarded(data.len(), || Weights::from_safetensors(data, true, PREFIX));
    check_weights(&result, true);
});
