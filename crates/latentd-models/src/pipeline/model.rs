//! The model abstraction the engine is generic over: what a loaded model is, what it
//! accepts, and the batchable operations a sampler needs (encode conditioning, one
//! denoiser call over rows with per-row timesteps and conditioning, decode).

use std::fmt;

use candle_core::{DType, Device, Tensor};

use super::image::{Mask, RgbImage};
use super::params::GenerationParams;
use crate::schedulers::{SchedulerConfig, SchedulerKind};
use crate::vae::DiagonalGaussian;
use crate::{Result, TorchRng};

/// The model families latentd serves (the diffusers pipeline class they load from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Stable Diffusion 1.x (`StableDiffusionPipeline`, CLIP ViT-L text).
    StableDiffusion1,
    /// Stable Diffusion 2.x (`StableDiffusionPipeline`, OpenCLIP text).
    StableDiffusion2,
    /// The CompVis unconditional LDM (`LDMPipeline`: `VQModel` + `UNet2DModel`).
    LdmUnconditional,
    /// The CompVis text-to-image LDM (`LDMTextToImagePipeline`, LDM-BERT text).
    LdmTextToImage,
    /// The CompVis 4x super-resolution LDM (`LDMSuperResolutionPipeline`).
    LdmSuperResolution,
}

impl Family {
    /// The stable name reported by the API, e.g. `stable-diffusion-1`.
    pub fn name(self) -> &'static str {
        match self {
            Family::StableDiffusion1 => "stable-diffusion-1",
            Family::StableDiffusion2 => "stable-diffusion-2",
            Family::LdmUnconditional => "ldm-unconditional",
            Family::LdmTextToImage => "ldm-text-to-image",
            Family::LdmSuperResolution => "ldm-super-resolution",
        }
    }

    /// What a request to this family makes, e.g. `text-to-image`.
    pub fn capability(self) -> &'static str {
        match self {
            Family::StableDiffusion1 | Family::StableDiffusion2 | Family::LdmTextToImage => {
                "text-to-image"
            }
            Family::LdmUnconditional => "unconditional",
            Family::LdmSuperResolution => "super-resolution",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the denoiser is conditioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConditioningKind {
    /// A text encoder's hidden states through cross-attention.
    Text,
    /// An image concatenated to the latents along the channels.
    Image,
    /// Nothing: unconditional sampling.
    None,
}

impl ConditioningKind {
    /// `text`, `image` or `none`.
    pub fn name(self) -> &'static str {
        match self {
            ConditioningKind::Text => "text",
            ConditioningKind::Image => "image",
            ConditioningKind::None => "none",
        }
    }
}

/// The perceptual compression of a model (the LDM paper's two regularisations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AutoencoderKind {
    /// KL-regularised (`AutoencoderKL`).
    Kl,
    /// Vector-quantised (`VQModel`).
    Vq,
}

impl AutoencoderKind {
    /// `kl` or `vq`.
    pub fn name(self) -> &'static str {
        match self {
            AutoencoderKind::Kl => "kl",
            AutoencoderKind::Vq => "vq",
        }
    }
}

/// When a guidance scale runs an unconditional row beside the conditional one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuidanceRule {
    /// The model takes no guidance.
    Never,
    /// For scales above 1 (`StableDiffusionPipeline`).
    AboveOne,
    /// For every scale but exactly 1 (`LDMTextToImagePipeline`).
    NotOne,
}

impl GuidanceRule {
    /// Whether `scale` runs guided.
    pub fn applies(self, scale: f64) -> bool {
        match self {
            GuidanceRule::Never => false,
            GuidanceRule::AboveOne => scale > 1.0,
            GuidanceRule::NotOne => scale != 1.0,
        }
    }
}

/// Which `init_noise_sigma` scales a job's initial noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialNoise {
    /// Not scaled (`LDMTextToImagePipeline`).
    Unscaled,
    /// The scheduler's, once set to the job's steps (`StableDiffusionPipeline`,
    /// `LDMSuperResolutionPipeline`).
    Scaled,
    /// The scheduler's before it is set to the job's steps: that of the whole training
    /// schedule (`LDMPipeline`, which scales before `set_timesteps`; it differs from
    /// [`InitialNoise::Scaled`] for Euler schedulers with `leading` spacing).
    ScaledBeforeSetTimesteps,
}

/// How a family's reference pipeline drives its scheduler; followed exactly so that a
/// seed gives the reference's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplingRules {
    /// When guidance applies.
    pub guidance: GuidanceRule,
    /// How the initial noise is scaled.
    pub initial_noise: InitialNoise,
    /// The model input goes through the scheduler's `scale_model_input`
    /// (after any image channels are concatenated).
    pub scale_model_input: bool,
}

