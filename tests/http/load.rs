//! A small bounded load: only successes and intended 429s, and the server recovers.

use std::sync::Arc;

use serde_json::json;
use tokio::sync::Semaphore;

use crate::common::{Options, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bounded_load_gives_only_200_or_429() {
    let mut opts = Options::default();
    opts.config.max_queue = 2;
    opts.config.max_batch_rows = 4;
    let s = TestServer::start(opts).await;
    let gate = Arc::new(Semaphore::new(12));
    let mut tasks = Vec::new();
    for i in 0..48u64 {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let client = s.client.clone();
        let url = s.url("/v1/generate");
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"prompt": format!("load {i}"), "steps": 3 + i % 4, "seed": i}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            if status == 429 {
                assert!(r.headers().contains_key("retry-after"));
            }
            drop(permit);
            status
        }));
    }
    let mut ok = 0;
    let mut overloaded = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => overloaded += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(ok > 0 && overloaded > 0, "ok {ok}, 429 {overloaded}");
    // Drained and healthy afterwards.
    assert_eq!(
        s.post("/v1/generate", json!({"prompt": "after", "steps": 2}))
            .await
            .status(),
        200
    );
    assert_eq!(s.engine.queue_len(), 0);
}
