//! A loaded Stable Diffusion pipeline: text encoding, UNet calls and decoding as
//! separate, batchable operations.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::image::{to_rgb8, RgbImage};
use super::model::ModelBase;
use super::model::{
    encode_text_jobs, AutoencoderKind, ConditionInput, Conditioning, ConditioningKind,
    DiffusionModel, Family, GuidanceRule, InitialNoise, ModelInfo, SamplingRules,
};
use super::model_index::ModelIndex;
use super::weights::WeightFiles;
use crate::text::{ClipTextConfig, ClipTextModel, ClipTokenizer, HiddenAct};
use crate::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::{Error, Result};

/// The class name of the pipelines this loader serves.
pub(crate) const PIPELINE_CLASS: &str = "StableDiffusionPipeline";

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
        let dtype = DType::F32;
        let index = ModelIndex::from_dir(dir)?;
        index.require_pipeline(&[PIPELINE_CLASS])?;
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
        let vae = WeightFiles::load(&vae_dir, dtype, device, |vb| {
            AutoencoderKL::new(vb, &vae_config)
        })?;

        let context_dim = unet.config().context_dim()?;
        if text_encoder.hidden_size() != context_dim {
            return Err(Error::UnsupportedConfig {
                path: unet_dir.join("config.json"),
                key: "cross_attention_dim".into(),
                message: format!(
                    "{context_dim} does not match the text encoder's hidden_size {}",
                    text_encoder.hidden_size()
                ),
            });
        }
        if tokenizer.max_length() > text_config.max_position_embeddings {
            return Err(Error::UnsupportedConfig {
                path: dir.join("tokenizer"),
                key: "model_max_length".into(),
                message: format!(
                    "{} tokens is more than the text encoder's {} positions",
                    tokenizer.max_length(),
                    text_config.max_position_embeddings
                ),
            });
        }
        if unet.config().in_channels != vae.config().latent_channels {
            return Err(Error::UnsupportedConfig {
                path: unet_dir.join("config.json"),
                key: "in_channels".into(),
                message: format!(
                    "{} input channels for {} latent channels (inpainting UNets are not supported yet)",
                    unet.config().in_channels,
                    vae.config().latent_channels
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
            latent_channels: vae.config().latent_channels,
            max_prompt_tokens: Some(tokenizer.max_length().saturating_sub(2)),
            rules: SamplingRules {
                guidance: GuidanceRule::AboveOne,
                initial_noise: InitialNoise::Scaled,
                scale_model_input: true,
            },
            default_scheduler,
            prediction_type: scheduler_config.prediction_type().to_string(),
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
}

impl DiffusionModel for StableDiffusion {
    fn base(&self) -> &ModelBase {
        &self.base
    }

    fn count_tokens(&self, text: &str) -> Result<usize> {
        self.tokenizer.count_tokens(text)
    }

    fn encode(&self, jobs: &[ConditionInput<'_>]) -> Result<Vec<Conditioning>> {
        encode_text_jobs(jobs, |prompts| self.encode_prompts(prompts))
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
    let t = Tensor::new(timesteps, &base.device)?.to_dtype(base.dtype)?;
    unet.forward(input, &t, context)
}

/// Decodes final latents with a KL autoencoder: divided by its `scaling_factor`, then
/// decoded and converted to 8-bit images.
pub(crate) fn decode_kl(vae: &AutoencoderKL, latents: &Tensor) -> Result<Vec<RgbImage>> {
    let _span = tracing::debug_span!("vae_decode", n = latents.dim(0)?).entered();
    let scaled = (latents / vae.config().scaling_factor)?;
    to_rgb8(&vae.decode(&scaled)?)
}
