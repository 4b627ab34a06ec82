//! The KL autoencoder's `Encoder` and `Decoder`.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::blocks::{DownEncoderBlock, MidBlock, UpDecoderBlock, EPS};
use super::config::AutoencoderKLConfig;
use crate::nn::{conv2d, group_norm, Conv2d, GroupNorm};
use crate::Result;

/// Images -> `2 * latent_channels` moments (mean and log-variance).
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
    pub(crate) fn new(vb: VarBuilder, cfg: &AutoencoderKLConfig) -> Result<Self> {
        let channels = &cfg.block_out_channels;
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
            conv_in: conv2d(vb.pp("conv_in"), cfg.in_channels, channels[0], 3, 1, 1)?,
            down_blocks,
            mid_block: MidBlock::new(
                vb.pp("mid_block"),
                last,
                groups,
                cfg.mid_block_add_attention,
            )?,
            conv_norm_out: group_norm(vb.pp("conv_norm_out"), groups, last, EPS)?,
            conv_out: conv2d(vb.pp("conv_out"), last, 2 * cfg.latent_channels, 3, 1, 1)?,
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

/// Latents -> images.
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
    pub(crate) fn new(vb: VarBuilder, cfg: &AutoencoderKLConfig) -> Result<Self> {
        let channels = &cfg.block_out_channels;
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
            conv_in: conv2d(vb.pp("conv_in"), cfg.latent_channels, last, 3, 1, 1)?,
            mid_block: MidBlock::new(
                vb.pp("mid_block"),
                last,
                groups,
                cfg.mid_block_add_attention,
            )?,
            up_blocks,
            conv_norm_out: group_norm(vb.pp("conv_norm_out"), groups, channels[0], EPS)?,
            conv_out: conv2d(vb.pp("conv_out"), channels[0], cfg.out_channels, 3, 1, 1)?,
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
