//! Helpers shared by the fixture-driven parity tests.
// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

/// `tests/fixtures` of the repository.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// `tests/fixtures/refs` of the repository.
pub fn refs_dir() -> PathBuf {
    fixtures_dir().join("refs")
}

/// Reads `refs/{name}` as JSON.
pub fn read_json<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = refs_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "missing fixture {} ({e}); see tests/fixtures/FORMAT.md",
            path.display()
        )
    });
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("malformed fixture {}: {e}", path.display()))
}

/// Reference tensors of `refs/{name}`.
pub struct Refs(HashMap<String, Tensor>);

impl Refs {
    pub fn load(name: &str) -> Self {
        let path = refs_dir().join(name);
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .unwrap_or_else(|e| panic!("cannot load fixture {} ({e})", path.display()));
        Self(tensors)
    }

    pub fn get(&self, key: &str) -> &Tensor {
        self.0
            .get(key)
            .unwrap_or_else(|| panic!("fixture tensor `{key}` is missing"))
    }

    /// The tensor `key` flattened to f64 values.
    pub fn values_f64(&self, key: &str) -> Vec<f64> {
        self.get(key)
            .to_dtype(DType::F64)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f64>())
            .unwrap()
    }
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(actual: &Tensor, expected: &Tensor) -> f64 {
    assert_eq!(actual.dims(), expected.dims(), "shape mismatch");
    let diff =
        (actual.to_dtype(DType::F64).unwrap() - expected.to_dtype(DType::F64).unwrap()).unwrap();
    diff.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}
