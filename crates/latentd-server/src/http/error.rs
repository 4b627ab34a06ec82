//! The one place where errors become HTTP responses: a single JSON shape and a
//! single table from error kind to status code.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use latentd_engine::{Code, EngineError};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// A machine-readable code and a human-readable message.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code, e.g. `invalid_request`, `queue_full`, `job_not_found`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

/// The one table from error code to HTTP status.
pub fn status(code: Code) -> StatusCode {
    match code {
        Code::InvalidRequest => StatusCode::UNPROCESSABLE_ENTITY,
        Code::MalformedJson => StatusCode::BAD_REQUEST,
        Code::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Code::Unauthorized => StatusCode::UNAUTHORIZED,
        Code::NotFound | Code::ModelNotFound | Code::JobNotFound | Code::ImageNotFound => {
            StatusCode::NOT_FOUND
        }
        Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        Code::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
        Code::Cancelled => StatusCode::CONFLICT,
        Code::QueueFull => StatusCode::TOO_MANY_REQUESTS,
        Code::ShuttingDown | Code::Unavailable | Code::JobStoreUnavailable => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Code::GenerationFailed | Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Everything an HTTP handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// An error from the engine (validation, queue, lookup, job failure).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The body is not well-formed JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The JSON is well-formed but a field has the wrong type or is missing.
    #[error("{0}")]
    InvalidField(String),
    /// The body is larger than the configured limit.
    #[error("request body is larger than the limit of {0} bytes")]
    BodyTooLarge(usize),
    /// No API key, or the wrong one.
    #[error("missing or invalid API key")]
    Unauthorized,
    /// The route does not exist.
    #[error("no route for {0}")]
    NoRoute(String),
    /// The route exists but not with this method.
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    /// The `Accept` header asks only for types this route cannot produce.
    #[error("cannot answer with {0}; this route gives {1}")]
    NotAcceptable(String, &'static str),
    /// The model is not loaded yet or the server is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// The shared job store (Redis) failed or cannot be reached.
    #[error("the shared job store is unavailable: {0}")]
    JobStore(String),
}

impl ApiError {
    /// The error's code.
    pub fn code(&self) -> Code {
        match self {
            ApiError::Engine(e) => e.code(),
            ApiError::MalformedJson(_) => Code::MalformedJson,
            ApiError::InvalidField(_) => Code::InvalidRequest,
            ApiError::BodyTooLarge(_) => Code::BodyTooLarge,
            ApiError::Unauthorized => Code::Unauthorized,
            ApiError::NoRoute(_) => Code::NotFound,
            ApiError::MethodNotAllowed { .. } => Code::MethodNotAllowed,
            ApiError::NotAcceptable(..) => Code::NotAcceptable,
            ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::JobStore(_) => Code::JobStoreUnavailable,
        }
    }

    fn status_and_code(&self) -> (StatusCode, String) {
        let code = self.code();
        (status(code), code.to_string())
    }

    /// The `{code, message}` pair, e.g. for an SSE `error` event.
    pub fn detail(&self) -> ErrorDetail {
        let (status, code) = self.status_and_code();
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            // Internals are logged, not shown.
            "internal error; see the server log".to_string()
        } else {
            self.to_string()
        };
        ErrorDetail { code, message }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, %status, "request rejected");
        }
        let mut response = (
            status,
            Json(ErrorBody {
                error: self.detail(),
            }),
        )
            .into_response();
        match &self {
            ApiError::Engine(EngineError::QueueFull {
                retry_after_secs, ..
            }) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latentd_engine::ValidationError;

    #[test]
    fn table_maps_each_kind_to_its_status() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (
                EngineError::Invalid(ValidationError::PromptRequired).into(),
                422,
                "invalid_request",
            ),
            (
                EngineError::QueueFull {
                    queued: 3,
                    retry_after_secs: 7,
                }
                .into(),
                429,
                "queue_full",
            ),
            (
                EngineError::JobNotFound("x".into()).into(),
                404,
                "job_not_found",
            ),
            (EngineError::ShuttingDown.into(), 503, "shutting_down"),
            (EngineError::Internal("boom".into()).into(), 500, "internal"),
            (ApiError::MalformedJson("x".into()), 400, "malformed_json"),
            (ApiError::InvalidField("x".into()), 422, "invalid_request"),
            (ApiError::BodyTooLarge(10), 413, "body_too_large"),
            (ApiError::Unauthorized, 401, "unauthorized"),
        ];
        for (err, status, code) in cases {
            let (s, c) = err.status_and_code();
            assert_eq!((s.as_u16(), c.as_str()), (status, code), "{err:?}");
        }
    }

    #[test]
    fn queue_full_carries_retry_after_and_internals_are_hidden() {
        let r = ApiError::from(EngineError::QueueFull {
            queued: 1,
            retry_after_secs: 12,
        })
        .into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "12");
        let detail = ApiError::from(EngineError::Internal("secret path".into())).detail();
        assert!(!detail.message.contains("secret"));
    }
}
