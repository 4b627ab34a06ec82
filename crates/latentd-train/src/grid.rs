//! A PNG contact sheet of generated images: one row per prompt, one column per seed.

use std::path::Path;

use latentd_models::pipeline::{RgbImage, StableDiffusion};

use crate::error::io;
use crate::generate::{generate, Job};
use crate::{Error, Result};

/// Pixels between cells.
const GAP: usize = 2;

/// Generates `prompts` x `seeds` at `guidance` and writes them as one PNG,
/// each image enlarged `zoom` times (nearest neighbour).
pub fn write_grid(
    pipe: &StableDiffusion,
    prompts: &[&str],
    seeds: &[u64],
    guidance: f64,
    zoom: usize,
    path: &Path,
) -> Result<()> {
    let jobs: Vec<Job> = prompts
        .iter()
        .flat_map(|p| {
            seeds.iter().map(move |&seed| Job {
                prompt: (*p).to_owned(),
                seed,
            })
        })
        .collect();
    let images = generate(pipe, &jobs, guidance, 16)?;
    let sheet = contact_sheet(&images, seeds.len(), zoom)?;
    write_png(&sheet, path)
}

/// Lays images (all the same size) out in rows of `columns`, on white.
pub fn contact_sheet(images: &[RgbImage], columns: usize, zoom: usize) -> Result<RgbImage> {
    let first = images
        .first()
        .ok_or_else(|| Error::Config("no images for the contact sheet".into()))?;
    let (w, h, zoom, columns) = (first.width, first.height, zoom.max(1), columns.max(1));
    let rows = images.len().div_ceil(columns);
    let (cell_w, cell_h) = (w * zoom + GAP, h * zoom + GAP);
    let (width, height) = (columns * cell_w + GAP, rows * cell_h + GAP);
    let mut data = vec![255u8; width * height * 3];
    for (index, image) in images.iter().enumerate() {
        if (image.width, image.height) != (w, h) {
            return Err(Error::Config("contact sheet images differ in size".into()));
        }
        let (x0, y0) = (
            GAP + (index % columns) * cell_w,
            GAP + (index / columns) * cell_h,
        );
        for y in 0..h * zoom {
            for x in 0..w * zoom {
                let src = ((y / zoom) * w + x / zoom) * 3;
                let dst = ((y0 + y) * width + x0 + x) * 3;
                data[dst..dst + 3].copy_from_slice(&image.data[src..src + 3]);
            }
        }
    }
    Ok(RgbImage {
        width,
        height,
        data,
    })
}

/// Writes an RGB8 PNG.
pub fn write_png(image: &RgbImage, path: &Path) -> Result<()> {
    let file = std::fs::File::create(path).map_err(io(path))?;
    let mut encoder = png::Encoder::new(
        std::io::BufWriter::new(file),
        image.width as u32,
        image.height as u32,
    );
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let png_error = |e: png::EncodingError| Error::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    };
    let mut writer = encoder.write_header().map_err(png_error)?;
    writer.write_image_data(&image.data).map_err(png_error)?;
    writer.finish().map_err(png_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheet_layout() {
        let red = RgbImage {
            width: 2,
            height: 2,
            data: [255, 0, 0].repeat(4),
        };
        let sheet = contact_sheet(&[red.clone(), red.clone(), red], 2, 3).unwrap();
        // 2 columns of 6 px plus 3 gaps; 2 rows likewise.
        assert_eq!((sheet.width, sheet.height), (18, 18));
        let px = |x: usize, y: usize| &sheet.data[(y * 18 + x) * 3..(y * 18 + x) * 3 + 3];
        assert_eq!(px(2, 2), [255, 0, 0]);
        assert_eq!(px(0, 0), [255, 255, 255]);
        // The empty fourth cell stays white.
        assert_eq!(px(12, 12), [255, 255, 255]);
    }
}
