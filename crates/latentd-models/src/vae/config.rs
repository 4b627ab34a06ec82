//! `AutoencoderKLConfig`: diffusers' `vae/config.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::coder::CoderConfig;
use crate::diffusers_config::{origin_or_default, read_json, SampleSize};
use crate::{Error, Result};

/// The configuration of an `AutoencoderKL`, as diffusers writes it.
///
/// Missing keys take diffusers' defaults; unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutoencoderKLConfig {
    /// Image channels in.
    pub in_channels: usize,
    /// Image channels out.
    pub out_channels: usize,
    /// `DownEncoderBlock2D`, one per resolution.
    pub down_block_types: Vec<String>,
    /// `UpDecoderBlock2D`, one per resolution.
    pub up_block_types: Vec<String>,
    /// Channels of each resolution.
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block (decoder blocks have one more).
    pub layers_per_block: usize,
    /// Activation: `silu` (or its alias `swish`).
    pub act_fn: String,
    /// Channels of the latent space.
    pub latent_channels: usize,
    /// Groups of every group norm.
    pub norm_num_groups: usize,
    /// Native image size.
    pub sample_size: SampleSize,
    /// Latents are multiplied by this before the UNet sees them.
    pub scaling_factor: f64,
    /// Subtracted from latents before scaling (SD 3 / Flux), if set.
    pub shift_factor: Option<f64>,
    /// Per-channel latent mean (SDXL-style VAEs), if set.
    pub latents_mean: Option<Vec<f64>>,
    /// Per-channel latent std (SDXL-style VAEs), if set.
    pub latents_std: Option<Vec<f64>>,
    /// Whether the autoencoder stays in `f32` when the rest of the pipeline runs in a
    /// half dtype (see `pipeline::Precision::autoencoder_dtype`).
    pub force_upcast: bool,
    /// Whether `quant_conv` exists.
    pub use_quant_conv: bool,
    /// Whether `post_quant_conv` exists.
    pub use_post_quant_conv: bool,
    /// Whether the mid blocks have self-attention.
    pub mid_block_add_attention: bool,
    /// Where the configuration was read from, for error messages.
    #[serde(skip)]
    origin: Option<PathBuf>,
}

impl Default for AutoencoderKLConfig {
    /// diffusers' defaults.
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: SampleSize::Square(32),
            scaling_factor: 0.18215,
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
            origin: None,
        }
    }
}

impl AutoencoderKLConfig {
    /// Reads `vae/config.json` and checks that it is supported.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut cfg: Self = read_json(path)?;
        cfg.origin = Some(path.to_path_buf());
        cfg.check()?;
        Ok(cfg)
    }

    /// Total spatial downsampling of the encoder: `2^(levels - 1)`.
    pub fn downsampling_factor(&self) -> usize {
        self.coder().downsampling_factor()
    }

    fn unsupported(&self, key: &str, message: impl Into<String>) -> Error {
        Error::UnsupportedConfig {
            path: origin_or_default(&self.origin, "<vae config>"),
            key: key.into(),
            message: message.into(),
        }
    }

    /// The encoder's and decoder's settings.
    pub(crate) fn coder(&self) -> CoderConfig<'_> {
        CoderConfig {
            down_block_types: &self.down_block_types,
            up_block_types: &self.up_block_types,
            block_out_channels: &self.block_out_channels,
            layers_per_block: self.layers_per_block,
            act_fn: &self.act_fn,
            norm_num_groups: self.norm_num_groups,
            mid_block_add_attention: self.mid_block_add_attention,
        }
    }

    /// Checks that every value is supported.
    pub(crate) fn check(&self) -> Result<()> {
        self.coder()
            .check(|key, message| self.unsupported(key, message))?;
        for (key, c) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
        ] {
            if c == 0 {
                return Err(self.unsupported(key, "must be positive"));
            }
        }
        Ok(())
    }
}
