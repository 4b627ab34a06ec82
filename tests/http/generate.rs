//! `POST /v1/generate` in its three formats.

use base64::Engine as _;
use serde_json::json;

use crate::common::{decode, read_sse, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn png_response_carries_headers_and_reproducible_metadata() {
    let s = TestServer::default().await;
    let r = s
        .client
        .post(s.url("/v1/generate"))
        .header("accept", "image/png")
        .json(&json!({"prompt": "a red circle", "steps": 3, "seed": 42, "scheduler": "euler"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.headers()["x-seed"], "42");
    for h in ["x-queue-time", "x-inference-time", "x-job-id"] {
        assert!(r.headers().contains_key(h), "missing {h}");
    }
    let png = r.bytes().await.unwrap();
    let (w, h, pixels, meta) = decode(&png);
    assert_eq!((w, h, pixels.len()), (32, 32, 32 * 32 * 3));
    assert_eq!(meta["seed"], 42);
    assert_eq!(meta["scheduler"], "euler");
    assert_eq!(meta["steps"], 3);
    assert_eq!(meta["prompt"], "a red circle");
    assert_eq!(meta["model"], "sd1-tiny");

    // The metadata is enough to make the same image again.
    let again = s
        .png(
            json!({"prompt": meta["prompt"], "steps": meta["steps"], "seed": meta["seed"],
                    "scheduler": meta["scheduler"], "guidance_scale": meta["guidance_scale"],
                    "width": meta["width"], "height": meta["height"]}),
        )
        .await;
    assert_eq!(decode(&again).2, pixels);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_response_has_every_image_and_a_server_picked_seed() {
    let s = TestServer::default().await;
    let r = s
        .post(
            "/v1/generate",
            json!({"prompt": "two squares", "n": 2, "steps": 2, "width": 48}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let seed_header: u64 = r.headers()["x-seed"].to_str().unwrap().parse().unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["seed"].as_u64().unwrap(), seed_header);
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    let mut decoded = Vec::new();
    for (i, img) in images.iter().enumerate() {
        assert_eq!(img["index"], i);
        assert_eq!(img["seed"].as_u64().unwrap(), seed_header);
        let png = base64::engine::general_purpose::STANDARD
            .decode(img["png_base64"].as_str().unwrap())
            .unwrap();
        let (w, h, pixels, meta) = decode(&png);
        assert_eq!((w, h), (48, 32));
        assert_eq!(meta["index"], i);
        decoded.push(pixels);
    }
    assert_ne!(
        decoded[0], decoded[1],
        "the two images come from different noise"
    );
    assert!(v["timings"]["inference_ms"].is_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_is_ordered_and_complete() {
    let s = TestServer::default().await;
    let r = s
        .client
        .post(s.url("/v1/generate"))
        .header("accept", "text/event-stream")
        .json(&json!({"prompt": "a green triangle", "steps": 4, "n": 2, "scheduler": "ddim", "seed": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = read_sse(r, |e| e.event == "done" || e.event == "error").await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "queued", "started", "progress", "progress", "progress", "progress", "image", "image",
            "done"
        ]
    );
    let ids: Vec<usize> = events
        .iter()
        .map(|e| e.id.as_ref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, (0..events.len()).collect::<Vec<_>>());
    let steps: Vec<u64> = events
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| e.data["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3, 4]);
    assert_eq!(events[2].data["total"], 4);
    for (i, e) in events.iter().filter(|e| e.event == "image").enumerate() {
        assert_eq!(e.data["index"], i);
        assert_eq!(e.data["seed"], 1);
        let png = base64::engine::general_purpose::STANDARD
            .decode(e.data["png_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(decode(&png).0, 32);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_metrics_and_docs() {
    let s = TestServer::default().await;
    let v: serde_json::Value = s.get("/v1/models").await.json().await.unwrap();
    assert_eq!(v["object"], "list");
    let m = &v["data"][0];
    assert_eq!(m["id"], "sd1-tiny");
    assert_eq!(m["family"], "stable-diffusion-1");
    assert_eq!(m["native_width"], 32);
    assert_eq!(m["default_scheduler"], "pndm");
    assert_eq!(m["schedulers"].as_array().unwrap().len(), 6);

    assert_eq!(s.get("/health").await.status(), 200);
    let ready = s.get("/ready").await;
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<serde_json::Value>().await.unwrap()["status"],
        "ready"
    );

    s.png(json!({"prompt": "x", "steps": 2})).await;
    let text = s.get("/metrics").await.text().await.unwrap();
    for name in [
        "latentd_http_requests_total",
        "latentd_queue_depth",
        "latentd_active_rows",
        "latentd_batch_rows_bucket",
        "latentd_step_seconds_bucket",
        "latentd_job_seconds_bucket",
        "latentd_images_generated_total",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    assert!(text.contains("route=\"/v1/generate\""), "{text}");
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        // The heap gauges: a served model's weights are live allocations.
        let gauge = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("/metrics lacks {name}:\n{text}"))
        };
        assert!(gauge("latentd_heap_in_use_bytes ") > 100_000.0, "{text}");
        // Present; any value, zero included, is valid.
        gauge("latentd_heap_free_bytes ");
    }

    let spec: serde_json::Value = s.get("/openapi.json").await.json().await.unwrap();
    assert!(spec["paths"]["/v1/generate"].is_object());
    let page = s.get("/").await;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("latentd playground"));

    let docs = s.get("/docs/").await;
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));
}
