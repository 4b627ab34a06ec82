//! The demo model's architecture: sizes, and the diffusers / transformers
//! `config.json` of each component built from them.
//!
//! The JSON written here is what the training code deserialises to build the
//! models, so the saved folder describes exactly the networks that were trained.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Sizes of the three networks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Architecture {
    /// Autoencoder channels per resolution; `n` entries give a downsampling factor `2^(n-1)`.
    pub vae_channels: Vec<usize>,
    /// Resnets per autoencoder encoder block (decoder blocks have one more).
    pub vae_layers_per_block: usize,
    /// Group-norm groups of the autoencoder.
    pub vae_norm_groups: usize,
    /// Channels of the latent space.
    pub latent_channels: usize,
    /// UNet channels per resolution.
    pub unet_channels: Vec<usize>,
    /// Whether each UNet resolution (highest first) has cross-attention transformers.
    pub unet_attention: Vec<bool>,
    /// Resnets per UNet down block (up blocks have one more).
    pub unet_layers_per_block: usize,
    /// Attention heads of the UNet's transformers.
    pub unet_heads: usize,
    /// Group-norm groups of the UNet.
    pub unet_norm_groups: usize,
    /// Kernel side of the UNet's output convolution (odd). With zero padding, a
    /// kernel of at least `2 * latent_side - 1` reads a different part of its
    /// weights at every output position, so a feature that is the same
    /// everywhere (as the caption's is when the input is pure noise) can be
    /// drawn at a position of its own.
    pub unet_conv_out_kernel: usize,
    /// Width of the text encoder (and the UNet's cross-attention context).
    pub text_hidden: usize,
    /// Transformer layers of the text encoder.
    pub text_layers: usize,
    /// Attention heads of the text encoder.
    pub text_heads: usize,
    /// Width of the text encoder's MLPs.
    pub text_intermediate: usize,
    /// Tokens per prompt, bos and eos included (the tokenizer's `model_max_length`).
    pub max_length: usize,
}

impl Default for Architecture {
    fn default() -> Self {
        Self {
            vae_channels: vec![16, 32, 64],
            vae_layers_per_block: 1,
            vae_norm_groups: 4,
            latent_channels: 8,
            unet_channels: vec![48, 96],
            unet_attention: vec![false, true],
            unet_layers_per_block: 1,
            unet_heads: 2,
            unet_norm_groups: 8,
            unet_conv_out_kernel: 3,
            text_hidden: 128,
            text_layers: 2,
            text_heads: 4,
            text_intermediate: 512,
            max_length: 32,
        }
    }
}

impl Architecture {
    /// A very small model for smoke tests.
    pub fn tiny() -> Self {
        Self {
            vae_channels: vec![8, 16, 16],
            vae_layers_per_block: 1,
            vae_norm_groups: 2,
            latent_channels: 4,
            unet_channels: vec![16, 32],
            unet_attention: vec![true, false],
            unet_layers_per_block: 1,
            unet_heads: 2,
            unet_norm_groups: 4,
            unet_conv_out_kernel: 3,
            text_hidden: 16,
            text_layers: 1,
            text_heads: 2,
            text_intermediate: 32,
            max_length: 24,
        }
    }

    /// The autoencoder's spatial downsampling factor.
    pub fn downsampling_factor(&self) -> usize {
        1 << self.vae_channels.len().saturating_sub(1)
    }

    /// `vae/config.json` for images of `image_size` pixels.
    pub fn vae_config(&self, image_size: usize, scaling_factor: f64) -> Value {
        let blocks = self.vae_channels.len();
        json!({
            "_class_name": "AutoencoderKL",
            "_diffusers_version": "0.30.0",
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": vec!["DownEncoderBlock2D"; blocks],
            "up_block_types": vec!["UpDecoderBlock2D"; blocks],
            "block_out_channels": self.vae_channels,
            "layers_per_block": self.vae_layers_per_block,
            "act_fn": "silu",
            "latent_channels": self.latent_channels,
            "norm_num_groups": self.vae_norm_groups,
            "sample_size": image_size,
            "scaling_factor": scaling_factor,
            "force_upcast": false,
            "use_quant_conv": true,
            "use_post_quant_conv": true,
            "mid_block_add_attention": true,
        })
    }

    /// `unet/config.json` for latents of `latent_size` pixels.
    pub fn unet_config(&self, latent_size: usize) -> Value {
        let down: Vec<&str> = self
            .unet_attention
            .iter()
            .map(|&a| {
                if a {
                    "CrossAttnDownBlock2D"
                } else {
                    "DownBlock2D"
                }
            })
            .collect();
        let up: Vec<&str> = self
            .unet_attention
            .iter()
            .rev()
            .map(|&a| if a { "CrossAttnUpBlock2D" } else { "UpBlock2D" })
            .collect();
        json!({
            "_class_name": "UNet2DConditionModel",
            "_diffusers_version": "0.30.0",
            "sample_size": latent_size,
            "in_channels": self.latent_channels,
            "out_channels": self.latent_channels,
            "center_input_sample": false,
            "flip_sin_to_cos": true,
            "freq_shift": 0,
            "down_block_types": down,
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "up_block_types": up,
            "only_cross_attention": false,
            "block_out_channels": self.unet_channels,
            "layers_per_block": self.unet_layers_per_block,
            "downsample_padding": 1,
            "mid_block_scale_factor": 1,
            "act_fn": "silu",
            "norm_num_groups": self.unet_norm_groups,
            "norm_eps": 1e-5,
            "cross_attention_dim": self.text_hidden,
            "attention_head_dim": self.unet_heads,
            "use_linear_projection": true,
            "upcast_attention": false,
            "conv_in_kernel": 3,
            "conv_out_kernel": self.unet_conv_out_kernel,
        })
    }

    /// `text_encoder/config.json` (transformers `CLIPTextConfig`) for a vocabulary
    /// of `vocab_size` tokens whose last two are bos and eos.
    pub fn text_config(&self, vocab_size: usize) -> Value {
        let bos = vocab_size.saturating_sub(2);
        let eos = vocab_size.saturating_sub(1);
        json!({
            "architectures": ["CLIPTextModel"],
            "model_type": "clip_text_model",
            "vocab_size": vocab_size,
            "hidden_size": self.text_hidden,
            "intermediate_size": self.text_intermediate,
            "projection_dim": self.text_hidden,
            "num_hidden_layers": self.text_layers,
            "num_attention_heads": self.text_heads,
            "max_position_embeddings": self.max_length,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "attention_dropout": 0.0,
            "dropout": 0.0,
            "initializer_range": 0.02,
            "initializer_factor": 1.0,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": eos,
            "torch_dtype": "float32",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latentd_models::UNet2DConditionConfig;

    #[test]
    fn unet_config_carries_the_output_kernel() {
        let arch = Architecture {
            unet_conv_out_kernel: 15,
            ..Architecture::default()
        };
        let config: UNet2DConditionConfig = crate::vae_stage::parse(arch.unet_config(8)).unwrap();
        assert_eq!(config.conv_out_kernel, 15);
        assert_eq!(config.conv_in_kernel, 3);
        let default: UNet2DConditionConfig =
            crate::vae_stage::parse(Architecture::default().unet_config(8)).unwrap();
        assert_eq!(default.conv_out_kernel, 3);
    }
}
