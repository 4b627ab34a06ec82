//! `POST /v1/images/generations`: the OpenAI Images API, so its client libraries
//! work unchanged. Native fields (seed, steps, ...) are accepted as extensions.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::Json;
use base64::Engine as _;
use latentd_engine::GenerateRequest;

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use super::generate::finish;
use super::types::{OpenAiImage, OpenAiImageRequest, OpenAiImageResponse};
use super::AppState;

/// Parses an OpenAI `size` such as `512x512` into (width, height): decimal digits, `x`
/// (or `X`), decimal digits, nothing else (the served document's pattern).
pub fn parse_size(size: &str) -> Result<(usize, usize), ApiError> {
    let bad = || ApiError::InvalidField(format!("size must look like 512x512, got `{size}`"));
    let (w, h) = size.split_once(['x', 'X']).ok_or_else(bad)?;
    let side = |text: &str| {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        text.parse::<usize>().map_err(|_| bad())
    };
    Ok((side(w)?, side(h)?))
}

/// An optional `size`: `(None, None)` when absent.
pub fn parse_optional_size(size: Option<&str>) -> Result<(Option<usize>, Option<usize>), ApiError> {
    match size {
        Some(size) => {
            let (w, h) = parse_size(size)?;
            Ok((Some(w), Some(h)))
        }
        None => Ok((None, None)),
    }
}

/// Create images (OpenAI Images API).
#[utoipa::path(
    post,
    path = "/v1/images/generations",
    tag = "openai",
    request_body = OpenAiImageRequest,
    responses(
        (status = 200, description = "The images", body = OpenAiImageResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "Unknown model; the message lists the served ones", body = ErrorBody),
        (status = 422, description = "Invalid field (the message names it)", body = ErrorBody),
        (status = 429, description = "Queue full; see Retry-After", body = ErrorBody),
    )
)]
pub async fn generations(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<OpenAiImageRequest>,
) -> Result<Json<OpenAiImageResponse>, ApiError> {
    let as_url = wants_url(body.response_format.as_deref())?;
    let (width, height) = parse_optional_size(body.size.as_deref())?;
    let request = GenerateRequest {
        model: body.model.clone(),
        prompt: Some(body.prompt.clone()),
        negative_prompt: body.negative_prompt.clone(),
        width,
        height,
        steps: body.steps.map(|v| v as usize),
        guidance_scale: body.guidance_scale,
        scheduler: body.scheduler.clone(),
        seed: body.seed,
        n: body.n.map(|v| v as usize),
        eta: None,
        image: None,
        mask: None,
        strength: None,
    };
    respond(&state, &headers, &request, as_url).await
}

/// Whether `response_format` asks for URLs (the default) or base64 (`b64_json`).
pub fn wants_url(response_format: Option<&str>) -> Result<bool, ApiError> {
    match response_format {
        None | Some("url") => Ok(true),
        Some("b64_json") => Ok(false),
        Some(other) => Err(ApiError::InvalidField(format!(
            "response_format must be `url` or `b64_json`, got `{other}`"
        ))),
    }
}

/// Runs a request to the end and answers as the OpenAI Images API does.
pub async fn respond(
    state: &AppState,
    headers: &HeaderMap,
    request: &GenerateRequest,
    as_url: bool,
) -> Result<Json<OpenAiImageResponse>, ApiError> {
    let job = state.engine.submit(request)?;
    finish(state, &job).await?;

    let base = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|host| format!("http://{host}"))
        .unwrap_or_default();
    let mut data = Vec::with_capacity(job.request().params.n);
    for index in 0..job.request().params.n {
        let (b64_json, url) = if as_url {
            (
                None,
                Some(format!("{base}/v1/jobs/{}/images/{index}", job.id())),
            )
        } else {
            let png = job.image(index).unwrap_or_default();
            (
                Some(base64::engine::general_purpose::STANDARD.encode(&png)),
                None,
            )
        };
        data.push(OpenAiImage {
            b64_json,
            url,
            revised_prompt: Some(job.request().params.prompt.clone()),
        });
    }
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(Json(OpenAiImageResponse { created, data }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_bad_ones_are_422() {
        assert_eq!(parse_size("512x768").unwrap(), (512, 768));
        assert_eq!(parse_size("32X048").unwrap(), (32, 48));
        for bad in [
            "512", "x", "ax2", "-1x2", "", " 32x32", "32x32 ", "+8x8", "8x8x8",
        ] {
            assert!(
                matches!(parse_size(bad), Err(ApiError::InvalidField(_))),
                "{bad}"
            );
        }
    }
}
