//! Generation: a KV cache, chunked prefill and token-by-token decode with the split-KV kernels.
//!
//! The contract (SPEC.md, "Generation"): position `t`'s output, from prefill, chunked prefill or
//! decode, is row `t` of the causal forward over the sequence up to `t` with the same key mask.
//! That is row `t` of the full causal forward, except for a row whose every causal key is
//! masked: the full forward gives it the mean of all `n` values, generation the mean of values
//! `0..=t` (the future does not exist yet). Every case checks both: against the f64 reference on
//! the prefix, and against the GPU forward on the full sequence for every other row.

mod common;

use common::{assert_close, gpu, seed};
use compositional_attention::testing::{ErrorStats, random_problem};
use compositional_attention::{CompositionalAttention, Config, Error, Weights, reference};

/// The f64 reference of position `t` of every sequence: row `t` of the causal forward over the
/// prefix `0..=t` (`[batch, dim]`).
fn prefix_reference(
    weights: &Weights,
    x: &[f32],
    mask: Option<&[bool]>,
    batch: usize,
    seq: usize,
    t: usize,
) -> Vec<f64> {
    let dim = weights.config().dim;
    let n = t + 1;
    let x_prefix: Vec<f32> = (0..batch)
        .flat_map(|b| x[b * seq * dim..][..n * dim].iter().copied())
        .collect();
    let mask_prefix: Option<Vec<bool>> = mask.map(|m| {
        (0..batch)
            .flat_map(|b| m[b * seq..][..n].iter().copied())
            .collect()
    });
    let rows: Vec<(usize, usize)> = (0..batch).map(|b| (b, t)).collect();
    reference::forward_rows(weights, &x_prefix, batch, n, mask_prefix.as_deref(), &rows).unwrap()
}

/// Rows `range` of `[batch, seq, dim]` as `[batch, range.len(), dim]`.
fn rows_of<T: Copy>(
    x: &[T],
    batch: usize,
    seq: usize,
    width: usize,
    range: std::ops::Range<usize>,
) -> Vec<T> {
    (0..batch)
        .flat_map(|b| {
            x[(b * seq + range.start) * width..(b * seq + range.end) * width]
                .iter()
                .copied()
        })
        .collect()
}

