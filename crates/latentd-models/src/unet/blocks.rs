//! The UNets' down, mid and up blocks, shared by `UNet2DConditionModel` and
//! `UNet2DModel`: resnets with an optional attention layer after each, where the
//! attention is a cross-attention transformer (`CrossAttnDownBlock2D`,
//! `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D`), a spatial self-attention
//! (`AttnDownBlock2D`, `UNetMidBlock2D`, `AttnUpBlock2D`) or absent
//! (`DownBlock2D`, `UpBlock2D`); and [`UNetBody`], the wiring of all of them.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::nn::attention::{SpatialSelfAttention, Transformer2DConfig, Transformer2DModel};
use crate::nn::resnet::{ResnetBlock2D, ResnetBlock2DConfig};
use crate::nn::sampling::{Downsample2D, Upsample2D};
use crate::{Error, Result};

/// Cross-attention settings of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CrossAttnPlan {
    pub heads: usize,
    pub layers: usize,
    pub context_dim: usize,
}

/// Spatial self-attention settings of one block (diffusers' `Attention` with a
/// group norm, biased projections and a residual connection).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SpatialAttnPlan {
    pub heads: usize,
    /// Groups of the attention's group norm.
    pub groups: usize,
    /// Epsilon of that group norm.
    pub eps: f64,
    /// `(attention + input)` is divided by this.
    pub rescale_output_factor: f64,
}

/// The attention layer after each resnet of a block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum AttnPlan {
    None,
    Cross(CrossAttnPlan),
    Spatial(SpatialAttnPlan),
}

/// One down or up block, fully resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BlockPlan {
    /// Resnets in the block.
    pub layers: usize,
    /// The attention after each resnet.
    pub attention: AttnPlan,
}

/// The per-block settings of a validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UNetPlan {
    pub groups: usize,
    pub time_embed_dim: usize,
    /// Down blocks, shallowest first.
    pub down: Vec<BlockPlan>,
    /// The mid block's attention; `None` for no mid block.
    pub mid: Option<AttnPlan>,
    /// Up blocks, deepest first.
    pub up: Vec<BlockPlan>,
}

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

/// One attention layer of a block.
#[derive(Debug, Clone)]
enum BlockAttention {
    Cross(Transformer2DModel),
    Spatial {
        attention: SpatialSelfAttention,
        rescale_output_factor: f64,
    },
}

impl BlockAttention {
    /// Loads the layer `plan` asks for from `vb`; `None` for blocks without attention.
    fn new(
        vb: VarBuilder,
        shared: &Shared,
        channels: usize,
        plan: &AttnPlan,
    ) -> Result<Option<Self>> {
        Ok(match plan {
            AttnPlan::None => None,
            AttnPlan::Cross(cross) => Some(Self::Cross(shared.transformer(vb, channels, cross)?)),
            AttnPlan::Spatial(spatial) => Some(Self::Spatial {
                attention: SpatialSelfAttention::new(
                    vb,
                    channels,
                    spatial.heads,
                    spatial.groups,
                    spatial.eps,
                )?,
                rescale_output_factor: spatial.rescale_output_factor,
            }),
        })
    }

    /// `xs` `[B, C, H, W]`; `context` `[B, T, D]` is required by cross-attention
    /// and ignored by self-attention.
    fn forward(&self, xs: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        match self {
            Self::Cross(transformer) => {
                let context = context.ok_or_else(|| {
                    Error::InvalidArgument("cross-attention blocks need a context".into())
                })?;
                transformer.forward(xs, context)
            }
            Self::Spatial {
                attention,
                rescale_output_factor,
            } => {
                let ys = attention.forward(xs)?;
                if *rescale_output_factor == 1.0 {
                    Ok(ys)
                } else {
                    Ok((ys / *rescale_output_factor)?)
                }
            }
        }
    }
}

/// Loads `attentions.{i}` for the block's resnets when the block has attention.
fn load_attentions(
    vb: &VarBuilder,
    shared: &Shared,
    channels: usize,
    plan: &BlockPlan,
) -> Result<Vec<BlockAttention>> {
    let mut attentions = Vec::new();
    for i in 0..plan.layers {
        match BlockAttention::new(vb.pp("attentions").pp(i), shared, channels, &plan.attention)? {
            Some(attention) => attentions.push(attention),
            None => break,
        }
    }
    Ok(attentions)
}

