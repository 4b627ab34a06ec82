//! Synthetic data for latentd's built-in demo model.
//!
//! Small RGB images of one or two coloured shapes on a plain background, each
//! with a caption from a small grammar (`GRAMMAR.md`), and an analyser that
//! measures exactly whether an image shows what a caption states. Nothing
//! here is learned: the analyser is plain image analysis, so the prompt
//! adherence of a generative model trained on this data can be scored.
//!
//! ```
//! use latentd_demo::{analyse, caption, parse, render, sample_scene, Rng, SamplerConfig};
//!
//! let scene = sample_scene(&mut Rng::new(42), &SamplerConfig::default());
//! let text = caption(&scene);
//! let image = render(&scene, 32)?;
//! let verdict = analyse(&image, &parse(&text)?);
//! assert!(verdict.matches_all(), "{text}: {verdict:?}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Everything is deterministic: a seed gives the same scenes, captions and
//! pixels on every platform.

pub mod analyse;
pub mod caption;
pub mod error;
pub mod image;
pub mod judge;
pub mod perturb;
pub mod render;
pub mod rng;
pub mod sample;
pub mod scene;
pub mod segment;
pub mod template;

pub use analyse::{analyse, analyse_image, AnalyserConfig, Analysis, Detected};
pub use caption::{caption, describe, parse, Arrangement, ObjectSpec, ParseError, SceneSpec};
pub use error::{Error, Result};
pub use image::RgbImage;
pub use judge::Verdict;
pub use render::{render, DEFAULT_SIDE};
pub use rng::Rng;
pub use sample::{sample_indexed, sample_scene, sample_split, split_of, SamplerConfig, Split};
pub use scene::{Background, Colour, Content, Object, Point, Region, Relation, Scene, Shape, Size};
