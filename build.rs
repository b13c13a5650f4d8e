//! Copies the WGSL kernels (`shaders/`, `shaders/common/`, `shaders/io/`) into `OUT_DIR`, where
//! `src/gpu/pipelines.rs` embeds them from. Native builds keep them as written, so `compattn
//! shaders` prints their headers; a wasm32 build strips them (`src/wgsl_strip.rs`).

use std::path::Path;

#[path = "src/wgsl_strip.rs"]
mod wgsl_strip;

fn main() {
    println!("cargo:rerun-if-changed=shaders");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/wgsl_strip.rs");
    let strip = std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32");
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("shaders");
    // A kernel deleted from shaders/ must not stay embeddable from an earlier build's copy.
    if out.exists() {
        std::fs::remove_dir_all(&out).expect("clearing OUT_DIR/shaders");
    }
    for dir in ["", "common", "io"] {
        let source_dir = Path::new("shaders").join(dir);
        let out_dir = out.join(dir);
        std::fs::create_dir_all(&out_dir).expect("creating OUT_DIR/shaders");
        let entries = std::fs::read_dir(&source_dir).expect("reading shaders/");
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.extension().is_none_or(|e| e != "wgsl") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("reading a kernel");
            let text = if strip {
                wgsl_strip::stripped_wgsl(&text)
            } else {
                text
            };
            let name = path.file_name().expect("a file name");
            std::fs::write(out_dir.join(name), text).expect("writing a kernel");
        }
    }
}
