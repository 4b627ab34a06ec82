//! The denoising worker: one dedicated OS thread per device, running engine ticks.
//!
//! Each tick: take a finished call from the lane, drop cancelled jobs, plan (admit from
//! the shared queue, pick the rows to run), encode the newcomers' conditioning in one
//! call per model, run ONE denoiser call over the chosen rows (one model, per-row
//! timesteps and conditioning), let each job apply its own guidance and scheduler
//! update, publish progress, and retire finished jobs (handed to the worker's decoder
//! thread, which decodes them batched per shape and passes the images to the PNG
//! encoder thread). A long call runs on the worker's lane thread instead
//! ([`crate::call`]), and the ticks go on beside it with the other groups' calls that
//! are much shorter.
//!
//! The worker knows models only through [`DiffusionModel`]; it holds every served
//! model for its device.

use std::collections::VecDeque;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use latentd_models::pipeline::{ConditionInput, Conditioning, Denoiser, DiffusionModel};

use crate::call::{CallCosts, Lane};
use crate::config::EngineConfig;
use crate::decoder::DecodeTask;
use crate::encoder::EncodeTask;
use crate::error::Code;
pub(crate) use crate::failure::{fail, guarded, panic_message};
use crate::job::{Event, Job};
use crate::planner::{self, ActiveJob, GroupKey, Ledger, WaitingJob};

mod calls;

/// State shared by the engine handle and its workers.
pub(crate) struct Shared {
    pub config: EngineConfig,
    pub queue: Mutex<QueueState>,
    pub wake: Condvar,
    pub stats: Mutex<Stats>,
}

/// The waiting queue and the engine's lifecycle flags.
pub(crate) struct QueueState {
    pub waiting: VecDeque<Arc<Job>>,
    /// False once shutdown began: no new jobs.
    pub accepting: bool,
    /// True once the shutdown grace period is over: cancel everything and exit.
    pub stop: bool,
    /// Rows in flight on each worker.
    pub active_rows: Vec<usize>,
    /// Rows x latent pixels in flight on each worker.
    pub active_latent_pixels: Vec<usize>,
    /// Model calls still to run for the jobs in flight, times their rows.
    pub active_row_steps: Vec<usize>,
    /// When each worker last made progress: finished a tick, or waited while idle.
    pub heartbeats: Vec<Instant>,
    /// Times each worker was restarted after a panic.
    pub restarts: Vec<u64>,
}

/// Measurements used for queue time estimates.
pub(crate) struct Stats {
    /// Smoothed milliseconds per row per model call.
    pub ms_per_row_step: f64,
    /// Totals since start.
    pub totals: EngineStats,
}

/// Counters of the work done since the engine started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// UNet calls made.
    pub unet_calls: u64,
    /// Rows run over all calls.
    pub rows_run: u64,
    /// Most rows in a single call.
    pub max_rows_in_call: usize,
}

