//! Async jobs shared by replicas through a real Redis (`--job-store redis://...`):
//! each test starts its own `redis-server` on a free port and real `latentd`
//! processes, which it reads, streams, cancels, kills and restarts.
//!
//! `redis-server` comes from Debian's `redis-server` package (`.ci/run` installs it).
//! Without it these tests say so and pass, unless `LATENTD_REQUIRE_REDIS=1` (as in CI).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd1-tiny")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` of this test's own, on a free port, with no persistence, working
/// in a folder of its own (removed when dropped, after the server is stopped).
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Starts one, or `None` when `redis-server` is not installed (and not required).
    fn start() -> Option<Self> {
        let port = free_port();
        let dir = tempfile::Builder::new()
            .prefix("latentd-redis-")
            .tempdir()
            .unwrap();
        let spawned = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--bind", "127.0.0.1"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                assert!(
                    std::env::var("LATENTD_REQUIRE_REDIS").is_err(),
                    "redis-server is required here: {e}"
                );
                eprintln!(
                    "skipped: redis-server is not installed ({e}); apt-get install redis-server"
                );
                return None;
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self {
            child,
            port,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A field of a job's hash, read directly.
    async fn job_field(&self, id: &str, field: &str) -> Option<String> {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("HGET")
            .arg(format!("latentd:job:{id}"))
            .arg(field)
            .query_async(&mut conn)
            .await
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `latentd serve` process on the tiny model.
struct Replica {
    child: Child,
    url: String,
    name: String,
}

impl Replica {
    fn start(store: &str, name: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_latentd"))
            .arg("serve")
            .arg("--model")
            .arg(fixture())
            .args(["--port", "0", "--job-store", store, "--replica-id", name])
            .args(["--job-lease-secs", "1"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("latentd exited before listening")
                .unwrap();
            if let Some(url) = line.strip_prefix("latentd listening on ") {
                break url.trim().to_string();
            }
        };
        // Keep draining stdout so the process never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            url,
            name: name.to_string(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// SIGTERM, then waits for the process to exit.
    fn terminate(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// SIGKILL: no chance to clean up.
    fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

async fn submit(replica: &Replica, body: &Value) -> String {
    let r = http()
        .post(replica.url("/v1/jobs"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn status(replica: &Replica, id: &str) -> (u16, Value) {
    let r = http()
        .get(replica.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

/// Polls until the job's state satisfies `done`, within `limit`.
async fn wait_for(
    replica: &Replica,
    id: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (code, v) = status(replica, id).await;
        if code == 200 && done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "job {id} did not get there: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ended(v: &Value) -> bool {
    ["succeeded", "failed", "cancelled"].contains(&v["state"].as_str().unwrap_or(""))
}

/// Decoded RGB pixels of a PNG (its metadata holds timings, so bytes differ per run).
fn pixels(png: &[u8]) -> Vec<u8> {
    let mut reader = png::Decoder::new(std::io::Cursor::new(png))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    buf
}

async fn image(replica: &Replica, id: &str, index: usize) -> Vec<u8> {
    let r = http()
        .get(replica.url(&format!("/v1/jobs/{id}/images/{index}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    pixels(&r.bytes().await.unwrap())
}

/// The same request run synchronously (never through the store).
async fn solo(replica: &Replica, body: &Value) -> Vec<u8> {
    let r = http()
        .post(replica.url("/v1/generate"))
        .header("accept", "image/png")
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    pixels(&r.bytes().await.unwrap())
}

/// The event names of a job's SSE stream, read to its end.
async fn event_names(replica: &Replica, id: &str) -> Vec<String> {
    let text = http()
        .get(replica.url(&format!("/v1/jobs/{id}/events")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_sent_to_one_replica_is_read_streamed_cancelled_and_deleted_through_another() {
    let Some(redis) = Redis::start() else { return };
    let a = Replica::start(&redis.url(), "a", &[]);
    let b = Replica::start(&redis.url(), "b", &[]);
    let body = json!({"prompt": "a red circle", "steps": 4, "seed": 11});
    let id = submit(&a, &body).await;
    let done = wait_for(&b, &id, Duration::from_secs(60), ended).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["seed"], 11);
    let names = event_names(&b, &id).await;
    assert_eq!(names.first().map(String::as_str), Some("queued"));
    assert!(names.contains(&"started".to_string()) && names.contains(&"image".to_string()));
    assert_eq!(names.last().map(String::as_str), Some("done"), "{names:?}");
    // Resumable by Last-Event-ID on any replica; after the last event, nothing.
    let resume = |from: &'static str| {
        let url = b.url(&format!("/v1/jobs/{id}/events"));
        async move {
            let r = http()
                .get(url)
                .header("last-event-id", from)
                .send()
                .await
                .unwrap();
            r.text().await.unwrap()
        }
    };
    assert!(resume("1").await.starts_with("id: 2\n"));
    let started = Instant::now();
    assert_eq!(resume("100000").await, "");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(image(&b, &id, 0).await, solo(&a, &body).await);
    assert_eq!(image(&a, &id, 0).await, solo(&b, &body).await);

    // A long job, cancelled through the replica that does not hold it (or does).
    let long = json!({"prompt": "a square", "steps": 150, "seed": 3, "width": 64, "height": 64});
    let id = submit(&b, &long).await;
    wait_for(&a, &id, Duration::from_secs(60), |v| {
        v["state"] == "running"
    })
    .await;
    let r = http()
        .post(a.url(&format!("/v1/jobs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = wait_for(&b, &id, Duration::from_secs(30), ended).await;
    assert_eq!(v["state"], "cancelled", "{v}");
    assert!((v["step"].as_u64().unwrap()) < 150, "{v}");
    assert_eq!(
        event_names(&a, &id).await.last().map(String::as_str),
        Some("error")
    );

    let r = http()
        .delete(b.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(status(&a, &id).await.0, 404);
    assert_eq!(status(&b, &id).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_replica_finishes_a_job_whose_replica_was_killed_with_the_same_pixels() {
    let Some(redis) = Redis::start() else { return };
    let a = Replica::start(&redis.url(), "a", &[]);
    let b = Replica::start(&redis.url(), "b", &[]);
    let body = json!({"prompt": "a blue square", "steps": 60, "seed": 77, "scheduler": "euler-a"});
    let id = submit(&a, &body).await;
    wait_for(&a, &id, Duration::from_secs(60), |v| {
        v["state"] == "running" && v["step"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    let owner = redis.job_field(&id, "owner").await.unwrap();
    let (victim, survivor) = if owner == a.name { (a, b) } else { (b, a) };
    assert_eq!(owner, victim.name);
    victim.kill_9();
    let v = wait_for(&survivor, &id, Duration::from_secs(90), ended).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(redis.job_field(&id, "owner").await.unwrap(), survivor.name);
    assert_eq!(redis.job_field(&id, "attempts").await.as_deref(), Some("2"));
    assert_eq!(image(&survivor, &id, 0).await, solo(&survivor, &body).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_keeps_finished_jobs_and_finishes_the_queued_ones() {
    let Some(redis) = Redis::start() else { return };
    let first = Replica::start(&redis.url(), "one", &["--max-batch-rows", "2"]);
    let body = json!({"prompt": "a circle", "steps": 3, "seed": 5});
    let finished = submit(&first, &body).await;
    wait_for(&first, &finished, Duration::from_secs(60), ended).await;
    let want = image(&first, &finished, 0).await;
    // One job runs (two rows fill the batch); the rest wait in this replica's queue or
    // in the stream when it is told to stop.
    let mut queued = Vec::new();
    for seed in 0..4 {
        let body = json!({"prompt": "a circle", "steps": 40, "seed": seed});
        queued.push((submit(&first, &body).await, body));
    }
    first.terminate();
    let second = Replica::start(&redis.url(), "two", &[]);
    let (code, v) = status(&second, &finished).await;
    assert_eq!((code, &v["state"]), (200, &json!("succeeded")));
    assert_eq!(image(&second, &finished, 0).await, want);
    for (id, body) in &queued {
        let v = wait_for(&second, id, Duration::from_secs(120), ended).await;
        assert_eq!(v["state"], "succeeded", "{v}");
        assert_eq!(image(&second, id, 0).await, solo(&second, body).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_async_jobs_are_503_and_synchronous_generation_works() {
    let nobody = format!("redis://127.0.0.1:{}", free_port());
    let a = Replica::start(&nobody, "a", &[]);
    let r = http()
        .post(a.url("/v1/jobs"))
        .json(&json!({"prompt": "x", "steps": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "job_store_unavailable", "{v}");
    let r = http()
        .post(a.url("/v1/generate"))
        .json(&json!({"prompt": "x", "steps": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
