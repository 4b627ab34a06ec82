//! Ancestral Euler sampling, matching diffusers' `EulerAncestralDiscreteScheduler`:
//! an Euler step down to `sigma_down`, then fresh noise of scale `sigma_up`.

use candle_core::Tensor;

use super::common::{self, check_same_shape, check_step_index, div, mul, StepCursor, ZeroSnr};
use super::config::{PredictionType, SchedulerConfig};
use super::euler::{predict_x0, start_sigma, InterpolatedSchedule};
use super::Scheduler;
use crate::rng::TorchRng;
use crate::Result;

/// Euler ancestral sampler; draws `randn(sample shape)` at every step.
#[derive(Debug)]
pub(crate) struct EulerAncestral {
    timesteps: Vec<f64>,
    /// One sigma per timestep plus the final 0.
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    prediction_type: PredictionType,
    cursor: StepCursor,
}

impl EulerAncestral {
    /// `EulerAncestralDiscreteScheduler.from_config(config)` followed by `set_timesteps(steps)`.
    pub(crate) fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let prediction_type = config.prediction_type();
        if prediction_type == PredictionType::Sample {
            return Err(config.unsupported(
                "prediction_type",
                "Euler ancestral supports only epsilon and v_prediction",
            ));
        }
        let alphas_cumprod = common::train_alphas_cumprod(config, ZeroSnr::RescaleFloored)?;
        let train_sigmas = common::train_sigmas(&alphas_cumprod);
        let InterpolatedSchedule {
            spacing,
            timesteps,
            sigmas,
        } = InterpolatedSchedule::new(config, steps, &train_sigmas)?;
        let sigmas: Vec<f32> = sigmas
            .iter()
            .map(|&s| s as f32)
            .chain(std::iter::once(0.0))
            .collect();
        Ok(Self {
            init_noise_sigma: start_sigma(spacing, &sigmas),
            cursor: StepCursor::new(timesteps.len()),
            timesteps: timesteps.into_iter().map(f64::from).collect(),
            sigmas,
            prediction_type,
        })
    }
}

impl Scheduler for EulerAncestral {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        f64::from(self.init_noise_sigma)
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        check_step_index(step, self.timesteps.len())?;
        let sigma = self.sigmas[step];
        div(sample, (sigma * sigma + 1.0).sqrt())
    }

    fn set_begin_index(&mut self, index: usize) -> Result<()> {
        self.cursor.begin_at(index)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        common::add_noise_sigma(original, noise, common::sigma_at(&self.sigmas, index)?)
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
        let sigma = self.sigmas[step];
        let pred_x0 = predict_x0(self.prediction_type, model_output, sample, sigma)?;

        let sigma_to = self.sigmas[step + 1];
        let (from_sq, to_sq) = (sigma * sigma, sigma_to * sigma_to);
        let sigma_up = (to_sq * (from_sq - to_sq) / from_sq).sqrt();
        let sigma_down = (to_sq - sigma_up * sigma_up).sqrt();

        let derivative = div(&(sample - pred_x0)?, sigma)?;
        let prev = (sample + mul(&derivative, sigma_down - sigma)?)?;
        // Drawn at every step, the last included, to keep the generator in step with diffusers.
        let noise = rng
            .randn_tensor(model_output.dims(), model_output.device())?
            .to_dtype(model_output.dtype())?;
        let prev = (prev + mul(&noise, sigma_up)?)?;
        self.cursor.advance();
        Ok(prev)
    }
}
