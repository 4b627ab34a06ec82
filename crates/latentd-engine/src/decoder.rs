//! Decoding finished latents on a thread of its own, one per worker, so that a job
//! reaching its last step never stalls the denoising loop of the jobs still running.
//!
//! The worker hands over each shape group's finished jobs with their latents; the
//! decoder decodes them in one autoencoder call (the same call, and so the same pixels,
//! as on the worker) and passes the images on to the PNG encoder.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::Tensor;
use latentd_models::pipeline::{DiffusionModel, RgbImage};

use crate::encoder::EncodeTask;
use crate::error::Code;
use crate::job::Job;
use crate::worker::{fail, guarded, panic_message, Shared};

/// Finished jobs of one shape group and one model, with their final latents.
pub(crate) struct DecodeTask {
    pub model: Arc<dyn DiffusionModel>,
    pub jobs: Vec<(Arc<Job>, Tensor)>,
}

/// Starts worker `index`'s decoder thread; it ends when the worker's sender is dropped,
/// after the tasks already sent.
pub(crate) fn spawn(
    index: usize,
    shared: Arc<Shared>,
    encoder: Sender<EncodeTask>,
) -> std::io::Result<(Sender<DecodeTask>, JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(format!("latentd-decode-{index}"))
        .spawn(move || run(rx, &shared, &encoder))?;
    Ok((tx, handle))
}

/// The decoder's loop. A panic outside the guarded model call fails that task's jobs
/// and the loop goes on.
fn run(rx: Receiver<DecodeTask>, shared: &Shared, encoder: &Sender<EncodeTask>) {
    while let Ok(task) = rx.recv() {
        let jobs: Vec<Arc<Job>> = task.jobs.iter().map(|(job, _)| job.clone()).collect();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if shared.lock_queue().stop {
                for job in &jobs {
                    fail(
                        job,
                        Code::ShuttingDown,
                        "the server shut down before the job's images were decoded",
                    );
                }
                return;
            }
            decode(task, encoder);
        }));
        if let Err(panic) = outcome {
            let message = panic_message(panic.as_ref());
            tracing::error!(%message, "decoding panicked");
            for job in &jobs {
                fail(job, Code::Internal, &format!("decoding failed: {message}"));
            }
        }
    }
}

/// Decodes a group's jobs in one call and hands each its images; when the call fails,
/// each job is decoded alone so that a failure stays with the job that caused it.
/// Cancelled jobs are dropped first.
pub(crate) fn decode(task: DecodeTask, encoder: &Sender<EncodeTask>) {
    let DecodeTask { model, jobs } = task;
    let jobs: Vec<(Arc<Job>, Tensor)> = jobs
        .into_iter()
        .filter(|(job, _)| {
            if job.is_cancelled() {
                fail(job, Code::Cancelled, "the job was cancelled");
                false
            } else {
                !job.state().is_terminal()
            }
        })
        .collect();
    if jobs.is_empty() {
        return;
    }
    let decoded = guarded(|| {
        let latents: Vec<&Tensor> = jobs.iter().map(|(_, latents)| latents).collect();
        model.decode(&Tensor::cat(&latents, 0)?)
    });
    match decoded {
        Ok(mut images) => {
            for (job, latents) in jobs {
                let count = latents.dim(0).unwrap_or(0).min(images.len());
                let rest = images.split_off(count);
                let mine = std::mem::replace(&mut images, rest);
                hand_to_encoder(encoder, job, mine);
            }
        }
        Err(message) if jobs.len() == 1 => {
            for (job, _) in jobs {
                fail(
                    &job,
                    Code::GenerationFailed,
                    &format!("decoding failed: {message}"),
                );
            }
        }
        Err(_) => {
            for one in jobs {
                let task = DecodeTask {
                    model: model.clone(),
                    jobs: vec![one],
                };
                decode(task, encoder);
            }
        }
    }
}

fn hand_to_encoder(encoder: &Sender<EncodeTask>, job: Arc<Job>, images: Vec<RgbImage>) {
    let task = EncodeTask { job, images };
    if let Err(std::sync::mpsc::SendError(task)) = encoder.send(task) {
        // The encoder thread is gone; encode here rather than lose the result.
        crate::encoder::publish(task);
    }
}
