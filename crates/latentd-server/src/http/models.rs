//! `GET /v1/models`.

use axum::extract::State;
use axum::Json;
use latentd_models::schedulers::SchedulerKind;

use super::types::{ModelCard, ModelList};
use super::AppState;

/// The served models, OpenAI-style, with family and capabilities.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "models",
    responses((status = 200, description = "Served models", body = ModelList))
)]
pub async fn list(State(state): State<AppState>) -> Json<ModelList> {
    let info = state.engine.model();
    let config = state.engine.config();
    Json(ModelList {
        object: "list".into(),
        data: vec![ModelCard {
            id: info.name.clone(),
            object: "model".into(),
            created: state.started_unix,
            owned_by: "latentd".into(),
            family: info.family.clone(),
            capabilities: vec!["text-to-image".into()],
            native_width: info.native_width,
            native_height: info.native_height,
            size_multiple: info.vae_scale_factor.max(8),
            max_width: config.max_width,
            max_height: config.max_height,
            max_prompt_tokens: info.max_prompt_tokens,
            default_scheduler: info.default_scheduler.to_string(),
            schedulers: SchedulerKind::ALL.iter().map(|k| k.to_string()).collect(),
            prediction_type: info.prediction_type.clone(),
        }],
    })
}
