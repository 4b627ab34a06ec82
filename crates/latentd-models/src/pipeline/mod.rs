//! Pipelines: the model abstraction, loading diffusers folders and sampling with them.

mod denoiser;
mod image;
mod ldm_text;
mod ldm_vq;
mod model;
mod model_index;
mod params;
mod precision;
mod registry;
mod run;
mod stable_diffusion;
mod weights;

pub use denoiser::{Denoiser, ModelInput};
pub use image::{downsample_nearest, max_abs_diff, to_rgb8, Mask, RgbImage};
pub use ldm_text::LdmTextToImage;
pub use ldm_vq::VqLatentDiffusion;
pub use model::{
    AutoencoderKind, ConditionInput, Conditioning, ConditioningKind, DiffusionModel, EncodedImage,
    Family, GuidanceRule, InitialNoise, ModelBase, ModelInfo, SamplingRules,
};
pub use model_index::ModelIndex;
pub use params::{GenerationParams, DEFAULT_IMG2IMG_STRENGTH, DEFAULT_INPAINT_STRENGTH};
pub use precision::{Precision, STATE_DTYPE};
pub use registry::{
    folder_name, load_model, load_model_from, load_model_in, supported_pipelines, LoadOptions,
};
pub use run::{generate, generate_batch, generate_latents};
pub(crate) use stable_diffusion::SdComponents;
pub use stable_diffusion::StableDiffusion;
pub use weights::WeightFiles;
