//! What a replica does in the background for the shared store: renew its lease, pull
//! and reclaim work, mirror its jobs into Redis, follow cancels, and read event
//! streams for SSE clients.

use std::time::Duration;

use latentd_engine::{Code, EngineError, Event, Job};
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, AsyncConnectionConfig, RedisResult, Value};
use std::sync::Arc;

use super::record::{state_name, StoredEvent};
use super::{
    cancel_channel, events_key, image_key, job_key, ms, now_ms, queue_key, replica_key, SharedJobs,
    GROUP,
};
use crate::http::types::GenerateBody;

/// A stream read's reply: per stream, its entries as `(entry id, [field, value, ...])`.
type StreamReply = Option<Vec<(String, Vec<(String, Vec<String>)>)>>;

/// How long a blocking read waits before the loop looks around again.
const BLOCK: Duration = Duration::from_millis(500);
/// Pause after a Redis error before trying again.
const RETRY: Duration = Duration::from_millis(500);

/// A connection of its own, for blocking reads (which would hold up a shared one).
async fn dedicated(shared: &SharedJobs) -> RedisResult<MultiplexedConnection> {
    shared
        .inner
        .client
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(None),
        )
        .await
}

/// Renews this replica's lease every third of it.
pub(super) async fn heartbeat_loop(shared: SharedJobs) {
    let config = &shared.inner.config;
    let key = replica_key(&config.replica);
    loop {
        let result: RedisResult<()> = shared
            .conn()
            .pset_ex(&key, now_ms(), ms(config.lease))
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot renew this replica's lease in the job store");
        }
        tokio::time::sleep(config.lease / 3).await;
    }
}

