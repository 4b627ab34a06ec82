//! DPM-Solver++ multistep (Lu et al. 2022), matching diffusers'
//! `DPMSolverMultistepScheduler` with `algorithm_type="dpmsolver++"`.

use candle_core::Tensor;

use super::common::{
    self, check_same_shape, check_step_index, div, mul, np_arange, np_linspace, Spacing,
    StepCursor, ZeroSnr,
};
use super::config::{PredictionType, SchedulerConfig};
use super::sigmas::{interp, log_sigmas, sigma_range, sigma_to_t, SigmaGrid};
use super::Scheduler;
use crate::rng::TorchRng;
use crate::Result;

/// Below this many steps the last steps fall back to lower orders (diffusers' rule).
const LOWER_ORDER_FINAL_BELOW: usize = 15;

/// The second-order update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SolverType {
    Midpoint,
    Heun,
}

/// DPM-Solver++ (2M for `solver_order = 2`); deterministic.
#[derive(Debug)]
pub(crate) struct DpmSolver {
    timesteps: Vec<f64>,
    /// One sigma per timestep plus the final one.
    sigmas: Vec<f32>,
    prediction_type: PredictionType,
    solver_order: usize,
    solver_type: SolverType,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigma_zero: bool,
    /// Data predictions of the last `solver_order` steps, most recent last.
    model_outputs: Vec<Tensor>,
    lower_order_nums: usize,
    cursor: StepCursor,
}

/// `alpha_t`, `sigma_t` and `lambda_t = log(alpha_t / sigma_t)` of a noise level, in float32.
#[derive(Debug, Clone, Copy)]
struct Level {
    alpha: f32,
    sigma: f32,
    lambda: f32,
}

impl Level {
    fn new(sigma: f32) -> Self {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        let sigma = sigma * alpha;
        Self {
            alpha,
            sigma,
            lambda: alpha.ln() - sigma.ln(),
        }
    }
}

impl DpmSolver {
    /// `DPMSolverMultistepScheduler.from_config(config[, use_karras_sigmas=True])`
    /// followed by `set_timesteps(steps)`.
    pub(crate) fn new(config: &SchedulerConfig, steps: usize, karras: bool) -> Result<Self> {
        validate(config)?;
        let solver_type = match config.solver_type.as_deref().unwrap_or("midpoint") {
            // diffusers maps the solver types of DEIS / UniPC configs to midpoint.
            "midpoint" | "logrho" | "bh1" | "bh2" => SolverType::Midpoint,
            "heun" => SolverType::Heun,
            other => {
                return Err(config.unsupported(
                    "solver_type",
                    format!("`{other}` (expected midpoint or heun)"),
                ))
            }
        };
        let solver_order = config.solver_order.unwrap_or(2);
        if !(1..=3).contains(&solver_order) {
            return Err(config.unsupported(
                "solver_order",
                format!("{solver_order} (expected 1, 2 or 3)"),
            ));
        }
        let final_sigma_zero = match config.final_sigmas_type.as_deref().unwrap_or("zero") {
            "zero" => true,
            "sigma_min" => false,
            other => {
                return Err(config.unsupported(
                    "final_sigmas_type",
                    format!("`{other}` (expected zero or sigma_min)"),
                ))
            }
        };
        let alphas_cumprod = common::train_alphas_cumprod(config, ZeroSnr::RescaleFloored)?;
        let (timesteps, sigmas) =
            schedule(config, steps, &alphas_cumprod, karras, final_sigma_zero)?;
        Ok(Self {
            cursor: StepCursor::new(timesteps.len()),
            timesteps,
            sigmas,
            prediction_type: config.prediction_type(),
            solver_order,
            solver_type,
            lower_order_final: config.lower_order_final.unwrap_or(true),
            euler_at_final: config.euler_at_final.unwrap_or(false),
            final_sigma_zero,
            model_outputs: Vec::with_capacity(solver_order),
            lower_order_nums: 0,
        })
    }

    /// The data prediction `x0` from the model output (diffusers' `convert_model_output`).
    fn data_prediction(
        &self,
        model_output: &Tensor,
        sample: &Tensor,
        step: usize,
    ) -> Result<Tensor> {
        let level = Level::new(self.sigmas[step]);
        Ok(match self.prediction_type {
            PredictionType::Epsilon => {
                div(&(sample - mul(model_output, level.sigma)?)?, level.alpha)?
            }
            PredictionType::Sample => model_output.clone(),
            PredictionType::VPrediction => {
                (mul(sample, level.alpha)? - mul(model_output, level.sigma)?)?
            }
        })
    }

