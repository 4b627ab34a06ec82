//! The served `/openapi.json` states this server's limits and models, so what it allows
//! the server accepts and what it forbids the server refuses.

use latentd_engine::EngineConfig;
use serde_json::{json, Value};

use crate::common::{Options, TestServer};

async fn served(opts: Options) -> (TestServer, Value) {
    let s = TestServer::start(opts).await;
    let doc: Value = s.get("/openapi.json").await.json().await.unwrap();
    (s, doc)
}

/// The `GenerateBody` branch for `model` (one branch per served model).
fn branch<'a>(doc: &'a Value, model: &str) -> &'a Value {
    let schema = &doc["components"]["schemas"]["GenerateBody"];
    let branches: Vec<&Value> = match schema["anyOf"].as_array() {
        Some(b) => b.iter().collect(),
        None => vec![schema],
    };
    branches
        .into_iter()
        .find(|b| {
            b["properties"]["model"]["enum"]
                .as_array()
                .is_some_and(|e| e.iter().any(|v| v == model))
        })
        .unwrap_or_else(|| panic!("no GenerateBody branch for {model}: {schema:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_states_the_flags_and_the_model() {
    let (s, doc) = served(Options {
        config: EngineConfig {
            max_steps: 12,
            max_n: 3,
            default_steps: 4,
            ..EngineConfig::default()
        },
        ..Options::default()
    })
    .await;
    let body = branch(&doc, "sd1-tiny");
    let props = &body["properties"];
    assert_eq!(props["steps"]["maximum"], 12, "{props:#}");
    assert_eq!(props["n"]["maximum"], 3, "{props:#}");
    // The built-in limits follow the model: twice its native size, in its multiple.
    let models: Value = s.get("/v1/models").await.json().await.unwrap();
    let info = &models["data"][0];
    assert_eq!(props["width"]["maximum"], info["max_width"], "{info:#}");
    assert_eq!(props["height"]["maximum"], info["max_height"], "{info:#}");
    assert!(props["width"]["multipleOf"].as_u64().unwrap() >= 8);
    assert!(body["required"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r == "prompt"));

    // The limits the document states are the ones the server enforces, on both sides.
    let max_w = props["width"]["maximum"].as_u64().unwrap();
    let multiple = props["width"]["multipleOf"].as_u64().unwrap();
    let edge = s
        .post(
            "/v1/generate",
            json!({"prompt": "x", "steps": 1, "width": max_w, "height": multiple, "seed": 1}),
        )
        .await;
    assert_eq!(edge.status(), 200, "{}", edge.text().await.unwrap());
    for over in [
        json!({"prompt": "x", "steps": 13}),
        json!({"prompt": "x", "n": 4}),
        json!({"prompt": "x", "width": max_w + multiple}),
    ] {
        let r = s.post("/v1/generate", over.clone()).await;
        assert_eq!(r.status(), 422, "{over}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_models_give_one_branch_each_and_their_own_inputs() {
    let (s, doc) = served(Options {
        models: vec![
            ("sd1-tiny".into(), "sd1-tiny".into()),
            ("ldm-tiny".into(), "ldm-tiny".into()),
        ],
        ..Options::default()
    })
    .await;
    let sd = branch(&doc, "sd1-tiny");
    let ldm = branch(&doc, "ldm-tiny");
    // The default model's branch may leave `model` out; the other must name it.
    let required = |b: &Value, f: &str| {
        b["required"]
            .as_array()
            .is_some_and(|r| r.iter().any(|v| v == f))
    };
    assert!(!required(sd, "model"));
    assert!(required(ldm, "model"));
    // The unconditional model reads no prompt: the document says so and the server agrees.
    assert_eq!(ldm["properties"]["prompt"]["type"], "null", "{ldm:#}");
    let r = s
        .post(
            "/v1/generate",
            json!({"model": "ldm-tiny", "prompt": "a cat", "steps": 1}),
        )
        .await;
    assert_eq!(r.status(), 422);
    // The OpenAI route serves text models only.
    let openai = &doc["components"]["schemas"]["OpenAiImageRequest"];
    let text = openai.to_string();
    assert!(
        text.contains("sd1-tiny") && !text.contains("ldm-tiny"),
        "{openai:#}"
    );
}
