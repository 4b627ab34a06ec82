//! Pseudo numerical methods (PNDM, Liu et al. 2022), matching diffusers' `PNDMScheduler`:
//! Runge-Kutta warm-up steps (unless `skip_prk_steps`), then linear multistep (PLMS).

use candle_core::Tensor;

use super::common::{
    self, check_same_shape, check_step_index, descending_timesteps, div, mul, Spacing, StepCursor,
    ZeroSnr,
};
use super::config::{PredictionType, SchedulerConfig};
use super::Scheduler;
use crate::rng::TorchRng;
use crate::{Error, Result};

/// Order of the pseudo Runge-Kutta warm-up.
const PNDM_ORDER: usize = 4;

/// PNDM sampler; deterministic (never draws noise).
#[derive(Debug)]
pub(crate) struct Pndm {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    /// Warm-up timesteps followed by the PLMS timesteps.
    timesteps: Vec<f64>,
    /// Number of Runge-Kutta steps at the start of `timesteps` (0 with `skip_prk_steps`).
    prk_len: usize,
    step_ratio: i64,
    v_prediction: bool,
    /// Number of steps taken (diffusers' `counter`).
    counter: usize,
    /// Past model outputs, most recent last (at most 4).
    ets: Vec<Tensor>,
    /// The weighted sum of the Runge-Kutta stage outputs so far.
    cur_model_output: Option<Tensor>,
    /// The sample at the start of the current multi-stage step.
    cur_sample: Option<Tensor>,
    cursor: StepCursor,
}

