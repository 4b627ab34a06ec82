//! The CompVis text-to-image LDM (`LDMTextToImagePipeline`): LDM-BERT text through
//! cross-attention in a `UNet2DConditionModel`, on a KL autoencoder (`vqvae/`).

use std::path::Path;

use candle_core::{Device, Tensor};

use super::image::RgbImage;
use super::model::ModelBase;
use super::model::{
    encode_text_jobs, AutoencoderKind, ConditionInput, Conditioning, ConditioningKind,
    DiffusionModel, Family, GuidanceRule, InitialNoise, ModelInfo, SamplingRules,
};
use super::model_index::ModelIndex;
use super::precision::Precision;
use super::stable_diffusion::{decode_kl, predict_with_text};
use super::weights::WeightFiles;
use crate::text::{BertTokenizer, LdmBertConfig, LdmBertModel, LDM_MAX_LENGTH};
use crate::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::{Error, Result};

/// `_class_name` of the pipeline.
pub(crate) const PIPELINE_CLASS: &str = "LDMTextToImagePipeline";

/// An `LDMTextToImagePipeline` loaded from a diffusers folder.
pub struct LdmTextToImage {
    base: ModelBase,
    tokenizer: BertTokenizer,
    bert: LdmBertModel,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
}

impl LdmTextToImage {
    /// Loads a folder (`model_index.json`, `bert/`, `tokenizer/`, `unet/`, `vqvae/`,
    /// `scheduler/`) onto `device` in float32.
    pub fn load_named(dir: &Path, name: &str, device: &Device) -> Result<Self> {
        Self::load_in(dir, name, device, Precision::F32)
    }

    /// Like [`LdmTextToImage::load_named`], with the networks in `precision` (the
    /// autoencoder stays in `f32` if its config asks to be upcast).
    pub fn load_in(dir: &Path, name: &str, device: &Device, precision: Precision) -> Result<Self> {
        let dtype = precision.dtype();
        let index = ModelIndex::from_dir(dir)?;
        index.require_pipeline(&[PIPELINE_CLASS])?;
        index.require("bert", &["LDMBertModel"])?;
        index.require("tokenizer", &["BertTokenizer", "BertTokenizerFast"])?;
        index.require("unet", &["UNet2DConditionModel"])?;
        index.require("vqvae", &["AutoencoderKL"])?;
        let (scheduler_config, default_scheduler) = index.scheduler(dir)?;

        // The pipeline pads and truncates every prompt to 77 tokens.
        let tokenizer =
            BertTokenizer::from_dir(&dir.join("tokenizer"))?.with_max_length(LDM_MAX_LENGTH)?;
        let bert_dir = dir.join("bert");
        let bert_config = LdmBertConfig::from_file(&bert_dir.join("config.json"))?;
        let bert = WeightFiles::load(&bert_dir, dtype, device, |vb| {
            LdmBertModel::new(vb, &bert_config)
        })?;
        if tokenizer.max_length() > bert.max_position_embeddings() {
            return Err(Error::UnsupportedConfig {
                path: bert_dir.join("config.json"),
                key: "max_position_embeddings".into(),
                message: format!(
                    "{} positions, fewer than the pipeline's {} tokens",
                    bert.max_position_embeddings(),
                    tokenizer.max_length()
                ),
            });
        }
        if tokenizer.vocab_size() > bert.vocab_size() {
            return Err(Error::UnsupportedConfig {
                path: bert_dir.join("config.json"),
                key: "vocab_size".into(),
                message: format!(
                    "{} embeddings for a tokenizer of {} tokens",
                    bert.vocab_size(),
                    tokenizer.vocab_size()
                ),
            });
        }

        let unet_dir = dir.join("unet");
        let unet_config = UNet2DConditionConfig::from_file(unet_dir.join("config.json"))?;
        let unet = WeightFiles::load(&unet_dir, dtype, device, |vb| {
            UNet2DConditionModel::new(vb, &unet_config)
        })?;
        let vae_dir = dir.join("vqvae");
        let vae_config = AutoencoderKLConfig::from_file(vae_dir.join("config.json"))?;
        let vae_dtype = precision.autoencoder_dtype(vae_config.force_upcast);
        let vae = WeightFiles::load(&vae_dir, vae_dtype, device, |vb| {
            AutoencoderKL::new(vb, &vae_config)
        })?;

        let context_dim = unet.config().context_dim()?;
        if bert.hidden_size() != context_dim {
            return Err(Error::UnsupportedConfig {
                path: unet_dir.join("config.json"),
                key: "cross_attention_dim".into(),
                message: format!(
                    "{context_dim} does not match LDM-BERT's d_model {}",
                    bert.hidden_size()
                ),
            });
        }
        let latent_channels = vae.config().latent_channels;
        if unet_config.in_channels != latent_channels {
            return Err(Error::UnsupportedConfig {
                path: unet_dir.join("config.json"),
                key: "in_channels".into(),
                message: format!(
                    "{} input channels for {latent_channels} latent channels",
                    unet_config.in_channels
                ),
            });
        }
        let f = vae.downsampling_factor();
        let (native_h, native_w) = unet_config
            .sample_size
            .map(|s| s.height_width())
            .unwrap_or((32, 32));
        let info = ModelInfo {
            name: name.to_string(),
            family: Family::LdmTextToImage,
            conditioning: ConditioningKind::Text,
            autoencoder: AutoencoderKind::Kl,
            native_width: native_w * f,
            native_height: native_h * f,
            vae_scale_factor: f,
            size_multiple: f.max(8),
            latent_channels,
            max_prompt_tokens: Some(tokenizer.max_length().saturating_sub(2)),
            // As diffusers runs it: guided for every scale but 1, the initial noise
            // unscaled and the model input never passed through `scale_model_input`.
            rules: SamplingRules {
                guidance: GuidanceRule::NotOne,
                initial_noise: InitialNoise::Unscaled,
                scale_model_input: false,
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
            tokenizer,
            bert,
            unet,
            vae,
        })
    }

    /// Encodes prompts into LDM-BERT's last hidden states `[P, 77, D]`.
    pub fn encode_prompts(&self, prompts: &[&str]) -> Result<Tensor> {
        let _span = tracing::debug_span!("ldm_bert", n = prompts.len()).entered();
        let ids = prompts
            .iter()
            .map(|p| {
                Ok(Tensor::new(
                    self.tokenizer.encode(p)?.as_slice(),
                    &self.base.device,
                )?)
            })
            .collect::<Result<Vec<_>>>()?;
        if ids.is_empty() {
            return Err(Error::InvalidArgument("no prompts to encode".into()));
        }
        self.bert.forward(&Tensor::stack(&ids, 0)?)
    }
}

impl DiffusionModel for LdmTextToImage {
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
