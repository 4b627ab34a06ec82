//! The OpenAPI document, generated from the handlers and types, then specialised to the
//! server that serves it: its limits and its models (see [`super::openapi_requests`]), so
//! that a request the served document allows is one the server accepts.

use latentd_engine::EngineConfig;
use latentd_models::pipeline::ModelInfo;
use serde_json::{json, Value};
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
        super::openai_edits::edits,
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

/// What the document states about the server that serves it.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    /// The engine's limits.
    pub config: &'a EngineConfig,
    /// The served models, the default one first. Empty: the document of any server with
    /// these limits (the committed one), whose model-dependent bounds are left open.
    pub models: &'a [ModelInfo],
}

/// The document for `served`, as JSON (it uses JSON Schema keywords, `if`/`then` among
/// them, that utoipa's types do not carry).
pub fn document(served: &Served) -> Value {
    let mut doc = match serde_json::to_value(ApiDoc::openapi()) {
        Ok(doc) => doc,
        Err(e) => return json!({ "error": e.to_string() }),
    };
    unsigned_formats(&mut doc);
    headers_not_null(&mut doc);
    super::openapi_requests::describe(&mut doc, served);
    doc
}

/// The committed document (`latentd openapi`): the default limits and no particular
/// model, as pretty JSON with a trailing newline.
pub fn json() -> String {
    let config = EngineConfig::default();
    let doc = document(&Served {
        config: &config,
        models: &[],
    });
    let mut s =
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

/// Writes unsigned integer formats as the usual `uint32` / `uint64` (utoipa spells
/// them `u-int32` / `u-int64`, which schema tools do not know).
fn unsigned_formats(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(format)) = map.get_mut("format") {
                if let Some(bits) = format.strip_prefix("u-int") {
                    *format = format!("uint{bits}");
                }
            }
            map.values_mut().for_each(unsigned_formats);
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned_formats),
        _ => {}
    }
}

/// Headers are never JSON null: an optional header is simply absent.
fn headers_not_null(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for operation in paths.values_mut().filter_map(Value::as_object_mut) {
        for op in operation.values_mut() {
            let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
                continue;
            };
            for param in params.iter_mut().filter(|p| p["in"] == "header") {
                if let Some(schema) = param.get_mut("schema") {
                    super::openapi_requests::drop_null(schema);
                }
            }
        }
    }
}
