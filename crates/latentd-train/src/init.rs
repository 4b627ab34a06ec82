//! Deterministic initialisation of every trainable variable.
//!
//! candle's CPU random generator cannot be seeded, so after the models have
//! created their variables each one is overwritten with values drawn from a
//! generator seeded by the run's seed and the variable's name (independent of
//! creation order), following torch's default initialisers.

use candle_core::Tensor;
use candle_nn::VarMap;
use latentd_demo::Rng;

use crate::Result;

/// Standard deviation of CLIP's token and position embeddings.
const EMBEDDING_STD: f64 = 0.02;

/// Re-initialises every variable of `varmap` from `seed`:
/// rank-1 `weight`s (norms) to one, biases to zero, embeddings normal with
/// standard deviation 0.02, other weights uniform in `±1/sqrt(fan_in)`.
pub fn initialise(varmap: &VarMap, seed: u64) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| crate::Error::Config("the variable map's lock is poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let count: usize = dims.iter().product();
        let mut rng = Rng::new(seed ^ fnv1a(name));
        let values: Vec<f32> = if name.ends_with("bias") {
            vec![0.0; count]
        } else if dims.len() == 1 {
            vec![1.0; count]
        } else if name.ends_with("token_embedding.weight")
            || name.ends_with("position_embedding.weight")
        {
            (0..count)
                .map(|_| (rng.normal() * EMBEDDING_STD) as f32)
                .collect()
        } else {
            let fan_in: usize = dims[1..].iter().product();
            let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
            (0..count)
                .map(|_| ((2.0 * rng.unit() - 1.0) * bound) as f32)
                .collect()
        };
        let tensor = Tensor::from_vec(values, dims.as_slice(), var.device())?;
        var.set(&tensor.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// 64-bit FNV-1a hash of a name.
fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn build(seed: u64) -> VarMap {
        let varmap = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        candle_nn::linear(8, 4, vb.pp("proj")).unwrap();
        vb.pp("norm").get(4, "weight").unwrap();
        initialise(&varmap, seed).unwrap();
        varmap
    }

    fn values(varmap: &VarMap, name: &str) -> Vec<f32> {
        let data = varmap.data().lock().unwrap();
        data[name]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn reproducible_and_shaped_like_torch() {
        let (a, b, c) = (build(1), build(1), build(2));
        assert_eq!(values(&a, "proj.weight"), values(&b, "proj.weight"));
        assert_ne!(values(&a, "proj.weight"), values(&c, "proj.weight"));
        let w = values(&a, "proj.weight");
        let bound = 1.0 / 8f32.sqrt();
        assert!(w.iter().all(|v| v.abs() <= bound) && w.iter().any(|v| v.abs() > bound / 2.0));
        assert_eq!(values(&a, "proj.bias"), vec![0.0; 4]);
        assert_eq!(values(&a, "norm.weight"), vec![1.0; 4]);
    }
}
