//! Errors of the training crate.

use std::path::PathBuf;

/// Anything that can stop training, saving or evaluation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A JSON file could not be written or parsed.
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// A model could not be built, loaded or run.
    #[error(transparent)]
    Model(#[from] latentd_models::Error),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The synthetic data could not be generated or judged.
    #[error(transparent)]
    Demo(#[from] latentd_demo::Error),
    /// A training or evaluation setting is unusable.
    #[error("invalid setting: {0}")]
    Config(String),
    /// A training thread could not start, or panicked.
    #[error("training thread: {0}")]
    Thread(String),
    /// Training diverged.
    #[error("{stage}: loss became {loss} at step {step}")]
    Diverged {
        stage: &'static str,
        step: usize,
        loss: f32,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Wraps an I/O error with its path.
pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}
