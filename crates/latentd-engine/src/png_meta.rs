//! PNG encoding with the generation parameters embedded, so an image can be
//! reproduced from itself.

use std::io::Cursor;

use latentd_models::pipeline::{GenerationParams, RgbImage};
use serde::{Deserialize, Serialize};

/// Text chunk keyword holding the exact parameters as JSON.
pub const PARAMS_KEYWORD: &str = "latentd";
/// Text chunk keyword holding the human-readable summary many image tools display.
pub const SUMMARY_KEYWORD: &str = "parameters";

/// The parameters recorded in a generated PNG.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageMetadata {
    /// Model id.
    pub model: String,
    /// Prompt.
    pub prompt: String,
    /// Negative prompt, if any.
    pub negative_prompt: Option<String>,
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Denoising steps.
    pub steps: usize,
    /// Guidance scale.
    pub guidance_scale: f64,
    /// Scheduler name.
    pub scheduler: String,
    /// Seed of the job (the whole `(n, C, h, w)` noise draw).
    pub seed: u64,
    /// Number of images in the job.
    pub n: usize,
    /// Index of this image within the job.
    pub index: usize,
    /// DDIM eta.
    pub eta: f64,
    /// `WIDTHxHEIGHT` of the input image, for image-conditioned models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_image: Option<String>,
    /// The strength of an img2img or inpainting job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
    /// Whether an inpainting mask was used.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mask: bool,
}

impl ImageMetadata {
    /// Metadata for image `index` of a job.
    pub fn new(model: &str, params: &GenerationParams, index: usize) -> Self {
        Self {
            model: model.to_string(),
            prompt: params.prompt.clone(),
            negative_prompt: params.negative_prompt.clone(),
            width: params.width,
            height: params.height,
            steps: params.steps,
            guidance_scale: params.guidance_scale,
            scheduler: params.scheduler.to_string(),
            seed: params.seed,
            n: params.n,
            index,
            eta: params.eta,
            input_image: params
                .image
                .as_ref()
                .map(|image| format!("{}x{}", image.width, image.height)),
            strength: params.strength,
            mask: params.mask.is_some(),
        }
    }

    fn summary(&self) -> String {
        let mut s = self.prompt.clone();
        if let Some(neg) = &self.negative_prompt {
            s.push_str("\nNegative prompt: ");
            s.push_str(neg);
        }
        s.push_str(&format!(
            "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}, Batch index: {}/{}",
            self.steps,
            self.scheduler,
            self.guidance_scale,
            self.seed,
            self.width,
            self.height,
            self.model,
            self.index,
            self.n
        ));
        if let Some(input) = &self.input_image {
            s.push_str(&format!(", Input image: {input}"));
        }
        if let Some(strength) = self.strength {
            s.push_str(&format!(", Denoising strength: {strength}"));
        }
        if self.mask {
            s.push_str(", Mask: yes");
        }
        s
    }
}

