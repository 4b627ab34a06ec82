//! A bounded load test on 127.0.0.1: sends N requests with C in flight to
//! `POST /v1/generate` (asking for `Accept: image/png`) and reports statuses, latency
//! and throughput.
//!
//! By default it starts the server in-process on a model folder and runs the load
//! twice, once with the given batch budget and once with `--max-batch-rows 2`. With
//! `--url BASE` it sends the load once to a server already running at BASE (latentd or
//! anything serving the same request, such as `bench/diffusers_server.py`).
//!
//! The load: `--scheduler mix` (the default) rotates over six schedulers with
//! `steps`, `steps - 1` and `steps - 2` steps; a scheduler's name gives every request
//! that scheduler and exactly `--steps` steps. Guidance is `--guidance G` for every
//! request, or by default 1.0 (unguided) for every fourth and 7.5 for the others.
//! `--width`/`--height` are sent only when given (else the model's native size).
//!
//! ```sh
//! cargo run --release -p latentd-server --example loadtest -- \
//!     [--model DIR | --url http://127.0.0.1:8080] [--requests 200] [--concurrency 16] \
//!     [--rows 16] [--steps 20] [--scheduler mix|ddim|...] [--guidance G] \
//!     [--width W] [--height H] [--max-queue 64]
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use latentd_engine::{Engine, EngineConfig};
use latentd_models::pipeline::load_model;
use latentd_server::http::{AppState, RunningServer};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// The schedulers `--scheduler mix` rotates over.
const MIX: [&str; 6] = [
    "ddim",
    "euler-a",
    "dpmpp-2m",
    "euler",
    "pndm",
    "dpmpp-2m-karras",
];
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

struct Args {
    model: PathBuf,
    url: Option<String>,
    requests: usize,
    concurrency: usize,
    rows: usize,
    steps: usize,
    max_queue: usize,
    /// `None`: the mix.
    scheduler: Option<String>,
    /// `None`: 1.0 for every fourth request, 7.5 for the others.
    guidance: Option<f64>,
    width: Option<u32>,
    height: Option<u32>,
}

fn parse<T: FromStr>(flag: &str, value: &str) -> T {
    value.parse().unwrap_or_else(|_| {
        eprintln!("{flag}: cannot read `{value}`");
        std::process::exit(2)
    })
}

fn parse_args() -> Args {
    let mut args = Args {
        model: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd1-tiny"),
        url: None,
        requests: 200,
        concurrency: 16,
        rows: 16,
        steps: 20,
        max_queue: 64,
        scheduler: None,
        guidance: None,
        width: None,
        height: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        let number = || parse::<usize>(&flag, &value);
        match flag.as_str() {
            "--model" => args.model = PathBuf::from(&value),
            "--url" => args.url = Some(value.trim_end_matches('/').to_string()),
            "--requests" => args.requests = number(),
            "--concurrency" => args.concurrency = number().max(1),
            "--rows" => args.rows = number().max(1),
            "--steps" => args.steps = number().max(1),
            "--max-queue" => args.max_queue = number().max(1),
            "--scheduler" => args.scheduler = Some(value).filter(|s| s != "mix"),
            "--guidance" => args.guidance = Some(parse(&flag, &value)),
            "--width" => args.width = Some(parse(&flag, &value)),
            "--height" => args.height = Some(parse(&flag, &value)),
            other => eprintln!("ignoring unknown flag {other}"),
        }
    }
    args
}

/// The JSON body of request `i`.
fn body(args: &Args, i: usize) -> Value {
    let (scheduler, steps) = match &args.scheduler {
        Some(name) => (name.as_str(), args.steps),
        None => (MIX[i % MIX.len()], args.steps.saturating_sub(i % 3).max(1)),
    };
    let guidance = args
        .guidance
        .unwrap_or(if i.is_multiple_of(4) { 1.0 } else { 7.5 });
    let mut body = json!({
        "prompt": format!("request {i}: a red circle above a blue square"),
        "steps": steps,
        "scheduler": scheduler,
        "guidance_scale": guidance,
        "seed": i,
    });
    if let Some(w) = args.width {
        body["width"] = w.into();
    }
    if let Some(h) = args.height {
        body["height"] = h.into();
    }
    body
}

struct Outcome {
    statuses: BTreeMap<u16, usize>,
    /// 200 answers whose body is not a PNG.
    not_png: usize,
    images: usize,
    wall: Duration,
    latencies: Vec<Duration>,
    /// UNet calls and rows run, known only for the in-process server.
    engine: Option<(u64, u64)>,
}

