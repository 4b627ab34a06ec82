//! The autoencoders' `Encoder` and `Decoder`, shared by `AutoencoderKL` and `VQModel`.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::blocks::{DownEncoderBlock, MidBlock, UpDecoderBlock, EPS};
use crate::nn::{conv2d, group_norm, Conv2d, GroupNorm};
use crate::{Error, Result};

/// The settings an autoencoder's encoder and decoder are built from, borrowed
/// from the model's configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CoderConfig<'a> {
    /// `DownEncoderBlock2D`, one per resolution.
    pub down_block_types: &'a [String],
    /// `UpDecoderBlock2D`, one per resolution.
    pub up_block_types: &'a [String],
    /// Channels of each resolution.
    pub block_out_channels: &'a [usize],
    /// Resnets per encoder block (decoder blocks have one more).
    pub layers_per_block: usize,
    /// Activation: `silu` (or its alias `swish`).
    pub act_fn: &'a str,
    /// Groups of every group norm.
    pub norm_num_groups: usize,
    /// Whether the mid blocks have self-attention.
    pub mid_block_add_attention: bool,
}

impl CoderConfig<'_> {
    /// Total spatial downsampling of the encoder: `2^(levels - 1)`.
    pub(crate) fn downsampling_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// Checks that every value is supported; `unsupported(key, message)` builds
    /// the error of the model configuration the values come from.
    pub(crate) fn check(&self, unsupported: impl Fn(&str, String) -> Error) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 || self.block_out_channels.contains(&0) {
            return Err(unsupported(
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
                self.down_block_types,
                "DownEncoderBlock2D",
            ),
            ("up_block_types", self.up_block_types, "UpDecoderBlock2D"),
        ] {
            if types.len() != n {
                return Err(unsupported(
                    key,
                    format!("{} entries for {n} block_out_channels", types.len()),
                ));
            }
            if let Some(other) = types.iter().find(|t| t.as_str() != expected) {
                return Err(unsupported(
                    key,
                    format!("{other:?} (supported: {expected})"),
                ));
            }
        }
        if !["silu", "swish"].contains(&self.act_fn) {
            return Err(unsupported(
                "act_fn",
                format!("{:?} (supported: silu)", self.act_fn),
            ));
        }
        let groups = self.norm_num_groups;
        if groups == 0 || self.block_out_channels.iter().any(|c| c % groups != 0) {
            return Err(unsupported(
                "norm_num_groups",
                format!(
                    "{groups} must divide every entry of {:?}",
                    self.block_out_channels
                ),
            ));
        }
        if self.layers_per_block == 0 {
            return Err(unsupported("layers_per_block", "must be positive".into()));
        }
        Ok(())
    }
}

/// Images `[B, in_channels, H, W]` -> `[B, out_channels, H / f, W / f]`
/// (`2 * latent_channels` moments for the KL autoencoder, latents for VQ).
#[derive(Debug, Clone)]
pub(crate) struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    span: tracing::Span,
}

impl Encoder {
    /// Loads the encoder from `vb`; `cfg` must have passed [`CoderConfig::check`].
    pub(crate) fn new(
        vb: VarBuilder,
        cfg: &CoderConfig,
        in_channels: usize,
        out_channels: usize,
    ) -> Result<Self> {
        let channels = cfg.block_out_channels;
        let (n, groups) = (channels.len(), cfg.norm_num_groups);
        let last = channels[n - 1];
        let vb_down = vb.pp("down_blocks");
        let down_blocks = (0..n)
            .map(|i| {
                let cin = channels[i.saturating_sub(1)];
                DownEncoderBlock::new(
                    vb_down.pp(i),
                    cfg.layers_per_block,
                    cin,
                    channels[i],
                    groups,
                    i + 1 < n,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv_in: conv2d(vb.pp("conv_in"), in_channels, channels[0], 3, 1, 1)?,
            down_blocks,
            mid_block: MidBlock::new(
                vb.pp("mid_block"),
                last,
                groups,
                cfg.mid_block_add_attention,
            )?,
            conv_norm_out: group_norm(vb.pp("conv_norm_out"), groups, last, EPS)?,
            conv_out: conv2d(vb.pp("conv_out"), last, out_channels, 3, 1, 1)?,
            span: tracing::trace_span!("vae-encoder"),
        })
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut xs = self.conv_in.forward(xs)?;
        for block in &self.down_blocks {
            xs = block.forward(&xs)?;
        }
        let xs = self.mid_block.forward(&xs)?;
        let xs = self.conv_norm_out.forward_silu(&xs)?;
        self.conv_out.forward(&xs)
    }
}

/// Latents `[B, in_channels, h, w]` -> images `[B, out_channels, h * f, w * f]`.
#[derive(Debug, Clone)]
pub(crate) struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<UpDecoderBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    span: tracing::Span,
}

impl Decoder {
    /// Loads the decoder from `vb`; `cfg` must have passed [`CoderConfig::check`].
    pub(crate) fn new(
        vb: VarBuilder,
        cfg: &CoderConfig,
        in_channels: usize,
        out_channels: usize,
    ) -> Result<Self> {
        let channels = cfg.block_out_channels;
        let (n, groups) = (channels.len(), cfg.norm_num_groups);
        let last = channels[n - 1];
        let vb_up = vb.pp("up_blocks");
        let up_blocks = (0..n)
            .map(|i| {
                let level = n - 1 - i;
                let cin = channels[(level + 1).min(n - 1)];
                UpDecoderBlock::new(
                    vb_up.pp(i),
                    cfg.layers_per_block + 1,
                    cin,
                    channels[level],
                    groups,
                    i + 1 < n,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv_in: conv2d(vb.pp("conv_in"), in_channels, last, 3, 1, 1)?,
            mid_block: MidBlock::new(
                vb.pp("mid_block"),
                last,
                groups,
                cfg.mid_block_add_attention,
            )?,
            up_blocks,
            conv_norm_out: group_norm(vb.pp("conv_norm_out"), groups, channels[0], EPS)?,
            conv_out: conv2d(vb.pp("conv_out"), channels[0], out_channels, 3, 1, 1)?,
            span: tracing::trace_span!("vae-decoder"),
        })
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let xs = self.conv_in.forward(xs)?;
        let mut xs = self.mid_block.forward(&xs)?;
        for block in &self.up_blocks {
            xs = block.forward(&xs)?;
        }
        let xs = self.conv_norm_out.forward_silu(&xs)?;
        self.conv_out.forward(&xs)
    }
}
