//! Input images and masks sent with a request: base64 or data URLs of PNG, JPEG or WebP
//! files (or the raw files of a multipart form), decoded with their size bounded before
//! any pixel is decoded, and resized to the output size.

use std::io::Cursor;

use base64::Engine as _;
use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use latentd_models::pipeline::{Mask, RgbImage};

use crate::error::ValidationError;

/// Largest width or height of an input image accepted, in pixels.
pub const MAX_INPUT_SIDE: u32 = 4096;

/// Decodes a base64 string (or a `data:image/...;base64,` URL) holding an image file.
pub fn decode_base64(text: &str) -> Result<RgbImage, ValidationError> {
    decode(&base64_bytes(text)?)
}

/// Decodes a base64 mask file: its luma, bright = repaint (alpha is ignored).
pub fn decode_base64_mask(text: &str) -> Result<Mask, ValidationError> {
    decode_mask(&base64_bytes(text).map_err(mask_error)?)
}

/// Decodes a mask file: its luma as PIL's `convert("L")` computes it (bright = repaint).
pub fn decode_mask(bytes: &[u8]) -> Result<Mask, ValidationError> {
    Ok(Mask::from_rgb(&rgb(
        decode_image(bytes).map_err(mask_error)?
    )))
}

/// A failure to read a mask, reported as the mask's rather than the image's.
fn mask_error(e: ValidationError) -> ValidationError {
    match e {
        ValidationError::Image(message) => ValidationError::Mask(message),
        other => other,
    }
}

/// Decodes an image file to RGB, with the mask of its fully transparent pixels (the
/// OpenAI Images API's edit area) when it has an alpha channel with any.
pub fn decode_with_alpha(bytes: &[u8]) -> Result<(RgbImage, Option<Mask>), ValidationError> {
    let image = decode_image(bytes)?;
    let mask = transparent_area(&image);
    Ok((rgb(image), mask))
}

/// Decodes an OpenAI-style mask file: its fully transparent pixels are repainted. A mask
/// without an alpha channel marks nothing, which is refused.
pub fn decode_alpha_mask(bytes: &[u8]) -> Result<Mask, ValidationError> {
    let image = decode_image(bytes).map_err(mask_error)?;
    if !image.color().has_alpha() {
        return Err(ValidationError::Mask(
            "the mask has no alpha channel: its fully transparent pixels mark the area to edit"
                .into(),
        ));
    }
    let (width, height) = (image.width() as usize, image.height() as usize);
    Ok(transparent_area(&image).unwrap_or_else(|| Mask {
        width,
        height,
        data: vec![0; width * height],
    }))
}

/// 255 where the alpha channel is 0, else 0; `None` for images without transparency.
fn transparent_area(image: &DynamicImage) -> Option<Mask> {
    if !image.color().has_alpha() {
        return None;
    }
    let rgba = image.to_rgba8();
    let data: Vec<u8> = rgba
        .pixels()
        .map(|p| if p.0[3] == 0 { 255 } else { 0 })
        .collect();
    Some(Mask {
        width: rgba.width() as usize,
        height: rgba.height() as usize,
        data,
    })
}

/// The image resized to `width` x `height` with a Lanczos filter (itself when it has
/// that size already).
pub fn resize_image(
    image: &RgbImage,
    width: usize,
    height: usize,
) -> Result<RgbImage, ValidationError> {
    if (image.width, image.height) == (width, height) {
        return Ok(image.clone());
    }
    let buffer =
        image::RgbImage::from_raw(image.width as u32, image.height as u32, image.data.clone())
            .ok_or_else(|| invalid("the image's pixels do not match its size"))?;
    let resized =
        image::imageops::resize(&buffer, width as u32, height as u32, FilterType::Lanczos3);
    Ok(RgbImage {
        width,
        height,
        data: resized.into_raw(),
    })
}

/// The mask resized to `width` x `height` with a Lanczos filter (binarised later).
pub fn resize_mask(mask: &Mask, width: usize, height: usize) -> Result<Mask, ValidationError> {
    if (mask.width, mask.height) == (width, height) {
        return Ok(mask.clone());
    }
    let buffer =
        image::GrayImage::from_raw(mask.width as u32, mask.height as u32, mask.data.clone())
            .ok_or_else(|| invalid("the mask's pixels do not match its size"))?;
    let resized =
        image::imageops::resize(&buffer, width as u32, height as u32, FilterType::Lanczos3);
    Ok(Mask {
        width,
        height,
        data: resized.into_raw(),
    })
}

fn base64_bytes(text: &str) -> Result<Vec<u8>, ValidationError> {
    let payload = match text.trim().strip_prefix("data:") {
        Some(url) => {
            let (kind, data) = url
                .split_once(',')
                .ok_or_else(|| invalid("a data URL needs a `,` before its data"))?;
            if !kind.ends_with(";base64") {
                return Err(invalid("a data URL must be base64-encoded (`;base64,`)"));
            }
            data
        }
        None => text.trim(),
    };
    base64::engine::general_purpose::STANDARD
        .decode(payload.as_bytes())
        .map_err(|e| invalid(&format!("not valid base64: {e}")))
}

