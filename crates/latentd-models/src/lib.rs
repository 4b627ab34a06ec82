//! Latent diffusion models on candle: pure, synchronous model code.
//!
//! Nothing here knows about tokio or HTTP; the engine crate drives these types
//! from its own worker threads.

pub mod checkpoint;
pub mod device;
pub mod diffusers_config;
pub mod error;
pub mod interrupt;
pub mod nn;
pub mod pipeline;
pub mod rng;
pub mod schedulers;
pub mod text;
pub mod unet;
pub mod unet2d;
pub mod vae;

pub use error::{Error, Result};
pub use rng::TorchRng;
pub use unet::{UNet2DConditionConfig, UNet2DConditionModel};
pub use unet2d::{UNet2DConfig, UNet2DModel};
pub use vae::{AutoencoderKL, AutoencoderKLConfig, DiagonalGaussian, VQModel, VQModelConfig};
