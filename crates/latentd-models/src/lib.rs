//! Latent diffusion models on candle: pure, synchronous model code.
//!
//! Nothing here knows about tokio or HTTP; the engine crate drives these types
//! from its own worker threads.

pub mod error;
pub mod rng;
pub mod schedulers;

pub use error::{Error, Result};
pub use rng::TorchRng;
