//! The embeddable engine: `encode` on the caller's buffers and encoder, `GpuContext::from_device`
//! on the caller's device, the workspace cache and lazily uploaded weights.
//!
//! Every output buffer is poisoned with NaN before the GPU runs, every input is fresh seeded
//! random data (the seed is in every message), and results are compared with the f64 reference
//! as well as with the host `forward`.

mod common;

use std::sync::{Arc, Mutex};

use common::{assert_close, gpu, read_buffer as read, seed};
use compositional_attention::plan::{CorePlan, ProjectionWeights};
use compositional_attention::testing::random_problem;
use compositional_attention::{
    CompositionalAttention, Config, Error, GpuContext, Strategy, Weights, reference,
};
use wgpu::util::DeviceExt;

const IO: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

fn buffer_with<T: bytemuck::Pod>(
    ctx: &GpuContext,
    data: &[T],
    usage: wgpu::BufferUsages,
) -> wgpu::Buffer {
    ctx.device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("test io"),
            contents: bytemuck::cast_slice(data),
            usage,
        })
}

/// A buffer of `len` f32 NaNs: whatever a kernel fails to write stays NaN.
fn poisoned(ctx: &GpuContext, len: usize) -> wgpu::Buffer {
    buffer_with(ctx, &vec![f32::NAN; len], IO)
}

fn mask_words(mask: Option<&[bool]>, batch: usize, seq: usize) -> Vec<u32> {
    match mask {
        Some(mask) => mask.iter().map(|&a| a as u32).collect(),
        None => vec![1; batch * seq],
    }
}

/// `encode` into the caller's encoder runs nothing before the submit, and then gives what the
/// host `forward` gives (the same recording) and the reference, on both strategies.
#[test]
fn encode_runs_on_submit_and_equals_forward() {
    let ctx = gpu();
    let (seed, what) = seed("encode");
    let config = Config::new(40)
        .dim_head(12)
        .num_searches(3)
        .num_retrievals(2)
        .causal(true);
    let (batch, seq) = (2, 37);
    let (weights, input) = random_problem(config, batch, seq, Some(&[37, 20]), 1.0, seed).unwrap();
    let expected =
        reference::forward(&weights, &input.x, batch, seq, input.mask.as_deref()).unwrap();
    for strategy in Strategy::ALL {
        let mut layer = CompositionalAttention::new(ctx, &weights).unwrap();
        layer.set_strategy(strategy);
        let x = buffer_with(ctx, &input.x, IO);
        // A nonzero word other than 1 also means "may be attended".
        let words: Vec<u32> = mask_words(input.mask.as_deref(), batch, seq)
            .into_iter()
            .map(|w| w * 7)
            .collect();
        let mask = buffer_with(ctx, &words, IO);
        let y = poisoned(ctx, batch * seq * config.dim);
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        layer
            .encode(&mut encoder, &x, Some(&mask), &y, batch, seq)
            .unwrap();
        assert!(
            read(ctx, &y).iter().all(|v| v.is_nan()),
            "{what} {strategy}: encode ran work before the caller submitted"
        );
        ctx.queue().submit([encoder.finish()]);
        let encoded = read(ctx, &y);
        let forward = layer
            .forward_blocking(&input.x, batch, seq, input.mask.as_deref())
            .unwrap();
        assert_eq!(
            encoded, forward,
            "{what} {strategy}: encode and forward differ"
        );
        assert_close(&format!("{what} {strategy}"), &encoded, &expected, 1e-4);
    }
}

/// Two layers chained on the GPU (the second in place on the first's output) in one encoder
/// equal chaining `forward` on the host; without a mask every key is allowed.
#[test]
fn chained_layers_in_one_encoder_equal_host_chaining() {
    let ctx = gpu();
    let (seed, what) = seed("chain");
    let config = Config::new(32)
        .dim_head(8)
        .num_searches(2)
        .num_retrievals(3);
    let (batch, seq) = (3, 19);
    let (w1, input) = random_problem(config, batch, seq, None, 1.0, seed).unwrap();
    let w2 = Weights::random(config.prenorm(true).causal(true), seed ^ 1).unwrap();
    let mut first = CompositionalAttention::new(ctx, &w1).unwrap();
    let mut second = CompositionalAttention::new(ctx, &w2).unwrap();
    let host = {
        let h = first.forward_blocking(&input.x, batch, seq, None).unwrap();
        second.forward_blocking(&h, batch, seq, None).unwrap()
    };
    let x = buffer_with(ctx, &input.x, IO);
    let hidden = poisoned(ctx, batch * seq * config.dim);
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    first
        .encode(&mut encoder, &x, None, &hidden, batch, seq)
        .unwrap();
    second
        .encode(&mut encoder, &hidden, None, &hidden, batch, seq)
        .unwrap();
    ctx.queue().submit([encoder.finish()]);
    assert_eq!(
        read(ctx, &hidden),
        host,
        "{what}: GPU chain and host chain differ"
    );
    // The reference of the chain, from the first layer's reference output.
    let h = reference::forward(&w1, &input.x, batch, seq, None).unwrap();
    let h: Vec<f32> = h.iter().map(|&v| v as f32).collect();
    let expected = reference::forward(&w2, &h, batch, seq, None).unwrap();
    assert_close(&what, &host, &expected, 1e-4);
}

