//! Noise levels (sigmas) of the k-diffusion style schedulers (Euler, DPM-Solver):
//! numpy's interpolation and the Karras / exponential sigma grids, in float64 over
//! the float32 training sigmas, as diffusers computes them.

use super::common::np_linspace;
use super::config::SchedulerConfig;
use crate::Result;

/// Which sigma grid replaces the interpolated one (`use_*_sigmas`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SigmaGrid {
    /// The training sigmas interpolated at the timesteps.
    Interpolated,
    /// Karras et al. (2022), rho = 7.
    Karras,
    /// Log-linear between the extreme sigmas.
    Exponential,
}

impl SigmaGrid {
    /// Reads `use_karras_sigmas` / `use_exponential_sigmas` (`use_beta_sigmas` needs
    /// scipy's beta quantiles and is rejected); at most one may be set.
    pub(crate) fn from_config(config: &SchedulerConfig, force_karras: bool) -> Result<Self> {
        if config.use_beta_sigmas.unwrap_or(false) {
            return Err(config.unsupported("use_beta_sigmas", "beta sigmas are not supported"));
        }
        let karras = force_karras || config.use_karras_sigmas.unwrap_or(false);
        let exponential = config.use_exponential_sigmas.unwrap_or(false);
        match (karras, exponential) {
            (true, true) => Err(config.unsupported(
                "use_exponential_sigmas",
                "only one of use_karras_sigmas and use_exponential_sigmas can be set",
            )),
            (true, false) => Ok(Self::Karras),
            (false, true) => Ok(Self::Exponential),
            (false, false) => Ok(Self::Interpolated),
        }
    }

    /// `n` sigmas from `sigma_max` down to `sigma_min` (None for `Interpolated`).
    pub(crate) fn grid(self, sigma_min: f64, sigma_max: f64, n: usize) -> Option<Vec<f64>> {
        match self {
            Self::Interpolated => None,
            Self::Karras => {
                let rho = 7.0;
                let min_inv_rho = sigma_min.powf(1.0 / rho);
                let max_inv_rho = sigma_max.powf(1.0 / rho);
                let ramp = np_linspace(0.0, 1.0, n);
                Some(
                    ramp.iter()
                        .map(|r| (max_inv_rho + r * (min_inv_rho - max_inv_rho)).powf(rho))
                        .collect(),
                )
            }
            Self::Exponential => Some(
                np_linspace(sigma_max.ln(), sigma_min.ln(), n)
                    .into_iter()
                    .map(f64::exp)
                    .collect(),
            ),
        }
    }
}

/// The grid's end points: the configured `sigma_min` / `sigma_max`, else the given ones.
pub(crate) fn sigma_range(config: &SchedulerConfig, smallest: f64, largest: f64) -> (f64, f64) {
    (
        config.sigma_min.unwrap_or(smallest),
        config.sigma_max.unwrap_or(largest),
    )
}

/// `numpy.interp(x, arange(len(fp)), fp)` in float64.
pub(crate) fn interp(x: &[f64], fp: &[f32]) -> Vec<f64> {
    let Some(last) = fp.len().checked_sub(1) else {
        return vec![f64::NAN; x.len()];
    };
    x.iter()
        .map(|&x| {
            if x.is_nan() {
                x
            } else if x <= 0.0 {
                f64::from(fp[0])
            } else if x >= last as f64 {
                f64::from(fp[last])
            } else {
                let j = x.floor() as usize;
                let (lo, hi) = (f64::from(fp[j]), f64::from(fp[j + 1]));
                (hi - lo) * (x - j as f64) + lo
            }
        })
        .collect()
}

/// The (fractional) training timestep of `sigma`, by linear interpolation in log-sigma
/// over `log_sigmas` (ascending, float32 as numpy computes them).
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    if log_sigmas.len() < 2 {
        return 0.0;
    }
    let log_sigma = sigma.max(1e-10).ln();
    let low_idx = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - f64::from(l) >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let low = f64::from(log_sigmas[low_idx]);
    let high = f64::from(log_sigmas[low_idx + 1]);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * (low_idx + 1) as f64
}

/// Natural logs of float32 sigmas, in float32.
pub(crate) fn log_sigmas(sigmas: &[f32]) -> Vec<f32> {
    sigmas.iter().map(|s| s.ln()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interp_is_linear_between_knots_and_clamped_outside() {
        let fp = [1.0f32, 3.0, 7.0];
        assert_eq!(
            interp(&[-1.0, 0.0, 0.5, 1.25, 2.0, 9.0], &fp),
            [1.0, 1.0, 2.0, 4.0, 7.0, 7.0]
        );
    }

    #[test]
    fn sigma_to_t_inverts_the_log_interpolation() {
        let sigmas = [0.5f32, 1.0, 2.0, 4.0];
        let logs = log_sigmas(&sigmas);
        assert_eq!(sigma_to_t(1.0, &logs), 1.0);
        assert!((sigma_to_t(2f64.sqrt(), &logs) - 1.5).abs() < 1e-6);
        // Beyond the range the weight is clamped.
        assert_eq!(sigma_to_t(100.0, &logs), 3.0);
        assert_eq!(sigma_to_t(0.0, &logs), 0.0);
    }

    #[test]
    fn karras_grid_spans_the_range() {
        let grid = SigmaGrid::Karras.grid(0.1, 10.0, 5).unwrap();
        assert_eq!(grid.len(), 5);
        assert!((grid[0] - 10.0).abs() < 1e-12 && (grid[4] - 0.1).abs() < 1e-12);
        assert!(grid.windows(2).all(|w| w[0] > w[1]));
        let exp = SigmaGrid::Exponential.grid(0.1, 10.0, 3).unwrap();
        assert!((exp[1] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn conflicting_grids_are_rejected() {
        let config: SchedulerConfig =
            serde_json::from_str(r#"{"use_exponential_sigmas": true}"#).unwrap();
        assert_eq!(
            SigmaGrid::from_config(&config, false).unwrap(),
            SigmaGrid::Exponential
        );
        assert!(SigmaGrid::from_config(&config, true).is_err());
        let beta: SchedulerConfig = serde_json::from_str(r#"{"use_beta_sigmas": true}"#).unwrap();
        assert!(SigmaGrid::from_config(&beta, false).is_err());
    }
}
