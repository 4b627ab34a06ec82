//! Writes a UNet weight file with random values and diffusers' tensor names, for
//! benchmarks. Usage:
//!
//! ```text
//! cargo run --release -p latentd-models --example write_random_unet -- \
//!     [CONFIG_JSON (default benches/sd15_unet_config.json)] \
//!     [OUT (default /tmp/latentd-sd15-unet-random.safetensors)]
//! ```
//!
//! The names and shapes are those the model asks for when it is built, so the
//! file has exactly diffusers' layout for that config. Values are small normal
//! draws (norm scales are one) so activations stay finite.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use latentd_models::{UNet2DConditionConfig, UNet2DConditionModel};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let config = args.next().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/sd15_unet_config.json")
    });
    let out = args
        .next()
        .unwrap_or_else(|| "/tmp/latentd-sd15-unet-random.safetensors".into());

    let cfg = UNet2DConditionConfig::from_file(&config)?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    UNet2DConditionModel::new(vb, &cfg).context("enumerating the UNet's tensors")?;

    let vars = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut count = 0usize;
    for (name, var) in vars.iter() {
        let shape = var.shape().clone();
        let value = if name.contains("norm") && name.ends_with(".weight") {
            Tensor::ones(&shape, DType::F32, &Device::Cpu)?
        } else {
            (Tensor::randn(0f32, 1f32, &shape, &Device::Cpu)? * 0.02)?
        };
        var.set(&value)?;
        count += shape.elem_count();
    }
    drop(vars);
    varmap.save(&out)?;
    println!("wrote {count} parameters to {out}");
    Ok(())
}
