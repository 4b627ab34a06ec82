//! Single-file (CompVis layout) checkpoints against the diffusers folders they were made
//! from and against diffusers' own runs (`tests/fixtures/single-file/`, FORMAT.md,
//! "single-file checkpoints"): the same weights, the same latents, and errors that name
//! the tensors at fault.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use latentd_models::checkpoint::{self, SdVersion, TextLayout};
use latentd_models::diffusers_config::{PerBlock, SampleSize};
use latentd_models::pipeline::{
    generate_latents, load_model, load_model_from, max_abs_diff, Family, GenerationParams,
    LoadOptions,
};
use latentd_models::schedulers::{PredictionType, SchedulerKind};
use latentd_models::text::HiddenAct;
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn single(name: &str) -> PathBuf {
    fixtures().join("single-file").join(name)
}

/// (single file, the folder it was converted from).
fn converted() -> [(PathBuf, PathBuf); 3] {
    [
        (single("sd1-tiny.safetensors"), fixtures().join("sd1-tiny")),
        (single("sd1-tiny.ckpt"), fixtures().join("sd1-tiny")),
        (single("sd2-tiny.safetensors"), fixtures().join("sd2-tiny")),
    ]
}

fn with_config(dir: &Path) -> LoadOptions {
    LoadOptions {
        model_config: Some(dir.to_path_buf()),
        ..LoadOptions::default()
    }
}

fn load_err(path: &Path, options: &LoadOptions) -> String {
    match load_model_from(path, options, &Device::Cpu) {
        Ok(_) => panic!("loading {} should fail", path.display()),
        Err(e) => {
            println!("{}: {e}", path.display());
            e.to_string()
        }
    }
}

fn params(prompt: &str, scheduler: SchedulerKind, steps: usize, seed: u64) -> GenerationParams {
    GenerationParams {
        prompt: prompt.to_string(),
        negative_prompt: None,
        width: 32,
        height: 32,
        steps,
        guidance_scale: 7.5,
        scheduler,
        seed,
        n: 1,
        eta: 0.0,
        image: None,
        mask: None,
        strength: None,
        step_noise_seed: None,
    }
}

/// A component folder's tensors by name, the text encoder's without `text_model.`.
fn folder_tensors(dir: &Path, component: &str) -> HashMap<String, Tensor> {
    let file = match component {
        "text_encoder" => "model.safetensors",
        _ => "diffusion_pytorch_model.safetensors",
    };
    let tensors = candle_core::safetensors::load(dir.join(component).join(file), &Device::Cpu);
    normalize(tensors.unwrap())
}

fn normalize(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    tensors
        .into_iter()
        .map(|(k, v)| (k.strip_prefix("text_model.").unwrap_or(&k).to_string(), v))
        .collect()
}

#[test]
fn single_files_hold_their_folders_weights() {
    for (file, dir) in converted() {
        let tensors = checkpoint::diffusers_tensors(&file, Some(&dir)).unwrap();
        for (component, got) in tensors {
            let got = normalize(got);
            let want = folder_tensors(&dir, component);
            let mut names: Vec<&String> = want.keys().collect();
            names.sort();
            let mut got_names: Vec<&String> = got.keys().collect();
            got_names.sort();
            assert_eq!(got_names, names, "{} {component}", file.display());
            for (name, want) in &want {
                let got = &got[name];
                assert_eq!(got.dtype(), want.dtype(), "{name}");
                let (got, want) = (
                    got.to_dtype(DType::F32).unwrap(),
                    want.to_dtype(DType::F32).unwrap(),
                );
                let err = max_abs_diff(&got, &want).unwrap();
                assert_eq!(err, 0.0, "{} {component}.{name}", file.display());
            }
        }
    }
}

#[test]
fn single_files_generate_their_folders_latents() {
    for (file, dir) in converted() {
        let from_file = load_model_from(&file, &with_config(&dir), &Device::Cpu).unwrap();
        let from_dir = load_model(&dir, None, &Device::Cpu).unwrap();
        let (a, b) = (from_file.info(), from_dir.info());
        assert_eq!(a.name, file.file_stem().unwrap().to_string_lossy());
        assert_eq!(
            (a.family, a.default_scheduler),
            (b.family, b.default_scheduler)
        );
        assert_eq!(
            (&a.prediction_type, a.native_width),
            (&b.prediction_type, b.native_width)
        );
        let run = params("a photo of a cat", SchedulerKind::Ddim, 3, 11);
        let got = generate_latents(&*from_file, &run, |_, _| {}).unwrap();
        let want = generate_latents(&*from_dir, &run, |_, _| {}).unwrap();
        let err = max_abs_diff(&got, &want).unwrap();
        println!("{}: latents max abs diff {err:e}", file.display());
        assert!(err <= 1e-6, "{}: {err}", file.display());
    }
}

