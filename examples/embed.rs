//! A wgpu program that owns its device and embeds two Compositional Attention layers, with its
//! own WGSL kernel (a residual add) between them: one upload, one encoder, one submit, one
//! readback. It then checks the result against chaining `forward` on the host and exits with
//! an error if they differ.
//!
//! `cargo run --release --example embed` (the GPU is chosen by `WGPU_BACKEND` as in wgpu's own
//! tools).

use std::error::Error;

use compositional_attention::{CompositionalAttention, Config, GpuContext, Weights};
use wgpu::util::DeviceExt;

fn main() -> Result<(), Box<dyn Error>> {
    pollster::block_on(run())
}

async fn run() -> Result<(), Box<dyn Error>> {
    // 1. The program's own instance, adapter and device, opened with the adapter's limits.
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
    let instance = wgpu::Instance::new(descriptor);
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions::default())
        .await?;
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: Some("the program's device"),
            required_limits: adapter.limits(),
            ..Default::default()
        })
        .await?;
    println!("adapter: {}", adapter.get_info().name);

    // 2. The layers, on that device.
    let ctx = GpuContext::from_device(&adapter, device.clone(), queue.clone())?;
    let config = Config::new(64)
        .dim_head(16)
        .num_searches(4)
        .num_retrievals(2);
    let mut first = CompositionalAttention::new(&ctx, &Weights::random(config, 1)?)?;
    let mut second = CompositionalAttention::new(&ctx, &Weights::random(config.prenorm(true), 2)?)?;

    // 3. The input, uploaded once; the intermediate and output stay on the GPU.
    let (batch, seq) = (2, 48);
    let x: Vec<f32> = (0..batch * seq * config.dim)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.8)
        .collect();
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    let x_buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("x"),
        contents: bytemuck::cast_slice(&x),
        usage,
    });
    let bytes = x_buffer.size();
    let hidden = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("hidden"),
        size: bytes,
        usage,
        mapped_at_creation: false,
    });
    let y = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("y"),
        size: bytes,
        usage,
        mapped_at_creation: false,
    });
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });

    // 4. The program's own kernel.
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("residual_add"),
        source: wgpu::ShaderSource::Wgsl(include_str!("residual_add.wgsl").into()),
    });
    let residual = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("residual_add"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let residual_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("residual_add"),
        layout: &residual.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: x_buffer.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: hidden.as_entire_binding(),
            },
        ],
    });

    // 5. One encoder: attention, residual add, attention, copy out. One submit.
    let mut encoder = device.create_command_encoder(&Default::default());
    first.encode(&mut encoder, &x_buffer, None, &hidden, batch, seq)?;
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&residual);
        pass.set_bind_group(0, &residual_group, &[]);
        pass.dispatch_workgroups(x.len().div_ceil(64) as u32, 1, 1);
    }
    second.encode(&mut encoder, &hidden, None, &y, batch, seq)?;
    encoder.copy_buffer_to_buffer(&y, 0, &staging, 0, bytes);
    queue.submit([encoder.finish()]);

    // 6. One readback.
    let (sender, receiver) = std::sync::mpsc::channel();
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, move |r| drop(sender.send(r)));
    device.poll(wgpu::PollType::wait_indefinitely())?;
    receiver.recv()??;
    let gpu: Vec<f32> = bytemuck::cast_slice(&staging.slice(..).get_mapped_range()?).to_vec();
    staging.unmap();

    // 7. The same chain on the host, through `forward`.
    let h = first.forward_blocking(&x, batch, seq, None)?;
    let h: Vec<f32> = h.iter().zip(&x).map(|(a, b)| a + b).collect();
    let host = second.forward_blocking(&h, batch, seq, None)?;
    let scale = host.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_diff = gpu
        .iter()
        .zip(&host)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!(
        "two layers and a residual add on the GPU: [{batch}, {seq}, {}], max |GPU chain - host \
         chain| = {max_diff:e} (max |y| = {scale:e})",
        config.dim
    );
    // f32::max skips NaN, so non-finite outputs are checked on their own.
    if gpu.iter().any(|v| !v.is_finite()) || max_diff > 1e-5 * scale.max(1.0) {
        return Err(format!("the GPU chain differs from the host chain by {max_diff}").into());
    }
    Ok(())
}
