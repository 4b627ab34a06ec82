//! What the examples share: random weights for a layer loaded from a [`VarMap`].

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

/// Gives every variable of `map` random values (normal, standard deviation 0.05) and
/// returns the same values as plain tensors by name, to load the layer again without
/// training variables (which keep candle's differentiable paths).
pub fn random_weights(map: &VarMap, dev: &Device) -> anyhow::Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    for (name, var) in map
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .iter()
    {
        let value = Tensor::randn(0f32, 0.05, var.shape(), dev)?;
        var.set(&value)?;
        tensors.insert(name.clone(), value);
    }
    Ok(tensors)
}
