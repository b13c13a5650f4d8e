//! Attention over a memory on the GPU (issue 19; `src/cross_memory.rs`, `src/layer/cross.rs`):
//! fairseq's cross-attention (encoder-decoder, separate key and value inputs of other widths)
//! and its extra key rows (`add_bias_kv`, `add_zero_attn`, in self-attention too), against the
//! f64 general reference (`reference::general`), on both kernel families:
//!
//! * random problems of every form: odd widths, `n_q = 1`, `n_kv = 1`, batch > 1, padding that
//!   leaves only the extra rows, a fully masked memory, large magnitudes;
//! * decoding through a memory row by row equals the whole cross forward;
//! * the caller's buffers (`encode_memory`, `encode_cross`) equal the host path;
//! * every wrong call is a typed error.
//!
//! The three `golden-variants/fairseq-cross` cases run in `tests/variants.rs`.

mod common;

use common::variants::{form, random_checkpoint};
use common::{assert_close, gpu, gpu_other_profile, read_buffer, seed};
use compositional_attention::checkpoint::{Attention, Checkpoint, Form, Format, Selection};
use compositional_attention::plan::{BLOCKED_MEMORY_MIN_QUERIES, CorePlan, OperandStorage};
use compositional_attention::rng::Rng;
use compositional_attention::testing::normal;
use compositional_attention::{
    CompositionalAttention, Config, Error, ExtraKeys, GpuContext, MemoryDims, Precision, Weights,
    reference,
};

/// The f32 kernels against the f64 reference: the README's bar.
const TOLERANCE: f64 = 1e-4;

/// One random cross-attention problem.
struct Problem {
    checkpoint: Checkpoint,
    batch: usize,
    n_q: usize,
    n_kv: usize,
    /// Separate key and value inputs (`memory_kv`).
    separate: bool,
    mask: Option<Vec<bool>>,
    magnitude: f32,
}

/// A fairseq checkpoint of `attention` with `[hd, vd, sel]` widths, selection and extra rows,
/// biases on every projection.
fn checkpoint(
    attention: Attention,
    widths: [usize; 3],
    selection: Selection,
    extra: (bool, bool),
    seed: u64,
) -> Checkpoint {
    checkpoint_with(attention, widths, selection, extra, true, seed)
}

/// [`checkpoint`] with or without biases (fairseq's `bias=False`).
fn checkpoint_with(
    attention: Attention,
    widths: [usize; 3],
    selection: Selection,
    (bias_kv, zero_attn): (bool, bool),
    bias: bool,
    seed: u64,
) -> Checkpoint {
    let (dim, heads, rules) = (widths[0] * 3, 3, 2);
    let mut checkpoint = random_checkpoint(
        Form {
            attention,
            selection,
            zero_attention: zero_attn,
            ..form(Format::Fairseq, dim, heads, rules, widths)
        },
        bias,
        seed,
    );
    if bias_kv {
        let mut rng = Rng::seed_from_u64(seed ^ 0xb1a5);
        let (attn_dim, embed_dim) = (rules * widths[1], dim);
        assert_eq!(
            attn_dim, embed_dim,
            "add_bias_kv needs attn_dim = embed_dim"
        );
        checkpoint.weights.bias_kv = Some((
            normal(&mut rng, embed_dim, 1.0),
            normal(&mut rng, attn_dim, 1.0),
        ));
    }
    checkpoint.validate().unwrap();
    checkpoint
}

/// An unbiased fairseq checkpoint of `attention` that lowers onto the layer as it is (two
/// searches and two retrievals of `d`, the dot selection), so that an f32 layer on a CPU driver
/// runs its cross-attention through the blocked core (`CorePlan::BlockedMemory`); with the
/// extra rows `extra` (`add_bias_kv` needs `attn_dim = embed_dim`: 2·d both).
fn unbiased_checkpoint(
    attention: Attention,
    d: usize,
    extra: (bool, bool),
    seed: u64,
) -> Checkpoint {
    let (heads, rules) = (2, 2);
    let (bias_kv, zero_attn) = extra;
    let mut checkpoint = random_checkpoint(
        Form {
            attention,
            selection: Selection::DotProduct,
            zero_attention: zero_attn,
            ..form(Format::Fairseq, heads * d, heads, rules, [d, d, d])
        },
        false,
        seed,
    );
    if bias_kv {
        let mut rng = Rng::seed_from_u64(seed ^ 0xb1a5);
        checkpoint.weights.bias_kv = Some((
            normal(&mut rng, heads * d, 1.0),
            normal(&mut rng, rules * d, 1.0),
        ));
    }
    checkpoint.validate().unwrap();
    checkpoint
}

