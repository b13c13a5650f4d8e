//! An extra zero in a size is a typed error, never an allocator abort (issue 20): every library
//! entry point that sizes host memory or a device buffer by a caller's numbers refuses a size no
//! machine holds before it allocates anything, and the process goes on.
//!
//! The sizes are the ones that aborted `compattn` before (`--seq 100000000`, `--batch 100000
//! --seq 4096`, `--dim 100000000`, `--context 100000000`). Where a refusal rests on Linux's
//! default overcommit heuristic (an allocation larger than memory and swap is refused), the size
//! is also raised past the 47-bit address space, which no overcommit setting grants.

mod common;

use std::time::Instant;

use compositional_attention::checkpoint::{
    Attention, Checkpoint, Form, FormWeights, Format, Linear, Selection, SelectionWeights,
};
use compositional_attention::testing::random_problem;
use compositional_attention::weights::Weights;
use compositional_attention::{
    CompositionalAttention, Config, Error, ExecutionPlan, Precision, Strategy,
};

/// Linux with `vm.overcommit_memory = 1` grants any reservation, so a size that only the
/// default heuristic refuses would be granted (and then filled) there.
fn heuristic_overcommit() -> bool {
    std::fs::read_to_string("/proc/sys/vm/overcommit_memory")
        .map(|mode| mode.trim() != "1")
        .unwrap_or(false)
}

/// Runs `f`, which must fail with a host-memory or limit error, and prints how long it took.
fn refused<T: std::fmt::Debug>(what: &str, f: impl FnOnce() -> Result<T, Error>) -> Error {
    let start = Instant::now();
    let result = f();
    println!(
        "{what}: {:?} in {:.3} s",
        result.as_ref().err(),
        start.elapsed().as_secs_f64()
    );
    match result {
        Err(err @ (Error::HostMemory { .. } | Error::LimitExceeded { .. })) => err,
        other => panic!("{what}: expected a host-memory or limit error, got {other:?}"),
    }
}

#[test]
fn random_weights_of_an_impossible_size_are_an_error() {
    // dim 10^9, (3·8 + 2)·10^7 projection columns: about 1.4·10^18 bytes of parameters.
    let huge = Config::new(1_000_000_000).dim_head(10_000_000);
    let err = refused("Weights::random(dim 1e9, dim_head 1e7)", || {
        Weights::random(huge, 1)
    });
    assert!(err.to_string().contains("random weights"), "{err}");
    if heuristic_overcommit() {
        // The issue's own case: dim 10^8 with the defaults, about 870 GB.
        let err = refused("Weights::random(dim 1e8)", || {
            Weights::random(Config::new(100_000_000), 1)
        });
        assert!(
            matches!(err, Error::HostMemory { bytes, .. } if bytes > 800_000_000_000),
            "{err}"
        );
    }
}

#[test]
fn random_problems_of_an_impossible_size_are_an_error() {
    // batch · seq · dim past the address space on every target.
    let err = refused("random_problem(batch 1e6, seq 1e9, dim 1e6)", || {
        random_problem(
            Config::new(1_000_000).dim_head(4),
            1_000_000,
            1_000_000_000,
            None,
            1.0,
            1,
        )
    });
    assert!(err.to_string().contains("input"), "{err}");
    if heuristic_overcommit() {
        for (batch, seq, dim) in [(100_000, 4096, 1024), (1, 100_000_000, 512)] {
            let what = format!("random_problem(batch {batch}, seq {seq}, dim {dim})");
            let lengths = [seq / 2];
            let err = refused(&what, || {
                random_problem(Config::new(dim), batch, seq, Some(&lengths), 1.0, 7)
            });
            assert!(matches!(err, Error::HostMemory { .. }), "{what}: {err}");
        }
    }
}

