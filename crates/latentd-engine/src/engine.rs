//! The engine handle: submit, look up, cancel, and shut down.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use latentd_models::pipeline::{DiffusionModel, ModelInfo};
use latentd_models::schedulers::build_scheduler;

use crate::config::EngineConfig;
use crate::error::{Code, EngineError, ValidationError};
use crate::job::{Event, Job, JobSnapshot};
use crate::request::{validate, GenerateRequest, ValidRequest};
use crate::seed::random_job_id;
use crate::store::JobStore;
use crate::worker::{fail, job_shape, EngineStats, Models, QueueState, Shared, Stats};

/// One worker's health, for `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerHealth {
    /// The worker's thread is running.
    pub alive: bool,
    /// It holds work and has made no progress for the configured time.
    pub wedged: bool,
    /// Time since it last finished a tick or waited while idle.
    pub since_progress: Duration,
    /// Times it was restarted after a panic.
    pub restarts: u64,
}

/// The serving core. Cheap to clone; all clones drive the same workers.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    store: Arc<JobStore>,
    infos: Vec<ModelInfo>,
    /// The first worker's models: validation asks them (e.g. to count tokens).
    models: Models,
    /// Each worker's device, in worker order.
    devices: Vec<candle_core::Device>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Engine {
    /// Starts one worker thread per device and the PNG encoder thread. `workers` holds,
    /// for each device, the served models loaded on it, in the same order on every
    /// device (the first is the default model).
    pub fn start(
        workers: Vec<Vec<Arc<dyn DiffusionModel>>>,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        let first: Models = workers.first().cloned().unwrap_or_default();
        if first.is_empty() {
            return Err(EngineError::Internal(
                "the engine needs at least one model on one device".into(),
            ));
        }
        let infos: Vec<ModelInfo> = first.iter().map(|m| m.info().clone()).collect();
        for (i, info) in infos.iter().enumerate() {
            if infos[..i].iter().any(|other| other.name == info.name) {
                return Err(EngineError::Internal(format!(
                    "two models are named `{}`; give each a distinct name",
                    info.name
                )));
            }
        }
        for models in &workers {
            let names: Vec<&str> = models.iter().map(|m| m.info().name.as_str()).collect();
            let expected: Vec<&str> = infos.iter().map(|i| i.name.as_str()).collect();
            if names != expected {
                return Err(EngineError::Internal(
                    "every device must hold the same models in the same order".into(),
                ));
            }
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(QueueState {
                waiting: VecDeque::new(),
                accepting: true,
                stop: false,
                active_rows: vec![0; workers.len()],
                active_latent_pixels: vec![0; workers.len()],
                active_row_steps: vec![0; workers.len()],
                heartbeats: vec![Instant::now(); workers.len()],
                restarts: vec![0; workers.len()],
            }),
            wake: Condvar::new(),
            stats: Mutex::new(Stats {
                ms_per_row_step: 100.0,
                totals: EngineStats::default(),
            }),
            config: config.clone(),
        });
        let devices = workers
            .iter()
            .filter_map(|models| models.first().map(|m| m.device().clone()))
            .collect();
        let (encoder, encoder_thread) =
            crate::encoder::spawn().map_err(|e| EngineError::Internal(e.to_string()))?;
        let mut threads = vec![encoder_thread];
        for (index, models) in workers.into_iter().enumerate() {
            let (decoder, decoder_thread) =
                crate::decoder::spawn(index, shared.clone(), encoder.clone())
                    .map_err(|e| EngineError::Internal(e.to_string()))?;
            let shared = shared.clone();
            let encoder = encoder.clone();
            let handle = std::thread::Builder::new()
                .name(format!("latentd-worker-{index}"))
                .spawn(move || {
                    crate::supervisor::run_worker(index, models, shared, decoder, encoder)
                })
                .map_err(|e| EngineError::Internal(e.to_string()))?;
            // Joined in this order: a decoder ends after its worker, once it has
            // decoded what the worker handed it.
            threads.push(handle);
            threads.push(decoder_thread);
        }
        let store = Arc::new(JobStore::new(
            config.finished_ttl,
            config.finished_max,
            config.finished_max_bytes,
        ));
        crate::janitor::spawn(&store, crate::janitor::PERIOD)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                store,
                infos,
                models: first,
                devices,
                threads: Mutex::new(threads),
            }),
        })
    }

    /// Each worker's device, in worker order.
    pub fn devices(&self) -> &[candle_core::Device] {
        &self.inner.devices
    }

    /// The served models; the first is the default.
    pub fn models(&self) -> &[ModelInfo] {
        &self.inner.infos
    }

    /// The model a request names (`None`: the default one) and its index.
    pub fn model(&self, name: Option<&str>) -> Result<(usize, &ModelInfo), EngineError> {
        let infos = &self.inner.infos;
        match name {
            None => infos
                .first()
                .map(|info| (0, info))
                .ok_or_else(|| EngineError::Internal("no model is served".into())),
            Some(name) => infos
                .iter()
                .enumerate()
                .find(|(_, info)| info.name == name)
                .ok_or_else(|| EngineError::ModelNotFound {
                    name: name.to_string(),
                    available: infos
                        .iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
        }
    }

    /// The engine's limits.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.shared.config
    }

    /// Validates a request without submitting it, including what its scheduler
    /// accepts (e.g. no more steps than the model was trained with).
    pub fn validate(&self, req: &GenerateRequest) -> Result<ValidRequest, EngineError> {
        let (index, info) = self.model(req.model.as_deref())?;
        let model = self
            .inner
            .models
            .get(index)
            .ok_or_else(|| EngineError::Internal("the model is not loaded".into()))?;
        let valid = validate(req, index, info, self.config(), |text| {
            model.count_tokens(text).ok()
        })?;
        let p = &valid.params;
        build_scheduler(p.scheduler, model.scheduler_config(), p.steps, p.eta).map_err(|e| {
            let message = match e {
                latentd_models::Error::InvalidArgument(m) => m,
                other => other.to_string(),
            };
            ValidationError::Other(format!("{}: {message}", p.scheduler))
        })?;
        Ok(valid)
    }

    /// Validates and queues a request. Fails with `QueueFull` (nothing queued is
    /// disturbed) or `ShuttingDown`.
    pub fn submit(&self, req: &GenerateRequest) -> Result<Arc<Job>, EngineError> {
        let valid = self.validate(req)?;
        self.submit_valid(random_job_id(), valid)
    }

    /// Queues an already validated request under a given id (a shared job store's,
    /// whose job this replica runs). Fails as [`Engine::submit`] does.
    pub fn submit_valid(&self, id: String, valid: ValidRequest) -> Result<Arc<Job>, EngineError> {
        let job = Job::new(id, valid);
        {
            let mut queue = self.inner.shared.lock_queue();
            if !queue.accepting {
                return Err(EngineError::ShuttingDown);
            }
            if queue.waiting.len() >= self.config().max_queue {
                let retry_after_secs = self.eta_secs(&queue);
                metrics::counter!("latentd_rejected_total", "reason" => "queue_full").increment(1);
                return Err(EngineError::QueueFull {
                    queued: queue.waiting.len(),
                    retry_after_secs,
                });
            }
            job.push(Event::Queued {
                position: queue.waiting.len(),
            });
            queue.waiting.push_back(job.clone());
            metrics::gauge!("latentd_queue_depth").set(queue.waiting.len() as f64);
        }
        self.inner.store.insert(job.clone());
        self.inner.shared.wake.notify_all();
        job.span()
            .in_scope(|| tracing::info!(seed = job.request().params.seed, "job queued"));
        Ok(job)
    }

    /// Looks a job up.
    pub fn job(&self, id: &str) -> Result<Arc<Job>, EngineError> {
        self.inner
            .store
            .get(id)
            .ok_or_else(|| EngineError::JobNotFound(id.to_string()))
    }

    /// Position of a queued job (0 = next), `None` when it is not queued.
    pub fn position(&self, id: &str) -> Option<usize> {
        let queue = self.inner.shared.lock_queue();
        queue.waiting.iter().position(|j| j.id() == id)
    }

    /// Cancels a queued or running job; it stops at the next step boundary.
    pub fn cancel(&self, id: &str) -> Result<JobSnapshot, EngineError> {
        let job = self.job(id)?;
        job.cancel();
        {
            // A queued job is removed at once, so it frees its queue slot now.
            let mut queue = self.inner.shared.lock_queue();
            if let Some(pos) = queue.waiting.iter().position(|j| j.id() == id) {
                queue.waiting.remove(pos);
                job.push(Event::Error {
                    code: Code::Cancelled,
                    message: "the job was cancelled".into(),
                });
                metrics::counter!("latentd_jobs_total", "outcome" => "cancelled").increment(1);
            }
        }
        self.inner.shared.wake.notify_all();
        Ok(job.snapshot())
    }

    /// Cancels a job if it has not ended and forgets it: it is not found afterwards.
    /// Returns its last state.
    pub fn remove(&self, id: &str) -> Result<JobSnapshot, EngineError> {
        let snapshot = self.cancel(id)?;
        self.inner.store.remove(id);
        Ok(snapshot)
    }

    /// Whether taking one more job keeps the workers busy without holding work back
    /// from other replicas: nothing waits, or what waits and runs is less than the
    /// workers can batch together.
    pub fn has_room(&self) -> bool {
        let queue = self.inner.shared.lock_queue();
        if !queue.accepting || queue.waiting.len() >= self.config().max_queue {
            return false;
        }
        let (waiting_rows, waiting_pixels) =
            queue.waiting.iter().fold((0, 0), |(rows, pixels), job| {
                let (r, group) = crate::worker::job_shape(job);
                (rows + r, pixels + crate::planner::latent_pixels(r, group))
            });
        let active: usize = queue.active_rows.iter().sum();
        let active_pixels: usize = queue.active_latent_pixels.iter().sum();
        let workers = queue.active_rows.len();
        let config = self.config();
        let capacity = config.max_batch_rows * workers;
        let pixel_capacity = config.max_batch_latent_pixels.saturating_mul(workers);
        queue.waiting.is_empty()
            || (waiting_rows + active < capacity
                && waiting_pixels.saturating_add(active_pixels) < pixel_capacity)
    }

    /// Takes the queued (not yet started) jobs that `pick` selects out of the queue and
    /// ends them with `shutting_down`: at shutdown, a shared store hands them back to
    /// other replicas instead of running them here.
    pub fn withdraw_queued(&self, pick: impl Fn(&Job) -> bool) -> Vec<Arc<Job>> {
        let taken: Vec<Arc<Job>> = {
            let mut queue = self.inner.shared.lock_queue();
            let mut taken = Vec::new();
            let mut kept = VecDeque::new();
            for job in queue.waiting.drain(..) {
                if pick(&job) {
                    taken.push(job);
                } else {
                    kept.push_back(job);
                }
            }
            queue.waiting = kept;
            metrics::gauge!("latentd_queue_depth").set(queue.waiting.len() as f64);
            taken
        };
        for job in &taken {
            fail(
                job,
                Code::ShuttingDown,
                "returned to the shared queue at shutdown",
            );
        }
        taken
    }

    /// Jobs waiting to start.
    pub fn queue_len(&self) -> usize {
        self.inner.shared.lock_queue().waiting.len()
    }

    /// Rows in flight over all workers.
    pub fn active_rows(&self) -> usize {
        self.inner.shared.lock_queue().active_rows.iter().sum()
    }

    /// Work done since start.
    pub fn stats(&self) -> EngineStats {
        self.inner
            .shared
            .stats
            .lock()
            .map(|s| s.totals)
            .unwrap_or_default()
    }

    /// Ready to take work: accepting and the queue is not full.
    pub fn is_ready(&self) -> bool {
        let queue = self.inner.shared.lock_queue();
        queue.accepting && queue.waiting.len() < self.config().max_queue
    }

    /// The health of each worker: whether its thread runs, and whether it is wedged
    /// (holds work but has not made progress for `wedged_after`).
    pub fn worker_health(&self) -> Vec<WorkerHealth> {
        let alive: Vec<bool> = {
            let threads = self.inner.threads.lock().unwrap_or_else(|e| e.into_inner());
            // Thread 0 is the encoder; the workers follow.
            threads.iter().skip(1).map(|t| !t.is_finished()).collect()
        };
        let queue = self.inner.shared.lock_queue();
        let waiting = !queue.waiting.is_empty();
        let limit = self.config().wedged_after;
        (0..queue.heartbeats.len())
            .map(|i| {
                let busy = waiting || queue.active_rows.get(i).copied().unwrap_or(0) > 0;
                let since = queue.heartbeats[i].elapsed();
                WorkerHealth {
                    // Threads are joined (and gone) only after shutdown.
                    alive: alive.get(i).copied().unwrap_or(!queue.stop),
                    wedged: busy && since > limit,
                    since_progress: since,
                    restarts: queue.restarts.get(i).copied().unwrap_or(0),
                }
            })
            .collect()
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        !self.inner.shared.lock_queue().accepting
    }

    /// Estimated seconds until the current queue has drained.
    pub fn retry_after_secs(&self) -> u64 {
        let queue = self.inner.shared.lock_queue();
        self.eta_secs(&queue)
    }

    fn eta_secs(&self, queue: &QueueState) -> u64 {
        let queued: usize = queue
            .waiting
            .iter()
            .map(|j| job_shape(j).0 * j.request().params.steps)
            .sum();
        let row_steps = queued + queue.active_row_steps.iter().sum::<usize>();
        let ms = self
            .inner
            .shared
            .stats
            .lock()
            .map(|s| s.ms_per_row_step)
            .unwrap_or(100.0);
        ((row_steps as f64 * ms) / 1000.0).ceil().max(1.0) as u64
    }

    /// Stops accepting work, lets queued and running jobs finish for up to `grace`,
    /// then fails what is left and joins the threads. Blocks; call it off async threads.
    pub fn shutdown(&self, grace: Duration) {
        {
            let mut queue = self.inner.shared.lock_queue();
            queue.accepting = false;
        }
        self.inner.shared.wake.notify_all();
        let deadline = Instant::now() + grace;
        let workers_done = || {
            let threads = self.inner.threads.lock().unwrap_or_else(|e| e.into_inner());
            threads.iter().skip(1).all(|t| t.is_finished())
        };
        while Instant::now() < deadline && !workers_done() {
            std::thread::sleep(Duration::from_millis(20));
        }
        {
            let mut queue = self.inner.shared.lock_queue();
            queue.stop = true;
        }
        self.inner.shared.wake.notify_all();
        let threads: Vec<JoinHandle<()>> = {
            let mut guard = self.inner.threads.lock().unwrap_or_else(|e| e.into_inner());
            guard.drain(..).collect()
        };
        // Workers and their decoders first (index 1..); the encoder ends once their
        // senders are gone.
        let mut iter = threads.into_iter();
        let encoder = iter.next();
        for t in iter {
            let _ = t.join();
        }
        if let Some(encoder) = encoder {
            let _ = encoder.join();
        }
        self.inner.fail_unfinished();
    }
}

impl Inner {
    /// Ends every job no worker finished (they are all gone): `shutting_down`.
    fn fail_unfinished(&self) {
        for job in self.store.unfinished() {
            fail(
                &job,
                Code::ShuttingDown,
                "the server shut down before the job finished",
            );
        }
    }
}

impl Drop for Inner {
    /// The last handle is gone: the workers stop, and no accepted job is left without
    /// an end.
    fn drop(&mut self) {
        {
            let mut queue = self.shared.lock_queue();
            queue.accepting = false;
            queue.stop = true;
        }
        self.shared.wake.notify_all();
        self.fail_unfinished();
    }
}
