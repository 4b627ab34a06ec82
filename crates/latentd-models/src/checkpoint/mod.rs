//! Single-file Stable Diffusion checkpoints: one `.safetensors` or `.ckpt` / `.pt` /
//! `.pth` file in the original CompVis key layout (`model.diffusion_model.*`,
//! `first_stage_model.*`, `cond_stage_model.*`), loaded onto latentd's diffusers-named
//! modules as diffusers' `StableDiffusionPipeline.from_single_file` does.
//!
//! The architecture is inferred from the tensors' names and shapes ([`inspect`]), with
//! the tokenizer and scheduler settings of SD 1.5 / SD 2.1 that latentd ships; or, like
//! `from_single_file(path, config=DIR)`, every configuration, the tokenizer and the
//! scheduler come from a diffusers folder and the file supplies the weights only
//! ([`SingleFileOptions::config_dir`]). A tensor the model needs and the file lacks, or
//! one the file has and no part of the model reads, is an error naming it.

mod defaults;
mod detect;
mod file;
mod keymap;
mod tensors;
mod text_keys;
mod unet_keys;
mod vae_keys;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};

pub use defaults::parse_prediction_type;
pub use detect::{detect_shapes, Detected, SdVersion};
pub use file::{CheckpointFile, CheckpointFormat};
pub use text_keys::TextLayout;

use crate::pipeline::{ModelIndex, Precision, SdComponents, StableDiffusion};
use crate::schedulers::{PredictionType, SchedulerConfig, SchedulerKind};
use crate::text::{ClipTextConfig, ClipTextModel, ClipTokenizer};
use crate::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::{Error, Result};
use keymap::KeyMap;
use tensors::{unknown_error, Renamed};

/// Tensors CompVis' `LatentDiffusion` saves besides the three models: its diffusion
/// schedule. Loaders ignore them (the scheduler's settings come from its config).
const SCHEDULE_BUFFERS: &[&str] = &[
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
];
/// The EMA copy of the UNet some files carry; diffusers loads the plain weights.
const EMA_PREFIX: &str = "model_ema.";

/// How to load a single file.
#[derive(Debug, Clone, Default)]
pub struct SingleFileOptions {
    /// A diffusers `StableDiffusionPipeline` folder whose configs, tokenizer and scheduler
    /// replace the inferred ones.
    pub config_dir: Option<PathBuf>,
    /// Overrides the scheduler's `prediction_type` (e.g. `epsilon` for SD 2.x base
    /// models, whose files look like the v-prediction ones).
    pub prediction_type: Option<PredictionType>,
    /// The networks' precision (the autoencoder stays in `f32` if it asks to be upcast).
    pub precision: Precision,
}

/// The architecture of a checkpoint, from its names and shapes alone.
pub fn inspect(path: &Path) -> Result<Detected> {
    detect::detect(&CheckpointFile::open(path)?)
}

/// Loads a Stable Diffusion 1.x/2.x single file onto `device` in `options.precision`,
/// as `name`.
pub fn load(
    path: &Path,
    name: &str,
    options: &SingleFileOptions,
    device: &Device,
) -> Result<StableDiffusion> {
    let dtype = options.precision.dtype();
    let file = Arc::new(CheckpointFile::open(path)?);
    let mut setup = Setup::new(&file, options.config_dir.as_deref())?;
    if let Some(prediction_type) = options.prediction_type {
        setup.scheduler_config.prediction_type = Some(prediction_type);
    }
    let [text_map, unet_map, vae_map] = setup.key_maps()?;
    let [text, unet, vae] = renamed(&file, [&text_map, &unet_map, &vae_map])?;
    let text_encoder = text.build(&file, &text_map, dtype, device, |vb| {
        ClipTextModel::new(vb, &setup.text_config)
    })?;
    let unet = unet.build(&file, &unet_map, dtype, device, |vb| {
        UNet2DConditionModel::new(vb, &setup.unet_config)
    })?;
    let vae_dtype = options
        .precision
        .autoencoder_dtype(setup.vae_config.force_upcast);
    let vae = vae.build(&file, &vae_map, vae_dtype, device, |vb| {
        AutoencoderKL::new(vb, &setup.vae_config)
    })?;
    let parts = SdComponents {
        source: path.to_path_buf(),
        tokenizer: setup.tokenizer,
        text_config: setup.text_config,
        text_encoder,
        unet,
        vae,
        scheduler_config: setup.scheduler_config,
        default_scheduler: setup.default_scheduler,
    };
    StableDiffusion::from_components(name, parts, device, dtype)
}