#[test]
fn a_plan_too_large_for_the_device_is_refused_before_anything_is_allocated() {
    let ctx = common::gpu();
    for strategy in [Strategy::Fused, Strategy::Unfused] {
        for (batch, seq) in [(1, 100_000_000), (100_000, 4096)] {
            let what = format!("ExecutionPlan::resolve({strategy}, batch {batch}, seq {seq})");
            let err = refused(&what, || {
                ExecutionPlan::resolve(ctx, &Config::new(512), Precision::F32, strategy, batch, seq)
            });
            assert!(matches!(err, Error::LimitExceeded { .. }), "{what}: {err}");
        }
    }
    // A plan that fits says how many host bytes its forward holds: x and y in f32, the mask.
    let config = Config::new(48)
        .dim_head(8)
        .num_searches(3)
        .num_retrievals(2);
    let plan =
        ExecutionPlan::resolve(ctx, &config, Precision::F32, Strategy::Fused, 3, 17).unwrap();
    assert_eq!(plan.host_bytes(&config), 2 * 4 * 3 * 17 * 48 + 3 * 17);
}

#[test]
fn a_layer_asked_for_an_impossible_shape_is_an_error() {
    let config = Config::new(16)
        .dim_head(4)
        .num_searches(2)
        .num_retrievals(3);
    let mut layer =
        CompositionalAttention::new(common::gpu(), &Weights::random(config, 3).unwrap()).unwrap();
    let x = [0.25f32, -1.5, 0.75, 2.0];
    for (batch, seq) in [(100_000, 4096), (1, 100_000_000), (usize::MAX / 2, 3)] {
        let start = Instant::now();
        let result = layer.forward_blocking(&x, batch, seq, None);
        println!(
            "forward(batch {batch}, seq {seq}): {:?} in {:?}",
            result.as_ref().err(),
            start.elapsed()
        );
        assert!(
            matches!(
                result,
                Err(Error::Shape { .. } | Error::LimitExceeded { .. })
            ),
            "batch {batch} × seq {seq}: {result:?}"
        );
        assert!(
            matches!(layer.plan(batch, seq), Err(Error::LimitExceeded { .. })),
            "plan(batch {batch}, seq {seq})"
        );
        assert!(
            layer.kv_cache(batch, seq).is_err(),
            "kv_cache(batch {batch}, max_seq {seq})"
        );
    }
    // The layer still works afterwards.
    let x: Vec<f32> = (0..2 * 5 * 16)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.1)
        .collect();
    let y = layer.forward_blocking(&x, 2, 5, None).unwrap();
    assert!(y.iter().all(|v| v.is_finite()) && y.len() == x.len());
}

/// A checkpoint's layer of `out × inp` whose values are small and varied.
fn linear(out: usize, inp: usize) -> Linear {
    let weight = (0..out * inp)
        .map(|i| ((i % 97) as f32 - 48.0) / 64.0)
        .collect();
    Linear::new(weight, None, out, inp).unwrap()
}

/// Lowering pads every head and value to `max(hd, vd)`: a checkpoint of one 8192-wide search
/// head and 8192 one-wide retrievals (96 MiB of weights) would lower to 2^36 retrieval values
/// (256 GiB). `layer_weights` refuses it as `HostMemory` before the first of them.
#[test]
fn lowering_past_the_machine_is_a_host_memory_error() {
    if !heuristic_overcommit() {
        println!("skipped: vm.overcommit_memory = 1 grants 256 GiB reservations");
        return;
    }
    let (dim, hd, rules) = (1024, 8192, 8192);
    let form = Form {
        format: Format::Xformers,
        dim,
        searches: 1,
        retrievals: rules,
        head_dim: hd,
        value_dim: 1,
        selection_dim: 1,
        selection: Selection::DotProduct,
        q_compose: false,
        prenorm: false,
        layer_norm_eps: 1e-5,
        causal: false,
        attention: Attention::SelfAttention,
        zero_attention: false,
    };
    let checkpoint = Checkpoint {
        form,
        weights: FormWeights {
            norm: None,
            q: linear(hd, dim),
            k: linear(hd, dim),
            v: linear(rules, dim),
            value_q: linear(1, dim),
            selection: SelectionWeights::DotProduct {
                value_k: linear(1, 1),
            },
            out: linear(dim, 1),
            bias_kv: None,
        },
    };
    checkpoint.validate().expect("a well-formed checkpoint");
    let error = refused("Checkpoint::layer_weights (lowered to 256 GiB)", || {
        checkpoint.layer_weights()
    });
    match &error {
        Error::HostMemory { what, bytes, .. } => {
            assert_eq!(what, "the lowered weights");
            assert!(*bytes >= 4 << 36, "{bytes}");
        }
        other => panic!("expected HostMemory, got {other}"),
    }
}
