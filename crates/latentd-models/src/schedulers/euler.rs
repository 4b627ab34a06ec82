//! Euler sampling in sigma space (Karras et al. 2022, algorithm 2 without churn),
//! matching diffusers' `EulerDiscreteScheduler`.

use candle_core::Tensor;

use super::common::{
    self, check_same_shape, check_step_index, descending_timesteps, div, mul, Spacing, StepCursor,
    ZeroSnr,
};
use super::config::{PredictionType, SchedulerConfig};
use super::sigmas::{interp, log_sigmas, sigma_range, sigma_to_t, SigmaGrid};
use super::Scheduler;
use crate::rng::TorchRng;
use crate::Result;

/// Euler sampler; deterministic (diffusers' default `s_churn = 0` draws no noise).
#[derive(Debug)]
pub(crate) struct Euler {
    timesteps: Vec<f64>,
    /// One sigma per timestep plus the final one.
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    prediction_type: PredictionType,
    cursor: StepCursor,
}

/// The schedule shared by both Euler schedulers before any sigma grid is applied.
pub(crate) struct InterpolatedSchedule {
    pub spacing: Spacing,
    /// Timesteps spaced as configured, in float32.
    pub timesteps: Vec<f32>,
    /// The training sigmas interpolated at the timesteps, in float64.
    pub sigmas: Vec<f64>,
}

impl InterpolatedSchedule {
    pub(crate) fn new(
        config: &SchedulerConfig,
        steps: usize,
        train_sigmas: &[f32],
    ) -> Result<Self> {
        let num_train = common::num_train_timesteps(config)?;
        let spacing = Spacing::from_config(config, Spacing::Linspace)?;
        let offset = config.steps_offset.unwrap_or(0);
        let timesteps: Vec<f32> = descending_timesteps(spacing, steps, num_train, offset)
            .into_iter()
            .map(|t| t as f32)
            .collect();
        let at: Vec<f64> = timesteps.iter().map(|&t| f64::from(t)).collect();
        Ok(Self {
            spacing,
            sigmas: interp(&at, train_sigmas),
            timesteps,
        })
    }
}

/// The sigma sampling starts from: the largest one, or `sqrt(max^2 + 1)` for
/// `leading` spacing (diffusers' `init_noise_sigma`).
pub(crate) fn start_sigma(spacing: Spacing, sigmas: &[f32]) -> f32 {
    let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    match spacing {
        Spacing::Leading => (max * max + 1.0).sqrt(),
        Spacing::Linspace | Spacing::Trailing => max,
    }
}

impl Euler {
    /// `EulerDiscreteScheduler.from_config(config)` followed by `set_timesteps(steps)`.
    pub(crate) fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let alphas_cumprod = common::train_alphas_cumprod(config, ZeroSnr::RescaleFloored)?;
        let train_sigmas = common::train_sigmas(&alphas_cumprod);
        let grid = SigmaGrid::from_config(config, false)?;
        let InterpolatedSchedule {
            spacing,
            mut timesteps,
            sigmas: interpolated,
        } = InterpolatedSchedule::new(config, steps, &train_sigmas)?;

        let mut sigmas = match config.interpolation_type.as_deref().unwrap_or("linear") {
            "linear" => interpolated,
            "log_linear" => log_linear_sigmas(&train_sigmas, steps),
            other => {
                return Err(config.unsupported(
                    "interpolation_type",
                    format!("`{other}` (expected linear or log_linear)"),
                ))
            }
        };
        let (smallest, largest) = match (sigmas.last(), sigmas.first()) {
            (Some(&last), Some(&first)) => (last, first),
            _ => (0.0, 0.0),
        };
        let (sigma_min, sigma_max) = sigma_range(config, smallest, largest);
        if let Some(grid) = grid.grid(sigma_min, sigma_max, steps) {
            let logs = log_sigmas(&train_sigmas);
            timesteps = grid.iter().map(|&s| sigma_to_t(s, &logs) as f32).collect();
            sigmas = grid;
        }
        let last = match config.final_sigmas_type.as_deref().unwrap_or("zero") {
            "zero" => 0.0,
            "sigma_min" => train_sigmas[0],
            other => {
                return Err(config.unsupported(
                    "final_sigmas_type",
                    format!("`{other}` (expected zero or sigma_min)"),
                ))
            }
        };
        let sigmas: Vec<f32> = sigmas
            .iter()
            .map(|&s| s as f32)
            .chain(std::iter::once(last))
            .collect();

        let prediction_type = config.prediction_type();
        let continuous = match config.timestep_type.as_deref().unwrap_or("discrete") {
            "discrete" => false,
            "continuous" => true,
            other => {
                return Err(config.unsupported(
                    "timestep_type",
                    format!("`{other}` (expected discrete or continuous)"),
                ))
            }
        };
        if continuous && prediction_type == PredictionType::VPrediction {
            timesteps = sigmas[..sigmas.len() - 1]
                .iter()
                .map(|s| 0.25 * s.ln())
                .collect();
        }
        Ok(Self {
            init_noise_sigma: start_sigma(spacing, &sigmas),
            cursor: StepCursor::new(timesteps.len()),
            timesteps: timesteps.into_iter().map(f64::from).collect(),
            sigmas,
            prediction_type,
        })
    }
}

/// `exp(torch.linspace(log(sigma_max), log(sigma_min), steps + 1))` in float32.
fn log_linear_sigmas(train_sigmas: &[f32], steps: usize) -> Vec<f64> {
    let (Some(&min), Some(&max)) = (train_sigmas.first(), train_sigmas.last()) else {
        return Vec::new();
    };
    let (start, end) = (max.ln(), min.ln());
    let n = steps + 1;
    let step = (end - start) / steps as f32;
    (0..n)
        .map(|i| {
            let log = if i < n / 2 {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((n - 1 - i) as f32, end)
            };
            f64::from(log.exp())
        })
        .collect()
}

/// `x0` predicted from the model output at noise level `sigma` (Euler schedulers).
pub(crate) fn predict_x0(
    prediction_type: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f32,
) -> Result<Tensor> {
    Ok(match prediction_type {
        PredictionType::Epsilon => (sample - mul(model_output, sigma)?)?,
        PredictionType::VPrediction => {
            let variance = sigma * sigma + 1.0;
            (mul(model_output, -sigma / variance.sqrt())? + div(sample, variance)?)?
        }
        PredictionType::Sample => model_output.clone(),
    })
}

impl Scheduler for Euler {
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
        _rng: &mut TorchRng,
    ) -> Result<Tensor> {
        self.cursor.check(step)?;
        check_same_shape(model_output, sample)?;
        let sigma = self.sigmas[step];
        let pred_x0 = predict_x0(self.prediction_type, model_output, sample, sigma)?;
        let derivative = div(&(sample - pred_x0)?, sigma)?;
        let dt = self.sigmas[step + 1] - sigma;
        let prev = (sample + mul(&derivative, dt)?)?;
        self.cursor.advance();
        Ok(prev)
    }
}
