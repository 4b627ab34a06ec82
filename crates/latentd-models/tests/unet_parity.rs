//! `UNet2DConditionModel` against diffusers on the tiny fixture models.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use latentd_models::{Error, UNet2DConditionConfig, UNet2DConditionModel};

use common::{config_path, get, max_abs_diff, refs, weights};

/// Float32 tolerance on intermediate tensors (DESIGN.md, section 6).
const TOLERANCE: f32 = 1e-4;

fn load(model: &str) -> UNet2DConditionModel {
    let cfg = UNet2DConditionConfig::from_file(config_path(model, "unet")).unwrap();
    UNet2DConditionModel::new(weights(model, "unet"), &cfg).unwrap()
}

fn check_against_diffusers(model: &str) {
    let unet = load(model);
    let refs = refs(model);
    // `unet.*`: 8x8 latents; `unet.odd.*`: 9x11 latents, which the downsamplings do not
    // divide, so the up path must upsample to each skip connection's size.
    for prefix in ["unet", "unet.odd"] {
        let out = unet
            .forward(
                get(&refs, &format!("{prefix}.sample")),
                get(&refs, &format!("{prefix}.timesteps")),
                get(&refs, &format!("{prefix}.context")),
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
fn sd1_tiny_matches_diffusers() {
    check_against_diffusers("sd1-tiny");
}

#[test]
fn sd2_tiny_matches_diffusers() {
    check_against_diffusers("sd2-tiny");
}

/// Rows at different timesteps in one call give what each row gives alone.
#[test]
fn batched_rows_equal_rows_alone() {
    let unet = load("sd1-tiny");
    let refs = refs("sd1-tiny");
    let (sample, timesteps, context) = (
        get(&refs, "unet.sample"),
        get(&refs, "unet.timesteps"),
        get(&refs, "unet.context"),
    );
    let batched = unet.forward(sample, timesteps, context).unwrap();
    for row in 0..sample.dim(0).unwrap() {
        let alone = unet
            .forward(
                &sample.i(row..row + 1).unwrap(),
                &timesteps.i(row..row + 1).unwrap(),
                &context.i(row..row + 1).unwrap(),
            )
            .unwrap();
        let err = max_abs_diff(&alone, &batched.i(row..row + 1).unwrap());
        println!("row {row}: batched vs alone {err:e}");
        assert!(err <= 1e-5, "row {row}: {err}");
    }
}

/// Latent sizes that are not multiples of the downsampling factor work, as in
/// diffusers (each upsampler resizes to its skip connection).
#[test]
fn odd_latent_size_keeps_the_input_shape() {
    let unet = load("sd1-tiny");
    let cfg = unet.config();
    let dev = Device::Cpu;
    let context_dim = cfg.context_dim().unwrap();
    for (h, w) in [(9, 11), (1, 1), (5, 3)] {
        let sample = Tensor::randn(0f32, 1., (2, cfg.in_channels, h, w), &dev).unwrap();
        let timesteps = Tensor::new(&[10f32, 900.5], &dev).unwrap();
        let context = Tensor::randn(0f32, 1., (2, 5, context_dim), &dev).unwrap();
        let out = unet.forward(&sample, &timesteps, &context).unwrap();
        assert_eq!(out.dims(), &[2, cfg.out_channels, h, w]);
    }
}

fn assert_invalid(result: latentd_models::Result<Tensor>, what: &str) {
    match result {
        Err(Error::InvalidArgument(msg)) => println!("{what}: {msg}"),
        other => panic!("{what}: expected InvalidArgument, got {other:?}"),
    }
}

/// Wrong shapes are errors, never panics.
#[test]
fn bad_inputs_are_errors() {
    let unet = load("sd1-tiny");
    let cfg = unet.config();
    let dev = Device::Cpu;
    let d = cfg.context_dim().unwrap();
    let c = cfg.in_channels;
    let randn = |shape: &[usize]| Tensor::randn(0f32, 1., shape, &dev).unwrap();
    let t2 = Tensor::new(&[1f32, 2.], &dev).unwrap();
    let ctx = randn(&[2, 3, d]);
    assert_invalid(
        unet.forward(&randn(&[2, c + 1, 8, 8]), &t2, &ctx),
        "channels",
    );
    assert_invalid(unet.forward(&randn(&[2, c, 8]), &t2, &ctx), "rank");
    assert_invalid(unet.forward(&randn(&[2, c, 0, 8]), &t2, &ctx), "empty");
    assert_invalid(
        unet.forward(&randn(&[2, c, 8, 8]), &t2, &randn(&[2, 3, d + 1])),
        "context width",
    );
    assert_invalid(
        unet.forward(&randn(&[2, c, 8, 8]), &t2, &randn(&[1, 3, d])),
        "context batch",
    );
    assert_invalid(
        unet.forward(
            &randn(&[2, c, 8, 8]),
            &Tensor::new(&[1f32], &dev).unwrap(),
            &ctx,
        ),
        "timesteps",
    );
    let f64_sample = randn(&[2, c, 8, 8]).to_dtype(DType::F64).unwrap();
    assert_invalid(unet.forward(&f64_sample, &t2, &ctx), "dtype");
}

/// Unsupported configuration values are reported with their key.
#[test]
fn unsupported_config_names_the_key() {
    let base = std::fs::read_to_string(config_path("sd1-tiny", "unet")).unwrap();
    let cases = [
        (
            "down_block_types",
            serde_json::json!(["AttnDownBlock2D", "DownBlock2D"]),
        ),
        ("class_embed_type", serde_json::json!("timestep")),
        ("addition_embed_type", serde_json::json!("text_time")),
        ("dual_cross_attention", serde_json::json!(true)),
        (
            "mid_block_type",
            serde_json::json!("UNetMidBlock2DSimpleCrossAttn"),
        ),
        ("only_cross_attention", serde_json::json!(true)),
    ];
    let tmp = tempfile::Builder::new()
        .prefix("latentd-unet-config-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    for (key, value) in cases {
        let mut json: serde_json::Value = serde_json::from_str(&base).unwrap();
        json[key] = value;
        let path = dir.join(format!("{key}.json"));
        std::fs::write(&path, json.to_string()).unwrap();
        match UNet2DConditionConfig::from_file(&path) {
            Err(Error::UnsupportedConfig {
                key: k, message, ..
            }) => {
                assert_eq!(k, key, "{message}");
            }
            other => panic!("{key}: expected UnsupportedConfig, got {other:?}"),
        }
    }
}

/// `attention_head_dim` means the number of heads unless `num_attention_heads`
/// is given, which then takes precedence.
#[test]
fn num_attention_heads_overrides_attention_head_dim() {
    let model = "sd1-tiny";
    let reference = load(model);
    let mut cfg = reference.config().clone();
    cfg.num_attention_heads = Some(cfg.attention_head_dim.clone());
    cfg.attention_head_dim = latentd_models::diffusers_config::PerBlock::Same(3);
    let unet = UNet2DConditionModel::new(weights(model, "unet"), &cfg).unwrap();
    let refs = refs(model);
    let args = (
        get(&refs, "unet.sample").i(0..1).unwrap(),
        get(&refs, "unet.timesteps").i(0..1).unwrap(),
        get(&refs, "unet.context").i(0..1).unwrap(),
    );
    let want = reference.forward(&args.0, &args.1, &args.2).unwrap();
    let got = unet.forward(&args.0, &args.1, &args.2).unwrap();
    assert_eq!(max_abs_diff(&got, &want), 0.0);
}

/// Missing keys take diffusers' defaults (SD 1.5's architecture).
#[test]
fn empty_config_has_diffusers_defaults() {
    let cfg: UNet2DConditionConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(cfg, UNet2DConditionConfig::default());
    assert_eq!(cfg.block_out_channels, vec![320, 640, 1280, 1280]);
    assert_eq!(cfg.context_dim().unwrap(), 1280);
    assert!(cfg.flip_sin_to_cos);
}
