//! A loaded Stable Diffusion pipeline: text encoding, UNet calls and decoding as
//! separate, batchable operations.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};

use super::model_index::{ModelIndex, SUPPORTED_PIPELINES};
use super::weights::WeightFiles;
use crate::schedulers::{SchedulerConfig, SchedulerKind};
use crate::text::{ClipTextConfig, ClipTextModel, ClipTokenizer, HiddenAct};
use crate::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::{Error, Result};

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height * 3` bytes.
    pub data: Vec<u8>,
}

/// What a loaded model is and what it accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Model id (the folder name unless given).
    pub name: String,
    /// Model family, e.g. `stable-diffusion-1` or `stable-diffusion-2`.
    pub family: String,
    /// The size the UNet was configured for, in pixels.
    pub native_width: usize,
    /// The size the UNet was configured for, in pixels.
    pub native_height: usize,
    /// Pixels per latent cell along each axis.
    pub vae_scale_factor: usize,
    /// Channels of the latent space.
    pub latent_channels: usize,
    /// Tokens per prompt the text encoder sees (longer prompts are truncated).
    pub max_prompt_tokens: usize,
    /// The scheduler the folder ships with.
    pub default_scheduler: SchedulerKind,
    /// `epsilon` or `v_prediction`.
    pub prediction_type: String,
}

/// A Stable Diffusion 1.x/2.x pipeline loaded from a diffusers folder.
pub struct StableDiffusion {
    info: ModelInfo,
    tokenizer: ClipTokenizer,
    text_encoder: ClipTextModel,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    scheduler_config: SchedulerConfig,
    device: Device,
    dtype: DType,
}

impl StableDiffusion {
    /// Loads a diffusers-layout folder (`model_index.json`, `unet/`, `vae/`,
    /// `text_encoder/`, `tokenizer/`, `scheduler/`) onto `device` in float32.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".to_string());
        Self::load_named(dir, &name, device)
    }

    /// Like [`StableDiffusion::load`], with an explicit model id.
    pub fn load_named(dir: &Path, name: &str, device: &Device) -> Result<Self> {
        let dtype = DType::F32;
        let index = ModelIndex::from_dir(dir)?;
        index.require_pipeline(SUPPORTED_PIPELINES)?;
        index.require("unet", &["UNet2DConditionModel"])?;
        index.require("vae", &["AutoencoderKL"])?;
        index.require("text_encoder", &["CLIPTextModel"])?;
        index.require("tokenizer", &["CLIPTokenizer", "CLIPTokenizerFast"])?;
        let scheduler_class = index
            .components
            .get("scheduler")
            .map(|(_, class)| class.clone())
            .unwrap_or_default();

        let scheduler_path = dir.join("scheduler").join("scheduler_config.json");
        let scheduler_config = SchedulerConfig::from_file(&scheduler_path)?;
        let default_scheduler =
            SchedulerKind::from_class_name(&scheduler_class).ok_or_else(|| {
                Error::UnsupportedConfig {
                    path: index.path().to_path_buf(),
                    key: "scheduler".into(),
                    message: format!("scheduler class {scheduler_class} is not supported"),
                }
            })?;

        let tokenizer = ClipTokenizer::from_dir(&dir.join("tokenizer"))?;

        let text_dir = dir.join("text_encoder");
        let text_config = ClipTextConfig::from_file(&text_dir.join("config.json"))?;
        let text_weights = WeightFiles::find(&text_dir)?;
        let text_encoder =
            ClipTextModel::new(text_weights.var_builder(dtype, device)?, &text_config)
                .map_err(|e| text_weights.context(e))?;

        let unet_dir = dir.join("unet");
        let unet_config = UNet2DConditionConfig::from_file(unet_dir.join("config.json"))?;
        let unet_weights = WeightFiles::find(&unet_dir)?;
        let unet =
            UNet2DConditionModel::new(unet_weights.var_builder(dtype, device)?, &unet_config)
                .map_err(|e| unet_weights.context(e))?;

        let vae_dir = dir.join("vae");
        let vae_config = AutoencoderKLConfig::from_file(vae_dir.join("config.json"))?;
        let vae_weights = WeightFiles::find(&vae_dir)?;
        let vae = AutoencoderKL::new(vae_weights.var_builder(dtype, device)?, &vae_config)
            .map_err(|e| vae_weights.context(e))?;

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
        let vae_scale_factor = vae.downsampling_factor();
        // diffusers' pipelines derive the default size from the UNet's sample_size.
        let (native_h, native_w) = unet
            .config()
            .sample_size
            .map(|s| s.height_width())
            .unwrap_or((64, 64));
        let family = if text_config.hidden_act == HiddenAct::QuickGelu {
            "stable-diffusion-1"
        } else {
            "stable-diffusion-2"
        };
        let info = ModelInfo {
            name: name.to_string(),
            family: family.to_string(),
            native_width: native_w * vae_scale_factor,
            native_height: native_h * vae_scale_factor,
            vae_scale_factor,
            latent_channels: unet.config().in_channels,
            max_prompt_tokens: tokenizer.max_length().saturating_sub(2),
            default_scheduler,
            prediction_type: scheduler_config.prediction_type().to_string(),
        };
        tracing::info!(model = %info.name, family = %info.family, "loaded pipeline");
        Ok(Self {
            info,
            tokenizer,
            text_encoder,
            unet,
            vae,
            scheduler_config,
            device: device.clone(),
            dtype,
        })
    }

    /// What this model is and accepts.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The folder's scheduler configuration, shared by every scheduler kind.
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler_config
    }

    /// The tokenizer, e.g. to validate prompt length.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Encodes prompts into text embeddings `[P, T, D]`, one row per prompt.
    pub fn encode_prompts(&self, prompts: &[&str]) -> Result<Tensor> {
        let _span = tracing::debug_span!("encode_prompts", n = prompts.len()).entered();
        let mut ids = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            let row = self.tokenizer.encode(prompt)?;
            ids.push(Tensor::new(row.as_slice(), &self.device)?);
        }
        if ids.is_empty() {
            return Err(Error::InvalidArgument("no prompts to encode".into()));
        }
        let ids = Tensor::stack(&ids, 0)?;
        self.text_encoder.forward(&ids)
    }

    /// One UNet call over rows that may be at different timesteps:
    /// latents `[B, C, h, w]`, one timestep per row, context `[B, T, D]`.
    pub fn predict(&self, latents: &Tensor, timesteps: &[f32], context: &Tensor) -> Result<Tensor> {
        let _span = tracing::debug_span!("unet", rows = timesteps.len()).entered();
        let t = Tensor::new(timesteps, &self.device)?.to_dtype(self.dtype)?;
        self.unet.forward(latents, &t, context)
    }

    /// Decodes final latents `[n, C, h, w]` (as the sampler leaves them) into images.
    pub fn decode(&self, latents: &Tensor) -> Result<Vec<RgbImage>> {
        let _span = tracing::debug_span!("vae_decode", n = latents.dim(0)?).entered();
        let scaled = (latents / self.vae.config().scaling_factor)?;
        let images = self.vae.decode(&scaled)?;
        to_rgb8(&images)
    }

    /// Encodes images `[n, 3, H, W]` in [-1, 1] to the mean of their latent distribution,
    /// scaled as the sampler expects latents.
    pub fn encode_images(&self, images: &Tensor) -> Result<Tensor> {
        let dist = self.vae.encode(images)?;
        Ok((dist.mean * self.vae.config().scaling_factor)?)
    }

    /// Shape of the latents for an image of `width` x `height`.
    pub fn latent_shape(&self, n: usize, width: usize, height: usize) -> [usize; 4] {
        let f = self.info.vae_scale_factor;
        [n, self.info.latent_channels, height / f, width / f]
    }
}

/// Converts decoder output `[n, 3, H, W]` in [-1, 1] to 8-bit images the way diffusers'
/// image processor does: `(x / 2 + 0.5).clamp(0, 1)`, then `round(x * 255)`.
pub fn to_rgb8(images: &Tensor) -> Result<Vec<RgbImage>> {
    let (n, c, h, w) = images.dims4()?;
    if c != 3 {
        return Err(Error::InvalidArgument(format!(
            "expected 3 image channels, got {c}"
        )));
    }
    let unit = ((images.to_dtype(DType::F32)? / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
    // NHWC so each image's bytes are contiguous, row-major RGB.
    let nhwc = unit.permute((0, 2, 3, 1))?.contiguous()?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let values = nhwc.get(i)?.flatten_all()?.to_vec1::<f32>()?;
        let data = values.iter().map(|v| (v * 255.0).round() as u8).collect();
        out.push(RgbImage {
            width: w,
            height: h,
            data,
        });
    }
    Ok(out)
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let d = (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?.abs()?;
    Ok(d.flatten_all()?.max(D::Minus1)?.to_scalar::<f32>()?)
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<StableDiffusion>();
}
