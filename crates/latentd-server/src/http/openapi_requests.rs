//! The request schemas of the OpenAPI document, stated as the server validates them:
//! the engine's limits, each served model's sizes and inputs, and the rules between
//! fields (`strength` and `mask` need an `image`, `eta` needs DDIM), so that what the
//! served document allows the server accepts, and what it forbids the server refuses.
//!
//! With one model the request schemas are that model's; with several they are an
//! `anyOf` with one branch per model (the default one also taken when `model` is absent).
//! Without models (the committed document) the model-dependent bounds are left open.
//! What a schema cannot state is in the descriptions: that an image must decode (a 422
//! otherwise, documented on each route), that a mask has the image's size, and the
//! prompt's token limit (`max_prompt_tokens` in `GET /v1/models`).

use latentd_engine::EngineConfig;
use latentd_models::pipeline::{ConditioningKind, ModelInfo};
use latentd_models::schedulers::SchedulerKind;
use serde_json::{json, Map, Value};

use super::openapi::Served;

/// The three request bodies that start jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// `POST /v1/generate` and `POST /v1/jobs` (JSON).
    Native,
    /// `POST /v1/images/generations` (JSON).
    OpenAi,
    /// `POST /v1/images/edits` (`multipart/form-data`: fields are present or absent,
    /// never null).
    Edit,
}

impl Body {
    const ALL: [Body; 3] = [Body::Native, Body::OpenAi, Body::Edit];

    fn schema_name(self) -> &'static str {
        match self {
            Body::Native => "GenerateBody",
            Body::OpenAi => "OpenAiImageRequest",
            Body::Edit => "OpenAiEditForm",
        }
    }
}

/// What the edit form's file parts may be.
const EDIT_IMAGE_TYPES: &str = "image/png, image/jpeg, image/webp";
/// Masks are read by their alpha channel, which JPEG lacks.
const EDIT_MASK_TYPES: &str = "image/png, image/webp";

/// Rewrites the request schemas of `doc` for `served`.
pub(super) fn describe(doc: &mut Value, served: &Served) {
    for body in Body::ALL {
        let pointer = format!("/components/schemas/{}", body.schema_name());
        let Some(schema) = doc.pointer_mut(&pointer) else {
            continue;
        };
        let mut base = schema.take();
        common(&mut base, body, served.config);
        *schema = per_model(base, body, served);
    }
    if let Some(form) =
        doc.pointer_mut("/paths/~1v1~1images~1edits/post/requestBody/content/multipart~1form-data")
    {
        form["encoding"] = json!({
            "image": {"contentType": EDIT_IMAGE_TYPES},
            "mask": {"contentType": EDIT_MASK_TYPES},
        });
    }
}

/// Bounds and forms every server shares: the engine's limits, the scheduler and
/// response-format names, the seed's exact range, images as base64 (`format: byte`), and
/// `strength` / `mask` needing an `image`.
fn common(schema: &mut Value, body: Body, config: &EngineConfig) {
    if body == Body::Edit {
        form_fields(schema);
    }
    let schedulers = SchedulerKind::ALL
        .iter()
        .map(|k| Value::from(k.name()))
        .collect();
    let Some(props) = properties(schema) else {
        return;
    };
    extend(
        props,
        "steps",
        json!({"minimum": 1, "maximum": config.max_steps}),
    );
    extend(props, "n", json!({"minimum": 1, "maximum": config.max_n}));
    extend(
        props,
        "guidance_scale",
        json!({"minimum": 0.0, "maximum": config.max_guidance}),
    );
    extend(props, "eta", json!({"minimum": 0.0, "maximum": 1.0}));
    extend(
        props,
        "strength",
        json!({"exclusiveMinimum": 0.0, "maximum": 1.0}),
    );
    set_enum(props, "scheduler", schedulers);
    set_enum(
        props,
        "response_format",
        vec![Value::from("url"), Value::from("b64_json")],
    );
    let width_max = config.max_width.map(Value::from);
    let height_max = config.max_height.map(Value::from);
    for (field, max) in [("width", width_max), ("height", height_max)] {
        extend(props, field, json!({"minimum": 8, "multipleOf": 8}));
        if let Some(max) = max {
            extend(props, field, json!({ "maximum": max }));
        }
    }
    extend(props, "size", json!({"pattern": "^[0-9]+[xX][0-9]+$"}));
    // The largest seed, exactly (as a double it would be 2^64, one too many).
    if let Some(Value::Array(forms)) = props.get_mut("seed").and_then(|s| s.get_mut("oneOf")) {
        for form in forms.iter_mut().filter(|f| f["type"] == "integer") {
            form["maximum"] = Value::from(u64::MAX);
        }
    }
    if body == Body::Native {
        for field in ["image", "mask"] {
            extend(props, field, json!({"format": "byte"}));
        }
        for field in ["strength", "mask"] {
            add_rule(schema, needs_image(field));
        }
    }
}

