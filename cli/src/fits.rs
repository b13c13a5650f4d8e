//! Whether a problem the user sized fits, asked before anything is generated or allocated.
//!
//! The device: the plan ([`ExecutionPlan::resolve`], [`ExecutionPlan::resolve_cached`])
//! refuses what the device cannot hold with [`Error::LimitExceeded`], without allocating. The
//! host: the bytes the command's random problem (and CPU reference) will take are asked of the
//! machine at once (`host_memory::check_available`). Either refusal becomes
//! [`Failure::TooLarge`], which names the size, the limit and the option to change, so a typo
//! in a size is an error instead of an allocator abort.

use compositional_attention::host_memory;
use compositional_attention::plan::ExecutionPlan;
use compositional_attention::{Config, Error, GpuContext, Precision, Strategy};

use crate::common::Failure;
use crate::sizes::SizeOption;

/// A refusal of a size, with the options to change; other errors as they are.
fn blame(error: Error, options: &[SizeOption]) -> Failure {
    match error {
        Error::LimitExceeded { .. } | Error::HostMemory { .. } => Failure::TooLarge {
            error,
            change: SizeOption::blame(options),
        },
        other => Failure::Library(other),
    }
}

/// Refuses a forward of `config` at `batch × seq` with `strategy` that the device cannot run.
pub fn forward(
    ctx: &GpuContext,
    config: &Config,
    precision: Precision,
    strategy: Strategy,
    (batch, seq): (usize, usize),
    options: &[SizeOption],
) -> Result<(), Failure> {
    ExecutionPlan::resolve(ctx, config, precision, strategy, batch, seq)
        .map(drop)
        .map_err(|e| blame(e, options))
}

/// Refuses `seq` new tokens over a KV cache of `capacity` positions that the device cannot hold.
pub fn cached(
    ctx: &GpuContext,
    config: &Config,
    precision: Precision,
    (batch, seq, capacity): (usize, usize, usize),
    options: &[SizeOption],
) -> Result<(), Failure> {
    ExecutionPlan::resolve_cached(ctx, config, precision, batch, seq, capacity)
        .map(drop)
        .map_err(|e| blame(e, options))
}

/// Refuses `seq` query rows over a memory of `positions` key rows that the device cannot hold.
pub fn memory(
    ctx: &GpuContext,
    config: &Config,
    precision: Precision,
    (batch, seq, positions): (usize, usize, usize),
    options: &[SizeOption],
) -> Result<(), Failure> {
    ExecutionPlan::resolve_memory(ctx, config, precision, batch, seq, positions)
        .map(drop)
        .map_err(|e| blame(e, options))
}

/// Refuses `bytes` of host memory for `what` that this machine cannot give.
pub fn host(what: &str, bytes: u64, options: &[SizeOption]) -> Result<(), Failure> {
    host_memory::check_available(what, bytes, None).map_err(|e| blame(e, options))
}

/// Refuses a GEMM benchmark of `size³` whose operands (`size × size` f32, two on the host and
/// three on the device) this device or machine cannot hold.
pub fn gemm(ctx: &GpuContext, size: usize, option: SizeOption) -> Result<(), Failure> {
    let operand = (size as u64).saturating_mul(size as u64).saturating_mul(4);
    let limits = ctx.limits();
    let (limit, limit_name) = if limits.max_buffer_size < limits.max_storage_buffer_binding_size {
        (limits.max_buffer_size, "max_buffer_size")
    } else {
        (
            limits.max_storage_buffer_binding_size,
            "max_storage_buffer_binding_size",
        )
    };
    if operand > limit {
        return Err(blame(
            Error::LimitExceeded {
                what: format!("a {size} × {size} f32 GEMM operand"),
                required: operand,
                limit,
                limit_name,
                hint: None,
            },
            &[option],
        ));
    }
    host(
        &format!("the {size}³ GEMM's random operands"),
        operand.saturating_mul(2),
        &[option],
    )
}
