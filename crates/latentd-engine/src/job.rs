//! A job: its request, lifecycle state, event log, images and cancellation flag.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::watch;

use crate::error::Code;
use crate::request::ValidRequest;

/// Lifecycle state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting in the queue.
    Queued,
    /// Admitted to a worker and denoising.
    Running,
    /// All images are ready.
    Succeeded,
    /// Failed with an error.
    Failed,
    /// Cancelled by a client (or by shutdown).
    Cancelled,
}

impl JobState {
    /// Whether the job will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// What happened to a job, in order. Event `i` has id `i` in its job's log.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Accepted; `position` jobs were ahead of it in the queue.
    Queued { position: usize },
    /// Admitted to a worker.
    Started,
    /// `step` of `total` model calls done.
    Progress {
        step: usize,
        total: usize,
        eta_ms: u64,
    },
    /// Image `index` is ready as PNG.
    Image { index: usize, seed: u64, png: Bytes },
    /// Every image is ready.
    Done {
        queue_ms: u64,
        inference_ms: u64,
        seed: u64,
    },
    /// The job failed or was cancelled; nothing follows.
    Error { code: Code, message: String },
}

impl Event {
    /// Whether this event ends the job's stream.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Event::Done { .. } | Event::Error { .. })
    }

    /// The event's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Queued { .. } => "queued",
            Event::Started => "started",
            Event::Progress { .. } => "progress",
            Event::Image { .. } => "image",
            Event::Done { .. } => "done",
            Event::Error { .. } => "error",
        }
    }
}

/// A point-in-time view of a job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobSnapshot {
    /// Job id.
    pub id: String,
    /// Lifecycle state.
    pub state: JobState,
    /// Model calls done.
    pub step: usize,
    /// Model calls in total (known once started).
    pub total: usize,
    /// Images ready so far.
    pub images_ready: usize,
    /// Images the job makes.
    pub n: usize,
    /// Seed used.
    pub seed: u64,
    /// Milliseconds spent queued (so far, while queued).
    pub queue_ms: u64,
    /// Milliseconds spent running (so far, while running).
    pub inference_ms: Option<u64>,
    /// Error code and message once failed or cancelled.
    pub error: Option<(Code, String)>,
}

struct JobInner {
    state: JobState,
    events: Vec<Event>,
    images: Vec<Option<Bytes>>,
    step: usize,
    total: usize,
    started_at: Option<Instant>,
    finished_at: Option<Instant>,
    error: Option<(Code, String)>,
}

static NEXT_SEQ: AtomicU64 = AtomicU64::new(0);

