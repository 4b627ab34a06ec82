//! Text conditioning for Stable Diffusion: CLIP's tokenizer and text encoder.

mod added_tokens;
pub mod clip;
pub mod config;
mod normalize;
pub mod tokenizer;
mod tokenizer_files;

pub use clip::ClipTextModel;
pub use config::{ClipTextConfig, HiddenAct};
pub use tokenizer::{ClipTokenizer, ClipTokenizerKind};
