//! The HTTP API on axum: routes, state, and the server's lifecycle.

pub mod auth;
pub mod error;
pub mod extract;
pub mod generate;
pub mod health;
pub mod jobs;
pub mod metrics;
pub mod models;
pub mod openai;
pub mod openai_edits;
pub mod openapi;
mod openapi_requests;
pub mod seed;
pub mod sse;
pub mod types;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::DefaultBodyLimit;
use axum::http::Uri;
use axum::routing::{get, post};
use axum::{middleware, Router};
use latentd_engine::{Engine, Job};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower_http::trace::TraceLayer;
use utoipa_swagger_ui::SwaggerUi;

use self::error::ApiError;
use crate::shared_jobs::SharedJobs;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The serving core.
    pub engine: Engine,
    /// Prometheus handle for `/metrics`.
    pub metrics: PrometheusHandle,
    /// Required API key for `/v1/*`, if any.
    pub api_key: Option<Arc<str>>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Unix time the server started (reported as the model's `created`).
    pub started_unix: u64,
    /// Where async jobs live when replicas share them (`--job-store redis://...`);
    /// `None`: in the engine's memory.
    pub shared_jobs: Option<SharedJobs>,
}

impl AppState {
    /// State for an engine with the given limits.
    pub fn new(engine: Engine, api_key: Option<String>, max_body_bytes: usize) -> Self {
        let metrics = metrics::prometheus();
        for info in engine.models() {
            ::metrics::gauge!(
                "latentd_model_info",
                "model" => info.name.clone(),
                "family" => info.family.name()
            )
            .set(1.0);
        }
        Self {
            engine,
            metrics,
            api_key: api_key.filter(|k| !k.is_empty()).map(Arc::from),
            max_body_bytes,
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            shared_jobs: None,
        }
    }

    /// The same state with async jobs kept in a shared store.
    pub fn with_shared_jobs(mut self, shared: SharedJobs) -> Self {
        self.shared_jobs = Some(shared);
        self
    }
}

/// Cancels a job when dropped, unless disarmed: a synchronous or streaming client
/// that goes away takes its job with it.
pub struct CancelOnDrop {
    engine: Engine,
    job: Arc<Job>,
    armed: AtomicBool,
}

impl CancelOnDrop {
    /// Arms the guard for `job`.
    pub fn new(engine: Engine, job: Arc<Job>) -> Self {
        Self {
            engine,
            job,
            armed: AtomicBool::new(true),
        }
    }

    /// The job ended or was handed over: dropping no longer cancels.
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed.load(Ordering::SeqCst) && !self.job.state().is_terminal() {
            tracing::info!(job = %self.job.id(), "client went away; cancelling its job");
            let _ = self.engine.cancel(self.job.id());
        }
    }
}

/// The full router.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/generate", post(generate::generate))
        .route("/v1/jobs", post(jobs::create))
        .route("/v1/jobs/{id}", get(jobs::status).delete(jobs::delete))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/events", get(jobs::events))
        .route("/v1/jobs/{id}/images/{index}", get(jobs::image))
        .route("/v1/images/generations", post(openai::generations))
        .route("/v1/images/edits", post(openai_edits::edits))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::retrieve))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    let open = Router::new()
        .route("/", get(playground))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(metrics::render));
    let max_body = state.max_body_bytes;
    // The served document states this server's limits and models.
    let document = openapi::document(&openapi::Served {
        config: state.engine.config(),
        models: state.engine.models(),
    });
    Router::new()
        .merge(api)
        .merge(open)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(metrics::track))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
        .merge(SwaggerUi::new("/docs").external_url_unchecked("/openapi.json", document))
        // 5xx answers are logged where they arise (ApiError); a saturated /ready is not
        // an error.
        .layer(
            TraceLayer::new_for_http().on_failure(
                tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
            ),
        )
}

/// A small page to try the API from a browser: prompt, live progress, result.
async fn playground() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("assets/playground.html"))
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NoRoute(uri.path().to_string())
}

async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

/// A server running on a tokio task.
pub struct RunningServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Binds `addr` and serves `state` until [`RunningServer::shutdown`].
    ///
    /// Shutdown is graceful: new work is refused with 503 at once, queued and running
    /// jobs get up to `grace` to finish (their clients get their images), then the
    /// engine stops and open connections are closed.
    pub async fn start(
        state: AppState,
        addr: SocketAddr,
        grace: Duration,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let engine = state.engine.clone();
        let shared = state.shared_jobs.clone();
        let app = router(state);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                    tracing::info!(
                        grace_secs = grace.as_secs_f64(),
                        "shutting down: finishing jobs"
                    );
                    if let Some(shared) = &shared {
                        shared.begin_drain();
                    }
                    let _ = tokio::task::spawn_blocking(move || engine.shutdown(grace)).await;
                    if let Some(shared) = &shared {
                        shared.finish_drain(Duration::from_secs(10)).await;
                    }
                    tracing::info!("engine stopped; closing connections");
                })
                .await
        });
        Ok(Self {
            addr,
            shutdown: Some(tx),
            task,
        })
    }

    /// Begins graceful shutdown and waits for it to complete.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }

    /// Asks for graceful shutdown without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits until the server has stopped.
    pub async fn wait(self) -> std::io::Result<()> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}