/// Buffers that cannot serve get typed errors naming the operand and the problem.
#[test]
fn bad_io_buffers_are_refused() {
    let ctx = gpu();
    let config = Config::new(16)
        .dim_head(4)
        .num_searches(2)
        .num_retrievals(2);
    let weights = Weights::random(config, 3).unwrap();
    let mut layer = CompositionalAttention::new(ctx, &weights).unwrap();
    let (batch, seq) = (2, 5);
    let n = batch * seq * config.dim;
    let good = poisoned(ctx, n);
    let out = poisoned(ctx, n);
    let small = poisoned(ctx, n - 1);
    let no_storage = buffer_with(ctx, &vec![0.5f32; n], wgpu::BufferUsages::COPY_SRC);
    let mask = buffer_with(ctx, &vec![1u32; batch * seq], IO);
    let short_mask = buffer_with(ctx, &vec![1u32; batch * seq - 1], IO);
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let mut expect_io =
        |input: &wgpu::Buffer, m: Option<&wgpu::Buffer>, output: &wgpu::Buffer, name: &str| {
            match layer.encode(&mut encoder, input, m, output, batch, seq) {
                Err(Error::IoBuffer { name: got, .. }) => assert_eq!(got, name),
                other => panic!("expected an IoBuffer error for {name}, got {other:?}"),
            }
        };
    expect_io(&small, None, &out, "input");
    expect_io(&good, None, &small, "output");
    expect_io(&no_storage, None, &out, "input");
    expect_io(&good, Some(&short_mask), &out, "mask");
    expect_io(&good, Some(&good), &out, "mask");
    let _ = &mask;
    // Zero and overflowing shapes.
    assert!(matches!(
        layer.encode(&mut encoder, &good, None, &out, 0, seq),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        layer.encode(&mut encoder, &good, None, &out, usize::MAX / 2, 3),
        Err(Error::LimitExceeded { .. })
    ));
    assert!(matches!(
        layer.plan(usize::MAX / 2, 3),
        Err(Error::LimitExceeded { .. })
    ));
    // A buffer of another device (of the same wgpu instance, where wgpu can tell devices
    // apart): wgpu's validation error, caught and typed.
    let (other, _queue) =
        pollster::block_on(ctx.adapter().request_device(&Default::default())).unwrap();
    let foreign = other.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("another device's buffer"),
        contents: bytemuck::cast_slice(&vec![0.5f32; n]),
        usage: IO,
    });
    match layer.encode(&mut encoder, &foreign, None, &out, batch, seq) {
        Err(Error::GpuValidation { .. }) => {}
        other => panic!("expected a validation error for another device's buffer, got {other:?}"),
    }
    // Nothing was recorded by the refused calls: the encoder is still valid, and submitting it
    // leaves no error behind for the next call to report. The layer still works afterwards.
    ctx.queue().submit([encoder.finish()]);
    let finite = buffer_with(ctx, &vec![0.25f32; n], IO);
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    layer
        .encode(&mut encoder, &finite, Some(&mask), &out, batch, seq)
        .unwrap();
    ctx.queue().submit([encoder.finish()]);
    assert!(read(ctx, &out).iter().all(|v| v.is_finite()));
}

