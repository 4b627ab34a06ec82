//! Mixed sizes on one worker: how long a small job takes while a large one runs, and
//! how long a cancel of the large one takes to end it, on the built-in model.
//!
//! ```sh
//! cargo run --release -p latentd-server --example fairness -- [BIG_SIDE] [RUNS]
//! ```
//!
//! Prints, for a 32x32 job of 20 steps: its latency alone, its latency submitted one
//! second after a BIG_SIDE x BIG_SIDE job of 20 steps started (default 512), the large
//! job's time per step, and the time from cancelling the large job (alone, mid-call) to
//! its `cancelled` event. Medians over RUNS (default 3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use latentd_engine::{Engine, EngineConfig, Event, GenerateRequest, Job};
use latentd_models::pipeline::{load_model, DiffusionModel};
use latentd_server::builtin;

fn request(prompt: &str, side: usize, seed: u64) -> GenerateRequest {
    GenerateRequest {
        prompt: Some(prompt.into()),
        width: Some(side),
        height: Some(side),
        steps: Some(20),
        seed: Some(seed),
        ..GenerateRequest::default()
    }
}

/// Blocks until the job's terminal event; returns when it came.
fn wait_end(job: &Arc<Job>) -> Instant {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut events = job.subscribe(0);
        while let Some((_, event)) = events.next().await {
            if matches!(event, Event::Done { .. } | Event::Error { .. }) {
                break;
            }
        }
    });
    Instant::now()
}

/// Waits until the job has made `steps` model calls.
fn wait_steps(job: &Arc<Job>, steps: usize) {
    while job.snapshot().step < steps {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let big: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(512);
    let runs: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let dir = builtin::unpack()?;
    let model: Arc<dyn DiffusionModel> = load_model(&dir, Some(builtin::MODEL_NAME), &Device::Cpu)?;
    let config = EngineConfig {
        max_width: Some(big),
        max_height: Some(big),
        ..EngineConfig::default()
    };
    let engine = Engine::start(vec![vec![model]], config)?;

    // Warm-up, then the small job alone.
    wait_end(&engine.submit(&request("a red circle", 32, 0))?);
    let mut alone = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        wait_end(&engine.submit(&request("a red circle", 32, i as u64))?);
        alone.push(t.elapsed().as_secs_f64());
    }

    let mut beside = Vec::new();
    let mut per_big_step = Vec::new();
    let mut cancel = Vec::new();
    for i in 0..runs {
        let large = engine.submit(&request("a blue square", big, 100 + i as u64))?;
        wait_steps(&large, 1);
        let t_step = Instant::now();
        wait_steps(&large, 2);
        per_big_step.push(t_step.elapsed().as_secs_f64());
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        wait_end(&engine.submit(&request("a red circle", 32, i as u64))?);
        beside.push(t.elapsed().as_secs_f64());
        // The large job is alone again, mid-call: cancel it.
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        large.cancel();
        let ended = wait_end(&large);
        cancel.push((ended - t).as_secs_f64());
    }
    println!("large job: {big}x{big}, 20 steps; small job: 32x32, 20 steps; medians of {runs}");
    println!("| measure | seconds |");
    println!("|---|---|");
    println!("| small job alone | {:.3} |", median(alone));
    println!("| small job beside the large one | {:.3} |", median(beside));
    println!(
        "| one step of the large job | {:.3} |",
        median(per_big_step)
    );
    println!(
        "| cancel of the large job to its end | {:.3} |",
        median(cancel)
    );
    Ok(())
}
