//! Integration tests of latentd-demo, in one binary to save link time.

mod analyser;
mod data;

use latentd_demo::{sample_indexed, SamplerConfig, Scene};

/// The dataset seed the tests sample from.
pub const SEED: u64 = 2024;

/// The first `count` scenes of the test dataset.
pub fn scenes(count: u64) -> impl Iterator<Item = Scene> {
    let cfg = SamplerConfig::default();
    (0..count).map(move |i| sample_indexed(SEED, i, &cfg))
}