/// What a loaded model is and what it accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Model id (the folder name unless given).
    pub name: String,
    /// Model family.
    pub family: Family,
    /// How the denoiser is conditioned.
    pub conditioning: ConditioningKind,
    /// The perceptual compression.
    pub autoencoder: AutoencoderKind,
    /// The output size the model was configured for, in pixels.
    pub native_width: usize,
    /// The output size the model was configured for, in pixels.
    pub native_height: usize,
    /// Output pixels per latent cell along each axis.
    pub vae_scale_factor: usize,
    /// Output width and height must be multiples of this.
    pub size_multiple: usize,
    /// Channels of the latent space (from the autoencoder).
    pub latent_channels: usize,
    /// Tokens per prompt the text encoder reads (`None`: the model takes no text).
    pub max_prompt_tokens: Option<usize>,
    /// How sampling runs.
    pub rules: SamplingRules,
    /// The scheduler the folder ships with.
    pub default_scheduler: SchedulerKind,
    /// `epsilon`, `v_prediction` or `sample`.
    pub prediction_type: String,
    /// Whether a request may bring an input image to start from (img2img) and a mask
    /// of what to repaint (inpainting), besides its prompt.
    pub image_edits: bool,
    /// Whether the denoiser takes the mask and the masked image's latents as extra input
    /// channels (a 9-channel inpainting UNet): every request then needs an image.
    pub mask_channels: bool,
}

impl ModelInfo {
    /// Whether the model reads a prompt.
    pub fn takes_prompt(&self) -> bool {
        self.conditioning == ConditioningKind::Text
    }

    /// Whether the model needs an input image (super-resolution, inpainting UNets).
    pub fn takes_image(&self) -> bool {
        self.conditioning == ConditioningKind::Image || self.mask_channels
    }

    /// Whether the model accepts an input image at all.
    pub fn accepts_image(&self) -> bool {
        self.takes_image() || self.image_edits
    }

    /// Whether the model applies classifier-free guidance at some scale.
    pub fn takes_guidance(&self) -> bool {
        self.rules.guidance != GuidanceRule::Never
    }

    /// Whether a job at `scale` runs an unconditional row beside each conditional one.
    pub fn is_guided(&self, scale: f64) -> bool {
        self.rules.guidance.applies(scale)
    }

    /// Rows a job adds to each denoiser call.
    pub fn rows(&self, params: &GenerationParams) -> usize {
        if self.is_guided(params.guidance_scale) {
            2 * params.n
        } else {
            params.n
        }
    }

    /// Latent height and width for an output of `width` x `height` pixels.
    pub fn latent_size(&self, width: usize, height: usize) -> (usize, usize) {
        let f = self.vae_scale_factor.max(1);
        (height / f, width / f)
    }

    /// Shape of a job's latents: `[n, latent_channels, h, w]`.
    pub fn latent_shape(&self, params: &GenerationParams) -> [usize; 4] {
        let (h, w) = self.latent_size(params.width, params.height);
        [params.n, self.latent_channels, h, w]
    }
}

/// One job's conditioning inputs, as [`DiffusionModel::encode`] takes them.
#[derive(Debug, Clone, Copy)]
pub struct ConditionInput<'a> {
    /// The prompt (empty for models without text).
    pub prompt: &'a str,
    /// The negative prompt (the unconditional row's text when guided).
    pub negative_prompt: &'a str,
    /// Whether the job runs guided.
    pub guided: bool,
    /// The input image: the conditioning image of image-conditioned models, or the
    /// image an img2img or inpainting job starts from.
    pub image: Option<&'a RgbImage>,
    /// The inpainting mask (same size as `image`; bright = repaint).
    pub mask: Option<&'a Mask>,
    /// The strength of a job with an input image.
    pub strength: Option<f64>,
}

impl<'a> ConditionInput<'a> {
    /// The inputs of a job with these parameters on `info`'s model.
    pub fn of(info: &ModelInfo, params: &'a GenerationParams) -> Self {
        Self {
            prompt: &params.prompt,
            negative_prompt: params.negative_prompt.as_deref().unwrap_or(""),
            guided: info.is_guided(params.guidance_scale),
            image: params.image.as_deref(),
            mask: params.mask.as_deref(),
            strength: params.effective_strength(info.mask_channels),
        }
    }
}

