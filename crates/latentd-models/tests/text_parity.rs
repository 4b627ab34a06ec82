//! CLIP tokenizer and text encoder against transformers / diffusers references
//! (tests/fixtures/FORMAT.md, and tests/data/clip_tokenizer_kinds.py next to this file).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use latentd_models::text::{ClipTextConfig, ClipTextModel, ClipTokenizer, ClipTokenizerKind};
use serde_json::Value;

/// Tolerance on float32 intermediate tensors (DESIGN.md, section 6).
const EMBEDDING_TOLERANCE: f32 = 1e-4;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    repo().join("tests/fixtures")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The full CLIP vocabulary with the given pad token.
fn full_clip(pad: &str) -> ClipTokenizer {
    let dir = repo().join("tests/data/clip");
    ClipTokenizer::from_vocab_merges(&dir.join("vocab.json"), &dir.join("merges.txt"), pad, 77)
        .unwrap()
}

fn ids(value: &Value) -> Vec<u32> {
    let list = value.as_array().unwrap();
    list.iter()
        .map(|v| u32::try_from(v.as_u64().unwrap()).unwrap())
        .collect()
}

/// Encodes every case's text and returns the texts whose ids differ from `case[key]`.
fn mismatches(tokenizer: &ClipTokenizer, cases: &[Value], key: &str) -> Vec<String> {
    cases
        .iter()
        .filter_map(|case| {
            let text = case["text"].as_str().unwrap();
            let got = tokenizer.encode(text).unwrap();
            (got != ids(&case[key])).then(|| format!("{text:?}: got {got:?}"))
        })
        .collect()
}

#[test]
fn fast_kind_matches_fixture_tokenizer_refs() {
    let refs = read_json(&fixtures().join("refs/clip_tokenizer.json"));
    let cases = refs["cases"].as_array().unwrap();
    assert!(cases.len() >= 40);
    for (pad, key) in [("<|endoftext|>", "ids_eos_pad"), ("!", "ids_bang_pad")] {
        let tokenizer = full_clip(pad).with_kind(ClipTokenizerKind::Fast);
        assert_eq!(
            mismatches(&tokenizer, cases, key),
            Vec::<String>::new(),
            "{key}"
        );
    }
}

#[test]
fn both_kinds_match_their_transformers_tokenizer() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/clip_tokenizer_kinds.json");
    let refs = read_json(&path);
    let cases = refs["cases"].as_array().unwrap();
    let kinds = [
        (ClipTokenizerKind::Slow, "slow"),
        (ClipTokenizerKind::Fast, "fast"),
    ];
    let mut differing = 0;
    for (kind, name) in kinds {
        for (pad, suffix) in [("<|endoftext|>", "eos_pad"), ("!", "bang_pad")] {
            let key = format!("{name}_{suffix}");
            let tokenizer = full_clip(pad).with_kind(kind);
            assert_eq!(
                mismatches(&tokenizer, cases, &key),
                Vec::<String>::new(),
                "{key}"
            );
        }
    }
    for case in cases {
        differing += usize::from(case["slow_eos_pad"] != case["fast_eos_pad"]);
    }
    // The references must exercise the differences between the kinds.
    assert!(differing >= 10, "{differing}");
}

#[test]
fn count_tokens_agrees_with_encode() {
    let tokenizer = full_clip("!");
    let refs = read_json(&fixtures().join("refs/clip_tokenizer.json"));
    let mut too_long = 0;
    for case in refs["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let count = tokenizer.count_tokens(text).unwrap();
        let encoded = tokenizer.encode(text).unwrap();
        assert_eq!(encoded.len(), tokenizer.max_length());
        let eos_at = (count + 1).min(tokenizer.max_length() - 1);
        assert_eq!(encoded[eos_at], 49407, "{text:?}");
        assert!(encoded[eos_at + 1..]
            .iter()
            .all(|&id| id == tokenizer.pad_id()));
        too_long += usize::from(count > tokenizer.max_length() - 2);
    }
    assert_eq!(tokenizer.count_tokens("a photo of a cat").unwrap(), 5);
    assert!(
        too_long >= 2,
        "the references hold prompts longer than the context"
    );
}

/// One tiny pipeline's text references: `text.input_ids` `[P, 77]`, `text.embeddings`.
struct TextRefs {
    prompts: Vec<String>,
    input_ids: Tensor,
    embeddings: Tensor,
}

