//! `UNet2DConditionConfig`: diffusers' `unet/config.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::blocks::{AttnPlan, BlockPlan, CrossAttnPlan, UNetPlan};
use crate::diffusers_config::{origin_or_default, read_json, PerBlock, SampleSize};
use crate::{Error, Result};

/// The configuration of a `UNet2DConditionModel`, as diffusers writes it.
///
/// Missing keys take diffusers' defaults; unknown keys are ignored. Values this
/// implementation does not support are reported by [`UNet2DConditionConfig::plan`]
/// (called by [`UNet2DConditionConfig::from_file`] and by the model constructor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UNet2DConditionConfig {
    /// Native latent size, `None` when unset.
    pub sample_size: Option<SampleSize>,
    /// Channels of the input latents (4; 9 for inpainting).
    pub in_channels: usize,
    /// Channels of the prediction.
    pub out_channels: usize,
    /// Whether inputs are mapped with `2x - 1` first.
    pub center_input_sample: bool,
    /// Order `[cos, sin]` instead of `[sin, cos]` in the timestep embedding.
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift` of the timestep embedding.
    pub freq_shift: f64,
    /// `CrossAttnDownBlock2D` or `DownBlock2D`, one per resolution.
    pub down_block_types: Vec<String>,
    /// `UNetMidBlock2DCrossAttn`, or `None` for no mid block.
    pub mid_block_type: Option<String>,
    /// `CrossAttnUpBlock2D` or `UpBlock2D`, one per resolution, deepest first.
    pub up_block_types: Vec<String>,
    /// Must be `false` (for every block).
    pub only_cross_attention: PerBlock<bool>,
    /// Channels of each resolution.
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (up blocks have one more).
    pub layers_per_block: PerBlock<usize>,
    /// Padding of the downsampling convolutions.
    pub downsample_padding: usize,
    /// Output scale of the mid block's resnets.
    pub mid_block_scale_factor: f64,
    /// Dropout (unused at inference).
    pub dropout: f64,
    /// Activation: `silu` (or its alias `swish`).
    pub act_fn: String,
    /// Groups of every group norm; `None` is not supported.
    pub norm_num_groups: Option<usize>,
    /// Epsilon of the resnets' and the output's group norms.
    pub norm_eps: f64,
    /// Width of the text context.
    pub cross_attention_dim: PerBlock<usize>,
    /// Transformer blocks in each `Transformer2DModel`.
    pub transformer_layers_per_block: PerBlock<usize>,
    /// Must be `None`.
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    /// Despite its name, the number of attention heads when `num_attention_heads`
    /// is unset (a diffusers naming quirk kept for compatibility).
    pub attention_head_dim: PerBlock<usize>,
    /// Number of attention heads; when unset `attention_head_dim` is used.
    pub num_attention_heads: Option<PerBlock<usize>>,
    /// Must be `false`.
    pub dual_cross_attention: bool,
    /// `proj_in` / `proj_out` of the transformers are `Linear` layers.
    pub use_linear_projection: bool,
    /// Must be `None`.
    pub class_embed_type: Option<String>,
    /// Must be `None`.
    pub num_class_embeds: Option<usize>,
    /// Must be `None`.
    pub addition_embed_type: Option<String>,
    /// Compute attention scores in `f32` (always done here).
    pub upcast_attention: bool,
    /// Must be `default`.
    pub resnet_time_scale_shift: String,
    /// Must be `positional`.
    pub time_embedding_type: String,
    /// Width of the time embedding; `4 * block_out_channels[0]` when unset.
    pub time_embedding_dim: Option<usize>,
    /// Must be `None`.
    pub time_embedding_act_fn: Option<String>,
    /// Must be `None`.
    pub timestep_post_act: Option<String>,
    /// Must be `None`.
    pub time_cond_proj_dim: Option<usize>,
    /// Must be `None`.
    pub encoder_hid_dim: Option<usize>,
    /// Must be `None`.
    pub encoder_hid_dim_type: Option<String>,
    /// Kernel of `conv_in` (odd).
    pub conv_in_kernel: usize,
    /// Kernel of `conv_out` (odd).
    pub conv_out_kernel: usize,
    /// Must be `default`.
    pub attention_type: String,
    /// Must be `None`.
    pub cross_attention_norm: Option<String>,
    /// Where the configuration was read from, for error messages.
    #[serde(skip)]
    origin: Option<PathBuf>,
}

impl Default for UNet2DConditionConfig {
    /// diffusers' defaults (those of SD 1.x apart from `cross_attention_dim` 1280).
    fn default() -> Self {
        let strings = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect();
        Self {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: strings(&[
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            up_block_types: strings(&[
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ]),
            only_cross_attention: PerBlock::Same(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::Same(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            dropout: 0.0,
            act_fn: "silu".into(),
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::Same(1280),
            transformer_layers_per_block: PerBlock::Same(1),
            reverse_transformer_layers_per_block: None,
            attention_head_dim: PerBlock::Same(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            class_embed_type: None,
            num_class_embeds: None,
            addition_embed_type: None,
            upcast_attention: false,
            resnet_time_scale_shift: "default".into(),
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            time_embedding_act_fn: None,
            timestep_post_act: None,
            time_cond_proj_dim: None,
            encoder_hid_dim: None,
            encoder_hid_dim_type: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            attention_type: "default".into(),
            cross_attention_norm: None,
            origin: None,
        }
    }
}

impl UNet2DConditionConfig {
    /// Reads `unet/config.json` and checks that it is supported.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut cfg: Self = read_json(path)?;
        cfg.origin = Some(path.to_path_buf());
        cfg.plan()?;
        Ok(cfg)
    }

    /// The `cross_attention_dim` of every block (they must agree, as one context
    /// is given to all of them).
    pub fn context_dim(&self) -> Result<usize> {
        let n = self.block_out_channels.len();
        let dims = self.per_block(&self.cross_attention_dim, n, "cross_attention_dim")?;
        match dims.split_first() {
            Some((first, rest)) if rest.iter().all(|d| d == first) => Ok(*first),
            _ => Err(self.unsupported(
                "cross_attention_dim",
                format!("{dims:?}: blocks with different context widths are not supported"),
            )),
        }
    }

    fn unsupported(&self, key: &str, message: impl Into<String>) -> Error {
        Error::UnsupportedConfig {
            path: origin_or_default(&self.origin, "<unet config>"),
            key: key.into(),
            message: message.into(),
        }
    }

    fn per_block<T: Clone + std::fmt::Debug>(
        &self,
        value: &PerBlock<T>,
        n: usize,
        key: &str,
    ) -> Result<Vec<T>> {
        value.expand(n).ok_or_else(|| {
            self.unsupported(
                key,
                format!("{value:?} does not have one value per block ({n})"),
            )
        })
    }

    fn require_none<T: std::fmt::Debug>(&self, value: &Option<T>, key: &str) -> Result<()> {
        match value {
            None => Ok(()),
            Some(v) => Err(self.unsupported(key, format!("{v:?} (only null is supported)"))),
        }
    }

    fn require_eq(&self, value: &str, expected: &[&str], key: &str) -> Result<()> {
        if expected.contains(&value) {
            Ok(())
        } else {
            Err(self.unsupported(key, format!("{value:?} (supported: {expected:?})")))
        }
    }

    /// Checks the configuration and resolves the per-block settings.
    pub(crate) fn plan(&self) -> Result<UNetPlan> {
        self.check_scalars()?;
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(self.unsupported("block_out_channels", "must not be empty"));
        }
        if self.block_out_channels.contains(&0) {
            return Err(self.unsupported("block_out_channels", "channels must be positive"));
        }
        for (key, len) in [
            ("down_block_types", self.down_block_types.len()),
            ("up_block_types", self.up_block_types.len()),
        ] {
            if len != n {
                return Err(
                    self.unsupported(key, format!("{len} entries for {n} block_out_channels"))
                );
            }
        }
        let groups = self
            .norm_num_groups
            .ok_or_else(|| self.unsupported("norm_num_groups", "null is not supported"))?;
        if groups == 0 {
            return Err(self.unsupported("norm_num_groups", "must be positive"));
        }
        for &c in &self.block_out_channels {
            if c % groups != 0 {
                return Err(self.unsupported(
                    "norm_num_groups",
                    format!("{groups} does not divide the block channels {c}"),
                ));
            }
        }
        if self
            .per_block(&self.only_cross_attention, n, "only_cross_attention")?
            .contains(&true)
        {
            return Err(self.unsupported("only_cross_attention", "only false is supported"));
        }
        let layers = self.per_block(&self.layers_per_block, n, "layers_per_block")?;
        let transformer_layers = self.per_block(
            &self.transformer_layers_per_block,
            n,
            "transformer_layers_per_block",
        )?;
        let (heads_key, heads) = match &self.num_attention_heads {
            Some(h) => (
                "num_attention_heads",
                self.per_block(h, n, "num_attention_heads")?,
            ),
            None => (
                "attention_head_dim",
                self.per_block(&self.attention_head_dim, n, "attention_head_dim")?,
            ),
        };
        let context_dim = self.context_dim()?;
        let cross_attn = |i: usize| -> Result<CrossAttnPlan> {
            let (c, h) = (self.block_out_channels[i], heads[i]);
            if h == 0 || c % h != 0 {
                return Err(self.unsupported(
                    heads_key,
                    format!("{h} heads do not divide the block channels {c}"),
                ));
            }
            Ok(CrossAttnPlan {
                heads: h,
                layers: transformer_layers[i],
                context_dim,
            })
        };

        let mut down = Vec::with_capacity(n);
        for (i, kind) in self.down_block_types.iter().enumerate() {
            let attention = match kind.as_str() {
                "CrossAttnDownBlock2D" => AttnPlan::Cross(cross_attn(i)?),
                "DownBlock2D" => AttnPlan::None,
                _ => {
                    return Err(self.unsupported(
                        "down_block_types",
                        format!("{kind:?} (supported: CrossAttnDownBlock2D, DownBlock2D)"),
                    ))
                }
            };
            down.push(BlockPlan {
                layers: layers[i],
                attention,
            });
        }
        let mid = match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") => Some(AttnPlan::Cross(cross_attn(n - 1)?)),
            None => None,
            Some(other) => {
                return Err(self.unsupported(
                    "mid_block_type",
                    format!("{other:?} (supported: UNetMidBlock2DCrossAttn, null)"),
                ))
            }
        };
        let mut up = Vec::with_capacity(n);
        for (i, kind) in self.up_block_types.iter().enumerate() {
            let level = n - 1 - i;
            let attention = match kind.as_str() {
                "CrossAttnUpBlock2D" => AttnPlan::Cross(cross_attn(level)?),
                "UpBlock2D" => AttnPlan::None,
                _ => {
                    return Err(self.unsupported(
                        "up_block_types",
                        format!("{kind:?} (supported: CrossAttnUpBlock2D, UpBlock2D)"),
                    ))
                }
            };
            up.push(BlockPlan {
                layers: layers[level] + 1,
                attention,
            });
        }
        Ok(UNetPlan {
            groups,
            time_embed_dim: self
                .time_embedding_dim
                .unwrap_or(4 * self.block_out_channels[0]),
            down,
            mid,
            up,
        })
    }

    /// Checks the settings that are not per block.
    fn check_scalars(&self) -> Result<()> {
        self.require_eq(&self.act_fn, &["silu", "swish"], "act_fn")?;
        self.require_eq(
            &self.resnet_time_scale_shift,
            &["default"],
            "resnet_time_scale_shift",
        )?;
        self.require_eq(
            &self.time_embedding_type,
            &["positional"],
            "time_embedding_type",
        )?;
        self.require_eq(&self.attention_type, &["default"], "attention_type")?;
        self.require_none(&self.class_embed_type, "class_embed_type")?;
        self.require_none(&self.num_class_embeds, "num_class_embeds")?;
        self.require_none(&self.addition_embed_type, "addition_embed_type")?;
        self.require_none(&self.time_embedding_act_fn, "time_embedding_act_fn")?;
        self.require_none(&self.timestep_post_act, "timestep_post_act")?;
        self.require_none(&self.time_cond_proj_dim, "time_cond_proj_dim")?;
        self.require_none(&self.encoder_hid_dim, "encoder_hid_dim")?;
        self.require_none(&self.encoder_hid_dim_type, "encoder_hid_dim_type")?;
        self.require_none(&self.cross_attention_norm, "cross_attention_norm")?;
        self.require_none(
            &self.reverse_transformer_layers_per_block,
            "reverse_transformer_layers_per_block",
        )?;
        if self.dual_cross_attention {
            return Err(self.unsupported("dual_cross_attention", "only false is supported"));
        }
        for (key, k) in [
            ("conv_in_kernel", self.conv_in_kernel),
            ("conv_out_kernel", self.conv_out_kernel),
        ] {
            if k % 2 == 0 {
                return Err(self.unsupported(key, format!("{k} (must be odd)")));
            }
        }
        for (key, c) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
        ] {
            if c == 0 {
                return Err(self.unsupported(key, "must be positive"));
            }
        }
        Ok(())
    }
}
