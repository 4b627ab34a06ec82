//! The architecture of a CompVis checkpoint, from its tensor names and shapes.
//!
//! Shapes give channels, levels, layers, transformer depths, the context width, the
//! latent channels and the text encoder's sizes. What they cannot give follows the real
//! models: SD 1.x UNets have 8 heads per block, SD 2.x heads of 64 channels; CLIP text
//! encoders heads of 64 channels; group norms of 32 groups; SD 2's text encoder is the
//! file's OpenCLIP minus its last block. The native size is 512 pixels (768 for SD 2.x
//! but its inpainting model), as diffusers' default configs say.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::file::{weights_error, CheckpointFile};
use super::text_keys::{TextLayout, CLIP_PREFIX, OPEN_CLIP_PREFIX};
use super::{unet_keys, vae_keys};
use crate::diffusers_config::{PerBlock, SampleSize};
use crate::text::{ClipTextConfig, HiddenAct};
use crate::unet::UNet2DConditionConfig;
use crate::vae::AutoencoderKLConfig;
use crate::{Error, Result};

/// Channels per attention head of SD 2.x's UNet and of both CLIP text encoders.
const HEAD_CHANNELS: usize = 64;
/// Attention heads per block of SD 1.x's UNet.
const SD1_HEADS: usize = 8;

/// Which Stable Diffusion generation a checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdVersion {
    /// 1.x: OpenAI CLIP text encoder.
    V1,
    /// 2.x: OpenCLIP text encoder.
    V2,
}

/// What a checkpoint holds, as diffusers configurations.
#[derive(Debug, Clone)]
pub struct Detected {
    /// The generation, from the text encoder's layout.
    pub version: SdVersion,
    /// The text encoder's layout in the file.
    pub text_layout: TextLayout,
    /// Whether the UNet reads a mask and a masked image (`2 * latent + 1` inputs).
    pub inpainting: bool,
    /// The UNet's configuration.
    pub unet: UNet2DConditionConfig,
    /// The autoencoder's configuration.
    pub vae: AutoencoderKLConfig,
    /// The text encoder's configuration.
    pub text_encoder: ClipTextConfig,
}

/// The text encoder's layout in the file.
pub(crate) fn text_layout(shapes: &Shapes) -> Result<TextLayout> {
    let clip = ["text_model.", ""].iter().any(|root| {
        shapes.has(&format!(
            "{CLIP_PREFIX}{root}embeddings.token_embedding.weight"
        ))
    });
    if clip {
        return Ok(TextLayout::Clip);
    }
    if shapes.has(&format!("{OPEN_CLIP_PREFIX}token_embedding.weight")) {
        return Ok(TextLayout::OpenClip);
    }
    let message = if shapes
        .keys()
        .any(|k| k.starts_with("conditioner.embedders."))
    {
        "an SDXL checkpoint (conditioner.embedders.*): only Stable Diffusion 1.x and 2.x \
         single files are supported"
    } else {
        "no text encoder: expected cond_stage_model.transformer.* (SD 1.x CLIP) or \
         cond_stage_model.model.* (SD 2.x OpenCLIP)"
    };
    Err(shapes.error(message.into()))
}

/// Infers every component's configuration from the file.
pub(crate) fn detect(file: &CheckpointFile) -> Result<Detected> {
    detect_shapes(file.path(), file.shapes())
}

