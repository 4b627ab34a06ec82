//! The built-in model is a real diffusers-layout pipeline: latentd loads it with the
//! same loader as any Stable Diffusion folder, and diffusers' StableDiffusionPipeline,
//! loading the same files, gives the same images (`tests/fixtures/refs/demo.*`, recorded
//! by `tests/fixtures/demo_reference.py`); `latentd generate` with no `--model` uses it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use candle_core::{Device, Tensor};
use latentd_models::pipeline::{max_abs_diff, GenerationParams, StableDiffusion};
use latentd_models::schedulers::SchedulerKind;
use latentd_server::builtin;
use serde_json::Value;

fn refs() -> (Value, HashMap<String, Tensor>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/refs");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("demo.json")).unwrap()).unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("demo.safetensors"), &Device::Cpu).unwrap();
    (json, tensors)
}

fn params(run: &Value) -> GenerationParams {
    GenerationParams {
        prompt: run["prompt"].as_str().unwrap().to_string(),
        negative_prompt: run["negative_prompt"].as_str().map(str::to_string),
        width: run["width"].as_u64().unwrap() as usize,
        height: run["height"].as_u64().unwrap() as usize,
        steps: run["steps"].as_u64().unwrap() as usize,
        guidance_scale: run["guidance_scale"].as_f64().unwrap(),
        scheduler: run["scheduler"]
            .as_str()
            .unwrap()
            .parse::<SchedulerKind>()
            .unwrap(),
        seed: run["seed"].as_u64().unwrap(),
        n: run["n"].as_u64().unwrap() as usize,
        eta: run["eta"].as_f64().unwrap(),
    }
}

#[test]
fn builtin_model_matches_diffusers_on_the_same_folder() {
    let dir = builtin::unpack().unwrap();
    let pipe = StableDiffusion::load_named(&dir, builtin::MODEL_NAME, &Device::Cpu).unwrap();
    assert_eq!(pipe.info().name, "latentd-demo");
    let (json, tensors) = refs();
    for run in json["runs"].as_array().unwrap() {
        let id = run["id"].as_str().unwrap();
        let p = params(run);
        let latents = pipe.generate_latents(&p, |_, _| {}).unwrap();
        let want = &tensors[&format!("{id}.latents")];
        let scale = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1.0);
        let err = max_abs_diff(&latents, want).unwrap();
        println!(
            "{id} ({}): latents max abs err {err:.2e} (scale {scale:.1})",
            p.scheduler
        );
        assert!(err <= 1e-4 * scale, "{id}: latents differ by {err}");
        let ours: Vec<u8> = pipe
            .decode(&latents)
            .unwrap()
            .into_iter()
            .flat_map(|i| i.data)
            .collect();
        let theirs = tensors[&format!("{id}.images")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(ours.len(), theirs.len());
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(&a, &b)| (a as f32 / 255.0 - b).abs())
            .fold(0f32, f32::max);
        println!("{id}: max pixel diff {:.2}/255", worst * 255.0);
        assert!(
            worst <= 2.0 / 255.0,
            "{id}: pixels differ by {}/255",
            worst * 255.0
        );
    }
}

/// `latentd generate` without `--model` uses the embedded model, and the same seed gives
/// the same image as the library pipeline on the unpacked folder.
#[test]
fn generate_without_model_uses_the_builtin_model() {
    let dir = std::env::temp_dir().join(format!("latentd-builtin-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("out.png");
    let out = Command::new(env!("CARGO_BIN_EXE_latentd"))
        .env("LATENTD_CACHE_DIR", dir.join("cache"))
        .args([
            "generate",
            "--prompt",
            "a yellow triangle left of a green circle",
            "--seed",
            "3",
            "--steps",
            "10",
            "--output",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = latentd_engine::png_meta::decode_png(&std::fs::read(&path).unwrap()).unwrap();
    let meta = png.metadata().unwrap();
    assert_eq!(meta.model, builtin::MODEL_NAME);
    assert_eq!((png.image.width, png.image.height), (32, 32));
    assert!(dir.join("cache").read_dir().unwrap().next().is_some());

    let pipe = StableDiffusion::load_named(
        &builtin::unpack().unwrap(),
        builtin::MODEL_NAME,
        &Device::Cpu,
    )
    .unwrap();
    let p = GenerationParams {
        prompt: meta.prompt.clone(),
        negative_prompt: None,
        width: 32,
        height: 32,
        steps: meta.steps,
        guidance_scale: meta.guidance_scale,
        scheduler: meta.scheduler.parse::<SchedulerKind>().unwrap(),
        seed: 3,
        n: 1,
        eta: meta.eta,
    };
    let images = pipe.generate(&p, |_, _| {}).unwrap();
    assert_eq!(images[0].data, png.image.data);
    let _ = std::fs::remove_dir_all(&dir);
}
