//! Request and response bodies of the HTTP API (the OpenAPI schemas).

use std::sync::Arc;

use latentd_engine::{input_image, GenerateRequest, JobSnapshot, JobState, ValidationError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ErrorDetail;

/// Body of `POST /v1/generate` and `POST /v1/jobs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"prompt": "a red circle above a blue square", "steps": 20, "seed": 42}))]
pub struct GenerateBody {
    /// Model id (default: the first served model; see `GET /v1/models`).
    pub model: Option<String>,
    /// What to draw (text-conditioned models; refused by the others).
    #[schema(example = "a red circle above a blue square")]
    pub prompt: Option<String>,
    /// What to steer away from.
    pub negative_prompt: Option<String>,
    /// Width in pixels, a multiple of 8 (default: the model's native width).
    pub width: Option<u32>,
    /// Height in pixels, a multiple of 8 (default: the model's native height).
    pub height: Option<u32>,
    /// Denoising steps (default 20).
    pub steps: Option<u32>,
    /// Classifier-free guidance scale (default 7.5). Stable Diffusion runs unguided at
    /// <= 1, the LDM text-to-image model only at exactly 1; models without guidance
    /// refuse it.
    pub guidance_scale: Option<f64>,
    /// One of ddim, pndm, euler, euler-a, dpmpp-2m, dpmpp-2m-karras (default: the model's).
    pub scheduler: Option<String>,
    /// Seed; the same seed and parameters give the same images (default: random below
    /// 2^53, returned). Any u64, as a number or a decimal string.
    #[serde(default, deserialize_with = "super::seed::deserialize")]
    #[schema(schema_with = super::seed::schema)]
    pub seed: Option<u64>,
    /// Number of images (default 1).
    pub n: Option<u32>,
    /// DDIM eta between 0 and 1 (default 0).
    pub eta: Option<f64>,
    /// Input image: base64 PNG, JPEG or WebP, or a data URL. For Stable Diffusion the
    /// image to start from (img2img; with `mask`, inpainting), resized to the output size,
    /// which defaults to the image's own rounded down to the model's multiple; for
    /// super-resolution the low-resolution image, upscaled at its own size.
    pub image: Option<String>,
    /// Inpainting mask, the size of `image`: white (luma >= 128) is repainted, black
    /// kept. Base64 PNG, JPEG or WebP, or a data URL.
    pub mask: Option<String>,
    /// How much of `image` to repaint, greater than 0 and at most 1 (default 0.8 for
    /// img2img, 1 for inpainting): only the last `int(steps * strength)` steps run (at
    /// least one).
    pub strength: Option<f64>,
}

impl GenerateBody {
    /// The engine's view of the request, with the input image decoded.
    pub fn to_request(&self) -> Result<GenerateRequest, ValidationError> {
        let image = match &self.image {
            Some(text) => Some(Arc::new(input_image::decode_base64(text)?)),
            None => None,
        };
        let mask = match &self.mask {
            Some(text) => Some(Arc::new(input_image::decode_base64_mask(text)?)),
            None => None,
        };
        Ok(GenerateRequest {
            model: self.model.clone(),
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            width: self.width.map(|v| v as usize),
            height: self.height.map(|v| v as usize),
            steps: self.steps.map(|v| v as usize),
            guidance_scale: self.guidance_scale,
            scheduler: self.scheduler.clone(),
            seed: self.seed,
            n: self.n.map(|v| v as usize),
            eta: self.eta,
            image,
            mask,
            strength: self.strength,
        })
    }
}

/// One generated image.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImageData {
    /// Index within the job.
    pub index: usize,
    /// The job's seed (image `index` of the `(n, C, h, w)` draw).
    pub seed: u64,
    /// PNG bytes, base64. The PNG's text chunks carry the generation parameters.
    pub png_base64: String,
}

/// Time spent by a job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Timings {
    /// Milliseconds queued.
    pub queue_ms: u64,
    /// Milliseconds running (None while queued).
    pub inference_ms: Option<u64>,
}

/// JSON response of `POST /v1/generate`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GenerateResponse {
    /// The job id.
    pub id: String,
    /// The model that made the images.
    pub model: String,
    /// The seed used.
    pub seed: u64,
    /// The images.
    pub images: Vec<ImageData>,
    /// Time spent.
    pub timings: Timings,
}

/// Response of `POST /v1/jobs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobCreated {
    /// The job id.
    pub id: String,
    /// Where to poll its status.
    pub status_url: String,
    /// Where to stream its events.
    pub events_url: String,
}

/// Lifecycle state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStateBody {
    /// Waiting in the queue.
    Queued,
    /// Denoising.
    Running,
    /// All images ready.
    Succeeded,
    /// Failed.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl From<JobState> for JobStateBody {
    fn from(s: JobState) -> Self {
        match s {
            JobState::Queued => Self::Queued,
            JobState::Running => Self::Running,
            JobState::Succeeded => Self::Succeeded,
            JobState::Failed => Self::Failed,
            JobState::Cancelled => Self::Cancelled,
        }
    }
}

/// Response of `GET /v1/jobs/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobStatus {
    /// The job id.
    pub id: String,
    /// Lifecycle state.
    pub state: JobStateBody,
    /// Jobs ahead of it in the queue (while queued).
    pub position: Option<usize>,
    /// Model calls done.
    pub step: usize,
    /// Model calls in total (0 until started).
    pub total: usize,
    /// Images the job makes.
    pub n: usize,
    /// The seed used.
    pub seed: u64,
    /// URLs of the images that are ready.
    pub images: Vec<String>,
    /// Time spent.
    pub timings: Timings,
    /// Why it failed or was cancelled.
    pub error: Option<ErrorDetail>,
}