/// Infers every component's configuration from tensor names and shapes (`path` names
/// them in errors).
pub fn detect_shapes(path: &Path, shapes: &BTreeMap<String, Vec<usize>>) -> Result<Detected> {
    let shapes = Shapes { path, shapes };
    let text_layout = text_layout(&shapes)?;
    let version = match text_layout {
        TextLayout::Clip => SdVersion::V1,
        TextLayout::OpenClip => SdVersion::V2,
    };
    let text_encoder = shapes.text(text_layout)?;
    let mut unet = shapes.unet(version)?;
    let mut vae = shapes.vae()?;
    let inpainting = unet.in_channels == 2 * vae.latent_channels + 1;
    let image_size = match (version, inpainting) {
        (SdVersion::V2, false) => 768,
        _ => 512,
    };
    vae.sample_size = SampleSize::Square(image_size);
    let factor = 1 << vae.block_out_channels.len().saturating_sub(1);
    unet.sample_size = Some(SampleSize::Square(image_size / factor));
    // stabilityai/stable-diffusion-2-1's UNet upcasts attention (numerically moot here).
    unet.upcast_attention = version == SdVersion::V2 && !inpainting;
    let unsupported = |component: &str, e: Error| {
        shapes.error(format!(
            "the inferred {component} configuration is not supported ({e}); give the \
             model's diffusers configs with --model-config"
        ))
    };
    unet.plan().map_err(|e| unsupported("UNet", e))?;
    vae.check().map_err(|e| unsupported("VAE", e))?;
    Ok(Detected {
        version,
        text_layout,
        inpainting,
        unet,
        vae,
        text_encoder,
    })
}

/// A checkpoint's tensor shapes by name.
pub(crate) struct Shapes<'a> {
    path: &'a Path,
    shapes: &'a BTreeMap<String, Vec<usize>>,
}

impl<'a> Shapes<'a> {
    pub(crate) fn of(file: &'a CheckpointFile) -> Self {
        Self {
            path: file.path(),
            shapes: file.shapes(),
        }
    }

