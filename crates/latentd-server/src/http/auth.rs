//! Optional API key: `Authorization: Bearer KEY` or `x-api-key: KEY`.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;

/// Rejects requests without the configured key (401). Without a key, lets all through.
pub async fn require_api_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match &state.api_key {
        Some(expected) if !presented_key_matches(req.headers(), expected) => {
            ApiError::Unauthorized.into_response()
        }
        _ => next.run(req).await,
    }
}

/// Whether the request carries `expected`, compared in constant time.
pub fn presented_key_matches(headers: &HeaderMap, expected: &str) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let plain = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    match bearer.or(plain) {
        Some(given) => bool::from(given.as_bytes().ct_eq(expected.as_bytes())),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn accepts_bearer_or_header_and_rejects_others() {
        let mut h = HeaderMap::new();
        assert!(!presented_key_matches(&h, "k3y"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer k3y"),
        );
        assert!(presented_key_matches(&h, "k3y"));
        assert!(!presented_key_matches(&h, "k3y2"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("nope"));
        assert!(!presented_key_matches(&h, "k3y"));
        h.insert("x-api-key", HeaderValue::from_static("k3y"));
        assert!(presented_key_matches(&h, "k3y"));
    }
}
