//! The crate's one error type.
//!
//! Every failure a user can cause (a bad shape, a missing tensor, a size over the device's limits)
//! and every failure the GPU can report (validation, out of memory, a lost device) becomes a typed
//! variant here, so callers can match on it and nothing panics on bad input.

use std::path::PathBuf;

/// Shorthand for `Result<T, compositional_attention::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range (a zero size, a dropout outside `[0, 1)`).
    #[error("invalid configuration: {field} = {value} ({reason})")]
    InvalidConfig {
        /// The configuration field, as named in the constructor (`dim`, `dim_head`, ...).
        field: &'static str,
        /// The offending value, formatted.
        value: String,
        /// What the value must satisfy.
        reason: &'static str,
    },

    /// A problem needs more than the device (or WebGPU) allows.
    #[error(
        "{what} needs {required}, but the device allows at most {limit} ({limit_name}){hint}",
        hint = hint.map(|h| format!("; {h}")).unwrap_or_default()
    )]
    LimitExceeded {
        /// What would be too large (a buffer, a dispatch, a workgroup).
        what: String,
        /// How much is needed.
        required: u64,
        /// The device's limit.
        limit: u64,
        /// The `wgpu::Limits` field that sets the limit.
        limit_name: &'static str,
        /// What the user can do about it, if anything.
        hint: Option<&'static str>,
    },

    /// A host allocation sized by the caller's numbers could not be made (the machine cannot
    /// hold it): nothing was allocated, and the process goes on.
    #[error(
        "{what} needs {bytes} bytes of host memory, which this machine could not allocate{hint}",
        hint = hint.map(|h| format!("; {h}")).unwrap_or_default()
    )]
    HostMemory {
        /// What would have been allocated (`random weights`, `input`, a tensor's name).
        what: String,
        /// The bytes asked for (`u64::MAX` when the size itself overflows).
        bytes: u64,
        /// What the user can change, if anything (a command-line option, a smaller shape).
        hint: Option<&'static str>,
    },

    /// The attention maps asked of `forward_with_maps` would pass their stated size limit.
    #[error(
        "attention maps of {queries} query rows need {bytes} bytes, more than the limit of \
         {limit} bytes (MapsOptions::max_bytes); ask for fewer query rows (MapsOptions::rows) or \
         raise the limit"
    )]
    MapsTooLarge {
        /// Query rows asked for (per batch row).
        queries: usize,
        /// Bytes the maps would take.
        bytes: u64,
        /// The limit, `MapsOptions::max_bytes`.
        limit: u64,
    },

    /// An input tensor has the wrong number of elements or dimensions.
    #[error("{name}: expected shape {expected:?}, found {found:?}")]
    Shape {
        /// Which input (`input`, `mask`, a parameter name).
        name: String,
        /// The shape the layer needs.
        expected: Vec<usize>,
        /// The shape that was given (for flat slices: `[len]`).
        found: Vec<usize>,
    },

    /// A tensor has an element type this crate does not read.
    #[error("{name}: expected dtype {expected}, found {found}")]
    Dtype {
        /// The tensor's name.
        name: String,
        /// The dtypes accepted.
        expected: &'static str,
        /// The dtype found, as safetensors names it.
        found: String,
    },

    /// A required tensor is absent from a safetensors file.
    #[error("missing tensor `{name}`{context}", context = context_suffix(.context))]
    MissingTensor {
        /// The tensor name (PyTorch `state_dict` key).
        name: String,
        /// Where it was looked for.
        context: Option<String>,
    },

    /// A safetensors file holds a tensor the layer does not know.
    #[error(
        "unexpected tensor `{name}` (not a parameter of CompositionalAttention; known names: {known})"
    )]
    UnexpectedTensor {
        /// The unknown name.
        name: String,
        /// The names the loader accepts.
        known: String,
    },

    /// Weights and a requested configuration disagree.
    #[error("configuration mismatch: {0}")]
    ConfigMismatch(String),

    /// A tensor holds NaN or infinity where finite numbers are required.
    #[error("{name} holds a non-finite value at element {index}")]
    NonFinite {
        /// The tensor's name.
        name: String,
        /// The flat index of the first bad element.
        index: usize,
    },

    /// A mask element is neither 0 nor 1.
    #[error("{name}[{index}] = {value}: a mask holds only 0 (masked) and 1 (may be attended)")]
    InvalidMask {
        /// The mask tensor's name.
        name: String,
        /// The flat index of the bad element.
        index: usize,
        /// The byte found.
        value: u8,
    },

    /// The safetensors container itself is malformed.
    #[error("safetensors: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),

    /// A malformed or unsupported HDF5 file (a Keras `.weights.h5`); the message names the
    /// problem and, where known, the byte offset or the dataset's path.
    #[error("HDF5: {0}")]
    Hdf5(String),

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// No GPU adapter matches the request.
    #[error("no GPU adapter found{detail}. {hint}", detail = context_suffix(.detail))]
    NoAdapter {
        /// What was asked for and what exists.
        detail: Option<String>,
        /// How to get an adapter.
        hint: &'static str,
    },

    /// The adapter refused to create a device.
    #[cfg(feature = "gpu")]
    #[error("could not open the GPU device: {0}")]
    RequestDevice(#[from] wgpu::RequestDeviceError),

    /// A device the caller opened lacks what the kernels need
    /// ([`GpuContext::from_device`](crate::GpuContext::from_device)).
    #[error(
        "the device on {adapter} cannot run the kernels: it lacks {missing}; open it with at least \
         these limits (the adapter's own, or wgpu::Limits::default(), usually have them)"
    )]
    DeviceUnsuitable {
        /// The adapter, as `GpuContext::describe` writes it.
        adapter: String,
        /// Every missing limit or capability, with what is needed and what the device has.
        missing: String,
    },

    /// The device lacks an optional feature that what was asked for needs (for example
    /// `shader-f16` for [`Precision::F16`](crate::Precision::F16)).
    #[error(
        "the device on {adapter} lacks the `{feature}` feature, needed for {needed_for}; {hint}"
    )]
    MissingFeature {
        /// The adapter, as `GpuContext::describe` writes it.
        adapter: String,
        /// The WebGPU name of the feature.
        feature: &'static str,
        /// What needs it.
        needed_for: &'static str,
        /// What to do instead.
        hint: &'static str,
    },

    /// A checkpoint uses an option of its implementation that this crate does not implement.
    #[error("{format} option `{option}` is not supported: {reason}")]
    Unsupported {
        /// The checkpoint's format (`keras`, `fairseq`, `xformers`, `lucidrains`).
        format: &'static str,
        /// The option, under its original name (with its value where that matters).
        option: String,
        /// Why, and what to do instead.
        reason: &'static str,
    },

    /// A buffer passed to `CompositionalAttention::encode` cannot serve as the named operand.
    #[error("{name} buffer: {problem}")]
    IoBuffer {
        /// `input`, `mask` or `output`.
        name: &'static str,
        /// What is wrong: too small (with both sizes), missing usage.
        problem: String,
    },

    /// A browser build must prepare a shape (an awaited call) before recording it synchronously.
    #[error(
        "no workspace for batch {batch} × seq {seq} with the {strategy} strategy: in a browser, \
         await CompositionalAttention::prepare(batch, seq) before encode"
    )]
    NotPrepared {
        /// Batch size.
        batch: usize,
        /// Sequence length.
        seq: usize,
        /// The strategy's name.
        strategy: &'static str,
    },

    /// The device is lost (destroyed, reset by the driver, or a browser tab's GPU process went
    /// away): every later call on its context and layers returns this. Open a new context.
    #[error("the GPU device is lost ({reason}); {operation} did not run: open a new GpuContext")]
    DeviceLost {
        /// What the host was doing.
        operation: String,
        /// The driver's or wgpu's reason.
        reason: String,
    },

    /// A wait on the GPU passed the context's timeout (`GpuContext::set_wait_timeout`).
    #[error("waiting for the GPU during {operation} passed the timeout of {seconds} s")]
    Timeout {
        /// What the host was waiting for.
        operation: String,
        /// The timeout, in seconds.
        seconds: f64,
    },

    /// A result differs from the f64 reference by more than the tolerance (verification and
    /// soak runs).
    #[error("result differs from the reference: {0}")]
    ReferenceMismatch(String),

    /// Appending to a KV cache would pass its capacity; nothing was appended.
    #[error(
        "the KV cache holds {len} of {capacity} positions and cannot take {appended} more; \
         create it with a larger max_seq, or clear it"
    )]
    CacheFull {
        /// Positions cached.
        len: usize,
        /// Positions the call would append.
        appended: usize,
        /// The cache's `max_seq`.
        capacity: usize,
    },

    /// A KV cache used with a layer (or batch) it was not made for.
    #[error("KV cache: {0}")]
    CacheMismatch(String),

    /// Cross-attention asked of the wrong layer or memory: a [`Memory`](crate::Memory) of
    /// another layer, a self-attention layer asked to attend a memory, or a cross-attention
    /// layer asked for self-attention.
    #[error("memory: {0}")]
    MemoryMismatch(String),

    /// Training objects used with a layer they were not made for: another layer's
    /// `Activations`, `Gradients` or `AdamW`, or a gradient of the wrong length.
    #[error("training: {0}")]
    TrainingMismatch(String),

    /// A layer whose form cannot train: f16 storage, or the MLP score network.
    #[error("{what} cannot train: {reason}")]
    TrainingUnsupported {
        /// What was asked to train.
        what: String,
        /// Why, and what to do instead.
        reason: &'static str,
    },

    /// wgpu reported a validation error (a bug or a limit the host did not check).
    #[error("GPU validation error during {operation}: {message}")]
    GpuValidation {
        /// What the host was doing.
        operation: String,
        /// wgpu's description.
        message: String,
    },

    /// The device ran out of memory.
    #[error("GPU out of memory during {operation}: {message}")]
    GpuOutOfMemory {
        /// What the host was doing.
        operation: String,
        /// wgpu's description.
        message: String,
    },

    /// The device failed in a way WebGPU does not classify (a lost device, a driver failure).
    #[error("GPU internal error during {operation}: {message}")]
    GpuInternal {
        /// What the host was doing.
        operation: String,
        /// wgpu's description.
        message: String,
    },

    /// Reading results back from the GPU failed.
    #[error("GPU readback failed: {0}")]
    Readback(String),
}

fn context_suffix(context: &Option<String>) -> String {
    context
        .as_ref()
        .map(|c| format!(" ({c})"))
        .unwrap_or_default()
}

impl Error {
    /// Wraps a wgpu error caught by an error scope, naming the operation that raised it.
    #[cfg(feature = "gpu")]
    pub(crate) fn from_wgpu(operation: &str, error: wgpu::Error) -> Self {
        let operation = operation.to_string();
        match error {
            wgpu::Error::OutOfMemory { source } => Error::GpuOutOfMemory {
                operation,
                message: source.to_string(),
            },
            wgpu::Error::Validation { description, .. } => Error::GpuValidation {
                operation,
                message: description,
            },
            wgpu::Error::Internal { description, .. } => Error::GpuInternal {
                operation,
                message: description,
            },
        }
    }

    pub(crate) fn shape(name: impl Into<String>, expected: &[usize], found: &[usize]) -> Self {
        Error::Shape {
            name: name.into(),
            expected: expected.to_vec(),
            found: found.to_vec(),
        }
    }
}