fn refs() -> (Value, HashMap<String, Tensor>) {
    let dir = fixtures().join("refs");
    let json = std::fs::read_to_string(dir.join("single-file.json")).unwrap();
    let tensors = candle_core::safetensors::load(dir.join("single-file.safetensors"), &Device::Cpu);
    (serde_json::from_str(&json).unwrap(), tensors.unwrap())
}

/// The detected configs equal those of the diffusers folder the file was made from.
fn assert_configs(detected: &checkpoint::Detected, want: &Value) {
    let (unet, vae, text) = (&detected.unet, &detected.vae, &detected.text_encoder);
    let w = |part: &str, key: &str| want[part][key].clone();
    let n = |part: &str, key: &str| w(part, key).as_u64().unwrap() as usize;
    let list = |part: &str, key: &str| -> Vec<Value> { w(part, key).as_array().unwrap().clone() };
    let usizes = |part: &str, key: &str| -> Vec<usize> {
        list(part, key)
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect()
    };
    let strings = |part: &str, key: &str| -> Vec<String> {
        list(part, key)
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        (unet.in_channels, unet.out_channels),
        (n("unet", "in_channels"), n("unet", "out_channels"))
    );
    assert_eq!(
        unet.block_out_channels,
        usizes("unet", "block_out_channels")
    );
    assert_eq!(
        unet.layers_per_block,
        PerBlock::Same(n("unet", "layers_per_block"))
    );
    assert_eq!(unet.down_block_types, strings("unet", "down_block_types"));
    assert_eq!(unet.up_block_types, strings("unet", "up_block_types"));
    let heads = match w("unet", "attention_head_dim") {
        Value::Array(_) => PerBlock::Each(usizes("unet", "attention_head_dim")),
        _ => PerBlock::Same(n("unet", "attention_head_dim")),
    };
    assert_eq!(unet.attention_head_dim, heads);
    assert_eq!(
        unet.cross_attention_dim,
        PerBlock::Same(n("unet", "cross_attention_dim"))
    );
    assert_eq!(
        Value::Bool(unet.use_linear_projection),
        w("unet", "use_linear_projection")
    );
    assert_eq!(
        unet.sample_size,
        Some(SampleSize::Square(n("unet", "sample_size")))
    );
    assert_eq!(unet.norm_num_groups, Some(n("unet", "norm_num_groups")));
    assert_eq!(
        (vae.in_channels, vae.out_channels),
        (n("vae", "in_channels"), n("vae", "out_channels"))
    );
    assert_eq!(vae.block_out_channels, usizes("vae", "block_out_channels"));
    assert_eq!(vae.layers_per_block, n("vae", "layers_per_block"));
    assert_eq!(vae.latent_channels, n("vae", "latent_channels"));
    assert_eq!(vae.sample_size, SampleSize::Square(n("vae", "sample_size")));
    assert_eq!(
        Some(vae.scaling_factor),
        w("vae", "scaling_factor").as_f64()
    );
    assert_eq!(vae.norm_num_groups, n("vae", "norm_num_groups"));
    let t = "text_encoder";
    assert_eq!(text.vocab_size, n(t, "vocab_size"));
    assert_eq!(
        (text.hidden_size, text.intermediate_size),
        (n(t, "hidden_size"), n(t, "intermediate_size"))
    );
    assert_eq!(text.num_hidden_layers, n(t, "num_hidden_layers"));
    assert_eq!(text.num_attention_heads, n(t, "num_attention_heads"));
    assert_eq!(
        text.max_position_embeddings,
        n(t, "max_position_embeddings")
    );
    let act = match text.hidden_act {
        HiddenAct::QuickGelu => "quick_gelu",
        HiddenAct::Gelu => "gelu",
    };
    assert_eq!(w(t, "hidden_act"), act);
}

/// The names and shapes of full-size SD 1.5 and SD 2.1 files give their diffusers configs.
#[test]
fn real_architectures_are_detected_from_their_layouts() {
    let path = fixtures().join("refs/single-file.layouts.json");
    let layouts: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (name, version, layout) in [
        ("sd15", SdVersion::V1, TextLayout::Clip),
        ("sd21", SdVersion::V2, TextLayout::OpenClip),
    ] {
        let shapes: BTreeMap<String, Vec<usize>> =
            serde_json::from_value(layouts[name]["tensors"].clone()).unwrap();
        let detected = checkpoint::detect_shapes(Path::new(name), &shapes).unwrap();
        assert_eq!((detected.version, detected.text_layout), (version, layout));
        assert!(!detected.inpainting);
        assert_configs(&detected, &layouts[name]["configs"]);
    }
}

