//! `GET /v1/models` and `GET /v1/models/{id}`.

use axum::extract::State;
use axum::Json;
use latentd_models::schedulers::SchedulerKind;

use latentd_models::pipeline::ModelInfo;

use super::error::{ApiError, ErrorBody};
use super::extract::ApiPath;
use super::types::{ModelCard, ModelList};
use super::AppState;

/// The served models, OpenAI-style, each with its family and what it accepts.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "models",
    responses((status = 200, description = "Served models", body = ModelList))
)]
pub async fn list(State(state): State<AppState>) -> Json<ModelList> {
    let data = state
        .engine
        .models()
        .iter()
        .map(|info| card(&state, info))
        .collect();
    Json(ModelList {
        object: "list".into(),
        data,
    })
}

/// One served model (OpenAI's `models.retrieve`).
#[utoipa::path(
    get,
    path = "/v1/models/{id}",
    tag = "models",
    params(("id" = String, Path, description = "Model id")),
    responses(
        (status = 200, description = "The model", body = ModelCard),
        (status = 404, description = "Not served; the message lists the served ones", body = ErrorBody),
    )
)]
pub async fn retrieve(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ModelCard>, ApiError> {
    let (_, info) = state.engine.model(Some(&id))?;
    Ok(Json(card(&state, info)))
}

/// What requests to the model can do.
fn capabilities(info: &ModelInfo) -> Vec<String> {
    if info.mask_channels {
        return vec!["inpainting".into()];
    }
    let mut out = vec![info.family.capability().to_string()];
    if info.image_edits {
        out.extend(["image-to-image".to_string(), "inpainting".to_string()]);
    }
    out
}

fn card(state: &AppState, info: &ModelInfo) -> ModelCard {
    let (max_width, max_height) = state.engine.config().max_size(info);
    ModelCard {
        id: info.name.clone(),
        object: "model".into(),
        created: state.started_unix,
        owned_by: "latentd".into(),
        family: info.family.to_string(),
        capabilities: capabilities(info),
        conditioning: info.conditioning.name().into(),
        accepts_prompt: info.takes_prompt(),
        accepts_image: info.accepts_image(),
        requires_image: info.takes_image(),
        accepts_mask: info.image_edits,
        accepts_guidance: info.takes_guidance(),
        autoencoder: info.autoencoder.name().into(),
        latent_channels: info.latent_channels,
        native_width: info.native_width,
        native_height: info.native_height,
        size_multiple: info.size_multiple,
        max_width,
        max_height,
        max_prompt_tokens: info.max_prompt_tokens,
        default_scheduler: info.default_scheduler.to_string(),
        schedulers: SchedulerKind::ALL.iter().map(|k| k.to_string()).collect(),
        prediction_type: info.prediction_type.clone(),
    }
}
