//! What one generation asks for, checked against what a model can do.

use std::sync::Arc;

use super::image::{Mask, RgbImage};
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
    /// The input image, shared by the job's `n` images: the conditioning image of
    /// image-conditioned models (the low-resolution image of super-resolution), or the
    /// image img2img and inpainting start from (at the output size).
    pub image: Option<Arc<RgbImage>>,
    /// The inpainting mask, at the output size (bright = repaint).
    pub mask: Option<Arc<Mask>>,
    /// How much of the input image img2img and inpainting repaint, in (0, 1]: only the
    /// last `int(steps * strength)` steps run (at least one). `None`: diffusers' defaults (0.8 for
    /// img2img, 1.0 for inpainting).
    pub strength: Option<f64>,
    /// Seed of a second generator for the samplers' per-step noise (DDIM with eta > 0,
    /// ancestral samplers). `None` (the default) continues the job's generator after the
    /// initial noise, as `StableDiffusionPipeline` does; the CompVis LDM pipelines draw
    /// step noise from torch's global generator instead, which `Some(s)` reproduces
    /// when it was seeded with `torch.manual_seed(s)`.
    pub step_noise_seed: Option<u64>,
}

/// diffusers' default strength of `StableDiffusionImg2ImgPipeline`.
pub const DEFAULT_IMG2IMG_STRENGTH: f64 = 0.8;

/// diffusers' default strength of `StableDiffusionInpaintPipeline`.
pub const DEFAULT_INPAINT_STRENGTH: f64 = 1.0;

impl GenerationParams {
    /// The strength a job with an input image runs at (its own, or the default of its
    /// kind: inpainting when it has a mask or the model is an inpainting UNet
    /// (`mask_channels`)); `None` without one.
    pub fn effective_strength(&self, mask_channels: bool) -> Option<f64> {
        self.image.as_ref()?;
        Some(
            self.strength
                .unwrap_or(if self.mask.is_some() || mask_channels {
                    DEFAULT_INPAINT_STRENGTH
                } else {
                    DEFAULT_IMG2IMG_STRENGTH
                }),
        )
    }

    /// The model calls skipped at the start of the schedule for `strength`:
    /// diffusers' `t_start = steps - min(int(steps * strength), steps)`, except that at
    /// least one step runs (where diffusers refuses a strength that leaves none).
    pub fn start_step(steps: usize, strength: f64) -> usize {
        let init = ((steps as f64 * strength) as usize).clamp(1, steps.max(1));
        steps.saturating_sub(init)
    }

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
        if let Some(strength) = self.strength {
            if !(strength > 0.0 && strength <= 1.0) {
                return Err(Error::InvalidArgument(format!(
                    "strength must be in (0, 1], got {strength}"
                )));
            }
            if self.image.is_none() {
                return Err(Error::InvalidArgument(
                    "strength needs an input image to start from".into(),
                ));
            }
        }
        if self.mask.is_some() && self.image.is_none() {
            return Err(Error::InvalidArgument("a mask needs an input image".into()));
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
            mask: None,
            strength: None,
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
