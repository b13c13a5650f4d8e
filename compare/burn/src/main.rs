//! `burn-compattn`: lucidrains' Compositional Attention (no prenorm, no mask, not causal, no
//! dropout; SPEC.md §2.3 of the parent repository) written the way a burn user would write it,
//! with burn 0.22 tensor ops on burn's wgpu backend pinned to Vulkan, and timed on the host's
//! wall clock so `run.sh` can set it beside `compattn bench`.
//!
//! Modes (one JSON object on stdout each):
//! * `--check`: a small problem against an f64 CPU loop of the formula (max abs error).
//! * forward (default): upload `x`, forward, read `y` back (`into_data`), per iteration.
//! * `--train`: on an autodiff device: upload `x` and `dy`, forward, `loss = sum(y * dy)`,
//!   `backward()`, read every parameter gradient and `dL/dx` back, per step.
//! * `--matmul N`: burn's matmul alone, `[N, N] · [N, N]` on resident operands with the product
//!   read back, per iteration: an anchor beside `compattn bench --gemm N` (tells burn's matmul
//!   apart from the rest of its layer when burn's times move between machines).
//!
//! burn's defaults stay on: fusion and autotune. Autotune benchmarks kernel variants the first
//! time it meets a shape, inside whichever call first runs it, so the untimed warm-up iterations
//! absorb it (their times are printed as `warmup_ms`); its results also persist on disk (see
//! `cubecl.toml` next to this crate's manifest), so a later process may skip the tuning.

use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::activation::softmax;
use burn::tensor::wgpu::WgpuBackend;
use burn::tensor::{Device, Tensor, TensorData};

/// The layer's sizes.
#[derive(Clone, Copy, Debug)]
struct Config {
    dim: usize,
    dim_head: usize,
    searches: usize,
    retrievals: usize,
}

/// The six projections in PyTorch's `Linear` layout `[out, in]`, row-major, on the host.
struct HostWeights {
    w_sq: Vec<f32>,
    w_sk: Vec<f32>,
    w_rv: Vec<f32>,
    w_rq: Vec<f32>,
    w_rk: Vec<f32>,
    w_o: Vec<f32>,
}

/// SplitMix64: a small seeded generator, enough for weights and inputs.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }

    fn uniform_vec(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| self.uniform(lo, hi)).collect()
    }
}

impl HostWeights {
    /// PyTorch's `Linear` default: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    fn random(c: Config, rng: &mut Rng) -> Self {
        let (dim, sd, rd, d) = (
            c.dim,
            c.searches * c.dim_head,
            c.retrievals * c.dim_head,
            c.dim_head,
        );
        let mut linear = |out: usize, fan_in: usize| {
            let bound = 1.0 / (fan_in as f32).sqrt();
            rng.uniform_vec(out * fan_in, -bound, bound)
        };
        HostWeights {
            w_sq: linear(sd, dim),
            w_sk: linear(sd, dim),
            w_rv: linear(rd, dim),
            w_rq: linear(sd, dim),
            w_rk: linear(d, d),
            w_o: linear(dim, sd),
        }
    }
}

/// The parameters on the device, stored `[in, out]` as burn's `nn::Linear` stores its weight
/// (so a projection is `x.matmul(w)`).
struct Params {
    w_sq: Tensor<2>,
    w_sk: Tensor<2>,
    w_rv: Tensor<2>,
    w_rq: Tensor<2>,
    w_rk: Tensor<2>,
    w_o: Tensor<2>,
}

/// `[out, in]` row-major to `[in, out]` row-major.
fn transposed(w: &[f32], out: usize, inp: usize) -> Vec<f32> {
    let mut t = vec![0.0; w.len()];
    for o in 0..out {
        for i in 0..inp {
            t[i * out + o] = w[o * inp + i];
        }
    }
    t
}