/// Errors of PNG encoding or decoding.
#[derive(Debug, thiserror::Error)]
pub enum PngError {
    /// The image buffer does not match its stated size.
    #[error("image buffer has {got} bytes, expected {expected}")]
    BadBuffer { got: usize, expected: usize },
    /// The encoder failed.
    #[error("PNG encoding failed: {0}")]
    Encode(#[from] png::EncodingError),
    /// The decoder failed.
    #[error("PNG decoding failed: {0}")]
    Decode(#[from] png::DecodingError),
}

/// Encodes an RGB image as PNG with the metadata in text chunks: `latentd` (JSON)
/// and `parameters` (a one-line summary). Latin-1 text goes in `tEXt` chunks, anything
/// else in UTF-8 `iTXt` chunks.
pub fn encode_png(image: &RgbImage, meta: &ImageMetadata) -> Result<Vec<u8>, PngError> {
    let expected = image.width * image.height * 3;
    if image.data.len() != expected {
        return Err(PngError::BadBuffer {
            got: image.data.len(),
            expected,
        });
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, image.width as u32, image.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        // serde_json only fails on non-string map keys, which this struct has none of.
        let json = serde_json::to_string(meta).unwrap_or_default();
        for (keyword, text) in [(PARAMS_KEYWORD, json), (SUMMARY_KEYWORD, meta.summary())] {
            if text.chars().all(|c| (c as u32) < 256) {
                encoder.add_text_chunk(keyword.to_string(), text)?;
            } else {
                encoder.add_itxt_chunk(keyword.to_string(), text)?;
            }
        }
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&image.data)?;
        writer.finish()?;
    }
    Ok(out)
}

/// A decoded PNG: pixels and its text chunks.
#[derive(Debug, Clone)]
pub struct DecodedPng {
    /// The pixels (RGB8 when the PNG is RGB8).
    pub image: RgbImage,
    /// `(keyword, text)` of every tEXt and iTXt chunk.
    pub texts: Vec<(String, String)>,
}

impl DecodedPng {
    /// The latentd metadata, when present and well-formed.
    pub fn metadata(&self) -> Option<ImageMetadata> {
        self.texts
            .iter()
            .find(|(k, _)| k == PARAMS_KEYWORD)
            .and_then(|(_, v)| serde_json::from_str(v).ok())
    }
}

/// Decodes an RGB8 PNG and its text chunks.
pub fn decode_png(bytes: &[u8]) -> Result<DecodedPng, PngError> {
    let decoder = png::Decoder::new(Cursor::new(bytes));
    let mut reader = decoder.read_info()?;
    let size = reader.output_buffer_size().unwrap_or(0);
    let mut buf = vec![0; size];
    let frame = reader.next_frame(&mut buf)?;
    buf.truncate(frame.buffer_size());
    let info = reader.info();
    let mut texts: Vec<(String, String)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|c| (c.keyword.clone(), c.text.clone()))
        .collect();
    for chunk in &info.utf8_text {
        if let Ok(text) = chunk.get_text() {
            texts.push((chunk.keyword.clone(), text));
        }
    }
    Ok(DecodedPng {
        image: RgbImage {
            width: frame.width as usize,
            height: frame.height as usize,
            data: buf,
        },
        texts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use latentd_models::schedulers::SchedulerKind;

    fn params(prompt: &str) -> GenerationParams {
        GenerationParams {
            prompt: prompt.into(),
            negative_prompt: Some("blurry".into()),
            width: 2,
            height: 1,
            steps: 20,
            guidance_scale: 7.5,
            scheduler: SchedulerKind::EulerAncestral,
            seed: u64::MAX,
            n: 2,
            eta: 0.0,
            image: None,
            mask: None,
            strength: None,
            step_noise_seed: None,
        }
    }

    #[test]
    fn round_trips_pixels_and_metadata() {
        for prompt in ["a red circle", "a café ☕ in 東京"] {
            let image = RgbImage {
                width: 2,
                height: 1,
                data: vec![255, 0, 0, 0, 128, 255],
            };
            let meta = ImageMetadata::new("demo", &params(prompt), 1);
            let bytes = encode_png(&image, &meta).unwrap();
            let decoded = decode_png(&bytes).unwrap();
            assert_eq!(decoded.image, image);
            assert_eq!(decoded.metadata().unwrap(), meta);
            let summary = &decoded
                .texts
                .iter()
                .find(|(k, _)| k == SUMMARY_KEYWORD)
                .unwrap()
                .1;
            assert!(summary.contains("Seed: 18446744073709551615"), "{summary}");
            assert!(summary.contains("Sampler: euler-a"), "{summary}");
        }
    }

    #[test]
    fn wrong_buffer_size_is_an_error() {
        let image = RgbImage {
            width: 2,
            height: 2,
            data: vec![0; 5],
        };
        let meta = ImageMetadata::new("demo", &params("x"), 0);
        assert!(matches!(
            encode_png(&image, &meta),
            Err(PngError::BadBuffer { .. })
        ));
    }
}
