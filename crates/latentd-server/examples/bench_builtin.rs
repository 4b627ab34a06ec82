//! Times the built-in model end to end: prompt encoding, 20 DDIM steps with guidance
//! (2 UNet rows per call), decoding and PNG encoding, one image at native size.
//!
//! ```sh
//! cargo run --release -p latentd-server --example bench_builtin -- [RUNS]
//! ```

use std::time::Instant;

use candle_core::Device;
use latentd_engine::png_meta::{encode_png, ImageMetadata};
use latentd_models::pipeline::{generate, DiffusionModel, GenerationParams, StableDiffusion};
use latentd_models::schedulers::SchedulerKind;
use latentd_server::builtin;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = builtin::unpack()?;
    let pipe = StableDiffusion::load_named(&dir, builtin::MODEL_NAME, &Device::Cpu)?;
    let info = pipe.info().clone();
    let prompts = [
        "a red circle",
        "a small blue square at the top left",
        "a yellow triangle left of a green circle",
        "a large purple circle in the center on a white background",
    ];
    let mut times = Vec::new();
    for i in 0..runs + 2 {
        let params = GenerationParams {
            prompt: prompts[i % prompts.len()].to_string(),
            negative_prompt: None,
            width: info.native_width,
            height: info.native_height,
            steps: 20,
            guidance_scale: 4.0,
            scheduler: SchedulerKind::Ddim,
            seed: i as u64,
            n: 1,
            eta: 0.0,
            image: None,
            mask: None,
            strength: None,
            step_noise_seed: None,
        };
        let started = Instant::now();
        let images = generate(&pipe, &params, |_, _| {})?;
        let png = encode_png(&images[0], &ImageMetadata::new(&info.name, &params, 0))?;
        let elapsed = started.elapsed();
        assert!(!png.is_empty());
        if i >= 2 {
            times.push(elapsed.as_secs_f64() * 1000.0); // the first two are warm-up
        }
    }
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    println!(
        "built-in model {}x{}, 20 DDIM steps, guidance 4 (2 rows/call), batch 1, {runs} runs: min {:.1} ms, median {:.1} ms, mean {:.1} ms per image",
        info.native_width,
        info.native_height,
        times.first().copied().unwrap_or(0.0),
        times.get(times.len() / 2).copied().unwrap_or(0.0),
        mean
    );
    Ok(())
}
