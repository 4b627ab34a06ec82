//! Step-level batching never changes a job's result.

use serde_json::json;

use crate::common::{decode, Options, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_batched_with_seven_others_equals_the_job_alone() {
    let s = TestServer::start(Options::default()).await;
    let target = json!({"prompt": "a red circle above a blue square", "negative_prompt": "green",
                        "steps": 6, "seed": 1234, "scheduler": "dpmpp-2m", "guidance_scale": 6.0, "n": 2});
    let alone = s
        .post("/v1/generate", target.clone())
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let calls_before = s.engine.stats().unet_calls;

    // Seven different jobs: other step counts, schedulers, guidance, seeds, sizes.
    let others = [
        json!({"prompt": "a yellow triangle", "steps": 9, "seed": 1, "scheduler": "euler-a"}),
        json!({"prompt": "a blue square", "steps": 4, "seed": 2, "scheduler": "ddim", "eta": 1.0}),
        json!({"prompt": "two circles", "steps": 7, "seed": 3, "scheduler": "pndm", "guidance_scale": 1.0}),
        json!({"prompt": "a small green circle", "steps": 5, "seed": 4, "scheduler": "euler", "n": 3}),
        json!({"prompt": "a purple square at the top left", "steps": 8, "seed": 5, "scheduler": "dpmpp-2m-karras"}),
        json!({"prompt": "a wide one", "steps": 6, "seed": 6, "width": 48, "scheduler": "ddim"}),
        json!({"prompt": "a red circle above a blue square", "steps": 6, "seed": 1235, "scheduler": "dpmpp-2m", "guidance_scale": 6.0}),
    ];
    let mut tasks = Vec::new();
    for body in others {
        let client = s.client.clone();
        let url = s.url("/v1/generate");
        tasks.push(tokio::spawn(async move {
            client.post(url).json(&body).send().await.unwrap().status()
        }));
    }
    let client = s.client.clone();
    let url = s.url("/v1/generate");
    let batched = tokio::spawn(async move {
        client
            .post(url)
            .json(&target)
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    });
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let batched = batched.await.unwrap();

    let stats = s.engine.stats();
    assert!(
        stats.max_rows_in_call > 4,
        "jobs did share UNet calls: {stats:?}"
    );
    assert!(stats.unet_calls > calls_before);

    for i in 0..2 {
        let a = decode(&b64(&alone["images"][i]["png_base64"]));
        let b = decode(&b64(&batched["images"][i]["png_base64"]));
        assert_eq!(a.2, b.2, "image {i} differs when batched");
    }
}

fn b64(v: &serde_json::Value) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
}