/// A device the caller opened: the context uses it as it is, keeps the caller's
/// uncaptured-error handler, and still returns its own errors typed.
#[test]
fn from_device_keeps_the_callers_device_and_handler() {
    let options = common::options();
    let probe = pollster::block_on(GpuContext::new(&options)).unwrap();
    let adapter = probe.adapter().clone();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("the caller's device"),
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .unwrap();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = seen.clone();
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
        sink.lock().unwrap().push(e.to_string())
    }));
    let ctx = common::untuned(GpuContext::from_device(&adapter, device.clone(), queue).unwrap());
    assert!(!ctx.owns_device());
    assert_eq!(ctx.limits(), &device.limits());
    assert!(!ctx.has_timestamps() || device.features().contains(wgpu::Features::TIMESTAMP_QUERY));

    let (seed, what) = seed("from_device");
    let config = Config::new(24)
        .dim_head(8)
        .num_searches(2)
        .num_retrievals(2);
    let (weights, input) = random_problem(config, 1, 11, None, 1.0, seed).unwrap();
    let mut layer = CompositionalAttention::new(&ctx, &weights).unwrap();
    let y = layer.forward_blocking(&input.x, 1, 11, None).unwrap();
    let expected = reference::forward(&weights, &input.x, 1, 11, None).unwrap();
    assert_close(&what, &y, &expected, 1e-4);

    // The crate's own failure comes back typed and does not reach the caller's handler.
    let (other, _queue) = pollster::block_on(adapter.request_device(&Default::default())).unwrap();
    let foreign = other.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("another device's buffer"),
        contents: bytemuck::cast_slice(&vec![0.5f32; 11 * 24]),
        usage: IO,
    });
    let out = poisoned(&ctx, 11 * 24);
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    assert!(matches!(
        layer.encode(&mut encoder, &foreign, None, &out, 1, 11),
        Err(Error::GpuValidation { .. })
    ));
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
    // The caller's handler is still installed: an error outside any scope reaches it.
    let _ = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("invalid on purpose"),
        size: 4,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::MAP_WRITE,
        mapped_at_creation: false,
    });
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the caller's handler was replaced"
    );
}

/// A device opened with lower limits than the kernels need is refused, naming the limit.
#[test]
fn from_device_names_what_the_device_lacks() {
    let probe = pollster::block_on(GpuContext::new(&common::options())).unwrap();
    let adapter = probe.adapter().clone();
    let limits = wgpu::Limits {
        max_storage_buffers_per_shader_stage: 4,
        ..wgpu::Limits::downlevel_defaults()
    }
    .using_resolution(adapter.limits());
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: limits,
        ..Default::default()
    }))
    .unwrap();
    match GpuContext::from_device(&adapter, device, queue) {
        Err(Error::DeviceUnsuitable { missing, .. }) => {
            assert!(
                missing.contains("max_storage_buffers_per_shader_stage"),
                "{missing}"
            )
        }
        other => panic!("expected DeviceUnsuitable, got {other:?}"),
    }
}

/// Alternating shapes keep their workspaces (bounded, counted by `gpu_bytes`, releasable), and
/// a layer uploads only the weights its plans read.
#[test]
fn workspaces_stay_alive_bounded_and_releasable() {
    let ctx = gpu();
    let (seed, what) = seed("workspaces");
    let config = Config::new(32)
        .dim_head(8)
        .num_searches(2)
        .num_retrievals(2);
    let weights = Weights::random(config, seed).unwrap();
    let mut layer = CompositionalAttention::new(ctx, &weights).unwrap();
    assert_eq!(
        layer.gpu_bytes(),
        0,
        "nothing is uploaded before a plan needs it"
    );
    let shapes = [(1, 9), (2, 5), (1, 9), (3, 4)];
    let mut outputs = Vec::new();
    for (i, &(batch, seq)) in shapes.iter().enumerate() {
        let (_, input) = random_problem(config, batch, seq, None, 1.0, seed + i as u64).unwrap();
        let y = layer.forward_blocking(&input.x, batch, seq, None).unwrap();
        let expected = reference::forward(&weights, &input.x, batch, seq, None).unwrap();
        assert_close(&format!("{what} {batch}x{seq}"), &y, &expected, 1e-4);
        outputs.push(y);
    }
    assert_eq!(
        layer.workspace_shapes(),
        vec![
            (2, 5, Strategy::Fused),
            (1, 9, Strategy::Fused),
            (3, 4, Strategy::Fused)
        ]
    );
    let fused_only = layer.gpu_bytes();
    assert_eq!(
        layer.plan(1, 9).unwrap().projection_weights(),
        ProjectionWeights::RetrievalFolded
    );
    layer.set_workspace_capacity(2);
    assert_eq!(layer.workspace_shapes().len(), 2);
    assert!(layer.gpu_bytes() < fused_only);
    layer.release_workspaces();
    let weights_only = layer.gpu_bytes();
    assert!(weights_only > 0 && layer.workspace_shapes().is_empty());
    // The unfused plan reads the plain projection and W_rk: they are uploaded now, not before.
    layer.set_strategy(Strategy::Unfused);
    assert_eq!(layer.plan(1, 9).unwrap().core(), CorePlan::Unfused);
    let (_, input) = random_problem(config, 1, 9, None, 1.0, seed).unwrap();
    layer.forward_blocking(&input.x, 1, 9, None).unwrap();
    layer.release_workspaces();
    assert!(
        layer.gpu_bytes() > weights_only,
        "{what}: unfused weights were not uploaded"
    );
}

