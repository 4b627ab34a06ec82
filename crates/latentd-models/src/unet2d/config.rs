//! `UNet2DConfig`: diffusers' `unet/config.json` of a `UNet2DModel`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::diffusers_config::{origin_or_default, read_json, SampleSize};
use crate::unet::blocks::{AttnPlan, BlockPlan, SpatialAttnPlan, UNetPlan};
use crate::{Error, Result};

/// The configuration of a `UNet2DModel` (the unconditional denoiser of the
/// CompVis LDMs, DDPM and the like), as diffusers writes it.
///
/// Missing keys take diffusers' defaults; unknown keys are ignored. Values this
/// implementation does not support are errors of [`UNet2DConfig::from_file`]
/// and of the model constructor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UNet2DConfig {
    /// Native sample size, `None` when unset.
    pub sample_size: Option<SampleSize>,
    /// Channels of the input sample.
    pub in_channels: usize,
    /// Channels of the prediction.
    pub out_channels: usize,
    /// Whether inputs are mapped with `2x - 1` first.
    pub center_input_sample: bool,
    /// `positional` (sinusoidal), `learned` (a table over `num_train_timesteps`,
    /// integer timesteps only) or `fourier` (Gaussian Fourier features of
    /// `ln(t)`; the output is divided by `t`).
    pub time_embedding_type: String,
    /// Width of the time embedding; `4 * block_out_channels[0]` when unset (or 0).
    pub time_embedding_dim: Option<usize>,
    /// `downscale_freq_shift` of the positional embedding.
    pub freq_shift: f64,
    /// Order `[cos, sin]` instead of `[sin, cos]` in the positional embedding.
    pub flip_sin_to_cos: bool,
    /// `DownBlock2D` or `AttnDownBlock2D`, one per resolution.
    pub down_block_types: Vec<String>,
    /// Any value builds diffusers' `UNetMidBlock2D` (as diffusers does); `None`: no mid block.
    pub mid_block_type: Option<String>,
    /// `UpBlock2D` or `AttnUpBlock2D`, one per resolution, deepest first.
    pub up_block_types: Vec<String>,
    /// Channels of each resolution.
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (up blocks have one more).
    pub layers_per_block: usize,
    /// Output scale of the mid block's resnets and attention.
    pub mid_block_scale_factor: f64,
    /// Padding of the downsampling convolutions.
    pub downsample_padding: usize,
    /// Downsampler of attention blocks: `conv` (also when `None`).
    pub downsample_type: Option<String>,
    /// Upsampler of attention blocks: `conv` (also when `None`).
    pub upsample_type: Option<String>,
    /// Dropout (unused at inference).
    pub dropout: f64,
    /// Activation: `silu` (or its alias `swish`).
    pub act_fn: String,
    /// Width of each attention head (heads = channels / this); `None`: one head
    /// over all channels.
    pub attention_head_dim: Option<usize>,
    /// Groups of every group norm; `None` is not supported.
    pub norm_num_groups: Option<usize>,
    /// Groups of the mid block attention's group norm; `norm_num_groups` when unset.
    pub attn_norm_num_groups: Option<usize>,
    /// Epsilon of every group norm.
    pub norm_eps: f64,
    /// Must be `default`.
    pub resnet_time_scale_shift: String,
    /// Whether the mid block has self-attention.
    pub add_attention: bool,
    /// Must be `None`.
    pub class_embed_type: Option<String>,
    /// Must be `None`.
    pub num_class_embeds: Option<usize>,
    /// Rows of the `learned` time embedding table.
    pub num_train_timesteps: Option<usize>,
    /// Where the configuration was read from, for error messages.
    #[serde(skip)]
    origin: Option<PathBuf>,
}

