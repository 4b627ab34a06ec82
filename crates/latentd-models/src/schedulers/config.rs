//! `scheduler/scheduler_config.json`, as diffusers' `Scheduler.from_config` reads it.
//!
//! One struct holds the keys of every supported scheduler class. A key that is
//! absent stays `None` and each scheduler substitutes *its own class's* default,
//! exactly as `OtherScheduler.from_config(folder_config)` does in diffusers (e.g.
//! `set_alpha_to_one` defaults to true for DDIM but false for PNDM).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Error, Result};

/// What the denoising model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The added noise (SD 1.x, SD 2.x base).
    #[default]
    Epsilon,
    /// The velocity `alpha_t * noise - sigma_t * x0` (SD 2.x 768).
    VPrediction,
    /// The denoised sample itself.
    #[serde(alias = "original_sample")]
    Sample,
}

impl PredictionType {
    /// The name diffusers uses in `prediction_type`.
    pub fn name(self) -> &'static str {
        match self {
            PredictionType::Epsilon => "epsilon",
            PredictionType::VPrediction => "v_prediction",
            PredictionType::Sample => "sample",
        }
    }
}

impl std::fmt::Display for PredictionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A diffusers scheduler configuration; unknown keys are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name")]
    class_name: Option<String>,
    /// Length of the training noise schedule (1000).
    pub num_train_timesteps: Option<usize>,
    /// First training beta (0.0001).
    pub beta_start: Option<f64>,
    /// Last training beta (0.02).
    pub beta_end: Option<f64>,
    /// `linear`, `scaled_linear` or `squaredcos_cap_v2` (`linear`).
    pub beta_schedule: Option<String>,
    /// Explicit training betas, overriding the schedule.
    pub trained_betas: Option<Vec<f64>>,
    /// What the model predicts (epsilon).
    pub prediction_type: Option<PredictionType>,
    /// `linspace`, `leading` or `trailing` (class default).
    pub timestep_spacing: Option<String>,
    /// Added to `leading` timesteps (0; SD 1.x uses 1).
    pub steps_offset: Option<usize>,
    /// DDIM / PNDM: the final step's "previous" alpha is 1 (else `alphas_cumprod[0]`).
    pub set_alpha_to_one: Option<bool>,
    /// DDIM: clip the predicted x0 (true).
    pub clip_sample: Option<bool>,
    /// DDIM: clip range (1.0).
    pub clip_sample_range: Option<f64>,
    /// PNDM: no Runge-Kutta warm-up (false).
    pub skip_prk_steps: Option<bool>,
    /// Dynamic thresholding (unsupported when true).
    pub thresholding: Option<bool>,
    /// Rescale betas to zero terminal SNR (false).
    pub rescale_betas_zero_snr: Option<bool>,
    /// Euler: `linear` or `log_linear` sigma interpolation.
    pub interpolation_type: Option<String>,
    /// Euler: `discrete` or `continuous` (with v-prediction: timesteps 0.25 ln sigma).
    pub timestep_type: Option<String>,
    /// Euler / DPM-Solver: Karras sigma grid.
    pub use_karras_sigmas: Option<bool>,
    /// Euler / DPM-Solver: exponential sigma grid.
    pub use_exponential_sigmas: Option<bool>,
    /// Beta-distributed sigma grid (unsupported when true).
    pub use_beta_sigmas: Option<bool>,
    /// DPM-Solver: Lu lambda grid (unsupported when true).
    pub use_lu_lambdas: Option<bool>,
    /// DPM-Solver: flow-matching sigmas (unsupported when true).
    pub use_flow_sigmas: Option<bool>,
    /// Smallest sigma of a Karras / exponential grid (the schedule's).
    pub sigma_min: Option<f64>,
    /// Largest sigma of a Karras / exponential grid (the schedule's).
    pub sigma_max: Option<f64>,
    /// `zero` or `sigma_min`: the sigma after the last step.
    pub final_sigmas_type: Option<String>,
    /// DPM-Solver: lower orders for the last steps below 15 steps (true).
    pub lower_order_final: Option<bool>,
    /// DPM-Solver: first order for the last step (false).
    pub euler_at_final: Option<bool>,
    /// DPM-Solver: order 1, 2 or 3 (2).
    pub solver_order: Option<usize>,
    /// DPM-Solver: only `dpmsolver++` (and `deis`, mapped to it).
    pub algorithm_type: Option<String>,
    /// DPM-Solver: `midpoint` or `heun` second-order rule.
    pub solver_type: Option<String>,
    /// DPM-Solver: drop timesteps whose log-SNR is below this.
    pub lambda_min_clipped: Option<f64>,
    /// DPM-Solver: learned variance (unsupported when set).
    pub variance_type: Option<String>,
    /// The file this config was read from (for error messages).
    #[serde(skip)]
    source: PathBuf,
}

