//! Whole pipeline runs against diffusers' `StableDiffusionPipeline` on the tiny fixtures:
//! same seed, prompt, scheduler and guidance -> the same latents and pixels.

#[path = "common/pipeline_runs.rs"]
mod pipeline_runs;

use std::path::{Path, PathBuf};

use candle_core::Device;
use latentd_models::pipeline::{
    load_model, AutoencoderKind, ConditioningKind, DiffusionModel, Family, StableDiffusion,
};
use latentd_models::schedulers::SchedulerKind;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn check_runs(name: &str) {
    pipeline_runs::check_reference_runs(&fixtures().join(name), &fixtures().join("refs"), name);
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
fn ldm_unconditional_runs_match_diffusers() {
    check_runs("ldm-tiny");
}

#[test]
fn ldm_text_to_image_runs_match_diffusers() {
    check_runs("ldm-text-tiny");
}

#[test]
fn ldm_super_resolution_runs_match_diffusers() {
    check_runs("ldm-sr-tiny");
}

#[test]
fn each_family_says_what_it_accepts() {
    let load = |name: &str| load_model(&fixtures().join(name), None, &Device::Cpu).unwrap();
    let uncond = load("ldm-tiny");
    let info = uncond.info();
    assert_eq!(info.family, Family::LdmUnconditional);
    assert_eq!(info.conditioning, ConditioningKind::None);
    assert_eq!(info.autoencoder, AutoencoderKind::Vq);
    assert_eq!((info.latent_channels, info.max_prompt_tokens), (3, None));
    assert!(!info.takes_prompt() && !info.takes_guidance() && !info.takes_image());
    assert_eq!((info.native_width, info.vae_scale_factor), (32, 4));
    assert!(uncond.count_tokens("a cat").is_err());

    let text = load("ldm-text-tiny");
    let info = text.info();
    assert_eq!(info.family, Family::LdmTextToImage);
    assert_eq!(info.autoencoder, AutoencoderKind::Kl);
    assert_eq!(info.max_prompt_tokens, Some(75));
    // LDMTextToImagePipeline guides at every scale but 1.
    assert!(info.is_guided(0.5) && !info.is_guided(1.0) && info.is_guided(7.5));

    let sr = load("ldm-sr-tiny");
    let info = sr.info();
    assert_eq!(info.family, Family::LdmSuperResolution);
    assert_eq!(info.conditioning, ConditioningKind::Image);
    // Latents of 3 channels, the UNet reads 3 more of the image.
    assert_eq!(info.latent_channels, 3);
}

#[test]
fn loader_reads_configs_from_the_folder() {
    let sd1 = StableDiffusion::load(&fixtures().join("sd1-tiny"), &Device::Cpu).unwrap();
    let info = sd1.info();
    assert_eq!(info.name, "sd1-tiny");
    assert_eq!(info.family, Family::StableDiffusion1);
    assert_eq!(info.max_prompt_tokens, Some(75));
    assert_eq!(info.default_scheduler, SchedulerKind::Pndm);
    assert_eq!(info.prediction_type, "epsilon");
    assert_eq!((info.native_width, info.vae_scale_factor), (32, 4));
    let sd2 = StableDiffusion::load(&fixtures().join("sd2-tiny"), &Device::Cpu).unwrap();
    assert_eq!(sd2.info().family, Family::StableDiffusion2);
    assert_eq!(sd2.info().default_scheduler, SchedulerKind::Ddim);
    assert_eq!(sd2.info().prediction_type, "v_prediction");
}

/// Copies a fixture folder so a test can break it; the copy is removed when dropped.
fn scratch_copy(name: &str, tag: &str) -> tempfile::TempDir {
    let dst = tempfile::Builder::new()
        .prefix(&format!("latentd-{tag}-"))
        .tempdir()
        .unwrap();
    pipeline_runs::copy_dir(&fixtures().join(name), dst.path());
    dst
}

#[test]
fn broken_folders_give_errors_that_name_the_file_and_key() {
    let err = |dir: &Path| match StableDiffusion::load(dir, &Device::Cpu) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    };
    // Missing weights.
    let copy = scratch_copy("sd1-tiny", "noweights");
    let dir = copy.path();
    std::fs::remove_file(dir.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let msg = err(dir);
    assert!(msg.contains("unet") && msg.contains("safetensors"), "{msg}");

    // Missing config file.
    let copy = scratch_copy("sd1-tiny", "noconfig");
    let dir = copy.path();
    std::fs::remove_file(dir.join("vae/config.json")).unwrap();
    let msg = err(dir);
    assert!(msg.contains("vae/config.json"), "{msg}");

    // Unsupported value.
    let copy = scratch_copy("sd1-tiny", "badact");
    let dir = copy.path();
    let path = dir.join("text_encoder/config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("quick_gelu", "swish_unknown");
    std::fs::write(&path, text).unwrap();
    let msg = err(dir);
    assert!(msg.contains("hidden_act"), "{msg}");

    // A tensor with the wrong shape: the config promises a wider MLP than the weights have.
    let copy = scratch_copy("sd1-tiny", "badshape");
    let dir = copy.path();
    let path = dir.join("text_encoder/config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"intermediate_size\": 37", "\"intermediate_size\": 40");
    std::fs::write(&path, text).unwrap();
    let msg = err(dir);
    assert!(
        msg.contains("text_encoder/model.safetensors") && msg.contains("shape"),
        "{msg}"
    );

    // Malformed JSON.
    let copy = scratch_copy("sd1-tiny", "badjson");
    let dir = copy.path();
    std::fs::write(dir.join("model_index.json"), "{ nope").unwrap();
    let msg = err(dir);
    assert!(msg.contains("model_index.json"), "{msg}");
}

/// `LDMPipeline` scales by `init_noise_sigma` before `set_timesteps`: the training
/// schedule's, also for configurations whose leading timesteps with `steps_offset`
/// would not fit 1000 inference steps.
#[test]
fn untimed_init_noise_sigma_is_the_training_schedules() {
    use latentd_models::schedulers::{untimed_init_noise_sigma, SchedulerConfig};
    let text = std::fs::read_to_string(fixtures().join("refs/ldm-tiny.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let run = json["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["scheduler_overrides"]["timestep_spacing"] == "leading")
        .expect("a leading-spacing run");
    let path = fixtures().join("ldm-tiny/scheduler/scheduler_config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["timestep_spacing"] = "leading".into();
    config["steps_offset"] = 1.into();
    let config: SchedulerConfig = serde_json::from_value(config).unwrap();
    let sigma = untimed_init_noise_sigma(SchedulerKind::Euler, &config).unwrap();
    let want = run["init_noise_sigma"].as_f64().unwrap();
    assert!(
        (sigma - want).abs() <= 1e-4 * want,
        "{sigma} vs diffusers' {want}"
    );
    for kind in [
        SchedulerKind::Ddim,
        SchedulerKind::Pndm,
        SchedulerKind::DpmPp2m,
    ] {
        assert_eq!(untimed_init_noise_sigma(kind, &config).unwrap(), 1.0);
    }
}
