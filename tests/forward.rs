//! The whole forward pass against the `f64` CPU reference, edge case by edge case, on every
//! strategy. Inputs are drawn fresh each run; a failure prints the seed that reproduces it.

mod common;

use compositional_attention::plan::CorePlan;
use compositional_attention::testing::random_problem;
use compositional_attention::{CompositionalAttention, Config, Strategy, Weights, reference};

/// Tolerance on relative L2 and on max-abs relative to max|reference|.
const TOL: f64 = 2e-5;

struct Case {
    config: Config,
    batch: usize,
    seq: usize,
    mask_lengths: Option<Vec<usize>>,
    input_scale: f32,
    both_profiles: bool,
    tolerance: f64,
}

impl Case {
    fn new(dim: usize, dim_head: usize, searches: usize, retrievals: usize) -> Self {
        Case {
            config: Config::new(dim)
                .dim_head(dim_head)
                .num_searches(searches)
                .num_retrievals(retrievals),
            batch: 1,
            seq: 16,
            mask_lengths: None,
            input_scale: 1.0,
            both_profiles: false,
            tolerance: TOL,
        }
    }

    fn shape(mut self, batch: usize, seq: usize) -> Self {
        self.batch = batch;
        self.seq = seq;
        self
    }

    fn causal(mut self) -> Self {
        self.config = self.config.causal(true);
        self
    }

    fn prenorm(mut self) -> Self {
        self.config = self.config.prenorm(true);
        self
    }

    /// Biases on every projection (the official fairseq module's and xformers' form).
    fn biases(mut self) -> Self {
        self.config = self.config.bias(true);
        self
    }

    fn mask(mut self, lengths: &[usize]) -> Self {
        self.mask_lengths = Some(lengths.to_vec());
        self
    }

    /// Also run with the other kernel profile (see `common::gpu_other_profile`).
    fn both_profiles(mut self) -> Self {
        self.both_profiles = true;
        self
    }

    /// Inputs drawn with standard deviation `scale`. Search logits grow with its square, and
    /// with logits in the thousands f32 rounding of the scores moves the softmax weights by
    /// 1e-5 or more in any f32 implementation; such cases are held to the 1e-4 (of
    /// max|reference|) instead of the suite's tighter default.
    fn input_scale(mut self, scale: f32) -> Self {
        self.input_scale = scale;
        if scale > 10.0 {
            self.tolerance = 1e-4;
        }
        self
    }

    /// Runs every strategy against the reference.
    fn check(self, name: &str) {
        let (seed, what) = common::seed(name);
        let (weights, input) = random_problem(
            self.config,
            self.batch,
            self.seq,
            self.mask_lengths.as_deref(),
            self.input_scale,
            seed,
        )
        .unwrap();
        let expected = reference::forward(
            &weights,
            &input.x,
            input.batch,
            input.seq,
            input.mask.as_deref(),
        )
        .unwrap();
        let mut devices = vec![common::gpu()];
        if self.both_profiles {
            devices.push(common::gpu_other_profile());
        }
        for gpu in devices {
            let profile = if gpu.cpu_kernels() { "cpu" } else { "gpu" };
            for strategy in Strategy::ALL {
                let mut layer = CompositionalAttention::new(gpu, &weights).unwrap();
                layer.set_strategy(strategy);
                let y = pollster::block_on(layer.forward_input(&input)).unwrap();
                let label = format!("{what} [{strategy}, {profile} kernels]");
                common::assert_close(&label, &y, &expected, self.tolerance);
            }
        }
    }
}

#[test]
fn odd_sizes() {
    Case::new(40, 10, 3, 4)
        .shape(2, 29)
        .both_profiles()
        .check("odd_sizes");
}

#[test]
fn sizes_past_every_tile() {
    Case::new(72, 20, 3, 2)
        .shape(1, 131)
        .check("sizes_past_every_tile");
}

#[test]
fn one_search() {
    Case::new(24, 8, 1, 3).shape(2, 21).check("one_search");
}

#[test]
fn one_retrieval() {
    Case::new(24, 8, 3, 1).shape(2, 21).check("one_retrieval");
}

#[test]
fn one_search_one_retrieval() {
    Case::new(12, 6, 1, 1)
        .shape(2, 9)
        .check("one_search_one_retrieval");
}

#[test]
fn single_token() {
    Case::new(16, 4, 2, 2).shape(3, 1).check("single_token");
}

#[test]
fn batch_of_four() {
    Case::new(32, 8, 2, 3).shape(4, 17).check("batch_of_four");
}

#[test]
fn causal() {
    Case::new(48, 12, 2, 3)
        .shape(2, 45)
        .causal()
        .check("causal");
}

#[test]
fn padding_mask() {
    Case::new(32, 8, 4, 2)
        .shape(3, 37)
        .mask(&[37, 20, 3])
        .check("padding_mask");
}