/// Runs `problem` through a memory on both kernel families and compares with the reference.
fn check(what: &str, problem: &Problem, seed: u64) {
    let Problem {
        checkpoint,
        batch,
        n_q,
        n_kv,
        separate,
        mask,
        magnitude,
    } = problem;
    let (batch, n_q, n_kv) = (*batch, *n_q, *n_kv);
    let f = &checkpoint.form;
    let (kdim, vdim) = f.attention.input_dims(f.dim);
    let mut rng = Rng::seed_from_u64(seed);
    let x = normal(&mut rng, batch * n_q * f.dim, *magnitude);
    let keys = normal(&mut rng, batch * n_kv * kdim, *magnitude);
    let values = separate.then(|| normal(&mut rng, batch * n_kv * vdim, *magnitude));
    let expected = reference::general::forward_cross(
        checkpoint,
        &x,
        batch,
        n_q,
        &keys,
        values.as_deref(),
        n_kv,
        mask.as_deref(),
    )
    .unwrap();
    let weights = checkpoint.layer_weights().unwrap();
    for ctx in [gpu(), gpu_other_profile()] {
        let label = format!("{what} [{:?} kernels]", ctx.kernel_family_request());
        let mut layer = CompositionalAttention::new(ctx, &weights).unwrap();
        let memory = match &values {
            Some(values) => layer.memory_kv_blocking(&keys, values, batch, n_kv, mask.as_deref()),
            None => layer.memory_blocking(&keys, batch, n_kv, mask.as_deref()),
        }
        .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!((memory.batch(), memory.len()), (batch, n_kv), "{label}");
        let label = format!("{label} [{}]", expect_core(ctx, &layer, &memory, n_q));
        let y = layer
            .forward_cross_blocking(&x, &memory, n_q)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let stats = assert_close(&label, &y, &expected, TOLERANCE);
        eprintln!("{label}: {stats}");
    }
}

/// The core `forward_cross` runs `n_q` rows over `memory` with, from
/// `BLOCKED_MEMORY_MIN_QUERIES` rows and with the dot selection: the blocked core over the
/// memory's texel rows wherever the layer's self-attention core reads texels (an unbiased
/// layer, heads of whole texels, on a CPU driver with texel loads), else the fused kernel over
/// its cache buffers; the split-KV core for fewer rows and for the MLP score network. Its name,
/// for the label.
fn expect_core(
    ctx: &GpuContext,
    layer: &CompositionalAttention,
    memory: &compositional_attention::Memory,
    n_q: usize,
) -> &'static str {
    let c = layer.config();
    let texels = OperandStorage::of_operands(ctx) == OperandStorage::Texels
        && !c.bias
        && c.dim_head.is_multiple_of(4);
    let core = layer.cross_plan(memory, n_q).unwrap().core();
    let split = c.selection_mlp.is_some() || n_q < BLOCKED_MEMORY_MIN_QUERIES;
    match (split, texels) {
        (true, _) => assert!(matches!(core, CorePlan::Memory(_)), "{core:?}"),
        (false, true) => assert!(matches!(core, CorePlan::BlockedMemory(_)), "{core:?}"),
        (false, false) => assert!(matches!(core, CorePlan::FusedMemory(_)), "{core:?}"),
    }
    core.name()
}

