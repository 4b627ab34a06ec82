//! The CompVis LDMs on a VQ autoencoder with a `UNet2DModel`: unconditional sampling
//! (`LDMPipeline`) and 4x super-resolution (`LDMSuperResolutionPipeline`, the
//! low-resolution image concatenated to the latents in pixel space).

use std::path::Path;

use candle_core::{Device, Tensor};

use super::image::{to_rgb8, RgbImage};
use super::model::ModelBase;
use super::model::{
    AutoencoderKind, ConditionInput, Conditioning, ConditioningKind, DiffusionModel, Family,
    GuidanceRule, InitialNoise, ModelInfo, SamplingRules,
};
use super::model_index::ModelIndex;
use super::precision::{cast, Precision, STATE_DTYPE};
use super::weights::WeightFiles;
use crate::unet2d::{UNet2DConfig, UNet2DModel};
use crate::vae::{VQModel, VQModelConfig};
use crate::{Error, Result};

/// `_class_name` of the unconditional pipeline.
pub(crate) const UNCONDITIONAL_CLASS: &str = "LDMPipeline";
/// `_class_name` of the super-resolution pipeline.
pub(crate) const SUPER_RESOLUTION_CLASS: &str = "LDMSuperResolutionPipeline";

/// Channels of the image concatenated to the latents by super-resolution.
const IMAGE_CHANNELS: usize = 3;

/// An `LDMPipeline` or `LDMSuperResolutionPipeline` loaded from a diffusers folder.
pub struct VqLatentDiffusion {
    base: ModelBase,
    unet: UNet2DModel,
    vqvae: VQModel,
}

impl VqLatentDiffusion {
    /// Loads a folder (`model_index.json`, `unet/`, `vqvae/`, `scheduler/`) of either
    /// class onto `device` in float32.
    pub fn load_named(dir: &Path, name: &str, device: &Device) -> Result<Self> {
        Self::load_in(dir, name, device, Precision::F32)
    }

