//! One job's sampling state, advanced one model call at a time.
//!
//! A [`Denoiser`] owns everything that makes a job's result its own: its scheduler
//! (with multistep history), its torch-compatible generator, its latents, its
//! conditioning and guidance scale. It knows no model family: the model's
//! [`SamplingRules`](super::SamplingRules) say how the reference pipeline drives the
//! scheduler. The caller decides which model call its rows join, so rows of many jobs
//! at different steps can share one denoiser call.

use candle_core::Tensor;

use super::model::{Conditioning, DiffusionModel, InitialNoise, SamplingRules};
use super::params::GenerationParams;
use crate::rng::TorchRng;
use crate::schedulers::{build_scheduler, untimed_init_noise_sigma, Scheduler};
use crate::{Error, Result};

/// Inputs a job contributes to one model call.
#[derive(Debug)]
pub struct ModelInput {
    /// `[rows, C, h, w]` (latents with any image channels concatenated):
    /// unconditional rows first, then conditional ones, when guided.
    pub latents: Tensor,
    /// One timestep per row.
    pub timesteps: Vec<f32>,
}

/// Sampling state of one job (`n` images).
pub struct Denoiser {
    scheduler: Box<dyn Scheduler>,
    rng: TorchRng,
    /// The per-step noise generator, when it is not `rng` (see
    /// [`GenerationParams::step_noise_seed`]).
    step_rng: Option<TorchRng>,
    latents: Tensor,
    context: Option<Tensor>,
    concat: Option<Tensor>,
    rules: SamplingRules,
    guidance_scale: f64,
    guided: bool,
    n: usize,
    step: usize,
}

impl Denoiser {
    /// Draws the initial noise and prepares the scheduler for a job on `model` with
    /// its encoded `conditioning` (from [`DiffusionModel::encode`]).
    pub fn new(
        model: &dyn DiffusionModel,
        params: &GenerationParams,
        conditioning: Conditioning,
    ) -> Result<Self> {
        let info = model.info();
        params.check(info.size_multiple)?;
        let scheduler = build_scheduler(
            params.scheduler,
            model.scheduler_config(),
            params.steps,
            params.eta,
        )?;
        let mut rng = TorchRng::new(params.seed);
        let noise = rng.randn_tensor(&info.latent_shape(params), model.device())?;
        let noise = noise.to_dtype(model.dtype())?;
        let latents = match info.rules.initial_noise {
            InitialNoise::Unscaled => noise,
            InitialNoise::Scaled => (noise * scheduler.init_noise_sigma())?,
            InitialNoise::ScaledBeforeSetTimesteps => {
                let sigma = untimed_init_noise_sigma(params.scheduler, model.scheduler_config())?;
                (noise * sigma)?
            }
        };

        let n = params.n;
        let guided = info.is_guided(params.guidance_scale);
        let context = match conditioning.text {
            None => None,
            Some(cond) => {
                let cond = cond.repeat((n, 1, 1))?;
                if guided {
                    let uncond = conditioning.negative_text.ok_or_else(|| {
                        Error::InvalidArgument(
                            "guidance needs the negative prompt's embedding".into(),
                        )
                    })?;
                    Some(Tensor::cat(&[&uncond.repeat((n, 1, 1))?, &cond], 0)?)
                } else {
                    Some(cond)
                }
            }
        };
        let concat = match conditioning.concat {
            Some(c) => Some(c.repeat((n, 1, 1, 1))?.to_dtype(model.dtype())?),
            None => None,
        };
        Ok(Self {
            scheduler,
            rng,
            step_rng: params.step_noise_seed.map(TorchRng::new),
            latents,
            context,
            concat,
            rules: info.rules,
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

    /// The text context of this job's rows, `[rows, T, D]` (text-conditioned models).
    pub fn context(&self) -> Option<&Tensor> {
        self.context.as_ref()
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
        let input = match &self.concat {
            Some(image) => Tensor::cat(&[&self.latents, image], 1)?,
            None => self.latents.clone(),
        };
        let input = if self.rules.scale_model_input {
            self.scheduler.scale_model_input(&input, self.step)?
        } else {
            input
        };
        let latents = if self.guided {
            Tensor::cat(&[&input, &input], 0)?
        } else {
            input
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
        let rng = self.step_rng.as_mut().unwrap_or(&mut self.rng);
        self.latents = self
            .scheduler
            .step(&prediction, self.step, &self.latents, rng)?;
        self.step += 1;
        Ok(())
    }
}