#[test]
fn cross_attention_matches_the_f64_reference_on_random_problems() {
    let (seed, what) = seed("cross_attention_matches_the_f64_reference_on_random_problems");
    let encdec = |memory_dim| Attention::EncoderDecoder { memory_dim };
    let general = |key_dim, value_dim| Attention::General { key_dim, value_dim };
    // Sequence b keeps its first n_kv - 2b positions.
    let padded = |batch: usize, n_kv: usize| -> Vec<bool> {
        (0..batch * n_kv)
            .map(|i| i % n_kv + 2 * (i / n_kv) < n_kv)
            .collect()
    };
    let cases: Vec<(&str, Problem)> = vec![
        (
            "encoder-decoder, memory 13 wide, dot selection, padding, batch 2",
            Problem {
                checkpoint: checkpoint(
                    encdec(13),
                    [5, 5, 5],
                    Selection::DotProduct,
                    (false, false),
                    seed,
                ),
                batch: 2,
                n_q: 9,
                n_kv: 9,
                separate: false,
                mask: Some(padded(2, 9)),
                magnitude: 1.0,
            },
        ),
        (
            "separate key (11) and value (6) inputs, linear score network, odd widths",
            Problem {
                checkpoint: checkpoint(
                    general(11, 6),
                    [6, 5, 3],
                    Selection::LinearScore,
                    (false, false),
                    seed ^ 1,
                ),
                batch: 3,
                n_q: 8,
                n_kv: 4,
                separate: true,
                mask: None,
                magnitude: 1.0,
            },
        ),
        (
            "n_q = 1, n_kv = 1, add_zero_attn",
            Problem {
                checkpoint: checkpoint(
                    encdec(7),
                    [4, 4, 4],
                    Selection::DotProduct,
                    (false, true),
                    seed ^ 2,
                ),
                batch: 2,
                n_q: 1,
                n_kv: 1,
                separate: false,
                mask: None,
                magnitude: 1.0,
            },
        ),
        (
            "padding that leaves only the extra rows (add_bias_kv and add_zero_attn)",
            Problem {
                checkpoint: checkpoint(
                    encdec(10),
                    [4, 6, 4],
                    Selection::DotProduct,
                    (true, true),
                    seed ^ 3,
                ),
                batch: 2,
                n_q: 10,
                n_kv: 5,
                separate: false,
                mask: Some((0..10).map(|i| i >= 5 && i % 2 == 0).collect()),
                magnitude: 1.0,
            },
        ),
        (
            "a fully masked memory without extra rows: uniform over the memory",
            Problem {
                checkpoint: checkpoint(
                    encdec(9),
                    [4, 4, 4],
                    Selection::DotProduct,
                    (false, false),
                    seed ^ 4,
                ),
                batch: 2,
                n_q: 8,
                n_kv: 6,
                separate: false,
                mask: Some((0..12).map(|i| i >= 6 && i % 4 == 0).collect()),
                magnitude: 1.0,
            },
        ),
        (
            "no biases (the blocked core on CPU drivers, past one 128-query tile), padding, \
             batch 2, d 8, n_q 140",
            Problem {
                checkpoint: unbiased_checkpoint(encdec(13), 8, (false, false), seed ^ 10),
                batch: 2,
                n_q: 140,
                n_kv: 19,
                separate: false,
                mask: Some(padded(2, 19)),
                magnitude: 1.0,
            },
        ),
        (
            "no biases, separate key (11) and value (6) inputs, add_zero_attn, n_q = 1, d 12",
            Problem {
                checkpoint: unbiased_checkpoint(general(11, 6), 12, (false, true), seed ^ 11),
                batch: 2,
                n_q: 1,
                n_kv: 23,
                separate: true,
                mask: None,
                magnitude: 1.0,
            },
        ),
        (
            "no biases, values 192 wide (three slices of the blocked core share their scores), \
             a fully masked memory (sequence 1), padding, n_q 70",
            Problem {
                checkpoint: unbiased_checkpoint(encdec(7), 96, (false, false), seed ^ 14),
                batch: 2,
                n_q: 70,
                n_kv: 21,
                separate: false,
                mask: Some((0..42).map(|i| i < 21 && i % 4 != 1).collect()),
                magnitude: 1.0,
            },
        ),
        (
            "no biases, a fully masked memory without extra rows (sequence 1), padding",
            Problem {
                checkpoint: unbiased_checkpoint(encdec(9), 4, (false, false), seed ^ 12),
                batch: 3,
                n_q: 8,
                n_kv: 5,
                separate: false,
                mask: Some((0..15).map(|i| i / 5 != 1 && i % 5 != 3).collect()),
                magnitude: 1.0,
            },
        ),
        (
            "no biases, padding that leaves only the extra rows (add_bias_kv and add_zero_attn), \
             large magnitudes",
            Problem {
                checkpoint: unbiased_checkpoint(encdec(10), 8, (true, true), seed ^ 13),
                batch: 2,
                n_q: 9,
                n_kv: 6,
                separate: false,
                mask: Some((0..12).map(|i| i >= 6 && i % 2 == 0).collect()),
                magnitude: 12.0,
            },
        ),
        (
            "the MLP score network without biases, padding, add_zero_attn",
            Problem {
                checkpoint: checkpoint_with(
                    encdec(11),
                    [4, 5, 3],
                    Selection::MlpScore,
                    (false, true),
                    false,
                    seed ^ 7,
                ),
                batch: 2,
                n_q: 6,
                n_kv: 5,
                separate: false,
                mask: Some(padded(2, 5)),
                magnitude: 1.0,
            },
        ),
        (
            "the MLP score network with biases, separate inputs",
            Problem {
                checkpoint: checkpoint(
                    general(7, 9),
                    [6, 4, 5],
                    Selection::MlpScore,
                    (false, false),
                    seed ^ 8,
                ),
                batch: 1,
                n_q: 4,
                n_kv: 6,
                separate: true,
                mask: None,
                magnitude: 1.0,
            },
        ),
        (
            "large magnitudes, q_compose, n_kv 37 (splits)",
            Problem {
                checkpoint: {
                    let mut c = checkpoint(
                        encdec(16),
                        [8, 8, 8],
                        Selection::DotProduct,
                        (false, false),
                        seed ^ 5,
                    );
                    c.form.q_compose = true;
                    c.weights.value_q = common::variants::random_linear(
                        &mut Rng::seed_from_u64(seed ^ 6),
                        8,
                        8,
                        true,
                    );
                    c.validate().unwrap();
                    c
                },
                batch: 1,
                n_q: 5,
                n_kv: 37,
                separate: false,
                mask: None,
                // As in tests/forward.rs: at 30 an f32 logit's rounding, amplified by a
                // near one-hot softmax, passed 1e-4 for some seeds (conditioning, not a bug).
                magnitude: 12.0,
            },
        ),
    ];
    for (name, problem) in &cases {
        check(&format!("{what}: {name}"), problem, seed);
    }
}

