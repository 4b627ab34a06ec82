//! Limits and sizes of the engine; all of them are server configuration.

use std::time::Duration;

use latentd_models::pipeline::ModelInfo;

/// Engine limits.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Jobs waiting to start before new ones are refused.
    pub max_queue: usize,
    /// Most UNet rows in one call: in flight at once per worker and shape group (a
    /// guided job of n images takes 2n rows).
    pub max_batch_rows: usize,
    /// Most rows x latent pixels in one call (per worker and shape group): large
    /// latents batch fewer rows than `max_batch_rows` allows, small ones up to it.
    pub max_batch_latent_pixels: usize,
    /// Largest width accepted, in pixels (`None`: twice each model's native width).
    pub max_width: Option<usize>,
    /// Largest height accepted, in pixels (`None`: twice each model's native height).
    pub max_height: Option<usize>,
    /// Most denoising steps accepted.
    pub max_steps: usize,
    /// Most images per job.
    pub max_n: usize,
    /// Largest guidance scale accepted.
    pub max_guidance: f64,
    /// Default steps when a request gives none.
    pub default_steps: usize,
    /// Default guidance when a request gives none.
    pub default_guidance: f64,
    /// How long finished jobs stay retrievable.
    pub finished_ttl: Duration,
    /// How many finished jobs are kept at most.
    pub finished_max: usize,
    /// Most bytes of PNGs finished jobs keep, in all.
    pub finished_max_bytes: usize,
    /// A worker holding work that has not finished a tick for this long is reported
    /// as wedged by the health check.
    pub wedged_after: Duration,
}

/// The default row budget per worker.
pub const DEFAULT_MAX_BATCH_ROWS: usize = 32;
/// The default latent-pixel budget per worker: 8 rows of 64x64 latents (Stable
/// Diffusion at 512x512), the batch that pays on a CPU without running out of memory.
pub const DEFAULT_MAX_BATCH_LATENT_PIXELS: usize = 8 * 64 * 64;

impl EngineConfig {
    /// What may be in flight at once on one worker.
    pub fn budget(&self) -> crate::planner::Budget {
        crate::planner::Budget {
            rows: self.max_batch_rows,
            latent_pixels: self.max_batch_latent_pixels,
        }
    }

    /// The largest width and height accepted for a model: the configured ones, else
    /// twice the model's native size (larger images from a model trained at one size
    /// are mostly noise, and cost quadratically more).
    pub fn max_size(&self, model: &ModelInfo) -> (usize, usize) {
        (
            self.max_width.unwrap_or(2 * model.native_width),
            self.max_height.unwrap_or(2 * model.native_height),
        )
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_queue: 64,
            max_batch_rows: DEFAULT_MAX_BATCH_ROWS,
            max_batch_latent_pixels: DEFAULT_MAX_BATCH_LATENT_PIXELS,
            max_width: None,
            max_height: None,
            max_steps: 150,
            max_n: 8,
            max_guidance: 50.0,
            default_steps: 20,
            default_guidance: 7.5,
            finished_ttl: Duration::from_secs(600),
            finished_max: 1000,
            finished_max_bytes: 1 << 30,
            wedged_after: Duration::from_secs(600),
        }
    }
}