impl Params {
    fn upload(w: &HostWeights, c: Config, device: &Device, track: bool) -> Self {
        let (dim, sd, rd, d) = (
            c.dim,
            c.searches * c.dim_head,
            c.retrievals * c.dim_head,
            c.dim_head,
        );
        let make = |v: &[f32], out: usize, inp: usize| {
            let t = Tensor::<2>::from_data(
                TensorData::new(transposed(v, out, inp), [inp, out]),
                device,
            );
            if track { t.require_grad() } else { t }
        };
        Params {
            w_sq: make(&w.w_sq, sd, dim),
            w_sk: make(&w.w_sk, sd, dim),
            w_rv: make(&w.w_rv, rd, dim),
            w_rq: make(&w.w_rq, sd, dim),
            w_rk: make(&w.w_rk, d, d),
            w_o: make(&w.w_o, dim, sd),
        }
    }

    fn all(&self) -> [&Tensor<2>; 6] {
        [
            &self.w_sq, &self.w_sk, &self.w_rv, &self.w_rq, &self.w_rk, &self.w_o,
        ]
    }
}

/// `x [b, n, in] · w [in, out]`.
fn linear(x: Tensor<3>, w: &Tensor<2>) -> Tensor<3> {
    x.matmul(w.clone().unsqueeze())
}

/// The layer's forward, `x [b, n, dim]` to `y [b, n, dim]`.
fn forward(p: &Params, x: Tensor<3>, c: Config) -> Tensor<3> {
    let [b, n, _] = x.dims();
    let (s, r, d) = (c.searches, c.retrievals, c.dim_head);
    let scale = (d as f32).powf(-0.5);
    // [b, n, h·d] -> [b, h, n, d]
    let split = |t: Tensor<3>, heads: usize| t.reshape([b, n, heads, d]).swap_dims(1, 2);

    let sq = split(linear(x.clone(), &p.w_sq), s).mul_scalar(scale); // [b, s, n, d]
    let sk = split(linear(x.clone(), &p.w_sk), s); // [b, s, n, d]
    let attn = softmax(sq.matmul(sk.swap_dims(2, 3)), 3); // [b, s, n, n]
    let rv = split(linear(x.clone(), &p.w_rv), r); // [b, r, n, d]
    // Every (search, retrieval) pair: [b, s, 1, n, n] · [b, 1, r, n, d] -> [b, s, r, n, d]
    let ret = attn.unsqueeze_dim::<5>(2).matmul(rv.unsqueeze_dim::<5>(1));
    let rq = split(linear(x, &p.w_rq), s).mul_scalar(scale); // [b, s, n, d]
    let rk = ret.clone().matmul(p.w_rk.clone().unsqueeze::<5>()); // [b, s, r, n, d]
    // G[b, σ, ρ, i] = Σ_k RQ[b, σ, i, k] RK[b, σ, ρ, i, k], kept as [b, s, r, n, 1]
    let logits = (rq.unsqueeze_dim::<5>(2) * rk).sum_dim(4);
    let select = softmax(logits, 2); // over the r retrievals
    let out = (select * ret).sum_dim(2); // [b, s, 1, n, d]
    let concat = out
        .reshape([b, s, n, d])
        .swap_dims(1, 2)
        .reshape([b, n, s * d]); // (s d) order
    linear(concat, &p.w_o)
}

