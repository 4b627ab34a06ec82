//! The worker's model calls: which groups may run beside the lane's call, building a
//! call, running it here or on the lane, and applying its outputs.

use std::time::Duration;

use super::{fail, guarded, Worker};
use crate::call::{Call, CallResult, JobInput, Lane};
use crate::error::Code;
use crate::failure::check_finite;
use crate::job::Event;
use crate::planner::{ActiveJob, GroupKey, WaitingJob};

impl Worker {
    /// The groups that may not run this tick while the lane runs a call: the lane's own
    /// (its jobs are in the call) and those not known to be much shorter than it.
    pub(super) fn blocked_groups(
        &self,
        active: &[ActiveJob],
        waiting: &[WaitingJob],
    ) -> Vec<GroupKey> {
        let Some(lane) = self.lane.as_ref().and_then(Lane::running) else {
            return Vec::new();
        };
        let mut rows: Vec<(GroupKey, usize)> = Vec::new();
        let shapes = active.iter().map(|a| (a.group, a.rows));
        for (group, r) in shapes.chain(waiting.iter().map(|w| (w.group, w.rows))) {
            match rows.iter_mut().find(|(g, _)| *g == group) {
                Some((_, total)) => *total += r,
                None => rows.push((group, r)),
            }
        }
        rows.into_iter()
            .filter(|&(g, r)| g == lane.group || !self.costs.fits_beside(g, r, lane.expected))
            .map(|(g, _)| g)
            .collect()
    }

    /// Runs one UNet call over the given active jobs (on the lane when it is long) and
    /// advances each of them.
    pub(super) fn step(&mut self, run: &[usize]) {
        let Some(call) = self.call_of(run) else {
            return;
        };
        let rows: usize = call.jobs.iter().map(|j| j.rows).sum();
        let lane_free = self.lane.as_ref().is_none_or(|l| l.running().is_none());
        let call = if lane_free && self.costs.is_long(call.group, rows) {
            let expected = self.costs.estimate(call.group, rows);
            match self.lane_submit(call, expected) {
                Ok(()) => return,
                Err(call) => call,
            }
        } else {
            call
        };
        let result = call.run();
        self.finish(result);
    }

    /// Hands `call` to the lane, starting it if need be; gives the call back when the
    /// lane cannot take it (then it runs here).
    pub(super) fn lane_submit(
        &mut self,
        call: Call,
        expected: Option<Duration>,
    ) -> Result<(), Call> {
        if self.lane.is_none() {
            match Lane::start(self.index, self.shared.clone()) {
                Ok(lane) => self.lane = Some(lane),
                Err(e) => {
                    tracing::warn!(worker = self.index, error = %e, "cannot start the lane thread; long calls run on the worker");
                    return Err(call);
                }
            }
        }
        match self.lane.as_mut() {
            Some(lane) => lane.submit(call, expected),
            None => Err(call),
        }
    }

    /// Waits until the lane's call ends, a job arrives or one is cancelled (at most a
    /// moment), then takes the lane's result if there is one.
    pub(super) fn wait_for_lane(&mut self) {
        let shared = self.shared.clone();
        let Some(lane) = self.lane.as_mut() else {
            return;
        };
        if lane.running().is_none() {
            return;
        }
        let queue = shared.lock_queue();
        // Checked under the lock the lane takes to wake us: no wake-up is missed.
        let result = match lane.finished() {
            Some(result) => {
                drop(queue);
                Some(result)
            }
            None => {
                let (queue, _) = shared
                    .wake
                    .wait_timeout(queue, Duration::from_millis(200))
                    .unwrap_or_else(|e| e.into_inner());
                drop(queue);
                lane.finished()
            }
        };
        if let Some(result) = result {
            self.finish(result);
        }
    }

    /// The call over the given active jobs: their model and inputs. A job whose input
    /// cannot be made fails alone and stays out of the call.
    pub(super) fn call_of(&self, run: &[usize]) -> Option<Call> {
        let first = &self.active[*run.first()?];
        let model = match self.model_of(first) {
            Ok(model) => model.clone(),
            Err(e) => {
                for &i in run {
                    fail(&self.active[i].job, Code::Internal, &e.to_string());
                }
                return None;
            }
        };
        let mut jobs = Vec::with_capacity(run.len());
        for &i in run {
            let a = &self.active[i];
            match guarded(|| a.denoiser.model_input()) {
                Ok(input) => jobs.push(JobInput {
                    job: a.job.clone(),
                    rows: a.rows,
                    latents: input.latents,
                    timesteps: input.timesteps,
                    context: a.denoiser.context().cloned(),
                }),
                Err(message) => fail(&a.job, Code::GenerationFailed, &message),
            }
        }
        if jobs.is_empty() {
            return None;
        }
        Some(Call {
            model,
            group: first.group,
            jobs,
        })
    }

    /// Applies a call's outputs: each job of it still active advances (or fails).
    pub(super) fn finish(&mut self, result: CallResult) {
        let ended = result.seqs.iter().all(|seq| {
            self.active
                .iter()
                .find(|a| a.job.seq() == *seq)
                .is_none_or(|a| a.job.is_cancelled())
        });
        if ended {
            // Interrupted or not, the next tick drops them as cancelled.
            return;
        }
        let elapsed = result.elapsed;
        self.shared.record_tick(result.rows, elapsed);
        let cost = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.ledger.charge(result.group, cost);
        self.costs.record(result.group, result.rows, elapsed);
        metrics::histogram!("latentd_batch_rows").record(result.rows as f64);
        metrics::histogram!("latentd_step_seconds").record(elapsed.as_secs_f64());

        let tick = self.tick;
        for (seq, output) in result.seqs.iter().zip(result.outputs) {
            let Some(a) = self.active.iter_mut().find(|a| a.job.seq() == *seq) else {
                continue;
            };
            a.last_ran = tick;
            let result = output.and_then(|out| {
                guarded(|| {
                    a.denoiser.advance(&out)?;
                    check_finite(a.denoiser.latents())
                })
            });
            match result {
                Ok(()) => {
                    let done = a.denoiser.steps_done();
                    let total = a.denoiser.total_steps();
                    let per_step = a.started.elapsed().as_secs_f64() * 1000.0 / done.max(1) as f64;
                    a.job.push(Event::Progress {
                        step: done,
                        total,
                        eta_ms: (per_step * (total - done.min(total)) as f64) as u64,
                    });
                }
                Err(message) => {
                    // Mark it; `retire` removes it with the rest of the finished jobs.
                    fail(&a.job, Code::GenerationFailed, &message);
                }
            }
        }
    }
}