/// Generates `seq` positions in `chunks` (prefill chunks, then single-token decode steps for
/// the rest) and checks every position as the module docs say.
fn check(
    config: Config,
    batch: usize,
    seq: usize,
    lengths: Option<&[usize]>,
    chunks: &[usize],
    name: &str,
) {
    let ctx = gpu();
    let (seed, what) = seed(name);
    let (weights, input) = random_problem(config, batch, seq, lengths, 1.0, seed).unwrap();
    let dim = config.dim;
    let mask = input.mask.as_deref();
    let mut layer = CompositionalAttention::new(ctx, &weights).unwrap();
    let forward = layer.forward_blocking(&input.x, batch, seq, mask).unwrap();
    let mut cache = layer.kv_cache(batch, seq + 3).unwrap();
    let mut generated = vec![f32::NAN; batch * seq * dim];
    let mut t = 0;
    let steps = chunks.iter().copied().chain(std::iter::repeat(1));
    for chunk in steps {
        if t >= seq {
            break;
        }
        let chunk = chunk.min(seq - t);
        let x = rows_of(&input.x, batch, seq, dim, t..t + chunk);
        let m = mask.map(|m| rows_of(m, batch, seq, 1, t..t + chunk));
        let y = if chunk == 1 {
            layer.decode_blocking(&mut cache, &x, m.as_deref()).unwrap()
        } else {
            layer
                .prefill_blocking(&mut cache, &x, chunk, m.as_deref())
                .unwrap()
        };
        for b in 0..batch {
            for i in 0..chunk {
                generated[(b * seq + t + i) * dim..][..dim]
                    .copy_from_slice(&y[(b * chunk + i) * dim..][..dim]);
            }
        }
        t += chunk;
        assert_eq!(cache.len(), t);
    }
    let scale = forward.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    for t in 0..seq {
        let expected = prefix_reference(&weights, &input.x, mask, batch, seq, t);
        let got = rows_of(&generated, batch, seq, dim, t..t + 1);
        let stats = ErrorStats::compare(&got, &expected);
        assert!(
            got.iter().all(|v| v.is_finite()) && stats.max_abs <= 1e-4 * scale.max(1e-6),
            "{what}: position {t} against the prefix reference: {stats}"
        );
        // Rows with an allowed causal key equal the full forward's.
        for b in 0..batch {
            let fully_masked = mask.is_some_and(|m| m[b * seq..][..=t].iter().all(|&a| !a));
            if fully_masked {
                continue;
            }
            let row = |v: &[f32]| v[(b * seq + t) * dim..][..dim].to_vec();
            let diff = row(&generated)
                .iter()
                .zip(row(&forward))
                .fold(0f32, |m, (a, f)| m.max((a - f).abs()));
            assert!(
                diff as f64 <= 1e-4 * scale.max(1e-6),
                "{what}: position {t} of sequence {b} differs from the forward by {diff}"
            );
        }
    }
    // The whole output against the reference on the prefixes, reported like every test.
    let expected: Vec<f64> = {
        let mut all = vec![0.0; batch * seq * dim];
        for t in 0..seq {
            let e = prefix_reference(&weights, &input.x, mask, batch, seq, t);
            for b in 0..batch {
                all[(b * seq + t) * dim..][..dim].copy_from_slice(&e[b * dim..][..dim]);
            }
        }
        all
    };
    assert_close(&what, &generated, &expected, 1e-4);
}

fn config(dim: usize, d: usize, s: usize, r: usize) -> Config {
    Config::new(dim)
        .dim_head(d)
        .num_searches(s)
        .num_retrievals(r)
        .causal(true)
}

#[test]
fn prefill_then_decode_batch_of_two() {
    check(
        config(24, 8, 3, 2),
        2,
        21,
        None,
        &[7],
        "prefill 7 then decode",
    );
}

#[test]
fn chunked_prefill_odd_head() {
    check(
        config(18, 6, 2, 3),
        2,
        19,
        None,
        &[5, 4, 3],
        "chunked prefill, d 6",
    );
}

/// Biased projections (fairseq's and xformers' form): the biases reach the cached keys and
/// values through the projection, and the output bias every step.
#[test]
fn biased_projections_prefill_and_decode() {
    check(
        config(20, 5, 2, 2).bias(true),
        2,
        14,
        Some(&[14, 9]),
        &[6],
        "biased projections",
    );
}

#[test]
fn decode_only_one_search_one_retrieval() {
    check(
        config(12, 4, 1, 1),
        1,
        9,
        None,
        &[],
        "decode from the first token, s 1 r 1",
    );
}

/// Different live lengths per sequence from the masks: leading padding (rows whose every
/// causal key is masked), trailing padding, none; prenorm.
#[test]
fn ragged_masks_and_fully_masked_rows() {
    let lengths = [13, 9, 5];
    let config = config(20, 4, 2, 2).prenorm(true);
    // random_problem's masks pad at the end; check also leading padding below.
    check(config, 3, 13, Some(&lengths), &[4], "ragged masks");
    let ctx = gpu();
    let (seed, what) = seed("leading padding");
    let (weights, input) = random_problem(config, 2, 11, None, 1.0, seed).unwrap();
    let mask: Vec<bool> = (0..22).map(|i| i % 11 >= 3 || i < 11).collect();
    let mut layer = CompositionalAttention::new(ctx, &weights).unwrap();
    let mut cache = layer.kv_cache(2, 11).unwrap();
    let y = layer
        .prefill_blocking(&mut cache, &input.x, 11, Some(&mask))
        .unwrap();
    for t in 0..11 {
        let expected = prefix_reference(&weights, &input.x, Some(&mask), 2, 11, t);
        let got = rows_of(&y, 2, 11, 20, t..t + 1);
        assert_close(&format!("{what} position {t}"), &got, &expected, 1e-4);
    }
}

