//! Times the VAE decoder and the CLIP text encoder of the Stable Diffusion 1.5
//! architecture on CPU, loaded from diffusers' folder layout with latentd's loaders,
//! on the same weights and shapes as `benches/sd15_parts.py` times diffusers.
//!
//! ```text
//! python crates/latentd-models/benches/sd15_parts.py     # writes /tmp/latentd-sd15-parts, times PyTorch
//! cargo bench -p latentd-models --features openblas --bench parts
//! ```
//!
//! Environment:
//! - `LATENTD_BENCH_PARTS`: the folder with `vae/` and `text_encoder/` (default
//!   `/tmp/latentd-sd15-parts`);
//! - `LATENTD_BENCH_ITERS`: timed runs of each part after one warm-up (default 3).
//!
//! VAE decode: `decode(latents / scaling_factor)` of a `[1, 4, 64, 64]` latent, as the
//! pipeline decodes. Text encoder: one forward of the `[2, 77]` token ids in
//! `benches/sd15_prompt_ids.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use latentd_models::pipeline::WeightFiles;
use latentd_models::text::{ClipTextConfig, ClipTextModel};
use latentd_models::{AutoencoderKL, AutoencoderKLConfig};

mod common;
use common::{env_or, summary};

const LATENT_SIDE: usize = 64;

/// One warm-up, then `iters` timed runs of `f`; prints one line.
fn time_it(name: &str, iters: usize, f: impl Fn() -> anyhow::Result<Tensor>) -> anyhow::Result<()> {
    f()?;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed());
    }
    let (min, median) = summary(&times);
    println!("{name:<34} min {min:.3}s median {median:.3}s");
    Ok(())
}

/// `[B, length]` ids: BOS, each prompt's ids, EOS, EOS padding.
fn prompt_ids(path: &Path, dev: &Device) -> anyhow::Result<Tensor> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let spec: serde_json::Value = serde_json::from_str(&text)?;
    let id = |v: &serde_json::Value| -> anyhow::Result<u32> {
        Ok(u32::try_from(v.as_u64().context("token id")?)?)
    };
    let (bos, eos) = (id(&spec["bos"])?, id(&spec["eos"])?);
    let length = spec["length"].as_u64().context("length")? as usize;
    let prompts = spec["prompts"].as_array().context("prompts")?;
    let mut rows = Vec::with_capacity(prompts.len() * length);
    for prompt in prompts {
        let mut row = vec![bos];
        for v in prompt.as_array().context("prompt")? {
            row.push(id(v)?);
        }
        row.push(eos);
        if row.len() > length {
            bail!("a prompt has {} tokens, more than {length}", row.len());
        }
        row.resize(length, eos);
        rows.extend(row);
    }
    Ok(Tensor::from_vec(rows, (prompts.len(), length), dev)?)
}

/// Peak resident set of this process (Linux `VmHWM`), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env_or("LATENTD_BENCH_PARTS", "/tmp/latentd-sd15-parts"));
    let (vae_dir, text_dir) = (root.join("vae"), root.join("text_encoder"));
    if !vae_dir.join("config.json").exists() || !text_dir.join("config.json").exists() {
        bail!(
            "{} has no vae/ and text_encoder/: write them with \
             `python crates/latentd-models/benches/sd15_parts.py`",
            root.display()
        );
    }
    let iters: usize = env_or("LATENTD_BENCH_ITERS", "3")
        .parse()
        .context("LATENTD_BENCH_ITERS")?;
    let dev = Device::Cpu;
    let dtype = DType::F32;

    let vae_config = AutoencoderKLConfig::from_file(vae_dir.join("config.json"))?;
    let vae = WeightFiles::load(&vae_dir, dtype, &dev, |vb| {
        AutoencoderKL::new(vb, &vae_config)
    })?;
    let text_config = ClipTextConfig::from_file(&text_dir.join("config.json"))?;
    let text_encoder = WeightFiles::load(&text_dir, dtype, &dev, |vb| {
        ClipTextModel::new(vb, &text_config)
    })?;
    println!(
        "latentd SD1.5 parts, {} threads, {iters} timed runs after 1 warm-up",
        candle_core::utils::get_num_threads()
    );

    let latents = Tensor::randn(
        0f32,
        1.,
        (1, vae_config.latent_channels, LATENT_SIDE, LATENT_SIDE),
        &dev,
    )?;
    let scaling = vae_config.scaling_factor;
    let decode_name = format!(
        "vae decode [1, {}, {LATENT_SIDE}, {LATENT_SIDE}]",
        vae_config.latent_channels
    );
    // `AutoencoderKL::decode` takes latents already divided by the scaling factor.
    time_it(&decode_name, iters, || {
        Ok(vae.decode(&(&latents / scaling)?)?)
    })?;

    let ids_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/sd15_prompt_ids.json");
    let ids = prompt_ids(&ids_path, &dev)?;
    let (b, t) = ids.dims2()?;
    time_it(&format!("text encoder [{b}, {t}]"), iters, || {
        Ok(text_encoder.forward(&ids)?)
    })?;

    match peak_rss_mib() {
        Some(mib) => println!("peak RSS {mib:.0} MiB"),
        None => println!("peak RSS unavailable"),
    }
    Ok(())
}
