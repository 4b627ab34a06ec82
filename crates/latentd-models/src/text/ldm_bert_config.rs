//! `bert/config.json` of the CompVis LDM text-to-image pipeline (diffusers `LDMBertConfig`).

use std::path::Path;

use candle_core::Tensor;
use serde::Deserialize;

use crate::{Error, Result};

/// The activation between `fc1` and `fc2` (`activation_function`, a key of transformers'
/// `ACT2FN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LdmBertActivation {
    /// The exact, erf-based GELU (`gelu`, `gelu_python`): LDM-BERT's default.
    Gelu,
    /// The tanh approximation of GELU (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`,
    /// `gelu_accurate`).
    GeluTanh,
    /// `x * sigmoid(1.702 x)` (`quick_gelu`).
    QuickGelu,
    /// `relu`.
    Relu,
    /// `x * sigmoid(x)` (`silu`, `swish`).
    Silu,
    /// `tanh`.
    Tanh,
    /// `sigmoid`.
    Sigmoid,
    /// The identity (`linear`).
    Linear,
}

impl LdmBertActivation {
    const NAMES: [(&'static str, LdmBertActivation); 13] = [
        ("gelu", Self::Gelu),
        ("gelu_python", Self::Gelu),
        ("gelu_new", Self::GeluTanh),
        ("gelu_pytorch_tanh", Self::GeluTanh),
        ("gelu_fast", Self::GeluTanh),
        ("gelu_accurate", Self::GeluTanh),
        ("quick_gelu", Self::QuickGelu),
        ("relu", Self::Relu),
        ("silu", Self::Silu),
        ("swish", Self::Silu),
        ("tanh", Self::Tanh),
        ("sigmoid", Self::Sigmoid),
        ("linear", Self::Linear),
    ];

    /// The activation transformers registers under `name`, if supported here.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, act)| *act)
    }

    /// Applies the activation elementwise.
    pub fn apply(self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Gelu => xs.gelu_erf(),
            Self::GeluTanh => xs.gelu(),
            Self::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Self::Relu => xs.relu(),
            Self::Silu => xs.silu(),
            Self::Tanh => xs.tanh(),
            Self::Sigmoid => candle_nn::ops::sigmoid(xs),
            Self::Linear => Ok(xs.clone()),
        }
    }

    fn supported_names() -> String {
        let names: Vec<String> = Self::NAMES.iter().map(|(n, _)| format!("{n:?}")).collect();
        names.join(", ")
    }
}

impl<'de> Deserialize<'de> for LdmBertActivation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Self::from_name(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unsupported activation_function {name:?} (supported: {})",
                Self::supported_names()
            ))
        })
    }
}

/// LDM-BERT's hyper-parameters. Missing keys take diffusers' `LDMBertConfig` defaults (the
/// sizes of CompVis/ldm-text2im-large-256). Keys that only matter for training (dropouts,
/// `init_std`, `encoder_layerdrop`) or that the model never reads (`pad_token_id`,
/// `use_cache`, `scale_embedding`: diffusers' encoder does not scale its embeddings) are
/// ignored. transformers' aliases `hidden_size` (`d_model`) and `num_attention_heads`
/// (`encoder_attention_heads`) are honoured.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct LdmBertConfig {
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub encoder_layers: usize,
    pub encoder_ffn_dim: usize,
    pub encoder_attention_heads: usize,
    pub head_dim: usize,
    pub activation_function: LdmBertActivation,
    pub d_model: usize,
    /// `torch.nn.LayerNorm`'s default; LDMBertConfig has no key for it.
    #[serde(skip)]
    pub layer_norm_eps: f64,
}

impl Default for LdmBertConfig {
    fn default() -> Self {
        Self {
            vocab_size: 30522,
            max_position_embeddings: 77,
            encoder_layers: 32,
            encoder_ffn_dim: 5120,
            encoder_attention_heads: 8,
            head_dim: 64,
            activation_function: LdmBertActivation::Gelu,
            d_model: 1280,
            layer_norm_eps: 1e-5,
        }
    }
}

