//! A kernel bound to its resources: what a forward pass records, once per dispatch.
//!
//! Every kernel in `shaders/` follows one binding convention: `@binding(0)` is a uniform block
//! of runtime sizes, `@binding(1..)` are storage buffers and texel matrices in the order the
//! kernel's header lists them. That lets one constructor build every bind group, and a
//! workspace build all of them once per shape so that a forward call only records.
//!
//! Three buffers of a forward belong to whoever runs it, not to the workspace: the input, the
//! key mask and the output ([`IoSlot`]). A dispatch that binds one of them keeps the slot and
//! builds its bind group when it is recorded with concrete [`IoBuffers`]: the host `forward`
//! passes the workspace's own upload buffers, `CompositionalAttention::encode` the caller's.
//! Every other dispatch is bound once, when it is built.
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
use crate::gpu::texture::TexelUpload;

/// A buffer a forward reads or writes that its caller provides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IoSlot {
    /// `x [batch, seq, dim]` (f32).
    Input,
    /// The key mask `[batch, seq]` (u32, 0 = masked).
    Mask,
    /// `y [batch, seq, dim]` (f32).
    Output,
}

/// The concrete buffers behind the [`IoSlot`]s of one recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IoBuffers {
    pub input: wgpu::Buffer,
    pub mask: wgpu::Buffer,
    pub output: wgpu::Buffer,
}

impl IoBuffers {
    fn get(&self, slot: IoSlot) -> &wgpu::Buffer {
        match slot {
            IoSlot::Input => &self.input,
            IoSlot::Mask => &self.mask,
            IoSlot::Output => &self.output,
        }
    }
}

/// A storage buffer an operation binds: one the workspace owns, or an [`IoSlot`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Buf<'a> {
    Owned(&'a wgpu::Buffer),
    Io(IoSlot),
}

impl<'a> From<&'a wgpu::Buffer> for Buf<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        Buf::Owned(buffer)
    }
}

impl From<IoSlot> for Buf<'_> {
    fn from(slot: IoSlot) -> Self {
        Buf::Io(slot)
    }
}

/// One resource bound to a kernel: a storage buffer or a texel matrix (read or written).
#[derive(Clone, Copy)]
pub(crate) enum Bind<'a> {
    Buffer(Buf<'a>),
    Texture(&'a wgpu::TextureView),
}

impl<'a> From<&'a wgpu::Buffer> for Bind<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        Bind::Buffer(Buf::Owned(buffer))
    }
}

impl<'a> From<Buf<'a>> for Bind<'a> {
    fn from(buffer: Buf<'a>) -> Self {
        Bind::Buffer(buffer)
    }
}

impl<'a> From<&'a wgpu::TextureView> for Bind<'a> {
    fn from(view: &'a wgpu::TextureView) -> Self {
        Bind::Texture(view)
    }
}

/// A bound resource, owned by the dispatch (wgpu handles are reference counted).
#[derive(Clone)]
enum Resource {
    Buffer(wgpu::Buffer),
    Texture(wgpu::TextureView),
    Io(IoSlot),
}

/// One recorded kernel launch: pipeline, resources and grid.
pub(crate) struct Dispatch {
    label: String,
    variant: ShaderVariant,
    /// `None` until [`compile_pending`] compiles it, where it was built through a handle that
    /// defers compiles ([`GpuContext::deferring_compiles`]).
    pipeline: Option<Arc<wgpu::ComputePipeline>>,
    params: wgpu::Buffer,
    /// `@binding(1..)` in order.
    resources: Vec<Resource>,
    /// The bind group, built with the dispatch when it binds no [`IoSlot`].
    bind_group: Option<wgpu::BindGroup>,
    grid: [u32; 3],
}

