//! The exponential moving average of trained weights that stage 2 saves.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};
use candle_nn::VarMap;

use crate::vae_stage::frozen;
use crate::{Error, Result};

/// An exponential moving average of the variables of one [`VarMap`].
pub(crate) struct Ema {
    decay: f64,
    entries: Vec<(String, Var, Tensor)>,
}

impl Ema {
    pub(crate) fn new(varmap: &VarMap, decay: f64) -> Result<Self> {
        let mut entries = frozen(varmap)?
            .into_iter()
            .map(|(name, tensor)| {
                let var = var_named(varmap, &name)?;
                Ok((name, var, tensor.copy()?))
            })
            .collect::<Result<Vec<_>>>()?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self { decay, entries })
    }

    /// Moves the averages towards the variables; the decay ramps up over the
    /// first steps, `min(decay, (1 + step) / (10 + step))`.
    pub(crate) fn update(&mut self, step: usize) -> Result<()> {
        let decay = self.decay.min((1 + step) as f64 / (10 + step) as f64);
        for (_, var, average) in &mut self.entries {
            // Detached: an average built from the variable would keep every
            // step's graph (and tensors) alive through its inputs.
            let current = var.as_tensor().detach();
            *average = ((&*average * decay)? + (current * (1.0 - decay))?)?.detach();
        }
        Ok(())
    }

    /// Writes the averages as a safetensors file.
    pub(crate) fn save(&self, path: &Path) -> Result<()> {
        let tensors: HashMap<String, Tensor> = self
            .entries
            .iter()
            .map(|(name, _, average)| (name.clone(), average.clone()))
            .collect();
        candle_core::safetensors::save(&tensors, path)?;
        Ok(())
    }

    /// Writes the averages into the variables.
    pub(crate) fn apply(&self) -> Result<()> {
        for (_, var, average) in &self.entries {
            var.set(average)?;
        }
        Ok(())
    }
}

fn var_named(varmap: &VarMap, name: &str) -> Result<Var> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::Config("the variable map's lock is poisoned".into()))?;
    data.get(name)
        .cloned()
        .ok_or_else(|| Error::Config(format!("no variable {name}")))
}
