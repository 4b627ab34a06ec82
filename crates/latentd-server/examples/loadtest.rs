//! A bounded load test on 127.0.0.1: starts the server in-process on a model folder,
//! sends N requests with C in flight, and reports statuses, latency and throughput,
//! once with the given batch budget and once with `--max-batch-rows 2`.
//!
//! ```sh
//! cargo run --release -p latentd-server --example loadtest -- \
//!     [--model DIR] [--requests 200] [--concurrency 16] [--rows 16] [--steps 20]
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use latentd_engine::{Engine, EngineConfig};
use latentd_models::pipeline::load_model;
use latentd_server::http::{AppState, RunningServer};
use serde_json::json;
use tokio::sync::Semaphore;

struct Args {
    model: PathBuf,
    requests: usize,
    concurrency: usize,
    rows: usize,
    steps: usize,
    max_queue: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        model: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd1-tiny"),
        requests: 200,
        concurrency: 16,
        rows: 16,
        steps: 20,
        max_queue: 64,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        let number = || value.parse::<usize>().unwrap_or(0);
        match flag.as_str() {
            "--model" => args.model = PathBuf::from(&value),
            "--requests" => args.requests = number(),
            "--concurrency" => args.concurrency = number().max(1),
            "--rows" => args.rows = number().max(1),
            "--steps" => args.steps = number().max(1),
            "--max-queue" => args.max_queue = number().max(1),
            other => eprintln!("ignoring unknown flag {other}"),
        }
    }
    args
}

struct Outcome {
    statuses: BTreeMap<u16, usize>,
    images: usize,
    wall: Duration,
    latencies: Vec<Duration>,
    unet_calls: u64,
    rows_run: u64,
}

async fn run(args: &Args, rows: usize) -> Outcome {
    let model = load_model(&args.model, None, &Device::Cpu).expect("model loads");
    let config = EngineConfig {
        max_batch_rows: rows,
        max_queue: args.max_queue,
        ..EngineConfig::default()
    };
    let engine = Engine::start(vec![vec![model]], config).expect("engine starts");
    let state = AppState::new(engine.clone(), None, 1 << 20);
    let server = RunningServer::start(
        state,
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_secs(60),
    )
    .await
    .expect("server starts");
    let url = format!("http://{}/v1/generate", server.addr);
    let client = reqwest::Client::new();
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let schedulers = [
        "ddim",
        "euler-a",
        "dpmpp-2m",
        "euler",
        "pndm",
        "dpmpp-2m-karras",
    ];
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.requests {
        let permit = gate.clone().acquire_owned().await.expect("semaphore open");
        let client = client.clone();
        let url = url.clone();
        let body = json!({
            "prompt": format!("request {i}: a red circle above a blue square"),
            "steps": args.steps - (i % 3),
            "scheduler": schedulers[i % schedulers.len()],
            "guidance_scale": if i % 4 == 0 { 1.0 } else { 7.5 },
            "seed": i,
        });
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let status = match client.post(url).json(&body).send().await {
                Ok(r) => {
                    let s = r.status().as_u16();
                    let _ = r.bytes().await;
                    s
                }
                Err(_) => 0,
            };
            drop(permit);
            (status, t.elapsed())
        }));
    }
    let mut statuses = BTreeMap::new();
    let mut latencies = Vec::new();
    for t in tasks {
        let (status, latency) = t.await.expect("task joins");
        *statuses.entry(status).or_insert(0) += 1;
        if status == 200 {
            latencies.push(latency);
        }
    }
    let wall = started.elapsed();
    let stats = engine.stats();
    let _ = server.shutdown().await;
    latencies.sort();
    Outcome {
        images: *statuses.get(&200).unwrap_or(&0),
        statuses,
        wall,
        latencies,
        unet_calls: stats.unet_calls,
        rows_run: stats.rows_run,
    }
}

fn report(label: &str, o: &Outcome) -> f64 {
    let pct = |p: f64| {
        o.latencies
            .get(((o.latencies.len() as f64 - 1.0) * p).round() as usize)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    let throughput = o.images as f64 / o.wall.as_secs_f64();
    println!(
        "{label:<22} statuses {:?} | {:.2} images/s | p50 {:.0} ms p95 {:.0} ms | {} UNet calls, {:.1} rows/call | wall {:.1} s",
        o.statuses,
        throughput,
        pct(0.5),
        pct(0.95),
        o.unet_calls,
        o.rows_run as f64 / o.unet_calls.max(1) as f64,
        o.wall.as_secs_f64()
    );
    throughput
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    println!(
        "model {} | {} requests, {} concurrent, ~{} steps each",
        args.model.display(),
        args.requests,
        args.concurrency,
        args.steps
    );
    let batched = run(&args, args.rows).await;
    let a = report(&format!("--max-batch-rows {}", args.rows), &batched);
    let narrow = run(&args, 2).await;
    let b = report("--max-batch-rows 2", &narrow);
    let unexpected: usize = batched
        .statuses
        .iter()
        .chain(narrow.statuses.iter())
        .filter(|(s, _)| **s != 200 && **s != 429)
        .map(|(_, n)| n)
        .sum();
    println!(
        "throughput ratio (batched / 2 rows): {:.2}x",
        a / b.max(1e-9)
    );
    println!("unexpected statuses (not 200 or 429): {unexpected}");
    if unexpected > 0 {
        std::process::exit(1);
    }
}