#[test]
fn fully_masked_row() {
    Case::new(16, 8, 2, 3)
        .shape(2, 11)
        .mask(&[0, 5])
        .both_profiles()
        .check("fully_masked_row");
}

#[test]
fn causal_with_padding() {
    Case::new(32, 8, 2, 2)
        .shape(2, 26)
        .causal()
        .mask(&[26, 9])
        .both_profiles()
        .check("causal_with_padding");
}

#[test]
fn prenorm() {
    Case::new(48, 16, 3, 2)
        .shape(2, 13)
        .prenorm()
        .both_profiles()
        .check("prenorm");
}

/// Biased projections: the packed projection bias (with `b_rq` folded through `W_rk` in the
/// fused cores) and the output bias, on both kernel families, causal with padding.
#[test]
fn biased_projections() {
    Case::new(40, 12, 3, 2)
        .shape(2, 21)
        .biases()
        .causal()
        .mask(&[21, 8])
        .both_profiles()
        .check("biased_projections");
}

/// The Keras package's LayerNorm epsilon (1e-3): on unit-variance rows 1e-5 instead would miss
/// by about 5e-4, far outside the tolerance.
#[test]
fn prenorm_with_keras_epsilon() {
    let mut case = Case::new(24, 8, 2, 3).shape(2, 11).prenorm();
    case.config = case.config.layer_norm_eps(1e-3);
    case.check("prenorm_with_keras_epsilon");
}

#[test]
fn large_magnitude_inputs() {
    // Search logits past f32 `exp`'s overflow at 88.7 (standard deviation ≈ scale² / 3 ≈ 48,
    // the largest of the ~2 000 logits near 3.5σ ≈ 170): any softmax without max-subtraction
    // overflows. Larger scales only push the f32 rounding of the scores, which grows with
    // scale², toward the tolerance, in any f32 implementation: at 20, 60 fresh seeds reached
    // 9.0e-5 of max|reference| and 1796490204306933463 reached 1.94e-4 (8.2e-6 at 12); at 30
    // and 100, 1796449370561172016 and 1795523805306633265 once did. All three stay in CI's
    // fixed seed list. At 12 the same 60 seeds stay under 3.7e-5.
    Case::new(32, 8, 2, 2)
        .shape(2, 23)
        .input_scale(12.0)
        .causal()
        .check("large_magnitude_inputs");
}

#[test]
fn head_width_not_a_multiple_of_four() {
    Case::new(30, 7, 3, 2)
        .shape(1, 50)
        .check("head_width_not_a_multiple_of_four");
}

#[test]
fn wide_heads() {
    Case::new(64, 64, 2, 2).shape(1, 70).check("wide_heads");
}

#[test]
fn readme_width_short_sequence() {
    Case::new(1024, 64, 8, 2)
        .shape(1, 24)
        .check("readme_width_short_sequence");
}

/// Repeated calls reuse the workspace; a new shape rebuilds it; results stay correct.
#[test]
fn workspace_reuse_across_shapes() {
    let (seed, what) = common::seed("workspace_reuse_across_shapes");
    let config = Config::new(24)
        .dim_head(8)
        .num_searches(2)
        .num_retrievals(2);
    for strategy in Strategy::ALL {
        let mut layer = None;
        for (batch, seq) in [(2, 10), (2, 10), (1, 33), (2, 10)] {
            let (weights, input) =
                random_problem(config, batch, seq, Some(&[seq, 3]), 1.0, seed).unwrap();
            let layer = layer.get_or_insert_with(|| {
                CompositionalAttention::new(common::gpu(), &weights).unwrap()
            });
            layer.set_strategy(strategy);
            let y = pollster::block_on(layer.forward_input(&input)).unwrap();
            let expected =
                reference::forward(&weights, &input.x, batch, seq, input.mask.as_deref()).unwrap();
            common::assert_close(
                &format!("{what} [{strategy}] b{batch} n{seq}"),
                &y,
                &expected,
                TOL,
            );
            assert!(layer.gpu_bytes() > 0);
        }
    }
}

/// The long-sequence requirement's problem: `LONG_SEQUENCE` tokens of this layer within
/// `LONG_SEQUENCE_BYTES` of GPU buffers.
fn long_sequence_config() -> Config {
    Config::new(256)
        .dim_head(32)
        .num_searches(4)
        .num_retrievals(4)
}
const LONG_SEQUENCE: usize = 16_384;
const LONG_SEQUENCE_BYTES: u64 = 256 << 20;

