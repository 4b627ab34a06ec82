//! BERT tokenizer and LDM-BERT against the diffusers / transformers references of the
//! `ldm-text-tiny` fixture (tests/fixtures/FORMAT.md, /work/notes/ldm-fixtures-spec.md):
//! `text.prompts`, `text.input_ids` `[P, 77]` (`tokenizer(prompts, padding="max_length",
//! max_length=77, truncation=True)`) and `text.embeddings` `[P, 77, 32]` (`bert(ids)[0]`).

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use latentd_models::text::{BertTokenizer, LdmBertConfig, LdmBertModel, LDM_MAX_LENGTH};
use latentd_models::Error;
use serde_json::Value;

/// Tolerance on float32 intermediate tensors (DESIGN.md, section 6).
const EMBEDDING_TOLERANCE: f32 = 1e-4;
const FIXTURE: &str = "ldm-text-tiny";

fn component(name: &str) -> PathBuf {
    common::fixtures().join(FIXTURE).join(name)
}

struct TextRefs {
    prompts: Vec<String>,
    input_ids: Vec<Vec<u32>>,
    input_ids_tensor: Tensor,
    embeddings: Tensor,
}

fn text_refs() -> TextRefs {
    let json: Value = common::read_json(&format!("{FIXTURE}.json"));
    let prompts = json["text"]["prompts"]
        .as_array()
        .expect("text.prompts is a list")
        .iter()
        .map(|p| p.as_str().expect("prompts are strings").to_owned())
        .collect();
    let tensors = common::refs(FIXTURE);
    let input_ids_tensor = common::get(&tensors, "text.input_ids")
        .to_dtype(DType::U32)
        .unwrap();
    let input_ids = input_ids_tensor.to_vec2::<u32>().unwrap();
    TextRefs {
        prompts,
        input_ids,
        input_ids_tensor,
        embeddings: common::get(&tensors, "text.embeddings").clone(),
    }
}

fn tokenizer() -> BertTokenizer {
    BertTokenizer::from_dir(&component("tokenizer")).unwrap()
}

fn model() -> LdmBertModel {
    let dir = component("bert");
    let cfg = LdmBertConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = [dir.join("model.safetensors")];
    // SAFETY: the fixture files are not modified while the tests run.
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&weights, DType::F32, &Device::Cpu) }.unwrap();
    LdmBertModel::new(vb, &cfg).unwrap()
}

/// The prompts whose ids differ from the references, with what we produce.
fn mismatches(tokenizer: &BertTokenizer, refs: &TextRefs) -> Vec<String> {
    refs.prompts
        .iter()
        .zip(&refs.input_ids)
        .filter_map(|(prompt, want)| {
            let got = tokenizer.encode(prompt).unwrap();
            (&got != want).then(|| format!("{prompt:?}:\n  got  {got:?}\n  want {want:?}"))
        })
        .collect()
}

#[test]
fn token_ids_match_transformers() {
    let refs = text_refs();
    assert_eq!(refs.input_ids.len(), refs.prompts.len());
    assert!(refs.prompts.len() >= 6, "too few prompts");
    let tokenizer = tokenizer();
    assert_eq!(tokenizer.max_length(), LDM_MAX_LENGTH);
    assert_eq!(refs.input_ids[0].len(), LDM_MAX_LENGTH);
    assert_eq!(
        (tokenizer.cls_id(), tokenizer.sep_id(), tokenizer.pad_id()),
        (2, 3, 0)
    );
    assert_eq!(mismatches(&tokenizer, &refs), Vec::<String>::new());
}

#[test]
fn references_exercise_unknown_words_and_truncation() {
    let refs = text_refs();
    let tokenizer = tokenizer();
    let unk = tokenizer.token_to_id("[UNK]").unwrap();
    assert!(refs.input_ids.iter().any(|ids| ids.contains(&unk)));
    let mut truncated = 0;
    for (prompt, want) in refs.prompts.iter().zip(&refs.input_ids) {
        let count = tokenizer.count_tokens(prompt).unwrap();
        let sep_at = (count + 1).min(LDM_MAX_LENGTH - 1);
        assert_eq!(want[sep_at], tokenizer.sep_id(), "{prompt:?}");
        assert!(want[sep_at + 1..]
            .iter()
            .all(|&id| id == tokenizer.pad_id()));
        truncated += usize::from(count > LDM_MAX_LENGTH - 2);
    }
    assert!(truncated >= 1, "no prompt longer than the context");
    let vocab_lines = std::fs::read_to_string(component("tokenizer/vocab.txt")).unwrap();
    assert_eq!(tokenizer.vocab_size(), vocab_lines.lines().count());
}