/// The edit form's fields as a form has them: never null, the seed as its decimal
/// digits, the OpenAI fields that are accepted and ignored, and nothing else.
fn form_fields(schema: &mut Value) {
    let Some(props) = properties(schema) else {
        return;
    };
    props.values_mut().for_each(drop_null);
    extend(
        props,
        "seed",
        json!({"pattern": super::seed::decimal_pattern(), "description":
            "Extension: seed, its decimal digits (0 to 18446744073709551615)."}),
    );
    for name in super::openai_edits::IGNORED {
        props.insert(
            name.to_string(),
            json!({"type": "string", "description": "Accepted and ignored (OpenAI field)."}),
        );
    }
    schema["additionalProperties"] = Value::Bool(false);
}

/// The schema for the served models: one model's, an `anyOf` of several, or the
/// model-independent `base` when none are known.
fn per_model(base: Value, body: Body, served: &Served) -> Value {
    if served.models.is_empty() {
        return base;
    }
    let mut branches: Vec<Value> = served
        .models
        .iter()
        .enumerate()
        .filter_map(|(i, model)| for_model(base.clone(), body, model, served.config, i == 0))
        .collect();
    let description = base.get("description").cloned().unwrap_or(Value::Null);
    match branches.len() {
        0 => json!({
            "description": format!(
                "{} No served model takes this request: {}.",
                description.as_str().unwrap_or_default(),
                if body == Body::Native { "none can run it" } else { "this route needs a model that reads a prompt (and, for edits, an image)" }
            ),
            "not": {},
        }),
        1 => branches.remove(0),
        _ => json!({
            "description": description,
            "type": "object",
            "anyOf": branches,
        }),
    }
}

/// `base` narrowed to what `model` accepts; `None` when the route cannot serve it.
fn for_model(
    mut schema: Value,
    body: Body,
    model: &ModelInfo,
    config: &EngineConfig,
    default: bool,
) -> Option<Value> {
    let needs_prompt_route = matches!(body, Body::OpenAi | Body::Edit);
    if needs_prompt_route && !model.takes_prompt() {
        return None;
    }
    if body == Body::OpenAi && model.takes_image() {
        return None;
    }
    if body == Body::Edit && !model.accepts_image() {
        return None;
    }
    let name = model.name.as_str();
    let family = model.family.capability();
    let mut eta_rule = None;
    {
        let props = properties(&mut schema)?;
        set_enum(props, "model", vec![Value::from(name)]);
        if !model.takes_prompt() {
            let why = format!("{name} is a {family} model and reads no text");
            refuse(props, "prompt", body, &why);
            refuse(props, "negative_prompt", body, &why);
        } else if let Some(max) = model.max_prompt_tokens {
            for field in ["prompt", "negative_prompt"] {
                append_description(
                    props,
                    field,
                    &format!("At most {max} tokens for {name} (longer prompts are refused)."),
                );
            }
        }
        if !model.takes_guidance() {
            let why = format!("{name} has no classifier-free guidance");
            refuse(props, "guidance_scale", body, &why);
        }
        if !model.image_edits {
            let why = format!("{name} is a {family} model without img2img or inpainting");
            refuse(props, "mask", body, &why);
            refuse(props, "strength", body, &why);
        }
        let (max_width, max_height) = config.max_size(model);
        let multiple = model.size_multiple.max(1);
        let fixed_by_image = model.conditioning == ConditioningKind::Image;
        if body == Body::Native {
            if !model.accepts_image() {
                let why = format!("{name} is a {family} model and takes no input image");
                refuse(props, "image", body, &why);
            }
            for (field, max) in [("width", max_width), ("height", max_height)] {
                if fixed_by_image {
                    let why = format!(
                        "{name} makes {}x the input image's size",
                        model.vae_scale_factor
                    );
                    refuse(props, field, body, &why);
                } else {
                    extend(
                        props,
                        field,
                        json!({"minimum": multiple, "multipleOf": multiple, "maximum": max}),
                    );
                }
            }
            eta_rule = Some(eta_needs_ddim(
                model.default_scheduler == SchedulerKind::Ddim,
            ));
        } else {
            match size_pattern(multiple, max_width, max_height) {
                Some(pattern) if !fixed_by_image => {
                    extend(props, "size", json!({ "pattern": pattern }));
                }
                _ => refuse(props, "size", body, &format!("{name} takes no size")),
            }
        }
    }
    if body == Body::Native {
        if model.takes_prompt() {
            require(&mut schema, "prompt");
        }
        if model.takes_image() {
            require(&mut schema, "image");
        }
    }
    if !default {
        require(&mut schema, "model");
    }
    if let Some(rule) = eta_rule {
        add_rule(&mut schema, rule);
    }
    Some(schema)
}

