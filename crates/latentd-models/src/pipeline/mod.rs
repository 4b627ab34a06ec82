//! The Stable Diffusion pipeline: loading a diffusers folder and sampling with it.

mod denoiser;
mod model_index;
mod params;
mod stable_diffusion;
mod weights;

pub use denoiser::{Denoiser, ModelInput};
pub use model_index::{ModelIndex, SUPPORTED_PIPELINES};
pub use params::GenerationParams;
pub use stable_diffusion::{max_abs_diff, to_rgb8, ModelInfo, RgbImage, StableDiffusion};
pub use weights::WeightFiles;