    fn first_order(&self, step: usize, sample: &Tensor) -> Result<Tensor> {
        let (t, s0) = (
            Level::new(self.sigmas[step + 1]),
            Level::new(self.sigmas[step]),
        );
        let h = t.lambda - s0.lambda;
        let m0 = &self.model_outputs[self.model_outputs.len() - 1];
        Ok((mul(sample, t.sigma / s0.sigma)? - mul(m0, t.alpha * ((-h).exp() - 1.0))?)?)
    }

    fn second_order(&self, step: usize, sample: &Tensor) -> Result<Tensor> {
        let t = Level::new(self.sigmas[step + 1]);
        let s0 = Level::new(self.sigmas[step]);
        let s1 = Level::new(self.sigmas[step - 1]);
        let n = self.model_outputs.len();
        let (m0, m1) = (&self.model_outputs[n - 1], &self.model_outputs[n - 2]);
        let h = t.lambda - s0.lambda;
        let r0 = (s0.lambda - s1.lambda) / h;
        let d1 = mul(&(m0 - m1)?, 1.0 / r0)?;
        let exp_m1 = (-h).exp() - 1.0;
        let x = (mul(sample, t.sigma / s0.sigma)? - mul(m0, t.alpha * exp_m1)?)?;
        Ok(match self.solver_type {
            SolverType::Midpoint => (x - mul(&d1, 0.5 * (t.alpha * exp_m1))?)?,
            SolverType::Heun => (x + mul(&d1, t.alpha * (exp_m1 / h + 1.0))?)?,
        })
    }

    fn third_order(&self, step: usize, sample: &Tensor) -> Result<Tensor> {
        let t = Level::new(self.sigmas[step + 1]);
        let s0 = Level::new(self.sigmas[step]);
        let s1 = Level::new(self.sigmas[step - 1]);
        let s2 = Level::new(self.sigmas[step - 2]);
        let n = self.model_outputs.len();
        let (m0, m1, m2) = (
            &self.model_outputs[n - 1],
            &self.model_outputs[n - 2],
            &self.model_outputs[n - 3],
        );
        let h = t.lambda - s0.lambda;
        let (r0, r1) = ((s0.lambda - s1.lambda) / h, (s1.lambda - s2.lambda) / h);
        let d1_0 = mul(&(m0 - m1)?, 1.0 / r0)?;
        let d1_1 = mul(&(m1 - m2)?, 1.0 / r1)?;
        let d1_diff = (&d1_0 - d1_1)?;
        let d1 = (&d1_0 + mul(&d1_diff, r0 / (r0 + r1))?)?;
        let d2 = mul(&d1_diff, 1.0 / (r0 + r1))?;
        let exp_m1 = (-h).exp() - 1.0;
        let x = (mul(sample, t.sigma / s0.sigma)? - mul(m0, t.alpha * exp_m1)?)?;
        let x = (x + mul(&d1, t.alpha * (exp_m1 / h + 1.0))?)?;
        Ok((x - mul(&d2, t.alpha * ((exp_m1 + h) / (h * h) - 0.5))?)?)
    }
}

/// Rejects the configurations diffusers accepts but this implementation does not.
fn validate(config: &SchedulerConfig) -> Result<()> {
    match config.algorithm_type.as_deref().unwrap_or("dpmsolver++") {
        // diffusers maps DEIS configs to DPM-Solver++.
        "dpmsolver++" | "deis" => {}
        other => {
            return Err(config.unsupported(
                "algorithm_type",
                format!("`{other}` (only dpmsolver++ is supported)"),
            ))
        }
    }
    if config.thresholding.unwrap_or(false) {
        return Err(config.unsupported("thresholding", "dynamic thresholding is not supported"));
    }
    if config.use_lu_lambdas.unwrap_or(false) {
        return Err(config.unsupported("use_lu_lambdas", "lu lambdas are not supported"));
    }
    if config.use_flow_sigmas.unwrap_or(false) {
        return Err(config.unsupported("use_flow_sigmas", "flow sigmas are not supported"));
    }
    if let Some(variance) = config.variance_type.as_deref() {
        return Err(config.unsupported(
            "variance_type",
            format!("`{variance}`: learned variance is not supported"),
        ));
    }
    Ok(())
}