impl Shared {
    pub fn lock_queue(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record_tick(&self, rows: usize, elapsed: Duration) {
        if rows == 0 {
            return;
        }
        let per_row = elapsed.as_secs_f64() * 1000.0 / rows as f64;
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.ms_per_row_step = 0.8 * stats.ms_per_row_step + 0.2 * per_row;
        stats.totals.unet_calls += 1;
        stats.totals.rows_run += rows as u64;
        stats.totals.max_rows_in_call = stats.totals.max_rows_in_call.max(rows);
    }
}

/// Rows a job adds to a model call and the group (model, latent shape) it belongs to.
pub(crate) fn job_shape(job: &Job) -> (usize, GroupKey) {
    let request = job.request();
    let (height, width) = request.latent_size;
    let group = GroupKey::new(request.model_index, height, width);
    (request.rows, group)
}

struct Active {
    job: Arc<Job>,
    denoiser: Denoiser,
    rows: usize,
    group: GroupKey,
    last_ran: u64,
    started: Instant,
}

/// The served models of one device, in the engine's order.
pub(crate) type Models = Vec<Arc<dyn DiffusionModel>>;

/// One device's worker: the jobs it holds and the models it runs. [`crate::supervisor`]
/// runs its ticks and recovers it when one panics.
pub(crate) struct Worker {
    pub(crate) index: usize,
    models: Models,
    pub(crate) shared: Arc<Shared>,
    /// This worker's decoder thread, which takes finished jobs.
    decoder: Sender<DecodeTask>,
    encoder: Sender<EncodeTask>,
    active: Vec<Active>,
    /// Jobs taken off the queue this tick and not yet active.
    admitting: Vec<Arc<Job>>,
    tick: u64,
    /// Each shape group's share of the device so far, for fair turns between groups.
    ledger: Ledger,
    /// What each group's calls cost, to tell long calls from short ones.
    costs: CallCosts,
    /// The thread that runs long calls (started with the first one).
    lane: Option<Lane>,
    /// Work was done since the worker last handed free memory back.
    worked_since_trim: bool,
    /// Since when the worker has had no work (`None` while busy).
    idle_since: Option<Instant>,
}

impl Worker {
    pub(crate) fn new(
        index: usize,
        models: Models,
        shared: Arc<Shared>,
        decoder: Sender<DecodeTask>,
        encoder: Sender<EncodeTask>,
    ) -> Self {
        Self {
            index,
            models,
            shared,
            decoder,
            encoder,
            active: Vec::new(),
            admitting: Vec::new(),
            tick: 0,
            ledger: Ledger::default(),
            costs: CallCosts::default(),
            lane: None,
            worked_since_trim: false,
            idle_since: None,
        }
    }

    /// Fails every job the worker holds (after a panic left them in an unknown state)
    /// and forgets them, so the worker can start over.
    pub(crate) fn fail_held(&mut self, message: &str) {
        for job in self.admitting.drain(..) {
            fail(&job, Code::Internal, message);
        }
        for a in self.active.drain(..) {
            fail(&a.job, Code::Internal, message);
        }
        // A call still on the lane ends unseen: its jobs have just failed.
        self.lane = None;
        self.publish_load();
    }

    /// One engine tick; false when the worker should exit.
    pub(crate) fn tick_once(&mut self) -> bool {
        self.tick += 1;
        if let Some(result) = self.lane.as_mut().and_then(Lane::finished) {
            self.finish(result);
        }
        self.drop_cancelled();
        self.publish_load();
        let Some((admitted, run)) = self.plan() else {
            return false;
        };
        self.admitting = admitted.clone();
        self.admit(admitted);
        self.admitting.clear();
        let groups: Vec<GroupKey> = self.active.iter().map(|a| a.group).collect();
        self.ledger.sync(&groups);
        #[cfg(test)]
        for a in &self.active {
            let prompt = &a.job.request().params.prompt;
            crate::supervisor::fault::maybe_panic(crate::supervisor::fault::WORKER, prompt);
        }
        let run: Vec<usize> = run
            .iter()
            .filter_map(|seq| self.active.iter().position(|a| a.job.seq() == *seq))
            .collect();
        if run.is_empty() {
            self.wait_for_lane();
        } else {
            self.step(&run);
        }
        self.retire();
        self.publish_load();
        true
    }

    fn drop_cancelled(&mut self) {
        self.active.retain(|a| {
            if a.job.is_cancelled() {
                fail(&a.job, Code::Cancelled, "the job was cancelled");
                false
            } else {
                true
            }
        });
    }

