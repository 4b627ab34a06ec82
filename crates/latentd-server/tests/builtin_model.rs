//! The built-in model is a real diffusers-layout pipeline: latentd loads it with the
//! same loader as any Stable Diffusion folder, and diffusers' StableDiffusionPipeline,
//! loading the same files, gives the same images (`tests/fixtures/refs/demo.*`, recorded
//! by `tests/fixtures/demo_reference.py`); `latentd generate` with no `--model` uses it.

#[path = "../../latentd-models/tests/common/pipeline_runs.rs"]
mod pipeline_runs;

use std::path::PathBuf;
use std::process::Command;

use candle_core::Device;
use latentd_models::pipeline::{generate, DiffusionModel, GenerationParams, StableDiffusion};
use latentd_models::schedulers::SchedulerKind;
use latentd_server::builtin;

#[test]
fn builtin_model_matches_diffusers_on_the_same_folder() {
    let cache = tempfile::Builder::new()
        .prefix("latentd-builtin-cache-")
        .tempdir()
        .unwrap();
    let dir = builtin::unpack_in(cache.path()).unwrap();
    let pipe = StableDiffusion::load_named(&dir, builtin::MODEL_NAME, &Device::Cpu).unwrap();
    assert_eq!(pipe.info().name, "latentd-demo");
    let refs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/refs");
    pipeline_runs::check_reference_runs(&dir, &refs, "demo");
}

/// `latentd generate` without `--model` uses the embedded model, and the same seed gives
/// the same image as the library pipeline on the unpacked folder.
#[test]
fn generate_without_model_uses_the_builtin_model() {
    let tmp = tempfile::Builder::new()
        .prefix("latentd-builtin-cli-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
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

    // The copy the command unpacked into its cache folder.
    let pipe = StableDiffusion::load_named(
        &builtin::unpack_in(&dir.join("cache")).unwrap(),
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
        image: None,
        mask: None,
        strength: None,
        step_noise_seed: None,
    };
    let images = generate(&pipe, &p, |_, _| {}).unwrap();
    assert_eq!(images[0].data, png.image.data);
}
