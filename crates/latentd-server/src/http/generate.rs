//! `POST /v1/generate`: run a job and answer with PNG, JSON or an SSE stream.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use latentd_engine::{EngineError, Event, Job};

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use super::types::{GenerateBody, GenerateResponse, ImageData, Timings};
use super::{AppState, CancelOnDrop};

/// The response format a client asked for with `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `image/png`: the image itself (n = 1).
    Png,
    /// `application/json` (the default).
    Json,
    /// `text/event-stream`: progress events, then the images.
    Sse,
}

/// Picks the response format from the `Accept` header; a header that accepts none of
/// JSON, PNG and event streams is a 406.
pub fn negotiate(headers: &HeaderMap) -> Result<Format, ApiError> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let types: Vec<&str> = accept
        .split(',')
        .map(|range| range.split(';').next().unwrap_or("").trim())
        .filter(|t| !t.is_empty())
        .collect();
    let has = |wanted: &[&str]| types.iter().any(|t| wanted.contains(t));
    if types.is_empty() {
        Ok(Format::Json)
    } else if has(&["text/event-stream"]) {
        Ok(Format::Sse)
    } else if has(&["image/png", "image/*"]) && !has(&["application/json"]) {
        Ok(Format::Png)
    } else if has(&["application/json", "application/*", "*/*"]) {
        Ok(Format::Json)
    } else {
        Err(ApiError::NotAcceptable(
            accept.clone(),
            "application/json, image/png or text/event-stream",
        ))
    }
}

/// Generate images.
///
/// The response depends on `Accept`: `image/png` returns the PNG (n = 1 only),
/// `text/event-stream` streams `queued`, `started`, `progress`, `image`, `done`
/// (or `error`) events, anything else returns JSON. A client that disconnects
/// cancels its job.
#[utoipa::path(
    post,
    path = "/v1/generate",
    tag = "generate",
    request_body = GenerateBody,
    responses(
        (status = 200,
         description = "The images: JSON by default, the PNG itself with `Accept: image/png` (n = 1), or server-sent events with `Accept: text/event-stream`",
         content(
             (GenerateResponse = "application/json"),
             ("image/png"),
             ("text/event-stream"),
         ),
         headers(("x-job-id" = String, description = "Job id"),
                 ("x-seed" = u64, description = "Seed used"),
                 ("x-queue-time" = u64, description = "Milliseconds queued"),
                 ("x-inference-time" = u64, description = "Milliseconds running"))),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "Unknown model; the message lists the served ones", body = ErrorBody),
        (status = 406, description = "Accept names no type this route gives", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid field (the message names it), or an input image or mask that is not a PNG, JPEG or WebP file or does not decode", body = ErrorBody),
        (status = 429, description = "Queue full; see Retry-After", body = ErrorBody),
        (status = 503, description = "Shutting down", body = ErrorBody),
    )
)]
pub async fn generate(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<GenerateBody>,
) -> Result<Response, ApiError> {
    let format = negotiate(&headers)?;
    if format == Format::Png && body.n.unwrap_or(1) > 1 {
        return Err(ApiError::InvalidField(
            "Accept: image/png returns a single image; use application/json or text/event-stream for n > 1".into(),
        ));
    }
    let job = state
        .engine
        .submit(&body.to_request().map_err(EngineError::from)?)?;
    if format == Format::Sse {
        let guard = CancelOnDrop::new(state.engine.clone(), job.clone());
        let mut response = super::sse::respond(job.subscribe(0), Some(guard));
        job_headers(response.headers_mut(), &job);
        return Ok(response);
    }
    finish(&state, &job).await?;
    let mut response = match format {
        Format::Png => {
            let png = job
                .image(0)
                .ok_or_else(|| EngineError::Internal("image missing".into()))?;
            ([(header::CONTENT_TYPE, "image/png")], png).into_response()
        }
        _ => Json(json_response(&job)?).into_response(),
    };
    job_headers(response.headers_mut(), &job);
    Ok(response)
}

/// Waits for a job on behalf of a client that holds the connection: if the client
/// goes away first (the future is dropped), the job is cancelled.
pub async fn finish(state: &AppState, job: &Arc<Job>) -> Result<(), ApiError> {
    let guard = CancelOnDrop::new(state.engine.clone(), job.clone());
    wait_for(job).await?;
    guard.disarm();
    Ok(())
}

/// Waits for a job to end; its error becomes the request's error.
pub async fn wait_for(job: &Arc<Job>) -> Result<(), ApiError> {
    let mut events = job.subscribe(0);
    while let Some((_, event)) = events.next().await {
        match event {
            Event::Done { .. } => return Ok(()),
            Event::Error { code, message } => {
                return Err(EngineError::JobFailed { code, message }.into())
            }
            _ => {}
        }
    }
    Err(EngineError::Internal("the job ended without a result".into()).into())
}

/// The JSON body for a finished job.
pub fn json_response(job: &Job) -> Result<GenerateResponse, ApiError> {
    let request = job.request();
    let mut images = Vec::with_capacity(request.params.n);
    for index in 0..request.params.n {
        let png = job
            .image(index)
            .ok_or_else(|| EngineError::Internal(format!("image {index} missing")))?;
        images.push(ImageData {
            index,
            seed: request.params.seed,
            png_base64: base64::engine::general_purpose::STANDARD.encode(&png),
        });
    }
    let snapshot = job.snapshot();
    Ok(GenerateResponse {
        id: job.id().to_string(),
        model: request.model.clone(),
        seed: request.params.seed,
        images,
        timings: Timings {
            queue_ms: snapshot.queue_ms,
            inference_ms: snapshot.inference_ms,
        },
    })
}

/// `x-job-id`, `x-seed`, `x-queue-time` and `x-inference-time` (ms) headers.
pub fn job_headers(headers: &mut HeaderMap, job: &Job) {
    let snapshot = job.snapshot();
    if let Ok(v) = HeaderValue::from_str(job.id()) {
        headers.insert("x-job-id", v);
    }
    headers.insert("x-seed", HeaderValue::from(job.request().params.seed));
    headers.insert("x-queue-time", HeaderValue::from(snapshot.queue_ms));
    if let Some(ms) = snapshot.inference_ms {
        headers.insert("x-inference-time", HeaderValue::from(ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn accept_header_picks_the_format() {
        let pick = |h: &HeaderMap| negotiate(h).ok();
        assert_eq!(pick(&HeaderMap::new()), Some(Format::Json));
        assert_eq!(pick(&accept("*/*")), Some(Format::Json));
        assert_eq!(pick(&accept("image/png")), Some(Format::Png));
        assert_eq!(pick(&accept("text/event-stream")), Some(Format::Sse));
        assert_eq!(
            pick(&accept("application/json, image/png")),
            Some(Format::Json)
        );
        assert_eq!(
            pick(&accept("image/png;q=0.9, */*;q=0.1")),
            Some(Format::Png)
        );
        assert!(matches!(
            negotiate(&accept("image/jpeg")),
            Err(ApiError::NotAcceptable(..))
        ));
    }
}
