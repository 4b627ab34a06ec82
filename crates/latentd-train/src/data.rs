//! Training data streamed from latentd-demo's scene sampler (train split only).

use candle_core::{Device, Tensor};
use latentd_demo::{caption, render, sample_split, RgbImage, Rng, SamplerConfig, Split};

use crate::Result;

/// Images and captions of one batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[B, 3, side, side]` in `[-1, 1]`.
    pub images: Tensor,
    /// One canonical caption per image.
    pub captions: Vec<String>,
    /// `[B, 1, side, side]`: 1 where a pixel differs from the scene's background
    /// colour (the objects and their anti-aliased edges), else 0.
    pub foreground: Tensor,
}

/// Batch `index` of the training stream named by `seed`: `size` train-split
/// scenes rendered at `side` pixels. Each batch is independent of the others.
pub fn batch(
    seed: u64,
    index: u64,
    size: usize,
    sampler: &SamplerConfig,
    side: u32,
    device: &Device,
) -> Result<Batch> {
    let mut rng = Rng::for_item(seed, index);
    let mut pixels = Vec::with_capacity(size * 3 * (side * side) as usize);
    let mut captions = Vec::with_capacity(size);
    let mut foreground = Vec::with_capacity(size * (side * side) as usize);
    for _ in 0..size {
        let scene = sample_split(&mut rng, sampler, Split::Train)?;
        let image = render(&scene, side)?;
        let background = scene.background.rgb();
        foreground.extend(image.pixels().map(|p| f32::from(u8::from(p != background))));
        pixels.extend(to_planar(&image));
        captions.push(caption(&scene));
    }
    let side = side as usize;
    let images = Tensor::from_vec(pixels, (size, 3, side, side), device)?;
    let foreground = Tensor::from_vec(foreground, (size, 1, side, side), device)?;
    Ok(Batch {
        images,
        captions,
        foreground,
    })
}

/// An RGB8 image as planar `f32` in `[-1, 1]` (channel, row, column).
pub fn to_planar(image: &RgbImage) -> Vec<f32> {
    let bytes = image.as_bytes();
    (0..3)
        .flat_map(|c| bytes.iter().skip(c).step_by(3))
        .map(|&v| f32::from(v) / 127.5 - 1.0)
        .collect()
}

/// Standard normal values of `shape` from `rng`, as a tensor.
pub fn normal(rng: &mut Rng, shape: &[usize], device: &Device) -> Result<Tensor> {
    let count = shape.iter().product();
    let values: Vec<f32> = (0..count).map(|_| rng.normal() as f32).collect();
    Ok(Tensor::from_vec(values, shape, device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_reproducible_and_in_range() {
        let cfg = SamplerConfig::default();
        let a = batch(7, 3, 4, &cfg, 16, &Device::Cpu).unwrap();
        let b = batch(7, 3, 4, &cfg, 16, &Device::Cpu).unwrap();
        let c = batch(7, 4, 4, &cfg, 16, &Device::Cpu).unwrap();
        assert_eq!(a.images.dims(), &[4, 3, 16, 16]);
        assert_eq!(a.captions, b.captions);
        assert_ne!(a.captions, c.captions);
        let flat: Vec<f32> = a.images.flatten_all().unwrap().to_vec1().unwrap();
        assert!(flat.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert!(a
            .captions
            .iter()
            .all(|c| latentd_demo::split_of(c) == Split::Train));
    }

    #[test]
    fn planar_layout() {
        let img = RgbImage::filled(16, 16, [255, 0, 127]).unwrap();
        let planar = to_planar(&img);
        assert_eq!(planar.len(), 768);
        assert_eq!(planar[0], 1.0);
        assert_eq!(planar[256], -1.0);
        assert!(planar[512].abs() < 0.01);
    }
}