/// Sends the load to `base` (`http://host:port`) and collects what came back.
async fn send_load(args: &Args, base: &str) -> Outcome {
    let url = format!("{base}/v1/generate");
    let client = reqwest::Client::new();
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.requests {
        let permit = gate.clone().acquire_owned().await.expect("semaphore open");
        let request = client
            .post(&url)
            .header(reqwest::header::ACCEPT, "image/png")
            .json(&body(args, i));
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let (status, png) = match request.send().await {
                Ok(r) => {
                    let s = r.status().as_u16();
                    let bytes = r.bytes().await.unwrap_or_default();
                    (s, bytes.starts_with(PNG_SIGNATURE))
                }
                Err(_) => (0, false),
            };
            drop(permit);
            (status, png, t.elapsed())
        }));
    }
    let mut statuses = BTreeMap::new();
    let mut not_png = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        let (status, png, latency) = t.await.expect("task joins");
        *statuses.entry(status).or_insert(0) += 1;
        if status == 200 && png {
            latencies.push(latency);
        } else if status == 200 {
            not_png += 1;
        }
    }
    let wall = started.elapsed();
    latencies.sort();
    Outcome {
        images: latencies.len(),
        statuses,
        not_png,
        wall,
        latencies,
        engine: None,
    }
}

/// Starts latentd in-process with a batch budget of `rows` and sends the load to it.
async fn run_in_process(args: &Args, rows: usize) -> Outcome {
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
    let mut outcome = send_load(args, &format!("http://{}", server.addr)).await;
    let stats = engine.stats();
    outcome.engine = Some((stats.unet_calls, stats.rows_run));
    let _ = server.shutdown().await;
    outcome
}

fn report(label: &str, o: &Outcome) -> f64 {
    let pct = |p: f64| {
        o.latencies
            .get(((o.latencies.len() as f64 - 1.0) * p).round() as usize)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    let throughput = o.images as f64 / o.wall.as_secs_f64();
    let engine = match o.engine {
        Some((calls, rows)) => format!(
            " | {calls} UNet calls, {:.1} rows/call",
            rows as f64 / calls.max(1) as f64
        ),
        None => String::new(),
    };
    let not_png = match o.not_png {
        0 => String::new(),
        n => format!(" ({n} without a PNG)"),
    };
    println!(
        "{label:<22} statuses {:?}{not_png} | {:.2} images/s | p50 {:.0} ms p95 {:.0} ms{engine} | wall {:.1} s",
        o.statuses,
        throughput,
        pct(0.5),
        pct(0.95),
        o.wall.as_secs_f64()
    );
    throughput
}

/// Answers other than 200 with a PNG or 429.
fn unexpected(o: &Outcome) -> usize {
    let statuses: usize = o
        .statuses
        .iter()
        .filter(|(s, _)| **s != 200 && **s != 429)
        .map(|(_, n)| n)
        .sum();
    statuses + o.not_png
}

/// A requested width or height, or the model's own.
fn side(v: Option<u32>) -> String {
    v.map_or("native".to_string(), |v| v.to_string())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let load = format!(
        "{} requests, {} concurrent, {} steps, scheduler {}, guidance {}, size {}",
        args.requests,
        args.concurrency,
        match args.scheduler {
            Some(_) => args.steps.to_string(),
            None => format!("~{}", args.steps),
        },
        args.scheduler.as_deref().unwrap_or("mix"),
        args.guidance
            .map_or("1.0 / 7.5".to_string(), |g| g.to_string()),
        match (args.width, args.height) {
            (None, None) => "native".to_string(),
            (w, h) => format!("{}x{}", side(w), side(h)),
        },
    );
    let bad = if let Some(base) = &args.url {
        println!("server {base} | {load}");
        let outcome = send_load(&args, base).await;
        report(base, &outcome);
        unexpected(&outcome)
    } else {
        println!("model {} | {load}", args.model.display());
        let batched = run_in_process(&args, args.rows).await;
        let a = report(&format!("--max-batch-rows {}", args.rows), &batched);
        let narrow = run_in_process(&args, 2).await;
        let b = report("--max-batch-rows 2", &narrow);
        println!(
            "throughput ratio (batched / 2 rows): {:.2}x",
            a / b.max(1e-9)
        );
        unexpected(&batched) + unexpected(&narrow)
    };
    println!("unexpected answers (not 200 with a PNG, nor 429): {bad}");
    if bad > 0 {
        std::process::exit(1);
    }
}
