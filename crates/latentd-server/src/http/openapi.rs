//! The OpenAPI document, generated from the handlers and types.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The API description served at `/openapi.json` and committed as `openapi/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "latentd",
        description = "HTTP inference server for latent diffusion models: REST, server-sent progress events, async jobs and an OpenAI-compatible images endpoint."
    ),
    paths(
        super::generate::generate,
        super::jobs::create,
        super::jobs::status,
        super::jobs::events,
        super::jobs::image,
        super::jobs::cancel,
        super::jobs::delete,
        super::openai::generations,
        super::models::list,
        super::models::retrieve,
        super::health::health,
        super::health::ready,
        super::metrics::render,
    ),
    modifiers(&Security),
    tags(
        (name = "generate", description = "Synchronous and streaming generation"),
        (name = "jobs", description = "Asynchronous jobs"),
        (name = "openai", description = "OpenAI Images API compatibility"),
        (name = "models", description = "Served models"),
        (name = "health", description = "Probes and metrics"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
            components.add_security_scheme(
                "api_key",
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
            );
        }
    }
}

/// The document as pretty JSON with a trailing newline (the committed file's form).
pub fn json() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}
