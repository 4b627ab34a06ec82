//! The OpenAI Images API endpoint, as the official clients call it.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::common::{decode, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b64_json_and_url_responses() {
    let s = TestServer::default().await;
    let r = s
        .post(
            "/v1/images/generations",
            json!({"prompt": "a red circle", "n": 2, "size": "48x32", "response_format": "b64_json",
                   "quality": "standard", "user": "u1", "seed": 3, "steps": 2}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["created"].as_u64().unwrap() > 0);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, d) in data.iter().enumerate() {
        assert!(d.get("url").is_none());
        let png = base64::engine::general_purpose::STANDARD
            .decode(d["b64_json"].as_str().unwrap())
            .unwrap();
        let (w, h, _, meta) = decode(&png);
        assert_eq!((w, h), (48, 32));
        assert_eq!(meta["seed"], 3);
        assert_eq!(meta["index"], i);
    }

    // Default response_format is `url`, pointing at the job's image.
    let v: Value = s
        .post(
            "/v1/images/generations",
            json!({"prompt": "a blue square", "steps": 2}),
        )
        .await
        .json()
        .await
        .unwrap();
    let url = v["data"][0]["url"].as_str().unwrap();
    assert!(url.starts_with(&s.base), "{url}");
    let img = s.client.get(url).send().await.unwrap();
    assert_eq!(img.status(), 200);
    assert_eq!(decode(&img.bytes().await.unwrap()).0, 32);

    for bad in [
        json!({"prompt": "x", "size": "big"}),
        json!({"prompt": "x", "size": "30x30"}),
        json!({"prompt": "x", "response_format": "gif"}),
    ] {
        let r = s.post("/v1/images/generations", bad).await;
        assert_eq!(r.status(), 422);
    }
}
