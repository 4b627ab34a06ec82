//! Writes the trained model as a diffusers `StableDiffusionPipeline` folder.

use std::path::Path;

use candle_nn::VarMap;
use serde_json::{json, Value};

use crate::config::Prediction;
use crate::error::io;
use crate::schedule::{BETA_END, BETA_SCHEDULE, BETA_START, TRAIN_TIMESTEPS};
use crate::{Error, Result};

/// Writes `value` as pretty-printed JSON with a final newline.
pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|source| Error::Json {
        path: path.to_owned(),
        source,
    })?;
    text.push('\n');
    std::fs::write(path, text).map_err(io(path))
}

/// `model_index.json` of a Stable Diffusion pipeline without safety checker.
pub fn model_index() -> Value {
    json!({
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.30.0",
        "feature_extractor": [null, null],
        "image_encoder": [null, null],
        "requires_safety_checker": false,
        "safety_checker": [null, null],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
}

/// `scheduler/scheduler_config.json`: DDIM over the training noise schedule, with
/// Stable Diffusion 1.x's other settings.
pub fn scheduler_config(prediction: Prediction) -> Value {
    json!({
        "_class_name": "DDIMScheduler",
        "_diffusers_version": "0.30.0",
        "num_train_timesteps": TRAIN_TIMESTEPS,
        "beta_start": BETA_START,
        "beta_end": BETA_END,
        "beta_schedule": BETA_SCHEDULE,
        "trained_betas": null,
        "clip_sample": false,
        "clip_sample_range": 1.0,
        "set_alpha_to_one": false,
        "steps_offset": 1,
        "prediction_type": prediction.as_str(),
        "thresholding": false,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
        "timestep_spacing": "leading",
        "rescale_betas_zero_snr": false,
    })
}

/// Writes one component: `dir/config.json` and `dir/weights` (safetensors).
pub fn save_component(dir: &Path, config: &Value, varmap: &VarMap, weights: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    write_json(&dir.join("config.json"), config)?;
    varmap.save(dir.join(weights))?;
    Ok(())
}

/// Writes the pipeline-level files: `model_index.json` and the scheduler.
pub fn save_pipeline_files(out: &Path, prediction: Prediction) -> Result<()> {
    write_json(&out.join("model_index.json"), &model_index())?;
    let scheduler = out.join("scheduler");
    std::fs::create_dir_all(&scheduler).map_err(io(&scheduler))?;
    write_json(
        &scheduler.join("scheduler_config.json"),
        &scheduler_config(prediction),
    )
}
