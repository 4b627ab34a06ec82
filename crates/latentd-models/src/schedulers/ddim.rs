//! DDIM (Song et al. 2021), matching diffusers' `DDIMScheduler`.

use candle_core::Tensor;

use super::common::{
    self, check_same_shape, check_step_index, descending_timesteps, div, mul, Spacing, StepCursor,
    ZeroSnr,
};
use super::config::{PredictionType, SchedulerConfig};
use super::Scheduler;
use crate::rng::TorchRng;
use crate::{Error, Result};

/// DDIM sampler; `eta` = 0 is deterministic, `eta` = 1 adds DDPM-like noise.
#[derive(Debug)]
pub(crate) struct Ddim {
    alphas_cumprod: Vec<f32>,
    /// `alphas_cumprod` "before" the first training step (1 with `set_alpha_to_one`).
    final_alpha_cumprod: f32,
    /// Integer timesteps (as f64 for the trait).
    timesteps: Vec<f64>,
    /// `num_train_timesteps / steps`, the distance to the previous timestep.
    step_ratio: usize,
    prediction_type: PredictionType,
    clip_range: Option<f32>,
    eta: f32,
    cursor: StepCursor,
}

impl Ddim {
    /// `DDIMScheduler.from_config(config)` followed by `set_timesteps(steps)`.
    pub(crate) fn new(config: &SchedulerConfig, steps: usize, eta: f64) -> Result<Self> {
        if config.thresholding.unwrap_or(false) {
            return Err(config.unsupported("thresholding", "dynamic thresholding is not supported"));
        }
        let num_train = common::num_train_timesteps(config)?;
        let alphas_cumprod = common::train_alphas_cumprod(config, ZeroSnr::Rescale)?;
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            alphas_cumprod[0]
        };
        let spacing = Spacing::from_config(config, Spacing::Leading)?;
        let offset = config.steps_offset.unwrap_or(0);
        let timesteps: Vec<f64> = descending_timesteps(spacing, steps, num_train, offset)
            .into_iter()
            .map(f64::round_ties_even)
            .collect();
        if let Some(t) = timesteps.iter().find(|&&t| t >= num_train as f64) {
            return Err(Error::InvalidArgument(format!(
                "timestep {t} (steps_offset {offset}) is beyond num_train_timesteps {num_train}"
            )));
        }
        let clip_range = match config.clip_sample.unwrap_or(true) {
            true => Some(config.clip_sample_range.unwrap_or(1.0) as f32),
            false => None,
        };
        Ok(Self {
            alphas_cumprod,
            final_alpha_cumprod,
            cursor: StepCursor::new(timesteps.len()),
            timesteps,
            step_ratio: num_train / steps,
            prediction_type: config.prediction_type(),
            clip_range,
            eta: eta as f32,
        })
    }

    /// `alphas_cumprod[t]`, or the final value for `t < 0`.
    fn alpha_prod(&self, t: i64) -> f32 {
        usize::try_from(t)
            .ok()
            .and_then(|t| self.alphas_cumprod.get(t).copied())
            .unwrap_or(self.final_alpha_cumprod)
    }
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        check_step_index(step, self.timesteps.len())?;
        Ok(sample.clone())
    }

    fn set_begin_index(&mut self, index: usize) -> Result<()> {
        self.cursor.begin_at(index)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        check_step_index(index, self.timesteps.len())?;
        let t = self.timesteps[index] as i64;
        common::add_noise_alpha(original, noise, self.alpha_prod(t))
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        rng: &mut TorchRng,
    ) -> Result<Tensor> {
        self.cursor.check(step)?;
        check_same_shape(model_output, sample)?;
        let t = self.timesteps[step] as i64;
        let alpha_t = self.alpha_prod(t);
        let alpha_prev = self.alpha_prod(t - self.step_ratio as i64);
        let beta_t = 1.0 - alpha_t;

        let (pred_x0, pred_eps) = match self.prediction_type {
            PredictionType::Epsilon => {
                let x0 = div(
                    &(sample - mul(model_output, beta_t.sqrt())?)?,
                    alpha_t.sqrt(),
                )?;
                (x0, model_output.clone())
            }
            PredictionType::Sample => {
                let eps = div(
                    &(sample - mul(model_output, alpha_t.sqrt())?)?,
                    beta_t.sqrt(),
                )?;
                (model_output.clone(), eps)
            }
            PredictionType::VPrediction => (
                (mul(sample, alpha_t.sqrt())? - mul(model_output, beta_t.sqrt())?)?,
                (mul(model_output, alpha_t.sqrt())? + mul(sample, beta_t.sqrt())?)?,
            ),
        };
        let pred_x0 = match self.clip_range {
            Some(r) => pred_x0.clamp(-r, r)?,
            None => pred_x0,
        };

        let beta_prev = 1.0 - alpha_prev;
        let variance = (beta_prev / beta_t) * (1.0 - alpha_t / alpha_prev);
        let std_dev = self.eta * variance.sqrt();
        let direction = mul(&pred_eps, (1.0 - alpha_prev - std_dev * std_dev).sqrt())?;
        let mut prev = (mul(&pred_x0, alpha_prev.sqrt())? + direction)?;
        if self.eta > 0.0 {
            let noise = rng
                .randn_tensor(model_output.dims(), model_output.device())?
                .to_dtype(model_output.dtype())?;
            prev = (prev + mul(&noise, std_dev)?)?;
        }
        self.cursor.advance();
        Ok(prev)
    }
}
