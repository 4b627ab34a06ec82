//! Latent diffusion models on candle: pure, synchronous model code.
//!
//! Nothing here knows about tokio or HTTP; the engine crate drives these types
//! from its own worker threads.

pub mod error;
pub mod text;

pub use error::{Error, Result};
