//! `VQModelConfig`: diffusers' `vqvae/config.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::coder::CoderConfig;
use crate::diffusers_config::{origin_or_default, read_json, SampleSize};
use crate::{Error, Result};

/// The configuration of a `VQModel`, as diffusers writes it.
///
/// Missing keys take diffusers' defaults; unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VQModelConfig {
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
    /// Channels the encoder outputs and the decoder takes.
    pub latent_channels: usize,
    /// Native image size.
    pub sample_size: SampleSize,
    /// Entries of the codebook.
    pub num_vq_embeddings: usize,
    /// Groups of every group norm.
    pub norm_num_groups: usize,
    /// Width of the codebook entries (the latents the UNet sees); `latent_channels` when unset.
    pub vq_embed_dim: Option<usize>,
    /// Latents are multiplied by this before the UNet sees them (the LDM pipelines
    /// of diffusers do not apply it).
    pub scaling_factor: f64,
    /// Decoder normalisation: `group` (`spatial` is not supported).
    pub norm_type: String,
    /// Whether the mid blocks have self-attention.
    pub mid_block_add_attention: bool,
    /// Whether unquantized decoding reads its input as codebook indices
    /// (see `VQModel::decode_indices`).
    pub lookup_from_codebook: bool,
    /// Whether the autoencoder stays in `f32` when the rest of the pipeline runs in a
    /// half dtype (see `pipeline::Precision::autoencoder_dtype`).
    pub force_upcast: bool,
    /// Where the configuration was read from, for error messages.
    #[serde(skip)]
    origin: Option<PathBuf>,
}

impl Default for VQModelConfig {
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
            latent_channels: 3,
            sample_size: SampleSize::Square(32),
            num_vq_embeddings: 256,
            norm_num_groups: 32,
            vq_embed_dim: None,
            scaling_factor: 0.18215,
            norm_type: "group".into(),
            mid_block_add_attention: true,
            lookup_from_codebook: false,
            force_upcast: false,
            origin: None,
        }
    }
}

impl VQModelConfig {
    /// Reads `vqvae/config.json` and checks that it is supported.
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

    /// Width of the codebook entries: `vq_embed_dim`, or `latent_channels` when unset.
    pub fn embed_dim(&self) -> usize {
        self.vq_embed_dim.unwrap_or(self.latent_channels)
    }

    fn unsupported(&self, key: &str, message: impl Into<String>) -> Error {
        Error::UnsupportedConfig {
            path: origin_or_default(&self.origin, "<vqvae config>"),
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
        if self.norm_type != "group" {
            return Err(self.unsupported(
                "norm_type",
                format!("{:?} (supported: group)", self.norm_type),
            ));
        }
        for (key, c) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("num_vq_embeddings", self.num_vq_embeddings),
            ("vq_embed_dim", self.embed_dim()),
        ] {
            if c == 0 {
                return Err(self.unsupported(key, "must be positive"));
            }
        }
        if u32::try_from(self.num_vq_embeddings).is_err() {
            return Err(self.unsupported("num_vq_embeddings", "must be below 2^32"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_diffusers_defaults() {
        let cfg: VQModelConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg, VQModelConfig::default());
        assert_eq!(cfg.latent_channels, 3);
        assert_eq!(cfg.embed_dim(), 3);
        assert_eq!(cfg.num_vq_embeddings, 256);
        assert_eq!(cfg.scaling_factor, 0.18215);
        assert!(!cfg.force_upcast && !cfg.lookup_from_codebook);
        assert_eq!(cfg.downsampling_factor(), 1);
        cfg.check().unwrap();
    }

    #[test]
    fn reads_diffusers_keys() {
        let cfg: VQModelConfig = serde_json::from_str(
            r#"{"_class_name": "VQModel", "block_out_channels": [128, 256, 512],
                "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
                "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
                "latent_channels": 3, "num_vq_embeddings": 8192, "vq_embed_dim": 4,
                "sample_size": 256, "lookup_from_codebook": true, "scaling_factor": 1.0}"#,
        )
        .unwrap();
        cfg.check().unwrap();
        assert_eq!(cfg.embed_dim(), 4);
        assert_eq!(cfg.downsampling_factor(), 4);
        assert!(cfg.lookup_from_codebook);
    }

    #[test]
    fn unsupported_values_are_errors() {
        let cases = [
            (r#"{"norm_type": "spatial"}"#, "norm_type"),
            (r#"{"act_fn": "gelu"}"#, "act_fn"),
            (
                r#"{"down_block_types": ["AttnDownEncoderBlock2D"]}"#,
                "down_block_types",
            ),
            (r#"{"block_out_channels": [64, 64]}"#, "down_block_types"),
            (r#"{"norm_num_groups": 48}"#, "norm_num_groups"),
            (r#"{"num_vq_embeddings": 0}"#, "num_vq_embeddings"),
            (r#"{"vq_embed_dim": 0}"#, "vq_embed_dim"),
            (r#"{"layers_per_block": 0}"#, "layers_per_block"),
        ];
        for (json, want) in cases {
            let cfg: VQModelConfig = serde_json::from_str(json).unwrap();
            match cfg.check() {
                Err(Error::UnsupportedConfig { key, .. }) => assert_eq!(key, want, "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
    }
}
