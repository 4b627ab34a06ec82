//! What a new user hits: seeds beyond 2^53, JSON for every rejection, content
//! negotiation, model lookup, and what operators read in /metrics.

use serde_json::{json, Value};

use crate::common::{decode, read_sse, TestServer};

async fn error(r: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(r.status().as_u16(), status);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], code, "{v}");
    v["error"]["message"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_beyond_2_pow_53_survive_as_strings_and_picked_seeds_stay_below() {
    let s = TestServer::default().await;
    let big = "5144162125717175227";
    let png = s.png(json!({"prompt": "x", "steps": 2, "seed": big})).await;
    assert_eq!(decode(&png).3["seed"], 5144162125717175227u64);
    let as_number: Vec<u8> = s
        .png(json!({"prompt": "x", "steps": 2, "seed": 5144162125717175227u64}))
        .await;
    assert_eq!(decode(&as_number).2, decode(&png).2);
    for _ in 0..3 {
        let v: Value = s
            .post("/v1/generate", json!({"prompt": "x", "steps": 1}))
            .await
            .json()
            .await
            .unwrap();
        assert!(v["seed"].as_u64().unwrap() < 1 << 53, "{v}");
    }
    let message = error(
        s.post("/v1/generate", json!({"prompt": "x", "seed": -1}))
            .await,
        422,
        "invalid_request",
    )
    .await;
    assert!(message.starts_with("`seed`"), "{message}");
    let message = error(
        s.post("/v1/generate", json!({"prompt": "x", "seed": "12ab"}))
            .await,
        422,
        "invalid_request",
    )
    .await;
    assert!(message.contains("seed"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_is_json() {
    let s = TestServer::default().await;
    let message = error(s.get("/v1/generate").await, 405, "method_not_allowed").await;
    assert!(message.contains("GET"), "{message}");
    let r = s.client.delete(s.url("/v1/models")).send().await.unwrap();
    error(r, 405, "method_not_allowed").await;
    for path in ["/v1/jobs/x/images/abc", "/v1/jobs/0/images/-1"] {
        let message = error(s.get(path).await, 422, "invalid_request").await;
        assert!(message.starts_with("path"), "{message}");
    }
    let r = s
        .client
        .post(s.url("/v1/generate"))
        .header("accept", "image/jpeg")
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    error(r, 406, "not_acceptable").await;
    let message = error(
        s.post("/v1/generate", json!({"prompt": "x".repeat(20000)}))
            .await,
        422,
        "invalid_request",
    )
    .await;
    assert!(message.contains("20000 bytes"), "{message}");
    let message = error(
        s.post(
            "/v1/generate",
            json!({"prompt": "x", "eta": 0.5, "scheduler": "euler"}),
        )
        .await,
        422,
        "invalid_request",
    )
    .await;
    assert!(
        message.contains("eta") && message.contains("ddim"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_retrieve_done_carries_the_seed_and_metrics_explain_themselves() {
    let s = TestServer::default().await;
    let card: Value = s.get("/v1/models/sd1-tiny").await.json().await.unwrap();
    assert_eq!(card["id"], "sd1-tiny");
    assert_eq!(card["family"], "stable-diffusion-1");
    // Limits follow the model: twice its native 32 x 32.
    assert_eq!(
        (card["max_width"].clone(), card["max_height"].clone()),
        (json!(64), json!(64))
    );
    let message = error(
        s.post(
            "/v1/generate",
            json!({"prompt": "x", "width": 1024, "height": 1024}),
        )
        .await,
        422,
        "invalid_request",
    )
    .await;
    assert!(message.contains("maximum of 64"), "{message}");
    let message = error(s.get("/v1/models/dall-e-3").await, 404, "model_not_found").await;
    assert!(message.contains("sd1-tiny"), "{message}");

    let r = s
        .client
        .post(s.url("/v1/generate"))
        .header("accept", "text/event-stream")
        .json(&json!({"prompt": "x", "steps": 2, "seed": "18446744073709551615"}))
        .send()
        .await
        .unwrap();
    let events = read_sse(r, |e| e.event == "done").await;
    let done = events.last().unwrap();
    assert_eq!(done.event, "done");
    assert_eq!(done.data["seed"], u64::MAX);

    let metrics = s.get("/metrics").await.text().await.unwrap();
    for line in [
        "# HELP latentd_jobs_total",
        "# HELP latentd_queue_wait_seconds",
        "latentd_queue_wait_seconds_count",
        "latentd_build_info{version=",
        "latentd_model_info{",
    ] {
        assert!(metrics.contains(line), "{line} missing from /metrics");
    }
}
