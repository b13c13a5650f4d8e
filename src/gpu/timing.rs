//! GPU timing: one timestamp pair per compute pass, resolved and read back after the submit.
//!
//! Timestamps bracket each kernel on the GPU's own clock, so host scheduling and the readback
//! do not count. Where the adapter lacks `TIMESTAMP_QUERY`, callers fall back to host wall
//! time around a full submit-and-wait and must say so ([`TimingSource`]).

use crate::error::Result;
use crate::gpu::{GpuContext, memory};

/// Where a duration came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimingSource {
    /// `TIMESTAMP_QUERY` at compute-pass boundaries: device time of the kernels alone.
    GpuTimestamps,
    /// Host wall clock around submit and wait: includes submission and synchronisation.
    HostWallClock,
}

impl TimingSource {
    /// `gpu-timestamps` or `host-wall-clock`.
    pub fn name(&self) -> &'static str {
        match self {
            TimingSource::GpuTimestamps => "gpu-timestamps",
            TimingSource::HostWallClock => "host-wall-clock",
        }
    }
}

/// A query set with a begin and an end timestamp for each of `passes` compute passes.
pub(crate) struct PassTimer {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    passes: u32,
}

impl PassTimer {
    /// `None` when the device has no timestamp queries.
    pub(crate) fn new(ctx: &GpuContext, passes: usize) -> Option<PassTimer> {
        if !ctx.has_timestamps() || passes == 0 {
            return None;
        }
        let count = 2 * passes as u32;
        let bytes = count as u64 * wgpu::QUERY_SIZE as u64;
        let device = ctx.device();
        Some(PassTimer {
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("pass timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count,
            }),
            resolve: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamp resolve"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            readback: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamp readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            passes: passes as u32,
        })
    }

    /// Bytes of GPU memory (the resolve and readback buffers; the query set is not counted).
    pub(crate) fn bytes(&self) -> u64 {
        self.resolve.size() + self.readback.size()
    }

    /// Timestamp writes for pass `index`.
    pub(crate) fn writes(&self, index: usize) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(2 * index as u32),
            end_of_pass_write_index: Some(2 * index as u32 + 1),
        }
    }

    /// Records the resolve and the copy to the readback buffer.
    pub(crate) fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.resolve_query_set(&self.queries, 0..2 * self.passes, &self.resolve, 0);
        encoder.copy_buffer_to_buffer(&self.resolve, 0, &self.readback, 0, self.resolve.size());
    }

    /// Durations of the passes in milliseconds, after the submit that resolved them.
    pub(crate) async fn read_ms(&self, ctx: &GpuContext) -> Result<Vec<f64>> {
        let ticks: Vec<u64> =
            memory::read_mapped(ctx, &self.readback, self.readback.size()).await?;
        let period_ns = ctx.queue().get_timestamp_period() as f64;
        Ok(ticks
            .chunks_exact(2)
            .map(|pair| pair[1].saturating_sub(pair[0]) as f64 * period_ns / 1e6)
            .collect())
    }
}
