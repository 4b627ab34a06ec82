//! What one generation asks for, checked against what a model can do.

use std::sync::Arc;

use super::image::RgbImage;
use crate::schedulers::SchedulerKind;
use crate::{Error, Result};

/// The parameters of one generation (one job, `n` images).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// The text to follow (empty for models that read no text).
    pub prompt: String,
    /// Text to steer away from; `None` means the empty prompt, as in diffusers.
    pub negative_prompt: Option<String>,
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Number of denoising steps requested (a scheduler may call the model once more).
    pub steps: usize,
    /// Classifier-free guidance scale; `<= 1` runs the conditional row alone.
    pub guidance_scale: f64,
    /// The sampler.
    pub scheduler: SchedulerKind,
    /// Seed of the torch-compatible generator that draws the initial and ancestral noise.
    pub seed: u64,
    /// Number of images, drawn as one `(n, C, h, w)` noise tensor.
    pub n: usize,
    /// DDIM eta (0 = deterministic); ignored by the other schedulers.
    pub eta: f64,
    /// The input image of image-conditioned models (e.g. the low-resolution image of
    /// super-resolution), shared by the job's `n` images.
    pub image: Option<Arc<RgbImage>>,
    /// Seed of a second generator for the samplers' per-step noise (DDIM with eta > 0,
    /// ancestral samplers). `None` (the default) continues the job's generator after the
    /// initial noise, as `StableDiffusionPipeline` does; the CompVis LDM pipelines draw
    /// step noise from torch's global generator instead, which `Some(s)` reproduces
    /// when it was seeded with `torch.manual_seed(s)`.
    pub step_noise_seed: Option<u64>,
}

impl GenerationParams {
    /// Checks what the model itself requires; the server adds its own configured limits.
    pub fn check(&self, size_multiple: usize) -> Result<()> {
        let multiple = size_multiple.max(8);
        for (name, value) in [("width", self.width), ("height", self.height)] {
            if value == 0 || !value.is_multiple_of(multiple) {
                return Err(Error::InvalidArgument(format!(
                    "{name} must be a positive multiple of {multiple}, got {value}"
                )));
            }
        }
        if self.steps == 0 {
            return Err(Error::InvalidArgument("steps must be at least 1".into()));
        }
        if self.n == 0 {
            return Err(Error::InvalidArgument("n must be at least 1".into()));
        }
        if !self.guidance_scale.is_finite() || self.guidance_scale < 0.0 {
            return Err(Error::InvalidArgument(format!(
                "guidance_scale must be a finite number >= 0, got {}",
                self.guidance_scale
            )));
        }
        if !(0.0..=1.0).contains(&self.eta) {
            return Err(Error::InvalidArgument(format!(
                "eta must be between 0 and 1, got {}",
                self.eta
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> GenerationParams {
        GenerationParams {
            prompt: "a red circle".into(),
            negative_prompt: None,
            width: 64,
            height: 48,
            steps: 20,
            guidance_scale: 7.5,
            scheduler: SchedulerKind::Ddim,
            seed: 0,
            n: 1,
            eta: 0.0,
            image: None,
            step_noise_seed: None,
        }
    }

    #[test]
    fn accepts_valid_params() {
        params().check(8).unwrap();
    }

    #[test]
    fn rejects_each_invalid_field() {
        let bad = [
            GenerationParams {
                width: 60,
                ..params()
            },
            GenerationParams {
                height: 0,
                ..params()
            },
            GenerationParams {
                steps: 0,
                ..params()
            },
            GenerationParams { n: 0, ..params() },
            GenerationParams {
                guidance_scale: f64::NAN,
                ..params()
            },
            GenerationParams {
                guidance_scale: -1.0,
                ..params()
            },
            GenerationParams {
                eta: 1.5,
                ..params()
            },
        ];
        for p in bad {
            assert!(
                matches!(p.check(8), Err(Error::InvalidArgument(_))),
                "{p:?}"
            );
        }
        // The model's own factor wins when it is coarser than 8.
        assert!(params().check(16).is_ok());
        assert!(GenerationParams {
            height: 40,
            ..params()
        }
        .check(16)
        .is_err());
    }
}