/// A memory longer than one dispatch's key loop on drivers that cap loop iterations: the fused
/// kernel carries its running state between key chunks (O(n) memory, as self-attention's).
#[test]
fn a_long_memory_is_attended_in_key_chunks() {
    let (seed, what) = seed("a_long_memory_is_attended_in_key_chunks");
    let problem = Problem {
        checkpoint: checkpoint(
            Attention::EncoderDecoder { memory_dim: 12 },
            [16, 16, 16],
            Selection::DotProduct,
            (false, true),
            seed,
        ),
        batch: 1,
        n_q: 9,
        n_kv: 1500,
        separate: false,
        mask: Some((0..1500).map(|i| i % 7 != 3).collect()),
        magnitude: 1.0,
    };
    let weights = problem.checkpoint.layer_weights().unwrap();
    let mut chunked = false;
    for ctx in [gpu(), gpu_other_profile()] {
        let mut layer = CompositionalAttention::new(ctx, &weights).unwrap();
        let memory = layer
            .memory_blocking(&vec![0.5; 1500 * 12], 1, 1500, None)
            .unwrap();
        let plan = layer.cross_plan(&memory, 9).unwrap();
        eprintln!("{what}: {}", plan.describe());
        chunked |= matches!(plan.core(), CorePlan::FusedMemory(fused) if fused.splits_keys());
    }
    // On a driver that caps loops (lavapipe, llvmpipe) the CPU family's direct-read tiling
    // splits 1500 keys; a GPU caps nothing.
    if gpu().loop_budget().is_some() {
        assert!(chunked, "{what}: no plan split the memory's keys");
    }
    check(&what, &problem, seed);
}

/// Self-attention with extra key rows runs through `forward` (a memory of the input itself):
/// causal and not, with padding, a fully masked row and batch > 1.
#[test]
fn self_attention_with_extra_rows_matches_the_f64_reference() {
    let (seed, what) = seed("self_attention_with_extra_rows_matches_the_f64_reference");
    // Biased forms, and unbiased ones that run the blocked core on CPU drivers (the causal ones
    // see the extra rows and their own prefix: the cores' causal offset).
    let biased =
        |extra, selection| checkpoint(Attention::SelfAttention, [4, 6, 4], selection, extra, seed);
    let unbiased = |extra| unbiased_checkpoint(Attention::SelfAttention, 8, extra, seed);
    // Values 2 × 40 wide: two slices of the blocked core share their scores.
    let wide = |extra| unbiased_checkpoint(Attention::SelfAttention, 40, extra, seed ^ 3);
    // (seq 140: more than one 128-query tile of the blocked core; `layer.plan` says which core.)
    for (causal, extra, c, seq) in [
        (
            false,
            (true, false),
            biased((true, false), Selection::DotProduct),
            6,
        ),
        (
            true,
            (true, true),
            biased((true, true), Selection::DotProduct),
            11,
        ),
        (
            true,
            (false, true),
            biased((false, true), Selection::LinearScore),
            6,
        ),
        (
            false,
            (false, true),
            biased((false, true), Selection::MlpScore),
            6,
        ),
        (true, (true, true), unbiased((true, true)), 140),
        (true, (false, true), unbiased((false, true)), 9),
        (false, (true, false), unbiased((true, false)), 140),
        (true, (true, true), wide((true, true)), 140),
    ] {
        let mut c = c;
        c.form.causal = causal;
        let batch = 2;
        let x = normal(
            &mut Rng::seed_from_u64(seed ^ 9),
            batch * seq * c.form.dim,
            1.0,
        );
        // Sequence 0 has padding; sequence 1 is fully masked (only the extra rows remain).
        let mask: Vec<bool> = (0..batch * seq).map(|i| i < seq && i % 3 != 2).collect();
        let expected = reference::general::forward(&c, &x, batch, seq, Some(&mask)).unwrap();
        let weights = c.layer_weights().unwrap();
        assert_eq!(weights.config().causal, causal);
        for ctx in [gpu(), gpu_other_profile()] {
            let label = format!(
                "{what}: causal {causal}, extra {extra:?}, seq {seq}, bias {} [{:?}]",
                weights.config().bias,
                ctx.kernel_family_request()
            );
            let mut layer = CompositionalAttention::new(ctx, &weights).unwrap();
            let core = layer.plan(batch, seq).unwrap().core();
            let c = layer.config();
            let expected_core = match (
                c.selection_mlp.is_some() || seq < BLOCKED_MEMORY_MIN_QUERIES,
                OperandStorage::of_operands(ctx) == OperandStorage::Texels && !c.bias,
            ) {
                (true, _) => "memory",
                (false, true) => "blocked memory",
                (false, false) => "fused memory",
            };
            assert_eq!(core.name(), expected_core, "{label}");
            let label = format!("{label} [{}]", core.name());
            let y = layer.forward_blocking(&x, batch, seq, Some(&mask)).unwrap();
            let stats = assert_close(&label, &y, &expected, TOLERANCE);
            eprintln!("{label}: {stats}");
        }
    }
}

