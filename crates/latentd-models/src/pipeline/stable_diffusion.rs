//! A loaded Stable Diffusion pipeline: text encoding, UNet calls and decoding as
//! separate, batchable operations.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::image::{downsample_nearest, to_rgb8, Mask, RgbImage};
use super::model::ModelBase;
use super::model::{
    encode_text_jobs, AutoencoderKind, ConditionInput, Conditioning, ConditioningKind,
    DiffusionModel, EncodedImage, Family, GuidanceRule, InitialNoise, ModelInfo, SamplingRules,
};
use super::model_index::ModelIndex;
use super::precision::{cast, Precision, STATE_DTYPE};
use super::weights::WeightFiles;
use crate::schedulers::{SchedulerConfig, SchedulerKind};
use crate::text::{ClipTextConfig, ClipTextModel, ClipTokenizer, HiddenAct};
use crate::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::{Error, Result};

/// The class name of the pipelines this loader serves.
pub(crate) const PIPELINE_CLASS: &str = "StableDiffusionPipeline";

/// The class name of inpainting folders (a UNet with mask and masked-image channels).
pub(crate) const INPAINT_PIPELINE_CLASS: &str = "StableDiffusionInpaintPipeline";

/// The loaded parts of a Stable Diffusion pipeline, wherever they came from.
pub(crate) struct SdComponents {
    /// The folder or file they were read from (for error messages).
    pub source: PathBuf,
    /// The CLIP tokenizer.
    pub tokenizer: ClipTokenizer,
    /// The text encoder's configuration.
    pub text_config: ClipTextConfig,
    /// The CLIP text encoder.
    pub text_encoder: ClipTextModel,
    /// The denoiser.
    pub unet: UNet2DConditionModel,
    /// The autoencoder.
    pub vae: AutoencoderKL,
    /// The scheduler configuration.
    pub scheduler_config: SchedulerConfig,
    /// The scheduler the source names.
    pub default_scheduler: SchedulerKind,
}

/// A Stable Diffusion 1.x/2.x pipeline loaded from a diffusers folder.
pub struct StableDiffusion {
    base: ModelBase,
    tokenizer: ClipTokenizer,
    text_encoder: ClipTextModel,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
}

