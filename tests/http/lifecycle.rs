//! A failing job fails alone; shutdown is graceful.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{read_sse, wait_job, Options, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_fails_alone_and_the_worker_survives() {
    // Allow an absurd guidance scale: past f32's range it turns the latents infinite.
    let mut opts = Options::default();
    opts.config.max_guidance = 1e308;
    let s = TestServer::start(opts).await;
    let good: Value = s
        .post("/v1/jobs", json!({"prompt": "fine", "steps": 6, "seed": 5}))
        .await
        .json()
        .await
        .unwrap();
    let bad = s
        .client
        .post(s.url("/v1/generate"))
        .header("accept", "text/event-stream")
        .json(&json!({"prompt": "overflow", "steps": 6, "guidance_scale": 1e300}))
        .send()
        .await
        .unwrap();
    let events = read_sse(bad, |e| e.event == "done" || e.event == "error").await;
    let last = events.last().unwrap();
    assert_eq!(last.event, "error", "{events:?}");
    assert_eq!(last.data["code"], "generation_failed");
    assert!(
        last.data["message"]
            .as_str()
            .unwrap()
            .contains("non-finite"),
        "{}",
        last.data
    );

    assert_eq!(
        wait_job(&s, good["id"].as_str().unwrap()).await["state"],
        "succeeded"
    );
    // And the worker still takes new work.
    let after = s
        .post("/v1/generate", json!({"prompt": "after", "steps": 2}))
        .await;
    assert_eq!(after.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_running_jobs_and_refuses_new_ones() {
    let mut s = TestServer::start(Options {
        grace: Duration::from_secs(60),
        ..Options::default()
    })
    .await;
    let client = s.client.clone();
    let url = s.url("/v1/generate");
    let running = tokio::spawn(async move {
        client
            .post(url)
            .json(&json!({"prompt": "finishing", "steps": 200, "guidance_scale": 1.0}))
            .send()
            .await
            .unwrap()
    });
    for _ in 0..200 {
        if s.engine.active_rows() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.server.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = s
        .post("/v1/generate", json!({"prompt": "late", "steps": 2}))
        .await;
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused.json::<Value>().await.unwrap()["error"]["code"],
        "shutting_down"
    );
    assert_eq!(s.get("/ready").await.status(), 503);

    let done = running.await.unwrap();
    assert_eq!(
        done.status(),
        200,
        "the running job finished within the grace period"
    );
    let v: Value = done.json().await.unwrap();
    assert_eq!(v["images"].as_array().unwrap().len(), 1);
    tokio::time::timeout(Duration::from_secs(30), s.server.wait())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_past_the_grace_period_fails_what_is_left() {
    let s = TestServer::start(Options {
        grace: Duration::from_millis(200),
        ..Options::default()
    })
    .await;
    let job: Value = s
        .post(
            "/v1/jobs",
            json!({"prompt": "too long", "steps": 500, "guidance_scale": 1.0}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let engine = s.engine.clone();
    tokio::time::timeout(Duration::from_secs(30), s.server.shutdown())
        .await
        .unwrap()
        .unwrap();
    let job = engine.job(&id).unwrap();
    let snap = job.snapshot();
    assert_eq!(snap.error.unwrap().0, latentd_engine::Code::ShuttingDown);
}
