//! `TorchRng` against `torch.randn` draws recorded in `tests/fixtures/refs/rng.*`.

mod common;

use candle_core::Device;
use latentd_models::TorchRng;
use serde::Deserialize;

use common::{get, max_abs_diff, read_json, refs};

/// Required agreement with torch, per value.
const TOLERANCE: f32 = 1e-6;

#[derive(Deserialize)]
struct RngFixture {
    cases: Vec<RngCase>,
}

#[derive(Deserialize)]
struct RngCase {
    id: String,
    seed: String,
    shapes: Vec<Vec<usize>>,
}

#[test]
fn successive_draws_match_torch() {
    let fixture: RngFixture = read_json("rng.json");
    let refs = refs("rng");
    assert!(!fixture.cases.is_empty(), "rng.json has no cases");
    let mut worst = 0f32;
    for case in &fixture.cases {
        let seed: u64 = case.seed.parse().unwrap();
        let mut rng = TorchRng::new(seed);
        for (j, shape) in case.shapes.iter().enumerate() {
            let actual = rng.randn_tensor(shape, &Device::Cpu).unwrap();
            let expected = get(&refs, &format!("{}.draw{j}", case.id));
            let diff = max_abs_diff(&actual, expected);
            assert!(
                diff <= TOLERANCE,
                "{} (seed {seed}) draw {j} {shape:?}: max abs diff {diff:e}",
                case.id
            );
            worst = worst.max(diff);
        }
    }
    println!("rng: {} cases, max abs diff {worst:e}", fixture.cases.len());
}