impl StableDiffusion {
    /// Loads a diffusers-layout folder (`model_index.json`, `unet/`, `vae/`,
    /// `text_encoder/`, `tokenizer/`, `scheduler/`) onto `device` in float32, named
    /// after the folder.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_named(dir, &super::registry::folder_name(dir), device)
    }

    /// Like [`StableDiffusion::load`], with an explicit model id.
    pub fn load_named(dir: &Path, name: &str, device: &Device) -> Result<Self> {
        Self::load_in(dir, name, device, Precision::F32)
    }

    /// Like [`StableDiffusion::load_named`], with the networks in `precision` (the
    /// autoencoder stays in `f32` if its config asks to be upcast).
    pub fn load_in(dir: &Path, name: &str, device: &Device, precision: Precision) -> Result<Self> {
        let dtype = precision.dtype();
        let index = ModelIndex::from_dir(dir)?;
        index.require_pipeline(&[PIPELINE_CLASS, INPAINT_PIPELINE_CLASS])?;
        index.require("unet", &["UNet2DConditionModel"])?;
        index.require("vae", &["AutoencoderKL"])?;
        index.require("text_encoder", &["CLIPTextModel"])?;
        index.require("tokenizer", &["CLIPTokenizer", "CLIPTokenizerFast"])?;
        let (scheduler_config, default_scheduler) = index.scheduler(dir)?;

        let tokenizer = ClipTokenizer::from_dir(&dir.join("tokenizer"))?;

        let text_dir = dir.join("text_encoder");
        let text_config = ClipTextConfig::from_file(&text_dir.join("config.json"))?;
        let text_encoder = WeightFiles::load(&text_dir, dtype, device, |vb| {
            ClipTextModel::new(vb, &text_config)
        })?;

        let unet_dir = dir.join("unet");
        let unet_config = UNet2DConditionConfig::from_file(unet_dir.join("config.json"))?;
        let unet = WeightFiles::load(&unet_dir, dtype, device, |vb| {
            UNet2DConditionModel::new(vb, &unet_config)
        })?;

        let vae_dir = dir.join("vae");
        let vae_config = AutoencoderKLConfig::from_file(vae_dir.join("config.json"))?;
        let vae_dtype = precision.autoencoder_dtype(vae_config.force_upcast);
        let vae = WeightFiles::load(&vae_dir, vae_dtype, device, |vb| {
            AutoencoderKL::new(vb, &vae_config)
        })?;
        Self::from_components(
            name,
            SdComponents {
                source: dir.to_path_buf(),
                tokenizer,
                text_config,
                text_encoder,
                unet,
                vae,
                scheduler_config,
                default_scheduler,
            },
            device,
            dtype,
        )
    }

    /// Assembles a pipeline from loaded components (a diffusers folder's or a
    /// single-file checkpoint's), checking that they fit together.
    pub(crate) fn from_components(
        name: &str,
        parts: SdComponents,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let SdComponents {
            source,
            tokenizer,
            text_config,
            text_encoder,
            unet,
            vae,
            scheduler_config,
            default_scheduler,
        } = parts;
        let context_dim = unet.config().context_dim()?;
        if text_encoder.hidden_size() != context_dim {
            return Err(Error::UnsupportedConfig {
                path: source.join("unet"),
                key: "cross_attention_dim".into(),
                message: format!(
                    "{context_dim} does not match the text encoder's hidden_size {}",
                    text_encoder.hidden_size()
                ),
            });
        }
        if tokenizer.max_length() > text_config.max_position_embeddings {
            return Err(Error::UnsupportedConfig {
                path: source.join("tokenizer"),
                key: "model_max_length".into(),
                message: format!(
                    "{} tokens is more than the text encoder's {} positions",
                    tokenizer.max_length(),
                    text_config.max_position_embeddings
                ),
            });
        }
        let latent_channels = vae.config().latent_channels;
        // An inpainting UNet also reads the mask and the masked image's latents.
        let in_channels = unet.config().in_channels;
        let mask_channels = in_channels == 2 * latent_channels + 1;
        if in_channels != latent_channels && !mask_channels {
            return Err(Error::UnsupportedConfig {
                path: source.join("unet"),
                key: "in_channels".into(),
                message: format!(
                    "{in_channels} input channels for {latent_channels} latent channels \
                     (expected {latent_channels}, or {} for an inpainting UNet)",
                    2 * latent_channels + 1
                ),
            });
        }
        let vae_scale_factor = vae.downsampling_factor();
        // diffusers' pipelines derive the default size from the UNet's sample_size.
        let (native_h, native_w) = unet
            .config()
            .sample_size
            .map(|s| s.height_width())
            .unwrap_or((64, 64));
        let family = if text_config.hidden_act == HiddenAct::QuickGelu {
            Family::StableDiffusion1
        } else {
            Family::StableDiffusion2
        };
        let info = ModelInfo {
            name: name.to_string(),
            family,
            conditioning: ConditioningKind::Text,
            autoencoder: AutoencoderKind::Kl,
            native_width: native_w * vae_scale_factor,
            native_height: native_h * vae_scale_factor,
            vae_scale_factor,
            size_multiple: vae_scale_factor.max(8),
            latent_channels,
            max_prompt_tokens: Some(tokenizer.max_length().saturating_sub(2)),
            rules: SamplingRules {
                guidance: GuidanceRule::AboveOne,
                initial_noise: InitialNoise::Scaled,
                scale_model_input: true,
            },
            default_scheduler,
            prediction_type: scheduler_config.prediction_type().to_string(),
            image_edits: true,
            mask_channels,
        };
        tracing::info!(model = %info.name, family = %info.family, "loaded pipeline");
        Ok(Self {
            base: ModelBase {
                info,
                scheduler_config,
                device: device.clone(),
                dtype,
            },
            tokenizer,
            text_encoder,
            unet,
            vae,
        })
    }

    /// The tokenizer, e.g. to validate prompt length.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// Encodes prompts into text embeddings `[P, T, D]`, one row per prompt.
    pub fn encode_prompts(&self, prompts: &[&str]) -> Result<Tensor> {
        let _span = tracing::debug_span!("encode_prompts", n = prompts.len()).entered();
        let mut ids = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            let row = self.tokenizer.encode(prompt)?;
            ids.push(Tensor::new(row.as_slice(), &self.base.device)?);
        }
        if ids.is_empty() {
            return Err(Error::InvalidArgument("no prompts to encode".into()));
        }
        let ids = Tensor::stack(&ids, 0)?;
        self.text_encoder.forward(&ids)
    }

    /// Encodes images `[n, 3, H, W]` in [-1, 1] to the mean of their latent distribution,
    /// scaled as the sampler expects latents.
    pub fn encode_images(&self, images: &Tensor) -> Result<Tensor> {
        let dist = self.vae.encode(images)?;
        Ok((dist.mean * self.vae.config().scaling_factor)?)
    }

    /// An image `[1, 3, H, W]` in [-1, 1] (in the autoencoder's dtype) through the
    /// autoencoder's encoder; the posterior in the sampler's dtype.
    fn encode_image(&self, image: &Tensor) -> Result<EncodedImage> {
        let _span = tracing::debug_span!("vae_encode").entered();
        Ok(EncodedImage {
            dist: self.vae.encode(image)?.to_dtype(STATE_DTYPE)?,
            scaling_factor: self.vae.config().scaling_factor,
        })
    }

    /// The image parts of a job's conditioning: the input image's posterior (img2img,
    /// inpainting), and for inpainting the masked image's and the mask on the latent
    /// grid, as `StableDiffusionInpaintPipeline` prepares them.
    fn encode_edit(&self, job: &ConditionInput<'_>, conditioning: &mut Conditioning) -> Result<()> {
        let Some(image) = job.image else {
            if self.base.info.mask_channels {
                return Err(Error::InvalidArgument(format!(
                    "{} is an inpainting model: it needs an input image",
                    self.base.info.name
                )));
            }
            return Ok(());
        };
        let (device, dtype) = (&self.base.device, self.vae.dtype());
        let pixels = image.to_tensor(device, dtype)?;
        let inpaint = job.mask.is_some() || self.base.info.mask_channels;
        if !inpaint {
            conditioning.init = Some(self.encode_image(&pixels)?);
            return Ok(());
        }
        let full;
        let mask = match job.mask {
            Some(mask) => mask,
            None => {
                full = Mask::full(image.width, image.height);
                &full
            }
        };
        if (mask.width, mask.height) != (image.width, image.height) {
            return Err(Error::InvalidArgument(format!(
                "the mask is {}x{}, the image {}x{}: they must be the same size",
                mask.width, mask.height, image.width, image.height
            )));
        }
        let mask = mask.to_tensor(device, dtype)?;
        // A 9-channel UNet at full strength starts from pure noise: no image latents.
        if !self.base.info.mask_channels || job.strength != Some(1.0) {
            conditioning.init = Some(self.encode_image(&pixels)?);
        }
        let keep = mask.lt(0.5)?.to_dtype(dtype)?;
        let masked = pixels.broadcast_mul(&keep)?;
        conditioning.masked = Some(self.encode_image(&masked)?);
        let mask = mask.to_dtype(STATE_DTYPE)?;
        conditioning.mask = Some(downsample_nearest(&mask, self.base.info.vae_scale_factor)?);
        Ok(())
    }
}

