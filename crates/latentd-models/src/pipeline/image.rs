//! 8-bit RGB images and their conversion to and from the models' `[-1, 1]` tensors.

use candle_core::{DType, Device, Tensor, D};

use crate::{Error, Result};

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height * 3` bytes.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RgbImage")
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

impl RgbImage {
    /// The image as `[1, 3, H, W]` in `[-1, 1]`: `2 * (x / 255) - 1`, as diffusers'
    /// pipelines preprocess 8-bit images.
    pub fn to_tensor(&self, device: &Device, dtype: DType) -> Result<Tensor> {
        if self.data.len() != self.width * self.height * 3 || self.width == 0 || self.height == 0 {
            return Err(Error::InvalidArgument(format!(
                "an RGB image of {}x{} needs {} bytes, got {}",
                self.width,
                self.height,
                self.width * self.height * 3,
                self.data.len()
            )));
        }
        let values: Vec<f32> = self
            .data
            .iter()
            .map(|&v| 2.0 * (v as f32 / 255.0) - 1.0)
            .collect();
        let hwc = Tensor::from_vec(values, (1, self.height, self.width, 3), device)?;
        Ok(hwc.permute((0, 3, 1, 2))?.contiguous()?.to_dtype(dtype)?)
    }
}

/// Converts decoder output `[n, 3, H, W]` in [-1, 1] to 8-bit images the way diffusers'
/// image processor does: `(x / 2 + 0.5).clamp(0, 1)`, then `round(x * 255)`.
pub fn to_rgb8(images: &Tensor) -> Result<Vec<RgbImage>> {
    let (n, c, h, w) = images.dims4()?;
    if c != 3 {
        return Err(Error::InvalidArgument(format!(
            "expected 3 image channels, got {c}"
        )));
    }
    let unit = ((images.to_dtype(DType::F32)? / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
    // NHWC so each image's bytes are contiguous, row-major RGB.
    let nhwc = unit.permute((0, 2, 3, 1))?.contiguous()?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let values = nhwc.get(i)?.flatten_all()?.to_vec1::<f32>()?;
        let data = values.iter().map(|v| (v * 255.0).round() as u8).collect();
        out.push(RgbImage {
            width: w,
            height: h,
            data,
        });
    }
    Ok(out)
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let d = (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?.abs()?;
    Ok(d.flatten_all()?.max(D::Minus1)?.to_scalar::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixels_round_trip_through_tensors() {
        let image = RgbImage {
            width: 2,
            height: 1,
            data: vec![0, 128, 255, 10, 20, 30],
        };
        let t = image.to_tensor(&Device::Cpu, DType::F32).unwrap();
        assert_eq!(t.dims(), &[1, 3, 1, 2]);
        assert_eq!(to_rgb8(&t).unwrap()[0], image);
        let bad = RgbImage {
            width: 2,
            height: 2,
            data: vec![0; 3],
        };
        assert!(bad.to_tensor(&Device::Cpu, DType::F32).is_err());
    }
}