/// Integer timesteps (as f64) and float32 sigmas, as `set_timesteps` computes them.
fn schedule(
    config: &SchedulerConfig,
    steps: usize,
    alphas_cumprod: &[f32],
    karras: bool,
    final_sigma_zero: bool,
) -> Result<(Vec<f64>, Vec<f32>)> {
    let num_train = alphas_cumprod.len();
    let spacing = Spacing::from_config(config, Spacing::Linspace)?;
    let last_timestep = num_train - clipped_steps(config, alphas_cumprod);
    let mut timesteps: Vec<f64> = match spacing {
        Spacing::Linspace => {
            let mut grid = np_linspace(0.0, last_timestep as f64 - 1.0, steps + 1);
            grid.reverse();
            grid.pop();
            grid.into_iter().map(f64::round_ties_even).collect()
        }
        Spacing::Leading => {
            let ratio = last_timestep / (steps + 1);
            let offset = config.steps_offset.unwrap_or(0);
            (1..=steps)
                .rev()
                .map(|i| (i * ratio + offset) as f64)
                .collect()
        }
        Spacing::Trailing => {
            let ratio = num_train as f64 / steps as f64;
            np_arange(last_timestep as f64, 0.0, -ratio)
                .into_iter()
                .map(|t| t.round_ties_even() - 1.0)
                .collect()
        }
    };

    let train_sigmas = common::train_sigmas(alphas_cumprod);
    let grid = SigmaGrid::from_config(config, karras)?;
    let (smallest, largest) = match (train_sigmas.first(), train_sigmas.last()) {
        (Some(&first), Some(&last)) => (f64::from(first), f64::from(last)),
        _ => (0.0, 0.0),
    };
    let (sigma_min, sigma_max) = sigma_range(config, smallest, largest);
    let sigmas = match grid.grid(sigma_min, sigma_max, steps) {
        Some(sigmas) => {
            let logs = log_sigmas(&train_sigmas);
            let round = grid == SigmaGrid::Karras
                && config.beta_schedule.as_deref() != Some("squaredcos_cap_v2");
            timesteps = sigmas
                .iter()
                .map(|&s| {
                    let t = sigma_to_t(s, &logs);
                    if round {
                        t.round_ties_even()
                    } else {
                        t
                    }
                })
                .collect();
            sigmas
        }
        None => interp(&timesteps, &train_sigmas),
    };
    // Stored as int64 by diffusers (truncating).
    let timesteps = timesteps.into_iter().map(f64::trunc).collect();
    let last = if final_sigma_zero {
        0.0
    } else {
        train_sigmas[0]
    };
    let sigmas = sigmas
        .iter()
        .map(|&s| s as f32)
        .chain(std::iter::once(last))
        .collect();
    Ok((timesteps, sigmas))
}

/// How many of the noisiest training timesteps `lambda_min_clipped` cuts off.
fn clipped_steps(config: &SchedulerConfig, alphas_cumprod: &[f32]) -> usize {
    let Some(min_lambda) = config.lambda_min_clipped else {
        return 0;
    };
    // lambda_t decreases with t: count the values below the threshold.
    alphas_cumprod
        .iter()
        .filter(|&&a| f64::from(a.sqrt().ln() - (1.0 - a).sqrt().ln()) < min_lambda)
        .count()
}

impl Scheduler for DpmSolver {
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
        check_same_shape(noise, original)?;
        let level = Level::new(common::sigma_at(&self.sigmas, index)?);
        Ok((mul(original, level.alpha)? + mul(noise, level.sigma)?)?)
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
        if let Some(previous) = self.model_outputs.last() {
            check_same_shape(model_output, previous)?;
        }
        let total = self.timesteps.len();
        let short = self.lower_order_final && total < LOWER_ORDER_FINAL_BELOW;
        let lower_order_final =
            step + 1 == total && (self.euler_at_final || short || self.final_sigma_zero);
        let lower_order_second = step + 2 == total && short;

        let x0 = self.data_prediction(model_output, sample, step)?;
        if self.model_outputs.len() == self.solver_order {
            self.model_outputs.remove(0);
        }
        self.model_outputs.push(x0);

        let prev = if self.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            self.first_order(step, sample)?
        } else if self.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order(step, sample)?
        } else {
            self.third_order(step, sample)?
        };
        self.lower_order_nums = (self.lower_order_nums + 1).min(self.solver_order);
        self.cursor.advance();
        Ok(prev)
    }
}
