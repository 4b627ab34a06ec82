//! PNG encoding on its own thread, so the denoising worker never waits for it.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use latentd_models::pipeline::RgbImage;

use crate::error::Code;
use crate::job::{Event, Job};
use crate::png_meta::{encode_png, ImageMetadata};

/// Finished images of one job, to encode and publish.
pub(crate) struct EncodeTask {
    pub job: Arc<Job>,
    pub images: Vec<RgbImage>,
}

/// Starts the encoder thread; it ends when every sender is dropped.
pub(crate) fn spawn() -> std::io::Result<(Sender<EncodeTask>, JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("latentd-png".into())
        .spawn(move || crate::supervisor::run_encoder(rx))?;
    Ok((tx, handle))
}

/// Encodes each image, publishes `image` events, then `done` (or an error).
pub(crate) fn publish(task: EncodeTask) {
    let job = task.job;
    let request = job.request();
    for (index, image) in task.images.iter().enumerate() {
        let meta = ImageMetadata::new(&request.model, &request.params, index);
        match encode_png(image, &meta) {
            Ok(png) => job.push(Event::Image {
                index,
                seed: request.params.seed,
                png: Bytes::from(png),
            }),
            Err(e) => {
                job.push(Event::Error {
                    code: Code::Internal,
                    message: format!("PNG encoding failed: {e}"),
                });
                return;
            }
        }
    }
    let queue_ms = job.queue_time().as_millis() as u64;
    let inference_ms = job.inference_time().unwrap_or_default().as_millis() as u64;
    metrics::counter!("latentd_images_generated_total").increment(task.images.len() as u64);
    metrics::counter!("latentd_jobs_total", "outcome" => "succeeded").increment(1);
    metrics::histogram!("latentd_job_seconds").record((queue_ms + inference_ms) as f64 / 1000.0);
    job.span().in_scope(|| {
        tracing::info!(
            queue_ms,
            inference_ms,
            images = task.images.len(),
            "job done"
        )
    });
    job.push(Event::Done {
        queue_ms,
        inference_ms,
        seed: request.params.seed,
    });
}
