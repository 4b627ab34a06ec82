//! `UNet2DModel` against diffusers on the tiny LDM fixtures.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use latentd_models::{Error, UNet2DConfig, UNet2DModel};

use common::{config_path, get, max_abs_diff, refs, weights};

/// Float32 tolerance on intermediate tensors (DESIGN.md, section 6).
const TOLERANCE: f32 = 1e-4;

fn load(model: &str) -> UNet2DModel {
    let cfg = UNet2DConfig::from_file(config_path(model, "unet")).unwrap();
    UNet2DModel::new(weights(model, "unet"), &cfg).unwrap()
}

fn check_against_diffusers(model: &str) {
    let unet = load(model);
    let refs = refs(model);
    // `unet.*`: 8x8, rows at timesteps 999, 500, 37.5, 1 (float32);
    // `unet.wide.*`: 8x12, int64 timesteps.
    for prefix in ["unet", "unet.wide"] {
        let out = unet
            .forward(
                get(&refs, &format!("{prefix}.sample")),
                get(&refs, &format!("{prefix}.timesteps")),
            )
            .unwrap();
        let err = max_abs_diff(&out, get(&refs, &format!("{prefix}.out")));
        println!("{model} {prefix}: max abs error {err:e}");
        assert!(
            err <= TOLERANCE,
            "{model} {prefix}: max abs error {err} > {TOLERANCE}"
        );
    }
}

#[test]
fn ldm_tiny_matches_diffusers() {
    check_against_diffusers("ldm-tiny");
}

#[test]
fn ldm_sr_tiny_matches_diffusers() {
    check_against_diffusers("ldm-sr-tiny");
}

/// Rows at different timesteps in one call give what each row gives alone.
#[test]
fn batched_rows_equal_rows_alone() {
    for model in ["ldm-tiny", "ldm-sr-tiny"] {
        let unet = load(model);
        let refs = refs(model);
        let (sample, timesteps) = (get(&refs, "unet.sample"), get(&refs, "unet.timesteps"));
        let batched = unet.forward(sample, timesteps).unwrap();
        for row in 0..sample.dim(0).unwrap() {
            let alone = unet
                .forward(
                    &sample.i(row..row + 1).unwrap(),
                    &timesteps.i(row..row + 1).unwrap(),
                )
                .unwrap();
            let err = max_abs_diff(&alone, &batched.i(row..row + 1).unwrap());
            println!("{model} row {row}: batched vs alone {err:e}");
            assert!(err <= 1e-5, "{model} row {row}: {err}");
        }
    }
}

#[test]
fn fixture_config_resolves() {
    let cfg = UNet2DConfig::from_file(config_path("ldm-sr-tiny", "unet")).unwrap();
    assert_eq!((cfg.in_channels, cfg.out_channels), (6, 3));
    assert_eq!(cfg.attention_head_dim, Some(8));
    assert_eq!(cfg.downsampling_factor(), 4);
}

#[test]
fn bad_inputs_are_errors() {
    let unet = load("ldm-tiny");
    let dev = Device::Cpu;
    let t = |n: usize| Tensor::ones(n, DType::F32, &dev).unwrap();
    let invalid = |r: latentd_models::Result<Tensor>| matches!(r, Err(Error::InvalidArgument(_)));
    // Sides must be multiples of 4 (plain 2x upsampling, as in diffusers).
    let odd = Tensor::zeros((1, 3, 9, 8), DType::F32, &dev).unwrap();
    assert!(invalid(unet.forward(&odd, &t(1))));
    let ok = Tensor::zeros((2, 3, 4, 12), DType::F32, &dev).unwrap();
    assert_eq!(unet.forward(&ok, &t(2)).unwrap().dims(), &[2, 3, 4, 12]);
    assert!(invalid(unet.forward(&ok, &t(1))));
    let scalar = Tensor::new(1f32, &dev).unwrap();
    assert!(invalid(unet.forward(&ok, &scalar)));
    let wrong_channels = Tensor::zeros((1, 6, 8, 8), DType::F32, &dev).unwrap();
    assert!(invalid(unet.forward(&wrong_channels, &t(1))));
    let wrong_dtype = Tensor::zeros((1, 3, 8, 8), DType::F64, &dev).unwrap();
    assert!(invalid(unet.forward(&wrong_dtype, &t(1))));
}

#[test]
fn unsupported_config_names_the_key() {
    let tmp = tempfile::Builder::new()
        .prefix("latentd-unet2d-config-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let path = dir.join("config.json");
    std::fs::write(&path, r#"{"class_embed_type": "timestep"}"#).unwrap();
    match UNet2DConfig::from_file(&path) {
        Err(Error::UnsupportedConfig { path: p, key, .. }) => {
            assert_eq!(key, "class_embed_type");
            assert_eq!(p, path);
        }
        other => panic!("{other:?}"),
    }
}
