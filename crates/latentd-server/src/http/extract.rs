//! A JSON body extractor whose failures use the API's error shape:
//! 400 for malformed JSON, 422 for a wrong or missing field, 413 for a body over the limit.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;

/// `Json<T>` with our error mapping. The content type is not required.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BodyTooLarge(state.max_body_bytes)
            } else {
                ApiError::MalformedJson(rejection.body_text())
            }
        })?;
        parse(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body: a body that is not JSON is 400, JSON of the wrong shape 422.
/// Numbers with no fractional part are integers, as JSON Schema has it (`56.0` is a
/// valid `width`).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    integral_floats_as_integers(&mut value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path.is_empty() || path == "." {
            ApiError::InvalidField(inner)
        } else {
            ApiError::InvalidField(format!("`{path}`: {inner}"))
        }
    })
}

/// Rewrites every number that is a whole float (`56.0`, `-3.0`) within the range of
/// u64 or i64 as that integer; other numbers are left as they are.
fn integral_floats_as_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(number) => {
            let Some(float) = number.as_f64().filter(|_| number.is_f64()) else {
                return;
            };
            // 2^64 and -2^63 are exact doubles; the casts below are exact inside them.
            const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
            const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
            if float.fract() != 0.0 || !float.is_finite() {
                return;
            }
            if (0.0..TWO_POW_64).contains(&float) {
                *value = Value::from(float as u64);
            } else if (-TWO_POW_63..0.0).contains(&float) {
                *value = Value::from(float as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

/// `Path<T>` with our error mapping: a path parameter of the wrong type is a 422 in
/// the API's error shape, naming the parameter.
pub struct ApiPath<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| ApiPath(value))
            .map_err(|rejection| ApiError::InvalidField(format!("path: {}", rejection.body_text())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::types::GenerateBody;

    #[test]
    fn syntax_is_400_and_schema_is_422() {
        assert!(matches!(
            parse::<GenerateBody>(b"{\"prompt\":"),
            Err(ApiError::MalformedJson(_))
        ));
        assert!(matches!(
            parse::<GenerateBody>(b"not json"),
            Err(ApiError::MalformedJson(_))
        ));
        assert!(matches!(
            parse::<GenerateBody>(b"[1,2"),
            Err(ApiError::MalformedJson(_))
        ));
        assert!(matches!(
            parse::<GenerateBody>(b"[1,2]"),
            Err(ApiError::InvalidField(_))
        ));
        assert!(matches!(
            parse::<GenerateBody>(b"{\"prompt\":5}"),
            Err(ApiError::InvalidField(_))
        ));
        assert!(matches!(
            parse::<GenerateBody>(b"{\"prompt\":\"x\",\"width\":-8}"),
            Err(ApiError::InvalidField(_))
        ));
        let err = parse::<GenerateBody>(b"{\"prompt\":\"x\",\"seed\":-1}")
            .err()
            .unwrap();
        assert!(err.to_string().starts_with("`seed`:"), "{err}");
        let err = parse::<GenerateBody>(b"{\"prompt\":\"x\",\"guidance\":3}")
            .err()
            .unwrap();
        assert!(err.to_string().contains("guidance"), "{err}");
        assert!(parse::<GenerateBody>(b"{\"prompt\":\"x\",\"seed\":18446744073709551615}").is_ok());
    }

    #[test]
    fn whole_floats_are_integers_as_json_schema_says() {
        let body = parse::<GenerateBody>(
            b"{\"prompt\":\"x\",\"height\":56.0,\"seed\":223.0,\"guidance_scale\":7.0}",
        )
        .unwrap();
        assert_eq!((body.height, body.seed), (Some(56), Some(223)));
        assert_eq!(body.guidance_scale, Some(7.0));
        for bad in [
            &b"{\"height\":56.5}"[..],
            b"{\"height\":-8.0}",
            b"{\"seed\":1e20}",
        ] {
            assert!(matches!(
                parse::<GenerateBody>(bad),
                Err(ApiError::InvalidField(_))
            ));
        }
    }
}