/// Pulls queue entries while the engine has room; now and then reclaims the entries of
/// replicas whose lease lapsed (and this replica's own from before a restart).
pub(super) async fn pull_loop(shared: SharedJobs) {
    let mut conn: Option<MultiplexedConnection> = None;
    let mut next_reclaim = tokio::time::Instant::now();
    while !shared.is_draining() {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect_group(&shared).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    tracing::warn!(error = %e, "job store unreachable; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        if tokio::time::Instant::now() >= next_reclaim {
            next_reclaim = tokio::time::Instant::now() + shared.inner.config.lease / 2;
            if let Err(e) = reclaim(&shared, c).await {
                tracing::warn!(error = %e, "reclaiming jobs failed");
                conn = None;
                continue;
            }
        }
        if !shared.inner.engine.has_room() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        match read_new(&shared, c).await {
            Ok(entries) => {
                for (entry, id) in entries {
                    start_job(&shared, entry, id).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the job queue failed");
                conn = None;
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// A dedicated connection, with the consumer group created if it is not yet.
async fn connect_group(shared: &SharedJobs) -> RedisResult<MultiplexedConnection> {
    let mut c = dedicated(shared).await?;
    let created: RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(queue_key())
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await;
    match created {
        Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
        _ => Ok(c),
    }
}

/// `(entry id, job id)` pairs of a stream reply.
fn entries(reply: Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(streams) =
        redis::from_redis_value::<Option<Vec<(String, Vec<(String, Vec<String>)>)>>>(reply)
    else {
        return out;
    };
    for (_, items) in streams.unwrap_or_default() {
        for (entry, fields) in items {
            if let Some(id) = field(&fields, "id") {
                out.push((entry, id));
            }
        }
    }
    out
}

/// The value of `name` in a flat field/value list.
fn field(fields: &[String], name: &str) -> Option<String> {
    fields
        .chunks_exact(2)
        .find(|kv| kv[0] == name)
        .map(|kv| kv[1].clone())
}

/// One new entry for this replica, waiting up to [`BLOCK`] for it.
async fn read_new(
    shared: &SharedJobs,
    c: &mut MultiplexedConnection,
) -> RedisResult<Vec<(String, String)>> {
    let reply: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg(&shared.inner.config.replica)
        .arg("COUNT")
        .arg(1)
        .arg("BLOCK")
        .arg(ms(BLOCK))
        .arg("STREAMS")
        .arg(queue_key())
        .arg(">")
        .query_async(c)
        .await?;
    Ok(entries(reply))
}

/// Claims entries held by replicas without a lease, and this replica's own entries
/// that it does not run (left from before a restart under the same name).
async fn reclaim(shared: &SharedJobs, c: &mut MultiplexedConnection) -> RedisResult<()> {
    let me = &shared.inner.config.replica;
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(queue_key())
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(100)
        .query_async(c)
        .await?;
    for (entry, consumer, _, _) in pending {
        if !shared.inner.engine.has_room() || shared.is_draining() {
            break;
        }
        if &consumer != me {
            let alive: bool = c.exists(replica_key(&consumer)).await?;
            if alive {
                continue;
            }
        }
        let reply: Value = redis::cmd("XCLAIM")
            .arg(queue_key())
            .arg(GROUP)
            .arg(me)
            .arg(0)
            .arg(&entry)
            .query_async(c)
            .await?;
        let claimed: Vec<(String, Vec<String>)> =
            redis::from_redis_value(reply).unwrap_or_default();
        for (entry, fields) in claimed {
            let Some(id) = field(&fields, "id") else {
                continue;
            };
            if shared.lock_running().contains(&id) {
                continue;
            }
            tracing::info!(job = %id, from = %consumer, "reclaiming a job whose replica is gone");
            metrics::counter!("latentd_jobs_reclaimed_total").increment(1);
            start_job(shared, entry, id).await;
        }
    }
    Ok(())
}

/// Removes a queue entry whose job is over (or handed on).
async fn retire(shared: &SharedJobs, entry: &str) {
    let mut conn = shared.conn();
    let result: RedisResult<()> = redis::pipe()
        .cmd("XACK")
        .arg(queue_key())
        .arg(GROUP)
        .arg(entry)
        .ignore()
        .cmd("XDEL")
        .arg(queue_key())
        .arg(entry)
        .ignore()
        .query_async(&mut conn)
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, entry, "cannot remove a finished queue entry");
    }
}

/// Takes the job of queue entry `entry` and runs it here.
async fn start_job(shared: &SharedJobs, entry: String, id: String) {
    let me = shared.inner.config.replica.clone();
    let mut conn = shared.conn();
    let claimed: RedisResult<Option<(String, String)>> = shared
        .inner
        .scripts
        .claim
        .key(job_key(&id))
        .arg(&me)
        .invoke_async(&mut conn)
        .await;
    let (request, cancel) = match claimed {
        Ok(Some(found)) => found,
        Ok(None) => {
            // Cancelled or deleted while it waited.
            retire(shared, &entry).await;
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, job = %id, "cannot claim a job; it stays queued");
            return;
        }
    };
    let submitted = if cancel == "1" {
        Err((Code::Cancelled, "the job was cancelled".to_string()))
    } else {
        submit(shared, &id, &request)
    };
    match submitted {
        Ok(job) => {
            shared.lock_running().insert(id.clone());
            let shared = shared.clone();
            tokio::spawn(async move {
                mirror(&shared, &job, &entry).await;
                // Redis holds its record now; the engine's copy would outlive a delete.
                let _ = shared.inner.engine.remove(job.id());
                shared.lock_running().remove(job.id());
            });
        }
        Err((Code::QueueFull | Code::ShuttingDown, _)) => {
            // Not this replica's to run after all: back to the stream for another.
            release(shared, &id, &entry).await;
        }
        Err((code, message)) => {
            let event = Event::Error { code, message };
            let _ = push(shared, &id, &event).await;
            retire(shared, &entry).await;
        }
    }
}

/// Validates a stored request and queues it on this replica's engine under its id.
fn submit(shared: &SharedJobs, id: &str, request: &str) -> Result<Arc<Job>, (Code, String)> {
    let body: GenerateBody = serde_json::from_str(request)
        .map_err(|e| (Code::Internal, format!("stored request is unreadable: {e}")))?;
    let engine = &shared.inner.engine;
    let request = body
        .to_request()
        .map_err(|e| (Code::InvalidRequest, e.to_string()))?;
    let valid = engine
        .validate(&request)
        .map_err(|e| (e.code(), e.to_string()))?;
    engine
        .submit_valid(id.to_string(), valid)
        .map_err(|e: EngineError| (e.code(), e.to_string()))
}

/// What writing an event found.
enum Pushed {
    /// Written; `cancel` when a cancel was asked for.
    Written { cancel: bool },
    /// The job is gone, over, or another replica's now: stop mirroring it.
    Lost,
}

/// Writes one event of a job this replica owns, with the state it implies.
async fn push(shared: &SharedJobs, id: &str, event: &Event) -> RedisResult<Pushed> {
    let config = &shared.inner.config;
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut state = "";
    let mut expiry = String::new();
    let now = now_ms().to_string();
    match event {
        Event::Started => {
            state = state_name(latentd_engine::JobState::Running);
            fields.push(("started_ms".into(), now));
        }
        Event::Progress { step, total, .. } => {
            fields.push(("step".into(), step.to_string()));
            fields.push(("total".into(), total.to_string()));
        }
        Event::Image { index, png, .. } => {
            let ttl = config.finished_ttl + Duration::from_secs(3600);
            let _: () = shared
                .conn()
                .pset_ex(image_key(id, *index), png.to_vec(), ms(ttl))
                .await?;
            let _: u64 = shared.conn().hincr(job_key(id), "images_ready", 1).await?;
        }
        Event::Done { .. } => {
            state = state_name(latentd_engine::JobState::Succeeded);
            fields.push(("finished_ms".into(), now));
            expiry = ms(config.finished_ttl).to_string();
        }
        Event::Error { code, message } => {
            state = if *code == Code::Cancelled {
                state_name(latentd_engine::JobState::Cancelled)
            } else {
                state_name(latentd_engine::JobState::Failed)
            };
            fields.push(("error_code".into(), code.as_str().into()));
            fields.push(("error_message".into(), message.clone()));
            fields.push(("finished_ms".into(), now));
            expiry = ms(config.finished_ttl).to_string();
        }
        Event::Queued { .. } => {}
    }
    let mut invocation = shared.inner.scripts.push.key(job_key(id));
    invocation
        .key(events_key(id))
        .arg(&config.replica)
        .arg(StoredEvent::of(event).to_json())
        .arg(state)
        .arg(expiry);
    for (name, value) in &fields {
        invocation.arg(name).arg(value);
    }
    let (n, cancel): (i64, i64) = invocation.invoke_async(&mut shared.conn()).await?;
    Ok(if n < 0 {
        Pushed::Lost
    } else {
        Pushed::Written {
            cancel: cancel == 1,
        }
    })
}

/// Copies a running job's events into Redis until it ends, then retires its entry.
/// Writes are retried until they land: a Redis outage delays the record, never loses it.
async fn mirror(shared: &SharedJobs, job: &Arc<Job>, entry: &str) {
    let id = job.id().to_string();
    let mut events = job.subscribe(0);
    while let Some((_, event)) = events.next().await {
        if matches!(event, Event::Queued { .. }) {
            // The shared record has its own `queued` event from submission.
            continue;
        }
        if let Event::Error {
            code: Code::ShuttingDown,
            ..
        } = &event
        {
            if shared.is_draining() {
                release(shared, &id, entry).await;
                return;
            }
        }
        let pushed = loop {
            match push(shared, &id, &event).await {
                Ok(p) => break p,
                Err(e) => {
                    tracing::warn!(error = %e, job = %id, "cannot record a job event; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        match pushed {
            Pushed::Lost => {
                // Deleted, or reclaimed by another replica: stop running it here.
                let _ = shared.inner.engine.cancel(&id);
                return;
            }
            Pushed::Written { cancel: true } if !event.is_terminal() => {
                let _ = shared.inner.engine.cancel(&id);
            }
            Pushed::Written { .. } => {}
        }
        if event.is_terminal() {
            retire(shared, entry).await;
            return;
        }
    }
}

/// Hands a job back to the queue stream for another replica (shutdown).
async fn release(shared: &SharedJobs, id: &str, entry: &str) {
    let event = StoredEvent::Queued { position: 0 }.to_json();
    let released: RedisResult<i64> = shared
        .inner
        .scripts
        .release
        .key(job_key(id))
        .key(events_key(id))
        .arg(&shared.inner.config.replica)
        .arg(event)
        .invoke_async(&mut shared.conn())
        .await;
    match released {
        Ok(1) => {
            let mut conn = shared.conn();
            let added: RedisResult<String> = conn.xadd(queue_key(), "*", &[("id", id)]).await;
            if let Err(e) = added {
                tracing::warn!(error = %e, job = %id, "cannot requeue a job; another replica will reclaim it");
                return;
            }
            retire(shared, entry).await;
            tracing::info!(job = %id, "job handed back to the shared queue");
        }
        Ok(_) => retire(shared, entry).await,
        Err(e) => {
            // Left pending under this replica: reclaimed once its lease lapses.
            tracing::warn!(error = %e, job = %id, "cannot hand a job back; it will be reclaimed");
        }
    }
}

/// Cancels this replica's jobs when any replica asks (`PUBLISH latentd:cancel ID`).
pub(super) async fn cancel_listener(shared: SharedJobs) {
    use futures_util::StreamExt;
    loop {
        let subscribed = async {
            let mut pubsub = shared.inner.client.get_async_pubsub().await?;
            pubsub.subscribe(cancel_channel()).await?;
            RedisResult::Ok(pubsub)
        }
        .await;
        let mut pubsub = match subscribed {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "cannot subscribe to cancels; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let Ok(id) = message.get_payload::<String>() else {
                continue;
            };
            if shared.lock_running().contains(&id) {
                let _ = shared.inner.engine.cancel(&id);
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Entries of an event stream after id `after`, waiting up to `block_ms` for one.
async fn read_events(
    conn: &mut MultiplexedConnection,
    key: &str,
    after: &str,
    block_ms: Option<u64>,
) -> RedisResult<Vec<(String, Vec<String>)>> {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT").arg(100);
    if let Some(ms) = block_ms {
        cmd.arg("BLOCK").arg(ms);
    }
    let reply: Value = cmd
        .arg("STREAMS")
        .arg(key)
        .arg(after)
        .query_async(conn)
        .await?;
    let streams: StreamReply = redis::from_redis_value(reply)?;
    Ok(streams
        .unwrap_or_default()
        .into_iter()
        .flat_map(|(_, items)| items)
        .collect())
}

/// A shared job's events, read from Redis as they arrive.
pub struct RedisEvents {
    shared: SharedJobs,
    id: String,
    /// The number of the next event (from 0).
    next: usize,
    conn: Option<MultiplexedConnection>,
    buffered: std::collections::VecDeque<(usize, StoredEvent)>,
    done: bool,
}

impl RedisEvents {
    pub(super) fn new(shared: SharedJobs, id: String, from: usize) -> Self {
        Self {
            shared,
            id,
            next: from,
            conn: None,
            buffered: Default::default(),
            done: false,
        }
    }

    /// The next event and its id; `None` after the terminal one, or when the job is
    /// deleted or expires.
    pub async fn next(&mut self) -> Option<(usize, Event)> {
        while !self.done {
            if let Some((number, stored)) = self.buffered.pop_front() {
                let event = loop {
                    match self.shared.resolve(&self.id, stored.clone()).await {
                        Ok(event) => break event,
                        Err(_) => tokio::time::sleep(RETRY).await,
                    }
                };
                if event.is_terminal() {
                    self.done = true;
                }
                return Some((number, event));
            }
            if let Err(e) = self.fill().await {
                tracing::debug!(error = %e, job = %self.id, "reading job events failed; retrying");
                self.conn = None;
                tokio::time::sleep(RETRY).await;
            }
        }
        None
    }

    /// Reads what follows event `next - 1`, waiting for it; ends the stream when the
    /// job is gone.
    async fn fill(&mut self) -> RedisResult<()> {
        let conn = match self.conn.as_mut() {
            Some(c) => c,
            None => self.conn.insert(dedicated(&self.shared).await?),
        };
        let key = events_key(&self.id);
        let after = format!("0-{}", self.next);
        let mut items = read_events(conn, &key, &after, None).await?;
        if items.is_empty() {
            // Nothing new: the job is gone, or over (resumed after its last event), or
            // still going, and then the next event is waited for.
            let state: Option<String> = conn.hget(job_key(&self.id), "state").await?;
            if !matches!(state.as_deref(), Some("queued" | "running")) {
                self.done = true;
                return Ok(());
            }
            items = read_events(conn, &key, &after, Some(5000)).await?;
        }
        for (stream_id, fields) in items {
            let number = stream_id
                .strip_prefix("0-")
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(self.next + 1);
            self.next = number;
            let stored = field(&fields, "e").and_then(|json| serde_json::from_str(&json).ok());
            if let Some(stored) = stored {
                self.buffered.push_back((number - 1, stored));
            }
        }
        Ok(())
    }
}
