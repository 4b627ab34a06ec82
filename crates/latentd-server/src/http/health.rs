//! `GET /health` (liveness) and `GET /ready` (readiness).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use latentd_engine::WorkerHealth;

use super::types::HealthBody;
use super::AppState;

/// Liveness: the process serves HTTP and every worker runs and makes progress. A dead
/// worker thread, or one that holds work without finishing a tick for
/// `--wedged-after-secs`, answers 503 so that an orchestrator restarts the process.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "Alive", body = HealthBody),
              (status = 503, description = "A worker is dead or wedged", body = HealthBody)))]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<HealthBody>) {
    let workers = state.engine.worker_health();
    let stopping = state.engine.is_shutting_down();
    let (code, status) = if !stopping && workers.iter().any(|w| !w.alive) {
        (StatusCode::SERVICE_UNAVAILABLE, "worker_dead")
    } else if workers.iter().any(|w| w.wedged) {
        (StatusCode::SERVICE_UNAVAILABLE, "worker_wedged")
    } else {
        (StatusCode::OK, "ok")
    };
    (code, Json(body(&state, status, &workers)))
}

/// Readiness: the model is loaded, the queue has room and the server is not
/// shutting down. Load balancers stop sending work while it answers 503.
#[utoipa::path(get, path = "/ready", tag = "health",
    responses((status = 200, description = "Ready", body = HealthBody),
              (status = 503, description = "Saturated or shutting down", body = HealthBody)))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<HealthBody>) {
    let engine = &state.engine;
    let (code, status) = if engine.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
    } else if !engine.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "saturated")
    } else {
        (StatusCode::OK, "ready")
    };
    (code, Json(body(&state, status, &engine.worker_health())))
}

fn body(state: &AppState, status: &str, workers: &[WorkerHealth]) -> HealthBody {
    HealthBody {
        status: status.into(),
        queue_depth: state.engine.queue_len(),
        active_rows: state.engine.active_rows(),
        worker_restarts: workers.iter().map(|w| w.restarts).sum(),
    }
}
