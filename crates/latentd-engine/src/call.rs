//! One batched denoiser call: its inputs, gathered on the worker thread, and running it,
//! there or on the worker's lane thread.
//!
//! A long call (a 1024x1024 step takes seconds on a CPU) runs on the lane, so the worker
//! goes on ticking the other shape groups beside it: a small job that arrives while the
//! long call runs takes its steps at once instead of waiting for the call to end.
//! [`CallCosts`] says which calls are long, from the calls measured so far.

use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use latentd_models::interrupt::with_interrupt;
use latentd_models::pipeline::DiffusionModel;

use crate::failure::guarded;
use crate::job::Job;
use crate::planner::{latent_pixels, GroupKey};
use crate::worker::Shared;

/// A call expected to take at least this long runs on the lane.
pub(crate) const LONG_CALL: Duration = Duration::from_millis(250);

/// While the lane runs a call, the worker runs another group's call beside it only when
/// that call is short (under [`LONG_CALL`]) or expected to take at most one
/// `BESIDE_FRACTION`-th of the lane's call.
const BESIDE_FRACTION: u32 = 4;

/// One job's rows of a call.
pub(crate) struct JobInput {
    pub job: Arc<Job>,
    pub rows: usize,
    pub latents: Tensor,
    pub timesteps: Vec<f32>,
    pub context: Option<Tensor>,
}

/// A batched call of one model over jobs of one shape group.
pub(crate) struct Call {
    pub model: Arc<dyn DiffusionModel>,
    pub group: GroupKey,
    pub jobs: Vec<JobInput>,
}

/// What a call gave: one output (or error) per job, in the call's order.
pub(crate) struct CallResult {
    pub group: GroupKey,
    /// The jobs' sequence numbers, in the call's order.
    pub seqs: Vec<u64>,
    pub rows: usize,
    pub outputs: Vec<Result<Tensor, String>>,
    pub elapsed: Duration,
}

impl Call {
    /// Runs the call: one batched model call, stopped mid-forward once every job in it
    /// has ended (cancelled, or failed by a shutdown). When the batched call fails,
    /// each job is run alone, so a failure stays with the job that caused it.
    pub(crate) fn run(self) -> CallResult {
        let started = Instant::now();
        let jobs: Vec<Arc<Job>> = self.jobs.iter().map(|j| j.job.clone()).collect();
        let ended = Arc::new(move || {
            jobs.iter()
                .all(|j| j.is_cancelled() || j.state().is_terminal())
        });
        let batch = guarded(|| {
            let latents: Vec<&Tensor> = self.jobs.iter().map(|j| &j.latents).collect();
            let latents = Tensor::cat(&latents, 0)?;
            let timesteps: Vec<f32> = self
                .jobs
                .iter()
                .flat_map(|j| j.timesteps.iter().copied())
                .collect();
            let contexts: Vec<&Tensor> = self
                .jobs
                .iter()
                .filter_map(|j| j.context.as_ref())
                .collect();
            let context = if contexts.is_empty() {
                None
            } else {
                Some(Tensor::cat(&contexts, 0)?)
            };
            let out = with_interrupt(ended.clone(), || {
                self.model.predict(&latents, &timesteps, context.as_ref())
            })?;
            let mut offset = 0;
            let mut split = Vec::with_capacity(self.jobs.len());
            for j in &self.jobs {
                split.push(out.narrow(0, offset, j.rows)?);
                offset += j.rows;
            }
            Ok(split)
        });
        let outputs = match batch {
            Ok(split) => split.into_iter().map(Ok).collect(),
            Err(message) if self.jobs.len() == 1 || ended() => vec![Err(message); self.jobs.len()],
            Err(message) => {
                tracing::warn!(%message, "batched model call failed; retrying each job alone");
                self.jobs
                    .iter()
                    .map(|j| {
                        guarded(|| {
                            self.model
                                .predict(&j.latents, &j.timesteps, j.context.as_ref())
                        })
                    })
                    .collect()
            }
        };
        CallResult {
            group: self.group,
            seqs: self.jobs.iter().map(|j| j.job.seq()).collect(),
            rows: self.jobs.iter().map(|j| j.rows).sum(),
            outputs,
            elapsed: started.elapsed(),
        }
    }
}

/// The worker's second thread for long calls: one call at a time.
pub(crate) struct Lane {
    calls: Sender<Call>,
    results: Receiver<CallResult>,
    /// The call in progress.
    running: Option<Running>,
}

/// The call a [`Lane`] is running.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Running {
    pub group: GroupKey,
    pub started: Instant,
    /// Its expected time, if its model has been measured.
    pub expected: Option<Duration>,
}