impl Default for UNet2DConfig {
    /// diffusers' defaults.
    fn default() -> Self {
        let strings = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect();
        Self {
            sample_size: None,
            in_channels: 3,
            out_channels: 3,
            center_input_sample: false,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            freq_shift: 0.0,
            flip_sin_to_cos: true,
            down_block_types: strings(&[
                "DownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2D".into()),
            up_block_types: strings(&[
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "UpBlock2D",
            ]),
            block_out_channels: vec![224, 448, 672, 896],
            layers_per_block: 2,
            mid_block_scale_factor: 1.0,
            downsample_padding: 1,
            downsample_type: Some("conv".into()),
            upsample_type: Some("conv".into()),
            dropout: 0.0,
            act_fn: "silu".into(),
            attention_head_dim: Some(8),
            norm_num_groups: Some(32),
            attn_norm_num_groups: None,
            norm_eps: 1e-5,
            resnet_time_scale_shift: "default".into(),
            add_attention: true,
            class_embed_type: None,
            num_class_embeds: None,
            num_train_timesteps: None,
            origin: None,
        }
    }
}

/// How timesteps are embedded before `time_embedding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeProjKind {
    /// Sinusoidal, `block_out_channels[0]` wide.
    Positional,
    /// A table of `num_train_timesteps` rows.
    Learned { rows: usize },
    /// Gaussian Fourier features, `2 * block_out_channels[0]` wide.
    Fourier,
}

/// A validated configuration, resolved.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UNet2DPlan {
    pub unet: UNetPlan,
    pub time: TimeProjKind,
}

impl UNet2DConfig {
    /// Reads `unet/config.json` and checks that it is supported.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut cfg: Self = read_json(path)?;
        cfg.origin = Some(path.to_path_buf());
        cfg.plan()?;
        Ok(cfg)
    }

    /// Spatial size ratio between the input and the deepest level:
    /// `2^(levels - 1)`. Sample sides must be multiples of it.
    pub fn downsampling_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    fn unsupported(&self, key: &str, message: impl Into<String>) -> Error {
        Error::UnsupportedConfig {
            path: origin_or_default(&self.origin, "<unet config>"),
            key: key.into(),
            message: message.into(),
        }
    }

    fn require_eq(&self, value: &str, expected: &[&str], key: &str) -> Result<()> {
        if expected.contains(&value) {
            Ok(())
        } else {
            Err(self.unsupported(key, format!("{value:?} (supported: {expected:?})")))
        }
    }

    fn require_none<T: std::fmt::Debug>(&self, value: &Option<T>, key: &str) -> Result<()> {
        match value {
            None => Ok(()),
            Some(v) => Err(self.unsupported(key, format!("{v:?} (only null is supported)"))),
        }
    }

    /// The time projection `time_embedding_type` asks for.
    fn time_projection(&self) -> Result<TimeProjKind> {
        match self.time_embedding_type.as_str() {
            "positional" => Ok(TimeProjKind::Positional),
            "fourier" => Ok(TimeProjKind::Fourier),
            "learned" => match self.num_train_timesteps {
                Some(rows) if rows > 0 => Ok(TimeProjKind::Learned { rows }),
                other => Err(self.unsupported(
                    "num_train_timesteps",
                    format!("{other:?}: the learned time embedding needs a positive row count"),
                )),
            },
            other => Err(self.unsupported(
                "time_embedding_type",
                format!("{other:?} (supported: positional, learned, fourier)"),
            )),
        }
    }

    /// Checks the configuration and resolves the per-block settings.
    pub(crate) fn plan(&self) -> Result<UNet2DPlan> {
        self.require_eq(&self.act_fn, &["silu", "swish"], "act_fn")?;
        self.require_eq(
            &self.resnet_time_scale_shift,
            &["default"],
            "resnet_time_scale_shift",
        )?;
        self.require_none(&self.class_embed_type, "class_embed_type")?;
        self.require_none(&self.num_class_embeds, "num_class_embeds")?;
        let time = self.time_projection()?;
        for (key, c) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("layers_per_block", self.layers_per_block),
        ] {
            if c == 0 {
                return Err(self.unsupported(key, "must be positive"));
            }
        }
        let channels = &self.block_out_channels;
        let n = channels.len();
        if n == 0 || channels.contains(&0) {
            return Err(self.unsupported(
                "block_out_channels",
                format!("{channels:?} (need at least one positive entry)"),
            ));
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
        if groups == 0 || channels.iter().any(|c| c % groups != 0) {
            return Err(self.unsupported(
                "norm_num_groups",
                format!("{groups} must divide every entry of {channels:?}"),
            ));
        }

        let spatial = |c: usize, groups: usize, rescale: f64| -> Result<AttnPlan> {
            let heads = match self.attention_head_dim {
                None => 1,
                Some(d) if d > 0 && c.is_multiple_of(d) => c / d,
                Some(d) => {
                    return Err(self.unsupported(
                        "attention_head_dim",
                        format!("{d} does not divide the block channels {c}"),
                    ))
                }
            };
            Ok(AttnPlan::Spatial(SpatialAttnPlan {
                heads,
                groups,
                eps: self.norm_eps,
                rescale_output_factor: rescale,
            }))
        };
        let sampler = |value: &Option<String>, key: &str| -> Result<()> {
            match value.as_deref() {
                None | Some("conv") => Ok(()),
                Some(other) => Err(self.unsupported(key, format!("{other:?} (supported: conv)"))),
            }
        };

        let mut down = Vec::with_capacity(n);
        for (i, kind) in self.down_block_types.iter().enumerate() {
            let attention = match strip_res(kind) {
                "DownBlock2D" => AttnPlan::None,
                "AttnDownBlock2D" => {
                    if i + 1 < n {
                        sampler(&self.downsample_type, "downsample_type")?;
                    }
                    spatial(channels[i], groups, 1.0)?
                }
                _ => {
                    return Err(self.unsupported(
                        "down_block_types",
                        format!("{kind:?} (supported: DownBlock2D, AttnDownBlock2D)"),
                    ))
                }
            };
            down.push(BlockPlan {
                layers: self.layers_per_block,
                attention,
            });
        }
        let mid = match &self.mid_block_type {
            None => None,
            Some(_) if !self.add_attention => Some(AttnPlan::None),
            Some(_) => {
                let attn_groups = self.attn_norm_num_groups.unwrap_or(groups);
                let last = channels[n - 1];
                if attn_groups == 0 || !last.is_multiple_of(attn_groups) {
                    return Err(self.unsupported(
                        "attn_norm_num_groups",
                        format!("{attn_groups} does not divide the mid block channels {last}"),
                    ));
                }
                Some(spatial(last, attn_groups, self.mid_block_scale_factor)?)
            }
        };
        let mut up = Vec::with_capacity(n);
        for (i, kind) in self.up_block_types.iter().enumerate() {
            let level = n - 1 - i;
            let attention = match strip_res(kind) {
                "UpBlock2D" => AttnPlan::None,
                "AttnUpBlock2D" => {
                    if i + 1 < n {
                        sampler(&self.upsample_type, "upsample_type")?;
                    }
                    spatial(channels[level], groups, 1.0)?
                }
                _ => {
                    return Err(self.unsupported(
                        "up_block_types",
                        format!("{kind:?} (supported: UpBlock2D, AttnUpBlock2D)"),
                    ))
                }
            };
            up.push(BlockPlan {
                layers: self.layers_per_block + 1,
                attention,
            });
        }
        let time_embed_dim = match self.time_embedding_dim {
            Some(d) if d > 0 => d,
            _ => 4 * channels[0],
        };
        Ok(UNet2DPlan {
            unet: UNetPlan {
                groups,
                time_embed_dim,
                down,
                mid,
                up,
            },
            time,
        })
    }
}