/// The same vocabulary saved as `tokenizer.json` (the layout transformers' `save_pretrained`
/// writes) gives the same ids as `vocab.txt`.
#[test]
fn tokenizer_json_and_vocab_txt_agree() {
    let source = component("tokenizer");
    let vocab = std::fs::read_to_string(source.join("vocab.txt")).unwrap();
    let vocab: serde_json::Map<String, Value> = vocab
        .lines()
        .enumerate()
        .map(|(id, token)| (token.trim_end().to_owned(), Value::from(id)))
        .collect();
    let special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let added: Vec<Value> = special
        .iter()
        .map(|token| {
            serde_json::json!({
                "id": vocab[*token], "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            })
        })
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing"},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab}
    });
    let dir = temp_dir("tokenizer-json");
    std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).unwrap();
    std::fs::copy(
        source.join("tokenizer_config.json"),
        dir.path().join("tokenizer_config.json"),
    )
    .unwrap();
    let from_json = BertTokenizer::from_dir(dir.path()).unwrap();
    let from_txt = tokenizer();
    let refs = text_refs();
    assert_eq!(mismatches(&from_json, &refs), Vec::<String>::new());
    let extra = [
        "Ünïcödé façade, naïve!",
        "[CLS] [SEP] [PAD] [UNK] x",
        "東京タワー and 123,456.78",
        "\u{7}bell\u{feff}bom",
    ];
    for text in extra {
        assert_eq!(
            from_json.encode(text).unwrap(),
            from_txt.encode(text).unwrap(),
            "{text:?}"
        );
    }
}

/// A fresh empty folder, removed when dropped.
fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("latentd-ldm-bert-{name}-"))
        .tempdir()
        .unwrap()
}

#[test]
fn embeddings_match_diffusers() {
    let refs = text_refs();
    let model = model();
    assert_eq!(model.hidden_size(), refs.embeddings.dims()[2]);
    let got = model.forward(&refs.input_ids_tensor).unwrap();
    let error = common::max_abs_diff(&got, &refs.embeddings);
    println!("{FIXTURE}: LDM-BERT embeddings max abs error {error:e}");
    assert!(error <= EMBEDDING_TOLERANCE, "{error}");
}

/// Tokenizer and encoder together, one prompt at a time, as the pipeline runs them.
#[test]
fn tokenizer_then_encoder_matches_per_prompt() {
    let refs = text_refs();
    let (tokenizer, model) = (tokenizer(), model());
    let mut worst = 0f32;
    for (i, prompt) in refs.prompts.iter().enumerate() {
        let ids = tokenizer.encode(prompt).unwrap();
        let ids = Tensor::from_vec(ids, (1, LDM_MAX_LENGTH), &Device::Cpu).unwrap();
        let got = model.forward(&ids).unwrap();
        let want = refs.embeddings.narrow(0, i, 1).unwrap();
        worst = worst.max(common::max_abs_diff(&got, &want));
    }
    println!("{FIXTURE}: per-prompt embeddings max abs error {worst:e}");
    assert!(worst <= EMBEDDING_TOLERANCE, "{worst}");
}

#[test]
fn sequences_longer_than_the_position_table_are_errors() {
    let model = model();
    assert_eq!(model.max_position_embeddings(), 77);
    let ids = Tensor::zeros((1, 78), DType::U32, &Device::Cpu).unwrap();
    let err = model.forward(&ids).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let ids = Tensor::full(model.vocab_size() as u32, (1, 4), &Device::Cpu).unwrap();
    assert!(matches!(
        model.forward(&ids),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn fixture_config_reads_as_diffusers_does() {
    let cfg = LdmBertConfig::from_file(&component("bert/config.json")).unwrap();
    assert_eq!((cfg.d_model, cfg.encoder_layers), (32, 2));
    assert_eq!((cfg.encoder_attention_heads, cfg.head_dim), (2, 16));
    assert_eq!((cfg.encoder_ffn_dim, cfg.max_position_embeddings), (37, 77));
    let vocab = std::fs::read_to_string(component("tokenizer/vocab.txt")).unwrap();
    assert_eq!(cfg.vocab_size, vocab.lines().count());
}
