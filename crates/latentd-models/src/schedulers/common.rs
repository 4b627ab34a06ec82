//! Pieces shared by the schedulers: the training noise schedule, timestep spacing,
//! step bookkeeping and scalar-times-tensor helpers.
//!
//! Numerics follow diffusers' precision choices so the results are as close to it as
//! floating point allows: torch computes betas and `alphas_cumprod` in float32 (with
//! a double accumulator for the cumulative product), numpy computes timestep grids in
//! float64, and per-step scalars are float32 0-d tensors.

use candle_core::Tensor;

use super::config::SchedulerConfig;
use crate::{Error, Result};

/// `num_train_timesteps` of every supported class when absent.
const DEFAULT_NUM_TRAIN_TIMESTEPS: usize = 1000;

/// The configured (or default) number of training timesteps; must be positive.
pub(crate) fn num_train_timesteps(config: &SchedulerConfig) -> Result<usize> {
    match config
        .num_train_timesteps
        .unwrap_or(DEFAULT_NUM_TRAIN_TIMESTEPS)
    {
        0 => Err(config.unsupported("num_train_timesteps", "must be positive")),
        n => Ok(n),
    }
}

/// How a class treats `rescale_betas_zero_snr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ZeroSnr {
    /// The class has no such option (the key is ignored).
    Ignored,
    /// Rescale the betas (DDIM).
    Rescale,
    /// Rescale, then set the last `alphas_cumprod` to 2^-24 so sigma stays finite
    /// (Euler, Euler ancestral, DPM-Solver).
    RescaleFloored,
}

/// `alphas_cumprod` of the training schedule, as the class's constructor computes it.
pub(crate) fn train_alphas_cumprod(
    config: &SchedulerConfig,
    zero_snr: ZeroSnr,
) -> Result<Vec<f32>> {
    let mut betas = betas(config)?;
    let rescale = zero_snr != ZeroSnr::Ignored && config.rescale_betas_zero_snr.unwrap_or(false);
    if rescale {
        betas = rescale_zero_terminal_snr(&betas);
    }
    let mut alphas_cumprod = cumprod(betas.iter().map(|b| 1.0 - b));
    if rescale && zero_snr == ZeroSnr::RescaleFloored {
        if let Some(last) = alphas_cumprod.last_mut() {
            *last = 2f32.powi(-24);
        }
    }
    Ok(alphas_cumprod)
}

/// `sqrt((1 - alphas_cumprod) / alphas_cumprod)` in float32, per training timestep.
pub(crate) fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// The training betas from `trained_betas` or `beta_schedule`.
fn betas(config: &SchedulerConfig) -> Result<Vec<f32>> {
    let n = num_train_timesteps(config)?;
    if let Some(trained) = &config.trained_betas {
        if trained.len() != n {
            return Err(config.unsupported(
                "trained_betas",
                format!(
                    "has {} values but num_train_timesteps is {n}",
                    trained.len()
                ),
            ));
        }
        return Ok(trained.iter().map(|&b| b as f32).collect());
    }
    let start = config.beta_start.unwrap_or(0.0001);
    let end = config.beta_end.unwrap_or(0.02);
    match config.beta_schedule.as_deref().unwrap_or("linear") {
        "linear" => Ok(torch_linspace(start, end, n)),
        "scaled_linear" => Ok(torch_linspace(start.powf(0.5), end.powf(0.5), n)
            .into_iter()
            .map(|b| b * b)
            .collect()),
        "squaredcos_cap_v2" => Ok(squaredcos_cap_v2(n)),
        other => Err(config.unsupported(
            "beta_schedule",
            format!("`{other}` (expected linear, scaled_linear or squaredcos_cap_v2)"),
        )),
    }
}

