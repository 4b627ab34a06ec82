//! Finding a component's safetensors files and opening them as a `VarBuilder`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::{Error, Result};

/// The weight files of one component folder (e.g. `unet/`), in load order.
#[derive(Debug, Clone)]
pub struct WeightFiles {
    /// The component folder.
    pub dir: PathBuf,
    /// The safetensors files that make up the component.
    pub files: Vec<PathBuf>,
}

impl WeightFiles {
    /// Finds the weights of a component folder.
    ///
    /// Prefers a sharded index (`*.safetensors.index.json`), then the plain files
    /// (`model.safetensors`, `diffusion_pytorch_model.safetensors`), then an `fp16`
    /// variant when that is all there is.
    pub fn find(dir: &Path) -> Result<Self> {
        let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();

        if let Some(index) = names
            .iter()
            .find(|n| n.ends_with(".safetensors.index.json"))
        {
            let is_variant = index.matches('.').count() > 3;
            if !is_variant || !names.iter().any(|n| is_plain_index(n)) {
                return Self::from_index(dir, &dir.join(index));
            }
        }
        let safetensors: Vec<&String> = names
            .iter()
            .filter(|n| n.ends_with(".safetensors"))
            .collect();
        let plain: Vec<&String> = safetensors
            .iter()
            .copied()
            .filter(|n| n.matches('.').count() == 1)
            .collect();
        let chosen = if !plain.is_empty() {
            plain
        } else {
            safetensors
                .iter()
                .copied()
                .filter(|n| n.contains(".fp16.") || n.contains(".bf16."))
                .collect()
        };
        if chosen.is_empty() {
            let hint = if names
                .iter()
                .any(|n| n.ends_with(".bin") || n.ends_with(".ckpt"))
            {
                " (PyTorch pickle weights are not loaded; convert them to safetensors)"
            } else {
                ""
            };
            return Err(Error::Weights {
                path: dir.to_path_buf(),
                message: format!("no *.safetensors weight file found{hint}"),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files: chosen.into_iter().map(|n| dir.join(n)).collect(),
        })
    }

    fn from_index(dir: &Path, index: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|source| Error::Io {
            path: index.to_path_buf(),
            source,
        })?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| Error::Json {
                path: index.to_path_buf(),
                source,
            })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::Weights {
                path: index.to_path_buf(),
                message: "missing `weight_map` object".to_string(),
            })?;
        let mut files: Vec<PathBuf> = Vec::new();
        for file in map.values().filter_map(|v| v.as_str()) {
            let path = dir.join(file);
            if !files.contains(&path) {
                files.push(path);
            }
        }
        files.sort();
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
        })
    }

    /// Opens the files as a `VarBuilder` that converts every tensor to `dtype` on `device`.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        for file in &self.files {
            if !file.is_file() {
                return Err(Error::Weights {
                    path: file.clone(),
                    message: "weight file listed but missing".to_string(),
                });
            }
        }
        // SAFETY: the files are memory-mapped read-only; like every mmap-based loader we
        // rely on nobody truncating them while the model is loaded.
        unsafe { VarBuilder::from_mmaped_safetensors(&self.files, dtype, device) }.map_err(|e| {
            Error::Weights {
                path: self.dir.clone(),
                message: e.to_string(),
            }
        })
    }

    /// Turns an error raised while building a module from these weights into one that
    /// names the weight files (a missing tensor or a shape mismatch).
    pub fn context(&self, err: Error) -> Error {
        match err {
            Error::Candle(e) => Error::Weights {
                path: self.display_path(),
                message: e.to_string(),
            },
            other => other,
        }
    }

    /// Builds a component from the weights in `dir` (see [`WeightFiles::find`]); a
    /// failure names the files.
    pub fn load<M>(
        dir: &Path,
        dtype: DType,
        device: &Device,
        build: impl FnOnce(VarBuilder<'static>) -> Result<M>,
    ) -> Result<M> {
        let weights = Self::find(dir)?;
        build(weights.var_builder(dtype, device)?).map_err(|e| weights.context(e))
    }

    fn display_path(&self) -> PathBuf {
        match self.files.as_slice() {
            [one] => one.clone(),
            _ => self.dir.clone(),
        }
    }
}

fn is_plain_index(name: &str) -> bool {
    name.ends_with(".safetensors.index.json") && name.matches('.').count() == 3
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;
    use std::collections::HashMap;

    /// A fresh empty folder, removed when dropped.
    fn tmpdir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("latentd-weights-{name}-"))
            .tempdir()
            .unwrap()
    }

    fn write(dir: &Path, name: &str, dtype: DType) {
        let t = Tensor::arange(0f32, 6., &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let map = HashMap::from([("w".to_string(), t.to_dtype(dtype).unwrap())]);
        candle_core::safetensors::save(&map, dir.join(name)).unwrap();
    }

    #[test]
    fn prefers_plain_file_over_variant_and_converts_dtype() {
        let tmp = tmpdir("plain");
        let dir = tmp.path();
        write(dir, "diffusion_pytorch_model.safetensors", DType::F16);
        write(dir, "diffusion_pytorch_model.fp16.safetensors", DType::F16);
        let w = WeightFiles::find(dir).unwrap();
        assert_eq!(
            w.files,
            vec![dir.join("diffusion_pytorch_model.safetensors")]
        );
        let vb = w.var_builder(DType::F32, &Device::Cpu).unwrap();
        let t = vb.get((2, 3), "w").unwrap();
        assert_eq!(t.dtype(), DType::F32);
        assert_eq!(t.to_vec2::<f32>().unwrap()[1], vec![3., 4., 5.]);
    }

    #[test]
    fn falls_back_to_fp16_variant() {
        let tmp = tmpdir("variant");
        let dir = tmp.path();
        write(dir, "model.fp16.safetensors", DType::BF16);
        let w = WeightFiles::find(dir).unwrap();
        assert_eq!(w.files, vec![dir.join("model.fp16.safetensors")]);
    }

    #[test]
    fn missing_weights_and_shape_mismatch_name_the_file() {
        let tmp = tmpdir("missing");
        let dir = tmp.path();
        std::fs::write(dir.join("model.bin"), b"x").unwrap();
        let err = WeightFiles::find(dir).unwrap_err().to_string();
        assert!(
            err.contains("no *.safetensors") && err.contains("pickle"),
            "{err}"
        );

        write(dir, "model.safetensors", DType::F32);
        let w = WeightFiles::find(dir).unwrap();
        let vb = w.var_builder(DType::F32, &Device::Cpu).unwrap();
        let err = vb
            .get((3, 3), "w")
            .map_err(Error::from)
            .map_err(|e| w.context(e));
        let msg = err.unwrap_err().to_string();
        assert!(
            msg.contains("model.safetensors") && msg.contains("shape mismatch"),
            "{msg}"
        );
    }
}
