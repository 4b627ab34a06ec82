//! Supervision of the engine's threads: a worker whose tick panics outside the per-job
//! guards fails the jobs it held and starts over on the same thread; the PNG encoder
//! fails the one job whose encoding panicked and goes on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use crate::decoder::DecodeTask;
use crate::encoder::{publish, EncodeTask};
use crate::error::Code;
use crate::job::Event;
use crate::worker::{panic_message, Models, Shared, Worker};

/// Runs worker `index` until the engine shuts down, restarting it after panics.
pub(crate) fn run_worker(
    index: usize,
    models: Models,
    shared: Arc<Shared>,
    decoder: Sender<DecodeTask>,
    encoder: Sender<EncodeTask>,
) {
    let mut worker = Worker::new(index, models, shared, decoder, encoder);
    tracing::info!(worker = index, "worker started");
    loop {
        match catch_unwind(AssertUnwindSafe(|| while worker.tick_once() {})) {
            Ok(()) => break,
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                tracing::error!(worker = index, %message, "worker panicked; failing its jobs and restarting it");
                metrics::counter!("latentd_worker_restarts_total").increment(1);
                {
                    let mut queue = worker.shared.lock_queue();
                    if let Some(count) = queue.restarts.get_mut(index) {
                        *count += 1;
                    }
                }
                worker.fail_held(&format!("the worker failed: {message}"));
                // A fault that repeats at once must not spin the CPU.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    tracing::info!(worker = index, "worker stopped");
}

/// The encoder thread's loop: ends when every sender is gone.
pub(crate) fn run_encoder(rx: Receiver<EncodeTask>) {
    while let Ok(task) = rx.recv() {
        let job = task.job.clone();
        let published = catch_unwind(AssertUnwindSafe(|| {
            #[cfg(test)]
            fault::maybe_panic(fault::ENCODER, &task.job.request().params.prompt);
            publish(task)
        }));
        if let Err(panic) = published {
            let message = panic_message(panic.as_ref());
            tracing::error!(job = %job.id(), %message, "PNG encoding panicked");
            metrics::counter!("latentd_encoder_panics_total").increment(1);
            job.push(Event::Error {
                code: Code::Internal,
                message: format!("PNG encoding failed: {message}"),
            });
        }
    }
}

/// Faults the tests inject into the threads, keyed by a job's prompt so that tests
/// running in parallel never trip each other's (compiled into test builds only).
#[cfg(test)]
pub(crate) mod fault {
    /// A job with this prompt panics the worker's tick once it is admitted.
    pub(crate) const WORKER: &str = "inject: worker panic";
    /// A job with this prompt panics the encoder when its images are published.
    pub(crate) const ENCODER: &str = "inject: encoder panic";

    /// Panics when `prompt` is the fault `point`.
    pub(crate) fn maybe_panic(point: &str, prompt: &str) {
        if prompt == point {
            panic!("injected fault");
        }
    }
}