/// A decode step of an encoder-decoder model: one query row at a time over the same memory
/// equals the whole target at once.
#[test]
fn decoding_through_a_memory_row_by_row_equals_the_whole_cross_forward() {
    let (seed, what) = seed("decoding_through_a_memory_row_by_row_equals_the_whole_cross_forward");
    let encdec = Attention::EncoderDecoder { memory_dim: 12 };
    // The whole target (9 rows) runs the fused core (biased) or, on CPU drivers, the blocked
    // one (unbiased); each decode row runs the split-KV core.
    let biased = checkpoint(
        encdec,
        [4, 6, 4],
        Selection::DotProduct,
        (true, false),
        seed,
    );
    let unbiased = unbiased_checkpoint(encdec, 8, (true, false), seed);
    for c in [biased, unbiased] {
        decode_rows_case(&what, &c, seed);
    }
}

fn decode_rows_case(what: &str, c: &Checkpoint, seed: u64) {
    let (batch, n_q, n_kv, dim) = (2, 9, 8, c.form.dim);
    let mut rng = Rng::seed_from_u64(seed);
    let x = normal(&mut rng, batch * n_q * dim, 1.0);
    let memory_input = normal(&mut rng, batch * n_kv * 12, 1.0);
    let mask: Vec<bool> = (0..batch * n_kv).map(|i| i % 5 != 3).collect();
    let mut layer = CompositionalAttention::new(gpu(), &c.layer_weights().unwrap()).unwrap();
    let memory = layer
        .memory_blocking(&memory_input, batch, n_kv, Some(&mask))
        .unwrap();
    let whole = layer.forward_cross_blocking(&x, &memory, n_q).unwrap();
    let cores = [
        layer.cross_plan(&memory, n_q).unwrap().core(),
        layer.cross_plan(&memory, 1).unwrap().core(),
    ];
    assert!(matches!(cores[1], CorePlan::Memory(_)), "{what}: {cores:?}");
    for i in 0..n_q {
        let row: Vec<f32> = (0..batch)
            .flat_map(|b| x[(b * n_q + i) * dim..][..dim].to_vec())
            .collect();
        let y = layer.forward_cross_blocking(&row, &memory, 1).unwrap();
        for b in 0..batch {
            let got = &y[b * dim..][..dim];
            let want = &whole[(b * n_q + i) * dim..][..dim];
            let diff = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            // Two cores, two summation orders: f32 rounding of values of order 1.
            assert!(
                diff <= 1e-5,
                "{what}: row {i} of sequence {b} differs by {diff} ({cores:?})"
            );
        }
    }
}

/// `encode_memory` and `encode_cross` on the caller's buffers (NaN-poisoned output) equal
/// `memory` and `forward_cross`.
#[test]
fn callers_buffers_equal_the_host_path() {
    let (seed, what) = seed("callers_buffers_equal_the_host_path");
    let general = Attention::General {
        key_dim: 9,
        value_dim: 7,
    };
    let biased = checkpoint(
        general,
        [4, 4, 4],
        Selection::DotProduct,
        (false, true),
        seed,
    );
    // Unbiased, 9 query rows: the blocked core over the memory's texel rows on CPU drivers.
    let unbiased = unbiased_checkpoint(general, 4, (false, true), seed);
    for (c, n_q) in [(biased, 3), (unbiased, 9)] {
        callers_buffers_case(&format!("{what}, n_q {n_q}"), &c, n_q, seed);
    }
}