/// One generation job, shared between the engine, its worker and HTTP handlers.
pub struct Job {
    id: String,
    seq: u64,
    span: tracing::Span,
    request: ValidRequest,
    created: Instant,
    cancelled: AtomicBool,
    inner: Mutex<JobInner>,
    notify: watch::Sender<usize>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Job {
    /// A new queued job. Its span is a child of the current one (the HTTP request's),
    /// so the worker's log lines about it stay attached to the request.
    pub fn new(id: String, request: ValidRequest) -> Arc<Self> {
        let n = request.params.n;
        let span = tracing::info_span!("job", id = %id);
        Arc::new(Self {
            span,
            id,
            seq: NEXT_SEQ.fetch_add(1, Ordering::Relaxed),
            request,
            created: Instant::now(),
            cancelled: AtomicBool::new(false),
            inner: Mutex::new(JobInner {
                state: JobState::Queued,
                events: Vec::new(),
                images: vec![None; n],
                step: 0,
                total: 0,
                started_at: None,
                finished_at: None,
                error: None,
            }),
            notify: watch::channel(0).0,
        })
    }

    /// The job id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The job's tracing span.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// A process-unique number, increasing in creation order.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The validated request.
    pub fn request(&self) -> &ValidRequest {
        &self.request
    }

    fn lock(&self) -> MutexGuard<'_, JobInner> {
        // A poisoned lock only means another thread panicked mid-update; the data is
        // plain values that stay consistent, so keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the job to stop; takes effect at the next step boundary.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// Whether cancellation was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Current lifecycle state.
    pub fn state(&self) -> JobState {
        self.lock().state
    }

    /// Appends an event and updates the state it implies. Events after a terminal
    /// one are ignored.
    pub fn push(&self, event: Event) {
        let count = {
            let mut inner = self.lock();
            if inner.state.is_terminal() {
                return;
            }
            match &event {
                Event::Queued { .. } => {}
                Event::Started => {
                    inner.state = JobState::Running;
                    inner.started_at = Some(Instant::now());
                }
                Event::Progress { step, total, .. } => {
                    inner.step = *step;
                    inner.total = *total;
                }
                Event::Image { index, png, .. } => {
                    if let Some(slot) = inner.images.get_mut(*index) {
                        *slot = Some(png.clone());
                    }
                }
                Event::Done { .. } => {
                    inner.state = JobState::Succeeded;
                    inner.finished_at = Some(Instant::now());
                }
                Event::Error { code, message } => {
                    inner.state = if *code == Code::Cancelled {
                        JobState::Cancelled
                    } else {
                        JobState::Failed
                    };
                    inner.finished_at = Some(Instant::now());
                    inner.error = Some((*code, message.clone()));
                }
            }
            inner.events.push(event);
            inner.events.len()
        };
        self.notify.send_replace(count);
    }

    /// Records the total number of model calls once the sampler is built.
    pub fn set_total(&self, total: usize) {
        self.lock().total = total;
    }

    /// Time spent in the queue (until now while still queued).
    pub fn queue_time(&self) -> Duration {
        let inner = self.lock();
        match inner.started_at {
            Some(s) => s.duration_since(self.created),
            None => inner
                .finished_at
                .unwrap_or_else(Instant::now)
                .duration_since(self.created),
        }
    }

    /// Time spent running (until now while running).
    pub fn inference_time(&self) -> Option<Duration> {
        let inner = self.lock();
        inner.started_at.map(|s| {
            inner
                .finished_at
                .unwrap_or_else(Instant::now)
                .duration_since(s)
        })
    }

    /// When the job finished, if it has.
    pub fn finished_at(&self) -> Option<Instant> {
        self.lock().finished_at
    }

    /// A snapshot for status endpoints.
    pub fn snapshot(&self) -> JobSnapshot {
        let queue_ms = self.queue_time().as_millis() as u64;
        let inference_ms = self.inference_time().map(|d| d.as_millis() as u64);
        let inner = self.lock();
        JobSnapshot {
            id: self.id.clone(),
            state: inner.state,
            step: inner.step,
            total: inner.total,
            images_ready: inner.images.iter().filter(|i| i.is_some()).count(),
            n: inner.images.len(),
            seed: self.request.params.seed,
            queue_ms,
            inference_ms,
            error: inner.error.clone(),
        }
    }

    /// Bytes of the PNGs held so far.
    pub fn image_bytes(&self) -> usize {
        self.lock()
            .images
            .iter()
            .flatten()
            .map(|png| png.len())
            .sum()
    }

    /// PNG bytes of image `index`, once ready.
    pub fn image(&self, index: usize) -> Option<Bytes> {
        self.lock().images.get(index).cloned().flatten()
    }

    /// Events from id `from` on, as a stream that ends after the terminal event.
    pub fn subscribe(self: &Arc<Self>, from: usize) -> EventStream {
        EventStream {
            job: Arc::clone(self),
            next: from,
            rx: self.notify.subscribe(),
            done: false,
        }
    }
}

/// A job's events in order, starting from a given id; resumable by id.
pub struct EventStream {
    job: Arc<Job>,
    next: usize,
    rx: watch::Receiver<usize>,
    done: bool,
}

impl EventStream {
    /// The next event and its id; `None` once the terminal event has been returned.
    pub async fn next(&mut self) -> Option<(usize, Event)> {
        if self.done {
            return None;
        }
        loop {
            // The next event and the terminal state are read under one lock: a terminal
            // event pushed between two separate reads would otherwise be skipped.
            let (event, ended) = {
                let inner = self.job.lock();
                (
                    inner.events.get(self.next).cloned(),
                    inner.state.is_terminal(),
                )
            };
            if let Some(event) = event {
                let id = self.next;
                self.next = self.next.saturating_add(1);
                if event.is_terminal() {
                    self.done = true;
                }
                return Some((id, event));
            }
            if ended {
                // Resumed after the terminal event: nothing more will come.
                self.done = true;
                return None;
            }
            if self.rx.changed().await.is_err() {
                return None;
            }
        }
    }

