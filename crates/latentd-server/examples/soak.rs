//! A soak run on 127.0.0.1: the server in-process on a model folder, N requests with
//! C in flight mixing synchronous JSON, SSE streams (a third of the clients hang up
//! mid-stream), async jobs and cancels. It checks that every accepted job ends, and
//! reports RSS before and after and the latency of `/health` while loaded.
//!
//! ```sh
//! cargo run --release -p latentd-server --example soak -- \
//!     [--model DIR] [--requests 2000] [--concurrency 32] [--steps 8] [--job-ttl-secs 5] [--rounds 2] \
//!     [--job-store redis://127.0.0.1:6379]
//! ```
//!
//! The requests are split into `rounds` rounds, each followed by a pause of the job TTL:
//! RSS after each round tells memory the allocator keeps (flat from round to round)
//! from memory that leaks (growing with every round).
//!
//! ```text
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::Device;
use futures_util::StreamExt;
use latentd_engine::{Engine, EngineConfig};
use latentd_models::pipeline::load_model;
use latentd_server::http::{AppState, RunningServer};
use latentd_server::shared_jobs::{SharedConfig, SharedJobs};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

struct Args {
    model: PathBuf,
    requests: usize,
    concurrency: usize,
    steps: usize,
    job_ttl_secs: u64,
    rounds: usize,
    /// A Redis URL: async jobs go through the shared store.
    job_store: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        model: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd1-tiny"),
        requests: 2000,
        concurrency: 32,
        steps: 8,
        job_ttl_secs: 5,
        rounds: 2,
        job_store: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        let number = || value.parse::<usize>().unwrap_or(1).max(1);
        match flag.as_str() {
            "--model" => args.model = PathBuf::from(&value),
            "--requests" => args.requests = number(),
            "--concurrency" => args.concurrency = number(),
            "--steps" => args.steps = number(),
            "--job-ttl-secs" => args.job_ttl_secs = number() as u64,
            "--rounds" => args.rounds = number(),
            "--job-store" => args.job_store = Some(value.clone()),
            other => eprintln!("ignoring unknown flag {other}"),
        }
    }
    args
}

/// Resident set size of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// What one client did: its kind, the HTTP status, and the job it started, if any.
struct Outcome {
    kind: &'static str,
    status: u16,
    job: Option<String>,
}

async fn one_request(client: reqwest::Client, base: String, i: usize, steps: usize) -> Outcome {
    let body = json!({
        "prompt": format!("soak {i}: a red circle above a blue square"),
        "steps": steps + i % 3,
        "seed": i,
        "guidance_scale": if i.is_multiple_of(5) { 1.0 } else { 7.5 },
    });
    let job_of = |r: &reqwest::Response| {
        r.headers()
            .get("x-job-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    match i % 10 {
        // Synchronous JSON.
        0..=3 => match client
            .post(format!("{base}/v1/generate"))
            .json(&body)
            .send()
            .await
        {
            Ok(r) => {
                let (status, job) = (r.status().as_u16(), job_of(&r));
                let _ = r.bytes().await;
                Outcome {
                    kind: "sync",
                    status,
                    job,
                }
            }
            Err(_) => Outcome {
                kind: "sync",
                status: 0,
                job: None,
            },
        },
        // Streams; every third client hangs up after the first progress event.
        4..=6 => {
            let hang_up = i.is_multiple_of(3);
            let sent = client
                .post(format!("{base}/v1/generate"))
                .header("accept", "text/event-stream")
                .json(&body)
                .send()
                .await;
            let Ok(r) = sent else {
                return Outcome {
                    kind: "sse",
                    status: 0,
                    job: None,
                };
            };
            let (status, job) = (r.status().as_u16(), job_of(&r));
            let mut stream = r.bytes_stream();
            let mut text = String::new();
            while let Some(Ok(chunk)) = stream.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk));
                if (hang_up && text.contains("event: progress"))
                    || text.contains("event: done")
                    || text.contains("event: error")
                {
                    break;
                }
            }
            let kind = if hang_up { "sse-hangup" } else { "sse" };
            Outcome { kind, status, job }
        }
        // Async jobs, every other one cancelled right away.
        _ => {
            let created = client
                .post(format!("{base}/v1/jobs"))
                .json(&body)
                .send()
                .await;
            let Ok(r) = created else {
                return Outcome {
                    kind: "async",
                    status: 0,
                    job: None,
                };
            };
            let status = r.status().as_u16();
            let job = r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_string));
            let cancel = i.is_multiple_of(2);
            if let (true, Some(id)) = (cancel, &job) {
                let _ = client
                    .post(format!("{base}/v1/jobs/{id}/cancel"))
                    .send()
                    .await;
            }
            // Wait for the end, as a polling client would.
            if let Some(id) = &job {
                for _ in 0..2000 {
                    let state = client.get(format!("{base}/v1/jobs/{id}")).send().await.ok();
                    let state = match state {
                        Some(r) => r.json::<Value>().await.ok(),
                        None => None,
                    };
                    let ended = state
                        .as_ref()
                        .and_then(|v| v["state"].as_str())
                        .is_some_and(|s| !matches!(s, "queued" | "running"));
                    if ended {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            let kind = if cancel { "async-cancel" } else { "async" };
            Outcome { kind, status, job }
        }
    }
}