/// Sizes `WIDTHxHEIGHT` as `parse_size` reads them, each side a positive multiple of
/// `multiple` up to its maximum (leading zeros allowed); `None` when no size fits.
fn size_pattern(multiple: usize, max_width: usize, max_height: usize) -> Option<String> {
    let sides = |max: usize| -> Option<String> {
        let values: Vec<String> = (1..=max / multiple)
            .map(|k| (k * multiple).to_string())
            .collect();
        (!values.is_empty()).then(|| values.join("|"))
    };
    Some(format!(
        "^0*({})[xX]0*({})$",
        sides(max_width)?,
        sides(max_height)?
    ))
}

/// `field` (when not null) needs a non-null `image`.
fn needs_image(field: &str) -> Value {
    let kind = if field == "strength" {
        "number"
    } else {
        "string"
    };
    json!({
        "if": {"required": [field], "properties": {field: {"type": kind}}},
        "then": {"required": ["image"], "properties": {"image": {"type": "string"}}},
    })
}

/// A non-zero `eta` needs the DDIM scheduler: named, or the model's default.
fn eta_needs_ddim(ddim_is_default: bool) -> Value {
    let then = if ddim_is_default {
        json!({"properties": {"scheduler": {"enum": ["ddim", null]}}})
    } else {
        json!({"required": ["scheduler"], "properties": {"scheduler": {"const": "ddim"}}})
    };
    json!({
        "if": {"required": ["eta"], "properties": {"eta": {"type": "number", "exclusiveMinimum": 0.0}}},
        "then": then,
    })
}

fn properties(schema: &mut Value) -> Option<&mut Map<String, Value>> {
    schema.get_mut("properties").and_then(Value::as_object_mut)
}

/// Adds the keywords of `extra` to the property `field`, if the schema has it.
fn extend(props: &mut Map<String, Value>, field: &str, extra: Value) {
    if let (Some(Value::Object(property)), Value::Object(extra)) = (props.get_mut(field), extra) {
        property.extend(extra);
    }
}

fn append_description(props: &mut Map<String, Value>, field: &str, text: &str) {
    if let Some(Value::Object(property)) = props.get_mut(field) {
        let description = match property.get("description").and_then(Value::as_str) {
            Some(old) => format!("{old} {text}"),
            None => text.to_string(),
        };
        property.insert("description".into(), Value::from(description));
    }
}

/// Restricts `field` to `values` (and null, where it may be null).
fn set_enum(props: &mut Map<String, Value>, field: &str, mut values: Vec<Value>) {
    let Some(Value::Object(property)) = props.get_mut(field) else {
        return;
    };
    if is_nullable(property) {
        values.push(Value::Null);
    }
    property.insert("enum".into(), Value::Array(values));
}

fn is_nullable(property: &Map<String, Value>) -> bool {
    match property.get("type") {
        Some(Value::Array(types)) => types.iter().any(|t| t == "null"),
        Some(t) => t == "null",
        None => false,
    }
}

/// A field the model refuses: null only in JSON, absent from the form.
fn refuse(props: &mut Map<String, Value>, field: &str, body: Body, why: &str) {
    let Some(old) = props.remove(field) else {
        return;
    };
    if body == Body::Edit {
        return;
    }
    let description = old.get("description").and_then(Value::as_str).unwrap_or("");
    props.insert(
        field.to_string(),
        json!({"type": "null", "description": format!("{description} Refused: {why}.").trim_start()}),
    );
}

/// Makes `field` required and not null.
fn require(schema: &mut Value, field: &str) {
    if let Some(property) = properties(schema).and_then(|p| p.get_mut(field)) {
        drop_null(property);
    }
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    let required = object
        .entry("required")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(names) = required {
        if !names.iter().any(|n| n == field) {
            names.push(Value::from(field));
        }
    }
}

/// Appends a rule between fields to the schema's `allOf`.
fn add_rule(schema: &mut Value, rule: Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if let Value::Array(rules) = object
        .entry("allOf")
        .or_insert_with(|| Value::Array(Vec::new()))
    {
        rules.push(rule);
    }
}

/// Takes `null` out of a schema's types and its `enum`.
pub(super) fn drop_null(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(types)) = object.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types[0].clone();
            object.insert("type".into(), only);
        }
    }
    if let Some(Value::Array(values)) = object.get_mut("enum") {
        values.retain(|v| !v.is_null());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_patterns_list_each_allowed_side() {
        let pattern = size_pattern(8, 24, 16).unwrap();
        assert_eq!(pattern, "^0*(8|16|24)[xX]0*(8|16)$");
        assert_eq!(size_pattern(8, 4, 16), None);
    }

    #[test]
    fn required_fields_lose_their_null() {
        let mut schema = json!({
            "type": "object",
            "properties": {"prompt": {"type": ["string", "null"], "enum": ["a", null]}},
        });
        require(&mut schema, "prompt");
        assert_eq!(schema["required"], json!(["prompt"]));
        assert_eq!(
            schema["properties"]["prompt"],
            json!({"type": "string", "enum": ["a"]})
        );
    }
}
