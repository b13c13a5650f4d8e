//! Reliability: determinism, threads sharing a device, and device loss.
//!
//! `GpuContext`, `CompositionalAttention` and `KvCache` are `Send + Sync` on native targets
//! (checked below at compile time). A context is shared by cloning it; a layer is used by one
//! thread at a time (`&mut self`), or shared behind a lock.

mod common;

use std::sync::{Arc, Mutex};

use common::{gpu, seed};
use compositional_attention::testing::random_problem;
use compositional_attention::{
    CompositionalAttention, Config, Error, GpuContext, KvCache, Strategy,
};

fn config() -> Config {
    Config::new(24)
        .dim_head(8)
        .num_searches(3)
        .num_retrievals(2)
}

#[test]
fn the_public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<GpuContext>();
    send_sync::<CompositionalAttention>();
    send_sync::<KvCache>();
    send_sync::<Error>();
}

/// The same input on the same adapter gives bit-identical output, run after run, on every
/// strategy, through a fresh layer as well as the same one.
#[test]
fn forwards_are_bit_identical_run_to_run() {
    let ctx = gpu();
    let (seed, what) = seed("determinism");
    let (weights, input) =
        random_problem(config().causal(true), 2, 29, Some(&[29, 17]), 1.0, seed).unwrap();
    for strategy in Strategy::ALL {
        let mut layer = CompositionalAttention::new(ctx, &weights).unwrap();
        layer.set_strategy(strategy);
        let first = layer.forward_input(&input);
        let first = pollster::block_on(first).unwrap();
        for _ in 0..3 {
            let again = pollster::block_on(layer.forward_input(&input)).unwrap();
            assert_eq!(
                again, first,
                "{what} {strategy}: the same layer changed its output"
            );
        }
        let mut fresh = CompositionalAttention::new(ctx, &weights).unwrap();
        fresh.set_strategy(strategy);
        let fresh = pollster::block_on(fresh.forward_input(&input)).unwrap();
        assert_eq!(fresh, first, "{what} {strategy}: a fresh layer differs");
    }
}

/// Eight threads share one context, each with its own layer, and all of them also use one
/// layer behind a lock: every result is bit-identical to the single-thread result.
#[test]
fn eight_threads_share_one_context() {
    let ctx = gpu();
    let (seed, what) = seed("threads");
    let (weights, input) = random_problem(config(), 2, 21, None, 1.0, seed).unwrap();
    let expected = {
        let mut layer = CompositionalAttention::new(ctx, &weights).unwrap();
        layer.forward_blocking(&input.x, 2, 21, None).unwrap()
    };
    let shared = Arc::new(Mutex::new(
        CompositionalAttention::new(ctx, &weights).unwrap(),
    ));
    let results: Vec<(Vec<f32>, Vec<f32>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (ctx, weights, input, shared) = (ctx.clone(), &weights, &input, shared.clone());
                scope.spawn(move || {
                    let mut own = CompositionalAttention::new(&ctx, weights).unwrap();
                    let mine = own.forward_blocking(&input.x, 2, 21, None).unwrap();
                    let theirs = shared
                        .lock()
                        .unwrap()
                        .forward_blocking(&input.x, 2, 21, None)
                        .unwrap();
                    (mine, theirs)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (mine, theirs)) in results.iter().enumerate() {
        assert_eq!(mine, &expected, "{what}: thread {i}'s own layer");
        assert_eq!(
            theirs, &expected,
            "{what}: thread {i} through the shared layer"
        );
    }
}

/// After `Device::destroy`, every call on the context and its layers is `Error::DeviceLost`:
/// no panic, no hang in poll or map.
#[test]
fn a_lost_device_gives_typed_errors() {
    let ctx = pollster::block_on(GpuContext::new(&common::options())).unwrap();
    let c = config().causal(true);
    let (weights, input) = random_problem(c, 1, 7, None, 1.0, 3).unwrap();
    let mut layer = CompositionalAttention::new(&ctx, &weights).unwrap();
    layer.forward_blocking(&input.x, 1, 7, None).unwrap();
    let mut cache = layer.kv_cache(1, 8).unwrap();
    ctx.device().destroy();
    let lost = |result: Result<(), Error>, what: &str| match result {
        Err(Error::DeviceLost { .. }) => {}
        other => panic!("{what}: expected DeviceLost, got {other:?}"),
    };
    lost(
        layer.forward_blocking(&input.x, 1, 7, None).map(|_| ()),
        "forward",
    );
    assert!(ctx.is_lost());
    lost(
        layer
            .forward_blocking(&input.x[..24 * 3], 1, 3, None)
            .map(|_| ()),
        "a new shape",
    );
    lost(
        CompositionalAttention::new(&ctx, &weights).map(|_| ()),
        "a new layer",
    );
    lost(layer.kv_cache(1, 8).map(|_| ()), "a new cache");
    lost(
        layer
            .prefill_blocking(&mut cache, &input.x, 7, None)
            .map(|_| ()),
        "prefill",
    );
    let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 7 * 24 * 4,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    lost(
        layer.encode(&mut encoder, &buffer, None, &buffer, 1, 7),
        "encode",
    );
}

/// On a caller's device (whose device-lost callback the crate leaves alone) the first readback
/// after the loss reports it, and every call after that.
#[test]
fn a_lost_callers_device_is_reported_by_the_next_readback() {
    let probe = pollster::block_on(GpuContext::new(&common::options())).unwrap();
    let adapter = probe.adapter().clone();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .unwrap();
    let ctx = common::untuned(GpuContext::from_device(&adapter, device.clone(), queue).unwrap());
    let (weights, input) = random_problem(config(), 1, 5, None, 1.0, 4).unwrap();
    let mut layer = CompositionalAttention::new(&ctx, &weights).unwrap();
    layer.forward_blocking(&input.x, 1, 5, None).unwrap();
    device.destroy();
    for attempt in 0..2 {
        match layer.forward_blocking(&input.x, 1, 5, None) {
            Err(Error::DeviceLost { .. }) => {}
            other => panic!("attempt {attempt}: expected DeviceLost, got {other:?}"),
        }
    }
    assert!(ctx.is_lost());
}

/// A wait longer than the context's timeout is an error, not a hang.
#[test]
fn waits_have_a_timeout() {
    let ctx = pollster::block_on(GpuContext::new(&common::options())).unwrap();
    assert_eq!(
        ctx.wait_timeout(),
        compositional_attention::gpu::context::DEFAULT_WAIT_TIMEOUT
    );
    ctx.set_wait_timeout(std::time::Duration::from_millis(1));
    assert_eq!(ctx.wait_timeout().as_millis(), 1);
    // A forward long enough to outlast 1 ms on any device here.
    let (weights, input) =
        random_problem(Config::new(64).dim_head(16), 2, 300, None, 1.0, 5).unwrap();
    let mut layer = CompositionalAttention::new(&ctx, &weights).unwrap();
    layer.prepare_blocking(2, 300).unwrap();
    match layer.forward_blocking(&input.x, 2, 300, None) {
        Err(Error::Timeout { seconds, .. }) => assert!(seconds < 0.01),
        // A device fast enough to finish in 1 ms is no failure of the timeout.
        Ok(_) => eprintln!("the forward finished within 1 ms"),
        Err(other) => panic!("expected a timeout, got {other:?}"),
    }
    ctx.set_wait_timeout(std::time::Duration::from_secs(600));
    layer.forward_blocking(&input.x, 2, 300, None).unwrap();
}
