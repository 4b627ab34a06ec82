//! diffusers' `VQModel`: the vector-quantised autoencoder of the CompVis LDMs.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::check_input;
use super::coder::{Decoder, Encoder};
use super::quantizer::{VectorQuantizer, VectorQuantizerConfig};
use super::vq_config::VQModelConfig;
use crate::nn::{conv2d, Conv2d};
use crate::{Error, Result};

/// Encodes images to latents, snaps latents to a learned codebook, and decodes
/// (quantized) latents to images.
#[derive(Debug, Clone)]
pub struct VQModel {
    encoder: Encoder,
    quant_conv: Conv2d,
    quantizer: VectorQuantizer,
    post_quant_conv: Conv2d,
    decoder: Decoder,
    dtype: DType,
    config: VQModelConfig,
}

impl VQModel {
    /// Builds the model from `cfg`, loading weights named as diffusers names them
    /// (`encoder.*`, `quant_conv`, `quantize.embedding`, `post_quant_conv`,
    /// `decoder.*`) from `vb`.
    pub fn new(vb: VarBuilder, cfg: &VQModelConfig) -> Result<Self> {
        cfg.check()?;
        let (latent, embed) = (cfg.latent_channels, cfg.embed_dim());
        let coder = cfg.coder();
        let quantizer = VectorQuantizerConfig {
            num_embeddings: cfg.num_vq_embeddings,
            embed_dim: embed,
            remap: None,
            sane_index_shape: false,
        };
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), &coder, cfg.in_channels, latent)?,
            quant_conv: conv2d(vb.pp("quant_conv"), latent, embed, 1, 1, 0)?,
            quantizer: VectorQuantizer::new(vb.pp("quantize"), &quantizer)?,
            post_quant_conv: conv2d(vb.pp("post_quant_conv"), embed, latent, 1, 1, 0)?,
            decoder: Decoder::new(vb.pp("decoder"), &coder, latent, cfg.out_channels)?,
            dtype: vb.dtype(),
            config: cfg.clone(),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &VQModelConfig {
        &self.config
    }

    /// The dtype the autoencoder computes in (its weights').
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The codebook and its nearest-neighbour search.
    pub fn quantizer(&self) -> &VectorQuantizer {
        &self.quantizer
    }

    /// Spatial size ratio between images and latents: `2^(levels - 1)`.
    pub fn downsampling_factor(&self) -> usize {
        self.config.downsampling_factor()
    }

    /// Images `[B, in_channels, H, W]` in `[-1, 1]` -> latents
    /// `[B, vq_embed_dim, floor(H / f), floor(W / f)]` before quantization
    /// (diffusers' `encode(x).latents`), `f` the
    /// [downsampling factor](Self::downsampling_factor); `H, W >= f`.
    pub fn encode(&self, images: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("vq-encode").entered();
        check_input(images, self.config.in_channels, self.dtype, "images")?;
        let hs = self.encoder.forward(images)?;
        self.quant_conv.forward(&hs)
    }

    /// Latents `[B, vq_embed_dim, h, w]` -> `(quantized, indices)`: the nearest
    /// codebook entries, same shape, and their indices, `u32` `[B * h * w]` in
    /// `(b, y, x)` order (see [`VectorQuantizer::quantize`]).
    pub fn quantize(&self, latents: &Tensor) -> Result<(Tensor, Tensor)> {
        let _span = tracing::trace_span!("vq-quantize").entered();
        self.check_latents(latents)?;
        self.quantizer.quantize(latents)
    }

    /// Latents `[B, vq_embed_dim, h, w]` -> raw decoder output
    /// `[B, out_channels, h * f, w * f]` (roughly `[-1, 1]`, not clamped),
    /// quantizing the latents first as diffusers' `decode` does by default.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.decode_with(latents, false)
    }

    /// diffusers' `decode(latents, force_not_quantize)`: like [`decode`](Self::decode),
    /// but with `force_not_quantize` the latents go to the decoder as they are.
    ///
    /// With `lookup_from_codebook` set, diffusers reads unquantized input as codebook
    /// indices; that is [`decode_indices`](Self::decode_indices) here, and
    /// `force_not_quantize` on such a model is an [`Error::InvalidArgument`].
    pub fn decode_with(&self, latents: &Tensor, force_not_quantize: bool) -> Result<Tensor> {
        let _span = tracing::trace_span!("vq-decode").entered();
        self.check_latents(latents)?;
        if !force_not_quantize {
            let (quantized, _) = self.quantizer.quantize(latents)?;
            return self.decode_quantized(&quantized);
        }
        if self.config.lookup_from_codebook {
            return Err(Error::InvalidArgument(
                "this VQModel decodes unquantized input from codebook indices \
                 (lookup_from_codebook): use decode_indices"
                    .into(),
            ));
        }
        self.decode_quantized(latents)
    }

    /// Codebook indices (any integer dtype, `b * h * w` of them in `(b, y, x)`
    /// order) -> images `[b, out_channels, h * f, w * f]`: diffusers'
    /// `decode(indices, force_not_quantize=True, shape=(b, h, w, vq_embed_dim))`
    /// of a `lookup_from_codebook` model (usable with any model).
    pub fn decode_indices(&self, indices: &Tensor, shape: (usize, usize, usize)) -> Result<Tensor> {
        let _span = tracing::trace_span!("vq-decode").entered();
        let latents = self.quantizer.codebook_entries(indices, shape)?;
        self.decode_quantized(&latents.to_dtype(self.dtype)?)
    }

    /// `post_quant_conv` and the decoder.
    fn decode_quantized(&self, latents: &Tensor) -> Result<Tensor> {
        let hs = self.post_quant_conv.forward(latents)?;
        self.decoder.forward(&hs)
    }

    fn check_latents(&self, latents: &Tensor) -> Result<()> {
        check_input(latents, self.config.embed_dim(), self.dtype, "latents")
    }
}
