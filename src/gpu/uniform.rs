//! Uniform blocks: one Rust definition per kernel's `Params`, checked against the WGSL.
//!
//! Each kernel's runtime sizes reach it as a uniform `struct Params` declared in its WGSL file
//! and mirrored here by a `#[repr(C)]` Rust struct. [`uniform!`] declares the Rust side and
//! records every member's name and byte offset ([`Uniform::MEMBERS`]); a test in `src/ops/mod.rs`
//! parses each kernel with naga and compares the reflected WGSL members (names, offsets, size)
//! with them, so a field added, reordered or retyped on one side only fails the suite instead of
//! shifting every later field on the GPU.

/// A Rust mirror of a WGSL uniform struct.
pub(crate) trait Uniform: bytemuck::Pod {
    /// `(name, byte offset)` of every member, padding included, in declaration order.
    #[allow(dead_code)]
    const MEMBERS: &'static [(&'static str, usize)];
}

/// Declares a kernel's uniform block: a `#[repr(C)]`, `Pod` struct and its [`Uniform`] members.
/// Padding members start with `_` and are not compared by name.
macro_rules! uniform {
    ($(#[$meta:meta])* struct $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        pub(crate) struct $name {
            $($field: $ty),*
        }

        impl $crate::gpu::uniform::Uniform for $name {
            const MEMBERS: &'static [(&'static str, usize)] =
                &[$((stringify!($field), ::core::mem::offset_of!($name, $field))),*];
        }
    };
}
pub(crate) use uniform;

/// Compares the WGSL `struct Params` of `wgsl` with `U`: every named member at the same offset,
/// in the same order, and the same total size. Returns the differences.
#[cfg(test)]
pub(crate) fn layout_differences<U: Uniform>(label: &str, wgsl: &str) -> Vec<String> {
    let module = match naga::front::wgsl::parse_str(wgsl) {
        Ok(module) => module,
        Err(e) => return vec![format!("{label}: {}", e.emit_to_string(wgsl))],
    };
    let Some(ty) = module
        .types
        .iter()
        .map(|(_, ty)| ty)
        .find(|ty| ty.name.as_deref() == Some("Params"))
    else {
        return vec![format!("{label}: no `struct Params` in the WGSL")];
    };
    let naga::TypeInner::Struct { members, span } = &ty.inner else {
        return vec![format!("{label}: `Params` is not a struct")];
    };
    let named = |name: &str| !name.starts_with('_');
    let wgsl_members: Vec<(String, usize)> = members
        .iter()
        .filter_map(|m| Some((m.name.clone()?, m.offset as usize)))
        .filter(|(name, _)| named(name))
        .collect();
    let rust_members: Vec<(String, usize)> = U::MEMBERS
        .iter()
        .filter(|(name, _)| named(name))
        .map(|(name, offset)| (name.to_string(), *offset))
        .collect();
    let mut differences = Vec::new();
    if wgsl_members != rust_members {
        differences.push(format!(
            "{label}: WGSL members {wgsl_members:?} != Rust members {rust_members:?}"
        ));
    }
    if *span as usize != std::mem::size_of::<U>() {
        differences.push(format!(
            "{label}: WGSL size {span} != Rust size {}",
            std::mem::size_of::<U>()
        ));
    }
    differences
}