/// The same function in f64 loops on the host, from the `[out, in]` weights.
fn reference(w: &HostWeights, x: &[f32], b: usize, n: usize, c: Config) -> Vec<f64> {
    let (dim, s, r, d) = (c.dim, c.searches, c.retrievals, c.dim_head);
    let scale = (d as f64).powf(-0.5);
    // y[t, o] = Σ_i x[t, i] W[o, i] for each of the b·n rows
    let project = |inp: &[f64], wt: &[f32], out: usize, fan_in: usize| -> Vec<f64> {
        let rows = inp.len() / fan_in;
        let mut y = vec![0.0; rows * out];
        for t in 0..rows {
            for o in 0..out {
                y[t * out + o] = (0..fan_in)
                    .map(|i| inp[t * fan_in + i] * wt[o * fan_in + i] as f64)
                    .sum();
            }
        }
        y
    };
    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let sq = project(&x, &w.w_sq, s * d, dim);
    let sk = project(&x, &w.w_sk, s * d, dim);
    let rv = project(&x, &w.w_rv, r * d, dim);
    let rq = project(&x, &w.w_rq, s * d, dim);
    let mut concat = vec![0.0; b * n * s * d];
    for bb in 0..b {
        let row = |t: &[f64], width: usize, i: usize, h: usize, k: usize| {
            t[(bb * n + i) * width + h * d + k]
        };
        for sg in 0..s {
            for i in 0..n {
                // A[i, :]
                let logits: Vec<f64> = (0..n)
                    .map(|j| {
                        (0..d)
                            .map(|k| row(&sq, s * d, i, sg, k) * scale * row(&sk, s * d, j, sg, k))
                            .sum()
                    })
                    .collect();
                let a = softmax_f64(&logits);
                // Ret[ρ, :], RK[ρ, :], G[ρ]
                let mut ret = vec![vec![0.0; d]; r];
                for (rho, ret_rho) in ret.iter_mut().enumerate() {
                    for (j, &aj) in a.iter().enumerate() {
                        for (k, v) in ret_rho.iter_mut().enumerate() {
                            *v += aj * row(&rv, r * d, j, rho, k);
                        }
                    }
                }
                let g: Vec<f64> = ret
                    .iter()
                    .map(|ret_rho| {
                        (0..d)
                            .map(|k| {
                                let rk: f64 =
                                    (0..d).map(|m| ret_rho[m] * w.w_rk[k * d + m] as f64).sum();
                                row(&rq, s * d, i, sg, k) * scale * rk
                            })
                            .sum()
                    })
                    .collect();
                let sel = softmax_f64(&g);
                for k in 0..d {
                    concat[(bb * n + i) * s * d + sg * d + k] =
                        (0..r).map(|rho| sel[rho] * ret[rho][k]).sum();
                }
            }
        }
    }
    project(&concat, &w.w_o, dim, s * d)
}