fn callers_buffers_case(what: &str, c: &Checkpoint, n_q: usize, seed: u64) {
    use wgpu::util::DeviceExt;
    let (batch, n_kv, dim) = (2, 5, c.form.dim);
    let mut rng = Rng::seed_from_u64(seed);
    let x = normal(&mut rng, batch * n_q * dim, 1.0);
    let keys = normal(&mut rng, batch * n_kv * 9, 1.0);
    let values = normal(&mut rng, batch * n_kv * 7, 1.0);
    let mask: Vec<bool> = (0..batch * n_kv).map(|i| i % 4 != 1).collect();
    let ctx = gpu();
    let mut layer = CompositionalAttention::new(ctx, &c.layer_weights().unwrap()).unwrap();
    let memory = layer
        .memory_kv_blocking(&keys, &values, batch, n_kv, Some(&mask))
        .unwrap();
    let expected: Vec<f64> = layer
        .forward_cross_blocking(&x, &memory, n_q)
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect();
    let device = ctx.device();
    let storage = |label: &str, bytes: &[u8]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        })
    };
    let keys_buffer = storage("keys", bytemuck::cast_slice(&keys));
    let values_buffer = storage("values", bytemuck::cast_slice(&values));
    let words: Vec<u32> = mask.iter().map(|&m| m as u32).collect();
    let mask_buffer = storage("mask", bytemuck::cast_slice(&words));
    let input = storage("input", bytemuck::cast_slice(&x));
    let output = storage(
        "output",
        bytemuck::cast_slice(&vec![f32::NAN; batch * n_q * dim]),
    );
    let mut encoder = device.create_command_encoder(&Default::default());
    let own = layer
        .encode_memory(
            &mut encoder,
            &keys_buffer,
            Some(&values_buffer),
            Some(&mask_buffer),
            batch,
            n_kv,
        )
        .unwrap();
    layer
        .encode_cross(&mut encoder, &input, &own, &output, n_q)
        .unwrap();
    ctx.queue().submit([encoder.finish()]);
    let y = read_buffer(ctx, &output);
    assert_close(what, &y, &expected, 1e-6);
    assert!(own.gpu_bytes() > 0);
}

/// f16 storage of the memory and the projections: within 1e-2 of max|output|.
#[test]
fn an_f16_memory_stays_within_f16_rounding() {
    let ctx = gpu();
    if Precision::F16.check_supported(ctx).is_err() {
        eprintln!("skipped: the adapter lacks shader-f16");
        return;
    }
    let (seed, what) = seed("an_f16_memory_stays_within_f16_rounding");
    let biased = checkpoint(
        Attention::EncoderDecoder { memory_dim: 10 },
        [4, 6, 4],
        Selection::DotProduct,
        (true, true),
        seed,
    );
    // Unbiased, values 2 × 40 wide: on CPU drivers the blocked core over rgba16float rows of
    // the memory, two slices.
    let unbiased = unbiased_checkpoint(
        Attention::EncoderDecoder { memory_dim: 10 },
        40,
        (true, true),
        seed ^ 1,
    );
    // 3 rows: the split-KV core; 9 and 70: the fused kernel reading the f16 cache, or the
    // blocked core.
    for (c, n_q) in [(&biased, 3), (&biased, 9), (&unbiased, 70)] {
        let (batch, n_kv) = (2, 7);
        let mut rng = Rng::seed_from_u64(seed ^ n_q as u64);
        let x = normal(&mut rng, batch * n_q * c.form.dim, 1.0);
        let keys = normal(&mut rng, batch * n_kv * 10, 1.0);
        let expected =
            reference::general::forward_cross(c, &x, batch, n_q, &keys, None, n_kv, None).unwrap();
        let weights = c.layer_weights().unwrap();
        let mut layer =
            CompositionalAttention::with_precision(ctx, &weights, Precision::F16).unwrap();
        let memory = layer.memory_blocking(&keys, batch, n_kv, None).unwrap();
        let label = format!(
            "{what}, n_q {n_q} [{}]",
            expect_core(ctx, &layer, &memory, n_q)
        );
        let y = layer.forward_cross_blocking(&x, &memory, n_q).unwrap();
        eprintln!("{label}: {}", assert_close(&label, &y, &expected, 1e-2));
    }
}

