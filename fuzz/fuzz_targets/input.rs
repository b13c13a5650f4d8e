//! `Input::from_safetensors(bytes)` and `io::read_output(bytes)` on the same file, as
//! `compattn forward` reads its `--input`. Seeds: tests/golden.
#![no_main]

use compositional_attention::io::{self, Input};
use compositional_attention_fuzz::{check_input, check_output, guarded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = guarded(data.len(), || Input::from_safetensors(data));
    check_input(&input);
    let output = guarded(data.len(), || io::read_output(data));
    check_output(&output);
});