/// `torch.linspace(start, end, n, dtype=float32)` on the CPU: float arithmetic, the
/// first half counted up from `start` and the second half down from `end`, with the
/// multiply-add fused as torch's x86-64 build does.
fn torch_linspace(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let halfway = n / 2;
    (0..n)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((n - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// The cosine schedule of Nichol & Dhariwal, betas capped at 0.999 (computed in f64).
fn squaredcos_cap_v2(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// Cumulative product with a double accumulator, each output rounded to float (torch's CPU cumprod).
fn cumprod(values: impl Iterator<Item = f32>) -> Vec<f32> {
    let mut acc = 1f64;
    values
        .map(|v| {
            acc *= f64::from(v);
            acc as f32
        })
        .collect()
}

/// Rescales betas to zero terminal SNR (Lin et al. 2023, algorithm 1), in float32.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let sqrt_bar: Vec<f32> = cumprod(betas.iter().map(|b| 1.0 - b))
        .into_iter()
        .map(f32::sqrt)
        .collect();
    let (Some(&first), Some(&last)) = (sqrt_bar.first(), sqrt_bar.last()) else {
        return Vec::new();
    };
    let scale = first / (first - last);
    let alphas_bar: Vec<f32> = sqrt_bar
        .iter()
        .map(|s| {
            let shifted = (s - last) * scale;
            shifted * shifted
        })
        .collect();
    let alphas = std::iter::once(alphas_bar[0]).chain(alphas_bar.windows(2).map(|w| w[1] / w[0]));
    alphas.map(|a| 1.0 - a).collect()
}

/// `timestep_spacing`: how inference timesteps are picked from the training range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spacing {
    Linspace,
    Leading,
    Trailing,
}

impl Spacing {
    /// The configured spacing, or the class default.
    pub(crate) fn from_config(config: &SchedulerConfig, default: Spacing) -> Result<Self> {
        match config.timestep_spacing.as_deref() {
            None => Ok(default),
            Some("linspace") => Ok(Self::Linspace),
            Some("leading") => Ok(Self::Leading),
            Some("trailing") => Ok(Self::Trailing),
            Some(other) => Err(config.unsupported(
                "timestep_spacing",
                format!("`{other}` (expected linspace, leading or trailing)"),
            )),
        }
    }
}

/// Descending timesteps of DDIM and the Euler schedulers (float64, not rounded for
/// `Linspace`): `linspace(0, N-1, steps)`, `arange(steps) * (N / steps) + offset`, or
/// `round(arange(N, 0, -N/steps)) - 1`.
pub(crate) fn descending_timesteps(
    spacing: Spacing,
    steps: usize,
    num_train: usize,
    steps_offset: usize,
) -> Vec<f64> {
    let values: Vec<f64> = match spacing {
        Spacing::Linspace => np_linspace(0.0, (num_train - 1) as f64, steps),
        Spacing::Leading => {
            let ratio = num_train / steps;
            (0..steps)
                .map(|i| (i * ratio + steps_offset) as f64)
                .collect()
        }
        Spacing::Trailing => {
            let ratio = num_train as f64 / steps as f64;
            let mut grid = np_arange(num_train as f64, 0.0, -ratio);
            grid.reverse();
            grid.into_iter()
                .map(|t| t.round_ties_even() - 1.0)
                .collect()
        }
    };
    values.into_iter().rev().collect()
}

/// `numpy.linspace(start, stop, n)` in float64 (`i * step + start`, last value exact).
pub(crate) fn np_linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n <= 1 {
        return vec![start; n];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut values: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    values[n - 1] = stop;
    values
}

/// `numpy.arange(start, stop, step)` for float64: length `ceil((stop - start) / step)`,
/// values `start + i * ((start + step) - start)` as numpy fills them.
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    // Empty (rather than unbounded) for a zero step, as numpy raises there.
    if !len.is_finite() || len <= 0.0 {
        return Vec::new();
    }
    let delta = (start + step) - start;
    (0..len as usize)
        .map(|i| match i {
            0 => start,
            1 => start + step,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// Enforces that steps are taken in order, once each.
#[derive(Debug, Clone)]
pub(crate) struct StepCursor {
    next: usize,
    total: usize,
}

impl StepCursor {
    pub(crate) fn new(total: usize) -> Self {
        Self { next: 0, total }
    }

    /// Ok when `step` is the next step to take.
    pub(crate) fn check(&self, step: usize) -> Result<()> {
        if step >= self.total {
            return Err(Error::InvalidArgument(format!(
                "step {step} is out of range: the schedule has {} steps",
                self.total
            )));
        }
        if step != self.next {
            return Err(Error::InvalidArgument(format!(
                "scheduler steps must be taken in order: expected step {}, got {step}",
                self.next
            )));
        }
        Ok(())
    }

    pub(crate) fn advance(&mut self) {
        self.next += 1;
    }

    /// Makes `index` the first step (diffusers' `set_begin_index`); only before any step.
    pub(crate) fn begin_at(&mut self, index: usize) -> Result<()> {
        if index >= self.total {
            return Err(Error::InvalidArgument(format!(
                "begin index {index} is out of range: the schedule has {} steps",
                self.total
            )));
        }
        if self.next != 0 {
            return Err(Error::InvalidArgument(
                "the begin index must be set before the first step".into(),
            ));
        }
        self.next = index;
        Ok(())
    }
}

/// `sqrt(alpha_cumprod) * original + sqrt(1 - alpha_cumprod) * noise`, in float32: the
/// `add_noise` of the schedulers that index `alphas_cumprod` by timestep (DDIM, PNDM).
pub(crate) fn add_noise_alpha(
    original: &Tensor,
    noise: &Tensor,
    alpha_cumprod: f32,
) -> Result<Tensor> {
    check_same_shape(noise, original)?;
    Ok((mul(original, alpha_cumprod.sqrt())? + mul(noise, (1.0 - alpha_cumprod).sqrt())?)?)
}

/// `original + noise * sigma`, in float32: the `add_noise` of the Euler schedulers.
pub(crate) fn add_noise_sigma(original: &Tensor, noise: &Tensor, sigma: f32) -> Result<Tensor> {
    check_same_shape(noise, original)?;
    Ok((original + mul(noise, sigma)?)?)
}

/// The sigma at `index` of a schedule's sigmas, as `add_noise` indexes it.
pub(crate) fn sigma_at(sigmas: &[f32], index: usize) -> Result<f32> {
    sigmas.get(index).copied().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "step {index} is out of range: the schedule has {} sigmas",
            sigmas.len()
        ))
    })
}

