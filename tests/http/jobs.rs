//! Asynchronous jobs: create, poll, events with resume, images, cancel.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{decode, read_sse, wait_job, Options, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_lifecycle_poll_events_resume_and_images() {
    let s = TestServer::default().await;
    let r = s
        .post(
            "/v1/jobs",
            json!({"prompt": "a blue circle", "steps": 3, "n": 2, "seed": 9, "scheduler": "ddim"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert_eq!(created["status_url"], location);
    assert_eq!(created["events_url"], format!("/v1/jobs/{id}/events"));

    let status = wait_job(&s, &id).await;
    assert_eq!(status["state"], "succeeded");
    assert_eq!(
        (status["step"].as_u64(), status["total"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(status["images"].as_array().unwrap().len(), 2);
    assert_eq!(status["seed"], 9);
    assert!(status["timings"]["inference_ms"].is_u64());

    for i in 0..2 {
        let img = s.get(&format!("/v1/jobs/{id}/images/{i}")).await;
        assert_eq!(img.status(), 200);
        assert_eq!(img.headers()["content-type"], "image/png");
        assert_eq!(decode(&img.bytes().await.unwrap()).3["index"], i);
    }
    let missing = s.get(&format!("/v1/jobs/{id}/images/2")).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["error"]["code"],
        "image_not_found"
    );

    // A late subscriber gets the whole history, ending with `done`.
    let all = read_sse(s.get(&format!("/v1/jobs/{id}/events")).await, |_| false).await;
    let names: Vec<&str> = all.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"queued"));
    assert_eq!(names.last(), Some(&"done"));
    // Resuming after event 3 replays only what follows it.
    let resumed = s
        .client
        .get(s.url(&format!("/v1/jobs/{id}/events")))
        .header("last-event-id", "3")
        .send()
        .await
        .unwrap();
    let rest = read_sse(resumed, |_| false).await;
    assert_eq!(rest.first().unwrap().id.as_deref(), Some("4"));
    assert_eq!(rest.len(), all.len() - 4);

    let unknown = s.get("/v1/jobs/job_nope").await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        unknown.json::<Value>().await.unwrap()["error"]["code"],
        "job_not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_queued_job_and_a_running_one() {
    // One row in flight: the second job must wait in the queue.
    let mut opts = Options::default();
    opts.config.max_batch_rows = 1;
    let s = TestServer::start(opts).await;
    let running: Value = s
        .post(
            "/v1/jobs",
            json!({"prompt": "long", "steps": 500, "guidance_scale": 1.0}),
        )
        .await
        .json()
        .await
        .unwrap();
    let queued: Value = s
        .post(
            "/v1/jobs",
            json!({"prompt": "waiting", "steps": 2, "guidance_scale": 1.0}),
        )
        .await
        .json()
        .await
        .unwrap();
    let rid = running["id"].as_str().unwrap();
    let qid = queued["id"].as_str().unwrap();

    // Wait until the first job is really running.
    let events = s.get(&format!("/v1/jobs/{rid}/events")).await;
    let seen = read_sse(events, |e| e.event == "progress").await;
    assert_eq!(seen.last().unwrap().event, "progress");

    let q: Value = s
        .get(&format!("/v1/jobs/{qid}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(q["state"], "queued");
    assert_eq!(q["position"], 0);
    // Cancel keeps the record.
    let c = s.post(&format!("/v1/jobs/{qid}/cancel"), json!({})).await;
    assert_eq!(c.status(), 200);
    assert_eq!(c.json::<Value>().await.unwrap()["state"], "cancelled");
    assert_eq!(wait_job(&s, qid).await["state"], "cancelled");

    let c = s.post(&format!("/v1/jobs/{rid}/cancel"), json!({})).await;
    assert_eq!(c.status(), 200);
    let done = wait_job(&s, rid).await;
    assert_eq!(done["state"], "cancelled");
    assert_eq!(done["error"]["code"], "cancelled");
    assert!(
        done["step"].as_u64().unwrap() < 500,
        "stopped early: {done}"
    );

    // Delete forgets it: 404 afterwards, for the status, its events and a second delete.
    for id in [qid, rid] {
        let d = s
            .client
            .delete(s.url(&format!("/v1/jobs/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(d.status(), 200);
        assert_eq!(s.get(&format!("/v1/jobs/{id}")).await.status(), 404);
        assert_eq!(s.get(&format!("/v1/jobs/{id}/events")).await.status(), 404);
        let again = s
            .client
            .delete(s.url(&format!("/v1/jobs/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 404);
    }

    // The worker is free again.
    let next: Value = s
        .post("/v1/jobs", json!({"prompt": "after", "steps": 2}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        wait_job(&s, next["id"].as_str().unwrap()).await["state"],
        "succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_cancels_its_job() {
    let s = TestServer::default().await;
    // Streaming client: read until the first progress event, then hang up.
    let r = s
        .client
        .post(s.url("/v1/generate"))
        .header("accept", "text/event-stream")
        .json(&json!({"prompt": "streamed", "steps": 500, "guidance_scale": 1.0}))
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-job-id"].to_str().unwrap().to_string();
    let seen = read_sse(r, |e| e.event == "progress").await;
    assert!(!seen.is_empty());
    let status = wait_job(&s, &id).await;
    assert_eq!(status["state"], "cancelled", "{status}");

    // Synchronous client: give up after a moment.
    let before = s.engine.stats().unet_calls;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = client
        .post(s.url("/v1/generate"))
        .json(&json!({"prompt": "sync", "steps": 500, "guidance_scale": 1.0}))
        .send()
        .await;
    assert!(err.is_err(), "the request should have timed out");
    // The job stops: the engine goes idle long before 500 steps.
    let mut idle = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if s.engine.active_rows() == 0 && s.engine.queue_len() == 0 {
            idle = true;
            break;
        }
    }
    assert!(idle, "the abandoned job kept running");
    assert!(s.engine.stats().unet_calls - before < 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_random_128_bit_and_any_last_event_id_is_safe() {
    let s = TestServer::default().await;
    let created: Value = s
        .post("/v1/jobs", json!({"prompt": "x", "steps": 2}))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 4 + 32, "{id}");
    assert!(id[4..].chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(wait_job(&s, &id).await["state"], "succeeded");
    for last in ["abc", "", "-1", "1e3"] {
        let r = s
            .client
            .get(s.url(&format!("/v1/jobs/{id}/events")))
            .header("last-event-id", last)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{last}");
    }
    // Any run of digits is an id, even past u64 (the document says integer).
    for last in ["18446744073709551615", "99999999999999999999", "3"] {
        let r = s
            .client
            .get(s.url(&format!("/v1/jobs/{id}/events")))
            .header("last-event-id", last)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{last}");
        let events = tokio::time::timeout(Duration::from_secs(10), read_sse(r, |_| false))
            .await
            .expect("a resumed stream of a finished job ends");
        if last == "3" {
            assert_eq!(events.last().unwrap().event, "done");
        }
    }
    let health: Value = s.get("/health").await.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["worker_restarts"], 0);
}