/// transformers' `attribute_map` of `LDMBertConfig`: alias -> key.
const ALIASES: [(&str, &str); 2] = [
    ("hidden_size", "d_model"),
    ("num_attention_heads", "encoder_attention_heads"),
];

impl LdmBertConfig {
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
        let unsupported = |key: &str, message: String| Error::UnsupportedConfig {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
        let mut value: serde_json::Value = serde_json::from_str(&text).map_err(json_error)?;
        let Some(object) = value.as_object_mut() else {
            return Err(unsupported("", "the config is not a JSON object".into()));
        };
        if let Some(act) = object.get("activation_function") {
            if act
                .as_str()
                .and_then(LdmBertActivation::from_name)
                .is_none()
            {
                return Err(unsupported(
                    "activation_function",
                    format!(
                        "{act} (supported: {})",
                        LdmBertActivation::supported_names()
                    ),
                ));
            }
        }
        for (alias, key) in ALIASES {
            let Some(aliased) = object.remove(alias) else {
                continue;
            };
            match object.get(key) {
                Some(direct) if *direct != aliased => {
                    return Err(unsupported(
                        alias,
                        format!("{aliased} contradicts `{key}` {direct}"),
                    ))
                }
                _ => {
                    object.insert(key.to_owned(), aliased);
                }
            }
        }
        let config: Self = serde_json::from_value(value).map_err(json_error)?;
        config
            .validate()
            .map_err(|(key, message)| unsupported(key, message))?;
        Ok(config)
    }

    /// Width of the attention's inner projections (`encoder_attention_heads * head_dim`).
    pub fn inner_dim(&self) -> usize {
        self.encoder_attention_heads * self.head_dim
    }

