//! BERT's WordPiece tokenizer as the CompVis LDM text-to-image pipeline calls it:
//! `tokenizer(prompt, padding="max_length", max_length=77, truncation=True)`.
//!
//! The pipeline is the one transformers 5's `BertTokenizer` builds on the `tokenizers`
//! library (the version diffusers runs with today, and the one the fixtures are made with):
//! - `BertNormalizer`: clean-up (control characters dropped, whitespace made a space), spaces
//!   around CJK ideographs (`tokenize_chinese_chars`), accent stripping (`strip_accents`,
//!   following `do_lower_case` when unset) and lower-casing (`do_lower_case`);
//! - `BertPreTokenizer`: split on whitespace and around each punctuation character;
//! - `WordPiece` with the configured unknown token, `##` continuations and at most 100
//!   characters per word;
//! - `[CLS] ... [SEP]` around the text, which is truncated to `max_length - 2` tokens, then
//!   padding with the pad token to `max_length`.
//!
//! Special and added tokens are matched in the text first, with their `lstrip` / `rstrip` /
//! `single_word` / `normalized` flags, as `tokenizers` does.
//!
//! Like transformers 5, only the vocabulary (and, for legacy folders, the added tokens) is
//! read from `tokenizer.json`: the normalizer options and special tokens come from
//! `tokenizer_config.json` (then `special_tokens_map.json`), whatever the normalizer saved in
//! `tokenizer.json` says. `model_max_length` is not used: the pipeline passes `max_length`.

use std::fmt;
use std::path::{Path, PathBuf};

use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{AddedToken, Model, Tokenizer};

use super::bert_tokenizer_files::{
    read_tokenizer_json, read_vocab_txt, tokenizer_error, Named, Settings,
};
use crate::{Error, Result};

/// The context length of the LDM text-to-image pipeline (`max_length=77`).
pub const LDM_MAX_LENGTH: usize = 77;
/// `WordPiece`'s default: longer words become the unknown token.
pub(super) const MAX_INPUT_CHARS_PER_WORD: usize = 100;
/// The longest `max_length` accepted: padding to it cannot exhaust memory.
const MAX_MAX_LENGTH: usize = 1 << 16;

/// The normalizer options of `tokenizer_config.json`, with transformers' defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BertNormalization {
    /// `do_lower_case` (default true): lower-case the text.
    pub lowercase: bool,
    /// `tokenize_chinese_chars` (default true): split around each CJK ideograph.
    pub handle_chinese_chars: bool,
    /// `strip_accents` (default unset: strip when lower-casing).
    pub strip_accents: Option<bool>,
}

impl Default for BertNormalization {
    fn default() -> Self {
        Self {
            lowercase: true,
            handle_chinese_chars: true,
            strip_accents: None,
        }
    }
}

/// BERT's WordPiece tokenizer, producing the `input_ids` the LDM pipeline feeds LDM-BERT.
pub struct BertTokenizer {
    tokenizer: Tokenizer,
    normalization: BertNormalization,
    cls: u32,
    sep: u32,
    pad: u32,
    max_length: usize,
    source: PathBuf,
}

