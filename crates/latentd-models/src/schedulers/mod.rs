//! Diffusion schedulers (samplers) matching diffusers' classes step for step.
//!
//! A scheduler is built for one sampling run: [`build_scheduler`] reads the folder's
//! [`SchedulerConfig`] as the corresponding diffusers class's `from_config` would
//! and fixes the timesteps for a step count. Each job owns its scheduler, multistep
//! history included; steps must be taken in order.

mod common;
mod config;
mod ddim;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod pndm;
mod sigmas;

use std::fmt;
use std::str::FromStr;

use candle_core::Tensor;

pub use config::{PredictionType, SchedulerConfig};

use ddim::Ddim;
use dpm_solver::DpmSolver;
use euler::Euler;
use euler_ancestral::EulerAncestral;
use pndm::Pndm;

use crate::rng::TorchRng;
use crate::{Error, Result};

/// The sampling algorithms offered to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// `DDIMScheduler` (`eta` selects the stochasticity).
    Ddim,
    /// `PNDMScheduler`.
    Pndm,
    /// `EulerDiscreteScheduler`.
    Euler,
    /// `EulerAncestralDiscreteScheduler`.
    EulerAncestral,
    /// `DPMSolverMultistepScheduler` (DPM-Solver++ 2M).
    DpmPp2m,
    /// `DPMSolverMultistepScheduler` with `use_karras_sigmas=True`.
    DpmPp2mKarras,
}

impl SchedulerKind {
    /// Every kind, in a stable order.
    pub const ALL: [SchedulerKind; 6] = [
        Self::Ddim,
        Self::Pndm,
        Self::Euler,
        Self::EulerAncestral,
        Self::DpmPp2m,
        Self::DpmPp2mKarras,
    ];

    /// The user-facing name (`"ddim"`, `"euler-a"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Ddim => "ddim",
            Self::Pndm => "pndm",
            Self::Euler => "euler",
            Self::EulerAncestral => "euler-a",
            Self::DpmPp2m => "dpmpp-2m",
            Self::DpmPp2mKarras => "dpmpp-2m-karras",
        }
    }

    /// The kind of a diffusers scheduler class name (a folder's `_class_name`).
    pub fn from_class_name(class_name: &str) -> Option<Self> {
        match class_name {
            "DDIMScheduler" => Some(Self::Ddim),
            "PNDMScheduler" => Some(Self::Pndm),
            "EulerDiscreteScheduler" => Some(Self::Euler),
            "EulerAncestralDiscreteScheduler" => Some(Self::EulerAncestral),
            "DPMSolverMultistepScheduler" => Some(Self::DpmPp2m),
            _ => None,
        }
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SchedulerKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
                Error::InvalidArgument(format!(
                    "unknown scheduler `{s}` (expected one of {})",
                    names.join(", ")
                ))
            })
    }
}

/// One sampling run's scheduler: timesteps, input scaling and the update rule.
pub trait Scheduler: Send {
    /// Timesteps at which the model is called, in order (len = number of model calls).
    fn timesteps(&self) -> &[f64];

    /// Standard deviation of the initial noise (multiply `randn` latents by it).
    fn init_noise_sigma(&self) -> f64;

    /// Scale the sample before the model call number `step` (0-based).
    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor>;

    /// Makes model call `index` the first one (diffusers' `set_begin_index`, which
    /// img2img and inpainting set to `t_start`); only before the first step. Multistep
    /// state (history, warm-up counters) starts from scratch there, as in diffusers.
    fn set_begin_index(&mut self, index: usize) -> Result<()>;

    /// `original` noised with `noise` to the level of model call `index`: diffusers'
    /// `add_noise` at `timesteps[index]` (for the sigma schedulers, at
    /// `sigmas[index]`, the index their `add_noise` uses once a begin index is set).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor>;

    /// One update after model call `step`; ancestral / eta>0 noise is drawn from `rng`
    /// exactly as diffusers draws it from its generator (same shape, same order).
    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        rng: &mut TorchRng,
    ) -> Result<Tensor>;
}

/// A scheduler of `kind` configured from `config`, set to `steps` inference steps.
///
/// `eta` is DDIM's noise weight (0 = deterministic, 1 = DDPM-like); like the
/// diffusers pipelines, the other schedulers ignore it. Errors: `steps` of 0 or above
/// `num_train_timesteps`, a negative or non-finite `eta`
/// ([`Error::InvalidArgument`]), or a config value the scheduler does not support
/// ([`Error::UnsupportedConfig`]).
pub fn build_scheduler(
    kind: SchedulerKind,
    config: &SchedulerConfig,
    steps: usize,
    eta: f64,
) -> Result<Box<dyn Scheduler>> {
    let num_train = common::num_train_timesteps(config)?;
    if steps == 0 || steps > num_train {
        return Err(Error::InvalidArgument(format!(
            "steps must be between 1 and {num_train} (num_train_timesteps), got {steps}"
        )));
    }
    if !eta.is_finite() || eta < 0.0 {
        return Err(Error::InvalidArgument(format!(
            "eta must be a finite non-negative number, got {eta}"
        )));
    }
    Ok(match kind {
        SchedulerKind::Ddim => Box::new(Ddim::new(config, steps, eta)?),
        SchedulerKind::Pndm => Box::new(Pndm::new(config, steps)?),
        SchedulerKind::Euler => Box::new(Euler::new(config, steps)?),
        SchedulerKind::EulerAncestral => Box::new(EulerAncestral::new(config, steps)?),
        SchedulerKind::DpmPp2m => Box::new(DpmSolver::new(config, steps, false)?),
        SchedulerKind::DpmPp2mKarras => Box::new(DpmSolver::new(config, steps, true)?),
    })
}

/// `init_noise_sigma` of a scheduler of `kind` freshly configured from `config`, before
/// `set_timesteps`: that of the whole training schedule (what `LDMPipeline` multiplies
/// its initial noise by). It differs from the value after `set_timesteps` only for the
/// Euler samplers with `leading` spacing; the others start from 1.
pub fn untimed_init_noise_sigma(kind: SchedulerKind, config: &SchedulerConfig) -> Result<f64> {
    match kind {
        SchedulerKind::Euler | SchedulerKind::EulerAncestral => {
            let alphas_cumprod =
                common::train_alphas_cumprod(config, common::ZeroSnr::RescaleFloored)?;
            let sigmas = common::train_sigmas(&alphas_cumprod);
            let spacing = common::Spacing::from_config(config, common::Spacing::Linspace)?;
            Ok(f64::from(euler::start_sigma(spacing, &sigmas)))
        }
        SchedulerKind::Ddim
        | SchedulerKind::Pndm
        | SchedulerKind::DpmPp2m
        | SchedulerKind::DpmPp2mKarras => Ok(1.0),
    }
}

#[cfg(test)]
mod tests;
