//! A soak run on 127.0.0.1: a `latentd serve` child process on a model folder, N
//! requests with C in flight mixing synchronous JSON, SSE streams (a third of the clients
//! hang up mid-stream), async jobs and cancels. It checks that every accepted job ends,
//! and reports the server's RSS before and after and the latency of `/health` while
//! loaded. The server runs in its own process so that its RSS is the server's alone,
//! not the load clients' buffers too.
//!
//! ```sh
//! cargo build --release -p latentd-server --bin latentd --example soak
//! target/release/examples/soak \
//!     [--server target/release/latentd] [--model DIR] [--requests 2000] [--concurrency 32] \
//!     [--steps 8] [--job-ttl-secs 5] [--rounds 2] [--job-store redis://127.0.0.1:6379]
//! ```
//!
//! The requests are split into `rounds` rounds, each followed by a pause of the job TTL
//! with the load's connections closed: RSS after each round tells memory the allocator
//! keeps (flat from round to round) from memory that leaks (growing with every round).
//! The baseline is taken after a warm-up: C requests at once (the server's threads,
//! connections and allocator arenas exist), finished and expired.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

struct Args {
    /// The `latentd` binary to serve with.
    server: PathBuf,
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
    // Beside this example's binary: target/<profile>/examples/soak -> target/<profile>/latentd.
    let server = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("latentd")))
        .unwrap_or_else(|| PathBuf::from("latentd"));
    let mut args = Args {
        server,
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
            "--server" => args.server = PathBuf::from(&value),
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

/// Resident set size of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Where process `pid`'s resident memory lives, in KiB: the main heap, other anonymous
/// mappings (thread arenas, thread stacks, large blocks), files (code, weights), and the
/// number of threads.
fn rss_parts(pid: u32) -> (u64, u64, u64, u64) {
    let (mut heap, mut anon, mut files) = (0, 0, 0);
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut kind = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // A mapping's header: address range, perms, offset, device, inode, [path].
            kind = match words.nth(4) {
                Some("[heap]") => 0,
                None => 1,
                Some(path) if path.starts_with('/') => 2,
                Some(_) => 1,
            };
        } else if first == "Rss:" {
            let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match kind {
                0 => heap += kib,
                1 => anon += kib,
                _ => files += kib,
            }
        }
    }
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    (heap, anon, files, threads)
}

/// The server's heap as its `/metrics` reports it: (in use, freed but held), in KiB.
async fn heap_kib(client: &reqwest::Client, base: &str) -> Option<(u64, u64)> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let gauge = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .map(|bytes| (bytes / 1024.0) as u64)
    };
    Some((
        gauge("latentd_heap_in_use_bytes ")?,
        gauge("latentd_heap_free_bytes ")?,
    ))
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

/// A port nobody listens on now (the server binds it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Starts `latentd serve` and waits for its `/health`.
async fn start_server(args: &Args, client: &reqwest::Client) -> (std::process::Child, String) {
    let port = free_port();
    let mut command = std::process::Command::new(&args.server);
    command
        .arg("serve")
        .arg("--model")
        .arg(&args.model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--max-batch-rows", "16", "--max-queue", "64"])
        .args(["--job-ttl-secs", &args.job_ttl_secs.to_string()])
        .env("LATENTD_LOG", "warn");
    if let Some(url) = &args.job_store {
        command.args(["--job-store", url, "--replica-id", "soak"]);
    }
    let mut child = command.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot start {} ({e}); build it first: cargo build --release -p latentd-server",
            args.server.display()
        )
    });
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..1200 {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the server exited before it was ready: {status}");
        }
        let up = client.get(format!("{base}/health")).send().await;
        if up.is_ok_and(|r| r.status() == 200) {
            return (child, base);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    panic!("the server did not answer /health within 120 s");
}

/// Whether the server holds no queued or running work, by its `/health`.
async fn idle(client: &reqwest::Client, base: &str) -> bool {
    let Ok(r) = client.get(format!("{base}/health")).send().await else {
        return false;
    };
    let health = r.json::<Value>().await.unwrap_or_default();
    health["queue_depth"].as_u64() == Some(0) && health["active_rows"].as_u64() == Some(0)
}

