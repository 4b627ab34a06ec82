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
        super::openai_edits::edits,
        super::models::list,
        super::models::retrieve,
        super::health::health,
        super::health::ready,
        super::metrics::render,
    ),
    modifiers(&Security, &UnsignedFormats, &Bounds),
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

/// Writes unsigned integer formats as the usual `uint32` / `uint64` (utoipa spells
/// them `u-int32` / `u-int64`, which schema tools do not know).
struct UnsignedFormats;

impl Modify for UnsignedFormats {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        fn fix(value: &mut serde_json::Value) {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::String(format)) = map.get_mut("format") {
                        if let Some(bits) = format.strip_prefix("u-int") {
                            *format = format!("uint{bits}");
                        }
                    }
                    map.values_mut().for_each(fix);
                }
                serde_json::Value::Array(items) => items.iter_mut().for_each(fix),
                _ => {}
            }
        }
        let Ok(mut value) = serde_json::to_value(&*openapi) else {
            return;
        };
        fix(&mut value);
        // Headers are never JSON null: an optional header is simply absent.
        if let Some(paths) = value.get_mut("paths").and_then(|p| p.as_object_mut()) {
            for operation in paths.values_mut().filter_map(|p| p.as_object_mut()) {
                for op in operation.values_mut() {
                    let Some(params) = op.get_mut("parameters").and_then(|p| p.as_array_mut())
                    else {
                        continue;
                    };
                    for param in params.iter_mut().filter(|p| p["in"] == "header") {
                        if let Some(serde_json::Value::Array(types)) =
                            param.pointer_mut("/schema/type")
                        {
                            types.retain(|t| t != "null");
                            if types.len() == 1 {
                                let only = types[0].clone();
                                if let Some(schema) = param.get_mut("schema") {
                                    schema["type"] = only;
                                }
                            }
                        }
                    }
                }
            }
        }
        if let Ok(fixed) = serde_json::from_value(value) {
            *openapi = fixed;
        }
    }
}

/// Declares the request fields' bounds, from the engine's default limits (the values a
/// server started without limit flags enforces; sizes also depend on the model: see
/// `max_width` / `max_height` in `GET /v1/models`), so that what the document allows a
/// default server accepts.
struct Bounds;

impl Modify for Bounds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let limits = latentd_engine::EngineConfig::default();
        let bounds = serde_json::json!({
            "steps": {"minimum": 1, "maximum": limits.max_steps},
            "n": {"minimum": 1, "maximum": limits.max_n},
            "guidance_scale": {"minimum": 0.0, "maximum": limits.max_guidance},
            "eta": {"minimum": 0.0, "maximum": 1.0},
            "strength": {"exclusiveMinimum": 0.0, "maximum": 1.0},
            "width": {"minimum": 8, "multipleOf": 8},
            "height": {"minimum": 8, "multipleOf": 8},
        });
        let Ok(mut value) = serde_json::to_value(&*openapi) else {
            return;
        };
        for schema in ["GenerateBody", "OpenAiImageRequest", "OpenAiEditForm"] {
            let Some(properties) = value
                .pointer_mut(&format!("/components/schemas/{schema}/properties"))
                .and_then(|p| p.as_object_mut())
            else {
                continue;
            };
            for (field, bound) in bounds.as_object().into_iter().flatten() {
                if let (Some(serde_json::Value::Object(property)), Some(bound)) =
                    (properties.get_mut(field), bound.as_object())
                {
                    property.extend(bound.clone());
                }
            }
        }
        if let Ok(bounded) = serde_json::from_value(value) {
            *openapi = bounded;
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
