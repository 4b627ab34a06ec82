//! Whole pipeline runs against diffusers' recorded `refs/{name}.*` (the `runs` of
//! tests/fixtures/FORMAT.md): same seed, prompt, scheduler and guidance -> the same
//! latents and pixels. Shared by latentd-models' fixture tests and latentd-server's
//! built-in model test (included there by path).

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use latentd_models::pipeline::{
    generate_latents, load_model_in, max_abs_diff, DiffusionModel, GenerationParams, Mask,
    Precision, RgbImage,
};
use latentd_models::schedulers::SchedulerKind;
use serde_json::Value;

fn load_refs(dir: &Path, name: &str) -> (Value, HashMap<String, Tensor>) {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap())
            .unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join(format!("{name}.safetensors")), &Device::Cpu)
            .unwrap();
    (json, tensors)
}

/// The input image of a super-resolution, img2img or inpainting run, from its recorded
/// 8-bit pixels.
fn input_image(refs: &HashMap<String, Tensor>, id: &str) -> Option<Arc<RgbImage>> {
    let pixels = refs
        .get(&format!("{id}.low_res_u8"))
        .or_else(|| refs.get(&format!("{id}.image_u8")))?;
    let (height, width, _) = pixels.dims3().unwrap();
    Some(Arc::new(RgbImage {
        width,
        height,
        data: pixels.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
    }))
}

/// The mask of an inpainting run, from its recorded 8-bit luma.
fn input_mask(refs: &HashMap<String, Tensor>, id: &str) -> Option<Arc<Mask>> {
    let luma = refs.get(&format!("{id}.mask_u8"))?;
    let (height, width) = luma.dims2().unwrap();
    Some(Arc::new(Mask {
        width,
        height,
        data: luma.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
    }))
}

fn params(run: &Value, refs: &HashMap<String, Tensor>) -> GenerationParams {
    let id = run["id"].as_str().unwrap();
    GenerationParams {
        // Unconditional and super-resolution runs record no prompt and no guidance.
        prompt: run["prompt"].as_str().unwrap_or("").to_string(),
        negative_prompt: run["negative_prompt"].as_str().map(str::to_string),
        width: run["width"].as_u64().unwrap() as usize,
        height: run["height"].as_u64().unwrap() as usize,
        steps: run["steps"].as_u64().unwrap() as usize,
        guidance_scale: run["guidance_scale"].as_f64().unwrap_or(1.0),
        scheduler: run["scheduler"]
            .as_str()
            .unwrap()
            .parse::<SchedulerKind>()
            .unwrap(),
        seed: run["seed"].as_u64().unwrap(),
        n: run["n"].as_u64().unwrap() as usize,
        eta: run["eta"].as_f64().unwrap(),
        image: input_image(refs, id),
        mask: input_mask(refs, id),
        strength: run["strength"].as_f64(),
        // The LDM pipelines draw step noise from torch's global generator, which the
        // generator seeds with `step_noise_seed` before each call.
        step_noise_seed: run["step_noise_seed"].as_u64(),
    }
}

/// The model of `dir`, with a run's `scheduler_overrides` (keys replacing those of the
/// folder's scheduler config) applied to a copy of the folder.
fn load_for_run(dir: &Path, run: &Value, precision: Precision) -> Arc<dyn DiffusionModel> {
    let overrides = run["scheduler_overrides"]
        .as_object()
        .filter(|o| !o.is_empty());
    let Some(overrides) = overrides else {
        return load_model_in(dir, None, &Device::Cpu, precision).unwrap();
    };
    let copy = tempfile::Builder::new()
        .prefix(&format!(
            "latentd-run-{}-{}-",
            dir.file_name().unwrap().to_string_lossy(),
            run["id"].as_str().unwrap(),
        ))
        .tempdir()
        .unwrap();
    copy_dir(dir, copy.path());
    let path = copy.path().join("scheduler/scheduler_config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (key, value) in overrides {
        config[key] = value.clone();
    }
    std::fs::write(&path, config.to_string()).unwrap();
    load_model_in(copy.path(), None, &Device::Cpu, precision).unwrap()
}

/// Copies a folder tree.
pub fn copy_dir(src: &Path, dst: &Path) {
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

/// Runs every recorded run of `refs_dir/{name}.*` on the model folder `dir` and asserts
/// final latents within 1e-4 of their scale and pixels within 2/255 of diffusers'.
pub fn check_reference_runs(dir: &Path, refs_dir: &Path, name: &str) {
    let tolerance = PixelTolerance {
        max: 2.0,
        mean: 2.0,
    };
    check_runs(dir, refs_dir, name, Precision::F32, Some(1e-4), tolerance);
}

/// Runs every recorded run with the networks in `precision` and asserts pixels within
/// `tolerance` of diffusers' float32 images; returns the largest mean difference of a
/// run, in 1/255.
pub fn check_reference_runs_in(
    dir: &Path,
    refs_dir: &Path,
    name: &str,
    precision: Precision,
    tolerance: PixelTolerance,
) -> f32 {
    check_runs(dir, refs_dir, name, precision, None, tolerance)
}

fn check_runs(
    dir: &Path,
    refs_dir: &Path,
    name: &str,
    precision: Precision,
    latent_tolerance: Option<f32>,
    tolerance: PixelTolerance,
) -> f32 {
    let (json, refs) = load_refs(refs_dir, name);
    let runs = json["runs"].as_array().unwrap();
    assert!(!runs.is_empty());
    let mut worst_mean = 0f32;
    for run in runs {
        let id = run["id"].as_str().unwrap();
        let model = load_for_run(dir, run, precision);
        let pipe = &*model;
        let p = params(run, &refs);
        let latents = generate_latents(pipe, &p, |_, _| {}).unwrap();
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
            "{name} {id} ({}, {precision}): final latents max abs err {err:.2e} (scale {scale:.1})",
            p.scheduler
        );
        if let Some(tolerance) = latent_tolerance {
            assert!(
                err <= tolerance * scale,
                "{name} {id}: latents differ by {err}"
            );
        }

        // Pixels: diffusers' float images in [0,1], NHWC; ours are 8-bit.
        let images = pipe.decode(&latents).unwrap();
        let want = refs[&format!("{id}.images")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let ours: Vec<u8> = images.iter().flat_map(|i| i.data.iter().copied()).collect();
        assert_eq!(ours.len(), want.len());
        let diffs: Vec<f32> = ours
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (a as f32 / 255.0 - b).abs() * 255.0)
            .collect();
        let worst = diffs.iter().copied().fold(0f32, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        println!("{name} {id} ({precision}): pixel diff max {worst:.2}/255, mean {mean:.2}/255");
        assert!(
            worst <= tolerance.max && mean <= tolerance.mean,
            "{name} {id} ({precision}): pixels differ by {worst}/255 at most, {mean}/255 \
             on average"
        );
        worst_mean = worst_mean.max(mean);
    }
    worst_mean
}

/// How far pixels may be from diffusers' float32 images, in 1/255.
#[derive(Debug, Clone, Copy)]
pub struct PixelTolerance {
    /// The largest difference of any channel of any pixel.
    pub max: f32,
    /// The mean difference over all channels and pixels.
    pub mean: f32,
}
