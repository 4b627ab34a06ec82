//! `text_encoder/config.json` of a CLIP text encoder (transformers `CLIPTextConfig`).

use std::path::Path;

use serde::Deserialize;

use crate::{Error, Result};

/// The activation between the two MLP layers (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    /// `x * sigmoid(1.702 x)`: OpenAI CLIP (Stable Diffusion 1.x).
    QuickGelu,
    /// The exact, erf-based GELU: OpenCLIP (Stable Diffusion 2.x).
    Gelu,
}

impl HiddenAct {
    const SUPPORTED: [(&'static str, HiddenAct); 2] = [
        ("quick_gelu", HiddenAct::QuickGelu),
        ("gelu", HiddenAct::Gelu),
    ];
}

/// The CLIP text transformer's hyper-parameters. Missing keys take transformers'
/// `CLIPTextConfig` defaults; other keys (token ids, `projection_dim`, ...) are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: HiddenAct,
    pub layer_norm_eps: f64,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: HiddenAct::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipTextConfig {
    /// Reads and checks a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let json_error = |source| Error::Json {
            path: path.to_owned(),
            source,
        };
        let value: serde_json::Value = serde_json::from_str(&text).map_err(json_error)?;
        if let Some(act) = value.get("hidden_act") {
            let known = HiddenAct::SUPPORTED
                .iter()
                .any(|(name, _)| act.as_str() == Some(name));
            if !known {
                return Err(Error::UnsupportedConfig {
                    path: path.to_owned(),
                    key: "hidden_act".into(),
                    message: format!("{act} (supported: \"quick_gelu\", \"gelu\")"),
                });
            }
        }
        let config: Self = serde_json::from_value(value).map_err(json_error)?;
        config
            .validate()
            .map_err(|(key, message)| Error::UnsupportedConfig {
                path: path.to_owned(),
                key: key.into(),
                message,
            })?;
        Ok(config)
    }

    /// Checks the sizes fit together; on failure names the offending key.
    pub(crate) fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err((key, "must be positive".into()));
        }
        if self.hidden_size.checked_rem(self.num_attention_heads) != Some(0) {
            return Err((
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err((
                "layer_norm_eps",
                format!("{} is not positive", self.layer_norm_eps),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `json` to a file `name` in a fresh folder; the folder is removed when the
    /// returned guard is dropped.
    fn write(name: &str, json: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("latentd-clip-config-")
            .tempdir()
            .unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, json).unwrap();
        (dir, path)
    }

    #[test]
    fn missing_keys_take_transformers_defaults() {
        let (_dir, path) = write(
            "defaults.json",
            r#"{"hidden_size": 64, "num_attention_heads": 4, "unknown": 1}"#,
        );
        let config = ClipTextConfig::from_file(&path).unwrap();
        assert_eq!(config.hidden_size, 64);
        assert_eq!(config.num_attention_heads, 4);
        assert_eq!(config.hidden_act, HiddenAct::QuickGelu);
        assert_eq!(config.max_position_embeddings, 77);
        assert_eq!(config.vocab_size, 49408);
        assert_eq!(config.layer_norm_eps, 1e-5);
    }

    #[test]
    fn reads_gelu() {
        let (_dir, path) = write("gelu.json", r#"{"hidden_act": "gelu"}"#);
        assert_eq!(
            ClipTextConfig::from_file(&path).unwrap().hidden_act,
            HiddenAct::Gelu
        );
    }

    #[test]
    fn unsupported_activation_names_the_key() {
        let (_dir, path) = write("silu.json", r#"{"hidden_act": "silu"}"#);
        let err = ClipTextConfig::from_file(&path).unwrap_err();
        assert!(
            matches!(&err, Error::UnsupportedConfig { key, .. } if key == "hidden_act"),
            "{err}"
        );
        assert!(err.to_string().contains("silu"), "{err}");
    }

    #[test]
    fn heads_must_divide_hidden_size() {
        let (_dir, path) = write(
            "heads.json",
            r#"{"hidden_size": 30, "num_attention_heads": 4}"#,
        );
        let err = ClipTextConfig::from_file(&path).unwrap_err();
        assert!(
            matches!(&err, Error::UnsupportedConfig { key, .. } if key == "num_attention_heads"),
            "{err}"
        );
    }
}