impl Lane {
    /// Starts the lane thread of worker `index`; it ends when the lane is dropped.
    ///
    /// Its calls run on a thread pool of their own, as large as the default one: in one
    /// pool, a short call's parallel loops would queue behind the long call's (a long
    /// call's single convolution or attention can take a second), while two pools share
    /// the cores through the operating system, so the short call runs at about half
    /// speed instead of waiting. With nothing beside it, the long call has the cores.
    pub(crate) fn start(index: usize, shared: Arc<Shared>) -> std::io::Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(move |i| format!("latentd-lane-{index}-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        let (calls, inbox) = channel::<Call>();
        let (outbox, results) = channel();
        std::thread::Builder::new()
            .name(format!("latentd-lane-{index}"))
            .spawn(move || {
                while let Ok(call) = inbox.recv() {
                    let result = pool.install(|| call.run());
                    if outbox.send(result).is_err() {
                        break;
                    }
                    // Under the queue lock: the worker checks for results under it
                    // before it waits, so this wake-up cannot be missed.
                    let _queue = shared.lock_queue();
                    shared.wake.notify_all();
                }
            })?;
        Ok(Self {
            calls,
            results,
            running: None,
        })
    }

    /// The call in progress.
    pub(crate) fn running(&self) -> Option<Running> {
        self.running
    }

    /// Hands `call`, expected to take `expected`, to the lane; gives it back if the
    /// lane is busy or gone.
    pub(crate) fn submit(&mut self, call: Call, expected: Option<Duration>) -> Result<(), Call> {
        if self.running.is_some() {
            return Err(call);
        }
        let group = call.group;
        match self.calls.send(call) {
            Ok(()) => {
                self.running = Some(Running {
                    group,
                    started: Instant::now(),
                    expected,
                });
                Ok(())
            }
            Err(std::sync::mpsc::SendError(call)) => Err(call),
        }
    }

    /// The finished call's result, if there is one (without waiting).
    pub(crate) fn finished(&mut self) -> Option<CallResult> {
        let result = self.results.try_recv().ok()?;
        self.running = None;
        Some(result)
    }
}

/// Groups whose cost [`CallCosts`] keeps at most.
const MAX_GROUPS: usize = 256;

/// The measured cost of each group's calls, per row x latent pixel.
#[derive(Debug, Default)]
pub(crate) struct CallCosts {
    /// Nanoseconds per row x latent pixel of each group's last call.
    per_pixel: HashMap<GroupKey, f64>,
}

impl CallCosts {
    /// Records a call of `rows` rows of `group` that took `elapsed`. Groups are kept
    /// after their jobs leave (the next job of a size is estimated from them), up to
    /// [`MAX_GROUPS`]; past it the table starts again.
    pub(crate) fn record(&mut self, group: GroupKey, rows: usize, elapsed: Duration) {
        if self.per_pixel.len() >= MAX_GROUPS && !self.per_pixel.contains_key(&group) {
            self.per_pixel.clear();
        }
        let pixels = latent_pixels(rows, group).max(1) as f64;
        self.per_pixel
            .insert(group, elapsed.as_nanos() as f64 / pixels);
    }

    /// The expected time of a call of `rows` rows of `group`: from the group's last
    /// call, else from the cheapest rate measured for the same model (larger latents
    /// cost more per pixel, so this errs low for them, high for smaller ones); `None`
    /// before the model's first call.
    pub(crate) fn estimate(&self, group: GroupKey, rows: usize) -> Option<Duration> {
        let rate = self.per_pixel.get(&group).copied().or_else(|| {
            self.per_pixel
                .iter()
                .filter(|(g, _)| g.model == group.model)
                .map(|(_, r)| *r)
                .min_by(f64::total_cmp)
        })?;
        let nanos = rate * latent_pixels(rows, group) as f64;
        Some(Duration::from_nanos(nanos.min(u64::MAX as f64) as u64))
    }

    /// Whether a call of `rows` rows of `group` belongs on the lane (long or unknown).
    pub(crate) fn is_long(&self, group: GroupKey, rows: usize) -> bool {
        self.estimate(group, rows).is_none_or(|t| t >= LONG_CALL)
    }

    /// Whether a call of `rows` rows of `group` may run beside the lane's call,
    /// expected to take `lane_cost`: it must be known, and short or much shorter.
    pub(crate) fn fits_beside(
        &self,
        group: GroupKey,
        rows: usize,
        lane_cost: Option<Duration>,
    ) -> bool {
        match (self.estimate(group, rows), lane_cost) {
            (Some(t), Some(lane)) => t < LONG_CALL || t * BESIDE_FRACTION <= lane,
            (Some(t), None) => t < LONG_CALL,
            (None, _) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: GroupKey = GroupKey::new(0, 8, 8);
    const BIG: GroupKey = GroupKey::new(0, 128, 128);
    const OTHER_MODEL: GroupKey = GroupKey::new(1, 8, 8);

    #[test]
    fn costs_come_from_the_group_else_the_model_and_decide_the_lane() {
        let mut costs = CallCosts::default();
        assert_eq!(costs.estimate(BIG, 2), None);
        assert!(
            costs.is_long(BIG, 2),
            "a model's first call goes to the lane"
        );
        // 2 rows of 128x128 in 8 s: 244 us per row x pixel.
        costs.record(BIG, 2, Duration::from_secs(8));
        assert_eq!(costs.estimate(BIG, 4), Some(Duration::from_secs(16)));
        assert!(costs.is_long(BIG, 2));
        // A small group of the same model, never run: estimated at that rate (31 ms).
        let small = costs.estimate(SMALL, 2).unwrap();
        assert!(small > Duration::from_millis(30) && small < Duration::from_millis(32));
        assert!(!costs.is_long(SMALL, 2));
        assert!(costs.fits_beside(SMALL, 2, Some(Duration::from_secs(8))));
        // Another model's group has no estimate: it waits for the lane.
        assert_eq!(costs.estimate(OTHER_MODEL, 2), None);
        assert!(!costs.fits_beside(OTHER_MODEL, 2, Some(Duration::from_secs(8))));
        // A long group runs beside the lane only when it is much shorter.
        assert!(costs.fits_beside(BIG, 2, Some(Duration::from_secs(40))));
        assert!(!costs.fits_beside(BIG, 2, Some(Duration::from_secs(20))));
        // Past the table's bound it starts again.
        for side in 0..MAX_GROUPS {
            let g = GroupKey::new(2, 1, side + 1);
            costs.record(g, 1, Duration::from_millis(1));
        }
        assert_eq!(costs.estimate(BIG, 2), None);
    }
}