fn softmax_f64(v: &[f64]) -> Vec<f64> {
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = v.iter().map(|&z| (z - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|z| z / sum).collect()
}

/// burn's wgpu runtime pinned to Vulkan (never another API), and a description of its adapter.
fn vulkan_device() -> Result<(Device, String), String> {
    let (device, setup) = Device::wgpu_options()
        .graphics_api(WgpuBackend::Vulkan)
        .init_with_setup()
        .map_err(|e| format!("burn could not initialise wgpu on Vulkan: {e}"))?;
    let info = setup.adapter.get_info();
    // Without burn's `vulkan` feature cubecl has no SPIR-V compiler and emits WGSL, which wgpu
    // (naga) translates to SPIR-V, as compattn's shaders are; with it (`--features spirv`) it
    // compiles to SPIR-V itself where the adapter allows.
    let compiler = if cfg!(feature = "spirv") {
        "spirv where supported"
    } else {
        "wgsl"
    };
    let adapter = format!(
        "{} ({:?}, {:?}, driver {} {}; burn compiler {})",
        info.name, info.backend, info.device_type, info.driver, info.driver_info, compiler
    );
    Ok((device, adapter))
}

fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn json_list(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:.3}")).collect();
    format!("[{}]", items.join(","))
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

struct Args {
    batch: usize,
    seq: usize,
    config: Config,
    warmup: usize,
    iters: usize,
    train: bool,
    check: bool,
    matmul: Option<usize>,
}

const USAGE: &str = "usage: burn-compattn [--check] [--train] [--batch B] [--seq N] [--dim D] \
                     [--dim-head d] [--searches s] [--retrievals r] [--warmup W] [--iters I] \
                     [--matmul N]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        batch: 1,
        seq: 512,
        config: Config {
            dim: 1024,
            dim_head: 64,
            searches: 8,
            retrievals: 2,
        },
        warmup: 2,
        iters: 10,
        train: false,
        check: false,
        matmul: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<usize, String> {
            let v = it.next().ok_or(format!("{name} needs a value"))?;
            v.parse::<usize>().map_err(|e| format!("{name} {v}: {e}"))
        };
        match flag.as_str() {
            "--batch" => a.batch = value("--batch")?,
            "--seq" => a.seq = value("--seq")?,
            "--dim" => a.config.dim = value("--dim")?,
            "--dim-head" => a.config.dim_head = value("--dim-head")?,
            "--searches" => a.config.searches = value("--searches")?,
            "--retrievals" => a.config.retrievals = value("--retrievals")?,
            "--warmup" => a.warmup = value("--warmup")?,
            "--iters" => a.iters = value("--iters")?,
            "--train" => a.train = true,
            "--check" => a.check = true,
            "--matmul" => a.matmul = Some(value("--matmul")?),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if a.matmul.is_some() && (a.check || a.train) {
        return Err(format!(
            "--matmul runs alone: not with --check or --train\n{USAGE}"
        ));
    }
    let c = a.config;
    if [
        a.batch,
        a.seq,
        c.dim,
        c.dim_head,
        c.searches,
        c.retrievals,
        a.iters,
        a.matmul.unwrap_or(1),
    ]
    .contains(&0)
    {
        return Err("sizes and --iters must be positive".into());
    }
    Ok(a)
}

fn check(device: &Device, adapter: &str) -> Result<(), String> {
    let (b, n) = (2, 7);
    let c = Config {
        dim: 16,
        dim_head: 4,
        searches: 2,
        retrievals: 3,
    };
    let mut rng = Rng(0x5eed);
    let w = HostWeights::random(c, &mut rng);
    let x = rng.uniform_vec(b * n * c.dim, -1.0, 1.0);
    let p = Params::upload(&w, c, device, false);
    let xt = Tensor::<3>::from_data(TensorData::new(x.clone(), [b, n, c.dim]), device);
    let y = forward(&p, xt, c)
        .into_data()
        .try_into_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?;
    let want = reference(&w, &x, b, n, c);
    let err = y
        .iter()
        .zip(&want)
        .map(|(&g, &r)| (g as f64 - r).abs())
        .fold(0.0, f64::max);
    let ok = err < 1e-4;
    println!(
        "{{\"mode\":\"check\",\"batch\":{b},\"seq\":{n},\"dim\":{},\"dim_head\":{},\"searches\":{},\
         \"retrievals\":{},\"max_abs_err\":{err:e},\"tolerance\":1e-4,\"ok\":{ok},\"adapter\":{}}}",
        c.dim,
        c.dim_head,
        c.searches,
        c.retrievals,
        json_str(adapter)
    );
    if ok {
        Ok(())
    } else {
        Err(format!("max abs error {err:e} >= 1e-4"))
    }
}

fn time(args: &Args, base: &Device, adapter: &str) -> Result<(), String> {
    let (b, n, c) = (args.batch, args.seq, args.config);
    let mut rng = Rng(0xc0ffee);
    let w = HostWeights::random(c, &mut rng);
    let x = rng.uniform_vec(b * n * c.dim, -1.0, 1.0);
    let dy = rng.uniform_vec(b * n * c.dim, -1.0, 1.0);
    let device = if args.train {
        base.clone().autodiff()
    } else {
        base.clone()
    };
    let p = Params::upload(&w, c, &device, args.train);
    let upload =
        |v: &[f32]| Tensor::<3>::from_data(TensorData::new(v.to_vec(), [b, n, c.dim]), &device);
    let (warmup_ms, samples_ms) = timed_rounds(args, || {
        let mut checksum = 0.0f64;
        if args.train {
            let xt = upload(&x).require_grad();
            let dyt = upload(&dy);
            let y = forward(&p, xt.clone(), c);
            let loss = (y * dyt).sum();
            let grads = loss.backward();
            for param in p.all() {
                let g = param.grad(&grads).ok_or("a parameter has no gradient")?;
                checksum += g
                    .into_data()
                    .as_slice::<f32>()
                    .map_err(|e| format!("{e:?}"))?[0] as f64;
            }
            let dx = xt.grad(&grads).ok_or("x has no gradient")?;
            checksum += dx
                .into_data()
                .as_slice::<f32>()
                .map_err(|e| format!("{e:?}"))?[0] as f64;
        } else {
            let y = forward(&p, upload(&x), c).into_data();
            checksum += y.as_slice::<f32>().map_err(|e| format!("{e:?}"))?[0] as f64;
        }
        Ok(checksum)
    })?;
    println!(
        "{{\"mode\":\"{}\",\"batch\":{b},\"seq\":{n},\"dim\":{},\"dim_head\":{},\"searches\":{},\
         \"retrievals\":{},\"warmup\":{},\"iters\":{},\"median_ms\":{:.3},\"samples_ms\":{},\
         \"warmup_ms\":{},\"adapter\":{}}}",
        if args.train { "train" } else { "forward" },
        c.dim,
        c.dim_head,
        c.searches,
        c.retrievals,
        args.warmup,
        args.iters,
        median(&samples_ms),
        json_list(&samples_ms),
        json_list(&warmup_ms),
        json_str(adapter)
    );
    Ok(())
}

/// Runs `round` `--warmup` times, then `--iters` times, each timed on the host's wall clock:
/// `(warmup_ms, samples_ms)`. `round` returns a value read back from the device, summed and
/// kept so that no round's work is optimised away.
fn timed_rounds(
    args: &Args,
    mut round: impl FnMut() -> Result<f64, String>,
) -> Result<(Vec<f64>, Vec<f64>), String> {
    let mut warmup_ms = Vec::new();
    let mut samples_ms = Vec::new();
    let mut checksum = 0.0f64;
    for i in 0..args.warmup + args.iters {
        let start = Instant::now();
        checksum += round()?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        if i < args.warmup {
            warmup_ms.push(ms);
        } else {
            samples_ms.push(ms);
        }
    }
    std::hint::black_box(checksum);
    Ok((warmup_ms, samples_ms))
}

/// `--matmul N`: the median wall time of `[N, N] · [N, N]` with the product read back.
fn time_matmul(args: &Args, n: usize, device: &Device, adapter: &str) -> Result<(), String> {
    let mut rng = Rng(0x3a7);
    let square = |rng: &mut Rng| {
        Tensor::<2>::from_data(
            TensorData::new(rng.uniform_vec(n * n, -1.0, 1.0), [n, n]),
            device,
        )
    };
    let (a, b) = (square(&mut rng), square(&mut rng));
    let (warmup_ms, samples_ms) = timed_rounds(args, || {
        let c = a.clone().matmul(b.clone()).into_data();
        Ok(c.as_slice::<f32>().map_err(|e| format!("{e:?}"))?[0] as f64)
    })?;
    let median_ms = median(&samples_ms);
    println!(
        "{{\"mode\":\"matmul\",\"n\":{n},\"warmup\":{},\"iters\":{},\"median_ms\":{median_ms:.3},\
         \"gflops\":{:.2},\"samples_ms\":{},\"warmup_ms\":{},\"adapter\":{}}}",
        args.warmup,
        args.iters,
        2.0 * (n as f64).powi(3) / (median_ms * 1e6),
        json_list(&samples_ms),
        json_list(&warmup_ms),
        json_str(adapter)
    );
    Ok(())
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|args| {
        let (device, adapter) = vulkan_device()?;
        if args.check {
            check(&device, &adapter)
        } else if let Some(n) = args.matmul {
            time_matmul(&args, n, &device, &adapter)
        } else {
            time(&args, &device, &adapter)
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("burn-compattn: {e}");
            ExitCode::FAILURE
        }
    }
}
