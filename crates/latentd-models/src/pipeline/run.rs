//! Whole generations on one thread: the same [`Denoiser`] steps the engine batches
//! across jobs, here in lockstep over a fixed set of jobs (the CLI, evaluation, tests).

use candle_core::Tensor;

use super::denoiser::Denoiser;
use super::image::RgbImage;
use super::model::{ConditionInput, DiffusionModel};
use super::params::GenerationParams;
use crate::{Error, Result};

/// Runs one generation, calling `on_step(done, total)` after each model call.
pub fn generate(
    model: &dyn DiffusionModel,
    params: &GenerationParams,
    on_step: impl FnMut(usize, usize),
) -> Result<Vec<RgbImage>> {
    let latents = generate_latents(model, params, on_step)?;
    model.decode(&latents)
}

/// Like [`generate`], returning the final latents undecoded.
pub fn generate_latents(
    model: &dyn DiffusionModel,
    params: &GenerationParams,
    mut on_step: impl FnMut(usize, usize),
) -> Result<Tensor> {
    let mut latents = run_lockstep(model, std::slice::from_ref(params), &mut on_step)?;
    latents
        .pop()
        .ok_or_else(|| Error::InvalidArgument("no job to run".into()))
}

/// Runs several jobs of one latent size together, their rows stacked into one model
/// call per step, and decodes them in one call: one list of images per job.
pub fn generate_batch(
    model: &dyn DiffusionModel,
    jobs: &[GenerationParams],
) -> Result<Vec<Vec<RgbImage>>> {
    let latents = run_lockstep(model, jobs, &mut |_, _| {})?;
    if latents.is_empty() {
        return Ok(Vec::new());
    }
    let all = model.decode(&Tensor::cat(&latents, 0)?)?;
    let mut images = all.into_iter();
    Ok(jobs
        .iter()
        .map(|p| images.by_ref().take(p.n).collect())
        .collect())
}

/// Encodes every job's conditioning in one call, then steps all unfinished jobs in one
/// model call per step. `on_step` sees the first job's progress.
fn run_lockstep(
    model: &dyn DiffusionModel,
    jobs: &[GenerationParams],
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Tensor>> {
    let info = model.info();
    if let Some(first) = jobs.first() {
        let shape = info.latent_size(first.width, first.height);
        if jobs
            .iter()
            .any(|p| info.latent_size(p.width, p.height) != shape)
        {
            return Err(Error::InvalidArgument(
                "jobs run together must share their image size".into(),
            ));
        }
    }
    let inputs: Vec<ConditionInput> = jobs.iter().map(|p| ConditionInput::of(info, p)).collect();
    let conditioning = model.encode(&inputs)?;
    let mut denoisers = jobs
        .iter()
        .zip(conditioning)
        .map(|(p, c)| Denoiser::new(model, p, c))
        .collect::<Result<Vec<_>>>()?;
    loop {
        let running: Vec<usize> = (0..denoisers.len())
            .filter(|&i| !denoisers[i].is_finished())
            .collect();
        if running.is_empty() {
            break;
        }
        let mut latents = Vec::with_capacity(running.len());
        let mut contexts = Vec::with_capacity(running.len());
        let mut timesteps = Vec::new();
        for &i in &running {
            let input = denoisers[i].model_input()?;
            latents.push(input.latents);
            timesteps.extend(input.timesteps);
            contexts.extend(denoisers[i].context().cloned());
        }
        let context = if contexts.is_empty() {
            None
        } else {
            Some(Tensor::cat(&contexts, 0)?)
        };
        let output = model.predict(&Tensor::cat(&latents, 0)?, &timesteps, context.as_ref())?;
        let mut row = 0;
        for &i in &running {
            let rows = denoisers[i].rows();
            denoisers[i].advance(&output.narrow(0, row, rows)?)?;
            row += rows;
        }
        if let Some(first) = denoisers.first() {
            on_step(first.steps_done(), first.total_steps());
        }
    }
    Ok(denoisers.iter().map(|d| d.latents().clone()).collect())
}
