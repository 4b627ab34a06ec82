//! Reading one checkpoint file: safetensors (memory-mapped) or a PyTorch zip pickle
//! (`.ckpt`, `.pt`, `.pth`), the latter through candle's pickle reader, which interprets
//! the opcodes without running any of the pickled code.

use std::collections::BTreeMap;
use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use candle_core::pickle::PthTensors;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// Where a checkpoint's tensors are read from.
enum Source {
    Safetensors(MmapedSafetensors),
    Pickle(PthTensors),
}

/// The on-disk formats a single-file checkpoint comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// A `.safetensors` file.
    Safetensors,
    /// A `torch.save` zip archive (`.ckpt`, `.pt`, `.pth`).
    TorchZip,
}

/// An opened checkpoint: every tensor's name and shape, each tensor read on demand.
pub struct CheckpointFile {
    path: PathBuf,
    format: CheckpointFormat,
    shapes: BTreeMap<String, Vec<usize>>,
    source: Source,
}

impl std::fmt::Debug for CheckpointFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointFile")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("tensors", &self.shapes.len())
            .finish_non_exhaustive()
    }
}

impl CheckpointFile {
    /// Opens `path`, telling the format from its first bytes. A pickle's tensors are
    /// taken from its top-level `state_dict` entry when it has one.
    pub fn open(path: &Path) -> Result<Self> {
        let format = sniff(path)?;
        let (source, shapes) = match format {
            CheckpointFormat::Safetensors => open_safetensors(path)?,
            CheckpointFormat::TorchZip => open_pickle(path)?,
        };
        if shapes.is_empty() {
            return Err(weights_error(path, "the file holds no tensors".into()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            format,
            shapes,
            source,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's format.
    pub fn format(&self) -> CheckpointFormat {
        self.format
    }

    /// Every tensor name, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.shapes.keys().map(String::as_str)
    }

    /// Every tensor's shape by name.
    pub fn shapes(&self) -> &BTreeMap<String, Vec<usize>> {
        &self.shapes
    }

    /// Whether the file has a tensor of that name.
    pub fn contains(&self, key: &str) -> bool {
        self.shapes.contains_key(key)
    }

    /// The shape of a tensor, if the file has it.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.shapes.get(key).map(Vec::as_slice)
    }

    /// Reads one tensor onto the CPU, in the file's dtype.
    pub fn load(&self, key: &str) -> Result<Tensor> {
        let error = |message: String| weights_error(&self.path, format!("`{key}`: {message}"));
        match &self.source {
            Source::Safetensors(st) => st.load(key, &Device::Cpu).map_err(|e| error(e.to_string())),
            Source::Pickle(pth) => {
                let read = catch_unwind(AssertUnwindSafe(|| pth.get(key)));
                match read {
                    Ok(Ok(Some(tensor))) => Ok(tensor),
                    Ok(Ok(None)) => Err(error("not in the file".into())),
                    Ok(Err(e)) => Err(error(e.to_string())),
                    Err(_) => Err(error("the pickle reader failed on this tensor".into())),
                }
            }
        }
    }
}

/// A `Weights` error about `path`.
pub(crate) fn weights_error(path: &Path, message: String) -> Error {
    Error::Weights {
        path: path.to_path_buf(),
        message,
    }
}

/// Safetensors starts with its header's length and then `{`; a torch zip with `PK`.
fn sniff(path: &Path) -> Result<CheckpointFormat> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut head = [0u8; 9];
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]).map_err(io)? {
            0 => break,
            n => filled += n,
        }
    }
    if filled >= 4 && head.starts_with(b"PK\x03\x04") {
        return Ok(CheckpointFormat::TorchZip);
    }
    if filled == head.len() && head[8] == b'{' {
        return Ok(CheckpointFormat::Safetensors);
    }
    let message = if filled > 0 && head[0] == 0x80 {
        "a legacy (pre-zip) torch.save pickle: re-save it with a current PyTorch or as \
         safetensors"
    } else if filled < head.len() {
        "the file is too short to be a checkpoint"
    } else {
        "neither a safetensors file nor a PyTorch zip checkpoint (.ckpt/.pt/.pth)"
    };
    Err(weights_error(path, message.into()))
}

type Opened = (Source, BTreeMap<String, Vec<usize>>);

fn open_safetensors(path: &Path) -> Result<Opened> {
    // SAFETY: the file is memory-mapped read-only; like every mmap-based loader we rely
    // on nobody truncating it while the model is loaded.
    let st = unsafe { MmapedSafetensors::new(path) }
        .map_err(|e| weights_error(path, format!("not a valid safetensors file: {e}")))?;
    let shapes = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect();
    Ok((Source::Safetensors(st), shapes))
}

fn open_pickle(path: &Path) -> Result<Opened> {
    let read = |key: Option<&str>| {
        catch_unwind(AssertUnwindSafe(|| PthTensors::new(path, key)))
            .map_err(|_| "the pickle reader failed on this file".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
    };
    // CompVis checkpoints nest the weights under `state_dict`; plain state dicts do not.
    let pth = match read(Some("state_dict")) {
        Ok(pth) if !pth.tensor_infos().is_empty() => pth,
        _ => read(None)
            .map_err(|e| weights_error(path, format!("not a readable PyTorch checkpoint: {e}")))?,
    };
    let shapes = pth
        .tensor_infos()
        .iter()
        .map(|(name, info)| (name.clone(), info.layout.shape().dims().to_vec()))
        .collect();
    Ok((Source::Pickle(pth), shapes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `bytes` to a file `name` in a fresh folder; the folder is removed when the
    /// returned guard is dropped.
    fn scratch(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("latentd-ckpt-")
            .tempdir()
            .unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn unknown_short_and_legacy_files_are_clear_errors() {
        for (name, bytes, want) in [
            ("empty", &b""[..], "too short"),
            ("text", &b"hello world, not a model"[..], "neither"),
            ("legacy", &b"\x80\x02}q\x00(X\x0a\x00\x00\x00"[..], "legacy"),
            ("zip", &b"PK\x03\x04garbage garbage"[..], "PyTorch"),
            (
                "st",
                &b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":"[..],
                "safetensors",
            ),
        ] {
            let (_dir, path) = scratch(name, bytes);
            let err = CheckpointFile::open(&path).unwrap_err().to_string();
            assert!(
                err.contains(want) && err.contains(&*path.to_string_lossy()),
                "{name}: {err}"
            );
        }
        let missing = CheckpointFile::open(Path::new("/nonexistent/model.safetensors"));
        assert!(matches!(missing, Err(Error::Io { .. })));
    }
}
