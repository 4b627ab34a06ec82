//! Every row of the error table, over HTTP, in the one JSON shape.

use serde_json::{json, Value};

use crate::common::{Options, TestServer};

async fn expect(r: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status().as_u16(), status, "{:?}", r.headers());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_field_is_422() {
    let mut opts = Options::default();
    opts.config.max_width = Some(64);
    opts.config.max_steps = 1000;
    let s = TestServer::start(opts).await;
    let long_prompt = "word ".repeat(100);
    let bad = [
        json!({"prompt": "x", "width": 36}),
        json!({"prompt": "x", "height": 30}),
        json!({"prompt": "x", "width": 128}),
        json!({"prompt": "x", "width": 0}),
        json!({"prompt": "x", "steps": 0}),
        json!({"prompt": "x", "steps": 1001}),
        json!({"prompt": "x", "steps": 2, "scheduler": "pndm", "n": 1, "eta": 0.0, "seed": 1, "width": 32, "height": 32, "guidance_scale": 7.5, "negative_prompt": "y", "model": "sd1-tiny", "prompt_extra": 1}),
        // Within the server's limits but beyond what the model's schedule allows.
        json!({"prompt": "x", "steps": 1000, "scheduler": "ddim"}),
        json!({"prompt": "x", "n": 0}),
        json!({"prompt": "x", "n": 99}),
        json!({"prompt": "x", "scheduler": "lms"}),
        json!({"prompt": "x", "guidance_scale": 500.0}),
        json!({"prompt": "x", "guidance_scale": -1.0}),
        json!({"prompt": "x", "eta": 2.0}),
        json!({"prompt": long_prompt}),
        json!({"prompt": "x", "negative_prompt": long_prompt}),
        json!({"prompt": "x", "width": "wide"}),
        json!({"prompt": "x", "steps": -3}),
        json!({"prompt": "x", "seed": -1}),
        json!({"prompt": "x", "cfg": 7}),
        json!({"steps": 3}),
        json!({"prompt": "x", "image": "not base64 %%%"}),
        json!({"prompt": "x", "image": "aGVsbG8="}),
    ];
    for body in bad {
        let v = expect(
            s.post("/v1/generate", body.clone()).await,
            422,
            "invalid_request",
        )
        .await;
        let _ = v;
        expect(s.post("/v1/jobs", body).await, 422, "invalid_request").await;
    }
    // An unknown model is a 404 that names the served ones.
    for path in ["/v1/generate", "/v1/jobs", "/v1/images/generations"] {
        let body = json!({"prompt": "x", "model": "no-such-model"});
        let v = expect(s.post(path, body).await, 404, "model_not_found").await;
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("no-such-model") && message.contains("sd1-tiny"),
            "{v}"
        );
    }
    // Nothing was queued by any of them.
    assert_eq!(s.engine.queue_len(), 0);
    assert_eq!(s.engine.stats().unet_calls, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_too_large_unknown_route_and_png_with_n() {
    let s = TestServer::start(Options {
        max_body_bytes: 1024,
        ..Options::default()
    })
    .await;
    for raw in ["{\"prompt\": ", "not json", "[1,2", ""] {
        let r = s
            .client
            .post(s.url("/v1/generate"))
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        expect(r, 400, "malformed_json").await;
    }
    let big = json!({"prompt": "x".repeat(4096)});
    expect(s.post("/v1/generate", big).await, 413, "body_too_large").await;
    expect(s.get("/v1/nothing-here").await, 404, "not_found").await;
    let r = s
        .client
        .post(s.url("/v1/generate"))
        .header("accept", "image/png")
        .json(&json!({"prompt": "x", "n": 2, "steps": 2}))
        .send()
        .await
        .unwrap();
    expect(r, 422, "invalid_request").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_the_api_but_not_the_probes() {
    let s = TestServer::start(Options {
        api_key: Some("s3cret".into()),
        ..Options::default()
    })
    .await;
    let body = json!({"prompt": "x", "steps": 2});
    expect(
        s.post("/v1/generate", body.clone()).await,
        401,
        "unauthorized",
    )
    .await;
    let wrong = s
        .client
        .post(s.url("/v1/generate"))
        .bearer_auth("s3cre")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer");
    expect(wrong, 401, "unauthorized").await;
    expect(s.get("/v1/models").await, 401, "unauthorized").await;
    let ok = s
        .client
        .post(s.url("/v1/generate"))
        .bearer_auth("s3cret")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let ok = s
        .client
        .get(s.url("/v1/models"))
        .header("x-api-key", "s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    for open in ["/health", "/ready", "/metrics", "/openapi.json"] {
        assert_eq!(s.get(open).await.status(), 200, "{open}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_429_with_retry_after_and_loses_nothing() {
    let mut opts = Options::default();
    opts.config.max_batch_rows = 1;
    opts.config.max_queue = 1;
    let s = TestServer::start(opts).await;
    let running: Value = s
        .post(
            "/v1/jobs",
            json!({"prompt": "running", "steps": 300, "guidance_scale": 1.0}),
        )
        .await
        .json()
        .await
        .unwrap();
    // Wait until it left the queue.
    for _ in 0..200 {
        if s.engine.queue_len() == 0 && s.engine.active_rows() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let queued: Value = s
        .post(
            "/v1/jobs",
            json!({"prompt": "queued", "steps": 2, "guidance_scale": 1.0}),
        )
        .await
        .json()
        .await
        .unwrap();
    let r = s
        .post(
            "/v1/generate",
            json!({"prompt": "one too many", "steps": 2}),
        )
        .await;
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    expect(r, 429, "queue_full").await;
    let ready = s.get("/ready").await;
    assert_eq!(ready.status(), 503, "a saturated replica is not ready");
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "saturated");

    for id in [&running["id"], &queued["id"]] {
        let status = crate::common::wait_job(&s, id.as_str().unwrap()).await;
        assert_eq!(status["state"], "succeeded", "{status}");
    }
    assert_eq!(s.get("/ready").await.status(), 200);
}