impl SchedulerConfig {
    /// Reads a `scheduler_config.json`.
    ///
    /// Keys listed in `_use_default_values` are dropped (diffusers does the same, so
    /// the loading class's own defaults apply), and the `Infinity` / `NaN` tokens
    /// Python's `json` writes (e.g. DPM-Solver's `lambda_min_clipped: -Infinity`,
    /// its default) are read as absent keys.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let json_error = |source| Error::Json {
            path: path.to_path_buf(),
            source,
        };
        let mut value: serde_json::Value =
            serde_json::from_str(&null_non_finite(&text)).map_err(json_error)?;
        if let Some(map) = value.as_object_mut() {
            let defaulted: Vec<String> = map
                .remove("_use_default_values")
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default();
            for key in defaulted {
                map.remove(&key);
            }
        }
        let mut config: Self = serde_json::from_value(value).map_err(json_error)?;
        config.source = path.to_path_buf();
        Ok(config)
    }

    /// The `_class_name` the folder ships (e.g. `"PNDMScheduler"`).
    pub fn class_name(&self) -> Option<&str> {
        self.class_name.as_deref()
    }

    /// The configured prediction type (epsilon when absent, the default of every class).
    pub fn prediction_type(&self) -> PredictionType {
        self.prediction_type.unwrap_or_default()
    }

    /// An [`Error::UnsupportedConfig`] about `key` of this config.
    pub(crate) fn unsupported(&self, key: &str, message: impl Into<String>) -> Error {
        Error::UnsupportedConfig {
            path: self.source.clone(),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// Replaces the bare `NaN`, `Infinity` and `-Infinity` tokens outside strings by `null`.
fn null_non_finite(text: &str) -> String {
    const TOKENS: [&str; 3] = ["-Infinity", "Infinity", "NaN"];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut in_string = false;
    while let Some(c) = rest.chars().next() {
        if !in_string {
            if let Some(token) = TOKENS.iter().find(|t| rest.starts_with(*t)) {
                out.push_str("null");
                rest = &rest[token.len()..];
                continue;
            }
        }
        match c {
            '"' => in_string = !in_string,
            '\\' if in_string => {
                // Copy the escaped character too, so `\"` does not end the string.
                out.push(c);
                rest = &rest[1..];
                if let Some(escaped) = rest.chars().next() {
                    out.push(escaped);
                    rest = &rest[escaped.len_utf8()..];
                }
                continue;
            }
            _ => {}
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `json` to a file `name` in a fresh folder; the folder is removed when the
    /// returned guard is dropped.
    fn write_config(name: &str, json: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("latentd-sched-config-")
            .tempdir()
            .unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, json).unwrap();
        (dir, path)
    }

    #[test]
    fn reads_known_keys_and_ignores_unknown_ones() {
        let (_dir, path) = write_config(
            "known.json",
            r#"{"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear",
                "prediction_type": "v_prediction", "trained_betas": null, "some_future_key": [1, 2]}"#,
        );
        let config = SchedulerConfig::from_file(&path).unwrap();
        assert_eq!(config.class_name(), Some("PNDMScheduler"));
        assert_eq!(config.beta_schedule.as_deref(), Some("scaled_linear"));
        assert_eq!(config.prediction_type(), PredictionType::VPrediction);
        assert!(config.trained_betas.is_none());
        assert!(config.num_train_timesteps.is_none());
    }

    #[test]
    fn python_infinity_and_use_default_values() {
        let (_dir, path) = write_config(
            "python.json",
            r#"{"lambda_min_clipped": -Infinity, "note": "NaN -Infinity \" NaN",
                "steps_offset": 1, "timestep_spacing": "trailing",
                "_use_default_values": ["timestep_spacing"]}"#,
        );
        let config = SchedulerConfig::from_file(&path).unwrap();
        assert!(config.lambda_min_clipped.is_none());
        assert_eq!(config.steps_offset, Some(1));
        assert!(config.timestep_spacing.is_none());
    }

    #[test]
    fn unknown_prediction_type_is_an_error() {
        let (_dir, path) = write_config("bad.json", r#"{"prediction_type": "flow_prediction"}"#);
        assert!(matches!(
            SchedulerConfig::from_file(&path),
            Err(Error::Json { .. })
        ));
    }

    #[test]
    fn default_prediction_type_is_epsilon() {
        assert_eq!(
            SchedulerConfig::default().prediction_type(),
            PredictionType::Epsilon
        );
    }
}