impl Pndm {
    /// `PNDMScheduler.from_config(config)` followed by `set_timesteps(steps)`.
    pub(crate) fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let v_prediction = match config.prediction_type() {
            PredictionType::Epsilon => false,
            PredictionType::VPrediction => true,
            PredictionType::Sample => {
                return Err(config.unsupported(
                    "prediction_type",
                    "PNDM supports only epsilon and v_prediction",
                ))
            }
        };
        let num_train = common::num_train_timesteps(config)?;
        let alphas_cumprod = common::train_alphas_cumprod(config, ZeroSnr::Ignored)?;
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(false) {
            1.0
        } else {
            alphas_cumprod[0]
        };
        let spacing = Spacing::from_config(config, Spacing::Leading)?;
        let offset = config.steps_offset.unwrap_or(0);
        // Ascending, as diffusers' `_timesteps`.
        let base: Vec<i64> = descending_timesteps(spacing, steps, num_train, offset)
            .into_iter()
            .rev()
            .map(|t| t.round_ties_even() as i64)
            .collect();
        if let Some(t) = base.iter().find(|&&t| t >= num_train as i64) {
            return Err(Error::InvalidArgument(format!(
                "timestep {t} (steps_offset {offset}) is beyond num_train_timesteps {num_train}"
            )));
        }
        let (prk, plms) = if config.skip_prk_steps.unwrap_or(false) {
            (Vec::new(), plms_only_timesteps(&base))
        } else if steps < PNDM_ORDER {
            return Err(Error::InvalidArgument(format!(
                "PNDM with Runge-Kutta warm-up (skip_prk_steps false) needs at least \
                 {PNDM_ORDER} steps, got {steps}"
            )));
        } else {
            let half_step = (num_train / steps / 2) as i64;
            (
                prk_timesteps(&base, half_step),
                base[..base.len().saturating_sub(3)]
                    .iter()
                    .rev()
                    .copied()
                    .collect(),
            )
        };
        let timesteps: Vec<f64> = prk.iter().chain(&plms).map(|&t| t as f64).collect();
        Ok(Self {
            alphas_cumprod,
            final_alpha_cumprod,
            prk_len: prk.len(),
            cursor: StepCursor::new(timesteps.len()),
            timesteps,
            step_ratio: (num_train / steps) as i64,
            v_prediction,
            counter: 0,
            ets: Vec::new(),
            cur_model_output: None,
            cur_sample: None,
        })
    }

    fn alpha_prod(&self, t: i64) -> Result<f32> {
        if t < 0 {
            return Ok(self.final_alpha_cumprod);
        }
        self.alphas_cumprod.get(t as usize).copied().ok_or_else(|| {
            Error::InvalidArgument(format!("timestep {t} is beyond the training schedule"))
        })
    }

    /// One Runge-Kutta stage (diffusers' `step_prk`).
    fn step_prk(
        &mut self,
        model_output: &Tensor,
        timestep: i64,
        sample: &Tensor,
    ) -> Result<Tensor> {
        let half_step = self.step_ratio / 2;
        let prev_timestep = timestep - if self.counter % 2 == 1 { 0 } else { half_step };
        let stage_start = self.timesteps[self.counter / 4 * 4] as i64;
        let accumulate = |acc: Option<&Tensor>, weight: f32| -> Result<Tensor> {
            let term = mul(model_output, weight)?;
            Ok(match acc {
                Some(acc) => (acc + term)?,
                None => term,
            })
        };
        let model_output = match self.counter % 4 {
            0 => {
                self.cur_model_output =
                    Some(accumulate(self.cur_model_output.as_ref(), 1.0 / 6.0)?);
                self.ets.push(model_output.clone());
                self.cur_sample = Some(sample.clone());
                model_output.clone()
            }
            1 | 2 => {
                self.cur_model_output =
                    Some(accumulate(self.cur_model_output.as_ref(), 1.0 / 3.0)?);
                model_output.clone()
            }
            _ => accumulate(self.cur_model_output.take().as_ref(), 1.0 / 6.0)?,
        };
        let cur_sample = self.cur_sample.clone().unwrap_or_else(|| sample.clone());
        self.prev_sample(&cur_sample, stage_start, prev_timestep, &model_output)
    }

    /// One linear multistep update (diffusers' `step_plms`).
    fn step_plms(
        &mut self,
        model_output: &Tensor,
        timestep: i64,
        sample: &Tensor,
    ) -> Result<Tensor> {
        if self.prk_len > 0 && self.ets.len() < 3 {
            return Err(Error::InvalidArgument(
                "PLMS steps need at least 3 Runge-Kutta warm-up outputs".into(),
            ));
        }
        let (mut timestep, mut prev_timestep) = (timestep, timestep - self.step_ratio);
        if self.counter != 1 {
            let keep_from = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep_from);
            self.ets.push(model_output.clone());
        } else {
            prev_timestep = timestep;
            timestep += self.step_ratio;
        }
        let mut sample = sample.clone();
        let e = |back: usize| &self.ets[self.ets.len() - back];
        let model_output = match (self.ets.len(), self.counter) {
            (1, 0) => {
                self.cur_sample = Some(sample.clone());
                model_output.clone()
            }
            (1, 1) => {
                sample = self.cur_sample.take().ok_or_else(|| {
                    Error::InvalidArgument("PLMS second step without a stored sample".into())
                })?;
                div(&(model_output + e(1))?, 2.0)?
            }
            (2, _) => div(&(mul(e(1), 3.0)? - e(2))?, 2.0)?,
            (3, _) => {
                let sum = ((mul(e(1), 23.0)? - mul(e(2), 16.0)?)? + mul(e(3), 5.0)?)?;
                div(&sum, 12.0)?
            }
            _ => {
                let sum = (((mul(e(1), 55.0)? - mul(e(2), 59.0)?)? + mul(e(3), 37.0)?)?
                    - mul(e(4), 9.0)?)?;
                mul(&sum, 1.0 / 24.0)?
            }
        };
        self.prev_sample(&sample, timestep, prev_timestep, &model_output)
    }

    /// The PNDM transfer from `timestep` to `prev_timestep` (formula 9 of the paper).
    fn prev_sample(
        &self,
        sample: &Tensor,
        timestep: i64,
        prev_timestep: i64,
        model_output: &Tensor,
    ) -> Result<Tensor> {
        let alpha_t = self.alpha_prod(timestep)?;
        let alpha_prev = self.alpha_prod(prev_timestep)?;
        let beta_t = 1.0 - alpha_t;
        let beta_prev = 1.0 - alpha_prev;
        let model_output = if self.v_prediction {
            (mul(model_output, alpha_t.sqrt())? + mul(sample, beta_t.sqrt())?)?
        } else {
            model_output.clone()
        };
        let sample_coeff = (alpha_prev / alpha_t).sqrt();
        let denom = alpha_t * beta_prev.sqrt() + (alpha_t * beta_t * alpha_prev).sqrt();
        let update = div(&mul(&model_output, alpha_prev - alpha_t)?, denom)?;
        Ok((mul(sample, sample_coeff)? - update)?)
    }
}