/// Whether the server reports the job in a terminal state (through the shared store
/// when there is one: the same route a client uses). A 404 is a job that ended and
/// expired: unfinished jobs are never dropped (in Redis their keys outlive any run).
async fn has_ended(client: &reqwest::Client, base: &str, id: &str) -> bool {
    let Ok(r) = client.get(format!("{base}/v1/jobs/{id}")).send().await else {
        return false;
    };
    if r.status() == 404 {
        return true;
    }
    let state = r.json::<Value>().await.ok();
    state
        .as_ref()
        .and_then(|v| v["state"].as_str())
        .is_some_and(|s| matches!(s, "succeeded" | "failed" | "cancelled"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let model = load_model(&args.model, None, &Device::Cpu).expect("model loads");
    let config = EngineConfig {
        max_batch_rows: 16,
        max_queue: 64,
        finished_ttl: Duration::from_secs(args.job_ttl_secs),
        ..EngineConfig::default()
    };
    let engine = Engine::start(vec![vec![model]], config).expect("engine starts");
    let mut state = AppState::new(engine.clone(), None, 1 << 20);
    if let Some(url) = &args.job_store {
        let shared = SharedConfig {
            replica: "soak".into(),
            lease: Duration::from_secs(10),
            finished_ttl: Duration::from_secs(args.job_ttl_secs),
            max_queue: 256,
        };
        state =
            state.with_shared_jobs(SharedJobs::start(url, engine.clone(), shared).expect("redis"));
    }
    let server = RunningServer::start(
        state,
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_secs(60),
    )
    .await
    .expect("server starts");
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();

    // Warm up (first calls allocate), then take the baseline RSS.
    for i in 0..8 {
        let _ = one_request(client.clone(), base.clone(), i * 10, args.steps).await;
    }
    let rss_before = rss_kib();

    // /health, sampled every 20 ms while the load runs.
    let running = Arc::new(AtomicBool::new(true));
    let health_times = Arc::new(Mutex::new(Vec::new()));
    let prober = {
        let (client, base, running, times) = (
            client.clone(),
            base.clone(),
            running.clone(),
            health_times.clone(),
        );
        tokio::spawn(async move {
            while running.load(Ordering::SeqCst) {
                let t = Instant::now();
                let ok = client
                    .get(format!("{base}/health"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if let Ok(mut times) = times.lock() {
                    times.push((t.elapsed(), ok));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let mut by_kind: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    let mut jobs = Vec::new();
    let mut unfinished = 0;
    let mut round_rss = Vec::new();
    let per_round = args.requests.div_ceil(args.rounds);
    for round in 0..args.rounds {
        let mut tasks = Vec::new();
        for i in round * per_round..((round + 1) * per_round).min(args.requests) {
            let permit = gate.clone().acquire_owned().await.expect("semaphore open");
            let (client, base) = (client.clone(), base.clone());
            let steps = args.steps;
            tasks.push(tokio::spawn(async move {
                let outcome = one_request(client, base, i, steps).await;
                drop(permit);
                outcome
            }));
        }
        let mut round_jobs = Vec::new();
        for t in tasks {
            let o = t.await.expect("task joins");
            *by_kind.entry((o.kind, o.status)).or_insert(0) += 1;
            round_jobs.extend(o.job);
        }
        // Let hung-up streams' cancellations and the last jobs settle.
        for _ in 0..600 {
            unfinished = 0;
            for id in &round_jobs {
                if !has_ended(&client, &base, id).await {
                    unfinished += 1;
                }
            }
            if unfinished == 0 && engine.queue_len() == 0 && engine.active_rows() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if unfinished > 0 {
            break;
        }
        let kept = rss_kib();
        // Finished jobs (and their PNGs) are kept for the TTL, then dropped on a lookup.
        tokio::time::sleep(Duration::from_secs(args.job_ttl_secs + 1)).await;
        let mut expired = 0;
        for id in &round_jobs {
            let r = client.get(format!("{base}/v1/jobs/{id}")).send().await;
            if r.is_ok_and(|r| r.status() == 404) {
                expired += 1;
            }
        }
        round_rss.push((kept, rss_kib(), expired, round_jobs.len()));
        jobs.extend(round_jobs);
    }
    let wall = started.elapsed();
    running.store(false, Ordering::SeqCst);
    let _ = prober.await;

    let mut health: Vec<(Duration, bool)> =
        health_times.lock().map(|t| t.clone()).unwrap_or_default();
    health.sort_by_key(|(d, _)| *d);
    let pct = |p: f64| {
        health
            .get(((health.len() as f64 - 1.0) * p).round() as usize)
            .map(|(d, _)| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    let health_failures = health.iter().filter(|(_, ok)| !ok).count();

    println!(
        "model {} | {} requests, {} in flight, ~{} steps | wall {:.1} s",
        args.model.display(),
        args.requests,
        args.concurrency,
        args.steps,
        wall.as_secs_f64()
    );
    for ((kind, status), n) in &by_kind {
        println!("  {kind:<13} status {status:>3}: {n}");
    }
    println!(
        "jobs started {} | still unfinished after the run: {unfinished}",
        jobs.len()
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    let change = |kib: u64| (kib as f64 / rss_before.max(1) as f64 - 1.0) * 100.0;
    println!("RSS before the load: {:.1} MiB", mib(rss_before));
    for (round, (kept, expired_rss, expired, n)) in round_rss.iter().enumerate() {
        println!(
            "  after round {}: {:.1} MiB ({:+.1}%) with its finished jobs kept; \
             {:.1} MiB ({:+.1}%) once {expired} of {n} expired ({} s TTL)",
            round + 1,
            mib(*kept),
            change(*kept),
            mib(*expired_rss),
            change(*expired_rss),
            args.job_ttl_secs
        );
    }
    println!(
        "/health: {} probes, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {} not 200",
        health.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        health_failures
    );
    let _ = server.shutdown().await;
    if unfinished > 0 || health_failures > 0 {
        std::process::exit(1);
    }
}
