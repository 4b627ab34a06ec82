//! Helpers shared by the parity tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

/// `tests/fixtures` at the workspace root.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Reference tensors of one fixture model (`refs/{name}.safetensors`).
pub fn refs(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures().join("refs").join(format!("{name}.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot load {}: {e}", path.display()))
}

/// Weights of `{model}/{component}` as an `f32` CPU `VarBuilder`.
pub fn weights(model: &str, component: &str) -> VarBuilder<'static> {
    let path = fixtures()
        .join(model)
        .join(component)
        .join("diffusion_pytorch_model.safetensors");
    // SAFETY: the fixture files are not modified while the tests run.
    unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &Device::Cpu) }.unwrap()
}

/// `{model}/{component}/config.json`.
pub fn config_path(model: &str, component: &str) -> PathBuf {
    fixtures().join(model).join(component).join("config.json")
}

/// Largest absolute elementwise difference; the shapes must match.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A named reference tensor.
pub fn get<'a>(refs: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    refs.get(key)
        .unwrap_or_else(|| panic!("reference {key} missing"))
}

/// `refs/{name}` parsed as JSON.
pub fn read_json<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = fixtures().join("refs").join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("malformed {}: {e}", path.display()))
}

/// The values of a tensor of any float dtype, flattened, as f64.
pub fn values_f64(tensor: &Tensor) -> Vec<f64> {
    tensor
        .to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .unwrap()
}