#[test]
fn rules_pipeline_loads_without_config_and_matches_diffusers() {
    let (json, tensors) = refs();
    let file = single("sd1-rules.safetensors");
    let detected = checkpoint::inspect(&file).unwrap();
    assert_eq!(
        (detected.version, detected.text_layout),
        (SdVersion::V1, TextLayout::Clip)
    );
    assert!(!detected.inpainting);
    assert_configs(&detected, &json["sd1-rules"]["configs"]);

    let model = load_model_from(&file, &LoadOptions::default(), &Device::Cpu).unwrap();
    let info = model.info();
    assert_eq!(
        (info.name.as_str(), info.family),
        ("sd1-rules", Family::StableDiffusion1)
    );
    assert_eq!(
        (info.default_scheduler, info.prediction_type.as_str()),
        (SchedulerKind::Pndm, "epsilon")
    );
    assert_eq!((info.native_width, info.vae_scale_factor), (512, 2));
    for run in json["sd1-rules"]["runs"].as_array().unwrap() {
        let id = run["id"].as_str().unwrap();
        let mut p = params(
            run["prompt"].as_str().unwrap(),
            run["scheduler"].as_str().unwrap().parse().unwrap(),
            run["steps"].as_u64().unwrap() as usize,
            run["seed"].as_u64().unwrap(),
        );
        p.negative_prompt = run["negative_prompt"].as_str().map(str::to_string);
        p.guidance_scale = run["guidance_scale"].as_f64().unwrap();
        let latents = generate_latents(&*model, &p, |_, _| {}).unwrap();
        let want = &tensors[&format!("sd1-rules.{id}.latents")];
        let scale = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1.0);
        let err = max_abs_diff(&latents, want).unwrap();
        println!("sd1-rules {id}: latents max abs err {err:.2e} (scale {scale:.1})");
        assert!(err <= 1e-4 * scale, "{id}: latents differ by {err}");
        let ours: Vec<u8> = model
            .decode(&latents)
            .unwrap()
            .into_iter()
            .flat_map(|i| i.data)
            .collect();
        let want = tensors[&format!("sd1-rules.{id}.images")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(ours.len(), want.len());
        let worst = ours
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (a as f32 / 255.0 - b).abs())
            .fold(0f32, f32::max);
        println!("sd1-rules {id}: max pixel diff {:.2}/255", worst * 255.0);
        assert!(
            worst <= 2.0 / 255.0,
            "{id}: pixels differ by {}/255",
            worst * 255.0
        );
    }
}

