//! img2img and inpainting over HTTP: the `image`, `mask` and `strength` fields, the
//! OpenAI `images/edits` form, their errors, and edit jobs batched with others.

use std::sync::Arc;

use base64::Engine as _;
use candle_core::Device;
use latentd_models::pipeline::{generate, load_model, GenerationParams, Mask, RgbImage};
use latentd_models::schedulers::SchedulerKind;
use serde_json::{json, Value};

use crate::common::{decode, fixture, read_sse, wait_job, Options, TestServer};

/// One server with an ordinary SD model, an inpainting UNet and an unconditional LDM.
async fn server() -> TestServer {
    let models = [
        ("sd", "sd1-tiny"),
        ("inpaint", "sd-inpaint-tiny"),
        ("faces", "ldm-tiny"),
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

fn png_file(width: u32, height: u32, color: png::ColorType, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(pixels).unwrap();
    writer.finish().unwrap();
    out
}

/// A 32x32 test picture.
fn picture() -> RgbImage {
    let data = (0..32 * 32 * 3).map(|i| ((i * 29) % 253) as u8).collect();
    RgbImage {
        width: 32,
        height: 32,
        data,
    }
}

/// A 32x32 mask repainting the top half.
fn top_half() -> Mask {
    let data = (0..32 * 32)
        .map(|i| if i < 32 * 16 { 255 } else { 0 })
        .collect();
    Mask {
        width: 32,
        height: 32,
        data,
    }
}

/// The CRC-32 of PNG chunks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn picture_b64() -> String {
    b64(&png_file(32, 32, png::ColorType::Rgb, &picture().data))
}

fn mask_b64() -> String {
    b64(&png_file(
        32,
        32,
        png::ColorType::Grayscale,
        &top_half().data,
    ))
}

/// The same job run by the model core alone, as pixels.
fn solo(folder: &str, params: GenerationParams) -> Vec<u8> {
    let model = load_model(&fixture(folder), None, &Device::Cpu).unwrap();
    generate(&*model, &params, |_, _| {}).unwrap()[0]
        .data
        .clone()
}

fn params(prompt: &str, seed: u64) -> GenerationParams {
    GenerationParams {
        prompt: prompt.into(),
        negative_prompt: None,
        width: 32,
        height: 32,
        steps: 5,
        guidance_scale: 7.5,
        scheduler: SchedulerKind::Ddim,
        seed,
        n: 1,
        eta: 0.0,
        image: Some(Arc::new(picture())),
        mask: None,
        strength: None,
        step_noise_seed: None,
    }
}

fn png_of(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v["images"][0]["png_base64"].as_str().unwrap())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn img2img_and_inpainting_equal_the_model_core_and_record_their_inputs() {
    let s = server().await;
    let body = json!({"prompt": "a cat", "image": picture_b64(), "strength": 0.6,
                      "steps": 5, "scheduler": "ddim", "seed": 3});
    let r = s.post("/v1/generate", body).await;
    assert_eq!(r.status(), 200);
    let (w, h, pixels, meta) = decode(&png_of(&r.json().await.unwrap()));
    assert_eq!((w, h), (32, 32));
    assert_eq!(meta["strength"], 0.6);
    assert_eq!(meta["input_image"], "32x32");
    assert!(meta.get("mask").is_none());
    let want = solo(
        "sd1-tiny",
        GenerationParams {
            strength: Some(0.6),
            ..params("a cat", 3)
        },
    );
    assert_eq!(pixels, want);

    // Inpainting as an async job: progress counts every step at strength 1 (the default).
    let body = json!({"prompt": "a door", "image": picture_b64(), "mask": mask_b64(),
                      "steps": 5, "scheduler": "ddim", "seed": 4});
    let r = s.post("/v1/jobs", body).await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(wait_job(&s, &id).await["state"], "succeeded");
    let png = s.get(&format!("/v1/jobs/{id}/images/0")).await;
    let (_, _, pixels, meta) = decode(&png.bytes().await.unwrap());
    assert_eq!(
        (meta["strength"].clone(), meta["mask"].clone()),
        (json!(1.0), json!(true))
    );
    let want = solo(
        "sd1-tiny",
        GenerationParams {
            mask: Some(Arc::new(top_half())),
            ..params("a door", 4)
        },
    );
    assert_eq!(pixels, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reports_only_the_steps_strength_leaves() {
    let s = server().await;
    let body = json!({"prompt": "a tree", "image": picture_b64(), "strength": 0.5,
                      "steps": 8, "scheduler": "euler", "seed": 5});
    let r = s
        .client
        .post(s.url("/v1/generate"))
        .header("accept", "text/event-stream")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let events = read_sse(r, |e| e.event == "done").await;
    let totals: Vec<u64> = events
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| e.data["total"].as_u64().unwrap())
        .collect();
    assert!(!totals.is_empty());
    assert!(totals.iter().all(|&t| t == 4), "{totals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_edit_inputs_are_clear_422s() {
    let s = server().await;
    let bomb = {
        // A PNG header claiming 100000 x 100000 pixels with one pixel of data.
        let mut file = png_file(1, 1, png::ColorType::Rgb, &[0, 0, 0]);
        file[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        file[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&file[12..29]);
        file[29..33].copy_from_slice(&crc.to_be_bytes());
        b64(&file)
    };
    let small_mask = b64(&png_file(
        16,
        32,
        png::ColorType::Grayscale,
        &[255; 16 * 32],
    ));
    let cases = [
        (
            json!({"prompt": "x", "image": picture_b64(), "strength": 0}),
            "strength",
        ),
        (
            json!({"prompt": "x", "image": picture_b64(), "strength": 1.5}),
            "strength",
        ),
        (
            json!({"prompt": "x", "strength": 0.5}),
            "needs an input image",
        ),
        (
            json!({"prompt": "x", "mask": mask_b64()}),
            "needs an input image",
        ),
        (
            json!({"prompt": "x", "image": picture_b64(), "mask": small_mask}),
            "same size",
        ),
        (
            json!({"prompt": "x", "image": "bm90IGFuIGltYWdl"}),
            "image:",
        ),
        (
            json!({"prompt": "x", "image": picture_b64(), "mask": "AAAA"}),
            "mask:",
        ),
        (json!({"prompt": "x", "image": bomb}), "100000x100000"),
        (
            json!({"model": "faces", "mask": mask_b64()}),
            "does not take `mask`",
        ),
        (
            json!({"model": "inpaint", "prompt": "x"}),
            "needs an input image",
        ),
        (
            json!({"prompt": "x", "image": picture_b64(), "width": 36}),
            "multiple",
        ),
    ];
    for (body, want) in cases {
        let r = s.post("/v1/generate", body.clone()).await;
        assert_eq!(r.status(), 422, "{body}");
        let v: Value = r.json().await.unwrap();
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(want), "{message} should say {want}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edit_jobs_batch_with_text_to_image_and_equal_each_alone() {
    let s = server().await;
    let bodies = [
        json!({"prompt": "a cat", "steps": 6, "scheduler": "euler-a", "seed": 1}),
        json!({"prompt": "a house", "image": picture_b64(), "strength": 0.5, "steps": 6,
               "scheduler": "euler-a", "seed": 2}),
        json!({"prompt": "a door", "image": picture_b64(), "mask": mask_b64(),
               "strength": 0.8, "steps": 6, "scheduler": "euler-a", "seed": 3}),
        json!({"model": "inpaint", "prompt": "a castle", "image": picture_b64(),
               "mask": mask_b64(), "steps": 6, "scheduler": "euler-a", "seed": 4}),
        json!({"model": "inpaint", "prompt": "a bridge", "image": picture_b64(),
               "strength": 0.6, "steps": 6, "scheduler": "euler-a", "seed": 5}),
    ];
    let mut alone = Vec::new();
    for body in &bodies {
        let v: Value = s
            .post("/v1/generate", body.clone())
            .await
            .json()
            .await
            .unwrap();
        alone.push(decode(&png_of(&v)).2);
    }
    let calls_before = s.engine.stats().unet_calls;
    let mut tasks = Vec::new();
    for body in bodies {
        let client = s.client.clone();
        let url = s.url("/v1/generate");
        tasks.push(tokio::spawn(async move {
            let r = client.post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }));
    }
    for (i, (task, want)) in tasks.into_iter().zip(&alone).enumerate() {
        let v = task.await.unwrap();
        let got = decode(&png_of(&v)).2;
        let diff = got
            .iter()
            .zip(want)
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max();
        let n = got.iter().zip(want).filter(|(a, b)| a != b).count();
        assert!(&got == want, "job {i} differs: max {diff:?}, {n} bytes");
    }
    let calls = s.engine.stats().unet_calls - calls_before;
    // Alone: 6 + 3 + 4 + 6 + 3 = 22 calls; run together, jobs of one model share calls
    // when they are in flight at once (how many depends on arrival under load; the
    // model core's test shows the sharing deterministically).
    println!("{calls} UNet calls for 22 steps");
    assert!(calls <= 22, "{calls} UNet calls for 22 steps");
}

/// A multipart body for `/v1/images/edits`.
fn edit_form(
    image: Vec<u8>,
    mask: Option<Vec<u8>>,
    fields: &[(&str, &str)],
) -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(image)
            .file_name("image.png")
            .mime_str("image/png")
            .unwrap(),
    );
    if let Some(mask) = mask {
        form = form.part(
            "mask",
            reqwest::multipart::Part::bytes(mask)
                .file_name("mask.png")
                .mime_str("image/png")
                .unwrap(),
        );
    }
    for (name, value) in fields {
        form = form.text(name.to_string(), value.to_string());
    }
    form
}

/// The picture as RGBA with the top half fully transparent (alpha 0), the rest opaque.
fn rgba_with_transparent_top() -> Vec<u8> {
    let rgb = picture().data;
    let mut rgba = Vec::with_capacity(32 * 32 * 4);
    for (i, p) in rgb.chunks_exact(3).enumerate() {
        rgba.extend_from_slice(p);
        rgba.push(if i < 32 * 16 { 0 } else { 255 });
    }
    rgba
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_edits_take_the_transparent_area_of_the_mask_or_the_image() {
    let s = server().await;
    let fields = [
        ("prompt", "a door"),
        ("response_format", "b64_json"),
        ("steps", "5"),
        ("scheduler", "ddim"),
        ("seed", "4"),
        ("size", "32x32"),
    ];
    let want = solo(
        "sd1-tiny",
        GenerationParams {
            mask: Some(Arc::new(top_half())),
            ..params("a door", 4)
        },
    );
    let image_alpha = png_file(32, 32, png::ColorType::Rgba, &rgba_with_transparent_top());
    let image_rgb = png_file(32, 32, png::ColorType::Rgb, &picture().data);
    for (image, mask) in [(image_alpha.clone(), None), (image_rgb, Some(image_alpha))] {
        let r = s
            .client
            .post(s.url("/v1/images/edits"))
            .multipart(edit_form(image, mask, &fields))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(v["data"][0]["b64_json"].as_str().unwrap())
            .unwrap();
        assert_eq!(decode(&png).2, want);
    }

    // Errors: no image, no prompt, an unknown field, a mask without alpha, not a form.
    let rgb = png_file(32, 32, png::ColorType::Rgb, &picture().data);
    let no_image = reqwest::multipart::Form::new().text("prompt", "x");
    let cases = [
        (no_image, "`image`"),
        (edit_form(rgb.clone(), None, &[]), "`prompt`"),
        (
            edit_form(rgb.clone(), None, &[("prompt", "x"), ("colour", "red")]),
            "colour",
        ),
        (
            edit_form(rgb.clone(), Some(rgb.clone()), &[("prompt", "x")]),
            "alpha",
        ),
    ];
    for (form, want) in cases {
        let r = s
            .client
            .post(s.url("/v1/images/edits"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
        let v: Value = r.json().await.unwrap();
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(want), "{message} should say {want}");
    }
    let r = s.post("/v1/images/edits", json!({"prompt": "x"})).await;
    assert_eq!(r.status(), 422);
}