    /// The job this stream follows.
    pub fn job(&self) -> &Arc<Job> {
        &self.job
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latentd_models::pipeline::GenerationParams;
    use latentd_models::schedulers::SchedulerKind;

    fn job() -> Arc<Job> {
        Job::new(
            "job_1".into(),
            ValidRequest {
                model: "m".into(),
                params: GenerationParams {
                    prompt: "p".into(),
                    negative_prompt: None,
                    width: 32,
                    height: 32,
                    steps: 2,
                    guidance_scale: 7.5,
                    scheduler: SchedulerKind::Ddim,
                    seed: 3,
                    n: 2,
                    eta: 0.0,
                    image: None,
                    mask: None,
                    strength: None,
                    step_noise_seed: None,
                },
                model_index: 0,
                rows: 4,
                latent_size: (8, 8),
            },
        )
    }

    #[tokio::test]
    async fn events_stream_in_order_and_resume_by_id() {
        let j = job();
        j.push(Event::Queued { position: 0 });
        j.push(Event::Started);
        let mut s = j.subscribe(0);
        assert_eq!(s.next().await, Some((0, Event::Queued { position: 0 })));
        assert_eq!(s.next().await, Some((1, Event::Started)));
        let j2 = j.clone();
        let pusher = tokio::spawn(async move {
            j2.push(Event::Progress {
                step: 1,
                total: 2,
                eta_ms: 5,
            });
            j2.push(Event::Image {
                index: 1,
                seed: 3,
                png: Bytes::from_static(b"png"),
            });
            j2.push(Event::Done {
                queue_ms: 1,
                inference_ms: 2,
                seed: 0,
            });
            j2.push(Event::Started); // ignored after the terminal event
        });
        assert_eq!(s.next().await.unwrap().0, 2);
        assert_eq!(s.next().await.unwrap().1.name(), "image");
        assert_eq!(s.next().await.unwrap().1.name(), "done");
        assert_eq!(s.next().await, None);
        pusher.await.unwrap();
        assert_eq!(j.state(), JobState::Succeeded);
        assert_eq!(j.image(1).unwrap(), Bytes::from_static(b"png"));
        assert!(j.image(0).is_none() && j.image(7).is_none());
        // Resuming after the last event ends at once; resuming earlier replays.
        assert_eq!(j.subscribe(5).next().await, None);
        assert_eq!(j.subscribe(4).next().await.unwrap().1.name(), "done");
        let snap = j.snapshot();
        assert_eq!(
            (snap.step, snap.total, snap.images_ready, snap.n),
            (1, 2, 1, 2)
        );
    }

    #[test]
    fn cancelled_error_sets_cancelled_state() {
        let j = job();
        j.cancel();
        assert!(j.is_cancelled());
        j.push(Event::Error {
            code: Code::Cancelled,
            message: "x".into(),
        });
        assert_eq!(j.state(), JobState::Cancelled);
        let k = job();
        k.push(Event::Error {
            code: Code::GenerationFailed,
            message: "x".into(),
        });
        assert_eq!(k.state(), JobState::Failed);
        assert_eq!(k.snapshot().error.unwrap().0, Code::GenerationFailed);
    }
}