/// Decodes a PNG, JPEG or WebP file to 8-bit RGB (alpha is dropped, as PIL's
/// `convert("RGB")` does).
pub fn decode(bytes: &[u8]) -> Result<RgbImage, ValidationError> {
    Ok(rgb(decode_image(bytes)?))
}

fn rgb(image: DynamicImage) -> RgbImage {
    let rgb = image.into_rgb8();
    RgbImage {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        data: rgb.into_raw(),
    }
}

/// Decodes a PNG, JPEG or WebP file. The header's size is checked against
/// [`MAX_INPUT_SIDE`] before decoding, so a file claiming a huge size costs nothing.
fn decode_image(bytes: &[u8]) -> Result<DynamicImage, ValidationError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| invalid(&format!("cannot read the image: {e}")))?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP) => {}
        Some(other) => {
            return Err(invalid(&format!(
                "{other:?} images are not accepted; send PNG, JPEG or WebP"
            )))
        }
        None => return Err(invalid("not a PNG, JPEG or WebP file")),
    }
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| invalid(&format!("cannot read the image header: {e}")))?;
    if width == 0 || height == 0 || width > MAX_INPUT_SIDE || height > MAX_INPUT_SIDE {
        return Err(invalid(&format!(
            "{width}x{height} pixels; each side must be between 1 and {MAX_INPUT_SIDE}"
        )));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| invalid(&format!("cannot read the image: {e}")))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_INPUT_SIDE);
    limits.max_image_height = Some(MAX_INPUT_SIDE);
    // RGBA at 16 bits per channel is the largest buffer a decoder may need.
    limits.max_alloc = Some(u64::from(width) * u64::from(height) * 8 + (1 << 20));
    reader.limits(limits);
    reader
        .decode()
        .map_err(|e| invalid(&format!("cannot decode the image: {e}")))
}

fn invalid(message: &str) -> ValidationError {
    ValidationError::Image(message.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32, pixels: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(pixels).unwrap();
        writer.finish().unwrap();
        out
    }

    /// The CRC-32 of PNG chunks.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn decodes_png_as_base64_and_data_url() {
        let pixels = [1, 2, 3, 4, 5, 6];
        let file = png(2, 1, &pixels);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&file);
        for text in [b64.clone(), format!("data:image/png;base64,{b64}")] {
            let image = decode_base64(&text).unwrap();
            assert_eq!((image.width, image.height), (2, 1));
            assert_eq!(image.data, pixels);
        }
    }

    fn png_rgba(width: u32, height: u32, pixels: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(pixels).unwrap();
        writer.finish().unwrap();
        out
    }

    #[test]
    fn masks_come_from_luma_or_from_transparency() {
        let file = png(2, 1, &[255, 255, 255, 10, 10, 10]);
        assert_eq!(decode_mask(&file).unwrap().data, vec![255, 10]);
        // No alpha: no edit area of its own, and refused as an OpenAI mask.
        assert_eq!(decode_with_alpha(&file).unwrap().1, None);
        assert!(decode_alpha_mask(&file).is_err());
        let rgba = png_rgba(3, 1, &[1, 2, 3, 0, 4, 5, 6, 255, 7, 8, 9, 1]);
        let (image, mask) = decode_with_alpha(&rgba).unwrap();
        assert_eq!(image.data, vec![1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(mask.unwrap().data, vec![255, 0, 0]);
        assert_eq!(decode_alpha_mask(&rgba).unwrap().data, vec![255, 0, 0]);
    }

    #[test]
    fn resizing_keeps_same_size_images_untouched() {
        let image = RgbImage {
            width: 4,
            height: 2,
            data: (0..24).collect(),
        };
        assert_eq!(resize_image(&image, 4, 2).unwrap(), image);
        let smaller = resize_image(&image, 2, 1).unwrap();
        assert_eq!(
            (smaller.width, smaller.height, smaller.data.len()),
            (2, 1, 6)
        );
        let mask = Mask::full(4, 2);
        assert_eq!(resize_mask(&mask, 8, 4).unwrap().data, vec![255; 32]);
    }

    #[test]
    fn rejects_garbage_and_oversized_headers_before_decoding() {
        assert!(matches!(
            decode(b"not an image"),
            Err(ValidationError::Image(_))
        ));
        assert!(decode_base64("%%%").is_err());
        assert!(decode_base64("data:image/png,abc").is_err());
        // A valid header claiming 100000 x 100000 pixels with almost no data.
        let mut bomb = png(1, 1, &[0, 0, 0]);
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode(&bomb).unwrap_err().to_string();
        assert!(err.contains("100000x100000"), "{err}");
    }
}