    /// Checks the sizes; on failure names the offending key.
    pub(crate) fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("encoder_ffn_dim", self.encoder_ffn_dim),
            ("encoder_attention_heads", self.encoder_attention_heads),
            ("head_dim", self.head_dim),
            ("d_model", self.d_model),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err((key, "must be positive".into()));
        }
        if self
            .encoder_attention_heads
            .checked_mul(self.head_dim)
            .is_none()
        {
            return Err((
                "head_dim",
                format!(
                    "{} heads of {} overflow",
                    self.encoder_attention_heads, self.head_dim
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
    use candle_core::Device;

    /// Writes `json` to a file `name` in a fresh folder; the folder is removed when the
    /// returned guard is dropped.
    fn write(name: &str, json: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("latentd-ldmbert-config-")
            .tempdir()
            .unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, json).unwrap();
        (dir, path)
    }

    fn key_of(err: &Error) -> &str {
        match err {
            Error::UnsupportedConfig { key, .. } => key,
            other => panic!("not an UnsupportedConfig error: {other}"),
        }
    }

    #[test]
    fn missing_keys_take_diffusers_defaults() {
        let (_dir, path) = write("defaults.json", r#"{"d_model": 64, "unknown": [1]}"#);
        let config = LdmBertConfig::from_file(&path).unwrap();
        assert_eq!(
            config,
            LdmBertConfig {
                d_model: 64,
                ..LdmBertConfig::default()
            }
        );
        assert_eq!(config.encoder_layers, 32);
        assert_eq!(config.inner_dim(), 512);
        assert_eq!(config.activation_function, LdmBertActivation::Gelu);
    }

    #[test]
    fn reads_a_config_as_diffusers_saves_it() {
        let (_dir, path) = write(
            "saved.json",
            r#"{"activation_dropout": 0.0, "activation_function": "gelu",
                "architectures": ["LDMBertModel"], "attention_dropout": 0.0,
                "classifier_dropout": 0.0, "d_model": 32, "dropout": 0.1, "dtype": "float32",
                "encoder_attention_heads": 2, "encoder_ffn_dim": 37, "encoder_layerdrop": 0.0,
                "encoder_layers": 2, "head_dim": 16, "init_std": 0.02,
                "max_position_embeddings": 77, "model_type": "ldmbert", "num_hidden_layers": 2,
                "pad_token_id": 0, "scale_embedding": false, "transformers_version": "5.24.0",
                "use_cache": true, "vocab_size": 50}"#,
        );
        let config = LdmBertConfig::from_file(&path).unwrap();
        assert_eq!(
            (config.d_model, config.encoder_layers, config.vocab_size),
            (32, 2, 50)
        );
        assert_eq!((config.encoder_attention_heads, config.head_dim), (2, 16));
        assert_eq!(config.encoder_ffn_dim, 37);
    }

    #[test]
    fn aliases_are_honoured_and_must_agree() {
        let (_dir, path) = write(
            "alias.json",
            r#"{"hidden_size": 48, "num_attention_heads": 3}"#,
        );
        let config = LdmBertConfig::from_file(&path).unwrap();
        assert_eq!((config.d_model, config.encoder_attention_heads), (48, 3));
        let (_dir, path) = write("clash.json", r#"{"hidden_size": 48, "d_model": 32}"#);
        let err = LdmBertConfig::from_file(&path).unwrap_err();
        assert_eq!(key_of(&err), "hidden_size");
    }

    #[test]
    fn unsupported_values_name_their_key() {
        let cases = [
            (r#"{"activation_function": "prelu"}"#, "activation_function"),
            (r#"{"activation_function": 3}"#, "activation_function"),
            (r#"{"head_dim": 0}"#, "head_dim"),
            (r#"{"vocab_size": 0}"#, "vocab_size"),
            (
                r#"{"max_position_embeddings": 0}"#,
                "max_position_embeddings",
            ),
        ];
        for (i, (json, key)) in cases.into_iter().enumerate() {
            let (_dir, path) = write(&format!("bad{i}.json"), json);
            let err = LdmBertConfig::from_file(&path).unwrap_err();
            assert_eq!(key_of(&err), key, "{json}");
            assert!(err.to_string().contains(&format!("bad{i}.json")), "{err}");
        }
        let (_dir, path) = write("badtype.json", r#"{"d_model": "wide"}"#);
        let err = LdmBertConfig::from_file(&path).unwrap_err();
        assert!(matches!(err, Error::Json { .. }), "{err}");
        let (_dir, path) = write("array.json", "[1]");
        assert!(LdmBertConfig::from_file(&path).is_err());
    }

    #[test]
    fn activations_match_their_definitions() {
        let xs = Tensor::new(&[-2f32, -0.5, 0.0, 0.7, 3.0], &Device::Cpu).unwrap();
        let values =
            |act: LdmBertActivation| -> Vec<f32> { act.apply(&xs).unwrap().to_vec1().unwrap() };
        let input: Vec<f32> = xs.to_vec1().unwrap();
        let erf_gelu = [
            -0.045_500_28_f32,
            -0.154_268_77,
            0.0,
            0.530_625_5,
            2.995_949_7,
        ];
        let tanh_gelu = |x: f32| {
            0.5 * x
                * (1.0 + ((2.0 / std::f32::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
        };
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        type Expected<'a> = Box<dyn Fn(usize, f32) -> f32 + 'a>;
        let cases: [(LdmBertActivation, Expected<'_>); 7] = [
            (LdmBertActivation::Gelu, Box::new(|i, _| erf_gelu[i])),
            (
                LdmBertActivation::GeluTanh,
                Box::new(move |_, x| tanh_gelu(x)),
            ),
            (
                LdmBertActivation::QuickGelu,
                Box::new(move |_, x| x * sigmoid(1.702 * x)),
            ),
            (LdmBertActivation::Relu, Box::new(|_, x| x.max(0.0))),
            (
                LdmBertActivation::Silu,
                Box::new(move |_, x| x * sigmoid(x)),
            ),
            (LdmBertActivation::Sigmoid, Box::new(move |_, x| sigmoid(x))),
            (LdmBertActivation::Linear, Box::new(|_, x| x)),
        ];
        for (act, want) in cases {
            for (i, (got, x)) in values(act).into_iter().zip(&input).enumerate() {
                assert!((got - want(i, *x)).abs() < 1e-5, "{act:?}({x}) = {got}");
            }
        }
        assert_eq!(
            LdmBertActivation::from_name("swish"),
            Some(LdmBertActivation::Silu)
        );
        assert_eq!(LdmBertActivation::from_name("GELU"), None);
    }
}
