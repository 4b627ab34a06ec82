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

/// The conditioning part a job's start needs, or an error naming it.
fn required<'a, T>(value: Option<&'a T>, what: &str) -> Result<&'a T> {
    value.ok_or_else(|| Error::InvalidArgument(format!("the job needs {what}")))
}

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
    /// Channels concatenated before the scheduler's input scaling (super-resolution).
    concat: Option<Tensor>,
    /// Channels concatenated after it (a 9-channel inpainting UNet's mask and masked
    /// image latents), `[n, 1 + C, h, w]`.
    concat_scaled: Option<Tensor>,
    /// The known region blended back after every step (inpainting with a 4-channel UNet).
    blend: Option<Blend>,
    rules: SamplingRules,
    guidance_scale: f64,
    guided: bool,
    n: usize,
    /// The first model call (img2img and inpainting skip the start of the schedule).
    start: usize,
    /// The next model call, an index into the whole schedule.
    step: usize,
}

/// What an ordinary UNet's inpainting keeps: the input image's latents, re-noised to
/// each step's level with the job's initial noise, replace the latents outside the mask.
struct Blend {
    image_latents: Tensor,
    /// `[n, 1, h, w]`, 1 = repaint.
    mask: Tensor,
    noise: Tensor,
}

/// How a job starts, from its parameters and the model.
enum Start {
    /// Pure noise (text-to-image, unconditional, super-resolution).
    Noise,
    /// img2img: the input image's latents noised to the start step.
    Image,
    /// Inpainting, at `strength`.
    Inpaint { full_strength: bool },
}

impl Denoiser {
    /// Draws the initial noise and prepares the scheduler for a job on `model` with
    /// its encoded `conditioning` (from [`DiffusionModel::encode`]).
    ///
    /// Random draws follow diffusers' order: for img2img the input image's posterior
    /// sample, then the noise (`StableDiffusionImg2ImgPipeline`); for inpainting the
    /// image's sample (unless a 9-channel UNet runs at full strength), the noise, then
    /// the masked image's sample (`StableDiffusionInpaintPipeline`).
    pub fn new(
        model: &dyn DiffusionModel,
        params: &GenerationParams,
        conditioning: Conditioning,
    ) -> Result<Self> {
        let info = model.info();
        params.check(info.size_multiple)?;
        let mut scheduler = build_scheduler(
            params.scheduler,
            model.scheduler_config(),
            params.steps,
            params.eta,
        )?;
        let kind = if !info.image_edits || params.image.is_none() {
            Start::Noise
        } else if params.mask.is_some() || info.mask_channels {
            Start::Inpaint {
                full_strength: params.effective_strength(info.mask_channels) == Some(1.0),
            }
        } else {
            Start::Image
        };
        let start = match (&kind, params.effective_strength(info.mask_channels)) {
            (Start::Noise, _) | (_, None) => 0,
            (_, Some(strength)) => GenerationParams::start_step(params.steps, strength),
        };
        if start > 0 {
            scheduler.set_begin_index(start)?;
        }
        let n = params.n;
        let shape = info.latent_shape(params);
        // The sampler's state is f32 whatever the networks compute in.
        let dtype = super::precision::STATE_DTYPE;
        let mut rng = TorchRng::new(params.seed);
        let mut concat_scaled = None;
        let mut blend = None;
        let latents = match kind {
            Start::Noise => {
                let noise = rng.randn_tensor(&shape, model.device())?.to_dtype(dtype)?;
                match info.rules.initial_noise {
                    InitialNoise::Unscaled => noise,
                    InitialNoise::Scaled => (noise * scheduler.init_noise_sigma())?,
                    InitialNoise::ScaledBeforeSetTimesteps => {
                        let sigma =
                            untimed_init_noise_sigma(params.scheduler, model.scheduler_config())?;
                        (noise * sigma)?
                    }
                }
            }
            Start::Image => {
                let init = required(conditioning.init.as_ref(), "the input image's latents")?;
                let image_latents = init.sample(&mut rng)?.repeat((n, 1, 1, 1))?;
                let noise = rng.randn_tensor(&shape, model.device())?.to_dtype(dtype)?;
                scheduler.add_noise(&image_latents, &noise, start)?
            }
            Start::Inpaint { full_strength } => {
                let needs_image = !info.mask_channels || !full_strength;
                let image_latents = match needs_image {
                    true => {
                        let init =
                            required(conditioning.init.as_ref(), "the input image's latents")?;
                        Some(init.sample(&mut rng)?.repeat((n, 1, 1, 1))?)
                    }
                    false => None,
                };
                let noise = rng.randn_tensor(&shape, model.device())?.to_dtype(dtype)?;
                let latents = match (&image_latents, full_strength) {
                    (Some(image), false) => scheduler.add_noise(image, &noise, start)?,
                    _ => (&noise * scheduler.init_noise_sigma())?,
                };
                let masked = required(conditioning.masked.as_ref(), "the masked image's latents")?;
                let masked = masked.sample(&mut rng)?.repeat((n, 1, 1, 1))?;
                let mask = required(conditioning.mask.as_ref(), "the mask")?
                    .to_dtype(dtype)?
                    .repeat((n, 1, 1, 1))?;
                if info.mask_channels {
                    concat_scaled = Some(Tensor::cat(&[&mask, &masked], 1)?);
                } else {
                    let image_latents =
                        required(image_latents.as_ref(), "the input image's latents")?.clone();
                    blend = Some(Blend {
                        image_latents,
                        mask,
                        noise,
                    });
                }
                latents
            }
        };

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
            Some(c) => Some(c.repeat((n, 1, 1, 1))?.to_dtype(dtype)?),
            None => None,
        };
        Ok(Self {
            scheduler,
            rng,
            step_rng: params.step_noise_seed.map(TorchRng::new),
            latents,
            context,
            concat,
            concat_scaled,
            blend,
            rules: info.rules,
            guidance_scale: params.guidance_scale,
            guided,
            n,
            start,
            step: start,
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

    /// Model calls this job makes in total (fewer than the schedule's for img2img and
    /// inpainting below full strength).
    pub fn total_steps(&self) -> usize {
        self.scheduler.timesteps().len() - self.start
    }

    /// Model calls done so far.
    pub fn steps_done(&self) -> usize {
        self.step - self.start
    }

    /// Whether every model call has been made.
    pub fn is_finished(&self) -> bool {
        self.step >= self.scheduler.timesteps().len()
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
        let input = match &self.concat_scaled {
            Some(channels) => Tensor::cat(&[&input, channels], 1)?,
            None => input,
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
        let latents = self
            .scheduler
            .step(&prediction, self.step, &self.latents, rng)?;
        self.latents = match &self.blend {
            None => latents,
            Some(blend) => {
                // diffusers: the known region at the next step's noise level (noise-free
                // after the last step), blended in where the mask keeps the image.
                let next = self.step + 1;
                let known = if next < self.scheduler.timesteps().len() {
                    self.scheduler
                        .add_noise(&blend.image_latents, &blend.noise, next)?
                } else {
                    blend.image_latents.clone()
                };
                let keep = (1.0 - &blend.mask)?;
                ((keep.broadcast_mul(&known))? + blend.mask.broadcast_mul(&latents)?)?
            }
        };
        self.step += 1;
        Ok(())
    }
}
