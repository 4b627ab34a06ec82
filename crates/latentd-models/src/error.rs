//! The error type of the model crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is malformed or does not match the expected schema.
    #[error("invalid JSON in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A configuration value is present but not supported.
    #[error("{path}: unsupported value for `{key}`: {message}")]
    UnsupportedConfig {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// A weight file is missing a tensor, or a tensor has the wrong shape or dtype.
    #[error("weights {path}: {message}")]
    Weights { path: PathBuf, message: String },
    /// A tokenizer could not be built or failed on an input.
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    /// The call was stopped by its caller's interrupt check.
    #[error("the model call was interrupted")]
    Interrupted,
    /// Arguments given to a model or scheduler are invalid (shape, step count, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
