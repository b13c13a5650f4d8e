//! One AdamW step of one parameter (`shaders/adamw.wgsl`): PyTorch's `torch.optim.AdamW` rule,
//! elementwise, with the bias corrections computed on the host in f64.

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::gpu::dispatch::Dispatch;
use crate::gpu::pipelines::{Kernel, ShaderVariant, kernel};
use crate::gpu::uniform::uniform;

static ADAMW: Kernel = kernel!("adamw");

const WG: u32 = 64;

uniform! {
    struct Params {
        len: u32,
        lr: f32,
        weight_decay: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        step_size: f32,
        bias_correction2_sqrt: f32,
    }
}

/// One step's hyper-parameters (PyTorch's `AdamW`, `amsgrad = False`, `maximize = False`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// `t`, from 1.
    pub step: u64,
}

impl AdamStep {
    /// The checks of PyTorch's constructor: `lr ≥ 0`, `0 ≤ β < 1`, `eps > 0`, `λ ≥ 0`, all
    /// finite, and a step from 1.
    pub(crate) fn check(&self) -> Result<()> {
        let fail = |field: &'static str, value: f64, reason: &'static str| {
            Err(Error::InvalidConfig {
                field,
                value: value.to_string(),
                reason,
            })
        };
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return fail(
                "lr",
                self.lr,
                "the learning rate must be finite and at least 0",
            );
        }
        for (field, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return fail(field, beta, "AdamW's betas must be at least 0 and below 1");
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return fail("eps", self.eps, "eps must be finite and above 0");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return fail(
                "weight_decay",
                self.weight_decay,
                "the weight decay must be finite and at least 0",
            );
        }
        if self.step == 0 {
            return fail("step", 0.0, "AdamW's steps count from 1");
        }
        Ok(())
    }

    fn params(&self, len: usize) -> Params {
        // β^t in f64; a step past i32 saturates, where β^t is 0 in any case.
        let t = self.step.min(i32::MAX as u64) as i32;
        let bias_correction1 = 1.0 - self.beta1.powi(t);
        let bias_correction2 = 1.0 - self.beta2.powi(t);
        Params {
            len: len as u32,
            lr: self.lr as f32,
            weight_decay: self.weight_decay as f32,
            beta1: self.beta1 as f32,
            beta2: self.beta2 as f32,
            eps: self.eps as f32,
            step_size: (self.lr / bias_correction1) as f32,
            bias_correction2_sqrt: bias_correction2.sqrt() as f32,
        }
    }
}

pub(crate) fn variant() -> ShaderVariant {
    ShaderVariant::new(&ADAMW).u32("WG", WG)
}

/// Binds one step of `parameter [len]` from `gradient`, updating the two moments in place.
pub(crate) async fn dispatch(
    ctx: &GpuContext,
    len: usize,
    step: AdamStep,
    parameter: &wgpu::Buffer,
    gradient: &wgpu::Buffer,
    first_moment: &wgpu::Buffer,
    second_moment: &wgpu::Buffer,
) -> Result<Dispatch> {
    step.check()?;
    let params = step.params(len);
    Dispatch::new(
        ctx,
        &variant(),
        bytemuck::bytes_of(&params),
        &[
            parameter.into(),
            gradient.into(),
            first_moment.into(),
            second_moment.into(),
        ],
        (len as u64).div_ceil(WG as u64),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::test_device::*;
    use crate::testing::normal;

    /// Three steps on parameters of several magnitudes against the rule written out in f64, at
    /// a length no multiple of the workgroup and at length 1.
    #[test]
    fn three_steps_follow_pytorchs_rule() {
        let (mut rng, what) = rng("adamw");
        for len in [1237, 1] {
            let mut theta: Vec<f64> = normal(&mut rng, len, 3.0)
                .iter()
                .map(|&v| v as f64)
                .collect();
            let (mut m, mut v) = (vec![0.0f64; len], vec![0.0f64; len]);
            let initial: Vec<f32> = theta.iter().map(|&v| v as f32).collect();
            let (parameter, first, second) = (
                upload(&initial),
                upload(&vec![0.0f32; len]),
                upload(&vec![0.0f32; len]),
            );
            for step in 1..=3u64 {
                let s = AdamStep {
                    lr: 1e-2,
                    beta1: 0.85,
                    beta2: 0.99,
                    eps: 1e-6,
                    weight_decay: 0.1,
                    step,
                };
                let g = normal(&mut rng, len, 0.5);
                let gradient = upload(&g);
                let d = build(dispatch(
                    context(),
                    len,
                    s,
                    &parameter,
                    &gradient,
                    &first,
                    &second,
                ));
                run(&[&d]);
                let (bc1, bc2) = (
                    1.0 - s.beta1.powi(step as i32),
                    1.0 - s.beta2.powi(step as i32),
                );
                for i in 0..len {
                    let g = g[i] as f64;
                    theta[i] -= s.lr * s.weight_decay * theta[i];
                    m[i] = s.beta1 * m[i] + (1.0 - s.beta1) * g;
                    v[i] = s.beta2 * v[i] + (1.0 - s.beta2) * g * g;
                    theta[i] -= s.lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + s.eps);
                }
                // f32 arithmetic against f64: a few units in the last place of each value.
                let label = format!("{what}: len {len} step {step}");
                assert_close(
                    &format!("{label} θ"),
                    &download(&parameter, len),
                    &theta,
                    1e-5,
                );
                assert_close(&format!("{label} m"), &download(&first, len), &m, 2e-5);
                assert_close(&format!("{label} v"), &download(&second, len), &v, 2e-5);
            }
        }
    }

    /// `lr = 0` leaves θ as it was (the moments still move).
    #[test]
    fn a_zero_learning_rate_changes_nothing() {
        let values = [1.5f32, -2.0, 0.25];
        let parameter = upload(&values);
        let s = AdamStep {
            lr: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            step: 1,
        };
        let d = build(dispatch(
            context(),
            3,
            s,
            &parameter,
            &upload(&[1.0f32, 2.0, 3.0]),
            &upload(&[0.0f32; 3]),
            &upload(&[0.0f32; 3]),
        ));
        run(&[&d]);
        assert_eq!(download(&parameter, 3), values);
    }

    #[test]
    fn bad_hyper_parameters_are_refused() {
        let good = AdamStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            step: 1,
        };
        assert!(good.check().is_ok());
        for (bad, field) in [
            (AdamStep { lr: -1.0, ..good }, "lr"),
            (
                AdamStep {
                    lr: f64::NAN,
                    ..good
                },
                "lr",
            ),
            (AdamStep { beta1: 1.0, ..good }, "beta1"),
            (
                AdamStep {
                    beta2: -0.1,
                    ..good
                },
                "beta2",
            ),
            (AdamStep { eps: 0.0, ..good }, "eps"),
            (
                AdamStep {
                    weight_decay: -0.5,
                    ..good
                },
                "weight_decay",
            ),
            (AdamStep { step: 0, ..good }, "step"),
        ] {
            match bad.check() {
                Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
