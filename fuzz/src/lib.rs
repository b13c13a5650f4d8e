//! What every fuzz target shares: an allocator that aborts on any single allocation out of
//! proportion to the input, and the properties a successful load must have.
//!
//! A loader must never allocate by a size the file declares before checking it against the data
//! the file holds. Every legitimate allocation while loading is bounded by a small multiple of the
//! file's length (an `F16` tensor widens to twice its bytes as `f32`; the JSON header's shape
//! lists and maps take a few times their text), so [`guarded`] aborts the process, which libFuzzer
//! reports as a crash and saves the input, on any single allocation or reallocation above
//! `ALLOWANCE × input length + SLACK` bytes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use compositional_attention::checkpoint::Checkpoint;
use compositional_attention::io::Input;
use compositional_attention::weights::{self, Weights};
use compositional_attention::{Error, Result};

/// Bytes a load may allocate at once per byte of input.
pub const ALLOWANCE: usize = 16;
/// Bytes a load may allocate at once beyond `ALLOWANCE × input length`.
pub const SLACK: usize = 1 << 20;

/// The largest single allocation allowed now; `usize::MAX` outside [`guarded`].
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The system allocator with the size check of [`guarded`].
pub struct GuardedAllocator;

#[global_allocator]
static ALLOCATOR: GuardedAllocator = GuardedAllocator;

fn check_size(size: usize) {
    let limit = LIMIT.load(Ordering::Relaxed);
    if size > limit {
        // No allocation from here on: format both numbers into stack buffers.
        let mut stderr = std::io::stderr();
        let mut size_text = [0u8; 20];
        let mut limit_text = [0u8; 20];
        let _ = stderr.write_all(b"\nfuzz: a single allocation of ");
        let _ = stderr.write_all(decimal(size, &mut size_text));
        let _ = stderr.write_all(b" bytes exceeds the input's allowance of ");
        let _ = stderr.write_all(decimal(limit, &mut limit_text));
        let _ = stderr.write_all(b" bytes: a size taken from the file before checking it\n");
        std::process::abort();
    }
}

fn decimal(mut value: usize, buffer: &mut [u8; 20]) -> &[u8] {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &buffer[start..];
        }
    }
}

// SAFETY: every call is forwarded unchanged to `System`; the check only reads an atomic and, on
// failure, writes to stderr and aborts without allocating or unwinding.
unsafe impl GlobalAlloc for GuardedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check_size(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check_size(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check_size(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `load` with every single allocation bounded by `ALLOWANCE × input_len + SLACK` bytes.
pub fn guarded<T>(input_len: usize, load: impl FnOnce() -> T) -> T {
    LIMIT.store(
        input_len.saturating_mul(ALLOWANCE).saturating_add(SLACK),
        Ordering::Relaxed,
    );
    let result = load();
    LIMIT.store(usize::MAX, Ordering::Relaxed);
    result
}

/// An error must format (its `Display` runs in every CLI failure).
fn check_error(error: &Error) {
    assert!(!error.to_string().is_empty());
}

/// What a successful `Weights::from_safetensors(_, causal, prefix)` must hold: a valid
/// configuration with the requested `causal`, every tensor as long as the configuration says,
/// finite values, and the same weights again after a save and a load.
pub fn check_weights(result: &Result<Weights>, causal: bool) {
    let weights = match result {
        Ok(weights) => weights,
        Err(error) => return check_error(error),
    };
    let c = weights.config();
    c.validate().expect("a loaded configuration is valid");
    assert_eq!(c.causal, causal);
    assert_eq!(c.prenorm, weights.norm.is_some());
    assert_eq!(c.bias, weights.biases.is_some());
    assert_eq!(c.selection_mlp.is_some(), weights.selection_mlp.is_some());
    // The library's one parameter table (Weights::parameters): every tensor as long as the
    // configuration's shape for it, finite.
    for p in weights.parameters() {
        assert_eq!(
            p.data.len(),
            p.shape.iter().product::<usize>(),
            "{}",
            p.name
        );
        assert!(p.data.iter().all(|v| v.is_finite()), "{}", p.name);
    }
    let bytes = weights.to_safetensors().expect("loaded weights serialise");
    let again = Weights::from_safetensors(&bytes, causal, "").expect("saved weights load");
    assert_eq!(&again, weights);
    // Six matrices, and the optional groups exactly when the configuration has them.
    let optional =
        2 * c.prenorm as usize + 5 * c.bias as usize + 2 * c.selection_mlp.is_some() as usize;
    assert_eq!(weights.named_tensors().len(), 6 + optional);
    assert!(weights.named_tensors().len() <= weights::PARAMETER_NAMES.len());
}

/// What a successful checkpoint read must hold: a valid general form, and layer weights that
/// are either an error or valid weights that survive a save and a load.
pub fn check_checkpoint(result: &Result<Checkpoint>) {
    let checkpoint = match result {
        Ok(checkpoint) => checkpoint,
        Err(error) => return check_error(error),
    };
    checkpoint.validate().expect("a read checkpoint is valid");
    match checkpoint.layer_weights() {
        Ok(weights) => check_weights(&Ok(weights), checkpoint.form.causal),
        Err(error) => check_error(&error),
    }
}

/// What a successful `Input::from_safetensors` must hold: `x` of `batch · seq · dim` finite
/// values and a mask, if any, of `batch · seq`.
pub fn check_input(result: &Result<Input>) {
    let input = match result {
        Ok(input) => input,
        Err(error) => return check_error(error),
    };
    let tokens = input.batch.checked_mul(input.seq);
    let elements = tokens.and_then(|t| t.checked_mul(input.dim));
    assert_eq!(elements, Some(input.x.len()));
    assert!(input.x.iter().all(|v| v.is_finite()));
    if let Some(mask) = &input.mask {
        assert_eq!(Some(mask.len()), tokens);
    }
}

/// What a successful `read_output` must hold: as many finite values as the shape says.
pub fn check_output(result: &Result<Option<(Vec<usize>, Vec<f32>)>>) {
    match result {
        Ok(Some((shape, values))) => {
            let elements = shape.iter().try_fold(1usize, |n, &s| n.checked_mul(s));
            assert_eq!(elements, Some(values.len()));
            assert!(values.iter().all(|v| v.is_finite()));
        }
        Ok(None) => {}
        Err(error) => check_error(error),
    }
}

/// What a successful `AttentionMaps::from_safetensors` must hold: shapes that agree with the
/// data, increasing query rows below `seq`, finite values, and the same maps after a round trip
/// through `to_safetensors`.
pub fn check_maps(result: &Result<compositional_attention::maps::AttentionMaps>) {
    match result {
        Ok(maps) => {
            let q = maps.queries();
            assert!(q > 0 && maps.seq > 0 && maps.retrievals > 0);
            assert_eq!(maps.search.len(), maps.batch * maps.searches * q * maps.seq);
            assert_eq!(
                maps.selection.len(),
                maps.batch * maps.searches * q * maps.retrievals
            );
            assert!(maps.query_rows.windows(2).all(|w| w[0] < w[1]));
            assert!(maps.query_rows.iter().all(|&row| row < maps.seq));
            assert!(
                maps.search
                    .iter()
                    .chain(&maps.selection)
                    .all(|v| v.is_finite())
            );
            let again = compositional_attention::maps::AttentionMaps::from_safetensors(
                &maps.to_safetensors().expect("a map read back writes"),
            )
            .expect("a written map reads");
            assert_eq!(&again, maps);
        }
        Err(error) => check_error(error),
    }
}
