//! The SD1.5 UNet's attention and feed-forward layers at 512x512 (batch 2, one guided
//! step) on the CPU: self-attention over 4096 and 1024 tokens, cross-attention over 77,
//! and the GEGLU feed-forward at each level's width, random weights, best and median
//! of 5 after a warm-up. `benches/attention_torch.py` times diffusers' `Attention`
//! (SDPA) and `FeedForward` on the same shapes.
//!
//! ```sh
//! cargo run --release -p latentd-models --features openblas,onednn --example attention_cpu
//! ```

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use latentd_models::nn::attention::{Attention, AttentionConfig, FeedForward};

mod common;

/// Loads a layer once to learn its variables, then again on plain random tensors of
/// the same shapes (training variables would keep candle's differentiable path).
fn random_layer<T>(
    dev: &Device,
    load: impl Fn(VarBuilder) -> latentd_models::Result<T>,
) -> anyhow::Result<T> {
    let map = VarMap::new();
    load(VarBuilder::from_varmap(&map, DType::F32, dev))?;
    let tensors = common::random_weights(&map, dev)?;
    Ok(load(VarBuilder::from_tensors(tensors, DType::F32, dev))?)
}

/// Best and median of 5 timed calls after a warm-up, in milliseconds.
fn best_and_median(mut call: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<(f64, f64)> {
    call()?;
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        call()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[0], times[2]))
}

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    // (tokens, width, heads, context tokens: 0 for self-attention)
    let shapes = [
        (4096, 320, 8, 0),
        (1024, 640, 8, 0),
        (256, 1280, 8, 0),
        (4096, 320, 8, 77),
    ];
    for (n, dim, heads, ctx) in shapes {
        let cfg = AttentionConfig {
            query_dim: dim,
            context_dim: (ctx > 0).then_some(768),
            heads,
            head_dim: dim / heads,
            qkv_bias: false,
        };
        let layer = random_layer(&dev, |vb| Attention::new(vb, &cfg))?;
        let xs = Tensor::randn(0f32, 1., (2, n, dim), &dev)?;
        let context = Tensor::randn(0f32, 1., (2, ctx.max(1), 768), &dev)?;
        let context = (ctx > 0).then_some(&context);
        let (best, median) = best_and_median(|| Ok(layer.forward(&xs, context).map(drop)?))?;
        println!(
            "tokens {n:>5} width {dim:>4} heads {heads} context {ctx:>2}: best {best:.1} ms median {median:.1} ms"
        );
    }
    for (n, dim) in [(4096, 320), (1024, 640), (256, 1280)] {
        let layer = random_layer(&dev, |vb| FeedForward::new(vb, dim, 4))?;
        let xs = Tensor::randn(0f32, 1., (2, n, dim), &dev)?;
        let (best, median) = best_and_median(|| Ok(layer.forward(&xs).map(drop)?))?;
        println!(
            "feed-forward tokens {n:>5} width {dim:>4}: best {best:.1} ms median {median:.1} ms"
        );
    }
    Ok(())
}
