//! `AutoencoderKL` against diffusers on the tiny fixture models.

mod common;

use candle_core::{DType, Device, Tensor};
use latentd_models::{AutoencoderKL, AutoencoderKLConfig, DiagonalGaussian, Error, TorchRng};

use common::{config_path, get, max_abs_diff, refs, weights};

/// Float32 tolerance on intermediate tensors (DESIGN.md, section 6).
const TOLERANCE: f32 = 1e-4;

fn load(model: &str) -> AutoencoderKL {
    let cfg = AutoencoderKLConfig::from_file(config_path(model, "vae")).unwrap();
    AutoencoderKL::new(weights(model, "vae"), &cfg).unwrap()
}

fn check_against_diffusers(model: &str) {
    let vae = load(model);
    let refs = refs(model);

    let images = vae.decode(get(&refs, "vae.decode.latents")).unwrap();
    let err = max_abs_diff(&images, get(&refs, "vae.decode.images"));
    println!("{model} decode: max abs error {err:e}");
    assert!(err <= TOLERANCE, "{model} decode: {err}");

    let dist = vae.encode(get(&refs, "vae.encode.images")).unwrap();
    let err_mean = max_abs_diff(&dist.mean, get(&refs, "vae.encode.mean"));
    let err_std = max_abs_diff(&dist.std, get(&refs, "vae.encode.std"));
    println!("{model} encode: mean {err_mean:e}, std {err_std:e}");
    assert!(err_mean <= TOLERANCE, "{model} encode mean: {err_mean}");
    assert!(err_std <= TOLERANCE, "{model} encode std: {err_std}");
}

#[test]
fn sd1_tiny_matches_diffusers() {
    check_against_diffusers("sd1-tiny");
}

#[test]
fn sd2_tiny_matches_diffusers() {
    check_against_diffusers("sd2-tiny");
}

/// Mid-block attention weights under diffusers' legacy names (`query`, `key`,
/// `value`, `proj_attn`) load and give the same result.
#[test]
fn legacy_attention_names_load() {
    let model = "sd1-tiny";
    let path = common::fixtures()
        .join(model)
        .join("vae/diffusion_pytorch_model.safetensors");
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let legacy: std::collections::HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(name, t)| {
            let name = name
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            (name, t)
        })
        .collect();
    assert!(legacy.keys().any(|k| k.contains(".proj_attn.")));
    let vb = candle_nn::VarBuilder::from_tensors(legacy, DType::F32, &Device::Cpu);
    let cfg = AutoencoderKLConfig::from_file(config_path(model, "vae")).unwrap();
    let old = AutoencoderKL::new(vb, &cfg).unwrap();
    let latents = get(&refs(model), "vae.decode.latents").clone();
    let want = load(model).decode(&latents).unwrap();
    assert_eq!(max_abs_diff(&old.decode(&latents).unwrap(), &want), 0.0);
}

/// Sizes follow the downsampling factor both ways, also for odd image sizes.
#[test]
fn shapes_follow_the_downsampling_factor() {
    let vae = load("sd1-tiny");
    let cfg = vae.config();
    let f = vae.downsampling_factor();
    assert_eq!(f, 1 << (cfg.block_out_channels.len() - 1));
    let dev = Device::Cpu;
    let latents = Tensor::randn(0f32, 1., (1, cfg.latent_channels, 3, 5), &dev).unwrap();
    let images = vae.decode(&latents).unwrap();
    assert_eq!(images.dims(), &[1, cfg.out_channels, 3 * f, 5 * f]);
    let images = Tensor::randn(0f32, 1., (1, cfg.in_channels, 4 * f, 2 * f + 1), &dev).unwrap();
    let dist = vae.encode(&images).unwrap();
    // The encoder pads bottom/right by one before each stride-2 conv: floor(W / f).
    assert_eq!(dist.mean.dims(), &[1, cfg.latent_channels, 4, 2]);
    assert_eq!(dist.std.dims(), dist.mean.dims());
}

/// `sample_with` is `mean + std * noise` and checks the noise's shape; `sample`
/// draws that noise from a `TorchRng`.
#[test]
fn gaussian_sample_with_noise() {
    let dev = Device::Cpu;
    let moments = Tensor::new(&[[[[1f32]], [[2f32]], [[0f32]], [[-50f32]]]], &dev).unwrap();
    let dist = DiagonalGaussian::from_moments(&moments).unwrap();
    // logvar is clamped to [-30, 20].
    let logvar = dist.logvar.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(logvar, vec![0.0, -30.0]);
    let noise = Tensor::new(&[[[[0.5f32]], [[1.0f32]]]], &dev).unwrap();
    let x = dist.sample_with(&noise).unwrap().flatten_all().unwrap();
    let x = x.to_vec1::<f32>().unwrap();
    assert!((x[0] - 1.5).abs() < 1e-6 && (x[1] - (2.0 + (-15f32).exp())).abs() < 1e-6);
    let drawn = dist.sample(&mut TorchRng::new(7)).unwrap();
    let noise = TorchRng::new(7).randn_tensor(&[1, 2, 1, 1], &dev).unwrap();
    assert_eq!(
        max_abs_diff(&drawn, &dist.sample_with(&noise).unwrap()),
        0.0
    );
    let bad = Tensor::zeros((1, 3, 1, 1), DType::F32, &dev).unwrap();
    assert!(matches!(
        dist.sample_with(&bad),
        Err(Error::InvalidArgument(_))
    ));
}

/// Wrong shapes are errors, never panics.
#[test]
fn bad_inputs_are_errors() {
    let vae = load("sd1-tiny");
    let dev = Device::Cpu;
    let randn = |shape: &[usize]| Tensor::randn(0f32, 1., shape, &dev).unwrap();
    let cases = [
        ("decode channels", vae.decode(&randn(&[1, 3, 4, 4])).err()),
        ("decode rank", vae.decode(&randn(&[4, 4, 4])).err()),
        ("encode channels", vae.encode(&randn(&[1, 4, 8, 8])).err()),
        ("encode empty", vae.encode(&randn(&[1, 3, 0, 8])).err()),
        ("encode too small", vae.encode(&randn(&[1, 3, 1, 1])).err()),
    ];
    for (what, err) in cases {
        match err {
            Some(Error::InvalidArgument(msg)) => println!("{what}: {msg}"),
            other => panic!("{what}: expected InvalidArgument, got {other:?}"),
        }
    }
}

/// Unsupported configuration values are reported with their key.
#[test]
fn unsupported_config_names_the_key() {
    let base = std::fs::read_to_string(config_path("sd1-tiny", "vae")).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("latentd-vae-config-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    for (key, value) in [
        (
            "down_block_types",
            serde_json::json!(["AttnDownEncoderBlock2D"]),
        ),
        ("act_fn", serde_json::json!("gelu")),
    ] {
        let mut json: serde_json::Value = serde_json::from_str(&base).unwrap();
        json[key] = value;
        let path = dir.join(format!("{key}.json"));
        std::fs::write(&path, json.to_string()).unwrap();
        match AutoencoderKLConfig::from_file(&path) {
            Err(Error::UnsupportedConfig { key: k, .. }) => assert_eq!(k, key),
            other => panic!("{key}: expected UnsupportedConfig, got {other:?}"),
        }
    }
}
