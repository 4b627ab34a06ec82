//! `POST /v1/images/edits`: the OpenAI Images API's edit call (multipart form), so the
//! official clients' `images.edit` works unchanged. The image's edit area is the
//! mask's fully transparent pixels, else the image's own; without either the whole
//! image is reworked (img2img). latentd's own fields are further form fields.

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::HeaderMap;
use axum::Json;
use latentd_engine::{input_image, EngineError, GenerateRequest, ValidationError};
use std::sync::Arc;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::openai::{parse_optional_size, respond, wants_url};
use super::types::OpenAiImageResponse;
use super::AppState;

/// Form of `POST /v1/images/edits` (`multipart/form-data`).
#[derive(Debug, Default, ToSchema)]
pub struct OpenAiEditForm {
    /// The image to edit: a PNG, JPEG or WebP file (`image` or `image[]`). Its fully
    /// transparent pixels are the area to edit when no mask is sent.
    #[schema(value_type = String, format = Binary)]
    pub image: Vec<u8>,
    /// A PNG the size of `image` whose fully transparent pixels mark the area to edit.
    #[schema(value_type = Option<String>, format = Binary)]
    pub mask: Option<Vec<u8>>,
    /// What the edited image should show.
    pub prompt: String,
    /// Model id (default: the first served model).
    pub model: Option<String>,
    /// Number of images (default 1).
    pub n: Option<u32>,
    /// `WIDTHxHEIGHT` (default: the image's size rounded down to the model's multiple).
    pub size: Option<String>,
    /// `url` (default) or `b64_json`.
    pub response_format: Option<String>,
    /// Extension: negative prompt.
    pub negative_prompt: Option<String>,
    /// Extension: denoising steps.
    pub steps: Option<u32>,
    /// Extension: guidance scale.
    pub guidance_scale: Option<f64>,
    /// Extension: scheduler name.
    pub scheduler: Option<String>,
    /// Extension: seed, a decimal string.
    #[schema(value_type = Option<String>)]
    pub seed: Option<u64>,
    /// Extension: how much to repaint, in (0, 1] (default 1 with an edit area, 0.8 without).
    pub strength: Option<f64>,
}

/// OpenAI form fields latentd accepts and ignores.
pub(crate) const IGNORED: &[&str] = &[
    "user",
    "quality",
    "background",
    "output_format",
    "input_fidelity",
];

/// Edit an image (OpenAI Images API).
#[utoipa::path(
    post,
    path = "/v1/images/edits",
    tag = "openai",
    request_body(content = OpenAiEditForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The edited images", body = OpenAiImageResponse),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 404, description = "Unknown model; the message lists the served ones", body = ErrorBody),
        (status = 422, description = "Invalid field; an image or mask that is not a PNG, JPEG or WebP file or does not decode, has no usable size (the output size defaults to the image's rounded down to the model's multiple), or a mask without alpha or of another size than the image", body = ErrorBody),
        (status = 429, description = "Queue full; see Retry-After", body = ErrorBody),
    )
)]
pub async fn edits(
    axum::extract::State(state): axum::extract::State<AppState>,
    headers: HeaderMap,
    request: Request,
) -> Result<Json<OpenAiImageResponse>, ApiError> {
    let form = read_form(request, &state).await?;
    let as_url = wants_url(form.response_format.as_deref())?;
    let request = to_request(&form)?;
    respond(&state, &headers, &request, as_url).await
}

/// The engine's request for a form: image, edit area and fields.
fn to_request(form: &OpenAiEditForm) -> Result<GenerateRequest, ApiError> {
    let invalid = |e: ValidationError| ApiError::Engine(EngineError::Invalid(e));
    let (image, own_area) = input_image::decode_with_alpha(&form.image).map_err(invalid)?;
    let mask = match &form.mask {
        Some(bytes) => Some(input_image::decode_alpha_mask(bytes).map_err(invalid)?),
        None => own_area,
    };
    let (width, height) = parse_optional_size(form.size.as_deref())?;
    Ok(GenerateRequest {
        model: form.model.clone(),
        prompt: Some(form.prompt.clone()),
        negative_prompt: form.negative_prompt.clone(),
        width,
        height,
        steps: form.steps.map(|v| v as usize),
        guidance_scale: form.guidance_scale,
        scheduler: form.scheduler.clone(),
        seed: form.seed,
        n: form.n.map(|v| v as usize),
        eta: None,
        image: Some(Arc::new(image)),
        mask: mask.map(Arc::new),
        strength: form.strength,
    })
}

