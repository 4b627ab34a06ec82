//! `AutoencoderKLConfig`: diffusers' `vae/config.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    /// Ignored: this implementation computes in the weights' dtype.
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
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    fn unsupported(&self, key: &str, message: impl Into<String>) -> Error {
        Error::UnsupportedConfig {
            path: origin_or_default(&self.origin, "<vae config>"),
            key: key.into(),
            message: message.into(),
        }
    }

    /// Checks that every value is supported.
    pub(crate) fn check(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 || self.block_out_channels.contains(&0) {
            return Err(self.unsupported(
                "block_out_channels",
                format!(
                    "{:?} (need at least one positive entry)",
                    self.block_out_channels
                ),
            ));
        }
        for (key, types, expected) in [
            (
                "down_block_types",
                &self.down_block_types,
                "DownEncoderBlock2D",
            ),
            ("up_block_types", &self.up_block_types, "UpDecoderBlock2D"),
        ] {
            if types.len() != n {
                return Err(self.unsupported(
                    key,
                    format!("{} entries for {n} block_out_channels", types.len()),
                ));
            }
            if let Some(other) = types.iter().find(|t| t.as_str() != expected) {
                return Err(self.unsupported(key, format!("{other:?} (supported: {expected})")));
            }
        }
        if !["silu", "swish"].contains(&self.act_fn.as_str()) {
            return Err(self.unsupported("act_fn", format!("{:?} (supported: silu)", self.act_fn)));
        }
        let groups = self.norm_num_groups;
        if groups == 0 || self.block_out_channels.iter().any(|c| c % groups != 0) {
            return Err(self.unsupported(
                "norm_num_groups",
                format!(
                    "{groups} must divide every entry of {:?}",
                    self.block_out_channels
                ),
            ));
        }
        for (key, c) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("layers_per_block", self.layers_per_block),
        ] {
            if c == 0 {
                return Err(self.unsupported(key, "must be positive"));
            }
        }
        Ok(())
    }
}
