//! Asynchronous jobs: create, poll, stream events, fetch images, cancel.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use latentd_engine::EngineError;

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath};
use super::types::{GenerateBody, JobCreated, JobStatus};
use super::AppState;

/// Queue a job and return at once.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "jobs",
    request_body = GenerateBody,
    responses(
        (status = 202, description = "Queued", body = JobCreated),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "Unknown model; the message lists the served ones", body = ErrorBody),
        (status = 422, description = "Invalid field", body = ErrorBody),
        (status = 429, description = "Queue full; see Retry-After", body = ErrorBody),
        (status = 503, description = "Shutting down, or the shared job store is unreachable", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<GenerateBody>,
) -> Result<Response, ApiError> {
    let id = match &state.shared_jobs {
        Some(shared) => shared.create(&body).await?,
        None => state
            .engine
            .submit(&body.to_request().map_err(EngineError::from)?)?
            .id()
            .to_string(),
    };
    let status_url = format!("/v1/jobs/{id}");
    let created = JobCreated {
        id,
        events_url: format!("{status_url}/events"),
        status_url: status_url.clone(),
    };
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, status_url)],
        Json(created),
    )
        .into_response())
}

/// A job's state, progress, timings and ready images.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobStatus),
        (status = 404, description = "Unknown or expired job", body = ErrorBody),
    )
)]
pub async fn status(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobStatus>, ApiError> {
    if let Some(shared) = &state.shared_jobs {
        if let Some(snapshot) = shared.status(&id).await? {
            return Ok(Json(JobStatus::new(snapshot, None)));
        }
    }
    let job = state.engine.job(&id)?;
    Ok(Json(JobStatus::new(
        job.snapshot(),
        state.engine.position(&id),
    )))
}

/// A job's events as server-sent events, from the start (a late subscriber first
/// gets everything so far) or after `Last-Event-ID`. Disconnecting does not cancel.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/events",
    tag = "jobs",
    params(
        ("id" = String, Path, description = "Job id"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id"),
    ),
    responses(
        (status = 200, description = "Event stream", content_type = "text/event-stream"),
        (status = 404, description = "Unknown or expired job", body = ErrorBody),
        (status = 422, description = "Last-Event-ID is not an event id", body = ErrorBody),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let from = match headers.get("last-event-id") {
        None => 0,
        Some(value) => value
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            // Any run of digits is an event id; one past every event's gives none.
            .map(|v| v.parse::<usize>().unwrap_or(usize::MAX).saturating_add(1))
            .ok_or_else(|| {
                ApiError::InvalidField(
                    "Last-Event-ID must be the decimal id of an event of this job".into(),
                )
            })?,
    };
    if let Some(shared) = &state.shared_jobs {
        if let Some(events) = shared.events(&id, from).await? {
            return Ok(super::sse::respond_shared(events));
        }
    }
    let job = state.engine.job(&id)?;
    Ok(super::sse::respond(job.subscribe(from), None))
}

/// One image of a job, as PNG.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/images/{index}",
    tag = "jobs",
    params(
        ("id" = String, Path, description = "Job id"),
        ("index" = usize, Path, description = "Image index"),
    ),
    responses(
        (status = 200, description = "The PNG", content_type = "image/png"),
        (status = 404, description = "Unknown job, or no such image (yet)", body = ErrorBody),
        (status = 422, description = "The index is not a whole number", body = ErrorBody),
    )
)]
pub async fn image(
    State(state): State<AppState>,
    ApiPath((id, index)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    // Any run of digits is an index; one too large for this machine names no image.
    let index = match index.parse::<usize>() {
        Ok(index) => index,
        Err(_) if !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) => usize::MAX,
        Err(_) => {
            return Err(ApiError::InvalidField(format!(
                "path: `index` must be a whole number, got `{index}`"
            )))
        }
    };
    if let Some(shared) = &state.shared_jobs {
        if let Some(png) = shared.image(&id, index).await? {
            return Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response());
        }
    }
    let job = state.engine.job(&id)?;
    let png = job
        .image(index)
        .ok_or(EngineError::ImageNotFound { id, index })?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

/// Cancel a queued or running job and keep its record; a running job stops at its
/// next step (or within its current model call).
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/cancel",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Cancellation requested; the job's state", body = JobStatus),
        (status = 404, description = "Unknown or expired job", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobStatus>, ApiError> {
    if let Some(shared) = &state.shared_jobs {
        if let Some(snapshot) = shared.cancel(&id).await? {
            return Ok(Json(JobStatus::new(snapshot, None)));
        }
    }
    let snapshot = state.engine.cancel(&id)?;
    Ok(Json(JobStatus::new(snapshot, None)))
}

/// Delete a job: cancel it if it has not ended, and forget it (404 afterwards).
#[utoipa::path(
    delete,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Deleted; the job's last state", body = JobStatus),
        (status = 404, description = "Unknown or expired job", body = ErrorBody),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobStatus>, ApiError> {
    if let Some(shared) = &state.shared_jobs {
        if let Some(snapshot) = shared.delete(&id).await? {
            return Ok(Json(JobStatus::new(snapshot, None)));
        }
    }
    let snapshot = state.engine.remove(&id)?;
    Ok(Json(JobStatus::new(snapshot, None)))
}
