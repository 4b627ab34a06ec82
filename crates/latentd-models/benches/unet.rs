//! Times one UNet forward of the Stable Diffusion 1.5 architecture on CPU, ours
//! next to candle-transformers' `stable_diffusion::unet_2d`, on the same weights.
//!
//! ```text
//! cargo run --release -p latentd-models --example write_random_unet
//! cargo bench -p latentd-models --bench unet
//! ```
//!
//! Environment:
//! - `LATENTD_BENCH_WEIGHTS`: the weight file (default
//!   `/tmp/latentd-sd15-unet-random.safetensors`);
//! - `LATENTD_BENCH_SIZES`: latent sides (default `32,64`);
//! - `LATENTD_BENCH_ITERS`: timed runs of each model after one warm-up,
//!   alternating between the two (default 3);
//! - `LATENTD_BENCH_ONLY`: `latentd` or `candle-transformers` to run one side,
//!   e.g. under a profiler.
//!
//! Batch 2, context `[2, 77, 768]`, timestep 500 for both rows.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::unet_2d as ct;
use latentd_models::{UNet2DConditionConfig, UNet2DConditionModel};

mod common;
use common::{env_or, summary};

const BATCH: usize = 2;
const TOKENS: usize = 77;
const TIMESTEP: f64 = 500.0;

/// The same architecture in candle-transformers' hand-written config type.
fn candle_transformers_config(
    cfg: &UNet2DConditionConfig,
) -> anyhow::Result<ct::UNet2DConditionModelConfig> {
    let n = cfg.block_out_channels.len();
    let heads = cfg
        .attention_head_dim
        .expand(n)
        .context("attention_head_dim")?;
    let layers = cfg
        .transformer_layers_per_block
        .expand(n)
        .context("transformer_layers_per_block")?;
    let blocks = (0..n)
        .map(|i| ct::BlockConfig {
            out_channels: cfg.block_out_channels[i],
            use_cross_attn: (cfg.down_block_types[i] == "CrossAttnDownBlock2D")
                .then_some(layers[i]),
            attention_head_dim: heads[i],
        })
        .collect();
    let layers_per_block = cfg.layers_per_block.expand(1).context("layers_per_block")?[0];
    Ok(ct::UNet2DConditionModelConfig {
        center_input_sample: cfg.center_input_sample,
        flip_sin_to_cos: cfg.flip_sin_to_cos,
        freq_shift: cfg.freq_shift,
        blocks,
        layers_per_block,
        downsample_padding: cfg.downsample_padding,
        mid_block_scale_factor: cfg.mid_block_scale_factor,
        norm_num_groups: cfg.norm_num_groups.context("norm_num_groups")?,
        norm_eps: cfg.norm_eps,
        cross_attention_dim: cfg.context_dim()?,
        sliced_attention_size: None,
        use_linear_projection: cfg.use_linear_projection,
    })
}

/// One UNet forward: `(sample, context) -> prediction`.
type Forward = Box<dyn Fn(&Tensor, &Tensor) -> anyhow::Result<Tensor>>;

fn main() -> anyhow::Result<()> {
    let weights = PathBuf::from(env_or(
        "LATENTD_BENCH_WEIGHTS",
        "/tmp/latentd-sd15-unet-random.safetensors",
    ));
    if !weights.exists() {
        bail!(
            "{} not found: write it with `cargo run --release -p latentd-models --example write_random_unet`",
            weights.display()
        );
    }
    let sizes = env_or("LATENTD_BENCH_SIZES", "32,64")
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .context("LATENTD_BENCH_SIZES")?;
    let iters: usize = env_or("LATENTD_BENCH_ITERS", "3")
        .parse()
        .context("LATENTD_BENCH_ITERS")?;
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/sd15_unet_config.json");
    let cfg = UNet2DConditionConfig::from_file(&config)?;

    let dev = Device::Cpu;
    let context_dim = cfg.context_dim()?;
    let inputs = sizes
        .iter()
        .map(|&s| {
            let sample = Tensor::randn(0f32, 1., (BATCH, cfg.in_channels, s, s), &dev)?;
            let context = Tensor::randn(0f32, 1., (BATCH, TOKENS, context_dim), &dev)?;
            Ok((s, sample, context))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let vb = || -> anyhow::Result<VarBuilder<'static>> {
        // SAFETY: the weight file is not modified while the benchmark runs.
        Ok(unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &dev)? })
    };
    println!(
        "UNet forward, SD1.5 architecture, batch {BATCH}, context [{BATCH}, {TOKENS}, {context_dim}], \
         {iters} timed runs after 1 warm-up, {} threads",
        candle_core::utils::get_num_threads()
    );

    let only = std::env::var("LATENTD_BENCH_ONLY").ok();
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    // Both models stay loaded and runs alternate, so load from other processes
    // affects both sides alike.
    let mut sides: Vec<(&str, Forward)> = Vec::new();
    if run("latentd") {
        let unet = UNet2DConditionModel::new(vb()?, &cfg)?;
        let timesteps = Tensor::new(&[TIMESTEP as f32; BATCH], &dev)?;
        sides.push((
            "latentd",
            Box::new(move |x, c| Ok(unet.forward(x, &timesteps, c)?)),
        ));
    }
    if run("candle-transformers") {
        let unet = ct::UNet2DConditionModel::new(
            vb()?,
            cfg.in_channels,
            cfg.out_channels,
            false,
            candle_transformers_config(&cfg)?,
        )?;
        sides.push((
            "candle-transformers",
            Box::new(move |x, c| Ok(unet.forward(x, TIMESTEP, c)?)),
        ));
    }

    let mut table = Vec::new();
    for (s, sample, context) in &inputs {
        let outputs = sides
            .iter()
            .map(|(_, forward)| forward(sample, context))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut times = vec![Vec::with_capacity(iters); sides.len()];
        for _ in 0..iters {
            for ((_, forward), times) in sides.iter().zip(times.iter_mut()) {
                let start = Instant::now();
                forward(sample, context)?;
                times.push(start.elapsed());
            }
        }
        for ((name, _), times) in sides.iter().zip(&times) {
            let (min, median) = summary(times);
            println!("{name:<20} {s}x{s}: min {min:.3}s median {median:.3}s");
        }
        if let ([a, b], [ta, tb]) = (outputs.as_slice(), times.as_slice()) {
            let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            let ((amin, amedian), (bmin, bmedian)) = (summary(ta), summary(tb));
            table.push(format!(
                "| {s}x{s} | {amin:.3} / {amedian:.3} | {bmin:.3} / {bmedian:.3} | {:.2}x | {diff:.2e} |",
                bmin / amin
            ));
        }
    }
    if !table.is_empty() {
        println!("\n| latent | latentd min / median (s) | candle-transformers min / median (s) | speed-up (min) | max abs diff |");
        println!("|---|---|---|---|---|");
        for row in table {
            println!("{row}");
        }
    }
    Ok(())
}