impl BertTokenizer {
    /// Loads a tokenizer folder: the vocabulary from `tokenizer.json` (its `WordPiece`
    /// model) when present, else from `vocab.txt` (one token a line, ids in line order);
    /// options and special tokens from `tokenizer_config.json`, `special_tokens_map.json`
    /// and `added_tokens.json` when present. Encodings have [`LDM_MAX_LENGTH`] tokens.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json_path = dir.join("tokenizer.json");
        let vocab_path = dir.join("vocab.txt");
        let (model, json_added, source) = if json_path.is_file() {
            let (model, added) = read_tokenizer_json(&json_path)?;
            (model, Some(added), json_path)
        } else if vocab_path.is_file() {
            (read_vocab_txt(&vocab_path)?, None, vocab_path)
        } else {
            return Err(tokenizer_error(
                dir,
                "no tokenizer.json and no vocab.txt".into(),
            ));
        };
        let settings = Settings::read(dir, json_added)?;
        Self::build(model, settings, source)
    }

    /// Builds a tokenizer from a `vocab.txt` alone, with transformers' default special
    /// tokens (`[UNK]`, `[SEP]`, `[PAD]`, `[CLS]`, `[MASK]`) and the given normalization.
    pub fn from_vocab_file(vocab: &Path, normalization: BertNormalization) -> Result<Self> {
        let settings = Settings {
            normalization,
            ..Settings::default()
        };
        Self::build(read_vocab_txt(vocab)?, settings, vocab.to_owned())
    }

    /// The same tokenizer with another context length (at least 2: `[CLS]` and `[SEP]`).
    pub fn with_max_length(mut self, max_length: usize) -> Result<Self> {
        if !(2..=MAX_MAX_LENGTH).contains(&max_length) {
            return Err(Error::InvalidArgument(format!(
                "max_length {max_length} is not in 2..={MAX_MAX_LENGTH}"
            )));
        }
        self.max_length = max_length;
        Ok(self)
    }

    fn build(mut model: WordPiece, settings: Settings, source: PathBuf) -> Result<Self> {
        if model.get_vocab_size() == 0 {
            return Err(tokenizer_error(&source, "the vocabulary is empty".into()));
        }
        let unk = settings.named_content(Named::Unk)?;
        if model.token_to_id(unk).is_none() {
            return Err(tokenizer_error(
                &source,
                format!("the unknown token {unk:?} is not in the vocabulary"),
            ));
        }
        // transformers 5 builds `WordPiece(vocab, unk_token=...)`: the other parameters take
        // their defaults, whatever a `tokenizer.json` says.
        model.unk_token = unk.to_owned();
        model.continuing_subword_prefix = "##".to_owned();
        model.max_input_chars_per_word = MAX_INPUT_CHARS_PER_WORD;
        let mut tokenizer = Tokenizer::new(model);
        let n = settings.normalization;
        tokenizer.with_normalizer(Some(BertNormalizer::new(
            true,
            n.handle_chinese_chars,
            n.strip_accents,
            n.lowercase,
        )));
        tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
        // transformers 5 (`TokenizersBackend.__init__`, then `_post_init`): the saved added
        // tokens in id order, then the special tokens not among them; then every special
        // token again as special (a no-op for those already there).
        let mut first: Vec<AddedToken> = settings.added.values().cloned().collect();
        let specials = settings.special_tokens();
        for token in &specials {
            if !first.iter().any(|t| t.content == token.content) {
                first.push(token.clone());
            }
        }
        tokenizer.add_tokens(&first);
        tokenizer.add_special_tokens(&specials);
        tokenizer.set_encode_special_tokens(settings.split_special_tokens);
        let id_of = |named: Named| -> Result<u32> {
            let content = settings.named_content(named)?;
            tokenizer.token_to_id(content).ok_or_else(|| {
                tokenizer_error(&source, format!("{} {content:?} has no id", named.key()))
            })
        };
        let (cls, sep, pad) = (id_of(Named::Cls)?, id_of(Named::Sep)?, id_of(Named::Pad)?);
        Ok(Self {
            tokenizer,
            normalization: settings.normalization,
            cls,
            sep,
            pad,
            max_length: LDM_MAX_LENGTH,
            source,
        })
    }

    /// Token ids of length [`max_length`](Self::max_length): `[CLS]`, the text's tokens
    /// (truncated to `max_length - 2`), `[SEP]`, then padding.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let content = self.content_ids(text)?;
        let kept = content.len().min(self.max_length - 2);
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.cls);
        ids.extend_from_slice(&content[..kept]);
        ids.push(self.sep);
        ids.resize(self.max_length, self.pad);
        Ok(ids)
    }

    /// Number of tokens the text has before truncation, `[CLS]` and `[SEP]` not counted (it
    /// fits when this is at most `max_length - 2`).
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.content_ids(text)?.len())
    }

    /// The text's tokens, without `[CLS]`, `[SEP]`, truncation or padding.
    pub fn content_ids(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| self.error(format!("cannot tokenize {text:?}: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The context length every encoding is padded or truncated to.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The id padding uses.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The id every encoding starts with.
    pub fn cls_id(&self) -> u32 {
        self.cls
    }

    /// The id that ends the text of every encoding.
    pub fn sep_id(&self) -> u32 {
        self.sep
    }

    /// Number of ids, added tokens included (the text encoder's `vocab_size` at least).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The id of a token (vocabulary or added), if any.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The normalizer options in use.
    pub fn normalization(&self) -> BertNormalization {
        self.normalization
    }

    fn error(&self, message: String) -> Error {
        tokenizer_error(&self.source, message)
    }
}

impl fmt::Debug for BertTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BertTokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("normalization", &self.normalization)
            .field("max_length", &self.max_length)
            .field("cls", &self.cls)
            .field("sep", &self.sep)
            .field("pad", &self.pad)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder holding the given files (unique per call: tests run in parallel),
    /// removed when dropped.
    fn folder(name: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("latentd-bert-{name}-"))
            .tempdir()
            .unwrap();
        for (file, text) in files {
            std::fs::write(dir.path().join(file), text).unwrap();
        }
        dir
    }

    /// ids: [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4, then the words.
    const VOCAB: &str = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nphoto\nof\ncat\n##s\n,\n!\n\
                         cafe\nun\n##believ\n##able\n[\n]\n東\nHello\n";

    fn tokenizer(files: &[(&str, &str)]) -> BertTokenizer {
        let mut all = vec![("vocab.txt", VOCAB)];
        all.extend_from_slice(files);
        BertTokenizer::from_dir(folder("tok", &all).path()).unwrap()
    }

    fn content(t: &BertTokenizer, text: &str) -> Vec<u32> {
        t.content_ids(text).unwrap()
    }

    #[test]
    fn encodes_with_cls_sep_truncation_and_padding() {
        let t = tokenizer(&[]).with_max_length(6).unwrap();
        assert_eq!(t.encode("a photo").unwrap(), [2, 5, 6, 3, 0, 0]);
        assert_eq!(t.encode("").unwrap(), [2, 3, 0, 0, 0, 0]);
        assert_eq!(t.encode("a photo of cats").unwrap(), [2, 5, 6, 7, 8, 3]);
        assert_eq!(t.count_tokens("a photo of cats").unwrap(), 5);
        assert_eq!(
            (t.cls_id(), t.sep_id(), t.pad_id(), t.max_length()),
            (2, 3, 0, 6)
        );
        let t = tokenizer(&[]);
        assert_eq!(t.max_length(), LDM_MAX_LENGTH);
        assert_eq!(t.encode("cat").unwrap().len(), 77);
        assert!(tokenizer(&[]).with_max_length(1).is_err());
    }

    #[test]
    fn follows_bert_normalization_and_wordpiece() {
        let t = tokenizer(&[]);
        // Lower-casing, accent stripping, punctuation split, `##` pieces, unknown words.
        assert_eq!(content(&t, "A CAT, Café!"), [5, 8, 10, 12, 11]);
        assert_eq!(content(&t, "unbelievable cats"), [13, 14, 15, 8, 9]);
        assert_eq!(content(&t, "dog unbelievablx"), [1, 1]);
        // Control characters vanish, CJK ideographs become words of their own.
        assert_eq!(content(&t, "ca\u{0}t\u{200b}東a"), [8, 18, 5]);
        // A word over 100 characters is unknown even if it could be split.
        assert_eq!(content(&t, &"a".repeat(101)), [1]);
        // Special tokens are matched before normalization, verbatim only.
        assert_eq!(content(&t, "a[MASK]cat [cls]"), [5, 4, 8, 16, 1, 17]);
    }

    #[test]
    fn config_options_are_honoured() {
        let t = tokenizer(&[(
            "tokenizer_config.json",
            r#"{"do_lower_case": false, "model_max_length": 512,
                "tokenizer_class": "BertTokenizer", "do_basic_tokenize": true}"#,
        )]);
        assert!(!t.normalization().lowercase);
        assert_eq!(content(&t, "Hello hello Café"), [19, 1, 1]);
        assert_eq!(t.max_length(), LDM_MAX_LENGTH);
        let t = tokenizer(&[(
            "tokenizer_config.json",
            r#"{"strip_accents": false, "tokenize_chinese_chars": false}"#,
        )]);
        assert_eq!(content(&t, "café 東a"), [1, 1]);
        let t = tokenizer(&[("tokenizer_config.json", r#"{"split_special_tokens": true}"#)]);
        assert_eq!(content(&t, "[MASK]"), [16, 1, 17]);
    }

    #[test]
    fn special_tokens_come_from_the_files() {
        // special_tokens_map.json wins over tokenizer_config.json (legacy folders).
        let t = tokenizer(&[
            ("tokenizer_config.json", r#"{"pad_token": "[MASK]"}"#),
            ("special_tokens_map.json", r#"{"pad_token": "!"}"#),
        ]);
        assert_eq!(t.pad_id(), 11);
        assert_eq!(content(&t, "a!a"), [5, 11, 5]);
        // With added_tokens_decoder, special_tokens_map.json is not read.
        let t = tokenizer(&[
            (
                "tokenizer_config.json",
                r#"{"pad_token": "[MASK]", "added_tokens_decoder": {
                    "4": {"content": "[MASK]", "lstrip": true, "normalized": false,
                          "rstrip": false, "single_word": false, "special": true}}}"#,
            ),
            ("special_tokens_map.json", r#"{"pad_token": "!"}"#),
        ]);
        assert_eq!(t.pad_id(), 4);
        assert_eq!(content(&t, "a [MASK] a"), [5, 4, 5]);
        // Tokens outside the vocabulary get the next ids.
        let t = tokenizer(&[(
            "tokenizer_config.json",
            r#"{"additional_special_tokens": ["<x>", {"content": "<y>", "rstrip": true}]}"#,
        )]);
        assert_eq!(content(&t, "a<x>cat<y> a"), [5, 20, 8, 21, 5]);
        assert_eq!(t.vocab_size(), 22);
        assert_eq!(t.token_to_id("<y>"), Some(21));
    }

    #[test]
    fn tokenizer_json_supplies_the_vocabulary() {
        let vocab: Vec<&str> = VOCAB.lines().collect();
        let vocab_json: serde_json::Map<String, serde_json::Value> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), serde_json::Value::from(i)))
            .collect();
        let json = serde_json::json!({
            "version": "1.0",
            "added_tokens": [{"id": 0, "content": "[PAD]", "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true}],
            "normalizer": {"type": "BertNormalizer", "clean_text": true,
                           "handle_chinese_chars": true, "strip_accents": null, "lowercase": false},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100, "vocab": vocab_json}
        });
        let dir = folder(
            "json",
            &[
                ("tokenizer.json", &json.to_string()),
                ("vocab.txt", "[UNK]\n"),
            ],
        );
        let from_json = BertTokenizer::from_dir(dir.path()).unwrap();
        let from_txt = tokenizer(&[]);
        // The config's (default) lower-casing applies, not the normalizer saved in the file.
        for text in ["A CAT, Café!", "unbelievable [MASK] 東", ""] {
            assert_eq!(
                from_json.encode(text).unwrap(),
                from_txt.encode(text).unwrap()
            );
        }
        let bpe = json.to_string().replace("\"WordPiece\"", "\"BPE\"");
        let dir = folder("json-bpe", &[("tokenizer.json", &bpe)]);
        assert!(matches!(
            BertTokenizer::from_dir(dir.path()),
            Err(Error::Tokenizer { .. })
        ));
    }

    #[test]
    fn bad_folders_are_typed_errors() {
        let empty = folder("none", &[]);
        let err = BertTokenizer::from_dir(empty.path()).unwrap_err();
        assert!(
            matches!(err, Error::Tokenizer { ref path, .. } if path == empty.path()),
            "{err}"
        );
        let dir = folder("nounk", &[("vocab.txt", "[PAD]\n[CLS]\n[SEP]\n")]);
        let err = BertTokenizer::from_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("[UNK]"), "{err}");
        let dir = folder("badutf8", &[]);
        std::fs::write(dir.path().join("vocab.txt"), b"[UNK]\n\xff\xfe\n").unwrap();
        assert!(matches!(
            BertTokenizer::from_dir(dir.path()),
            Err(Error::Tokenizer { .. })
        ));
        let cases = [
            (r#"{"pad_token": null}"#, "pad_token"),
            (r#"{"tokenizer_class": "CLIPTokenizer"}"#, "tokenizer_class"),
            (
                r#"{"added_tokens_decoder": {"x": {"content": "<x>"}}}"#,
                "added_tokens_decoder",
            ),
            (r#"{"cls_token": ""}"#, "cls_token"),
        ];
        for (i, (config, key)) in cases.into_iter().enumerate() {
            let dir = folder(
                &format!("bad{i}"),
                &[("vocab.txt", VOCAB), ("tokenizer_config.json", config)],
            );
            let err = BertTokenizer::from_dir(dir.path()).unwrap_err();
            assert!(
                matches!(&err, Error::UnsupportedConfig { key: k, .. } if k == key),
                "{config}: {err}"
            );
        }
        let dir = folder(
            "badjson",
            &[("vocab.txt", VOCAB), ("tokenizer_config.json", "{")],
        );
        assert!(matches!(
            BertTokenizer::from_dir(dir.path()),
            Err(Error::Json { .. })
        ));
    }

    #[test]
    fn from_vocab_file_uses_the_defaults() {
        let dir = folder("plain", &[("vocab.txt", VOCAB)]);
        let t = BertTokenizer::from_vocab_file(
            &dir.path().join("vocab.txt"),
            BertNormalization {
                lowercase: false,
                ..BertNormalization::default()
            },
        )
        .unwrap();
        assert_eq!(content(&t, "Hello a"), [19, 5]);
        assert_eq!(t.encode("").unwrap()[..3], [2, 3, 0]);
    }

    #[test]
    fn can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<BertTokenizer>();
    }
}