    /// Like [`VqLatentDiffusion::load_named`], with the networks in `precision` (the
    /// autoencoder stays in `f32` if its config asks to be upcast).
    pub fn load_in(dir: &Path, name: &str, device: &Device, precision: Precision) -> Result<Self> {
        let dtype = precision.dtype();
        let index = ModelIndex::from_dir(dir)?;
        index.require_pipeline(&[UNCONDITIONAL_CLASS, SUPER_RESOLUTION_CLASS])?;
        let family = if index.class_name == SUPER_RESOLUTION_CLASS {
            Family::LdmSuperResolution
        } else {
            Family::LdmUnconditional
        };
        index.require("unet", &["UNet2DModel"])?;
        index.require("vqvae", &["VQModel"])?;
        let (scheduler_config, default_scheduler) = index.scheduler(dir)?;

        let unet_dir = dir.join("unet");
        let unet_config = UNet2DConfig::from_file(unet_dir.join("config.json"))?;
        let unet = WeightFiles::load(&unet_dir, dtype, device, |vb| {
            UNet2DModel::new(vb, &unet_config)
        })?;
        let vq_dir = dir.join("vqvae");
        let vq_config = VQModelConfig::from_file(vq_dir.join("config.json"))?;
        let vq_dtype = precision.autoencoder_dtype(vq_config.force_upcast);
        let vqvae =
            WeightFiles::load(&vq_dir, vq_dtype, device, |vb| VQModel::new(vb, &vq_config))?;

        let latent_channels = vq_config.embed_dim();
        let (conditioning, concat) = match family {
            Family::LdmSuperResolution => (ConditioningKind::Image, IMAGE_CHANNELS),
            _ => (ConditioningKind::None, 0),
        };
        let mismatch = |key: &str, message: String| Error::UnsupportedConfig {
            path: unet_dir.join("config.json"),
            key: key.into(),
            message,
        };
        if unet_config.in_channels != latent_channels + concat {
            return Err(mismatch(
                "in_channels",
                format!(
                    "{} input channels; this pipeline needs {latent_channels} latent channels{}",
                    unet_config.in_channels,
                    if concat > 0 {
                        " + 3 image channels"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if unet_config.out_channels != latent_channels {
            return Err(mismatch(
                "out_channels",
                format!(
                    "{} output channels for {latent_channels} latent channels",
                    unet_config.out_channels
                ),
            ));
        }
        let f = vqvae.downsampling_factor();
        let (native_h, native_w) = unet_config
            .sample_size
            .map(|s| s.height_width())
            .unwrap_or((64, 64));
        let info = ModelInfo {
            name: name.to_string(),
            family,
            conditioning,
            autoencoder: AutoencoderKind::Vq,
            native_width: native_w * f,
            native_height: native_h * f,
            vae_scale_factor: f,
            // diffusers' UNet2DModel upsamples by a plain 2x: latents must divide.
            size_multiple: f * unet_config.downsampling_factor(),
            latent_channels,
            max_prompt_tokens: None,
            rules: SamplingRules {
                guidance: GuidanceRule::Never,
                initial_noise: match family {
                    Family::LdmSuperResolution => InitialNoise::Scaled,
                    _ => InitialNoise::ScaledBeforeSetTimesteps,
                },
                scale_model_input: true,
            },
            default_scheduler,
            prediction_type: scheduler_config.prediction_type().to_string(),
            image_edits: false,
            mask_channels: false,
        };
        tracing::info!(model = %info.name, family = %info.family, "loaded pipeline");
        Ok(Self {
            base: ModelBase {
                info,
                scheduler_config,
                device: device.clone(),
                dtype,
            },
            unet,
            vqvae,
        })
    }
}

impl DiffusionModel for VqLatentDiffusion {
    fn base(&self) -> &ModelBase {
        &self.base
    }

    fn count_tokens(&self, _text: &str) -> Result<usize> {
        Err(Error::InvalidArgument(format!(
            "{} reads no text",
            self.base.info.family
        )))
    }

    /// Nothing for unconditional sampling; the low-resolution image in `[-1, 1]`
    /// (`[1, 3, h, w]`, the latent size) for super-resolution.
    fn encode(&self, jobs: &[ConditionInput<'_>]) -> Result<Vec<Conditioning>> {
        jobs.iter()
            .map(|job| match self.base.info.conditioning {
                ConditioningKind::Image => {
                    let image = job.image.ok_or_else(|| {
                        Error::InvalidArgument("super-resolution needs an input image".into())
                    })?;
                    Ok(Conditioning {
                        concat: Some(image.to_tensor(&self.base.device, STATE_DTYPE)?),
                        ..Conditioning::default()
                    })
                }
                _ => Ok(Conditioning::default()),
            })
            .collect()
    }

    fn predict(
        &self,
        input: &Tensor,
        timesteps: &[f32],
        context: Option<&Tensor>,
    ) -> Result<Tensor> {
        let _span = tracing::debug_span!("unet2d", rows = timesteps.len()).entered();
        if context.is_some() {
            return Err(Error::InvalidArgument(
                "a UNet2DModel takes no text context".into(),
            ));
        }
        let t = Tensor::new(timesteps, &self.base.device)?;
        let prediction = self.unet.forward(&cast(input, self.base.dtype)?, &t)?;
        cast(&prediction, STATE_DTYPE)
    }

    /// The unconditional pipeline divides by the autoencoder's `scaling_factor` first,
    /// super-resolution decodes the latents as they are (both as diffusers does); the
    /// VQ decoder quantizes them.
    fn decode(&self, latents: &Tensor) -> Result<Vec<RgbImage>> {
        let _span = tracing::debug_span!("vq_decode", n = latents.dim(0)?).entered();
        let latents = match self.base.info.family {
            Family::LdmSuperResolution => latents.clone(),
            _ => (latents / self.vqvae.config().scaling_factor)?,
        };
        to_rgb8(&self.vqvae.decode(&cast(&latents, self.vqvae.dtype())?)?)
    }
}
