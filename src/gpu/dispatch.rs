//! A kernel bound to its buffers: what a forward pass records, once per dispatch.
//!
//! Every kernel in `shaders/` follows one binding convention: `@binding(0)` is a uniform block
//! of runtime sizes, `@binding(1..)` are storage buffers in the order the kernel's header lists
//! them. That lets one constructor build every bind group, and a workspace build all of them once
//! per shape so that a forward call only records and submits.
//!
//! Workgroups are numbered linearly and spread over the `x` and `y` grid axes, because a single
//! axis stops at 65 535 groups (WebGPU's `max_compute_workgroups_per_dimension`), which a long
//! sequence's row count passes easily; each kernel recovers its linear index as
//! `workgroup_id.x + workgroup_id.y * num_workgroups.x` and returns if it is past the end.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::gpu::memory;
use crate::gpu::pipelines::ShaderVariant;

/// One resource bound to a kernel: a storage buffer or a texel matrix (read or written).
#[derive(Clone, Copy)]
pub(crate) enum Bind<'a> {
    Buffer(&'a wgpu::Buffer),
    Texture(&'a wgpu::TextureView),
}

/// One recorded kernel launch: pipeline, bind group and grid.
pub(crate) struct Dispatch {
    label: String,
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    params: wgpu::Buffer,
    grid: [u32; 3],
}

impl Dispatch {
    /// Binds `params` (the uniform block) and `buffers` (storage, in binding order from 1) to
    /// the pipeline of `variant`, with `groups` workgroups in all.
    pub(crate) async fn new(
        ctx: &GpuContext,
        variant: &ShaderVariant,
        params: &[u8],
        buffers: &[&wgpu::Buffer],
        groups: u64,
    ) -> Result<Dispatch> {
        let binds: Vec<Bind<'_>> = buffers.iter().map(|&b| Bind::Buffer(b)).collect();
        Self::with_binds(ctx, variant, params, &binds, groups).await
    }

    /// [`Dispatch::new`] with textures among the resources.
    pub(crate) async fn with_binds(
        ctx: &GpuContext,
        variant: &ShaderVariant,
        params: &[u8],
        binds: &[Bind<'_>],
        groups: u64,
    ) -> Result<Dispatch> {
        let label = variant.label();
        let grid = linear_grid(ctx, &label, groups)?;
        let pipeline = ctx.pipeline(variant).await?;
        ctx.scoped(&format!("binding {label}"), || {
            let params = memory::uniform_init(ctx, &label, params);
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: params.as_entire_binding(),
            }];
            entries.extend(
                binds
                    .iter()
                    .enumerate()
                    .map(|(i, bind)| wgpu::BindGroupEntry {
                        binding: i as u32 + 1,
                        resource: match bind {
                            Bind::Buffer(buffer) => buffer.as_entire_binding(),
                            Bind::Texture(view) => wgpu::BindingResource::TextureView(view),
                        },
                    }),
            );
            let bind_group = ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&label),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
            Ok(Dispatch {
                label: label.clone(),
                pipeline: pipeline.clone(),
                bind_group,
                params,
                grid,
            })
        })
        .await
    }

    /// Records the launch into an open compute pass.
    pub(crate) fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.grid;
        pass.dispatch_workgroups(x, y, z);
    }

    /// The variant's label (kernel name and constants).
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// Bytes of GPU memory the dispatch itself holds (its parameter block).
    pub(crate) fn bytes(&self) -> u64 {
        self.params.size()
    }
}

/// Spreads `groups` workgroups over `x` then `y`, each at most the device's per-dimension limit.
fn linear_grid(ctx: &GpuContext, what: &str, groups: u64) -> Result<[u32; 3]> {
    let per_dim = ctx.limits().max_compute_workgroups_per_dimension as u64;
    let groups = groups.max(1);
    let x = groups.min(per_dim);
    let y = groups.div_ceil(x);
    if y > per_dim {
        return Err(Error::LimitExceeded {
            what: format!("{what} launch of {groups} workgroups"),
            required: groups,
            limit: per_dim * per_dim,
            limit_name: "max_compute_workgroups_per_dimension (squared)",
            hint: None,
        });
    }
    Ok([x as u32, y as u32, 1])
}

/// Splits `0..total` into consecutive ranges small enough that an invocation running
/// `fixed + per_item · len` loop iterations stays within the device's loop budget
/// ([`GpuContext::loop_budget`]); range lengths are multiples of `align` except the last.
/// Without a budget the whole range is one piece.
pub(crate) fn split_for_loop_budget(
    ctx: &GpuContext,
    what: &str,
    total: usize,
    per_item: u64,
    fixed: u64,
    align: usize,
) -> Result<Vec<std::ops::Range<usize>>> {
    let Some(budget) = ctx.loop_budget() else {
        return Ok(std::iter::once(0..total).collect());
    };
    let align = align.max(1);
    let items = budget.saturating_sub(fixed) / per_item.max(1);
    let chunk = (items as usize / align) * align;
    if chunk == 0 {
        return Err(Error::LimitExceeded {
            what: format!("{what}: loop iterations per invocation"),
            required: fixed + per_item * align as u64,
            limit: budget,
            limit_name: "the driver's loop-iteration cap (GpuContext::loop_budget)",
            hint: Some("smaller head sizes, or a GPU driver without the cap"),
        });
    }
    Ok((0..total.max(1))
        .step_by(chunk)
        .map(|begin| begin..(begin + chunk).min(total))
        .collect())
}

/// Fails with [`Error::LimitExceeded`] if one invocation's `iterations` loop iterations exceed
/// the device's loop budget ([`GpuContext::loop_budget`]); `hint` says what to do instead.
pub(crate) fn check_loop_budget(
    ctx: &GpuContext,
    what: &str,
    iterations: u64,
    hint: &'static str,
) -> Result<()> {
    match ctx.loop_budget() {
        Some(budget) if iterations > budget => Err(Error::LimitExceeded {
            what: format!("{what}: loop iterations per invocation"),
            required: iterations,
            limit: budget,
            limit_name: "the driver's loop-iteration cap (GpuContext::loop_budget)",
            hint: Some(hint),
        }),
        _ => Ok(()),
    }
}
