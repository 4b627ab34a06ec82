//! Batched text-to-image generation with the serving pipeline, for evaluation.
//!
//! Jobs that share the step count advance in lockstep, their rows stacked into
//! one UNet call per step (the engine's step-level batching), which is much
//! faster on a CPU than one small call per image.

use latentd_models::pipeline::{
    generate_batch, DiffusionModel, GenerationParams, RgbImage, StableDiffusion,
};

use crate::Result;

/// One image to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The prompt.
    pub prompt: String,
    /// Seed of the initial noise.
    pub seed: u64,
}

/// Default sampling settings of the pipeline for `prompt`: native size, the
/// folder's scheduler, 20 steps, deterministic DDIM.
pub fn params(pipe: &StableDiffusion, prompt: &str, seed: u64, guidance: f64) -> GenerationParams {
    let info = pipe.info();
    GenerationParams {
        prompt: prompt.to_owned(),
        negative_prompt: None,
        width: info.native_width,
        height: info.native_height,
        steps: 20,
        guidance_scale: guidance,
        scheduler: info.default_scheduler,
        seed,
        n: 1,
        eta: 0.0,
        image: None,
        mask: None,
        strength: None,
        step_noise_seed: None,
    }
}

/// Generates one image per job with [`params`], `chunk` jobs per batched call.
pub fn generate(
    pipe: &StableDiffusion,
    jobs: &[Job],
    guidance: f64,
    chunk: usize,
) -> Result<Vec<RgbImage>> {
    let mut images = Vec::with_capacity(jobs.len());
    for group in jobs.chunks(chunk.max(1)) {
        let params: Vec<GenerationParams> = group
            .iter()
            .map(|job| params(pipe, &job.prompt, job.seed, guidance))
            .collect();
        images.extend(generate_batch(pipe, &params)?.into_iter().flatten());
    }
    Ok(images)
}

/// The pipeline's image as latentd-demo's image type.
pub fn to_demo_image(image: &RgbImage) -> Result<latentd_demo::RgbImage> {
    Ok(latentd_demo::RgbImage::new(
        image.width as u32,
        image.height as u32,
        image.data.clone(),
    )?)
}
