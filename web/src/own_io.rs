//! The layer's own storage buffers behind the page's GPU buffers (`interop.rs`: wgpu cannot
//! bind buffers the page created). A layer keeps the last ones for the next call of the same
//! sizes: calls take turns and the copies run in queue order, so the next call's copy in follows
//! this call's copy out. Apart from `interop.rs`, so that the layer (`api.rs`) can hold them
//! without importing the code that uses them.

/// Input, output and (optionally) mask buffers of one call's sizes.
pub(crate) struct OwnIo {
    pub(crate) input: wgpu::Buffer,
    pub(crate) output: wgpu::Buffer,
    pub(crate) mask: Option<wgpu::Buffer>,
}

impl OwnIo {
    /// Whether these buffers serve a call of `tensor` bytes of input and output and `mask`
    /// bytes of mask (`None`: no mask).
    pub(crate) fn serves(&self, tensor: u64, mask: Option<u64>) -> bool {
        self.input.size() == tensor
            && self.output.size() == tensor
            && self.mask.as_ref().map(wgpu::Buffer::size) == mask
    }

    /// New buffers of those sizes, labelled after the call that makes them.
    pub(crate) fn new(
        ctx: &compositional_attention::GpuContext,
        call: &str,
        tensor: u64,
        mask: Option<u64>,
    ) -> OwnIo {
        let own = |what: &str, bytes: u64| {
            ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(&format!("{call} {what}")),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        };
        OwnIo {
            input: own("input", tensor),
            output: own("output", tensor),
            mask: mask.map(|bytes| own("mask", bytes)),
        }
    }
}
