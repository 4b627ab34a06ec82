//! Pieces shared by the deserialisers of diffusers `config.json` files.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Reads and deserialises a JSON file.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Where a configuration came from, for error messages.
pub(crate) fn origin_or_default(origin: &Option<PathBuf>, fallback: &str) -> PathBuf {
    origin.clone().unwrap_or_else(|| PathBuf::from(fallback))
}

/// A setting given either once for every block or as one value per block,
/// as diffusers accepts for e.g. `attention_head_dim` or `layers_per_block`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    /// The same value for every block.
    Same(T),
    /// One value per block, in down-block order.
    Each(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// The value for each of `n` blocks; `None` when a list has the wrong length.
    pub fn expand(&self, n: usize) -> Option<Vec<T>> {
        match self {
            PerBlock::Same(v) => Some(vec![v.clone(); n]),
            PerBlock::Each(vs) if vs.len() == n => Some(vs.clone()),
            PerBlock::Each(_) => None,
        }
    }
}

/// The `sample_size` of a model: one number for square inputs or `[height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    /// Square inputs of this side.
    Square(usize),
    /// `[height, width]`.
    HeightWidth([usize; 2]),
}

impl SampleSize {
    /// `(height, width)`.
    pub fn height_width(&self) -> (usize, usize) {
        match *self {
            SampleSize::Square(s) => (s, s),
            SampleSize::HeightWidth([h, w]) => (h, w),
        }
    }
}