/// Sizes whose products overflow are typed errors on every path, never a panic or a wrap.
#[test]
fn huge_sizes_are_errors_not_overflows() {
    let huge = Config::new(8).dim_head(usize::MAX / 2).num_searches(3);
    assert!(matches!(
        huge.validate(),
        Err(Error::InvalidConfig {
            field: "dim_head",
            ..
        })
    ));
    let config = Config::new(16)
        .dim_head(4)
        .num_searches(2)
        .num_retrievals(2);
    let weights = Weights::random(config, 5).unwrap();
    let mut layer = CompositionalAttention::new(gpu(), &weights).unwrap();
    for (batch, seq) in [(usize::MAX / 2, 3), (3, usize::MAX), (1 << 40, 1 << 30)] {
        assert!(
            matches!(
                layer.forward_blocking(&[0.5; 16], batch, seq, None),
                Err(Error::LimitExceeded { .. })
            ),
            "forward {batch} x {seq}"
        );
        assert!(
            matches!(
                reference::check_input(&config, &[0.5; 16], batch, seq, None),
                Err(Error::LimitExceeded { .. })
            ),
            "check_input {batch} x {seq}"
        );
        assert!(layer.plan(batch, seq).is_err(), "plan {batch} x {seq}");
    }
    // A shape that fits the address space but not the device is refused before allocation.
    assert!(matches!(
        layer.prepare_blocking(1 << 20, 1 << 12),
        Err(Error::LimitExceeded { .. })
    ));
    assert_eq!(
        layer.gpu_bytes(),
        0,
        "nothing was allocated for a refused shape"
    );
}

/// `prepare_with_progress` compiles a shape's pipelines ahead of its first forward and counts
/// them: once when the total is known, then one by one up to it. The forward after it compiles
/// nothing and equals the reference; another layer of the same shape on the device finds every
/// pipeline ready, and an alive shape reports nothing.
#[test]
fn prepare_counts_the_pipelines_it_compiles() {
    let ctx = pollster::block_on(GpuContext::new(&common::options())).unwrap();
    let (seed, what) = seed("prepare progress");
    let config = Config::new(36)
        .dim_head(10)
        .num_searches(3)
        .num_retrievals(2)
        .causal(true);
    let (batch, seq) = (2, 13);
    let (weights, input) = random_problem(config, batch, seq, Some(&[13, 6]), 1.0, seed).unwrap();
    let expected =
        reference::forward(&weights, &input.x, batch, seq, input.mask.as_deref()).unwrap();
    for (i, strategy) in Strategy::ALL.into_iter().enumerate() {
        let mut layer = CompositionalAttention::new(&ctx, &weights).unwrap();
        layer.set_strategy(strategy);
        let mut seen = Vec::new();
        pollster::block_on(layer.prepare_with_progress(batch, seq, |p| seen.push(p)))
            .unwrap_or_else(|e| panic!("{what} {strategy}: {e}"));
        let (first, last) = (seen[0], seen[seen.len() - 1]);
        // A fresh device compiles the first shape's pipelines here, not before.
        assert!(i > 0 || first.compiled < first.total, "{what}: {seen:?}");
        assert_eq!(last.compiled, last.total, "{what} {strategy}: {seen:?}");
        assert_eq!(
            seen.len(),
            last.total - first.compiled + 1,
            "{what} {strategy}: one report per compile after the first: {seen:?}"
        );
        for pair in seen.windows(2) {
            assert_eq!(pair[1].compiled, pair[0].compiled + 1, "{what}: {seen:?}");
            assert_eq!(pair[1].total, pair[0].total, "{what}: {seen:?}");
        }
        let compiled = ctx.compiled_variants().len();
        let y = layer
            .forward_blocking(&input.x, batch, seq, input.mask.as_deref())
            .unwrap();
        assert_eq!(
            ctx.compiled_variants().len(),
            compiled,
            "{what} {strategy}: the forward compiled a pipeline prepare did not"
        );
        assert_close(&format!("{what} {strategy}"), &y, &expected, 1e-4);

        let mut again = Vec::new();
        pollster::block_on(layer.prepare_with_progress(batch, seq, |p| again.push(p))).unwrap();
        assert!(
            again.is_empty(),
            "{what}: an alive shape reported {again:?}"
        );
        let mut other = CompositionalAttention::new(&ctx, &weights).unwrap();
        other.set_strategy(strategy);
        let mut ready = Vec::new();
        pollster::block_on(other.prepare_with_progress(batch, seq, |p| ready.push(p))).unwrap();
        assert_eq!(
            ready,
            [last],
            "{what} {strategy}: the pipelines were compiled"
        );
    }
}