impl JobStatus {
    /// Status body from an engine snapshot. Images are published in index order, so
    /// the ready ones are the first `images_ready`.
    pub fn new(snapshot: JobSnapshot, position: Option<usize>) -> Self {
        let images = (0..snapshot.images_ready)
            .map(|i| format!("/v1/jobs/{}/images/{i}", snapshot.id))
            .collect();
        Self {
            state: snapshot.state.into(),
            position,
            step: snapshot.step,
            total: snapshot.total,
            n: snapshot.n,
            seed: snapshot.seed,
            images,
            timings: Timings {
                queue_ms: snapshot.queue_ms,
                inference_ms: snapshot.inference_ms,
            },
            error: snapshot.error.map(|(code, message)| ErrorDetail {
                code: code.to_string(),
                message,
            }),
            id: snapshot.id,
        }
    }
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelCard {
    /// Model id, usable as `model` in requests.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix time the model was loaded.
    pub created: u64,
    /// Always `latentd`.
    pub owned_by: String,
    /// Model family: `stable-diffusion-1`, `stable-diffusion-2`, `ldm-unconditional`,
    /// `ldm-text-to-image` or `ldm-super-resolution`.
    pub family: String,
    /// What the model can do: `text-to-image`, `unconditional` or `super-resolution`,
    /// plus `image-to-image` and `inpainting` for Stable Diffusion (an inpainting UNet
    /// lists `inpainting` alone).
    pub capabilities: Vec<String>,
    /// How the denoiser is conditioned: `text`, `image` or `none`.
    pub conditioning: String,
    /// Whether requests take a `prompt` (and `negative_prompt`).
    pub accepts_prompt: bool,
    /// Whether requests may carry an input `image`.
    pub accepts_image: bool,
    /// Whether requests need one (super-resolution, inpainting UNets).
    pub requires_image: bool,
    /// Whether requests may carry an inpainting `mask` and a `strength`.
    pub accepts_mask: bool,
    /// Whether `guidance_scale` applies.
    pub accepts_guidance: bool,
    /// The autoencoder: `kl` or `vq`.
    pub autoencoder: String,
    /// Channels of the latent space.
    pub latent_channels: usize,
    /// Native width in pixels.
    pub native_width: usize,
    /// Native height in pixels.
    pub native_height: usize,
    /// Width and height must be multiples of this.
    pub size_multiple: usize,
    /// Largest width accepted (`--max-width`, else twice the native width).
    pub max_width: usize,
    /// Largest height accepted (`--max-height`, else twice the native height).
    pub max_height: usize,
    /// Tokens of a prompt the model reads (absent for models without text).
    pub max_prompt_tokens: Option<usize>,
    /// The scheduler used when a request names none.
    pub default_scheduler: String,
    /// Every scheduler a request may name.
    pub schedulers: Vec<String>,
    /// `epsilon` or `v_prediction`.
    pub prediction_type: String,
}

/// Response of `GET /v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    /// The served models.
    pub data: Vec<ModelCard>,
}

/// Body of `POST /v1/images/generations` (OpenAI Images API, plus native extensions).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct OpenAiImageRequest {
    /// The prompt.
    pub prompt: String,
    /// Model id (default: the served model).
    pub model: Option<String>,
    /// Number of images (default 1).
    pub n: Option<u32>,
    /// `WIDTHxHEIGHT`, any size the model allows (default: native).
    #[schema(example = "512x512")]
    pub size: Option<String>,
    /// `url` (default, a job image URL) or `b64_json`.
    pub response_format: Option<String>,
    /// Accepted and ignored (OpenAI field).
    pub quality: Option<String>,
    /// Accepted and ignored (OpenAI field).
    pub style: Option<String>,
    /// Accepted and ignored (OpenAI field).
    pub user: Option<String>,
    /// Extension: negative prompt.
    pub negative_prompt: Option<String>,
    /// Extension: denoising steps.
    pub steps: Option<u32>,
    /// Extension: guidance scale.
    pub guidance_scale: Option<f64>,
    /// Extension: scheduler name.
    pub scheduler: Option<String>,
    /// Extension: seed (a number or a decimal string).
    #[serde(default, deserialize_with = "super::seed::deserialize")]
    #[schema(schema_with = super::seed::schema)]
    pub seed: Option<u64>,
}

/// One image of an OpenAI-style response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OpenAiImage {
    /// Base64 PNG (`response_format` = `b64_json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b64_json: Option<String>,
    /// URL of the PNG (`response_format` = `url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The prompt as used.
    pub revised_prompt: Option<String>,
}

/// Response of `POST /v1/images/generations`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OpenAiImageResponse {
    /// Unix time of creation.
    pub created: u64,
    /// The images.
    pub data: Vec<OpenAiImage>,
}

/// Response of `GET /health` and `GET /ready`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthBody {
    /// `ok`, `ready`, `saturated`, `shutting_down`, `worker_dead` or `worker_wedged`.
    pub status: String,
    /// Jobs waiting.
    pub queue_depth: usize,
    /// UNet rows in flight.
    pub active_rows: usize,
    /// Times workers were restarted after a panic since the server started.
    pub worker_restarts: u64,
}
