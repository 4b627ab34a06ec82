//! Which dtype each part of a pipeline computes in.
//!
//! As in diffusers, the networks run in the dtype the user picks (weights are cast at
//! load), while the sampler's state (latents, noise, the scheduler's arithmetic, image
//! latents and masks) stays in `f32`; casts happen only where a network is entered or
//! left. An autoencoder whose config sets `force_upcast` is kept in `f32` under a half
//! dtype, since its activations overflow half precision.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// The dtype of the sampler's state: latents, noise and everything the scheduler touches.
pub const STATE_DTYPE: DType = DType::F32;

/// The dtype a model's networks compute in, as `--dtype` names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// 32-bit floats.
    #[default]
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl Precision {
    /// Every precision, in the order `--dtype` lists them.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::F16, Precision::Bf16];

    /// The default on `device`: `f16` on CUDA (what GPUs are fast at), `f32` elsewhere
    /// (candle's CPU kernels for half types convert on every op).
    pub fn default_for(device: &Device) -> Self {
        if device.is_cuda() {
            Precision::F16
        } else {
            Precision::F32
        }
    }

    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// `f32`, `f16` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }

    /// Whether this is a 16-bit type.
    pub fn is_half(self) -> bool {
        self != Precision::F32
    }

    /// The dtype of an autoencoder under this precision: `f32` when its config asks for
    /// `force_upcast` and this is a half type, else this precision's.
    pub fn autoencoder_dtype(self, force_upcast: bool) -> DType {
        if force_upcast && self.is_half() {
            DType::F32
        } else {
            self.dtype()
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" | "fp32" => Ok(Precision::F32),
            "f16" | "float16" | "fp16" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(Error::InvalidArgument(format!(
                "unknown dtype {other:?} (expected f32, f16 or bf16)"
            ))),
        }
    }
}

/// `xs` in `dtype`, without a copy when it already is.
pub(crate) fn cast(xs: &Tensor, dtype: DType) -> Result<Tensor> {
    if xs.dtype() == dtype {
        Ok(xs.clone())
    } else {
        Ok(xs.to_dtype(dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_defaults_follow_the_device() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        assert!("f64".parse::<Precision>().is_err());
        assert_eq!(Precision::default_for(&Device::Cpu), Precision::F32);
        assert_eq!(Precision::F16.autoencoder_dtype(true), DType::F32);
        assert_eq!(Precision::Bf16.autoencoder_dtype(true), DType::F32);
        assert_eq!(Precision::F16.autoencoder_dtype(false), DType::F16);
        assert_eq!(Precision::F32.autoencoder_dtype(true), DType::F32);
    }
}