/// Contexts past one split of the cache (several splits per query, combined by the reduce).
#[test]
fn contexts_past_one_split() {
    check(
        config(16, 8, 2, 2),
        1,
        300,
        None,
        &[150, 100],
        "300 positions over several splits",
    );
}

/// Shapes drawn from the test's seed around `decode_attention`, the kernel that runs without
/// runtime bounds checks (`BoundsChecks::Proven`): head widths of either vector width, one to
/// four searches and retrievals, batches with ragged masks, prefill chunks of any length and
/// contexts across split boundaries. An index out of range would read a neighbour's data (or
/// the poison of an unwritten partial) and fail the comparison.
#[test]
fn random_shapes_around_the_unchecked_kernel() {
    let (seed, what) = seed("random decode shapes");
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut draw = |n: usize| {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    };
    for case in 0..4 {
        let d = [1, 3, 4, 5, 8, 12][draw(6)];
        let (s, r) = (1 + draw(4), 1 + draw(4));
        let dim = 4 + draw(28);
        let batch = 1 + draw(3);
        let seq = 2 + draw(if case == 0 { 200 } else { 40 });
        let lengths: Vec<usize> = (0..batch).map(|_| 1 + draw(seq)).collect();
        let chunks = [1 + draw(seq), 1 + draw(seq)];
        let name = format!(
            "{what}: case {case}, dim {dim}, d {d}, s {s}, r {r}, b {batch}, n {seq}, \
             lengths {lengths:?}, chunks {chunks:?}"
        );
        eprintln!("{name}");
        check(
            config(dim, d, s, r),
            batch,
            seq,
            Some(&lengths),
            &chunks,
            &name,
        );
    }
}

/// The causal reference cases of tests/golden, generated token by token.
#[test]
fn golden_causal_case_token_by_token() {
    let ctx = gpu();
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/causal.safetensors"
    ))
    .unwrap();
    let weights = Weights::from_safetensors(&bytes, true, "").unwrap();
    let input = compositional_attention::Input::from_safetensors(&bytes).unwrap();
    let (batch, seq, dim) = (input.batch, input.seq, input.dim);
    let mut layer = CompositionalAttention::new(ctx, &weights).unwrap();
    let mut cache = layer.kv_cache(batch, seq).unwrap();
    let expected =
        reference::forward(&weights, &input.x, batch, seq, input.mask.as_deref()).unwrap();
    let mut generated = vec![f32::NAN; batch * seq * dim];
    for t in 0..seq {
        let x = rows_of(&input.x, batch, seq, dim, t..t + 1);
        let m = input
            .mask
            .as_ref()
            .map(|m| rows_of(m, batch, seq, 1, t..t + 1));
        let y = layer.decode_blocking(&mut cache, &x, m.as_deref()).unwrap();
        for b in 0..batch {
            generated[(b * seq + t) * dim..][..dim].copy_from_slice(&y[b * dim..][..dim]);
        }
    }
    assert_close("golden causal, token by token", &generated, &expected, 1e-4);
}