/// diffusers reads `UNetResDownBlock2D` as `DownBlock2D` (and so on).
fn strip_res(kind: &str) -> &str {
    kind.strip_prefix("UNetRes").unwrap_or(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> UNet2DConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_are_diffusers_defaults() {
        let cfg = parse("{}");
        assert_eq!(cfg, UNet2DConfig::default());
        let plan = cfg.plan().unwrap();
        assert_eq!(plan.time, TimeProjKind::Positional);
        assert_eq!(plan.unet.time_embed_dim, 4 * 224);
        assert_eq!(plan.unet.down[0].attention, AttnPlan::None);
        assert_eq!(plan.unet.up[0].layers, 3);
        // attention_head_dim 8 is the head width: 448 channels -> 56 heads.
        match plan.unet.down[1].attention {
            AttnPlan::Spatial(s) => {
                assert_eq!(s.heads, 56);
                assert_eq!(s.groups, 32);
                assert_eq!(s.eps, 1e-5);
                assert_eq!(s.rescale_output_factor, 1.0);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(plan.unet.mid, Some(AttnPlan::Spatial(s)) if s.heads == 112));
        assert_eq!(cfg.downsampling_factor(), 8);
    }

    #[test]
    fn null_head_dim_attn_groups_and_mid_scale() {
        let cfg = parse(
            r#"{"block_out_channels": [32, 64], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                "up_block_types": ["UNetResAttnUpBlock2D", "UpBlock2D"], "attention_head_dim": null,
                "norm_num_groups": 8, "attn_norm_num_groups": 4, "mid_block_scale_factor": 1.25,
                "downsample_type": null, "time_embedding_dim": 100}"#,
        );
        let plan = cfg.plan().unwrap();
        assert_eq!(plan.unet.time_embed_dim, 100);
        let Some(AttnPlan::Spatial(mid)) = plan.unet.mid else {
            panic!("{:?}", plan.unet.mid)
        };
        assert_eq!((mid.heads, mid.groups), (1, 4));
        assert_eq!(mid.rescale_output_factor, 1.25);
        assert!(
            matches!(plan.unet.up[0].attention, AttnPlan::Spatial(s) if s.heads == 1 && s.groups == 8)
        );

        let no_mid_attention = parse(r#"{"add_attention": false}"#).plan().unwrap();
        assert_eq!(no_mid_attention.unet.mid, Some(AttnPlan::None));
        let no_mid = parse(r#"{"mid_block_type": null}"#).plan().unwrap();
        assert_eq!(no_mid.unet.mid, None);
    }

    #[test]
    fn time_embedding_types() {
        let learned = parse(r#"{"time_embedding_type": "learned", "num_train_timesteps": 1000}"#);
        assert_eq!(
            learned.plan().unwrap().time,
            TimeProjKind::Learned { rows: 1000 }
        );
        let fourier = parse(r#"{"time_embedding_type": "fourier"}"#);
        assert_eq!(fourier.plan().unwrap().time, TimeProjKind::Fourier);
    }

    #[test]
    fn unsupported_values_are_errors() {
        let cases = [
            (
                r#"{"time_embedding_type": "learned"}"#,
                "num_train_timesteps",
            ),
            (
                r#"{"time_embedding_type": "sinusoidal"}"#,
                "time_embedding_type",
            ),
            (r#"{"class_embed_type": "timestep"}"#, "class_embed_type"),
            (r#"{"num_class_embeds": 10}"#, "num_class_embeds"),
            (
                r#"{"resnet_time_scale_shift": "scale_shift"}"#,
                "resnet_time_scale_shift",
            ),
            (r#"{"act_fn": "gelu"}"#, "act_fn"),
            (r#"{"downsample_type": "resnet"}"#, "downsample_type"),
            (r#"{"upsample_type": "resnet"}"#, "upsample_type"),
            (r#"{"attention_head_dim": 0}"#, "attention_head_dim"),
            (r#"{"attention_head_dim": 48}"#, "attention_head_dim"),
            (r#"{"norm_num_groups": null}"#, "norm_num_groups"),
            (r#"{"norm_num_groups": 64}"#, "norm_num_groups"),
            (r#"{"attn_norm_num_groups": 5}"#, "attn_norm_num_groups"),
            (r#"{"block_out_channels": []}"#, "block_out_channels"),
            (r#"{"block_out_channels": [32, 64]}"#, "down_block_types"),
            (r#"{"layers_per_block": 0}"#, "layers_per_block"),
            (
                r#"{"block_out_channels": [32], "down_block_types": ["CrossAttnDownBlock2D"], "up_block_types": ["UpBlock2D"]}"#,
                "down_block_types",
            ),
            (
                r#"{"block_out_channels": [32], "down_block_types": ["DownBlock2D"], "up_block_types": ["SkipUpBlock2D"]}"#,
                "up_block_types",
            ),
        ];
        for (json, want) in cases {
            match parse(json).plan() {
                Err(Error::UnsupportedConfig { key, .. }) => assert_eq!(key, want, "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
        // A downsample type only matters where an attention block downsamples.
        let unused = parse(
            r#"{"block_out_channels": [32, 32], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                "up_block_types": ["UpBlock2D", "UpBlock2D"], "downsample_type": "resnet", "upsample_type": "resnet"}"#,
        );
        unused.plan().unwrap();
    }
}