/// Runs requests `range` with `concurrency` in flight on a client of their own, which is
/// dropped at the end (its connections close, as the load's clients would go away).
async fn run_load(
    base: &str,
    range: std::ops::Range<usize>,
    concurrency: usize,
    steps: usize,
) -> Vec<Outcome> {
    let client = reqwest::Client::new();
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for i in range {
        let permit = gate.clone().acquire_owned().await.expect("semaphore open");
        let (client, base) = (client.clone(), base.to_string());
        tasks.push(tokio::spawn(async move {
            let outcome = one_request(client, base, i, steps).await;
            drop(permit);
            outcome
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("task joins"));
    }
    outcomes
}

/// Waits until every job in `jobs` has ended and the server is idle; the number of
/// jobs still not ended after 60 s.
async fn settle(client: &reqwest::Client, base: &str, jobs: &[String]) -> usize {
    let mut unfinished = 0;
    for _ in 0..600 {
        unfinished = 0;
        for id in jobs {
            if !has_ended(client, base, id).await {
                unfinished += 1;
            }
        }
        if unfinished == 0 && idle(client, base).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unfinished
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    // The prober's and the checks' client (one connection); the load has its own.
    let client = reqwest::Client::new();
    let (mut child, base) = start_server(&args, &client).await;
    let pid = child.id();
    let rss_started = rss_kib(pid);

    // Warm up: one burst at full concurrency, let it end and expire, then the baseline.
    let warm = run_load(&base, 0..args.concurrency, args.concurrency, args.steps).await;
    let warm_jobs: Vec<String> = warm.into_iter().filter_map(|o| o.job).collect();
    let _ = settle(&client, &base, &warm_jobs).await;
    tokio::time::sleep(Duration::from_secs(args.job_ttl_secs + 1)).await;
    for id in &warm_jobs {
        let _ = client.get(format!("{base}/v1/jobs/{id}")).send().await;
    }
    let rss_before = rss_kib(pid);
    let parts_before = rss_parts(pid);
    let heap_before = heap_kib(&client, &base).await;

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
    let mut by_kind: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    let mut jobs = Vec::new();
    let mut unfinished = 0;
    let mut round_rss = Vec::new();
    let per_round = args.requests.div_ceil(args.rounds);
    for round in 0..args.rounds {
        // Past the warm-up's indices, so no request repeats one of its prompts and seeds.
        let first = args.concurrency + round * per_round;
        let last = args.concurrency + ((round + 1) * per_round).min(args.requests);
        let mut round_jobs = Vec::new();
        for o in run_load(&base, first..last, args.concurrency, args.steps).await {
            *by_kind.entry((o.kind, o.status)).or_insert(0) += 1;
            round_jobs.extend(o.job);
        }
        // Let hung-up streams' cancellations and the last jobs settle.
        unfinished = settle(&client, &base, &round_jobs).await;
        if unfinished > 0 {
            break;
        }
        let kept = rss_kib(pid);
        // Finished jobs (and their PNGs) are kept for the TTL, then dropped on a lookup.
        tokio::time::sleep(Duration::from_secs(args.job_ttl_secs + 1)).await;
        let mut expired = 0;
        for id in &round_jobs {
            let r = client.get(format!("{base}/v1/jobs/{id}")).send().await;
            if r.is_ok_and(|r| r.status() == 404) {
                expired += 1;
            }
        }
        let expired_rss = rss_kib(pid);
        let parts = rss_parts(pid);
        let heap = heap_kib(&client, &base).await;
        round_rss.push((kept, expired_rss, heap, parts, expired, round_jobs.len()));
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
    println!(
        "server RSS: {:.1} MiB once ready; {:.1} MiB before the load (after a warm-up burst \
         of {} requests, expired)",
        mib(rss_started),
        mib(rss_before),
        args.concurrency
    );
    let heap_line = |heap: Option<(u64, u64)>| match heap {
        Some((in_use, free)) => format!(
            "heap {:.1} MiB in use, {:.1} MiB freed but held",
            mib(in_use),
            mib(free)
        ),
        None => "heap not reported".into(),
    };
    let parts_line = |(heap, anon, files, threads): (u64, u64, u64, u64)| {
        format!(
            "resident: main heap {:.1}, other anonymous {:.1}, files {:.1} MiB; {threads} threads",
            mib(heap),
            mib(anon),
            mib(files)
        )
    };
    println!(
        "  before the load: {}; {}",
        heap_line(heap_before),
        parts_line(parts_before)
    );
    for (round, (kept, expired_rss, heap, parts, expired, n)) in round_rss.iter().enumerate() {
        println!(
            "  after round {}: {:.1} MiB ({:+.1}%) with its finished jobs kept; \
             {:.1} MiB ({:+.1}%) once {expired} of {n} expired ({} s TTL); {}; {}",
            round + 1,
            mib(*kept),
            change(*kept),
            mib(*expired_rss),
            change(*expired_rss),
            args.job_ttl_secs,
            heap_line(*heap),
            parts_line(*parts)
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
    // SIGTERM: the graceful shutdown a deployment would use.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    if unfinished > 0 || health_failures > 0 {
        std::process::exit(1);
    }
}