/// Steps recorded back to back into one encoder on the caller's buffers equal `decode`.
#[test]
fn encode_decode_steps_in_one_encoder() {
    use wgpu::util::DeviceExt;
    let ctx = gpu();
    let (seed, what) = seed("encode_decode");
    let config = config(16, 4, 2, 2);
    let (weights, input) = random_problem(config, 2, 6, None, 1.0, seed).unwrap();
    let mut layer = CompositionalAttention::new(ctx, &weights).unwrap();
    let mut host_cache = layer.kv_cache(2, 6).unwrap();
    let mut host = Vec::new();
    for t in 0..6 {
        let x = rows_of(&input.x, 2, 6, 16, t..t + 1);
        host.push(layer.decode_blocking(&mut host_cache, &x, None).unwrap());
    }
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    let inputs: Vec<wgpu::Buffer> = (0..6)
        .map(|t| {
            ctx.device()
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: None,
                    contents: bytemuck::cast_slice(&rows_of(&input.x, 2, 6, 16, t..t + 1)),
                    usage,
                })
        })
        .collect();
    let outputs: Vec<wgpu::Buffer> = (0..6)
        .map(|_| {
            ctx.device()
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: None,
                    contents: bytemuck::cast_slice(&[f32::NAN; 32]),
                    usage,
                })
        })
        .collect();
    let mut cache = layer.kv_cache(2, 6).unwrap();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    for t in 0..6 {
        layer
            .encode_decode(&mut cache, &mut encoder, &inputs[t], None, &outputs[t], 1)
            .unwrap();
    }
    assert_eq!(cache.len(), 6);
    ctx.queue().submit([encoder.finish()]);
    for t in 0..6 {
        let got = common::read_buffer(ctx, &outputs[t]);
        assert_eq!(got, host[t], "{what}: step {t}");
    }
}

#[test]
fn cache_errors_are_typed() {
    let ctx = gpu();
    let weights = Weights::random(config(16, 4, 2, 2), 7).unwrap();
    let mut layer = CompositionalAttention::new(ctx, &weights).unwrap();
    let plain = CompositionalAttention::new(
        ctx,
        &Weights::random(config(16, 4, 2, 2).causal(false), 7).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        plain.kv_cache(1, 8),
        Err(Error::InvalidConfig {
            field: "causal",
            ..
        })
    ));
    let mut cache = layer.kv_cache(1, 4).unwrap();
    let x = vec![0.25f32; 3 * 16];
    layer.prefill_blocking(&mut cache, &x, 3, None).unwrap();
    assert!(matches!(
        layer.prefill_blocking(&mut cache, &x, 3, None),
        Err(Error::CacheFull {
            len: 3,
            appended: 3,
            capacity: 4
        })
    ));
    assert_eq!(cache.len(), 3, "a refused append appends nothing");
    let one = vec![0.25f32; 16];
    layer.decode_blocking(&mut cache, &one, None).unwrap();
    assert!(matches!(
        layer.decode_blocking(&mut cache, &one, None),
        Err(Error::CacheFull { .. })
    ));
    // Another layer's cache, a batch that does not match.
    let mut other = CompositionalAttention::new(ctx, &weights).unwrap();
    assert!(matches!(
        other.decode_blocking(&mut cache, &one, None),
        Err(Error::CacheMismatch(_))
    ));
    let mut two = layer.kv_cache(2, 4).unwrap();
    assert!(matches!(
        layer.decode_blocking(&mut two, &one, None),
        Err(Error::Shape { .. })
    ));
    assert!(cache.gpu_bytes() > 0);
    // clear: the next tokens start a new sequence, equal to a fresh cache's.
    cache.clear();
    assert!(cache.is_empty());
    let again = layer.decode_blocking(&mut cache, &one, None).unwrap();
    let mut fresh = layer.kv_cache(1, 4).unwrap();
    assert_eq!(
        again,
        layer.decode_blocking(&mut fresh, &one, None).unwrap()
    );
}

/// The MLP score network (fairseq's `nonlinear=True`): the split-KV core stores the retrieved
/// values and `retrieval_select` runs the network on them, for prefill chunks and decode steps,
/// with padding.
#[test]
fn mlp_score_network_prefill_and_decode() {
    check(
        config(20, 5, 2, 3).selection_mlp(Some(4)),
        2,
        13,
        Some(&[13, 8]),
        &[5],
        "MLP score network",
    );
    check(
        config(16, 4, 2, 2).selection_mlp(Some(3)).bias(true),
        1,
        7,
        None,
        &[],
        "MLP score network with biases, decode only",
    );
}
