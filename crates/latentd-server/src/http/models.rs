//! `GET /v1/models`.

use axum::extract::State;
use axum::Json;
use latentd_models::schedulers::SchedulerKind;

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
    let config = state.engine.config();
    let data = state
        .engine
        .models()
        .iter()
        .map(|info| ModelCard {
            id: info.name.clone(),
            object: "model".into(),
            created: state.started_unix,
            owned_by: "latentd".into(),
            family: info.family.to_string(),
            capabilities: vec![info.family.capability().into()],
            conditioning: info.conditioning.name().into(),
            accepts_prompt: info.takes_prompt(),
            accepts_image: info.takes_image(),
            accepts_guidance: info.takes_guidance(),
            autoencoder: info.autoencoder.name().into(),
            latent_channels: info.latent_channels,
            native_width: info.native_width,
            native_height: info.native_height,
            size_multiple: info.size_multiple,
            max_width: config.max_width,
            max_height: config.max_height,
            max_prompt_tokens: info.max_prompt_tokens,
            default_scheduler: info.default_scheduler.to_string(),
            schedulers: SchedulerKind::ALL.iter().map(|k| k.to_string()).collect(),
            prediction_type: info.prediction_type.clone(),
        })
        .collect();
    Json(ModelList {
        object: "list".into(),
        data,
    })
}
