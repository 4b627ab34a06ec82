//! The autoencoders' blocks: `DownEncoderBlock2D`, `UpDecoderBlock2D` and
//! `UNetMidBlock2D` (resnets without time embedding, optional self-attention).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::nn::attention::SpatialSelfAttention;
use crate::nn::resnet::{ResnetBlock2D, ResnetBlock2DConfig};
use crate::nn::sampling::{Downsample2D, Upsample2D};
use crate::Result;

/// Epsilon of every group norm in the autoencoders.
pub(crate) const EPS: f64 = 1e-6;

/// `resnets.{index}`: a resnet without time embedding.
fn resnet(
    vb: &VarBuilder,
    index: usize,
    in_channels: usize,
    out_channels: usize,
    groups: usize,
) -> Result<ResnetBlock2D> {
    let cfg = ResnetBlock2DConfig {
        in_channels,
        out_channels,
        temb_channels: None,
        groups,
        groups_out: groups,
        eps: EPS,
        output_scale_factor: 1.0,
    };
    ResnetBlock2D::new(vb.pp("resnets").pp(index), &cfg)
}

/// `layers` resnets, the first mapping `in_channels` to `out_channels`.
fn resnets(
    vb: &VarBuilder,
    layers: usize,
    in_channels: usize,
    out_channels: usize,
    groups: usize,
) -> Result<Vec<ResnetBlock2D>> {
    (0..layers)
        .map(|i| {
            let cin = if i == 0 { in_channels } else { out_channels };
            resnet(vb, i, cin, out_channels, groups)
        })
        .collect()
}

/// Resnets, then an optional stride-2 downsampler (padded bottom/right).
#[derive(Debug, Clone)]
pub(crate) struct DownEncoderBlock {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Downsample2D>,
    span: tracing::Span,
}

impl DownEncoderBlock {
    pub(crate) fn new(
        vb: VarBuilder,
        layers: usize,
        in_channels: usize,
        out_channels: usize,
        groups: usize,
        add_downsample: bool,
    ) -> Result<Self> {
        let downsampler = if add_downsample {
            Some(Downsample2D::new(
                vb.pp("downsamplers.0"),
                out_channels,
                out_channels,
                0,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets: resnets(&vb, layers, in_channels, out_channels, groups)?,
            downsampler,
            span: tracing::trace_span!("down-encoder-block"),
        })
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut xs = xs.clone();
        for resnet in &self.resnets {
            xs = resnet.forward(&xs, None)?;
        }
        match &self.downsampler {
            Some(down) => down.forward(&xs),
            None => Ok(xs),
        }
    }
}

/// Resnets, then an optional 2x upsampler.
#[derive(Debug, Clone)]
pub(crate) struct UpDecoderBlock {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
    span: tracing::Span,
}

impl UpDecoderBlock {
    pub(crate) fn new(
        vb: VarBuilder,
        layers: usize,
        in_channels: usize,
        out_channels: usize,
        groups: usize,
        add_upsample: bool,
    ) -> Result<Self> {
        let upsampler = if add_upsample {
            Some(Upsample2D::new(
                vb.pp("upsamplers.0"),
                out_channels,
                out_channels,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets: resnets(&vb, layers, in_channels, out_channels, groups)?,
            upsampler,
            span: tracing::trace_span!("up-decoder-block"),
        })
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut xs = xs.clone();
        for resnet in &self.resnets {
            xs = resnet.forward(&xs, None)?;
        }
        match &self.upsampler {
            Some(up) => up.forward(&xs, None),
            None => Ok(xs),
        }
    }
}

/// A resnet, an optional single-head self-attention, and a second resnet.
#[derive(Debug, Clone)]
pub(crate) struct MidBlock {
    first: ResnetBlock2D,
    attention: Option<SpatialSelfAttention>,
    second: ResnetBlock2D,
    span: tracing::Span,
}

impl MidBlock {
    pub(crate) fn new(
        vb: VarBuilder,
        channels: usize,
        groups: usize,
        add_attention: bool,
    ) -> Result<Self> {
        let attention = if add_attention {
            Some(SpatialSelfAttention::new(
                vb.pp("attentions.0"),
                channels,
                1,
                groups,
                EPS,
            )?)
        } else {
            None
        };
        Ok(Self {
            first: resnet(&vb, 0, channels, channels, groups)?,
            attention,
            second: resnet(&vb, 1, channels, channels, groups)?,
            span: tracing::trace_span!("vae-mid-block"),
        })
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut xs = self.first.forward(xs, None)?;
        if let Some(attn) = &self.attention {
            xs = attn.forward(&xs)?;
        }
        self.second.forward(&xs, None)
    }
}