fn text_refs(name: &str) -> TextRefs {
    let json = read_json(&fixtures().join(format!("refs/{name}.json")));
    let prompts = json["text"]["prompts"].as_array().unwrap();
    let prompts = prompts
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    let tensors = fixtures().join(format!("refs/{name}.safetensors"));
    let mut tensors = candle_core::safetensors::load(tensors, &Device::Cpu).unwrap();
    TextRefs {
        prompts,
        input_ids: tensors.remove("text.input_ids").unwrap(),
        embeddings: tensors.remove("text.embeddings").unwrap(),
    }
}

fn check_tiny_tokenizer(name: &str, pad_id: u32) {
    let tokenizer = ClipTokenizer::from_dir(&fixtures().join(name).join("tokenizer")).unwrap();
    assert_eq!(tokenizer.kind(), ClipTokenizerKind::Fast);
    assert_eq!(tokenizer.max_length(), 77);
    assert_eq!(tokenizer.pad_id(), pad_id);
    let refs = text_refs(name);
    let want: Vec<Vec<i64>> = refs.input_ids.to_vec2().unwrap();
    assert_eq!(want.len(), refs.prompts.len());
    for (prompt, want) in refs.prompts.iter().zip(want) {
        let got: Vec<i64> = tokenizer
            .encode(prompt)
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect();
        assert_eq!(got, want, "{name}: {prompt:?}");
    }
}

#[test]
fn sd1_tiny_tokenizer_matches_refs() {
    check_tiny_tokenizer("sd1-tiny", 1013);
}

#[test]
fn sd2_tiny_tokenizer_matches_refs() {
    check_tiny_tokenizer("sd2-tiny", 0);
}

fn load_text_encoder(name: &str, key_prefix: &str) -> ClipTextModel {
    let dir = fixtures().join(name).join("text_encoder");
    let cfg = ClipTextConfig::from_file(&dir.join("config.json")).unwrap();
    let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu);
    let tensors = tensors
        .unwrap()
        .into_iter()
        .map(|(key, tensor)| {
            (
                format!("{key_prefix}{key}"),
                tensor.to_dtype(DType::F32).unwrap(),
            )
        })
        .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    ClipTextModel::new(vb, &cfg).unwrap()
}

/// Runs the fixture's text encoder on the reference ids; returns the max abs error.
fn text_encoder_error(name: &str) -> f32 {
    let dir = fixtures().join(name).join("text_encoder");
    let cfg = ClipTextConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = [dir.join("model.safetensors")];
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&weights, DType::F32, &Device::Cpu) }.unwrap();
    let model = ClipTextModel::new(vb, &cfg).unwrap();
    let refs = text_refs(name);
    let input_ids = refs.input_ids.to_dtype(DType::U32).unwrap();
    let got = model.forward(&input_ids).unwrap();
    assert_eq!(got.dims(), refs.embeddings.dims());
    assert_eq!(model.hidden_size(), refs.embeddings.dims()[2]);
    let error = max_abs_diff(&got, &refs.embeddings);
    println!("{name}: text embeddings max abs error {error:e}");
    error
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b).unwrap().abs().unwrap();
    diff.max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn sd1_tiny_text_encoder_matches_refs() {
    let error = text_encoder_error("sd1-tiny");
    assert!(error <= EMBEDDING_TOLERANCE, "{error}");
}

#[test]
fn sd2_tiny_text_encoder_matches_refs() {
    let error = text_encoder_error("sd2-tiny");
    assert!(error <= EMBEDDING_TOLERANCE, "{error}");
}

/// transformers 4 saved `text_model.`-prefixed keys (real SD checkpoints), transformers 5
/// (the fixtures) does not: both layouts give the same model.
#[test]
fn text_encoder_loads_both_key_layouts() {
    let input_ids = text_refs("sd1-tiny")
        .input_ids
        .to_dtype(DType::U32)
        .unwrap();
    let plain = load_text_encoder("sd1-tiny", "")
        .forward(&input_ids)
        .unwrap();
    let prefixed = load_text_encoder("sd1-tiny", "text_model.")
        .forward(&input_ids)
        .unwrap();
    assert_eq!(max_abs_diff(&plain, &prefixed), 0.0);
}
