//! The autoencoders: diffusers' `AutoencoderKL` (the KL-regularised autoencoder
//! of Stable Diffusion) and `VQModel` (the vector-quantised one of the CompVis
//! LDMs), sharing one encoder and decoder.

mod blocks;
mod coder;
pub mod config;
mod quantizer;
mod vq;
pub mod vq_config;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

pub use config::AutoencoderKLConfig;
pub use quantizer::{VectorQuantizer, VectorQuantizerConfig};
pub use vq::VQModel;
pub use vq_config::VQModelConfig;

use crate::nn::{conv2d, Conv2d};
use crate::{Error, Result, TorchRng};
use coder::{Decoder, Encoder};

/// The encoder's output distribution: a Gaussian with diagonal covariance per latent.
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    /// `[B, latent_channels, h, w]`.
    pub mean: Tensor,
    /// `exp(logvar / 2)`.
    pub std: Tensor,
    /// Log-variance, clamped to `[-30, 20]` as diffusers does.
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    /// Splits encoder moments `[B, 2L, h, w]` into mean and log-variance.
    pub fn from_moments(moments: &Tensor) -> Result<Self> {
        let channels = moments.dim(1)?;
        let latent = channels / 2;
        let mean = moments.narrow(1, 0, latent)?.contiguous()?;
        let logvar = moments.narrow(1, latent, latent)?.clamp(-30f32, 20f32)?;
        let std = (&logvar * 0.5)?.exp()?;
        Ok(Self { mean, std, logvar })
    }

    /// The distribution with its tensors in `dtype` (the sampler's state is `f32`).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Self {
            mean: self.mean.to_dtype(dtype)?,
            std: self.std.to_dtype(dtype)?,
            logvar: self.logvar.to_dtype(dtype)?,
        })
    }

    /// `mean + std * noise`, with `noise` standard normal of the mean's shape
    /// (drawn by the caller, e.g. with the torch-compatible RNG).
    pub fn sample_with(&self, noise: &Tensor) -> Result<Tensor> {
        if noise.dims() != self.mean.dims() {
            return Err(Error::InvalidArgument(format!(
                "noise is {:?}, the latent distribution is {:?}",
                noise.dims(),
                self.mean.dims()
            )));
        }
        Ok((&self.mean + (&self.std * noise.to_dtype(self.mean.dtype())?)?)?)
    }

    /// `mean + std * noise` with the noise drawn from `rng` in one call over the
    /// whole shape, as diffusers' `latent_dist.sample(generator)` does on CPU.
    pub fn sample(&self, rng: &mut TorchRng) -> Result<Tensor> {
        let noise = rng.randn_tensor(self.mean.dims(), self.mean.device())?;
        self.sample_with(&noise)
    }
}

/// Encodes images to a latent distribution and decodes latents to images.
#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    dtype: DType,
    config: AutoencoderKLConfig,
}

impl AutoencoderKL {
    /// Builds the model from `cfg`, loading weights named as diffusers names them
    /// (`encoder.*`, `decoder.*`, `quant_conv`, `post_quant_conv`) from `vb`.
    pub fn new(vb: VarBuilder, cfg: &AutoencoderKLConfig) -> Result<Self> {
        cfg.check()?;
        let latent = cfg.latent_channels;
        let quant_conv = if cfg.use_quant_conv {
            Some(conv2d(
                vb.pp("quant_conv"),
                2 * latent,
                2 * latent,
                1,
                1,
                0,
            )?)
        } else {
            None
        };
        let post_quant_conv = if cfg.use_post_quant_conv {
            Some(conv2d(vb.pp("post_quant_conv"), latent, latent, 1, 1, 0)?)
        } else {
            None
        };
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), &cfg.coder(), cfg.in_channels, 2 * latent)?,
            decoder: Decoder::new(vb.pp("decoder"), &cfg.coder(), latent, cfg.out_channels)?,
            quant_conv,
            post_quant_conv,
            dtype: vb.dtype(),
            config: cfg.clone(),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &AutoencoderKLConfig {
        &self.config
    }

    /// The dtype the autoencoder computes in (its weights').
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Spatial size ratio between images and latents: `2^(levels - 1)`.
    pub fn downsampling_factor(&self) -> usize {
        self.config.downsampling_factor()
    }

    /// Images `[B, in_channels, H, W]` in `[-1, 1]` -> the latent distribution
    /// `[B, latent_channels, floor(H / f), floor(W / f)]` with `f` the
    /// [downsampling factor](Self::downsampling_factor); `H, W >= f`.
    /// Latents are unscaled: multiply by `scaling_factor` before the UNet.
    pub fn encode(&self, images: &Tensor) -> Result<DiagonalGaussian> {
        let _span = tracing::trace_span!("vae-encode").entered();
        check_input(images, self.config.in_channels, self.dtype, "images")?;
        let moments = self.encoder.forward(images)?;
        let moments = match &self.quant_conv {
            Some(conv) => conv.forward(&moments)?,
            None => moments,
        };
        DiagonalGaussian::from_moments(&moments)
    }

    /// Latents `[B, latent_channels, h, w]` (already divided by `scaling_factor`)
    /// -> raw decoder output `[B, out_channels, h * f, w * f]` (roughly `[-1, 1]`,
    /// not clamped).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("vae-decode").entered();
        check_input(latents, self.config.latent_channels, self.dtype, "latents")?;
        let latents = match &self.post_quant_conv {
            Some(conv) => conv.forward(latents)?,
            None => latents.clone(),
        };
        self.decoder.forward(&latents)
    }
}

/// Rejects autoencoder inputs that are not `[B, channels, H, W]` (all >= 1) in `dtype`.
fn check_input(xs: &Tensor, channels: usize, dtype: DType, name: &str) -> Result<()> {
    let ok = match xs.dims() {
        &[b, c, h, w] => b > 0 && c == channels && h > 0 && w > 0,
        _ => false,
    };
    if !ok {
        return Err(Error::InvalidArgument(format!(
            "{name} must be [B, {channels}, H, W] with B, H, W >= 1, got {:?}",
            xs.dims()
        )));
    }
    if xs.dtype() != dtype {
        return Err(Error::InvalidArgument(format!(
            "{name} are {:?}, the autoencoder computes in {dtype:?}",
            xs.dtype(),
        )));
    }
    Ok(())
}