impl DiffusionModel for StableDiffusion {
    fn base(&self) -> &ModelBase {
        &self.base
    }

    fn count_tokens(&self, text: &str) -> Result<usize> {
        self.tokenizer.count_tokens(text)
    }

    fn encode(&self, jobs: &[ConditionInput<'_>]) -> Result<Vec<Conditioning>> {
        let mut out = encode_text_jobs(jobs, |prompts| self.encode_prompts(prompts))?;
        for (job, conditioning) in jobs.iter().zip(out.iter_mut()) {
            self.encode_edit(job, conditioning)?;
        }
        Ok(out)
    }

    fn predict(
        &self,
        input: &Tensor,
        timesteps: &[f32],
        context: Option<&Tensor>,
    ) -> Result<Tensor> {
        predict_with_text(&self.unet, &self.base, input, timesteps, context)
    }

    fn decode(&self, latents: &Tensor) -> Result<Vec<RgbImage>> {
        decode_kl(&self.vae, latents)
    }
}

/// One `UNet2DConditionModel` call over rows with their own timesteps and text context
/// (Stable Diffusion and the LDM text-to-image model).
pub(crate) fn predict_with_text(
    unet: &UNet2DConditionModel,
    base: &ModelBase,
    input: &Tensor,
    timesteps: &[f32],
    context: Option<&Tensor>,
) -> Result<Tensor> {
    let _span = tracing::debug_span!("unet", rows = timesteps.len()).entered();
    let context = context.ok_or_else(|| {
        Error::InvalidArgument(format!("{}'s UNet needs a text context", base.info.family))
    })?;
    // Timesteps stay f32 (the time embedding is computed in f32); the rows enter the
    // UNet in its dtype and the prediction leaves it in the sampler's.
    let t = Tensor::new(timesteps, &base.device)?;
    let prediction = unet.forward(&cast(input, base.dtype)?, &t, &cast(context, base.dtype)?)?;
    cast(&prediction, STATE_DTYPE)
}

/// Decodes final latents with a KL autoencoder: divided by its `scaling_factor`, then
/// decoded and converted to 8-bit images.
pub(crate) fn decode_kl(vae: &AutoencoderKL, latents: &Tensor) -> Result<Vec<RgbImage>> {
    let _span = tracing::debug_span!("vae_decode", n = latents.dim(0)?).entered();
    let scaled = (latents / vae.config().scaling_factor)?;
    to_rgb8(&vae.decode(&cast(&scaled, vae.dtype())?)?)
}
