//! Loading any supported diffusers folder: `model_index.json`'s `_class_name` picks
//! the loader from one table.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;

use super::ldm_text::{self, LdmTextToImage};
use super::ldm_vq::{self, VqLatentDiffusion};
use super::model::DiffusionModel;
use super::model_index::ModelIndex;
use super::stable_diffusion::{self, StableDiffusion};
use crate::{Error, Result};

/// Loads a folder of one pipeline class onto a device under a model id.
type Loader = fn(&Path, &str, &Device) -> Result<Arc<dyn DiffusionModel>>;

/// Every pipeline class latentd serves, with its loader.
const LOADERS: &[(&str, Loader)] = &[
    (stable_diffusion::PIPELINE_CLASS, load_sd),
    (stable_diffusion::INPAINT_PIPELINE_CLASS, load_sd),
    (ldm_text::PIPELINE_CLASS, |dir, name, device| {
        Ok(Arc::new(LdmTextToImage::load_named(dir, name, device)?))
    }),
    (ldm_vq::UNCONDITIONAL_CLASS, load_vq),
    (ldm_vq::SUPER_RESOLUTION_CLASS, load_vq),
];

fn load_sd(dir: &Path, name: &str, device: &Device) -> Result<Arc<dyn DiffusionModel>> {
    Ok(Arc::new(StableDiffusion::load_named(dir, name, device)?))
}

fn load_vq(dir: &Path, name: &str, device: &Device) -> Result<Arc<dyn DiffusionModel>> {
    Ok(Arc::new(VqLatentDiffusion::load_named(dir, name, device)?))
}

/// The `_class_name`s of the pipelines latentd loads.
pub fn supported_pipelines() -> Vec<&'static str> {
    LOADERS.iter().map(|(class, _)| *class).collect()
}

/// Loads the diffusers folder `dir` with the loader its `model_index.json` names,
/// under the id `name` (default: the folder's name).
pub fn load_model(
    dir: &Path,
    name: Option<&str>,
    device: &Device,
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
    loader(dir, &name, device)
}

/// The id of a model loaded from `dir` without an explicit name: the folder's name.
pub fn folder_name(dir: &Path) -> String {
    dir.canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".to_string())
}
