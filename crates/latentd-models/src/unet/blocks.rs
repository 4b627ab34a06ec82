//! The UNet's down, mid and up blocks (`CrossAttnDownBlock2D` / `DownBlock2D`,
//! `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D` / `UpBlock2D`).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::config::{BlockPlan, CrossAttnPlan};
use crate::nn::attention::{Transformer2DConfig, Transformer2DModel};
use crate::nn::resnet::{ResnetBlock2D, ResnetBlock2DConfig};
use crate::nn::sampling::{Downsample2D, Upsample2D};
use crate::{Error, Result};

/// Settings shared by every block of one UNet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shared {
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f64,
    pub use_linear_projection: bool,
    pub downsample_padding: usize,
}

impl Shared {
    fn resnet(&self, in_channels: usize, out_channels: usize, scale: f64) -> ResnetBlock2DConfig {
        ResnetBlock2DConfig {
            in_channels,
            out_channels,
            temb_channels: Some(self.temb_channels),
            groups: self.groups,
            groups_out: self.groups,
            eps: self.eps,
            output_scale_factor: scale,
        }
    }

    fn transformer(
        &self,
        vb: VarBuilder,
        channels: usize,
        plan: &CrossAttnPlan,
    ) -> Result<Transformer2DModel> {
        let cfg = Transformer2DConfig {
            in_channels: channels,
            heads: plan.heads,
            head_dim: channels / plan.heads,
            layers: plan.layers,
            context_dim: plan.context_dim,
            norm_groups: self.groups,
            use_linear_projection: self.use_linear_projection,
        };
        Transformer2DModel::new(vb, &cfg)
    }
}

/// Loads `attentions.{i}` for `n` resnets when the block has cross-attention.
fn load_attentions(
    vb: &VarBuilder,
    shared: &Shared,
    channels: usize,
    plan: &BlockPlan,
) -> Result<Vec<Transformer2DModel>> {
    match &plan.cross_attn {
        Some(cross) => (0..plan.layers)
            .map(|i| shared.transformer(vb.pp("attentions").pp(i), channels, cross))
            .collect(),
        None => Ok(Vec::new()),
    }
}

/// Resnets (each followed by a transformer in cross-attention blocks), then an
/// optional stride-2 downsampler. Every intermediate output is kept as a skip.
#[derive(Debug, Clone)]
pub(crate) struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
    span: tracing::Span,
}

impl DownBlock {
    pub(crate) fn new(
        vb: VarBuilder,
        shared: &Shared,
        plan: &BlockPlan,
        in_channels: usize,
        out_channels: usize,
        add_downsample: bool,
    ) -> Result<Self> {
        let resnets = (0..plan.layers)
            .map(|i| {
                let cin = if i == 0 { in_channels } else { out_channels };
                let cfg = shared.resnet(cin, out_channels, 1.0);
                ResnetBlock2D::new(vb.pp("resnets").pp(i), &cfg)
            })
            .collect::<Result<Vec<_>>>()?;
        let downsampler = if add_downsample {
            Some(Downsample2D::new(
                vb.pp("downsamplers.0"),
                out_channels,
                out_channels,
                shared.downsample_padding,
            )?)
        } else {
            None
        };
        Ok(Self {
            attentions: load_attentions(&vb, shared, out_channels, plan)?,
            resnets,
            downsampler,
            span: tracing::trace_span!("down-block"),
        })
    }

    /// Runs the block, pushing each intermediate output onto `skips`.
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut xs = xs.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            xs = resnet.forward(&xs, Some(temb))?;
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward(&xs, context)?;
            }
            skips.push(xs.clone());
        }
        if let Some(down) = &self.downsampler {
            xs = down.forward(&xs)?;
            skips.push(xs.clone());
        }
        Ok(xs)
    }
}

/// A resnet, then (transformer, resnet) at the lowest resolution.
#[derive(Debug, Clone)]
pub(crate) struct MidBlock {
    first: ResnetBlock2D,
    attention: Transformer2DModel,
    second: ResnetBlock2D,
    span: tracing::Span,
}

impl MidBlock {
    pub(crate) fn new(
        vb: VarBuilder,
        shared: &Shared,
        plan: &CrossAttnPlan,
        channels: usize,
        output_scale_factor: f64,
    ) -> Result<Self> {
        let cfg = shared.resnet(channels, channels, output_scale_factor);
        Ok(Self {
            first: ResnetBlock2D::new(vb.pp("resnets.0"), &cfg)?,
            attention: shared.transformer(vb.pp("attentions.0"), channels, plan)?,
            second: ResnetBlock2D::new(vb.pp("resnets.1"), &cfg)?,
            span: tracing::trace_span!("mid-block"),
        })
    }

    pub(crate) fn forward(&self, xs: &Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let xs = self.first.forward(xs, Some(temb))?;
        let xs = self.attention.forward(&xs, context)?;
        self.second.forward(&xs, Some(temb))
    }
}

/// Resnets over the input concatenated with skips (each followed by a
/// transformer in cross-attention blocks), then an optional upsampler.
#[derive(Debug, Clone)]
pub(crate) struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
    span: tracing::Span,
}

impl UpBlock {
    /// `skip_channels` are the channels of the last skip this block consumes
    /// (those of the next shallower level), `prev_channels` those of its input.
    pub(crate) fn new(
        vb: VarBuilder,
        shared: &Shared,
        plan: &BlockPlan,
        skip_channels: usize,
        prev_channels: usize,
        out_channels: usize,
        add_upsample: bool,
    ) -> Result<Self> {
        let resnets = (0..plan.layers)
            .map(|i| {
                let skip = if i + 1 == plan.layers {
                    skip_channels
                } else {
                    out_channels
                };
                let cin = if i == 0 { prev_channels } else { out_channels };
                let cfg = shared.resnet(cin + skip, out_channels, 1.0);
                ResnetBlock2D::new(vb.pp("resnets").pp(i), &cfg)
            })
            .collect::<Result<Vec<_>>>()?;
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
            attentions: load_attentions(&vb, shared, out_channels, plan)?,
            resnets,
            upsampler,
            span: tracing::trace_span!("up-block"),
        })
    }

    /// Runs the block, popping one skip per resnet. The upsampler resizes to the
    /// size of the skip the next block will pop first, as diffusers does for
    /// sizes that are not multiples of the total downsampling factor.
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut xs = xs.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips
                .pop()
                .ok_or_else(|| Error::InvalidArgument("UNet skip connections exhausted".into()))?;
            xs = resnet.forward(&Tensor::cat(&[&xs, &skip], 1)?, Some(temb))?;
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward(&xs, context)?;
            }
        }
        if let Some(up) = &self.upsampler {
            let size = match skips.last() {
                Some(next) => {
                    let (_, _, h, w) = next.dims4()?;
                    Some((h, w))
                }
                None => None,
            };
            xs = up.forward(&xs, size)?;
        }
        Ok(xs)
    }
}
