//! Loading any supported diffusers folder: `model_index.json`'s `_class_name` picks
//! the loader from one table; and a single-file checkpoint (`crate::checkpoint`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;

use super::ldm_text::{self, LdmTextToImage};
use super::ldm_vq::{self, VqLatentDiffusion};
use super::model::DiffusionModel;
use super::model_index::ModelIndex;
use super::precision::Precision;
use super::stable_diffusion::{self, StableDiffusion};
use crate::checkpoint::{self, SingleFileOptions};
use crate::schedulers::PredictionType;
use crate::{Error, Result};

/// Loads a folder of one pipeline class onto a device in a precision under a model id.
type Loader = fn(&Path, &str, &Device, Precision) -> Result<Arc<dyn DiffusionModel>>;

/// Every pipeline class latentd serves, with its loader.
const LOADERS: &[(&str, Loader)] = &[
    (stable_diffusion::PIPELINE_CLASS, load_sd),
    (stable_diffusion::INPAINT_PIPELINE_CLASS, load_sd),
    (ldm_text::PIPELINE_CLASS, |dir, name, device, precision| {
        Ok(Arc::new(LdmTextToImage::load_in(
            dir, name, device, precision,
        )?))
    }),
    (ldm_vq::UNCONDITIONAL_CLASS, load_vq),
    (ldm_vq::SUPER_RESOLUTION_CLASS, load_vq),
];

fn load_sd(
    dir: &Path,
    name: &str,
    device: &Device,
    precision: Precision,
) -> Result<Arc<dyn DiffusionModel>> {
    Ok(Arc::new(StableDiffusion::load_in(
        dir, name, device, precision,
    )?))
}

fn load_vq(
    dir: &Path,
    name: &str,
    device: &Device,
    precision: Precision,
) -> Result<Arc<dyn DiffusionModel>> {
    Ok(Arc::new(VqLatentDiffusion::load_in(
        dir, name, device, precision,
    )?))
}

/// The `_class_name`s of the pipelines latentd loads.
pub fn supported_pipelines() -> Vec<&'static str> {
    LOADERS.iter().map(|(class, _)| *class).collect()
}

/// Loads the diffusers folder `dir` in float32 with the loader its `model_index.json`
/// names, under the id `name` (default: the folder's name).
pub fn load_model(
    dir: &Path,
    name: Option<&str>,
    device: &Device,
) -> Result<Arc<dyn DiffusionModel>> {
    load_model_in(dir, name, device, Precision::F32)
}

/// [`load_model`] with the networks in `precision`.
pub fn load_model_in(
    dir: &Path,
    name: Option<&str>,
    device: &Device,
    precision: Precision,
) -> Result<Arc<dyn DiffusionModel>> {
    let index = ModelIndex::from_dir(dir)?;
    let loader = LOADERS
        .iter()
        .find(|(class, _)| *class == index.class_name)
        .map(|(_, loader)| loader)
        .ok_or_else(|| Error::UnsupportedConfig {
            path: index.path().to_path_buf(),
            key: "_class_name".into(),
            message: format!(
                "pipeline {} is not supported (supported: {})",
                index.class_name,
                supported_pipelines().join(", ")
            ),
        })?;
    let name = name.map_or_else(|| folder_name(dir), str::to_string);
    loader(dir, &name, device, precision)
}

/// How [`load_model_from`] loads a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The model id (default: the folder's name, or the file's without its extension).
    pub name: Option<String>,
    /// Single files only: a diffusers folder whose configs, tokenizer and scheduler are
    /// used instead of the inferred ones (the file supplies the weights).
    pub model_config: Option<PathBuf>,
    /// Single files only: overrides the scheduler's `prediction_type`.
    pub prediction_type: Option<PredictionType>,
    /// The networks' precision (default: [`Precision::default_for`] the device).
    pub precision: Option<Precision>,
}

/// Loads a diffusers folder (as [`load_model`]) or a single-file Stable Diffusion
/// checkpoint (`.safetensors`, `.ckpt`, `.pt`, `.pth`; see [`crate::checkpoint`]).
pub fn load_model_from(
    path: &Path,
    options: &LoadOptions,
    device: &Device,
) -> Result<Arc<dyn DiffusionModel>> {
    let precision = options
        .precision
        .unwrap_or_else(|| Precision::default_for(device));
    if path.is_dir() {
        if options.model_config.is_some() || options.prediction_type.is_some() {
            return Err(Error::InvalidArgument(format!(
                "{} is a diffusers folder: a model config and a prediction type apply to \
                 single-file checkpoints only",
                path.display()
            )));
        }
        return load_model_in(path, options.name.as_deref(), device, precision);
    }
    let name = options.name.clone().unwrap_or_else(|| file_name(path));
    let single = SingleFileOptions {
        config_dir: options.model_config.clone(),
        prediction_type: options.prediction_type,
        precision,
    };
    Ok(Arc::new(checkpoint::load(path, &name, &single, device)?))
}

/// The id of a model loaded from the file `path` without an explicit name: its name
/// without the extension.
fn file_name(path: &Path) -> String {
    path.file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_string())
}

/// The id of a model loaded from `dir` without an explicit name: the folder's name.
pub fn folder_name(dir: &Path) -> String {
    dir.canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".to_string())
}
