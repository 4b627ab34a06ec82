//! Reading a CLIP tokenizer folder: the BPE vocabulary (`vocab.json` + `merges.txt`, or
//! `tokenizer.json`) and the settings in `tokenizer_config.json` / `special_tokens_map.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use tokenizers::models::bpe::{Merges, Vocab, BPE};

use super::added_tokens::AddedToken;
use crate::{Error, Result};

/// How many merges the slow tokenizer reads from `merges.txt` (`49152 - 256 - 2`).
const MAX_MERGES: usize = 48_894;
/// The end-of-word marker of CLIP's BPE.
pub(crate) const END_OF_WORD: &str = "</w>";
/// The longest `model_max_length` accepted: far beyond any text encoder's position table,
/// small enough that padding to it cannot exhaust memory.
const MAX_MODEL_MAX_LENGTH: u64 = 1 << 16;

/// A token named by a tokenizer setting (`pad_token`, ...), with its matching flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenSpec {
    pub(crate) content: String,
    pub(crate) lstrip: bool,
    pub(crate) rstrip: bool,
}

impl TokenSpec {
    pub(crate) fn plain(content: &str) -> Self {
        Self {
            content: content.to_owned(),
            lstrip: false,
            rstrip: false,
        }
    }
}

/// What `tokenizer_config.json` and `special_tokens_map.json` say.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) bos: TokenSpec,
    pub(crate) eos: TokenSpec,
    pub(crate) unk: TokenSpec,
    pub(crate) pad: TokenSpec,
    /// `additional_special_tokens`, matched verbatim like the four above.
    pub(crate) additional: Vec<TokenSpec>,
    /// Added tokens with the id they were saved with (`added_tokens_decoder`).
    pub(crate) added: Vec<AddedToken>,
    pub(crate) max_length: usize,
}

impl Settings {
    /// transformers' `CLIPTokenizer` defaults.
    pub(crate) fn clip_defaults(pad: &str, max_length: usize) -> Self {
        Self {
            bos: TokenSpec::plain("<|startoftext|>"),
            eos: TokenSpec::plain("<|endoftext|>"),
            unk: TokenSpec::plain("<|endoftext|>"),
            pad: TokenSpec::plain(pad),
            additional: Vec::new(),
            added: Vec::new(),
            max_length,
        }
    }

    /// Reads `dir/tokenizer_config.json` and `dir/special_tokens_map.json` (both optional);
    /// the latter wins where both name a token, as in transformers' `from_pretrained`.
    pub(crate) fn read(dir: &Path) -> Result<Self> {
        let config_path = dir.join("tokenizer_config.json");
        let map_path = dir.join("special_tokens_map.json");
        let config: ConfigFile = read_optional_json(&config_path)?.unwrap_or_default();
        let map: SpecialTokensFile = read_optional_json(&map_path)?.unwrap_or_default();

        let mut settings = Self::clip_defaults("<|endoftext|>", 77);
        let slots = [
            (
                "bos_token",
                &mut settings.bos,
                &map.bos_token,
                &config.special.bos_token,
            ),
            (
                "eos_token",
                &mut settings.eos,
                &map.eos_token,
                &config.special.eos_token,
            ),
            (
                "unk_token",
                &mut settings.unk,
                &map.unk_token,
                &config.special.unk_token,
            ),
            (
                "pad_token",
                &mut settings.pad,
                &map.pad_token,
                &config.special.pad_token,
            ),
        ];
        for (key, slot, from_map, from_config) in slots {
            let (path, value) = match (from_map, from_config) {
                (Some(value), _) => (&map_path, value),
                (None, Some(value)) => (&config_path, value),
                (None, None) => continue,
            };
            let Some(spec) = value else {
                return Err(unsupported(path, key, "is null; CLIP needs this token"));
            };
            *slot = spec.resolve(path, key)?;
        }
        let (path, additional) = match (
            &map.additional_special_tokens,
            &config.special.additional_special_tokens,
        ) {
            (Some(list), _) => (&map_path, list.as_slice()),
            (None, Some(list)) => (&config_path, list.as_slice()),
            (None, None) => (&config_path, [].as_slice()),
        };
        settings.additional = additional
            .iter()
            .map(|spec| spec.resolve(path, "additional_special_tokens"))
            .collect::<Result<_>>()?;
        settings.added = config
            .added_tokens_decoder
            .iter()
            .map(|(id, spec)| {
                let id = id.parse::<u32>().map_err(|_| {
                    unsupported(
                        &config_path,
                        "added_tokens_decoder",
                        &format!("id {id:?} is not a token id"),
                    )
                })?;
                let spec = spec.resolve(&config_path, "added_tokens_decoder")?;
                Ok(AddedToken {
                    content: spec.content,
                    id,
                    lstrip: spec.lstrip,
                    rstrip: spec.rstrip,
                })
            })
            .collect::<Result<_>>()?;
        if let Some(value) = &config.model_max_length {
            settings.max_length = parse_max_length(value).ok_or_else(|| {
                unsupported(
                    &config_path,
                    "model_max_length",
                    &format!("{value} is not an integer in 2..={MAX_MODEL_MAX_LENGTH}"),
                )
            })?;
        }
        if let Some(class) = config.tokenizer_class.as_deref() {
            if !matches!(class, "CLIPTokenizer" | "CLIPTokenizerFast") {
                return Err(unsupported(
                    &config_path,
                    "tokenizer_class",
                    &format!("{class:?} (supported: CLIPTokenizer, CLIPTokenizerFast)"),
                ));
            }
        }
        Ok(settings)
    }
}

