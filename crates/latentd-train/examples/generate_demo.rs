//! Generates one image with the serving pipeline's default settings (native size,
//! 20 DDIM steps): `generate_demo MODEL_DIR PROMPT SEED GUIDANCE OUT.png`.

use std::path::PathBuf;

use candle_core::Device;
use latentd_models::pipeline::StableDiffusion;
use latentd_train::generate::{generate, Job};
use latentd_train::grid::write_png;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, prompt, seed, guidance, out] = args.as_slice() else {
        return Err("usage: generate_demo MODEL_DIR PROMPT SEED GUIDANCE OUT.png".into());
    };
    let pipe = StableDiffusion::load(&PathBuf::from(dir), &Device::Cpu)?;
    let job = Job {
        prompt: prompt.clone(),
        seed: seed.parse()?,
    };
    let images = generate(&pipe, &[job], guidance.parse()?, 1)?;
    let image = images.first().ok_or("no image")?;
    write_png(image, &PathBuf::from(out))?;
    Ok(())
}