/// One job's encoded conditioning, for one image (the sampler repeats it per image).
#[derive(Debug, Clone, Default)]
pub struct Conditioning {
    /// The prompt's text embedding `[1, T, D]`.
    pub text: Option<Tensor>,
    /// The negative prompt's text embedding `[1, T, D]` (guided jobs).
    pub negative_text: Option<Tensor>,
    /// Channels concatenated to the latents, `[1, C, h, w]`, before the scheduler's
    /// input scaling (super-resolution).
    pub concat: Option<Tensor>,
    /// The input image's latent distribution, which img2img and inpainting start from.
    pub init: Option<EncodedImage>,
    /// The masked input image's latent distribution (inpainting).
    pub masked: Option<EncodedImage>,
    /// The mask on the latent grid, `[1, 1, h, w]` (1 = repaint; inpainting).
    pub mask: Option<Tensor>,
}

/// An image encoded by a KL autoencoder: its posterior and the factor that scales a
/// sample of it into the sampler's latent space.
#[derive(Debug, Clone)]
pub struct EncodedImage {
    /// The posterior `[1, C, h, w]`.
    pub dist: DiagonalGaussian,
    /// The autoencoder's `scaling_factor`.
    pub scaling_factor: f64,
}

impl EncodedImage {
    /// `scaling_factor * (mean + std * randn)`, the noise drawn from `rng` as
    /// diffusers' `retrieve_latents(..., generator)` draws it.
    pub fn sample(&self, rng: &mut TorchRng) -> Result<Tensor> {
        Ok((self.dist.sample(rng)? * self.scaling_factor)?)
    }
}

/// What every loaded model holds for the engine besides its networks.
#[derive(Debug, Clone)]
pub struct ModelBase {
    /// What the model is and accepts.
    pub info: ModelInfo,
    /// The folder's scheduler configuration, shared by every scheduler kind.
    pub scheduler_config: SchedulerConfig,
    /// The device the model runs on.
    pub device: Device,
    /// The dtype the denoiser computes in.
    pub dtype: DType,
}

/// A loaded latent diffusion model, as the engine drives it.
///
/// Every operation is batchable over jobs: conditioning of several jobs is encoded in
/// one call, and one denoiser call takes rows of many jobs at different timesteps.
pub trait DiffusionModel: Send + Sync {
    /// The model's description, scheduler configuration, device and dtype.
    fn base(&self) -> &ModelBase;

    /// What the model is and accepts.
    fn info(&self) -> &ModelInfo {
        &self.base().info
    }

    /// The folder's scheduler configuration, shared by every scheduler kind.
    fn scheduler_config(&self) -> &SchedulerConfig {
        &self.base().scheduler_config
    }

    /// The device the model runs on.
    fn device(&self) -> &Device {
        &self.base().device
    }

    /// The dtype the denoiser computes in.
    fn dtype(&self) -> DType {
        self.base().dtype
    }

    /// Content tokens of a prompt (without begin/end markers), for validation.
    /// Models that read no text answer with an error.
    fn count_tokens(&self, text: &str) -> Result<usize>;

    /// Encodes the conditioning of several jobs at once (one text-encoder call for all
    /// their prompts), one [`Conditioning`] per job in order.
    fn encode(&self, jobs: &[ConditionInput<'_>]) -> Result<Vec<Conditioning>>;

    /// One denoiser call over rows that may belong to different jobs and be at
    /// different timesteps: `input` `[B, C, h, w]` (latents with any image channels
    /// already concatenated), one timestep per row, the text context `[B, T, D]` of
    /// text-conditioned models -> the prediction `[B, latent_channels, h, w]`.
    fn predict(
        &self,
        input: &Tensor,
        timesteps: &[f32],
        context: Option<&Tensor>,
    ) -> Result<Tensor>;

    /// Decodes final latents `[n, C, h, w]` (as the sampler leaves them) into images.
    fn decode(&self, latents: &Tensor) -> Result<Vec<RgbImage>>;
}

/// [`DiffusionModel::encode`] for text-conditioned models: every job's prompt (and, when
/// guided, negative prompt) goes through `encode_prompts` in one call `[P, T, D]`.
pub(crate) fn encode_text_jobs(
    jobs: &[ConditionInput<'_>],
    encode_prompts: impl FnOnce(&[&str]) -> Result<Tensor>,
) -> Result<Vec<Conditioning>> {
    let mut prompts: Vec<&str> = Vec::with_capacity(2 * jobs.len());
    for job in jobs {
        prompts.push(job.prompt);
        if job.guided {
            prompts.push(job.negative_prompt);
        }
    }
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    let embeddings = encode_prompts(&prompts)?;
    let mut row = 0;
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        let text = Some(embeddings.narrow(0, row, 1)?);
        let negative_text = if job.guided {
            Some(embeddings.narrow(0, row + 1, 1)?)
        } else {
            None
        };
        row += if job.guided { 2 } else { 1 };
        out.push(Conditioning {
            text,
            negative_text,
            ..Conditioning::default()
        });
    }
    Ok(out)
}