/// Every wrong call is a typed error, before anything runs.
#[test]
fn wrong_calls_are_typed_errors() {
    let (seed, what) = seed("wrong_calls_are_typed_errors");
    let ctx = gpu();
    let cross = Weights::random(
        Config::new(12)
            .dim_head(4)
            .num_searches(3)
            .num_retrievals(2)
            .bias(true)
            .memory(Some(MemoryDims {
                key_dim: 10,
                value_dim: 6,
                encoder_decoder: false,
            })),
        seed,
    )
    .unwrap();
    let self_attention =
        Weights::random(Config::new(12).dim_head(4).num_searches(3), seed).unwrap();
    let mut layer = CompositionalAttention::new(ctx, &cross).unwrap();
    let mut other = CompositionalAttention::new(ctx, &cross).unwrap();
    let mut plain = CompositionalAttention::new(ctx, &self_attention).unwrap();
    let (batch, n_q, n_kv) = (2, 3, 4);
    let x = vec![0.5f32; batch * n_q * 12];
    let keys = vec![0.25f32; batch * n_kv * 10];
    let values = vec![-0.25f32; batch * n_kv * 6];
    let memory = layer
        .memory_kv_blocking(&keys, &values, batch, n_kv, None)
        .unwrap();
    let mismatch = |result: Result<_, Error>, case: &str| match result {
        Err(Error::MemoryMismatch(message)) => eprintln!("{what}: {case}: {message}"),
        Err(other) => panic!("{what}: {case}: expected MemoryMismatch, got {other}"),
        Ok(_) => panic!("{what}: {case}: expected MemoryMismatch, got a result"),
    };
    mismatch(
        other.forward_cross_blocking(&x, &memory, n_q).map(|_| ()),
        "another layer's memory",
    );
    mismatch(
        layer.forward_blocking(&x, batch, n_q, None).map(|_| ()),
        "self-attention of a cross layer",
    );
    mismatch(
        plain.memory_blocking(&x, batch, n_q, None).map(|_| ()),
        "a memory of a self layer",
    );
    mismatch(
        layer.memory_blocking(&keys, batch, n_kv, None).map(|_| ()),
        "one input for kdim ≠ vdim",
    );
    // Generation: a cross layer is not causal; a causal layer with extra rows has no KV cache.
    assert!(matches!(
        layer.kv_cache(batch, 8),
        Err(Error::InvalidConfig {
            field: "causal",
            ..
        })
    ));
    let extra = Weights::random(
        Config::new(12)
            .dim_head(4)
            .num_searches(3)
            .causal(true)
            .extra_keys(ExtraKeys {
                bias_kv: false,
                zero_attn: true,
            }),
        seed,
    )
    .unwrap();
    let extra = CompositionalAttention::new(ctx, &extra).unwrap();
    mismatch(
        extra.kv_cache(batch, 8).map(|_| ()),
        "a KV cache with extra rows",
    );
    assert!(matches!(
        layer.memory_kv_blocking(&keys[1..], &values, batch, n_kv, None),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        layer.memory_kv_blocking(&keys, &values, batch, n_kv, Some(&[true; 3])),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        layer.memory_kv_blocking(&keys, &values, batch, 0, None),
        Err(Error::Shape { .. })
    ));
    let mut poisoned = keys.clone();
    poisoned[5] = f32::NAN;
    assert!(matches!(
        layer.memory_kv_blocking(&poisoned, &values, batch, n_kv, None),
        Err(Error::NonFinite { .. })
    ));
    assert!(matches!(
        layer.forward_cross_blocking(&x[1..], &memory, n_q),
        Err(Error::Shape { .. })
    ));
    // A memory no device holds: an extra zero or three in memory_seq.
    match layer.memory_kv_blocking(&keys, &values, batch, n_kv * 1_000_000_000, None) {
        Err(Error::Shape { .. } | Error::LimitExceeded { .. }) => {}
        other => panic!("{what}: a huge memory: {other:?}"),
    }
    // Causal does not apply over a memory; training does not run these forms.
    assert!(matches!(
        Config::new(12)
            .causal(true)
            .memory(Some(MemoryDims {
                key_dim: 12,
                value_dim: 12,
                encoder_decoder: false,
            }))
            .validate(),
        Err(Error::InvalidConfig {
            field: "causal",
            ..
        })
    ));
    assert!(matches!(
        layer.gradients(),
        Err(Error::TrainingUnsupported { .. })
    ));
    assert!(matches!(
        layer.forward_train_blocking(&x, batch, n_q, None, 1),
        Err(Error::TrainingUnsupported { .. })
    ));
    // The caller's buffers: a missing STORAGE usage is an IoBuffer error.
    let device = ctx.device();
    let unusable = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("no storage"),
        size: (keys.len() * 4) as u64,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    assert!(matches!(
        layer.encode_memory(&mut encoder, &unusable, None, None, batch, n_kv),
        Err(Error::IoBuffer { .. })
    ));
    // A memory is not normalised: prenorm with a memory or extra rows is refused.
    for config in [
        Config::new(12).prenorm(true).memory(Some(MemoryDims {
            key_dim: 12,
            value_dim: 12,
            encoder_decoder: false,
        })),
        Config::new(12).prenorm(true).extra_keys(ExtraKeys {
            bias_kv: false,
            zero_attn: true,
        }),
    ] {
        assert!(
            matches!(
                config.validate(),
                Err(Error::InvalidConfig {
                    field: "prenorm",
                    ..
                })
            ),
            "{what}"
        );
    }
    // Encoder-decoder attention as wide as its input: no self-attention, one memory input.
    let encdec = Weights::random(
        Config::new(12)
            .dim_head(4)
            .num_searches(3)
            .memory(Some(MemoryDims {
                key_dim: 12,
                value_dim: 12,
                encoder_decoder: true,
            })),
        seed,
    )
    .unwrap();
    let mut encdec = CompositionalAttention::new(ctx, &encdec).unwrap();
    let same = vec![0.5f32; batch * n_q * 12];
    mismatch(
        encdec.forward_blocking(&same, batch, n_q, None).map(|_| ()),
        "self-attention of encoder-decoder attention",
    );
    mismatch(
        encdec
            .memory_kv_blocking(&same, &same, batch, n_q, None)
            .map(|_| ()),
        "two inputs for encoder-decoder attention",
    );
    assert!(encdec.memory_blocking(&same, batch, n_q, None).is_ok());
}