/// The long-sequence requirement: n = 16384 on the fused strategy (the default) within
/// 256 MiB of GPU buffers, with sample rows checked against the reference (which computes only
/// those rows, so nothing n × n exists on either side).
#[test]
fn sixteen_thousand_tokens_fused() {
    let (seed, what) = common::seed("sixteen_thousand_tokens_fused");
    let config = long_sequence_config();
    let seq = LONG_SEQUENCE;
    let (weights, input) = random_problem(config, 1, seq, None, 1.0, seed).unwrap();
    let mut layer = CompositionalAttention::new(common::gpu(), &weights).unwrap();
    assert_eq!(layer.strategy(), Strategy::Fused);
    let y = pollster::block_on(layer.forward_input(&input)).unwrap();
    let bytes = layer.gpu_bytes();
    assert!(
        bytes <= LONG_SEQUENCE_BYTES,
        "{what}: {bytes} bytes of GPU buffers exceed 256 MiB"
    );
    let rows: Vec<(usize, usize)> = [0, 1, 4095, 8191, 12000, seq - 2, seq - 1]
        .into_iter()
        .map(|i| (0, i))
        .collect();
    let expected = reference::forward_rows(&weights, &input.x, 1, seq, None, &rows).unwrap();
    let actual: Vec<f32> = rows
        .iter()
        .flat_map(|&(_, i)| y[i * config.dim..][..config.dim].to_vec())
        .collect();
    common::assert_close(&format!("{what} (sample rows)"), &actual, &expected, TOL);
    assert!(y.iter().all(|v| v.is_finite()), "{what}: non-finite output");
}

/// The same 256 MiB bound for both kernel families, without computing: `prepare` builds the
/// workspace and runs nothing, and the buffers a host forward adds on first use (input, mask,
/// output, its readback and the all-keys mask: `workspace::HostIo`) are counted from their
/// shapes. CI's OpenGL run skips the test above (llvmpipe computes its n² work for over ten
/// minutes) and keeps this one.
#[test]
fn sixteen_thousand_tokens_fit_in_either_kernel_family() {
    let config = long_sequence_config();
    let seq = LONG_SEQUENCE as u64;
    let host_io = 3 * seq * config.dim as u64 * 4 + 2 * seq * 4;
    let weights = Weights::random(config, 5).unwrap();
    for ctx in [common::gpu(), common::gpu_other_profile()] {
        let mut layer = CompositionalAttention::new(ctx, &weights).unwrap();
        layer.prepare_blocking(1, LONG_SEQUENCE).unwrap();
        let plan = layer.plan(1, LONG_SEQUENCE).unwrap();
        assert!(
            matches!(plan.core(), CorePlan::Fused(_) | CorePlan::Blocked(_)),
            "16 384 tokens must run a fused core: {}",
            plan.describe()
        );
        let workspace = layer.gpu_bytes();
        let bytes = workspace + host_io;
        assert!(
            workspace > 0 && bytes <= LONG_SEQUENCE_BYTES,
            "{}: {workspace} bytes of weights and workspace and {host_io} of host I/O for 16 384 \
             tokens exceed 256 MiB",
            plan.describe()
        );
    }
}

/// The blocked core (CPU drivers) splits value columns past 64 over slices of lanes that share
/// each key tile's scores through workgroup memory (ARCHITECTURE decision 18): two slices at
/// `r·d = 128`, three (one scores two key blocks), four (slice 0 scores the whole tile, the
/// kernel's `SCORE_ALONE`), five, eight with a partial last block, and two workgroups of five at
/// `r·d = 576` (nine blocks). Causal, three sequences of 140 rows
/// (past one 128-query tile): whole, padded, and fully masked (every row uniform).
#[test]
fn value_columns_shared_over_slices() {
    use compositional_attention::plan::{BlockedPlan, CorePlan, OperandStorage};
    for (dim_head, retrievals, slices) in [
        (32, 4, 2),
        (16, 12, 3),
        (16, 16, 4),
        (64, 5, 5),
        (32, 15, 8),
        (16, 36, 5),
    ] {
        let case = Case::new(48, dim_head, 2, retrievals)
            .shape(3, 140)
            .causal()
            .mask(&[140, 95, 0]);
        let name = format!("value_columns_shared_over_slices d {dim_head} r {retrievals}");
        let (weights, _) = random_problem(case.config, 3, 140, None, 1.0, 1).unwrap();
        let plan = CompositionalAttention::new(common::gpu(), &weights)
            .unwrap()
            .plan(3, 140)
            .unwrap();
        // (An experiment's COMPATTN_BLOCKED_SLICES caps the slices.)
        let capped = std::env::var_os("COMPATTN_BLOCKED_SLICES").is_some();
        if plan.core_storage() == OperandStorage::Texels && !capped {
            assert!(
                matches!(plan.core(), CorePlan::Blocked(BlockedPlan { slices: s, .. }) if s == slices),
                "{name}: expected the blocked core with {slices} slices, got {}",
                plan.describe()
            );
        }
        case.check(&name);
    }
}
