//! diffusers' `Downsample2D` and `Upsample2D` (convolutional variants).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::{conv2d, Conv2d};
use crate::{Error, Result};

/// A stride-2 3x3 convolution (`conv`). With `padding == 0` the input is first
/// padded by one on the bottom and right, as diffusers does for autoencoders.
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2d,
    padding: usize,
    pad_bottom_right: bool,
    span: tracing::Span,
}

impl Downsample2D {
    /// Loads `conv` from `vb`.
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        out_channels: usize,
        padding: usize,
    ) -> Result<Self> {
        Ok(Self {
            conv: conv2d(vb.pp("conv"), channels, out_channels, 3, 2, padding)?,
            padding,
            pad_bottom_right: padding == 0,
            span: tracing::trace_span!("downsample"),
        })
    }

    /// `[B, C, H, W]` -> `[B, C', ceil(H / 2), ceil(W / 2)]` (padding 1) or
    /// `[B, C', floor(H / 2), floor(W / 2)]` (padding 0).
    ///
    /// Inputs too small for the 3x3 kernel are an [`Error::InvalidArgument`].
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (_, _, h, w) = xs.dims4()?;
        let extra = 2 * self.padding + usize::from(self.pad_bottom_right);
        if h.min(w) + extra < 3 {
            return Err(Error::InvalidArgument(format!(
                "a {h}x{w} feature map is too small to downsample further"
            )));
        }
        if self.pad_bottom_right {
            let xs = xs.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?;
            self.conv.forward(&xs)
        } else {
            self.conv.forward(xs)
        }
    }
}

/// Nearest-neighbour upsampling followed by a 3x3 convolution (`conv`).
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv2d,
    span: tracing::Span,
}

impl Upsample2D {
    /// Loads `conv` from `vb`.
    pub fn new(vb: VarBuilder, channels: usize, out_channels: usize) -> Result<Self> {
        Ok(Self {
            conv: conv2d(vb.pp("conv"), channels, out_channels, 3, 1, 1)?,
            span: tracing::trace_span!("upsample"),
        })
    }

    /// `[B, C, H, W]` -> `[B, C', h, w]` with `(h, w) = size`, or `(2H, 2W)` when `None`.
    pub fn forward(&self, xs: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (_, _, h, w) = xs.dims4()?;
        let (out_h, out_w) = size.unwrap_or((2 * h, 2 * w));
        let xs = resize_nearest(xs, out_h, out_w)?;
        self.conv.forward(&xs)
    }
}

/// Nearest-neighbour resize of `[B, C, H, W]` to `[B, C, out_h, out_w]`, choosing
/// source pixels exactly as torch's `F.interpolate(mode="nearest")` does.
pub fn resize_nearest(xs: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    if (out_h, out_w) == (h, w) {
        return Ok(xs.clone());
    }
    if (out_h, out_w) == (2 * h, 2 * w) {
        return Ok(xs.upsample_nearest2d(out_h, out_w)?);
    }
    let rows = nearest_indices(h, out_h);
    let cols = nearest_indices(w, out_w);
    let device = xs.device();
    let xs = xs.index_select(&Tensor::new(rows, device)?, 2)?;
    Ok(xs.index_select(&Tensor::new(cols, device)?, 3)?)
}

/// Source index of each output index along one axis, in torch's arithmetic:
/// `min(floor(i * (in / out) as f32), in - 1)`, with the exact `>> 1` when doubling.
fn nearest_indices(input: usize, output: usize) -> Vec<u32> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| {
            let src = if output == 2 * input {
                i / 2
            } else {
                ((i as f32 * scale).floor() as usize).min(input.saturating_sub(1))
            };
            src as u32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn nearest_indices_match_torch() {
        // torch.nn.functional.interpolate(size=...) picks these source rows.
        assert_eq!(nearest_indices(5, 9), vec![0, 0, 1, 1, 2, 2, 3, 3, 4]);
        assert_eq!(nearest_indices(3, 5), vec![0, 0, 1, 1, 2]);
        assert_eq!(nearest_indices(4, 8), vec![0, 0, 1, 1, 2, 2, 3, 3]);
    }

    #[test]
    fn resize_to_odd_size() {
        let xs = Tensor::arange(0f32, 6., &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 2, 3))
            .unwrap();
        let ys = resize_nearest(&xs, 3, 5).unwrap();
        assert_eq!(ys.dims(), &[1, 1, 3, 5]);
        let rows = ys
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(rows[0], vec![0., 0., 1., 1., 2.]);
        assert_eq!(rows[2], vec![3., 3., 4., 4., 5.]);
    }
}
