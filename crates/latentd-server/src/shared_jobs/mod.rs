//! Asynchronous jobs shared by replicas through Redis (`--job-store redis://...`).
//!
//! An accepted job is written to Redis (its hash, a `queued` event, an entry in the
//! queue stream) before the 202. Replicas pull entries from the stream through one
//! consumer group when they have room and run them with their own engine (step-level
//! batching unchanged), mirroring every event, state change and PNG back to Redis.
//! Any replica answers a job's status, events, images, cancel and delete from there.
//! A replica keeps a lease alive; the entries of one whose lease lapsed are claimed by
//! another and run again from their seed, which gives the same images. At shutdown,
//! jobs this replica will not finish go back to the stream.

mod record;
mod runner;
mod scripts;

pub use runner::RedisEvents;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use latentd_engine::{Engine, EngineError, Event, JobSnapshot, ValidRequest};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use tokio::task::JoinHandle;

use crate::http::error::ApiError;
use crate::http::types::GenerateBody;
use record::StoredEvent;
use scripts::Scripts;

/// Where async jobs live: this process's memory, or a Redis shared by replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStoreSpec {
    /// In memory (the default): lost with the process, seen by this replica only.
    Memory,
    /// A Redis URL, `redis://HOST:PORT[/DB]`.
    Redis(String),
}

impl std::str::FromStr for JobStoreSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "memory" {
            return Ok(Self::Memory);
        }
        if s.starts_with("redis://") || s.starts_with("unix://") {
            redis::Client::open(s).map_err(|e| format!("`{s}`: {e}"))?;
            return Ok(Self::Redis(s.to_string()));
        }
        Err(format!(
            "`{s}`: expected `memory` or `redis://HOST:PORT[/DB]`"
        ))
    }
}

/// Settings of the shared store.
#[derive(Debug, Clone)]
pub struct SharedConfig {
    /// This replica's name in the consumer group (unique among live replicas).
    pub replica: String,
    /// A replica that has not renewed its lease for this long is taken for dead.
    pub lease: Duration,
    /// How long a finished job stays readable.
    pub finished_ttl: Duration,
    /// Async jobs waiting or running over all replicas, at most.
    pub max_queue: usize,
}

/// How long an unfinished job's keys live at most (a safety net: a job normally ends
/// and then expires after the finished-job TTL).
const UNFINISHED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Every key latentd writes starts with this.
const PREFIX: &str = "latentd:";
/// The consumer group of the replicas.
const GROUP: &str = "replicas";

fn job_key(id: &str) -> String {
    format!("{PREFIX}job:{id}")
}

fn events_key(id: &str) -> String {
    format!("{PREFIX}job:{id}:events")
}

fn image_key(id: &str, index: usize) -> String {
    format!("{PREFIX}job:{id}:image:{index}")
}

fn queue_key() -> String {
    format!("{PREFIX}queue")
}

fn replica_key(name: &str) -> String {
    format!("{PREFIX}replica:{name}")
}