fn parse_max_length(value: &serde_json::Value) -> Option<usize> {
    let n = value
        .as_u64()
        .filter(|n| (2..=MAX_MODEL_MAX_LENGTH).contains(n))?;
    usize::try_from(n).ok()
}

/// The BPE model of a tokenizer folder, and the added tokens its file declares.
pub(crate) struct Vocabulary {
    pub(crate) bpe: BPE,
    pub(crate) added: Vec<AddedToken>,
    /// The file the vocabulary came from, for error messages.
    pub(crate) source: PathBuf,
}

impl Vocabulary {
    /// Reads `vocab.json` + `merges.txt` as the slow tokenizer does: the first line of
    /// `merges.txt` is a header, and at most 48894 merges are read.
    pub(crate) fn from_vocab_merges(
        vocab_path: &Path,
        merges_path: &Path,
        unk: &str,
    ) -> Result<Self> {
        let (vocab, merges) = (read_text(vocab_path)?, read_text(merges_path)?);
        Self::from_vocab_merges_text(&vocab, &merges, vocab_path, merges_path, unk)
    }

    /// Like [`Vocabulary::from_vocab_merges`], from the files' texts; the paths name
    /// them in errors.
    pub(crate) fn from_vocab_merges_text(
        vocab_text: &str,
        merges_text: &str,
        vocab_path: &Path,
        merges_path: &Path,
        unk: &str,
    ) -> Result<Self> {
        let vocab: HashMap<String, u32> =
            serde_json::from_str(vocab_text).map_err(|source| Error::Json {
                path: vocab_path.to_owned(),
                source,
            })?;
        let merges =
            parse_merges(merges_text).map_err(|message| tokenizer_error(merges_path, message))?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
            .unk_token(unk.to_owned())
            .end_of_word_suffix(END_OF_WORD.to_owned())
            .build()
            .map_err(|e| tokenizer_error(merges_path, e.to_string()))?;
        Ok(Self {
            bpe,
            added: Vec::new(),
            source: vocab_path.to_owned(),
        })
    }