/// Reads the multipart form; a malformed form or field is a 422 naming it, a body over
/// the limit a 413.
async fn read_form(request: Request, state: &AppState) -> Result<OpenAiEditForm, ApiError> {
    let limit = state.max_body_bytes;
    let mut multipart = Multipart::from_request(request, state).await.map_err(|e| {
        ApiError::InvalidField(format!(
            "expected a multipart/form-data body: {}",
            e.body_text()
        ))
    })?;
    let mut form = OpenAiEditForm::default();
    let mut image = None;
    let mut prompt = None;
    let failed = |e: axum::extract::multipart::MultipartError| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge(limit)
        } else {
            ApiError::InvalidField(format!("cannot read the multipart form: {}", e.body_text()))
        }
    };
    while let Some(field) = multipart.next_field().await.map_err(failed)? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "image" | "image[]" => {
                if image.is_some() {
                    return Err(ApiError::InvalidField("send one `image` file".into()));
                }
                image = Some(field.bytes().await.map_err(failed)?.to_vec());
            }
            "mask" => form.mask = Some(field.bytes().await.map_err(failed)?.to_vec()),
            _ => {
                let text = field.text().await.map_err(failed)?;
                set_text_field(&mut form, &mut prompt, &name, text)?;
            }
        }
    }
    form.image =
        image.ok_or_else(|| ApiError::InvalidField("`image`: a file is required".into()))?;
    form.prompt = prompt.ok_or_else(|| ApiError::InvalidField("`prompt` is required".into()))?;
    Ok(form)
}

/// Sets one text field of the form, parsed; unknown fields are refused.
fn set_text_field(
    form: &mut OpenAiEditForm,
    prompt: &mut Option<String>,
    name: &str,
    text: String,
) -> Result<(), ApiError> {
    fn number<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, ApiError> {
        text.trim().parse().map_err(|_| {
            ApiError::InvalidField(format!("`{name}`: expected a number, got `{text}`"))
        })
    }
    match name {
        "prompt" => *prompt = Some(text),
        "model" => form.model = Some(text),
        "n" => form.n = Some(number(name, &text)?),
        "size" => form.size = Some(text),
        "response_format" => form.response_format = Some(text),
        "negative_prompt" => form.negative_prompt = Some(text),
        "steps" => form.steps = Some(number(name, &text)?),
        "guidance_scale" => form.guidance_scale = Some(number(name, &text)?),
        "scheduler" => form.scheduler = Some(text),
        "seed" => {
            form.seed = Some(super::seed::parse_decimal(&text).ok_or_else(|| {
                ApiError::InvalidField(format!(
                    "`seed`: expected its decimal digits (0 to {}), got `{text}`",
                    u64::MAX
                ))
            })?)
        }
        "strength" => form.strength = Some(number(name, &text)?),
        _ if IGNORED.contains(&name) => {}
        _ => {
            return Err(ApiError::InvalidField(format!(
                "unknown form field `{name}`"
            )))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fields_parse_and_unknown_ones_are_refused() {
        let mut form = OpenAiEditForm::default();
        let mut prompt = None;
        for (name, value) in [
            ("prompt", "a cat"),
            ("n", "2"),
            ("seed", "18446744073709551615"),
            ("strength", "0.5"),
            ("user", "someone"),
        ] {
            set_text_field(&mut form, &mut prompt, name, value.into()).unwrap();
        }
        assert_eq!(prompt.as_deref(), Some("a cat"));
        assert_eq!(
            (form.n, form.seed, form.strength),
            (Some(2), Some(u64::MAX), Some(0.5))
        );
        for (name, value) in [
            ("n", "two"),
            ("colour", "red"),
            ("seed", "-1"),
            ("seed", " 5"),
            ("seed", ""),
        ] {
            assert!(matches!(
                set_text_field(&mut form, &mut prompt, name, value.into()),
                Err(ApiError::InvalidField(_))
            ));
        }
    }
}
