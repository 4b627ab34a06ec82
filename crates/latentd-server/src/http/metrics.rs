//! Prometheus metrics: the recorder, `GET /metrics`, and per-request counting.

use std::sync::OnceLock;
use std::time::Instant;

use axum::body::{Body, HttpBody};
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::AppState;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder (installed on first use).
pub fn prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            ];
            let rows = [1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full("latentd_batch_rows".into()), &rows)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                });
            match builder {
                Ok(b) => {
                    let recorder = b.build_recorder();
                    let handle = recorder.handle();
                    if metrics::set_global_recorder(recorder).is_err() {
                        tracing::warn!(
                            "a metrics recorder was already installed; /metrics will be empty"
                        );
                    }
                    describe();
                    spawn_upkeep(handle.clone());
                    handle
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics buckets rejected; using defaults");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

/// How often the recorder folds recorded histogram samples into its buckets.
const UPKEEP_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the recorder's upkeep on a thread of its own. Histogram samples wait in a
/// buffer until upkeep or a scrape folds them into buckets: without it, a server
/// nobody scrapes keeps every sample of every step and request it ever recorded.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("latentd-metrics".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_PERIOD);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "metrics upkeep thread not started; histograms fold on scrape only");
    }
}

/// The `# HELP` text of every metric latentd records.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "latentd_http_requests_total",
        "HTTP requests answered, by route and status"
    );
    describe_histogram!(
        "latentd_http_request_duration_seconds",
        Unit::Seconds,
        "Time from the request to the end of its response body, by route (event streams: until the stream ends or the client goes away)"
    );
    describe_counter!(
        "latentd_jobs_total",
        "Jobs ended, by outcome (succeeded, failed, cancelled)"
    );
    describe_counter!("latentd_images_generated_total", "Images generated");
    describe_counter!(
        "latentd_rejected_total",
        "Requests refused before queueing, by reason"
    );
    describe_counter!(
        "latentd_worker_restarts_total",
        "Workers restarted after a panic"
    );
    describe_counter!(
        "latentd_encoder_panics_total",
        "PNG encodings that panicked"
    );
    describe_gauge!("latentd_queue_depth", "Jobs waiting to start");
    describe_gauge!(
        "latentd_active_rows",
        "Denoiser rows in flight over all workers"
    );
    describe_gauge!("latentd_build_info", "Always 1, labelled with the version");
    describe_gauge!(
        "latentd_device_memory_used_bytes",
        Unit::Bytes,
        "Memory in use on each accelerator, as its driver reports it (GPUs only)"
    );
    describe_gauge!(
        "latentd_device_memory_total_bytes",
        Unit::Bytes,
        "Memory of each accelerator (GPUs only)"
    );
    describe_gauge!(
        "latentd_heap_in_use_bytes",
        Unit::Bytes,
        "Heap memory the process holds in live allocations (glibc only)"
    );
    describe_gauge!(
        "latentd_heap_free_bytes",
        Unit::Bytes,
        "Heap memory freed but still held by the allocator (glibc only)"
    );
    describe_gauge!(
        "latentd_model_info",
        "Always 1 for each served model, with its family"
    );
    describe_histogram!("latentd_batch_rows", "Rows per denoiser call");
    describe_histogram!(
        "latentd_step_seconds",
        Unit::Seconds,
        "Time of one denoiser call"
    );
    describe_histogram!(
        "latentd_queue_wait_seconds",
        Unit::Seconds,
        "Time jobs waited in the queue before a worker took them"
    );
    describe_histogram!(
        "latentd_job_seconds",
        Unit::Seconds,
        "Time from submission to the last image"
    );
    metrics::gauge!("latentd_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus metrics", content_type = "text/plain")))]
pub async fn render(State(state): State<AppState>) -> Response {
    metrics::gauge!("latentd_queue_depth").set(state.engine.queue_len() as f64);
    metrics::gauge!("latentd_active_rows").set(state.engine.active_rows() as f64);
    for device in state.engine.devices() {
        if let Some(memory) = latentd_models::device::memory(device) {
            let label = latentd_models::device::label(device);
            metrics::gauge!("latentd_device_memory_used_bytes", "device" => label.clone())
                .set(memory.used as f64);
            metrics::gauge!("latentd_device_memory_total_bytes", "device" => label)
                .set(memory.total as f64);
        }
    }
    if let Some(heap) = latentd_engine::memory::heap_usage() {
        metrics::gauge!("latentd_heap_in_use_bytes").set(heap.in_use as f64);
        metrics::gauge!("latentd_heap_free_bytes").set(heap.free as f64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Counts requests by route and status and times them until their body ends: a body of
/// known size is complete with the headers; a streamed one (server-sent events) is timed
/// until its last frame, or until the client goes away and the body is dropped.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let timer = RequestTimer {
        route: route.clone(),
        started: Instant::now(),
    };
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("latentd_http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    if response.body().size_hint().exact().is_some() {
        // Recorded now, as the timer drops.
        return response;
    }
    let (parts, body) = response.into_parts();
    // The stream owns the timer: it records when the body is done with and dropped.
    let stream = body.into_data_stream().map(move |frame| {
        let _ = &timer;
        frame
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// Records a request's duration, by route, when dropped.
struct RequestTimer {
    route: String,
    started: Instant,
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        metrics::histogram!("latentd_http_request_duration_seconds", "route" => std::mem::take(&mut self.route))
            .record(self.started.elapsed().as_secs_f64());
    }
}
