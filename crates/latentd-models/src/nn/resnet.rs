//! diffusers' `ResnetBlock2D` with the "default" time-embedding norm and SiLU.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::{conv2d, group_norm, Conv2d, GroupNorm, Pointwise};
use crate::Result;

/// Sizes and constants of one [`ResnetBlock2D`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResnetBlock2DConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels; a 1x1 `conv_shortcut` is added when they differ from the input's.
    pub out_channels: usize,
    /// Width of the time embedding, or `None` for blocks without one (autoencoders).
    pub temb_channels: Option<usize>,
    /// Groups of `norm1`.
    pub groups: usize,
    /// Groups of `norm2`.
    pub groups_out: usize,
    /// Epsilon of both group norms.
    pub eps: f64,
    /// The output is divided by this.
    pub output_scale_factor: f64,
}

/// `norm1 -> silu -> conv1 (+ time_emb_proj(silu(temb))) -> norm2 -> silu -> conv2`,
/// plus the (projected) input.
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Pointwise>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
    span: tracing::Span,
}

impl ResnetBlock2D {
    /// Loads the block's weights from `vb`.
    pub fn new(vb: VarBuilder, cfg: &ResnetBlock2DConfig) -> Result<Self> {
        let (cin, cout) = (cfg.in_channels, cfg.out_channels);
        let time_emb_proj = match cfg.temb_channels {
            Some(t) => Some(Pointwise::new(vb.pp("time_emb_proj"), t, cout, true)?),
            None => None,
        };
        let conv_shortcut = if cin != cout {
            Some(conv2d(vb.pp("conv_shortcut"), cin, cout, 1, 1, 0)?)
        } else {
            None
        };
        Ok(Self {
            norm1: group_norm(vb.pp("norm1"), cfg.groups, cin, cfg.eps)?,
            conv1: conv2d(vb.pp("conv1"), cin, cout, 3, 1, 1)?,
            time_emb_proj,
            norm2: group_norm(vb.pp("norm2"), cfg.groups_out, cout, cfg.eps)?,
            conv2: conv2d(vb.pp("conv2"), cout, cout, 3, 1, 1)?,
            conv_shortcut,
            output_scale_factor: cfg.output_scale_factor,
            span: tracing::trace_span!("resnet"),
        })
    }

    /// `xs` `[B, in, H, W]`, `temb` `[B, temb_channels]` -> `[B, out, H, W]`.
    ///
    /// `temb` is ignored by blocks built without `temb_channels`.
    pub fn forward(&self, xs: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut hs = self.conv1.forward(&self.norm1.forward_silu(xs)?)?;
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t = proj.rows(&temb.silu()?)?.unsqueeze(2)?.unsqueeze(3)?;
            hs = hs.broadcast_add(&t)?;
        }
        let hs = self.conv2.forward(&self.norm2.forward_silu(&hs)?)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(xs)?,
            None => xs.clone(),
        };
        let out = (shortcut + hs)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            Ok((out / self.output_scale_factor)?)
        }
    }
}
