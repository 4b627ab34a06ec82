//! Schedulers against diffusers step references in `tests/fixtures/refs/schedulers.*`.
//!
//! Each case is run free: our own sample of step k feeds step k + 1, as in a real
//! sampling loop, so errors would accumulate rather than be reset by the references.

mod common;

use latentd_models::schedulers::{build_scheduler, SchedulerConfig, SchedulerKind};
use latentd_models::TorchRng;
use serde::Deserialize;

use std::collections::HashMap;

use candle_core::Tensor;
use common::{fixtures, get, max_abs_diff, read_json, refs, values_f64};

/// Required agreement of timesteps and `init_noise_sigma`.
const SCALAR_TOLERANCE: f64 = 1e-6;
/// Required agreement of every scaled input and every step output (max abs).
const TENSOR_TOLERANCE: f64 = 1e-4;

#[derive(Deserialize)]
struct SchedulerFixture {
    cases: Vec<SchedulerCase>,
}

#[derive(Deserialize)]
struct SchedulerCase {
    id: String,
    config: String,
    scheduler: String,
    steps: usize,
    eta: f64,
    seed: u64,
    init_noise_sigma: f64,
}

/// Largest deviations seen in one case.
#[derive(Default)]
struct CaseReport {
    timesteps: f64,
    scaled: f64,
    prev: f64,
}

fn run_case(case: &SchedulerCase, refs: &HashMap<String, Tensor>) -> Result<CaseReport, String> {
    let id = &case.id;
    let path = fixtures()
        .join(&case.config)
        .join("scheduler/scheduler_config.json");
    let config = SchedulerConfig::from_file(&path).map_err(|e| e.to_string())?;
    let kind: SchedulerKind = case.scheduler.parse().map_err(|e| format!("{e}"))?;
    let mut scheduler =
        build_scheduler(kind, &config, case.steps, case.eta).map_err(|e| e.to_string())?;
    let mut report = CaseReport::default();

    let expected_timesteps = values_f64(get(refs, &format!("{id}.timesteps")));
    let timesteps = scheduler.timesteps();
    if timesteps.len() != expected_timesteps.len() {
        return Err(format!(
            "{} timesteps, diffusers has {}: {timesteps:?} vs {expected_timesteps:?}",
            timesteps.len(),
            expected_timesteps.len()
        ));
    }
    for (a, e) in timesteps.iter().zip(&expected_timesteps) {
        report.timesteps = report.timesteps.max((a - e).abs());
    }
    if report.timesteps > SCALAR_TOLERANCE {
        return Err(format!(
            "timesteps {timesteps:?} differ from {expected_timesteps:?}"
        ));
    }
    let sigma_diff = (scheduler.init_noise_sigma() - case.init_noise_sigma).abs();
    if sigma_diff > SCALAR_TOLERANCE {
        return Err(format!(
            "init_noise_sigma {} differs from {}",
            scheduler.init_noise_sigma(),
            case.init_noise_sigma
        ));
    }

    let mut rng = TorchRng::new(case.seed);
    let mut sample = get(refs, &format!("{id}.sample")).clone();
    for k in 0..expected_timesteps.len() {
        let scaled = scheduler
            .scale_model_input(&sample, k)
            .map_err(|e| format!("scale_model_input {k}: {e}"))?;
        report.scaled = report
            .scaled
            .max(max_abs_diff(&scaled, get(refs, &format!("{id}.scaled.{k}"))).into());
        let model_output = get(refs, &format!("{id}.model_output.{k}"));
        sample = scheduler
            .step(model_output, k, &sample, &mut rng)
            .map_err(|e| format!("step {k}: {e}"))?;
        report.prev = report
            .prev
            .max(max_abs_diff(&sample, get(refs, &format!("{id}.prev.{k}"))).into());
    }
    if report.scaled > TENSOR_TOLERANCE || report.prev > TENSOR_TOLERANCE {
        return Err(format!(
            "max abs diff scaled {:e}, prev {:e} (tolerance {TENSOR_TOLERANCE:e})",
            report.scaled, report.prev
        ));
    }
    Ok(report)
}

#[test]
fn schedulers_match_diffusers() {
    let fixture: SchedulerFixture = read_json("schedulers.json");
    let refs = refs("schedulers");
    assert!(!fixture.cases.is_empty(), "schedulers.json has no cases");
    let mut failures = Vec::new();
    let mut worst = CaseReport::default();
    for case in &fixture.cases {
        match run_case(case, &refs) {
            Ok(report) => {
                println!(
                    "{:<28} timesteps {:.1e}  scaled {:.1e}  prev {:.1e}",
                    case.id, report.timesteps, report.scaled, report.prev
                );
                worst.timesteps = worst.timesteps.max(report.timesteps);
                worst.scaled = worst.scaled.max(report.scaled);
                worst.prev = worst.prev.max(report.prev);
            }
            Err(message) => failures.push(format!("{}: {message}", case.id)),
        }
    }
    println!(
        "all cases: timesteps {:.1e}  scaled {:.1e}  prev {:.1e}",
        worst.timesteps, worst.scaled, worst.prev
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
