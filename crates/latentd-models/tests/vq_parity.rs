//! `VQModel` against diffusers on the tiny LDM fixtures.

mod common;

use candle_core::{DType, Device, Tensor};
use latentd_models::{Error, VQModel, VQModelConfig};

use common::{config_path, get, max_abs_diff, refs, weights};

/// Float32 tolerance on intermediate tensors (DESIGN.md, section 6).
const TOLERANCE: f32 = 1e-4;

const FIXTURES: [&str; 2] = ["ldm-tiny", "ldm-sr-tiny"];

fn load(model: &str) -> VQModel {
    let cfg = VQModelConfig::from_file(config_path(model, "vqvae")).unwrap();
    VQModel::new(weights(model, "vqvae"), &cfg).unwrap()
}

/// Reference indices (int64) as the `u32` the model returns.
fn indices_u32(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::U32).unwrap().to_vec1::<u32>().unwrap()
}

fn assert_close(model: &str, what: &str, got: &Tensor, want: &Tensor) {
    let err = max_abs_diff(got, want);
    println!("{model} {what}: max abs error {err:e}");
    assert!(
        err <= TOLERANCE,
        "{model} {what}: max abs error {err} > {TOLERANCE}"
    );
}

/// `encode(x).latents`, `quantize(latents)` (values and indices), and the
/// default (quantizing) `decode` of diffusers.
#[test]
fn encode_quantize_decode_match_diffusers() {
    for model in FIXTURES {
        let vq = load(model);
        let refs = refs(model);

        let latents = vq.encode(get(&refs, "vq.encode.images")).unwrap();
        assert_close(model, "encode", &latents, get(&refs, "vq.encode.latents"));

        let (quantized, indices) = vq.quantize(get(&refs, "vq.encode.latents")).unwrap();
        assert_close(model, "quantize", &quantized, get(&refs, "vq.quantized"));
        assert_eq!(indices.dims(), get(&refs, "vq.indices").dims());
        assert_eq!(
            indices.to_vec1::<u32>().unwrap(),
            indices_u32(get(&refs, "vq.indices")),
            "{model}: codebook indices of the reference latents"
        );
        // Our own latents land on the same codes (the fixture's codes are well separated).
        let (_, own) = vq.quantize(&latents).unwrap();
        assert_eq!(
            own.to_vec1::<u32>().unwrap(),
            indices_u32(get(&refs, "vq.indices")),
            "{model}: codebook indices of our latents"
        );

        let dec_latents = get(&refs, "vq.decode.latents");
        let (_, dec_indices) = vq.quantize(dec_latents).unwrap();
        assert_eq!(
            dec_indices.to_vec1::<u32>().unwrap(),
            indices_u32(get(&refs, "vq.decode.indices")),
            "{model}: codebook indices of the decode latents"
        );
        let images = vq.decode(dec_latents).unwrap();
        assert_close(model, "decode", &images, get(&refs, "vq.decode.images"));
    }
}

/// `decode(latents, force_not_quantize=True)`.
#[test]
fn unquantized_decode_matches_diffusers() {
    for model in FIXTURES {
        let vq = load(model);
        let refs = refs(model);
        let images = vq
            .decode_with(get(&refs, "vq.decode.latents"), true)
            .unwrap();
        assert_close(
            model,
            "decode unquantized",
            &images,
            get(&refs, "vq.decode_unquantized.images"),
        );
        // Quantizing explicitly is the default.
        let quantized = vq
            .decode_with(get(&refs, "vq.decode.latents"), false)
            .unwrap();
        assert_close(
            model,
            "decode_with(false)",
            &quantized,
            get(&refs, "vq.decode.images"),
        );
    }
}

/// Decoding the reference codebook indices (int64, flat) gives the quantizing decode.
#[test]
fn decode_indices_matches_quantized_decode() {
    for model in FIXTURES {
        let vq = load(model);
        let refs = refs(model);
        let (b, _, h, w) = get(&refs, "vq.decode.latents").dims4().unwrap();
        let images = vq
            .decode_indices(get(&refs, "vq.decode.indices"), (b, h, w))
            .unwrap();
        assert_close(
            model,
            "decode_indices",
            &images,
            get(&refs, "vq.decode.images"),
        );
    }
}

/// The fixture's config holds only the keys CompVis' files hold: the rest take
/// diffusers' defaults.
#[test]
fn fixture_config_takes_diffusers_defaults() {
    let cfg = VQModelConfig::from_file(config_path("ldm-tiny", "vqvae")).unwrap();
    assert_eq!(cfg.scaling_factor, 0.18215);
    assert_eq!(cfg.norm_type, "group");
    assert!(cfg.mid_block_add_attention);
    assert!(!cfg.lookup_from_codebook && !cfg.force_upcast);
    assert_eq!((cfg.num_vq_embeddings, cfg.embed_dim()), (32, 3));
    assert_eq!(cfg.downsampling_factor(), 4);
    let vq = load("ldm-tiny");
    assert_eq!(vq.quantizer().codebook().dims(), &[32, 3]);
}

#[test]
fn bad_inputs_are_errors() {
    let vq = load("ldm-tiny");
    let dev = Device::Cpu;
    let invalid = |r: latentd_models::Result<Tensor>| matches!(r, Err(Error::InvalidArgument(_)));
    let wrong_channels = Tensor::zeros((1, 4, 8, 8), DType::F32, &dev).unwrap();
    assert!(invalid(vq.decode(&wrong_channels)));
    assert!(invalid(vq.encode(&wrong_channels)));
    let wrong_dtype = Tensor::zeros((1, 3, 8, 8), DType::F64, &dev).unwrap();
    assert!(invalid(vq.decode(&wrong_dtype)));
    assert!(vq.quantize(&wrong_dtype).is_err());
    let out_of_range = Tensor::new(&[32u32], &dev).unwrap();
    assert!(invalid(vq.decode_indices(&out_of_range, (1, 1, 1))));
    let too_few = Tensor::new(&[1u32, 2], &dev).unwrap();
    assert!(invalid(vq.decode_indices(&too_few, (1, 1, 3))));

    // A lookup_from_codebook model reads unquantized input as indices.
    let mut cfg = VQModelConfig::from_file(config_path("ldm-tiny", "vqvae")).unwrap();
    cfg.lookup_from_codebook = true;
    let lookup = VQModel::new(weights("ldm-tiny", "vqvae"), &cfg).unwrap();
    let latents = Tensor::zeros((1, 3, 2, 2), DType::F32, &dev).unwrap();
    assert!(invalid(lookup.decode_with(&latents, true)));
    assert!(lookup.decode(&latents).is_ok());
}

#[test]
fn unsupported_config_names_the_key() {
    let tmp = tempfile::Builder::new()
        .prefix("latentd-vq-config-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let path = dir.join("config.json");
    std::fs::write(&path, r#"{"norm_type": "spatial"}"#).unwrap();
    match VQModelConfig::from_file(&path) {
        Err(Error::UnsupportedConfig { path: p, key, .. }) => {
            assert_eq!(key, "norm_type");
            assert_eq!(p, path);
        }
        other => panic!("{other:?}"),
    }
}
