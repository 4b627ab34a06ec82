//! A component's tensors under their module names: a `VarBuilder` backend over the
//! renamed file tensors that records which names the module asked for, so that a
//! missing tensor and a tensor nothing reads are both errors naming the file's key.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use super::file::{weights_error, CheckpointFile};
use super::keymap::{KeyMap, Mapped, Transform};
use crate::{Error, Result};

/// How many names an error lists before "and N more".
const LISTED: usize = 5;

/// "a, b, c (and 7 more)": the first few of `names` and how many there are.
pub(crate) fn listing(names: &[String]) -> String {
    let shown = names
        .iter()
        .take(LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match names.len().saturating_sub(LISTED) {
        0 => shown,
        more => format!("{shown} (and {more} more)"),
    }
}

/// A module tensor's source: the file key and how to read it.
#[derive(Debug, Clone)]
struct Entry {
    key: String,
    transform: Transform,
}

/// The module names of one component's file tensors.
pub(crate) struct Renamed {
    entries: HashMap<String, Entry>,
}

impl Renamed {
    /// Maps the file's tensors under `map.prefix`; `unknown` collects those no rule knows.
    pub fn new(file: &CheckpointFile, map: &KeyMap, unknown: &mut Vec<String>) -> Result<Self> {
        let mut entries = HashMap::new();
        for key in file.keys().filter(|k| k.starts_with(map.prefix)) {
            match map.forward(key) {
                Mapped::To(names) => {
                    for (name, transform) in names {
                        let entry = Entry {
                            key: key.to_string(),
                            transform,
                        };
                        if let Some(other) = entries.insert(name.clone(), entry) {
                            return Err(weights_error(
                                file.path(),
                                format!("`{key}` and `{}` both map to {name}", other.key),
                            ));
                        }
                    }
                }
                Mapped::Dropped => {}
                Mapped::Unknown => unknown.push(key.to_string()),
            }
        }
        Ok(Self { entries })
    }

    /// Every module tensor, read and transformed, in the file's dtype.
    pub fn tensors(&self, file: &CheckpointFile) -> Result<HashMap<String, Tensor>> {
        self.entries
            .iter()
            .map(|(name, entry)| Ok((name.clone(), read(file, entry)?)))
            .collect()
    }

    /// Builds a module from these tensors in `dtype` on `device`. A tensor the module
    /// needs and the file lacks, or a file tensor the module never reads, is an error
    /// naming the file keys (the first few and their count).
    pub fn build<M>(
        self,
        file: &Arc<CheckpointFile>,
        map: &KeyMap,
        dtype: DType,
        device: &Device,
        build: impl FnOnce(VarBuilder<'static>) -> Result<M>,
    ) -> Result<M> {
        let usage = Arc::new(Mutex::new(Usage::default()));
        let backend = Backend {
            file: Arc::clone(file),
            entries: self.entries,
            usage: Arc::clone(&usage),
        };
        let entries = backend.entries.clone();
        let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
        let path = file.path();
        let module = build(vb).map_err(|e| match e {
            Error::Candle(e) => weights_error(path, format!("{}: {e}", map.component)),
            other => other,
        })?;
        let usage = usage.lock().unwrap_or_else(PoisonError::into_inner);
        if !usage.missing.is_empty() {
            let names: Vec<String> = usage
                .missing
                .iter()
                .map(|name| map.reverse(name).unwrap_or_else(|| name.clone()))
                .collect();
            return Err(weights_error(
                path,
                format!(
                    "{} missing {} tensor(s): {}",
                    names.len(),
                    map.component,
                    listing(&names)
                ),
            ));
        }
        let mut unused: Vec<String> = entries
            .iter()
            .filter(|(name, _)| !usage.used.contains(*name))
            .map(|(_, entry)| entry.key.clone())
            .collect();
        if !unused.is_empty() {
            unused.sort();
            unused.dedup();
            return Err(unknown_error(file, &unused));
        }
        Ok(module)
    }
}

/// The error for tensors that belong to no part of the model.
pub(crate) fn unknown_error(file: &CheckpointFile, keys: &[String]) -> Error {
    weights_error(
        file.path(),
        format!(
            "{} unknown tensor(s), not part of a Stable Diffusion 1.x/2.x model of this \
             architecture: {}",
            keys.len(),
            listing(keys)
        ),
    )
}

/// Reads one file tensor and applies its transform.
fn read(file: &CheckpointFile, entry: &Entry) -> Result<Tensor> {
    let tensor = file.load(&entry.key)?;
    let bad = |message: String| weights_error(file.path(), format!("`{}`: {message}", entry.key));
    match entry.transform {
        Transform::Same => Ok(tensor),
        Transform::ConvToLinear => match tensor.dims() {
            [o, i, 1, 1] | [o, i, 1] => Ok(tensor.reshape((*o, *i))?),
            _ => Ok(tensor),
        },
        Transform::Part { index, parts } => {
            let rows = tensor.dims().first().copied().unwrap_or(0);
            if parts == 0 || !rows.is_multiple_of(parts) {
                return Err(bad(format!("{rows} rows do not split into {parts} parts")));
            }
            let n = rows / parts;
            Ok(tensor.narrow(0, index * n, n)?.contiguous()?)
        }
    }
}

/// A read error as the candle error a backend returns (the path is added once, later).
fn to_candle(err: Error) -> candle_core::Error {
    match err {
        Error::Weights { message, .. } => candle_core::Error::Msg(message),
        other => candle_core::Error::Msg(other.to_string()),
    }
}

#[derive(Default)]
struct Usage {
    used: HashSet<String>,
    missing: Vec<String>,
}

struct Backend {
    file: Arc<CheckpointFile>,
    entries: HashMap<String, Entry>,
    usage: Arc<Mutex<Usage>>,
}

impl Backend {
    fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SimpleBackend for Backend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let Some(entry) = self.entries.get(name) else {
            // Recorded, and zeros so that building goes on and every missing name is found.
            self.usage().missing.push(name.to_string());
            return Tensor::zeros(shape, dtype, dev);
        };
        let tensor = read(&self.file, entry).map_err(to_candle)?;
        if tensor.shape() != &shape {
            return Err(candle_core::Error::Msg(format!(
                "`{}` has shape {:?}, the architecture needs {:?}",
                entry.key,
                tensor.dims(),
                shape.dims()
            )));
        }
        self.usage().used.insert(name.to_string());
        tensor.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            })?;
        let tensor = read(&self.file, entry).map_err(to_candle)?;
        self.usage().used.insert(name.to_string());
        tensor.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}
