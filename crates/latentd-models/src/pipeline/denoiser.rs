//! One job's sampling state, advanced one model call at a time.
//!
//! A [`Denoiser`] owns everything that makes a job's result its own: its scheduler
//! (with multistep history), its torch-compatible generator, its latents, its text
//! context and guidance scale. The caller decides which model call its rows join,
//! so rows of many jobs at different steps can share one UNet call.

use candle_core::Tensor;

use super::params::GenerationParams;
use super::stable_diffusion::StableDiffusion;
use crate::rng::TorchRng;
use crate::schedulers::{build_scheduler, Scheduler};
use crate::{Error, Result};

/// Inputs a job contributes to one model call.
#[derive(Debug)]
pub struct ModelInput {
    /// `[rows, C, h, w]`: unconditional rows first, then conditional ones, when guided.
    pub latents: Tensor,
    /// One timestep per row.
    pub timesteps: Vec<f32>,
}

/// Sampling state of one job (`n` images).
pub struct Denoiser {
    scheduler: Box<dyn Scheduler>,
    rng: TorchRng,
    latents: Tensor,
    context: Tensor,
    guidance_scale: f64,
    guided: bool,
    n: usize,
    step: usize,
}

impl Denoiser {
    /// Draws the initial noise and prepares the scheduler.
    ///
    /// `cond` is the prompt's embedding `[1, T, D]`; `uncond` the negative prompt's,
    /// required when `params` uses guidance.
    pub fn new(
        pipe: &StableDiffusion,
        params: &GenerationParams,
        cond: &Tensor,
        uncond: Option<&Tensor>,
    ) -> Result<Self> {
        params.check(pipe.info().vae_scale_factor)?;
        let scheduler = build_scheduler(
            params.scheduler,
            pipe.scheduler_config(),
            params.steps,
            params.eta,
        )?;
        let mut rng = TorchRng::new(params.seed);
        let shape = pipe.latent_shape(params.n, params.width, params.height);
        let noise = rng.randn_tensor(&shape, pipe.device())?;
        let latents = (noise * scheduler.init_noise_sigma())?;

        let n = params.n;
        let cond = cond.repeat((n, 1, 1))?;
        let guided = params.uses_guidance();
        let context = if guided {
            let uncond = uncond.ok_or_else(|| {
                Error::InvalidArgument("guidance needs the negative prompt's embedding".into())
            })?;
            Tensor::cat(&[&uncond.repeat((n, 1, 1))?, &cond], 0)?
        } else {
            cond
        };
        Ok(Self {
            scheduler,
            rng,
            latents,
            context,
            guidance_scale: params.guidance_scale,
            guided,
            n,
            step: 0,
        })
    }

    /// Rows this job adds to a model call: `2n` when guided, else `n`.
    pub fn rows(&self) -> usize {
        if self.guided {
            2 * self.n
        } else {
            self.n
        }
    }

    /// Model calls this job needs in total.
    pub fn total_steps(&self) -> usize {
        self.scheduler.timesteps().len()
    }

    /// Model calls done so far.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// Whether every model call has been made.
    pub fn is_finished(&self) -> bool {
        self.step >= self.total_steps()
    }

    /// The text context of this job's rows, `[rows, T, D]`.
    pub fn context(&self) -> &Tensor {
        &self.context
    }

    /// The current latents `[n, C, h, w]` (the final ones once finished).
    pub fn latents(&self) -> &Tensor {
        &self.latents
    }

    /// The rows and timesteps this job contributes to the next model call.
    pub fn model_input(&self) -> Result<ModelInput> {
        let t = *self.scheduler.timesteps().get(self.step).ok_or_else(|| {
            Error::InvalidArgument("the job has already made all its model calls".into())
        })?;
        let scaled = self.scheduler.scale_model_input(&self.latents, self.step)?;
        let latents = if self.guided {
            Tensor::cat(&[&scaled, &scaled], 0)?
        } else {
            scaled
        };
        Ok(ModelInput {
            latents,
            timesteps: vec![t as f32; self.rows()],
        })
    }

    /// Applies guidance and the scheduler update to this job's slice of a model output.
    pub fn advance(&mut self, model_output: &Tensor) -> Result<()> {
        if model_output.dim(0)? != self.rows() {
            return Err(Error::InvalidArgument(format!(
                "model output has {} rows, the job has {}",
                model_output.dim(0)?,
                self.rows()
            )));
        }
        let prediction = if self.guided {
            let uncond = model_output.narrow(0, 0, self.n)?;
            let cond = model_output.narrow(0, self.n, self.n)?;
            (&uncond + ((cond - &uncond)? * self.guidance_scale)?)?
        } else {
            model_output.clone()
        };
        self.latents = self
            .scheduler
            .step(&prediction, self.step, &self.latents, &mut self.rng)?;
        self.step += 1;
        Ok(())
    }
}

impl StableDiffusion {
    /// Runs a whole generation on its own, calling `on_step(done, total)` after each
    /// model call. The engine uses the same [`Denoiser`] steps, batched across jobs.
    pub fn generate(
        &self,
        params: &GenerationParams,
        mut on_step: impl FnMut(usize, usize),
    ) -> Result<Vec<super::RgbImage>> {
        let latents = self.generate_latents(params, &mut on_step)?;
        self.decode(&latents)
    }

    /// Like [`StableDiffusion::generate`], returning the final latents undecoded.
    pub fn generate_latents(
        &self,
        params: &GenerationParams,
        mut on_step: impl FnMut(usize, usize),
    ) -> Result<Tensor> {
        let negative = params.negative_prompt.as_deref().unwrap_or("");
        let (cond, uncond) = if params.uses_guidance() {
            let both = self.encode_prompts(&[&params.prompt, negative])?;
            (both.narrow(0, 0, 1)?, Some(both.narrow(0, 1, 1)?))
        } else {
            (self.encode_prompts(&[&params.prompt])?, None)
        };
        let mut job = Denoiser::new(self, params, &cond, uncond.as_ref())?;
        let total = job.total_steps();
        while !job.is_finished() {
            let input = job.model_input()?;
            let out = self.predict(&input.latents, &input.timesteps, job.context())?;
            job.advance(&out)?;
            on_step(job.steps_done(), total);
        }
        Ok(job.latents().clone())
    }
}
