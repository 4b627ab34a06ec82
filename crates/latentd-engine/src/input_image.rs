//! Input images sent with a request: base64 or data URLs of PNG, JPEG or WebP files,
//! decoded to RGB with their size bounded before any pixel is decoded.

use std::io::Cursor;

use base64::Engine as _;
use image::{ImageFormat, ImageReader, Limits};
use latentd_models::pipeline::RgbImage;

use crate::error::ValidationError;

/// Largest width or height of an input image accepted, in pixels.
pub const MAX_INPUT_SIDE: u32 = 4096;

/// Decodes a base64 string (or a `data:image/...;base64,` URL) holding an image file.
pub fn decode_base64(text: &str) -> Result<RgbImage, ValidationError> {
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
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload.as_bytes())
        .map_err(|e| invalid(&format!("not valid base64: {e}")))?;
    decode(&bytes)
}

/// Decodes a PNG, JPEG or WebP file to 8-bit RGB (alpha is dropped). The header's size
/// is checked against [`MAX_INPUT_SIDE`] before decoding, so a file claiming a huge
/// size costs nothing.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, ValidationError> {
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
    let decoded = reader
        .decode()
        .map_err(|e| invalid(&format!("cannot decode the image: {e}")))?;
    let rgb = decoded.into_rgb8();
    Ok(RgbImage {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        data: rgb.into_raw(),
    })
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
