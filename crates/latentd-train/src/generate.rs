//! Batched text-to-image generation with the serving pipeline, for evaluation.
//!
//! Jobs that share the step count advance in lockstep, their rows stacked into
//! one UNet call per step (the engine's step-level batching), which is much
//! faster on a CPU than one small call per image.

use candle_core::Tensor;
use latentd_models::pipeline::{Denoiser, GenerationParams, RgbImage, StableDiffusion};

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
    let unconditional = pipe.encode_prompts(&[""])?;
    for group in jobs.chunks(chunk.max(1)) {
        let prompts: Vec<&str> = group.iter().map(|j| j.prompt.as_str()).collect();
        let conditional = pipe.encode_prompts(&prompts)?;
        let mut denoisers = group
            .iter()
            .enumerate()
            .map(|(i, job)| {
                let p = params(pipe, &job.prompt, job.seed, guidance);
                let uncond = p.uses_guidance().then_some(&unconditional);
                Denoiser::new(pipe, &p, &conditional.narrow(0, i, 1)?, uncond)
            })
            .collect::<latentd_models::Result<Vec<_>>>()?;
        while denoisers.iter().any(|d| !d.is_finished()) {
            let inputs = denoisers
                .iter()
                .map(Denoiser::model_input)
                .collect::<latentd_models::Result<Vec<_>>>()?;
            let latents: Vec<&Tensor> = inputs.iter().map(|i| &i.latents).collect();
            let contexts: Vec<&Tensor> = denoisers.iter().map(Denoiser::context).collect();
            let timesteps: Vec<f32> = inputs.iter().flat_map(|i| i.timesteps.clone()).collect();
            let output = pipe.predict(
                &Tensor::cat(&latents, 0)?,
                &timesteps,
                &Tensor::cat(&contexts, 0)?,
            )?;
            let mut row = 0;
            for denoiser in &mut denoisers {
                let rows = denoiser.rows();
                denoiser.advance(&output.narrow(0, row, rows)?)?;
                row += rows;
            }
        }
        let finals: Vec<&Tensor> = denoisers.iter().map(Denoiser::latents).collect();
        images.extend(pipe.decode(&Tensor::cat(&finals, 0)?)?);
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
