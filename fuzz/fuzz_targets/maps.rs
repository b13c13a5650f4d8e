//! `AttentionMaps::from_safetensors(bytes)`, as `compattn plot` reads its file; a map it accepts
//! must be consistent and survive a round trip. Seeds: fuzz/seeds/maps.
#![no_main]

use compositional_attention::maps::AttentionMaps;
use compositional_attention_fuzz::{check_maps, guarded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let maps = guarded(data.len(), || AttentionMaps::from_safetensors(data));
    check_maps(&maps);
});
