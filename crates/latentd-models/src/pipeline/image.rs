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

/// An inpainting mask, one 8-bit luma value per pixel: bright (>= 128) pixels are
/// repainted, dark ones kept.
#[derive(Clone, PartialEq, Eq)]
pub struct Mask {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height` luma bytes, row-major.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Mask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mask")
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

impl Mask {
    /// The luma of an RGB image, as PIL's `convert("L")` computes it (ITU-R 601-2 in
    /// 16-bit fixed point, rounded), which is how diffusers reads a colour mask.
    pub fn from_rgb(image: &RgbImage) -> Self {
        let data = image
            .data
            .chunks_exact(3)
            .map(|p| {
                let l = u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471;
                ((l + 0x8000) >> 16) as u8
            })
            .collect();
        Self {
            width: image.width,
            height: image.height,
            data,
        }
    }

    /// A mask that repaints every pixel.
    pub fn full(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            data: vec![255; width * height],
        }
    }

    /// The binarised mask `[1, 1, H, W]` (1 = repaint) as diffusers' mask processor
    /// makes it: `x / 255`, then 0 below 0.5 and 1 from 0.5 up.
    pub fn to_tensor(&self, device: &Device, dtype: DType) -> Result<Tensor> {
        if self.data.len() != self.width * self.height || self.width == 0 || self.height == 0 {
            return Err(Error::InvalidArgument(format!(
                "a mask of {}x{} needs {} bytes, got {}",
                self.width,
                self.height,
                self.width * self.height,
                self.data.len()
            )));
        }
        let values: Vec<f32> = self
            .data
            .iter()
            .map(|&v| {
                if f32::from(v) / 255.0 >= 0.5 {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        Ok(Tensor::from_vec(values, (1, 1, self.height, self.width), device)?.to_dtype(dtype)?)
    }
}

/// Nearest-neighbour downsampling of `[n, c, H, W]` by an integer `factor`, as torch's
/// `interpolate(mode="nearest")` to `(H / factor, W / factor)` picks pixels.
pub fn downsample_nearest(t: &Tensor, factor: usize) -> Result<Tensor> {
    let (n, c, h, w) = t.dims4()?;
    let factor = factor.max(1);
    let (oh, ow) = (h / factor, w / factor);
    // torch: src = floor(dst * (in / out)).
    let rows: Vec<u32> = (0..oh)
        .map(|y| ((y as f64 * (h as f64 / oh as f64)).floor() as usize).min(h - 1) as u32)
        .collect();
    let cols: Vec<u32> = (0..ow)
        .map(|x| ((x as f64 * (w as f64 / ow as f64)).floor() as usize).min(w - 1) as u32)
        .collect();
    let device = t.device();
    let t = t.index_select(&Tensor::new(rows.as_slice(), device)?, 2)?;
    let t = t.index_select(&Tensor::new(cols.as_slice(), device)?, 3)?;
    debug_assert_eq!(t.dims4()?, (n, c, oh, ow));
    Ok(t)
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
    fn masks_follow_pil_luma_and_diffusers_binarisation() {
        let rgb = RgbImage {
            width: 4,
            height: 1,
            data: vec![255, 255, 255, 0, 0, 0, 128, 128, 128, 255, 0, 0],
        };
        let mask = Mask::from_rgb(&rgb);
        // PIL: L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16; red alone is 76.
        assert_eq!(mask.data, vec![255, 0, 128, 76]);
        let t = mask.to_tensor(&Device::Cpu, DType::F32).unwrap();
        let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values, vec![1.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn nearest_downsampling_picks_the_top_left_pixel_of_each_cell() {
        let t = Tensor::arange(0f32, 16.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 4, 4))
            .unwrap();
        let d = downsample_nearest(&t, 2).unwrap();
        let values = d.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values, vec![0.0, 2.0, 8.0, 10.0]);
    }

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