/// A scratch safetensors file, removed (with its folder) when dropped.
struct Scratch {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

/// Writes `tensors` to a scratch safetensors file.
fn scratch(tag: &str, tensors: &HashMap<String, Tensor>) -> Scratch {
    let dir = tempfile::Builder::new()
        .prefix(&format!("latentd-single-{tag}-"))
        .tempdir()
        .unwrap();
    let path = dir.path().join(format!("latentd-single-{tag}.safetensors"));
    candle_core::safetensors::save(tensors, &path).unwrap();
    Scratch { _dir: dir, path }
}

fn file_tensors(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(single(name), &Device::Cpu).unwrap()
}

#[test]
fn inpainting_unet_is_detected_and_loads() {
    let (json, _) = refs();
    let file = single("sd1-inpaint-rules.safetensors");
    let detected = checkpoint::inspect(&file).unwrap();
    assert!(detected.inpainting);
    assert_eq!(detected.unet.in_channels, 9);
    assert_configs(&detected, &json["sd1-inpaint-rules"]["configs"]);
    // Its tiny text encoder does not cover CLIP's vocabulary: the shipped tokenizer
    // would give ids it has no embedding for.
    let msg = load_err(&file, &LoadOptions::default());
    assert!(
        msg.contains("64 token embeddings") && msg.contains("--model-config"),
        "{msg}"
    );

    // The rules pipeline with a 9-channel conv_in loads as an inpainting model.
    let mut tensors = file_tensors("sd1-rules.safetensors");
    let key = "model.diffusion_model.input_blocks.0.0.weight";
    let conv_in = &tensors[key];
    let extra = Tensor::zeros((32, 5, 3, 3), conv_in.dtype(), &Device::Cpu).unwrap();
    let wide = Tensor::cat(&[conv_in, &extra], 1).unwrap();
    tensors.insert(key.to_string(), wide);
    let path = scratch("inpaint", &tensors);
    let model = load_model_from(&path, &LoadOptions::default(), &Device::Cpu).unwrap();
    assert!(model.info().mask_channels && model.info().image_edits);
}

#[test]
fn unknown_and_missing_tensors_are_named() {
    let dir = fixtures().join("sd1-tiny");
    let mut tensors = file_tensors("sd1-tiny.safetensors");
    let extra = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    tensors.insert(
        "model.diffusion_model.input_blocks.1.0.extra.weight".into(),
        extra.clone(),
    );
    let msg = load_err(&scratch("unknown", &tensors), &with_config(&dir));
    assert!(
        msg.contains("1 unknown tensor") && msg.contains("input_blocks.1.0.extra.weight"),
        "{msg}"
    );
    for i in 0..7 {
        tensors.insert(format!("embedding_manager.{i}"), extra.clone());
    }
    let msg = load_err(&scratch("unknowns", &tensors), &with_config(&dir));
    assert!(
        msg.contains("8 unknown tensor") && msg.contains("(and 3 more)"),
        "{msg}"
    );

    // A tensor under a known block that no layer of it reads.
    let mut tensors = file_tensors("sd1-tiny.safetensors");
    let key = "model.diffusion_model.input_blocks.1.1.proj_extra.weight";
    tensors.insert(key.into(), extra);
    let msg = load_err(&scratch("unused", &tensors), &with_config(&dir));
    assert!(msg.contains("unknown") && msg.contains(key), "{msg}");

    let mut tensors = file_tensors("sd1-tiny.safetensors");
    let key = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight";
    tensors.remove(key);
    tensors.remove("first_stage_model.decoder.mid.attn_1.q.weight");
    let msg = load_err(&scratch("missing", &tensors), &with_config(&dir));
    assert!(
        msg.contains("missing UNet tensor") && msg.contains(key),
        "{msg}"
    );
    tensors.insert(
        key.into(),
        file_tensors("sd1-tiny.safetensors")[key].clone(),
    );
    let msg = load_err(&scratch("missing-vae", &tensors), &with_config(&dir));
    assert!(
        msg.contains("first_stage_model.decoder.mid.attn_1.q.weight"),
        "{msg}"
    );

    // A tensor of the wrong shape.
    let mut tensors = file_tensors("sd1-tiny.safetensors");
    let key = "model.diffusion_model.out.2.bias";
    tensors.insert(
        key.into(),
        Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap(),
    );
    let msg = load_err(&scratch("shape", &tensors), &with_config(&dir));
    assert!(msg.contains(key) && msg.contains("shape"), "{msg}");
}

#[test]
fn corrupt_and_foreign_files_are_clear_errors() {
    let options = LoadOptions::default();
    let tmp = tempfile::Builder::new()
        .prefix("latentd-trunc-")
        .tempdir()
        .unwrap();
    for name in ["sd1-tiny.safetensors", "sd1-tiny.ckpt"] {
        let bytes = std::fs::read(single(name)).unwrap();
        for (tag, cut) in [
            ("half", bytes.len() / 2),
            ("head", 100),
            ("tail", bytes.len() - 10),
        ] {
            let path = tmp.path().join(format!("latentd-trunc-{tag}-{name}"));
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let msg = load_err(&path, &options);
            assert!(
                msg.contains(&*path.to_string_lossy()),
                "{name} {tag}: {msg}"
            );
        }
    }
    // A UNet alone (no text encoder, no autoencoder).
    let unet: HashMap<String, Tensor> = file_tensors("sd1-tiny.safetensors")
        .into_iter()
        .filter(|(k, _)| k.starts_with("model.diffusion_model."))
        .collect();
    let msg = load_err(&scratch("unet-only", &unet), &options);
    assert!(msg.contains("no text encoder"), "{msg}");
    let msg = load_err(&fixtures().join("nope.safetensors"), &options);
    assert!(msg.contains("nope.safetensors"), "{msg}");
}

#[test]
fn configs_and_prediction_type_options() {
    let (file, dir) = (single("sd2-tiny.safetensors"), fixtures().join("sd2-tiny"));
    // sd2-tiny's text encoder is 32 wide: heads cannot be inferred.
    let msg = load_err(&file, &LoadOptions::default());
    assert!(
        msg.contains("heads") && msg.contains("--model-config"),
        "{msg}"
    );
    let detected = checkpoint::inspect(&single("sd2-tiny.safetensors"));
    assert!(detected.is_err());

    let mut options = with_config(&dir);
    let model = load_model_from(&file, &options, &Device::Cpu).unwrap();
    assert_eq!(model.info().prediction_type, "v_prediction");
    assert_eq!(model.info().family, Family::StableDiffusion2);
    options.prediction_type = Some(PredictionType::Epsilon);
    let model = load_model_from(&file, &options, &Device::Cpu).unwrap();
    assert_eq!(model.info().prediction_type, "epsilon");

    // Folder-only options on a folder are refused rather than ignored.
    let msg = load_err(&dir, &options);
    assert!(msg.contains("single-file"), "{msg}");
    let model = load_model_from(&dir, &LoadOptions::default(), &Device::Cpu).unwrap();
    assert_eq!(model.info().name, "sd2-tiny");
}
