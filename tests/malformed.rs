//! Malformed safetensors files end in a typed error, and no reader allocates by a size the file
//! declares before checking it against the bytes the file holds (RELIABILITY.md, Fuzzing). The
//! fuzz targets (`fuzz/`) check the same on generated files; any input they find that fails goes
//! here as a regression test. No GPU is needed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use compositional_attention::io::{self, Input};
use compositional_attention::weights::{self, Weights};
use compositional_attention::{Error, Result};
use safetensors::SafeTensorError;

thread_local! {
    /// The largest single allocation (or reallocation) of this thread since the last reset.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, recording the largest single allocation per thread (each test runs on
/// a thread of its own).
struct Tracking;

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

fn record(size: usize) {
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to `System`; recording touches only a
// const-initialised thread-local without a destructor, which does not allocate.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `load` and returns its result with the largest single allocation it made.
fn largest_allocation<T>(load: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|largest| largest.set(0));
    let result = load();
    (result, LARGEST.with(Cell::get))
}

/// A safetensors file: the 8-byte little-endian header length, the JSON header, the data.
fn file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// Each reader on `bytes`: the weights loader with and without a prefix, the input reader and
/// the output reader, with the largest single allocation each made.
fn every_reader(bytes: &[u8]) -> Vec<(&'static str, Result<()>, usize)> {
    let (weights, w) = largest_allocation(|| Weights::from_safetensors(bytes, false, "").map(drop));
    let (prefixed, p) =
        largest_allocation(|| Weights::from_safetensors(bytes, false, "layers.0.attn.").map(drop));
    let (input, i) = largest_allocation(|| Input::from_safetensors(bytes).map(drop));
    let (output, o) = largest_allocation(|| io::read_output(bytes).map(drop));
    vec![
        ("Weights::from_safetensors", weights, w),
        ("Weights::from_safetensors with a prefix", prefixed, p),
        ("Input::from_safetensors", input, i),
        ("read_output", output, o),
    ]
}

/// Every reader fails on `bytes` with the safetensors error `expected`, and allocates at most
/// 64 KiB at once (the files here are a few hundred bytes; the sizes they declare are terabytes).
fn assert_refused(bytes: &[u8], expected: fn(&SafeTensorError) -> bool) {
    for (reader, result, largest) in every_reader(bytes) {
        match result {
            Err(Error::Safetensors(error)) if expected(&error) => {}
            other => panic!("{reader}: {other:?}"),
        }
        assert!(
            largest <= 64 << 10,
            "{reader} allocated {largest} bytes at once for a {}-byte file",
            bytes.len()
        );
    }
}

#[test]
fn the_tracker_sees_a_large_allocation() {
    let (v, largest) = largest_allocation(|| vec![1u8; 1 << 20]);
    assert_eq!(v.len(), 1 << 20);
    assert!(largest >= 1 << 20, "{largest}");
}

#[test]
fn tensors_declared_past_the_end_of_the_file() {
    // 2^40 elements each (4 TiB as F32), 16 bytes of data.
    let huge = 1u64 << 40;
    for name in [
        io::INPUT.to_string(),
        io::OUTPUT.to_string(),
        weights::RETRIEVAL_KEYS.to_string(),
        format!("layers.0.attn.{}", weights::RETRIEVAL_KEYS),
    ] {
        let header = format!(
            r#"{{"{name}":{{"dtype":"F32","shape":[{}, {}],"data_offsets":[0,{}]}}}}"#,
            1u64 << 20,
            1u64 << 20,
            4 * huge
        );
        assert_refused(&file(&header, &[0; 16]), |e| {
            matches!(e, SafeTensorError::MetadataIncompleteBuffer)
        });
    }
}

#[test]
fn a_header_length_past_the_end_of_the_file() {
    // Past the 100 MB the safetensors crate allows for a header.
    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    assert_refused(&bytes, |e| matches!(e, SafeTensorError::HeaderTooLarge));
    // Within that limit, but past the end of the file.
    let mut bytes = 99_999_999u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    assert_refused(&bytes, |e| {
        matches!(e, SafeTensorError::InvalidHeaderLength)
    });
}

#[test]
fn a_shape_whose_size_overflows() {
    let header = format!(
        r#"{{"input":{{"dtype":"F32","shape":[{0},{0},{0}],"data_offsets":[0,0]}}}}"#,
        1u64 << 30
    );
    assert_refused(&file(&header, &[]), |e| {
        matches!(e, SafeTensorError::ValidationOverflow)
    });
}

#[test]
fn offsets_that_disagree_with_the_shape() {
    // [4] F32 is 16 bytes; the offsets say 8 and the file holds 8.
    let header = r#"{"input":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#;
    assert_refused(&file(header, &[0; 8]), |e| {
        matches!(e, SafeTensorError::TensorInvalidInfo)
    });
}

#[test]
fn zero_sized_tensors_with_huge_axes_allocate_nothing_large() {
    // [0, 2^62, 2^62]: zero elements, so no data, and a valid file. The input reader accepts it
    // (a forward then refuses it with Error::Shape); the weights loader refuses the zero width.
    let header = format!(
        r#"{{"input":{{"dtype":"F32","shape":[0,{0},{0}],"data_offsets":[0,0]}},"to_retrieval_keys.weight":{{"dtype":"F32","shape":[0,{0}],"data_offsets":[0,0]}}}}"#,
        1u64 << 62
    );
    let bytes = file(&header, &[]);
    for (reader, result, largest) in every_reader(&bytes) {
        assert!(largest <= 64 << 10, "{reader} allocated {largest} bytes");
        match reader {
            "Weights::from_safetensors" => {
                assert!(matches!(result, Err(Error::Shape { .. })), "{result:?}")
            }
            "Weights::from_safetensors with a prefix" => {
                assert!(
                    matches!(result, Err(Error::MissingTensor { .. })),
                    "{result:?}"
                )
            }
            _ => result.unwrap(),
        }
    }
    let input = Input::from_safetensors(&bytes).unwrap();
    assert_eq!((input.batch, input.seq, input.x.len()), (0, 1 << 62, 0));
}

/// A constructor argument of the wrong type is named with its value cut at 80 characters, also
/// when the 80th byte falls inside a multi-byte character (it once panicked there).
#[test]
fn a_long_non_ascii_constructor_value_is_cut_not_a_panic() {
    use compositional_attention::checkpoint::Constructor;
    let value = "é".repeat(100);
    let constructor = Constructor::parse(&format!(r#"{{"num_heads": "{value}"}}"#)).unwrap();
    let error = constructor.usize("num_heads").unwrap_err();
    assert!(matches!(error, Error::InvalidConfig { .. }), "{error}");
    assert!(error.to_string().contains(&"é".repeat(70)), "{error}");
}