fn cancel_channel() -> String {
    format!("{PREFIX}cancel")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// A Redis failure, as an HTTP handler reports it (503 `job_store_unavailable`).
fn unavailable(e: redis::RedisError) -> ApiError {
    metrics::counter!("latentd_job_store_errors_total").increment(1);
    ApiError::JobStore(e.to_string())
}

/// The shared job store of one replica. Cheap to clone.
#[derive(Clone)]
pub struct SharedJobs {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    conn: ConnectionManager,
    engine: Engine,
    config: SharedConfig,
    scripts: Scripts,
    /// Jobs this replica runs now, by id.
    running: Mutex<HashSet<String>>,
    /// Set at shutdown: pull nothing more, hand back what will not finish.
    draining: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl SharedJobs {
    /// Connects (lazily: a Redis that is down now is retried) and starts pulling work
    /// for `engine`.
    pub fn start(url: &str, engine: Engine, config: SharedConfig) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let conn = client.get_connection_manager_lazy(
            ConnectionManagerConfig::new()
                .set_response_timeout(Some(Duration::from_secs(5)))
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_number_of_retries(2),
        )?;
        let shared = Self {
            inner: Arc::new(Inner {
                client,
                conn,
                engine,
                config,
                scripts: Scripts::new(),
                running: Mutex::new(HashSet::new()),
                draining: AtomicBool::new(false),
                tasks: Mutex::new(Vec::new()),
            }),
        };
        let tasks = vec![
            tokio::spawn(runner::pull_loop(shared.clone())),
            tokio::spawn(runner::heartbeat_loop(shared.clone())),
            tokio::spawn(runner::cancel_listener(shared.clone())),
        ];
        shared.lock_tasks().extend(tasks);
        tracing::info!(replica = %shared.inner.config.replica, "shared job store: redis");
        Ok(shared)
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.inner.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Accepts an async job: validated here, written to Redis, queued for any replica.
    /// Returns its id.
    pub async fn create(&self, body: &GenerateBody) -> Result<String, ApiError> {
        if self.is_draining() {
            return Err(EngineError::ShuttingDown.into());
        }
        let request = body.to_request().map_err(EngineError::from)?;
        let valid: ValidRequest = self.inner.engine.validate(&request)?;
        // The stored request carries the chosen seed: whoever runs it makes the same images.
        let mut stored = body.clone();
        stored.seed = Some(valid.params.seed);
        let request_json =
            serde_json::to_string(&stored).map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let mut conn = self.conn();
        let queued: usize = conn.xlen(queue_key()).await.map_err(unavailable)?;
        if queued >= self.inner.config.max_queue {
            metrics::counter!("latentd_rejected_total", "reason" => "queue_full").increment(1);
            return Err(EngineError::QueueFull {
                queued,
                retry_after_secs: self.inner.engine.retry_after_secs(),
            }
            .into());
        }
        let id = latentd_engine::seed::random_job_id();
        let ttl = ms(UNFINISHED_TTL);
        let event = StoredEvent::Queued { position: queued }.to_json();
        redis::pipe()
            .atomic()
            .hset_multiple(
                job_key(&id),
                &[
                    ("request", request_json),
                    ("state", "queued".to_string()),
                    ("owner", String::new()),
                    ("cancel", "0".to_string()),
                    ("events", "1".to_string()),
                    ("n", valid.params.n.to_string()),
                    ("seed", valid.params.seed.to_string()),
                    ("created_ms", now_ms().to_string()),
                ],
            )
            .ignore()
            .cmd("XADD")
            .arg(events_key(&id))
            .arg("0-1")
            .arg("e")
            .arg(event)
            .ignore()
            .pexpire(job_key(&id), ttl as i64)
            .ignore()
            .pexpire(events_key(&id), ttl as i64)
            .ignore()
            .cmd("XADD")
            .arg(queue_key())
            .arg("*")
            .arg("id")
            .arg(&id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)?;
        tracing::info!(job = %id, seed = valid.params.seed, "job queued in the shared store");
        Ok(id)
    }

    /// A job's hash, or `None` when there is no such job.
    async fn fields(&self, id: &str) -> Result<Option<HashMap<String, String>>, ApiError> {
        let fields: HashMap<String, String> = self
            .conn()
            .hgetall(job_key(id))
            .await
            .map_err(unavailable)?;
        Ok((!fields.is_empty()).then_some(fields))
    }

    /// A job's status, or `None` when Redis has no such job.
    pub async fn status(&self, id: &str) -> Result<Option<JobSnapshot>, ApiError> {
        Ok(self
            .fields(id)
            .await?
            .and_then(|f| record::snapshot(id, &f, now_ms())))
    }

    /// Image `index` of a job: `Ok(None)` when there is no such job.
    pub async fn image(&self, id: &str, index: usize) -> Result<Option<Bytes>, ApiError> {
        if self.fields(id).await?.is_none() {
            return Ok(None);
        }
        let png: Option<Vec<u8>> = self
            .conn()
            .get(image_key(id, index))
            .await
            .map_err(unavailable)?;
        match png {
            Some(png) => Ok(Some(Bytes::from(png))),
            None => Err(EngineError::ImageNotFound {
                id: id.to_string(),
                index,
            }
            .into()),
        }
    }

    /// Cancels a job wherever it runs, keeping its record: `None` when no such job.
    pub async fn cancel(&self, id: &str) -> Result<Option<JobSnapshot>, ApiError> {
        let message = "the job was cancelled";
        let event = StoredEvent::Error {
            code: "cancelled".into(),
            message: message.into(),
        }
        .to_json();
        let mut conn = self.conn();
        let outcome: i64 = self
            .inner
            .scripts
            .cancel
            .key(job_key(id))
            .key(events_key(id))
            .arg(event)
            .arg(message)
            .arg(ms(self.inner.config.finished_ttl))
            .arg(now_ms())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        match outcome {
            0 => return Ok(None),
            2 => metrics::counter!("latentd_jobs_total", "outcome" => "cancelled").increment(1),
            3 => {
                // The owner ends it; if this replica is the owner, at once.
                if self.lock_running().contains(id) {
                    let _ = self.inner.engine.cancel(id);
                }
                let _: Result<i64, _> = conn.publish(cancel_channel(), id).await;
            }
            _ => {}
        }
        self.status(id).await
    }

    /// Cancels a job if it has not ended and deletes it: `None` when no such job.
    pub async fn delete(&self, id: &str) -> Result<Option<JobSnapshot>, ApiError> {
        let Some(snapshot) = self.cancel(id).await? else {
            return Ok(None);
        };
        let mut keys = vec![job_key(id), events_key(id)];
        keys.extend((0..snapshot.n).map(|i| image_key(id, i)));
        let _: i64 = self.conn().del(keys).await.map_err(unavailable)?;
        Ok(Some(snapshot))
    }

    /// A job's events from number `from` on, as they are stored: `None` when there is
    /// no such job.
    pub async fn events(
        &self,
        id: &str,
        from: usize,
    ) -> Result<Option<runner::RedisEvents>, ApiError> {
        if self.fields(id).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(runner::RedisEvents::new(
            self.clone(),
            id.to_string(),
            from,
        )))
    }

    /// Shutdown, first half: pull nothing more and hand the jobs still queued here
    /// back to the stream (their mirrors release them).
    pub fn begin_drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        let running = self.lock_running().clone();
        let handed = self
            .inner
            .engine
            .withdraw_queued(|job| running.contains(job.id()));
        if !handed.is_empty() {
            tracing::info!(
                jobs = handed.len(),
                "returning queued shared jobs to the stream"
            );
        }
    }

    /// Shutdown, second half (after the engine stopped): waits for the mirrors to
    /// write what the engine finished or handed back, then gives up the lease.
    pub async fn finish_drain(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.lock_running().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for task in self.lock_tasks().drain(..) {
            task.abort();
        }
        let _: Result<i64, _> = self
            .conn()
            .del(replica_key(&self.inner.config.replica))
            .await;
    }

    /// The last events of a job as the engine's `Event`s, fetching image PNGs.
    async fn resolve(&self, id: &str, stored: StoredEvent) -> Result<Event, redis::RedisError> {
        let png = match &stored {
            StoredEvent::Image { index, .. } => {
                let png: Option<Vec<u8>> = self.conn().get(image_key(id, *index)).await?;
                png.map(Bytes::from)
            }
            _ => None,
        };
        Ok(stored.into_event(png))
    }
}
