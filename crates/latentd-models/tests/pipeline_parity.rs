//! Whole pipeline runs against diffusers' `StableDiffusionPipeline` on the tiny fixtures:
//! same seed, prompt, scheduler and guidance -> the same latents and pixels.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use latentd_models::pipeline::{max_abs_diff, GenerationParams, StableDiffusion};
use latentd_models::schedulers::SchedulerKind;
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn load_refs(name: &str) -> (Value, HashMap<String, Tensor>) {
    let dir = fixtures().join("refs");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap())
            .unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join(format!("{name}.safetensors")), &Device::Cpu)
            .unwrap();
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

fn check_runs(name: &str) {
    let pipe = StableDiffusion::load(&fixtures().join(name), &Device::Cpu).unwrap();
    let (json, refs) = load_refs(name);
    let runs = json["runs"].as_array().unwrap();
    assert!(!runs.is_empty());
    for run in runs {
        let id = run["id"].as_str().unwrap();
        let p = params(run);
        let latents = pipe.generate_latents(&p, |_, _| {}).unwrap();
        let want = &refs[&format!("{id}.latents")];
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
            "{name} {id} ({}): final latents max abs err {err:.2e} (scale {scale:.1})",
            p.scheduler
        );
        assert!(err <= 1e-4 * scale, "{name} {id}: latents differ by {err}");

        // Pixels: diffusers' float images in [0,1], NHWC; ours are 8-bit.
        let images = pipe.decode(&latents).unwrap();
        let want = refs[&format!("{id}.images")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let ours: Vec<u8> = images.iter().flat_map(|i| i.data.iter().copied()).collect();
        assert_eq!(ours.len(), want.len());
        let worst = ours
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (a as f32 / 255.0 - b).abs())
            .fold(0f32, f32::max);
        println!("{name} {id}: max pixel diff {:.2}/255", worst * 255.0);
        assert!(
            worst <= 2.0 / 255.0,
            "{name} {id}: pixels differ by {}/255",
            worst * 255.0
        );
    }
}

#[test]
fn sd1_pipeline_runs_match_diffusers() {
    check_runs("sd1-tiny");
}

#[test]
fn sd2_pipeline_runs_match_diffusers() {
    check_runs("sd2-tiny");
}

#[test]
fn loader_reads_configs_from_the_folder() {
    let sd1 = StableDiffusion::load(&fixtures().join("sd1-tiny"), &Device::Cpu).unwrap();
    let info = sd1.info();
    assert_eq!(info.name, "sd1-tiny");
    assert_eq!(info.family, "stable-diffusion-1");
    assert_eq!(info.default_scheduler, SchedulerKind::Pndm);
    assert_eq!(info.prediction_type, "epsilon");
    assert_eq!((info.native_width, info.vae_scale_factor), (32, 4));
    let sd2 = StableDiffusion::load(&fixtures().join("sd2-tiny"), &Device::Cpu).unwrap();
    assert_eq!(sd2.info().family, "stable-diffusion-2");
    assert_eq!(sd2.info().default_scheduler, SchedulerKind::Ddim);
    assert_eq!(sd2.info().prediction_type, "v_prediction");
}

/// Copies a fixture folder so a test can break it.
fn scratch_copy(name: &str, tag: &str) -> PathBuf {
    let dst = std::env::temp_dir().join(format!("latentd-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    copy_dir(&fixtures().join(name), &dst);
    dst
}

fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}

#[test]
fn broken_folders_give_errors_that_name_the_file_and_key() {
    let err = |dir: &PathBuf| match StableDiffusion::load(dir, &Device::Cpu) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    };
    // Missing weights.
    let dir = scratch_copy("sd1-tiny", "noweights");
    std::fs::remove_file(dir.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let msg = err(&dir);
    assert!(msg.contains("unet") && msg.contains("safetensors"), "{msg}");

    // Missing config file.
    let dir = scratch_copy("sd1-tiny", "noconfig");
    std::fs::remove_file(dir.join("vae/config.json")).unwrap();
    let msg = err(&dir);
    assert!(msg.contains("vae/config.json"), "{msg}");

    // Unsupported value.
    let dir = scratch_copy("sd1-tiny", "badact");
    let path = dir.join("text_encoder/config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("quick_gelu", "swish_unknown");
    std::fs::write(&path, text).unwrap();
    let msg = err(&dir);
    assert!(msg.contains("hidden_act"), "{msg}");

    // A tensor with the wrong shape: the config promises a wider MLP than the weights have.
    let dir = scratch_copy("sd1-tiny", "badshape");
    let path = dir.join("text_encoder/config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"intermediate_size\": 37", "\"intermediate_size\": 40");
    std::fs::write(&path, text).unwrap();
    let msg = err(&dir);
    assert!(
        msg.contains("text_encoder/model.safetensors") && msg.contains("shape"),
        "{msg}"
    );

    // Malformed JSON.
    let dir = scratch_copy("sd1-tiny", "badjson");
    std::fs::write(dir.join("model_index.json"), "{ nope").unwrap();
    let msg = err(&dir);
    assert!(msg.contains("model_index.json"), "{msg}");
}
