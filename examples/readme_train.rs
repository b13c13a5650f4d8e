//! README, "Training": a student layer learns a teacher's outputs with AdamW on the GPU, then
//! saves its weights and loads them back.

use compositional_attention::{AdamW, CompositionalAttention, Config, GpuContext, Weights};

fn main() -> compositional_attention::Result<()> {
    let gpu = GpuContext::from_env_blocking()?;
    let config = Config::new(32)
        .dim_head(8)
        .num_searches(2)
        .num_retrievals(2);
    let mut teacher = CompositionalAttention::new(&gpu, &Weights::random(config, 1)?)?;
    let mut student = CompositionalAttention::new(&gpu, &Weights::random(config, 2)?)?;
    let mut grads = student.gradients()?; // one f32 buffer per parameter, zeroed
    let mut opt = AdamW::new(&student, 1e-2)?
        .betas(0.9, 0.999)
        .eps(1e-8)
        .weight_decay(0.01);

    let (batch, seq, dim) = (4, 16, 32);
    let mut losses = Vec::new();
    for step in 0..60u64 {
        // A new batch each step; the teacher's outputs are the targets.
        let x: Vec<f32> = (0..batch * seq * dim)
            .map(|i| ((i as u64 * 7919 + step * 104_729) as f32 * 0.618).sin())
            .collect();
        let target = teacher.forward_blocking(&x, batch, seq, None)?;
        // The training forward keeps what the backward needs (linear in seq); its dropout,
        // if the config has any, is seeded by the last argument.
        let (y, act) = student.forward_train_blocking(&x, batch, seq, None, step)?;
        let numel = y.len() as f32;
        let loss = y
            .iter()
            .zip(&target)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            / numel;
        let dy: Vec<f32> = y
            .iter()
            .zip(&target)
            .map(|(a, b)| 2.0 * (a - b) / numel)
            .collect();
        grads.zero(); // backward adds to the gradients
        let _dx = student.backward_blocking(&act, &dy, &mut grads)?; // dL/dx, for a layer below
        opt.step_blocking(&mut student, &grads)?;
        losses.push(loss);
        if step == 0 {
            println!(
                "GPU memory: layer {} + gradients {} + activations {} bytes",
                student.gpu_bytes(),
                grads.gpu_bytes(),
                act.gpu_bytes()
            );
        }
    }
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    println!("loss {first:.4e} -> {last:.4e} in {} steps", opt.steps());
    assert!(last < first, "the loss did not fall");

    // The trained parameters, saved as safetensors (state_dict names) and loaded back.
    let trained = student.weights_blocking()?;
    let path = std::env::temp_dir().join("student.safetensors");
    trained.save(&path)?;
    assert_eq!(Weights::load(&path, false)?, trained);
    Ok(())
}