/// Every tensor of the file under its diffusers name, per component folder (`unet`,
/// `vae`, `text_encoder`), in the file's dtype: what [`load`] gives the modules.
pub fn diffusers_tensors(
    path: &Path,
    config_dir: Option<&Path>,
) -> Result<BTreeMap<&'static str, HashMap<String, Tensor>>> {
    let file = Arc::new(CheckpointFile::open(path)?);
    let setup = Setup::new(&file, config_dir)?;
    let [text_map, unet_map, vae_map] = setup.key_maps()?;
    let [text, unet, vae] = renamed(&file, [&text_map, &unet_map, &vae_map])?;
    Ok(BTreeMap::from([
        ("text_encoder", text.tensors(&file)?),
        ("unet", unet.tensors(&file)?),
        ("vae", vae.tensors(&file)?),
    ]))
}

/// Maps every file tensor; any that belongs to no component and is not a known extra is
/// an error listing them.
fn renamed(file: &CheckpointFile, maps: [&KeyMap; 3]) -> Result<[Renamed; 3]> {
    let mut unknown = Vec::new();
    let [a, b, c] = maps.map(|map| Renamed::new(file, map, &mut unknown));
    let prefixes = maps.map(|map| map.prefix);
    unknown.extend(
        file.keys()
            .filter(|k| !prefixes.iter().any(|p| k.starts_with(p)))
            .filter(|k| !SCHEDULE_BUFFERS.contains(k) && !k.starts_with(EMA_PREFIX))
            .map(str::to_string),
    );
    if !unknown.is_empty() {
        unknown.sort();
        return Err(unknown_error(file, &unknown));
    }
    Ok([a?, b?, c?])
}

/// The configurations, tokenizer and scheduler a file is loaded with.
struct Setup {
    text_layout: TextLayout,
    text_config: ClipTextConfig,
    unet_config: UNet2DConditionConfig,
    vae_config: AutoencoderKLConfig,
    tokenizer: ClipTokenizer,
    scheduler_config: SchedulerConfig,
    default_scheduler: SchedulerKind,
}

impl Setup {
    /// From the diffusers folder `config_dir` if given, else inferred from the file.
    fn new(file: &CheckpointFile, config_dir: Option<&Path>) -> Result<Self> {
        match config_dir {
            Some(dir) => Self::from_folder(file, dir),
            None => Self::detected(file),
        }
    }

    fn detected(file: &CheckpointFile) -> Result<Self> {
        let detected = detect::detect(file)?;
        let tokenizer = defaults::tokenizer(detected.version)?;
        if detected.text_encoder.vocab_size < tokenizer.vocab_size() {
            return Err(Error::Weights {
                path: file.path().to_path_buf(),
                message: format!(
                    "the text encoder has {} token embeddings, CLIP's tokenizer {}: give \
                     the model's own tokenizer with --model-config",
                    detected.text_encoder.vocab_size,
                    tokenizer.vocab_size()
                ),
            });
        }
        let (scheduler_config, default_scheduler) =
            defaults::scheduler(detected.version, detected.inpainting)?;
        Ok(Self {
            text_layout: detected.text_layout,
            text_config: detected.text_encoder,
            unet_config: detected.unet,
            vae_config: detected.vae,
            tokenizer,
            scheduler_config,
            default_scheduler,
        })
    }

    fn from_folder(file: &CheckpointFile, dir: &Path) -> Result<Self> {
        let index = ModelIndex::from_dir(dir)?;
        index.require("unet", &["UNet2DConditionModel"])?;
        index.require("vae", &["AutoencoderKL"])?;
        index.require("text_encoder", &["CLIPTextModel"])?;
        index.require("tokenizer", &["CLIPTokenizer", "CLIPTokenizerFast"])?;
        let (scheduler_config, default_scheduler) = index.scheduler(dir)?;
        Ok(Self {
            text_layout: detect::text_layout(&detect::Shapes::of(file))?,
            text_config: ClipTextConfig::from_file(&dir.join("text_encoder/config.json"))?,
            unet_config: UNet2DConditionConfig::from_file(dir.join("unet/config.json"))?,
            vae_config: AutoencoderKLConfig::from_file(dir.join("vae/config.json"))?,
            tokenizer: ClipTokenizer::from_dir(&dir.join("tokenizer"))?,
            scheduler_config,
            default_scheduler,
        })
    }

    /// The text encoder's, the UNet's and the autoencoder's key maps.
    fn key_maps(&self) -> Result<[KeyMap; 3]> {
        let text = match self.text_layout {
            TextLayout::Clip => text_keys::clip_keys(),
            TextLayout::OpenClip => text_keys::open_clip_keys(self.text_config.num_hidden_layers),
        };
        Ok([
            text,
            unet_keys::unet_keys(&self.unet_config)?,
            vae_keys::vae_keys(&self.vae_config),
        ])
    }
}