/// A layer with a memory and extra rows saves and loads back (shapes, `memory` and
/// `add_zero_attn` metadata, `bias_k`/`bias_v`).
#[test]
fn cross_weights_round_trip_through_safetensors() {
    let (seed, what) = seed("cross_weights_round_trip_through_safetensors");
    let config = Config::new(12)
        .dim_head(4)
        .num_searches(3)
        .num_retrievals(3)
        .bias(true)
        .memory(Some(MemoryDims {
            key_dim: 12,
            value_dim: 12,
            encoder_decoder: false,
        }))
        .extra_keys(ExtraKeys {
            bias_kv: true,
            zero_attn: true,
        });
    let weights = Weights::random(config, seed).unwrap();
    assert!(weights.bias_kv.is_some(), "{what}");
    let back = Weights::from_safetensors(&weights.to_safetensors().unwrap(), false, "").unwrap();
    assert_eq!(back, weights, "{what}");
    // Other widths, encoder-decoder attention, no extra rows.
    let narrow = Weights::random(
        Config::new(12)
            .dim_head(4)
            .num_searches(3)
            .memory(Some(MemoryDims {
                key_dim: 7,
                value_dim: 7,
                encoder_decoder: true,
            })),
        seed,
    )
    .unwrap();
    let bytes = narrow.to_safetensors().unwrap();
    assert_eq!(
        Weights::from_safetensors(&bytes, false, "").unwrap(),
        narrow,
        "{what}"
    );
    // The general form has no lowered memory layer: refused by name, not silently dropped.
    assert!(matches!(
        compositional_attention::checkpoint::Checkpoint::from_bytes(&bytes, &Default::default()),
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(
        compositional_attention::checkpoint::Checkpoint::from_bytes(
            &weights.to_safetensors().unwrap(),
            &Default::default()
        ),
        Err(Error::Unsupported { .. })
    ));
    // A metadata value the crate does not write is an error, not a default.
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = file
        .iter()
        .map(|(name, view)| (name.to_string(), view))
        .collect();
    for (key, value) in [("memory", "yes"), ("add_zero_attn", "True")] {
        // Whichever map type safetensors takes for metadata.
        let mut metadata = Default::default();
        Extend::extend(
            &mut metadata,
            [
                ("memory".to_string(), "encoder_decoder".to_string()),
                (key.to_string(), value.to_string()),
            ],
        );
        let edited = safetensors::serialize(tensors.clone(), Some(metadata)).unwrap();
        assert!(
            matches!(
                Weights::from_safetensors(&edited, false, ""),
                Err(Error::InvalidConfig { .. })
            ),
            "{what}: {key} = {value}"
        );
    }
}

/// fairseq's general attention as wide as its input (neither flag, the constructor's default)
/// runs both ways: `forward` is self-attention on the usual cores, and a memory of other
/// inputs of the same width is attended by `forward_cross`.
#[test]
fn general_attention_as_wide_as_its_input_runs_both_ways() {
    let (seed, what) = seed("general_attention_as_wide_as_its_input_runs_both_ways");
    let c = checkpoint(
        Attention::General {
            key_dim: 12,
            value_dim: 12,
        },
        [4, 4, 4],
        Selection::DotProduct,
        (false, false),
        seed,
    );
    let (batch, seq, n_kv, dim) = (2, 5, 6, c.form.dim);
    let mut rng = Rng::seed_from_u64(seed);
    let x = normal(&mut rng, batch * seq * dim, 1.0);
    let keys = normal(&mut rng, batch * n_kv * dim, 1.0);
    let values = normal(&mut rng, batch * n_kv * dim, 1.0);
    let weights = c.layer_weights().unwrap();
    assert!(weights.config().memory.is_some() && weights.config().plain_self_attention());
    let mut layer = CompositionalAttention::new(gpu(), &weights).unwrap();
    let own = reference::general::forward(&c, &x, batch, seq, None).unwrap();
    let y = layer.forward_blocking(&x, batch, seq, None).unwrap();
    assert_close(&format!("{what}: forward"), &y, &own, TOLERANCE);
    let cross =
        reference::general::forward_cross(&c, &x, batch, seq, &keys, Some(&values), n_kv, None)
            .unwrap();
    let memory = layer
        .memory_kv_blocking(&keys, &values, batch, n_kv, None)
        .unwrap();
    let y = layer.forward_cross_blocking(&x, &memory, seq).unwrap();
    assert_close(&format!("{what}: forward_cross"), &y, &cross, TOLERANCE);
}