/// Resnets (each followed by an attention layer in attention blocks), then an
/// optional stride-2 downsampler. Every intermediate output is kept as a skip.
#[derive(Debug, Clone)]
pub(crate) struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<BlockAttention>,
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
        context: Option<&Tensor>,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut xs = xs.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            crate::interrupt::poll()?;
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

/// A resnet, then (optional attention, resnet) at the lowest resolution.
#[derive(Debug, Clone)]
pub(crate) struct MidBlock {
    first: ResnetBlock2D,
    attention: Option<BlockAttention>,
    second: ResnetBlock2D,
    span: tracing::Span,
}

impl MidBlock {
    pub(crate) fn new(
        vb: VarBuilder,
        shared: &Shared,
        plan: &AttnPlan,
        channels: usize,
        output_scale_factor: f64,
    ) -> Result<Self> {
        let cfg = shared.resnet(channels, channels, output_scale_factor);
        Ok(Self {
            first: ResnetBlock2D::new(vb.pp("resnets.0"), &cfg)?,
            attention: BlockAttention::new(vb.pp("attentions.0"), shared, channels, plan)?,
            second: ResnetBlock2D::new(vb.pp("resnets.1"), &cfg)?,
            span: tracing::trace_span!("mid-block"),
        })
    }

    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        context: Option<&Tensor>,
    ) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut xs = self.first.forward(xs, Some(temb))?;
        if let Some(attention) = &self.attention {
            xs = attention.forward(&xs, context)?;
        }
        self.second.forward(&xs, Some(temb))
    }
}

/// Resnets over the input concatenated with skips (each followed by an
/// attention layer in attention blocks), then an optional upsampler.
#[derive(Debug, Clone)]
pub(crate) struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<BlockAttention>,
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
        context: Option<&Tensor>,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut xs = xs.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            crate::interrupt::poll()?;
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

/// Everything between `conv_in` and `conv_norm_out`: the down blocks, the
/// optional mid block and the up blocks, with the skip connections between them.
#[derive(Debug, Clone)]
pub(crate) struct UNetBody {
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
}

impl UNetBody {
    /// Loads `down_blocks.*`, `mid_block` and `up_blocks.*` from `vb`; `channels`
    /// are the `block_out_channels` the (validated) `plan` was resolved for.
    pub(crate) fn new(
        vb: &VarBuilder,
        shared: &Shared,
        plan: &UNetPlan,
        channels: &[usize],
        mid_block_scale_factor: f64,
    ) -> Result<Self> {
        let n = channels.len();
        let vb_down = vb.pp("down_blocks");
        let down_blocks = plan
            .down
            .iter()
            .enumerate()
            .map(|(i, block)| {
                let cin = channels[i.saturating_sub(1)];
                DownBlock::new(vb_down.pp(i), shared, block, cin, channels[i], i + 1 < n)
            })
            .collect::<Result<Vec<_>>>()?;
        let mid_block = match &plan.mid {
            Some(mid) => Some(MidBlock::new(
                vb.pp("mid_block"),
                shared,
                mid,
                channels[n - 1],
                mid_block_scale_factor,
            )?),
            None => None,
        };
        let vb_up = vb.pp("up_blocks");
        let up_blocks = plan
            .up
            .iter()
            .enumerate()
            .map(|(i, block)| {
                let level = n - 1 - i;
                let prev = channels[(level + 1).min(n - 1)];
                let skip = channels[level.saturating_sub(1)];
                UpBlock::new(
                    vb_up.pp(i),
                    shared,
                    block,
                    skip,
                    prev,
                    channels[level],
                    i + 1 < n,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            down_blocks,
            mid_block,
            up_blocks,
        })
    }

    /// `xs` (the output of `conv_in`) -> the input of `conv_norm_out`;
    /// `context` is needed by cross-attention blocks only.
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        context: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut xs = xs.clone();
        let mut skips = vec![xs.clone()];
        for block in &self.down_blocks {
            crate::interrupt::poll()?;
            xs = block.forward(&xs, temb, context, &mut skips)?;
        }
        if let Some(mid) = &self.mid_block {
            crate::interrupt::poll()?;
            xs = mid.forward(&xs, temb, context)?;
        }
        for block in &self.up_blocks {
            crate::interrupt::poll()?;
            xs = block.forward(&xs, temb, context, &mut skips)?;
        }
        Ok(xs)
    }
}