    /// Plans the tick under the queue lock and takes the admitted jobs off the queue.
    /// Waits while idle; `None` means exit.
    fn plan(&mut self) -> Option<(Vec<Arc<Job>>, Vec<u64>)> {
        let mut queue = self.shared.lock_queue();
        loop {
            queue.waiting.retain(|job| {
                if job.is_cancelled() {
                    fail(job, Code::Cancelled, "the job was cancelled");
                    false
                } else {
                    true
                }
            });
            if queue.stop {
                for job in queue.waiting.drain(..) {
                    fail(
                        &job,
                        Code::ShuttingDown,
                        "the server shut down before the job ran",
                    );
                }
                for a in self.active.drain(..) {
                    fail(
                        &a.job,
                        Code::ShuttingDown,
                        "the server shut down before the job finished",
                    );
                }
                return None;
            }
            if !self.active.is_empty() || !queue.waiting.is_empty() {
                self.worked_since_trim = true;
                self.idle_since = None;
                break;
            }
            if !queue.accepting {
                return None;
            }
            // Idle a while after work (the decoder, the encoder and the HTTP side have
            // freed the burst's buffers by then): give that memory back, off the lock.
            let idle_since = *self.idle_since.get_or_insert_with(Instant::now);
            if self.worked_since_trim && idle_since.elapsed() >= crate::memory::TRIM_AFTER_IDLE {
                self.worked_since_trim = false;
                drop(queue);
                crate::memory::release_free_memory();
                queue = self.shared.lock_queue();
                continue;
            }
            if let Some(beat) = queue.heartbeats.get_mut(self.index) {
                *beat = Instant::now();
            }
            queue = self
                .shared
                .wake
                .wait_timeout(queue, Duration::from_millis(200))
                .map(|(q, _)| q)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        let active: Vec<ActiveJob> = self
            .active
            .iter()
            .map(|a| ActiveJob {
                key: a.job.seq(),
                rows: a.rows,
                group: a.group,
                last_ran: a.last_ran,
            })
            .collect();
        let waiting: Vec<WaitingJob> = queue
            .waiting
            .iter()
            .map(|job| {
                let (rows, group) = job_shape(job);
                WaitingJob {
                    key: job.seq(),
                    rows,
                    group,
                }
            })
            .collect();
        let blocked = self.blocked_groups(&active, &waiting);
        let plan = planner::plan(
            &active,
            &waiting,
            self.shared.config.budget(),
            &self.ledger,
            &blocked,
        );
        let admitted: Vec<Arc<Job>> = queue.waiting.drain(..plan.admit.len()).collect();
        metrics::gauge!("latentd_queue_depth").set(queue.waiting.len() as f64);
        tracing::trace!(?plan, "planned tick");
        Some((admitted, plan.run))
    }

    /// Encodes the newcomers' conditioning, one call per model, and builds their samplers.
    fn admit(&mut self, mut jobs: Vec<Arc<Job>>) {
        while let Some(first) = jobs.first() {
            let model = first.request().model_index;
            let (same, rest): (Vec<Arc<Job>>, Vec<Arc<Job>>) = jobs
                .into_iter()
                .partition(|j| j.request().model_index == model);
            jobs = rest;
            self.admit_model(model, same);
        }
    }

    fn admit_model(&mut self, model_index: usize, jobs: Vec<Arc<Job>>) {
        let Some(model) = self.models.get(model_index).cloned() else {
            for job in &jobs {
                fail(
                    job,
                    Code::Internal,
                    "the job's model is not loaded on this worker",
                );
            }
            return;
        };
        let info = model.info();
        let inputs: Vec<ConditionInput> = jobs
            .iter()
            .map(|job| ConditionInput::of(info, &job.request().params))
            .collect();
        // One call for all newcomers; when it fails, each job is encoded alone so that
        // a failure stays with the job that caused it.
        let conditioning: Vec<Result<Conditioning, String>> = match guarded(|| {
            model.encode(&inputs)
        }) {
            Ok(c) if c.len() == jobs.len() => c.into_iter().map(Ok).collect(),
            Ok(_) => vec![Err("conditioning came back for the wrong jobs".into()); jobs.len()],
            Err(message) if jobs.len() == 1 => vec![Err(message)],
            Err(message) => {
                tracing::warn!(%message, "batched conditioning failed; encoding each job alone");
                inputs
                    .iter()
                    .map(|input| {
                        guarded(|| model.encode(std::slice::from_ref(input)))
                            .and_then(|mut c| c.pop().ok_or_else(|| "no conditioning".into()))
                    })
                    .collect()
            }
        };
        drop(inputs);
        for (job, conditioning) in jobs.into_iter().zip(conditioning) {
            let conditioning = match conditioning {
                Ok(c) => c,
                Err(message) => {
                    fail(
                        &job,
                        Code::Internal,
                        &format!("conditioning failed: {message}"),
                    );
                    continue;
                }
            };
            let built = guarded(|| Denoiser::new(&*model, &job.request().params, conditioning));
            match built {
                Ok(denoiser) => {
                    let (rows, group) = job_shape(&job);
                    job.set_total(denoiser.total_steps());
                    job.push(Event::Started);
                    metrics::histogram!("latentd_queue_wait_seconds")
                        .record(job.queue_time().as_secs_f64());
                    job.span().in_scope(|| {
                        tracing::info!(
                            worker = self.index,
                            rows,
                            queue_ms = job.queue_time().as_millis() as u64,
                            "job started"
                        )
                    });
                    self.active.push(Active {
                        job,
                        denoiser,
                        rows,
                        group,
                        // Not yet run: wins ties on service (see the planner).
                        last_ran: 0,
                        started: Instant::now(),
                    });
                }
                Err(message) => fail(
                    &job,
                    Code::Internal,
                    &format!("cannot start the job: {message}"),
                ),
            }
        }
    }

    /// The model of an active job.
    fn model_of(&self, active: &Active) -> latentd_models::Result<&Arc<dyn DiffusionModel>> {
        self.models.get(active.group.model).ok_or_else(|| {
            latentd_models::Error::InvalidArgument("the job's model is not loaded".into())
        })
    }

    /// Removes finished and failed jobs; hands the finished ones to the decoder, batched
    /// per shape.
    fn retire(&mut self) {
        let mut finished: Vec<Active> = Vec::new();
        let mut i = 0;
        while i < self.active.len() {
            let a = &self.active[i];
            if a.job.state().is_terminal() {
                self.active.swap_remove(i);
            } else if a.denoiser.is_finished() {
                finished.push(self.active.swap_remove(i));
            } else {
                i += 1;
            }
        }
        // Keep admission order stable after swap_remove.
        self.active.sort_by_key(|a| a.job.seq());
        while let Some(first) = finished.first() {
            let group = first.group;
            let (same, rest): (Vec<Active>, Vec<Active>) =
                finished.into_iter().partition(|a| a.group == group);
            finished = rest;
            self.decode_group(same);
        }
    }

    /// Hands a group's finished jobs to the decoder thread (decoding here only if it
    /// is gone), so the next tick starts without waiting for the autoencoder.
    fn decode_group(&self, jobs: Vec<Active>) {
        let Some(first) = jobs.first() else {
            return;
        };
        let model = match self.model_of(first) {
            Ok(model) => model.clone(),
            Err(e) => {
                for a in &jobs {
                    fail(&a.job, Code::Internal, &e.to_string());
                }
                return;
            }
        };
        let jobs = jobs
            .into_iter()
            .map(|a| {
                let latents = a.denoiser.latents().clone();
                (a.job, latents)
            })
            .collect();
        let task = DecodeTask { model, jobs };
        if let Err(std::sync::mpsc::SendError(task)) = self.decoder.send(task) {
            crate::decoder::decode(task, &self.encoder);
        }
    }

    fn publish_load(&self) {
        let rows: usize = self.active.iter().map(|a| a.rows).sum();
        let latent_pixels: usize = self
            .active
            .iter()
            .map(|a| planner::latent_pixels(a.rows, a.group))
            .sum();
        let row_steps: usize = self
            .active
            .iter()
            .map(|a| {
                a.rows
                    * (a.denoiser.total_steps()
                        - a.denoiser.steps_done().min(a.denoiser.total_steps()))
            })
            .sum();
        let mut queue = self.shared.lock_queue();
        if let Some(slot) = queue.active_rows.get_mut(self.index) {
            *slot = rows;
        }
        if let Some(slot) = queue.active_row_steps.get_mut(self.index) {
            *slot = row_steps;
        }
        if let Some(slot) = queue.active_latent_pixels.get_mut(self.index) {
            *slot = latent_pixels;
        }
        if let Some(beat) = queue.heartbeats.get_mut(self.index) {
            // A call on the lane is progress only once it ends.
            let lane_start = self
                .lane
                .as_ref()
                .and_then(Lane::running)
                .map(|r| r.started);
            *beat = lane_start.unwrap_or_else(Instant::now);
        }
        let total: usize = queue.active_rows.iter().sum();
        drop(queue);
        metrics::gauge!("latentd_active_rows").set(total as f64);
    }
}
