//! `model_index.json`: which pipeline a folder holds and which class each component is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::schedulers::{SchedulerConfig, SchedulerKind};
use crate::{Error, Result};

/// The parsed `model_index.json` of a diffusers pipeline folder.
#[derive(Debug, Clone)]
pub struct ModelIndex {
    /// `_class_name`, e.g. `StableDiffusionPipeline`.
    pub class_name: String,
    /// `_diffusers_version`, when recorded.
    pub diffusers_version: Option<String>,
    /// Component name -> `[library, class]`; components saved as `null` are absent.
    pub components: BTreeMap<String, (String, String)>,
    path: PathBuf,
}

#[derive(Deserialize)]
struct RawIndex {
    #[serde(rename = "_class_name")]
    class_name: String,
    #[serde(rename = "_diffusers_version", default)]
    diffusers_version: Option<String>,
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

impl ModelIndex {
    /// Reads `dir/model_index.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("model_index.json");
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, path)
    }

    fn parse(text: &str, path: PathBuf) -> Result<Self> {
        let raw: RawIndex = serde_json::from_str(text).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        let mut components = BTreeMap::new();
        for (name, value) in raw.rest {
            if name.starts_with('_') {
                continue;
            }
            // Components are `[library, class]`; `[null, null]` marks an absent one,
            // and plain values (e.g. `requires_safety_checker`) are pipeline options.
            if let Some([lib, class]) = value.as_array().map(|a| a.as_slice()).and_then(|a| {
                <&[serde_json::Value; 2]>::try_from(a)
                    .ok()
                    .map(|[l, c]| [l.as_str(), c.as_str()])
            }) {
                if let (Some(lib), Some(class)) = (lib, class) {
                    components.insert(name, (lib.to_string(), class.to_string()));
                }
            }
        }
        Ok(Self {
            class_name: raw.class_name,
            diffusers_version: raw.diffusers_version,
            components,
            path,
        })
    }

    /// Path of the file this index was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks that component `name` exists and its class is one of `classes`.
    pub fn require(&self, name: &str, classes: &[&str]) -> Result<&str> {
        match self.components.get(name) {
            Some((_, class)) if classes.contains(&class.as_str()) => Ok(class),
            Some((_, class)) => Err(Error::UnsupportedConfig {
                path: self.path.clone(),
                key: name.to_string(),
                message: format!("class {class} is not supported (expected one of {classes:?})"),
            }),
            None => Err(Error::UnsupportedConfig {
                path: self.path.clone(),
                key: name.to_string(),
                message: "the pipeline has no such component".to_string(),
            }),
        }
    }

    /// The folder's `scheduler/scheduler_config.json` and the scheduler kind its
    /// `scheduler` component names (the default for requests that name none).
    pub fn scheduler(&self, dir: &Path) -> Result<(SchedulerConfig, SchedulerKind)> {
        let class = self
            .components
            .get("scheduler")
            .map(|(_, class)| class.as_str())
            .unwrap_or_default();
        let kind =
            SchedulerKind::from_class_name(class).ok_or_else(|| Error::UnsupportedConfig {
                path: self.path.clone(),
                key: "scheduler".into(),
                message: format!("scheduler class {class} is not supported"),
            })?;
        let config =
            SchedulerConfig::from_file(&dir.join("scheduler").join("scheduler_config.json"))?;
        Ok((config, kind))
    }

    /// Checks that the pipeline class is one this crate serves.
    pub fn require_pipeline(&self, supported: &[&str]) -> Result<()> {
        if supported.contains(&self.class_name.as_str()) {
            Ok(())
        } else {
            Err(Error::UnsupportedConfig {
                path: self.path.clone(),
                key: "_class_name".to_string(),
                message: format!(
                    "pipeline {} is not supported (expected one of {supported:?})",
                    self.class_name
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SD: &str = r#"{
      "_class_name": "StableDiffusionPipeline",
      "_diffusers_version": "0.30.0",
      "feature_extractor": [null, null],
      "requires_safety_checker": false,
      "safety_checker": [null, null],
      "scheduler": ["diffusers", "PNDMScheduler"],
      "text_encoder": ["transformers", "CLIPTextModel"],
      "tokenizer": ["transformers", "CLIPTokenizer"],
      "unet": ["diffusers", "UNet2DConditionModel"],
      "vae": ["diffusers", "AutoencoderKL"]
    }"#;

    #[test]
    fn parses_components_and_skips_absent_ones() {
        let idx = ModelIndex::parse(SD, "model_index.json".into()).unwrap();
        assert_eq!(idx.class_name, "StableDiffusionPipeline");
        assert_eq!(idx.components.len(), 5);
        assert!(!idx.components.contains_key("safety_checker"));
        assert_eq!(
            idx.require("unet", &["UNet2DConditionModel"]).unwrap(),
            "UNet2DConditionModel"
        );
    }

    #[test]
    fn wrong_class_or_missing_component_names_the_key() {
        let idx = ModelIndex::parse(SD, "model_index.json".into()).unwrap();
        let err = idx.require("vae", &["VQModel"]).unwrap_err().to_string();
        assert!(
            err.contains("`vae`") && err.contains("AutoencoderKL"),
            "{err}"
        );
        let err = idx.require("bert", &["X"]).unwrap_err().to_string();
        assert!(err.contains("`bert`"), "{err}");
        assert!(idx.require_pipeline(&["LDMPipeline"]).is_err());
    }

    #[test]
    fn malformed_json_is_an_error_naming_the_file() {
        let err = ModelIndex::parse("{", "x/model_index.json".into()).unwrap_err();
        assert!(err.to_string().contains("x/model_index.json"));
    }
}