/// Ok when `step` indexes a schedule of `len` model calls.
pub(crate) fn check_step_index(step: usize, len: usize) -> Result<()> {
    if step < len {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "step {step} is out of range: the schedule has {len} steps"
        )))
    }
}

/// Ok when the model output and the sample have the same shape.
pub(crate) fn check_same_shape(model_output: &Tensor, sample: &Tensor) -> Result<()> {
    if model_output.dims() == sample.dims() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "model output shape {:?} does not match sample shape {:?}",
            model_output.dims(),
            sample.dims()
        )))
    }
}

/// `tensor * c` (exact float multiplication by the scalar, as torch broadcasts a 0-d tensor).
pub(crate) fn mul(tensor: &Tensor, c: f32) -> Result<Tensor> {
    Ok(tensor.affine(f64::from(c), 0.0)?)
}

/// `tensor / c` as a true division (not a multiplication by `1 / c`).
pub(crate) fn div(tensor: &Tensor, c: f32) -> Result<Tensor> {
    let divisor = Tensor::new(c, tensor.device())?.to_dtype(tensor.dtype())?;
    Ok(tensor.broadcast_div(&divisor)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> SchedulerConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn scaled_linear_matches_torch() {
        // DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        let ac = train_alphas_cumprod(
            &config(
                r#"{"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}"#,
            ),
            ZeroSnr::Rescale,
        )
        .unwrap();
        assert_eq!(ac.len(), 1000);
        assert_eq!(ac[0], 0.999_15);
        assert_eq!(ac[999], 0.004_660_095);
    }

    #[test]
    fn zero_snr_floors_the_last_alpha() {
        let json = r#"{"rescale_betas_zero_snr": true}"#;
        let plain = train_alphas_cumprod(&config(json), ZeroSnr::Rescale).unwrap();
        let floored = train_alphas_cumprod(&config(json), ZeroSnr::RescaleFloored).unwrap();
        let ignored = train_alphas_cumprod(&config(json), ZeroSnr::Ignored).unwrap();
        assert!(plain[999].abs() < 1e-9);
        assert_eq!(floored[999], 2f32.powi(-24));
        assert!(ignored[999] > 1e-5);
    }

    #[test]
    fn bad_schedules_name_the_key() {
        let err =
            train_alphas_cumprod(&config(r#"{"beta_schedule": "sigmoid"}"#), ZeroSnr::Ignored)
                .unwrap_err();
        assert!(err.to_string().contains("beta_schedule"), "{err}");
        let err = train_alphas_cumprod(
            &config(r#"{"num_train_timesteps": 3, "trained_betas": [0.1, 0.2]}"#),
            ZeroSnr::Ignored,
        )
        .unwrap_err();
        assert!(err.to_string().contains("trained_betas"), "{err}");
    }

    #[test]
    fn spacings_match_diffusers() {
        // DDIMScheduler.set_timesteps(7) (timesteps before rounding for linspace).
        assert_eq!(
            descending_timesteps(Spacing::Leading, 7, 1000, 1),
            [853.0, 711.0, 569.0, 427.0, 285.0, 143.0, 1.0]
        );
        assert_eq!(
            descending_timesteps(Spacing::Trailing, 7, 1000, 1),
            [999.0, 856.0, 713.0, 570.0, 428.0, 285.0, 142.0]
        );
        assert_eq!(
            descending_timesteps(Spacing::Linspace, 4, 1000, 0),
            [999.0, 666.0, 333.0, 0.0]
        );
    }

    #[test]
    fn numpy_grids() {
        assert_eq!(np_linspace(0.0, 1.0, 5), [0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(np_linspace(3.0, 9.0, 1), [3.0]);
        assert_eq!(np_arange(10.0, 0.0, -2.5), [10.0, 7.5, 5.0, 2.5]);
        assert!(np_arange(0.0, 10.0, -1.0).is_empty());
        assert!(np_arange(0.0, 10.0, 0.0).is_empty());
    }

    #[test]
    fn cursor_rejects_out_of_order_steps() {
        let mut cursor = StepCursor::new(2);
        assert!(cursor.check(1).is_err());
        cursor.check(0).unwrap();
        cursor.advance();
        assert!(cursor.check(0).is_err());
        cursor.check(1).unwrap();
        cursor.advance();
        assert!(cursor.check(2).is_err());
    }
}
