//! The WGSL a wasm32 build embeds: each kernel without its `//` comments, indentation and blank
//! lines (about half of the text), because the npm package's size is budgeted (web/test.sh: at
//! most 1 000 000 bytes) and a browser never shows a kernel's source. WGSL has no string
//! literals, so `//` always starts a comment, and the kernels use no `/* */` comments. `build.rs`
//! applies it (it includes this file); tests/shaders.rs checks that every variant still
//! validates after it.

/// `text` without comments, indentation and blank lines.
pub fn stripped_wgsl(text: &str) -> String {
    let mut out = String::with_capacity(text.len() / 2);
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("").trim();
        if !code.is_empty() {
            out.push_str(code);
            out.push('\n');
        }
    }
    out
}
