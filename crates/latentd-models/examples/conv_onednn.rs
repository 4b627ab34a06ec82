//! oneDNN's convolutions against the im2col + GEMM path on the SD1.5 UNet's and VAE's
//! shapes: the same random weights loaded both ways (as training variables, which keep
//! the im2col path, and as plain tensors, which are packed for oneDNN), best of 3 after a
//! warm-up, and the largest difference between the two outputs.
//!
//! ```sh
//! cargo run --release -p latentd-models --features openblas,onednn --example conv_onednn
//! ```

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use latentd_models::nn::Conv2d;

mod common;

fn best_of_3(conv: &Conv2d, xs: &Tensor) -> anyhow::Result<f64> {
    conv.forward(xs)?;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        conv.forward(xs)?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    // (in, out, input side, stride, batch): UNet levels at 512x512 (batch 2, one guided
    // step), its stride-2 downsample, in and out; the VAE decoder's largest levels.
    let shapes = [
        (320, 320, 64, 1, 2),
        (640, 640, 32, 1, 2),
        (1280, 1280, 16, 1, 2),
        (1280, 2560, 16, 1, 2),
        (320, 640, 64, 1, 2),
        (320, 320, 64, 2, 2),
        (4, 320, 64, 1, 2),
        (320, 4, 64, 1, 2),
        (512, 512, 64, 1, 1),
        (128, 128, 512, 1, 1),
    ];
    println!("| conv | batch | im2col + GEMM | oneDNN | kernel | speed-up | max diff |");
    println!("|---|---|---|---|---|---|---|");
    for (cin, cout, side, stride, batch) in shapes {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
        let im2col = Conv2d::new(vb, cin, cout, 3, stride, 1)?;
        let tensors = common::random_weights(&map, &dev)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let onednn = Conv2d::new(vb, cin, cout, 3, stride, 1)?;
        let xs = Tensor::randn(0f32, 1., (batch, cin, side, side), &dev)?;
        let diff = (im2col.forward(&xs)? - onednn.forward(&xs)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        let (old, new) = (best_of_3(&im2col, &xs)?, best_of_3(&onednn, &xs)?);
        let out = (side + 2 - 3) / stride + 1;
        let flops = 2.0 * (batch * cin * cout * 9 * out * out) as f64;
        let kernel = onednn.onednn_kernel(side, side)?.unwrap_or_default();
        println!(
            "| {cin}->{cout} @{side}x{side}, stride {stride} | {batch} | {:.1} ms ({:.0} GF/s) | {:.1} ms ({:.0} GF/s) | {kernel} | {:.2}x | {diff:.1e} |",
            old * 1e3,
            flops / old / 1e9,
            new * 1e3,
            flops / new / 1e9,
            old / new,
        );
    }
    Ok(())
}