    fn keys(&self) -> impl Iterator<Item = &'a str> {
        self.shapes.keys().map(String::as_str)
    }

    fn dims(&self, key: &str) -> Result<&[usize]> {
        self.shapes.get(key).map(Vec::as_slice).ok_or_else(|| {
            self.error(format!(
                "cannot infer the architecture: the file has no `{key}`"
            ))
        })
    }

    /// Dimension `i` of tensor `key`.
    fn dim(&self, key: &str, i: usize) -> Result<usize> {
        let dims = self.dims(key)?;
        dims.get(i).copied().ok_or_else(|| {
            self.error(format!(
                "`{key}` has shape {dims:?}: expected at least {} dimensions",
                i + 1
            ))
        })
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.shapes.contains_key(key)
    }

    /// The numbers `i` of the keys `{prefix}{i}.*`.
    fn indices(&self, prefix: &str) -> BTreeSet<usize> {
        self.keys()
            .filter_map(|k| k.strip_prefix(prefix))
            .filter_map(|rest| rest.split('.').next()?.parse().ok())
            .collect()
    }

    /// How many consecutive blocks `{prefix}0.`, `{prefix}1.`, ... there are.
    fn count(&self, prefix: &str) -> Result<usize> {
        let found = self.indices(prefix);
        let n = found.len();
        if found.iter().copied().eq(0..n) {
            Ok(n)
        } else {
            Err(self.error(format!(
                "the blocks {prefix}* are not numbered 0..{n}: {found:?}"
            )))
        }
    }

    pub(crate) fn error(&self, message: String) -> Error {
        weights_error(self.path, message)
    }

    fn unet(&self, version: SdVersion) -> Result<UNet2DConditionConfig> {
        let p = unet_keys::PREFIX;
        let conv_in = format!("{p}input_blocks.0.0.weight");
        let (c0, in_channels) = (self.dim(&conv_in, 0)?, self.dim(&conv_in, 1)?);
        let conv_out = format!("{p}out.2.weight");
        // The resnet entries of each level, split at the downsamplers.
        let mut levels: Vec<Vec<usize>> = vec![Vec::new()];
        let last = self
            .indices(&format!("{p}input_blocks."))
            .last()
            .copied()
            .unwrap_or(0);
        for i in 1..=last {
            if self.has(&format!("{p}input_blocks.{i}.0.op.weight")) {
                levels.push(Vec::new());
            } else if let Some(level) = levels.last_mut() {
                level.push(i);
            }
        }
        if levels.iter().any(Vec::is_empty) {
            return Err(self.error(format!(
                "cannot infer the UNet's levels: a level without resnets in input_blocks \
                 (levels {levels:?})"
            )));
        }
        let n = levels.len();
        let first = |b: usize| levels[b][0];
        let mut channels = Vec::with_capacity(n);
        let mut depth = Vec::with_capacity(n);
        let mut down_types = Vec::with_capacity(n);
        let mut proj_in = None;
        for b in 0..n {
            let block = format!("{p}input_blocks.{}", first(b));
            channels.push(self.dim(&format!("{block}.0.out_layers.3.weight"), 0)?);
            let attention = format!("{block}.1.proj_in.weight");
            if self.has(&attention) {
                proj_in.get_or_insert(attention);
                depth.push(self.count(&format!("{block}.1.transformer_blocks."))?);
                down_types.push("CrossAttnDownBlock2D".to_string());
            } else {
                depth.push(1);
                down_types.push("DownBlock2D".to_string());
            }
        }
        let layers: Vec<usize> = levels.iter().map(Vec::len).collect();
        let mut up_types = Vec::with_capacity(n);
        let mut index = 0;
        for b in 0..n {
            let attends = self.has(&format!("{p}output_blocks.{index}.1.proj_in.weight"));
            up_types.push(
                if attends {
                    "CrossAttnUpBlock2D"
                } else {
                    "UpBlock2D"
                }
                .to_string(),
            );
            index += layers[n - 1 - b] + 1;
        }
        let mid_block_type = if self.has(&format!("{p}middle_block.1.proj_in.weight")) {
            Some("UNetMidBlock2DCrossAttn".to_string())
        } else if self
            .keys()
            .any(|k| k.starts_with(&format!("{p}middle_block.")))
        {
            return Err(
                self.error("a UNet mid block without cross-attention is not supported".into())
            );
        } else {
            None
        };
        let Some(proj_in) = proj_in else {
            return Err(self.error("the UNet has no cross-attention layers".into()));
        };
        let to_k = self
            .keys()
            .find(|k| k.starts_with(p) && k.ends_with(".attn2.to_k.weight"))
            .ok_or_else(|| self.error("the UNet has no cross-attention (attn2) layers".into()))?;
        let context_dim = self.dim(to_k, 1)?;
        let heads = match version {
            SdVersion::V1 => PerBlock::Same(SD1_HEADS),
            SdVersion::V2 => PerBlock::Each(
                channels
                    .iter()
                    .map(|&c| per_head(c, "UNet block channels").map_err(|m| self.error(m)))
                    .collect::<Result<_>>()?,
            ),
        };
        let time_embed = self.dim(&format!("{p}time_embed.0.weight"), 0)?;

        let mut cfg = UNet2DConditionConfig::default();
        cfg.in_channels = in_channels;
        cfg.out_channels = self.dim(&conv_out, 0)?;
        cfg.conv_in_kernel = self.dim(&conv_in, 2)?;
        cfg.conv_out_kernel = self.dim(&conv_out, 2)?;
        cfg.block_out_channels = channels;
        cfg.layers_per_block = same_or_each(layers);
        cfg.transformer_layers_per_block = same_or_each(depth);
        cfg.down_block_types = down_types;
        cfg.up_block_types = up_types;
        cfg.mid_block_type = mid_block_type;
        cfg.cross_attention_dim = PerBlock::Same(context_dim);
        cfg.attention_head_dim = heads;
        cfg.use_linear_projection = self.dims(&proj_in)?.len() == 2;
        cfg.time_embedding_dim = (time_embed != 4 * c0).then_some(time_embed);
        Ok(cfg)
    }

    fn vae(&self) -> Result<AutoencoderKLConfig> {
        let p = vae_keys::PREFIX;
        let conv_in = format!("{p}encoder.conv_in.weight");
        let n = self.count(&format!("{p}encoder.down."))?;
        let layers = self.count(&format!("{p}encoder.down.0.block."))?;
        let channels = (0..n)
            .map(|i| self.dim(&format!("{p}encoder.down.{i}.block.0.conv2.weight"), 0))
            .collect::<Result<Vec<_>>>()?;
        let mut cfg = AutoencoderKLConfig::default();
        cfg.in_channels = self.dim(&conv_in, 1)?;
        cfg.out_channels = self.dim(&format!("{p}decoder.conv_out.weight"), 0)?;
        cfg.latent_channels = self.dim(&format!("{p}decoder.conv_in.weight"), 1)?;
        cfg.down_block_types = vec!["DownEncoderBlock2D".into(); n];
        cfg.up_block_types = vec!["UpDecoderBlock2D".into(); n];
        cfg.block_out_channels = channels;
        cfg.layers_per_block = layers;
        cfg.use_quant_conv = self.has(&format!("{p}quant_conv.weight"));
        cfg.use_post_quant_conv = self.has(&format!("{p}post_quant_conv.weight"));
        cfg.mid_block_add_attention = self.has(&format!("{p}encoder.mid.attn_1.q.weight"));
        Ok(cfg)
    }

    fn text(&self, layout: TextLayout) -> Result<ClipTextConfig> {
        let (embedding, positions, layers, fc1, hidden_act) = match layout {
            TextLayout::Clip => {
                let root = if self.has(&format!(
                    "{CLIP_PREFIX}text_model.embeddings.token_embedding.weight"
                )) {
                    format!("{CLIP_PREFIX}text_model.")
                } else {
                    CLIP_PREFIX.to_string()
                };
                (
                    format!("{root}embeddings.token_embedding.weight"),
                    format!("{root}embeddings.position_embedding.weight"),
                    self.count(&format!("{root}encoder.layers."))?,
                    format!("{root}encoder.layers.0.mlp.fc1.weight"),
                    HiddenAct::QuickGelu,
                )
            }
            TextLayout::OpenClip => {
                let p = OPEN_CLIP_PREFIX;
                let blocks = self.count(&format!("{p}transformer.resblocks."))?;
                if blocks < 2 {
                    return Err(self.error(format!(
                        "{blocks} OpenCLIP block(s): SD 2 uses the penultimate one's output"
                    )));
                }
                (
                    format!("{p}token_embedding.weight"),
                    format!("{p}positional_embedding"),
                    blocks - 1,
                    format!("{p}transformer.resblocks.0.mlp.c_fc.weight"),
                    HiddenAct::Gelu,
                )
            }
        };
        let hidden = self.dim(&embedding, 1)?;
        let cfg = ClipTextConfig {
            vocab_size: self.dim(&embedding, 0)?,
            hidden_size: hidden,
            intermediate_size: self.dim(&fc1, 0)?,
            num_hidden_layers: layers,
            num_attention_heads: per_head(hidden, "text encoder width")
                .map_err(|m| self.error(m))?,
            max_position_embeddings: self.dim(&positions, 0)?,
            hidden_act,
            layer_norm_eps: 1e-5,
        };
        cfg.validate()
            .map_err(|(key, message)| self.error(format!("text encoder `{key}`: {message}")))?;
        Ok(cfg)
    }
}

/// Heads of 64 channels in `channels`.
fn per_head(channels: usize, what: &str) -> std::result::Result<usize, String> {
    if channels >= HEAD_CHANNELS && channels.is_multiple_of(HEAD_CHANNELS) {
        Ok(channels / HEAD_CHANNELS)
    } else {
        Err(format!(
            "cannot infer attention heads: {what} {channels} is not a multiple of \
             {HEAD_CHANNELS}; give the model's diffusers configs with --model-config"
        ))
    }
}

fn same_or_each(values: Vec<usize>) -> PerBlock<usize> {
    match values.split_first() {
        Some((first, rest)) if rest.iter().all(|v| v == first) => PerBlock::Same(*first),
        _ => PerBlock::Each(values),
    }
}