impl Dispatch {
    /// Binds `params` (the uniform block) and `binds` (in binding order from 1) to the pipeline
    /// of `variant`, with `groups` workgroups in all.
    pub(crate) async fn new(
        ctx: &GpuContext,
        variant: &ShaderVariant,
        params: &[u8],
        binds: &[Bind<'_>],
        groups: u64,
    ) -> Result<Dispatch> {
        let label = variant.label();
        let grid = linear_grid(ctx, &label, groups)?;
        let pipeline = match ctx.cached_pipeline(variant) {
            Some(pipeline) => Some(pipeline),
            None if ctx.defers_compiles() => None,
            None => Some(ctx.pipeline(variant).await?),
        };
        let resources: Vec<Resource> = binds
            .iter()
            .map(|bind| match *bind {
                Bind::Buffer(Buf::Owned(buffer)) => Resource::Buffer(buffer.clone()),
                Bind::Buffer(Buf::Io(slot)) => Resource::Io(slot),
                Bind::Texture(view) => Resource::Texture(view.clone()),
            })
            .collect();
        ctx.scoped(&format!("binding {label}"), || {
            let params = memory::uniform_init(ctx, &label, params)?;
            let mut dispatch = Dispatch {
                label: label.clone(),
                variant: variant.clone(),
                pipeline: pipeline.clone(),
                params,
                resources,
                bind_group: None,
                grid,
            };
            dispatch.bind_unless_io(ctx);
            Ok(dispatch)
        })
        .await
    }

    /// Builds the bind group of a compiled dispatch that binds no [`IoSlot`] (call inside an
    /// error scope).
    fn bind_unless_io(&mut self, ctx: &GpuContext) {
        if self.pipeline.is_some() && !self.binds_io() {
            self.bind_group = self.create_bind_group(ctx, None);
        }
    }

    /// Whether the dispatch binds the caller's input, mask or output.
    pub(crate) fn binds_io(&self) -> bool {
        self.resources
            .iter()
            .any(|resource| matches!(resource, Resource::Io(_)))
    }

    /// The bind group with `io` behind the slots (call inside an error scope: a buffer of
    /// another device is a validation error); `None` before the pipeline is compiled.
    pub(crate) fn create_bind_group(
        &self,
        ctx: &GpuContext,
        io: Option<&IoBuffers>,
    ) -> Option<wgpu::BindGroup> {
        let pipeline = self.pipeline.as_ref()?;
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: self.params.as_entire_binding(),
        }];
        for (index, resource) in self.resources.iter().enumerate() {
            let binding = index as u32 + 1;
            let resource = match resource {
                Resource::Buffer(buffer) => buffer.as_entire_binding(),
                Resource::Texture(view) => wgpu::BindingResource::TextureView(view),
                // Without `io` (only io-free dispatches are bound that way) nothing is bound
                // here; a missing entry would be a validation error, never a wrong result.
                Resource::Io(slot) => match io {
                    Some(io) => io.get(*slot).as_entire_binding(),
                    None => continue,
                },
            };
            entries.push(wgpu::BindGroupEntry { binding, resource });
        }
        Some(ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&self.label),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        }))
    }

    /// Records the launch into an open compute pass with its own bind group, or `io_group` where
    /// it binds the caller's buffers (from [`Dispatch::create_bind_group`]).
    pub(crate) fn record(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        io_group: Option<&wgpu::BindGroup>,
    ) {
        debug_assert!(
            self.pipeline.is_some(),
            "{} was recorded before its pipeline was compiled",
            self.label
        );
        let Some(pipeline) = &self.pipeline else {
            // Unreachable: every builder compiles what it deferred before it hands dispatches
            // out (debug builds stop above). Recording nothing beats a launch without its
            // pipeline, and the error log says so.
            log::error!(
                "{} was recorded before its pipeline was compiled",
                self.label
            );
            return;
        };
        pass.set_pipeline(pipeline);
        if let Some(group) = self.bind_group.as_ref().or(io_group) {
            pass.set_bind_group(0, group, &[]);
        }
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

/// How far [`compile_pending`] is: `compiled` of the `total` distinct pipelines a set of
/// dispatches needs are ready (those compiled earlier count from the start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompileProgress {
    pub compiled: usize,
    pub total: usize,
}

/// Compiles the pipelines that `dispatches` (built through a handle that defers compiles) still
/// need, one variant at a time, reporting `progress` before the first and after each; then
/// binds the dispatches that waited for them.
pub(crate) async fn compile_pending(
    ctx: &GpuContext,
    dispatches: &mut [Dispatch],
    progress: &mut dyn FnMut(CompileProgress),
) -> Result<()> {
    let mut variants: Vec<&ShaderVariant> = Vec::new();
    for dispatch in dispatches.iter() {
        if !variants.contains(&&dispatch.variant) {
            variants.push(&dispatch.variant);
        }
    }
    let total = variants.len();
    let pending: Vec<ShaderVariant> = variants
        .into_iter()
        .filter(|variant| ctx.cached_pipeline(variant).is_none())
        .cloned()
        .collect();
    let ready = total - pending.len();
    progress(CompileProgress {
        compiled: ready,
        total,
    });
    for (done, variant) in (ready + 1..).zip(&pending) {
        ctx.pipeline(variant).await?;
        progress(CompileProgress {
            compiled: done,
            total,
        });
    }
    ctx.scoped("binding the compiled dispatches", || {
        for dispatch in dispatches.iter_mut().filter(|d| d.pipeline.is_none()) {
            dispatch.pipeline = ctx.cached_pipeline(&dispatch.variant);
            dispatch.bind_unless_io(ctx);
        }
        Ok(())
    })
    .await
}

/// One command a training pass records, in order: a kernel launch, or a copy of a matrix into
/// texel rows by the copy engine (`TexelRows::upload`: on lavapipe 3–5× faster than
/// `texture_copy.wgsl`, and training copies every product's operands).
pub(crate) enum Command {
    Kernel(Dispatch),
    Upload(TexelUpload),
}

impl From<Dispatch> for Command {
    fn from(dispatch: Dispatch) -> Self {
        Command::Kernel(dispatch)
    }
}

/// Kernel launches as commands.
pub(crate) fn as_commands(dispatches: Vec<Dispatch>) -> Vec<Command> {
    dispatches.into_iter().map(Command::from).collect()
}

/// Records `commands` in order: each run of kernels into one compute pass labelled `label`, each
/// upload on the encoder between them (io-free dispatches only, as [`record_pass`]).
pub(crate) fn record_commands(
    encoder: &mut wgpu::CommandEncoder,
    label: &str,
    commands: &[Command],
) {
    let mut rest = commands;
    while let Some(first) = rest.first() {
        if let Command::Upload(upload) = first {
            upload.record(encoder);
            rest = &rest[1..];
            continue;
        }
        let end = rest
            .iter()
            .position(|step| matches!(step, Command::Upload(_)))
            .unwrap_or(rest.len());
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(label),
            timestamp_writes: None,
        });
        for step in &rest[..end] {
            if let Command::Kernel(dispatch) = step {
                dispatch.record(&mut pass, None);
            }
        }
        rest = &rest[end..];
    }
}

/// Records `dispatches` in order into one compute pass labelled `label` (io-free dispatches
/// only: each binds its own buffers).
pub(crate) fn record_pass(
    encoder: &mut wgpu::CommandEncoder,
    label: &str,
    dispatches: &[Dispatch],
) {
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(label),
        timestamp_writes: None,
    });
    for dispatch in dispatches {
        dispatch.record(&mut pass, None);
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