/// PLMS timesteps without warm-up: the second-to-last ascending timestep is repeated
/// (the first two steps form one Heun-like step), then everything is reversed.
fn plms_only_timesteps(base: &[i64]) -> Vec<i64> {
    let n = base.len();
    let mut ts: Vec<i64> = base[..n.saturating_sub(1)].to_vec();
    ts.extend_from_slice(&base[n.saturating_sub(2)..n.saturating_sub(1)]);
    ts.extend_from_slice(&base[n.saturating_sub(1)..]);
    ts.reverse();
    ts
}

/// Runge-Kutta warm-up timesteps over the last `PNDM_ORDER` ascending timesteps, each
/// visited at its start, midpoint (twice) and end, in descending order.
fn prk_timesteps(base: &[i64], half_step: i64) -> Vec<i64> {
    let tail = &base[base.len().saturating_sub(PNDM_ORDER)..];
    // repeat(2) + tile([0, half_step]) of the tail, then drop the last entry.
    let mut stages: Vec<i64> = tail.iter().flat_map(|&t| [t, t + half_step]).collect();
    stages.pop();
    // repeat(2)[1:-1], then reversed.
    let doubled: Vec<i64> = stages.iter().flat_map(|&t| [t, t]).collect();
    let inner = if doubled.len() >= 2 {
        &doubled[1..doubled.len() - 1]
    } else {
        &[][..]
    };
    inner.iter().rev().copied().collect()
}

impl Scheduler for Pndm {
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
        common::add_noise_alpha(original, noise, self.alpha_prod(t)?)
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
        if let Some(previous) = self.ets.last() {
            check_same_shape(model_output, previous)?;
        }
        let timestep = self.timesteps[step] as i64;
        let prev = if self.counter < self.prk_len {
            self.step_prk(model_output, timestep, sample)?
        } else {
            self.step_plms(model_output, timestep, sample)?
        };
        self.counter += 1;
        self.cursor.advance();
        Ok(prev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_timesteps_match_diffusers() {
        // PNDMScheduler(steps_offset=1).set_timesteps(10): prk part of `timesteps`.
        let base: Vec<i64> = (0..10).map(|i| i * 100 + 1).collect();
        assert_eq!(
            prk_timesteps(&base, 50),
            [901, 851, 851, 801, 801, 751, 751, 701, 701, 651, 651, 601]
        );
        assert_eq!(plms_only_timesteps(&[1, 101, 201]), [201, 101, 101, 1]);
        assert_eq!(plms_only_timesteps(&[5]), [5]);
    }

    #[test]
    fn warm_up_needs_four_steps() {
        let config = SchedulerConfig::default();
        assert!(matches!(
            Pndm::new(&config, 3),
            Err(Error::InvalidArgument(_))
        ));
        // Runge-Kutta over the last four timesteps, then PLMS over the rest.
        assert_eq!(Pndm::new(&config, 4).unwrap().timesteps.len(), 13);
    }
}
