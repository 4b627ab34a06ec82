//! The crate's error type (caption parsing has its own, [`crate::caption::ParseError`]).

use crate::sample::Split;

/// Errors from rendering, image handling, sampling and analysis.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An image side outside the supported range.
    #[error("image side {side} is outside {min}..={max}")]
    ImageSize {
        /// The requested side.
        side: u32,
        /// Smallest supported side.
        min: u32,
        /// Largest supported side.
        max: u32,
    },
    /// A pixel buffer whose length does not match its dimensions.
    #[error("{width}x{height} RGB image needs {expected} bytes, got {actual}")]
    ImageData {
        /// Image width.
        width: u32,
        /// Image height.
        height: u32,
        /// `width * height * 3`.
        expected: usize,
        /// The buffer's length.
        actual: usize,
    },
    /// No scene in the requested split was drawn within the attempt limit.
    #[error("no {split:?} scene in {attempts} draws")]
    SplitExhausted {
        /// Draws made.
        attempts: u32,
        /// The split asked for.
        split: Split,
    },
}

/// `std::result::Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