    /// Reads the BPE model and the added tokens of a `tokenizer.json`; the model must be
    /// CLIP's (byte-level BPE with the `</w>` suffix).
    pub(crate) fn from_tokenizer_json(path: &Path, unk: &str) -> Result<Self> {
        // Parsed from the text itself: the BPE deserializer borrows its strings.
        let file: TokenizerJson =
            serde_json::from_str(&read_text(path)?).map_err(|source| Error::Json {
                path: path.to_owned(),
                source,
            })?;
        let mut bpe = file.model;
        let clip_like = bpe.end_of_word_suffix.as_deref() == Some(END_OF_WORD)
            && bpe
                .continuing_subword_prefix
                .as_deref()
                .unwrap_or("")
                .is_empty()
            && bpe.dropout.is_none()
            && !bpe.byte_fallback;
        if !clip_like {
            return Err(tokenizer_error(
                path,
                "`model` is not CLIP's BPE (end_of_word_suffix \"</w>\", no prefix, dropout or byte fallback)".into(),
            ));
        }
        bpe.unk_token = Some(unk.to_owned());
        let added = file
            .added_tokens
            .into_iter()
            .map(|t| {
                if t.single_word {
                    return Err(unsupported(
                        path,
                        "added_tokens",
                        "single_word tokens are not supported",
                    ));
                }
                Ok(AddedToken {
                    content: t.content,
                    id: t.id,
                    lstrip: t.lstrip,
                    rstrip: t.rstrip,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            bpe,
            added,
            source: path.to_owned(),
        })
    }
}

fn parse_merges(text: &str) -> Result<Merges, String> {
    let mut merges = Vec::new();
    for (index, line) in text.trim().split('\n').enumerate().skip(1).take(MAX_MERGES) {
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (None, _, _) => {}
            (Some(a), Some(b), None) => merges.push((a.to_owned(), b.to_owned())),
            _ => {
                return Err(format!(
                    "line {}: expected two symbols, got {line:?}",
                    index + 1
                ))
            }
        }
    }
    Ok(merges)
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

fn read_optional_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    if !path.exists() {
        return Ok(None);
    }
    serde_json::from_str(&read_text(path)?)
        .map(Some)
        .map_err(|source| Error::Json {
            path: path.to_owned(),
            source,
        })
}

pub(crate) fn tokenizer_error(path: &Path, message: String) -> Error {
    Error::Tokenizer {
        path: path.to_owned(),
        message,
    }
}

fn unsupported(path: &Path, key: &str, message: &str) -> Error {
    Error::UnsupportedConfig {
        path: path.to_owned(),
        key: key.to_owned(),
        message: message.to_owned(),
    }
}

/// A token as the JSON files write it: a bare string or an `AddedToken` object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TokenSpecFile {
    Content(String),
    Full {
        content: String,
        #[serde(default)]
        lstrip: bool,
        #[serde(default)]
        rstrip: bool,
        #[serde(default)]
        single_word: bool,
    },
}

impl TokenSpecFile {
    fn resolve(&self, path: &Path, key: &str) -> Result<TokenSpec> {
        match self {
            Self::Content(content) => Ok(TokenSpec::plain(content)),
            Self::Full {
                single_word: true, ..
            } => Err(unsupported(
                path,
                key,
                "single_word tokens are not supported",
            )),
            Self::Full {
                content,
                lstrip,
                rstrip,
                ..
            } => Ok(TokenSpec {
                content: content.clone(),
                lstrip: *lstrip,
                rstrip: *rstrip,
            }),
        }
    }
}

/// `special_tokens_map.json`, and the same keys in `tokenizer_config.json`. The outer
/// `Option` says whether the key is present, the inner one whether it is `null`.
#[derive(Debug, Default, Deserialize)]
struct SpecialTokensFile {
    #[serde(default, deserialize_with = "present")]
    bos_token: Option<Option<TokenSpecFile>>,
    #[serde(default, deserialize_with = "present")]
    eos_token: Option<Option<TokenSpecFile>>,
    #[serde(default, deserialize_with = "present")]
    unk_token: Option<Option<TokenSpecFile>>,
    #[serde(default, deserialize_with = "present")]
    pad_token: Option<Option<TokenSpecFile>>,
    #[serde(default)]
    additional_special_tokens: Option<Vec<TokenSpecFile>>,
}

/// `tokenizer_config.json`: the keys CLIP's tokenizer reads; the others are ignored.
#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(flatten)]
    special: SpecialTokensFile,
    #[serde(default)]
    model_max_length: Option<serde_json::Value>,
    #[serde(default)]
    tokenizer_class: Option<String>,
    #[serde(default)]
    added_tokens_decoder: BTreeMap<String, TokenSpecFile>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<TokenSpecFile>>, D::Error> {
    Option::deserialize(d).map(Some)
}

