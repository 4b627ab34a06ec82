//! Every model family over HTTP, several models in one server, and what each refuses.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::common::{decode, fixture, wait_job, Options, TestServer};

/// One server holding a model of each family.
async fn server() -> TestServer {
    let models = [
        ("sd", "sd1-tiny"),
        ("faces", "ldm-tiny"),
        ("text", "ldm-text-tiny"),
        ("upscaler", "ldm-sr-tiny"),
    ];
    TestServer::start(Options {
        models: models
            .iter()
            .map(|(id, dir)| (id.to_string(), dir.to_string()))
            .collect(),
        ..Options::default()
    })
    .await
}

/// A recorded low-resolution input (12 wide, 8 high), base64.
fn low_res() -> String {
    let png = std::fs::read(fixture("refs").join("ldm-sr-tiny.run1.low_res.png")).unwrap();
    base64::engine::general_purpose::STANDARD.encode(png)
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
}

/// A request body for each served model, and the size of the image it makes.
fn bodies() -> Vec<(Value, (usize, usize))> {
    vec![
        (
            json!({"prompt": "a red circle", "steps": 3, "seed": 1}),
            (32, 32),
        ),
        (
            json!({"model": "faces", "steps": 3, "seed": 2, "n": 2}),
            (32, 32),
        ),
        (
            json!({"model": "text", "prompt": "a photo of a cat", "steps": 3, "seed": 3,
                   "guidance_scale": 5.0, "width": 48}),
            (48, 32),
        ),
        (
            json!({"model": "upscaler", "image": low_res(), "steps": 3, "seed": 4}),
            (48, 32),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_list_each_family_and_what_it_accepts() {
    let s = server().await;
    let list: Value = s.get("/v1/models").await.json().await.unwrap();
    let cards = list["data"].as_array().unwrap();
    let ids: Vec<&str> = cards.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["sd", "faces", "text", "upscaler"]);
    let by_id = |id: &str| cards.iter().find(|c| c["id"] == id).unwrap();
    let faces = by_id("faces");
    assert_eq!(faces["family"], "ldm-unconditional");
    assert_eq!(faces["autoencoder"], "vq");
    assert_eq!(faces["accepts_prompt"], false);
    assert_eq!(faces["accepts_guidance"], false);
    assert!(faces["max_prompt_tokens"].is_null());
    let text = by_id("text");
    assert_eq!(text["family"], "ldm-text-to-image");
    assert_eq!(text["autoencoder"], "kl");
    assert_eq!(text["max_prompt_tokens"], 75);
    let up = by_id("upscaler");
    assert_eq!(up["family"], "ldm-super-resolution");
    assert_eq!(up["capabilities"], json!(["super-resolution"]));
    assert_eq!(
        (up["accepts_image"].clone(), up["conditioning"].clone()),
        (json!(true), json!("image"))
    );
    assert_eq!(by_id("sd")["family"], "stable-diffusion-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_family_generates_over_generate_and_jobs() {
    let s = server().await;
    for (body, (width, height)) in bodies() {
        let r = s.post("/v1/generate", body.clone()).await;
        assert_eq!(r.status(), 200, "{body}");
        let v: Value = r.json().await.unwrap();
        let n = body["n"].as_u64().unwrap_or(1) as usize;
        assert_eq!(v["images"].as_array().unwrap().len(), n);
        let model = body["model"].as_str().unwrap_or("sd");
        assert_eq!(v["model"], model);
        let (w, h, pixels, meta) = decode(&b64(&v["images"][0]["png_base64"]));
        assert_eq!((w, h), (width, height), "{model}");
        assert_eq!(meta["model"], model);
        if model == "upscaler" {
            assert_eq!(meta["input_image"], "12x8");
        }

        // The same request as an async job gives the same image.
        let r = s.post("/v1/jobs", body.clone()).await;
        assert_eq!(r.status(), 202, "{body}");
        let id = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(wait_job(&s, &id).await["state"], "succeeded");
        let img = s.get(&format!("/v1/jobs/{id}/images/0")).await;
        assert_eq!(decode(&img.bytes().await.unwrap()).2, pixels, "{model}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_of_four_models_in_flight_equal_each_alone() {
    let s = server().await;
    let mut alone = Vec::new();
    for (body, _) in bodies() {
        let v: Value = s.post("/v1/generate", body).await.json().await.unwrap();
        alone.push(v);
    }
    let calls_before = s.engine.stats().unet_calls;
    let mut tasks = Vec::new();
    // Two of each at once, so jobs of one model batch while the others' wait their turn.
    for (body, _) in bodies().into_iter().chain(bodies()) {
        let client = s.client.clone();
        let url = s.url("/v1/generate");
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }));
    }
    let mut together = Vec::new();
    for t in tasks {
        together.push(t.await.unwrap());
    }
    let stats = s.engine.stats();
    assert!(stats.unet_calls > calls_before);
    assert!(stats.max_rows_in_call >= 2, "{stats:?}");
    for (i, v) in together.iter().enumerate() {
        let want = &alone[i % alone.len()];
        assert_eq!(v["model"], want["model"]);
        for (a, b) in v["images"]
            .as_array()
            .unwrap()
            .iter()
            .zip(want["images"].as_array().unwrap())
        {
            assert_eq!(
                decode(&b64(&a["png_base64"])).2,
                decode(&b64(&b["png_base64"])).2,
                "{} differs when run beside the other models' jobs",
                v["model"]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_family_refuses_what_it_does_not_take() {
    let s = server().await;
    let cases = [
        (json!({"model": "faces", "prompt": "a face"}), "prompt"),
        (
            json!({"model": "faces", "negative_prompt": "blur"}),
            "negative_prompt",
        ),
        (
            json!({"model": "faces", "guidance_scale": 3.0}),
            "guidance_scale",
        ),
        (json!({"model": "faces", "image": low_res()}), "image"),
        (json!({"model": "upscaler"}), "image"),
        (
            json!({"model": "upscaler", "image": low_res(), "prompt": "x"}),
            "prompt",
        ),
        (
            json!({"model": "upscaler", "image": low_res(), "width": 64}),
            "width",
        ),
        (
            json!({"model": "upscaler", "image": "not an image"}),
            "image",
        ),
        (json!({"model": "text"}), "prompt"),
        // Stable Diffusion takes an image (img2img); the LDM text-to-image model does not.
        (
            json!({"model": "text", "prompt": "x", "image": low_res()}),
            "image",
        ),
        (json!({"model": "faces", "strength": 0.5}), "strength"),
    ];
    for (body, field) in cases {
        let r = s.post("/v1/generate", body.clone()).await;
        assert_eq!(r.status(), 422, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_request");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
    }
    // An input image whose side the UNet cannot halve enough: 6 x 8 pixels.
    let mut odd = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut odd, 6, 8);
        encoder.set_color(png::ColorType::Rgb);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[100; 6 * 8 * 3]).unwrap();
    }
    let body = json!({"model": "upscaler",
                      "image": base64::engine::general_purpose::STANDARD.encode(&odd)});
    let r = s.post("/v1/generate", body).await;
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("multiple of"),
        "{v}"
    );

    let r = s
        .post("/v1/jobs", json!({"model": "sdxl", "prompt": "x"}))
        .await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    let message = v["error"]["message"].as_str().unwrap();
    for id in ["sd", "faces", "text", "upscaler"] {
        assert!(message.contains(id), "{message}");
    }
    assert_eq!(s.engine.stats().unet_calls, 0);
}
