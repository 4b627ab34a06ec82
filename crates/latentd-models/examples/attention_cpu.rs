//! The SD1.5 UNet's attention layers at 512x512 (batch 2, one guided step) on the CPU:
//! self-attention over 4096 and 1024 tokens and cross-attention over 77, random
//! weights, best and median of 5 after a warm-up. `benches/attention_torch.py` times
//! diffusers' `Attention` (SDPA) on the same shapes.
//!
//! ```sh
//! cargo run --release -p latentd-models --features openblas,onednn --example attention_cpu
//! ```

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use latentd_models::nn::attention::{Attention, AttentionConfig};

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
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
        let cfg = AttentionConfig {
            query_dim: dim,
            context_dim: (ctx > 0).then_some(768),
            heads,
            head_dim: dim / heads,
            qkv_bias: false,
        };
        Attention::new(vb, &cfg)?;
        // The same layer on plain tensors (training variables keep candle's
        // differentiable path).
        let mut tensors = HashMap::new();
        for (name, var) in map
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .iter()
        {
            tensors.insert(name.clone(), Tensor::randn(0f32, 0.05, var.shape(), &dev)?);
        }
        let layer = Attention::new(VarBuilder::from_tensors(tensors, DType::F32, &dev), &cfg)?;
        let xs = Tensor::randn(0f32, 1., (2, n, dim), &dev)?;
        let context = Tensor::randn(0f32, 1., (2, ctx.max(1), 768), &dev)?;
        let context = (ctx > 0).then_some(&context);
        layer.forward(&xs, context)?;
        let mut times = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            layer.forward(&xs, context)?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "tokens {n:>5} width {dim:>4} heads {heads} context {ctx:>2}: best {:.1} ms median {:.1} ms",
            times[0], times[2]
        );
    }
    Ok(())
}