/// The parts of `tokenizer.json` read here.
#[derive(Debug, Deserialize)]
struct TokenizerJson {
    model: BPE,
    #[serde(default)]
    added_tokens: Vec<TokenizerJsonAddedToken>,
}

#[derive(Debug, Deserialize)]
struct TokenizerJsonAddedToken {
    id: u32,
    content: String,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
    #[serde(default)]
    single_word: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder holding the given files, removed when dropped.
    fn folder(name: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("latentd-tok-{name}-"))
            .tempdir()
            .unwrap();
        for (file, text) in files {
            std::fs::write(dir.path().join(file), text).unwrap();
        }
        dir
    }

    fn key_of(err: &Error) -> &str {
        match err {
            Error::UnsupportedConfig { key, .. } => key,
            other => panic!("not an UnsupportedConfig error: {other}"),
        }
    }

    #[test]
    fn defaults_without_files() {
        let settings = Settings::read(folder("empty", &[]).path()).unwrap();
        assert_eq!(settings.pad.content, "<|endoftext|>");
        assert_eq!(settings.bos.content, "<|startoftext|>");
        assert_eq!(settings.max_length, 77);
    }

    #[test]
    fn special_tokens_map_wins_over_tokenizer_config() {
        let dir = folder(
            "precedence",
            &[
                (
                    "tokenizer_config.json",
                    r#"{"pad_token": "<|endoftext|>", "model_max_length": 16,
                        "bos_token": {"__type": "AddedToken", "content": "<s>", "rstrip": true},
                        "added_tokens_decoder": {"7": {"content": "<x>", "lstrip": true}}}"#,
                ),
                ("special_tokens_map.json", r#"{"pad_token": "!"}"#),
            ],
        );
        let settings = Settings::read(dir.path()).unwrap();
        assert_eq!(settings.pad, TokenSpec::plain("!"));
        assert_eq!(settings.bos.content, "<s>");
        assert!(settings.bos.rstrip && !settings.bos.lstrip);
        assert_eq!(settings.max_length, 16);
        assert_eq!(settings.added.len(), 1);
        assert_eq!((settings.added[0].id, settings.added[0].lstrip), (7, true));
    }

    #[test]
    fn bad_settings_name_their_key() {
        let cases = [
            (r#"{"pad_token": null}"#, "pad_token"),
            (
                r#"{"model_max_length": 1000000000000000019884624838656}"#,
                "model_max_length",
            ),
            (r#"{"model_max_length": 1}"#, "model_max_length"),
            (r#"{"tokenizer_class": "T5Tokenizer"}"#, "tokenizer_class"),
            (
                r#"{"eos_token": {"content": "</s>", "single_word": true}}"#,
                "eos_token",
            ),
            (
                r#"{"added_tokens_decoder": {"x": {"content": "<x>"}}}"#,
                "added_tokens_decoder",
            ),
        ];
        for (i, (config, key)) in cases.into_iter().enumerate() {
            let dir = folder(&format!("bad{i}"), &[("tokenizer_config.json", config)]);
            let err = Settings::read(dir.path()).unwrap_err();
            assert_eq!(key_of(&err), key, "{config}");
            assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
        }
    }

    #[test]
    fn malformed_merges_name_the_file_and_line() {
        let dir = folder(
            "merges",
            &[
                ("vocab.json", r#"{"a": 0, "b</w>": 1, "ab</w>": 2}"#),
                ("merges.txt", "#version: 0.2\na b</w>\na b c\n"),
            ],
        );
        let err = Vocabulary::from_vocab_merges(
            &dir.path().join("vocab.json"),
            &dir.path().join("merges.txt"),
            "a",
        )
        .err()
        .unwrap();
        let message = err.to_string();
        assert!(
            message.contains("merges.txt") && message.contains("line 3"),
            "{message}"
        );
    }

    #[test]
    fn merges_header_is_skipped_and_count_is_capped() {
        let mut text = String::from("#version: 0.2\n");
        for _ in 0..MAX_MERGES + 5 {
            text.push_str("a b\n");
        }
        assert_eq!(parse_merges(&text).unwrap().len(), MAX_MERGES);
        assert_eq!(
            parse_merges("a b\nc d\n").unwrap(),
            [("c".into(), "d".into())]
        );
    }
}
