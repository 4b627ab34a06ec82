//! The files of a BERT tokenizer folder: `vocab.txt`, `tokenizer.json`,
//! `tokenizer_config.json`, `special_tokens_map.json`, `added_tokens.json`, and the
//! special-token settings transformers 5 derives from them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::AddedToken;

use super::bert_tokenizer::{BertNormalization, MAX_INPUT_CHARS_PER_WORD};
use crate::{Error, Result};

/// The named special tokens of `BertTokenizer`, in transformers' attribute order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Named {
    Unk,
    Sep,
    Pad,
    Cls,
    Mask,
}

impl Named {
    const ALL: [Named; 5] = [Self::Unk, Self::Sep, Self::Pad, Self::Cls, Self::Mask];

    pub(super) fn key(self) -> &'static str {
        match self {
            Self::Unk => "unk_token",
            Self::Sep => "sep_token",
            Self::Pad => "pad_token",
            Self::Cls => "cls_token",
            Self::Mask => "mask_token",
        }
    }

    pub(super) fn default_content(self) -> &'static str {
        match self {
            Self::Unk => "[UNK]",
            Self::Sep => "[SEP]",
            Self::Pad => "[PAD]",
            Self::Cls => "[CLS]",
            Self::Mask => "[MASK]",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// What the folder's JSON files say.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) normalization: BertNormalization,
    /// The named special tokens; `None` where a file sets one to `null`.
    pub(super) named: [Option<AddedToken>; 5],
    /// `additional_special_tokens` / `extra_special_tokens`.
    pub(super) extra: Vec<AddedToken>,
    /// Saved added tokens by id (`added_tokens_decoder`, or the legacy files).
    pub(super) added: BTreeMap<u32, AddedToken>,
    pub(super) split_special_tokens: bool,
    /// The file the named tokens came from, for error messages.
    pub(super) origin: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            normalization: BertNormalization::default(),
            named: Named::ALL.map(|n| Some(special(n.default_content()))),
            extra: Vec::new(),
            added: BTreeMap::new(),
            split_special_tokens: false,
            origin: PathBuf::new(),
        }
    }
}

/// A special token given as a plain string: matched verbatim in the raw text.
pub(super) fn special(content: &str) -> AddedToken {
    AddedToken::from(content, true)
}

impl Settings {
    /// Reads `tokenizer_config.json`, and, as transformers does when it has no
    /// `added_tokens_decoder`, `special_tokens_map.json`, `added_tokens.json` and the
    /// `added_tokens` of `tokenizer.json` (`json_added`).
    pub(super) fn read(dir: &Path, json_added: Option<Vec<(u32, AddedToken)>>) -> Result<Self> {
        let config_path = dir.join("tokenizer_config.json");
        let map_path = dir.join("special_tokens_map.json");
        let added_path = dir.join("added_tokens.json");
        let config: ConfigFile = read_optional_json(&config_path)?.unwrap_or_default();
        let mut settings = Self {
            origin: config_path.clone(),
            ..Self::default()
        };
        if let Some(class) = config.tokenizer_class.as_deref() {
            if !(class.ends_with("BertTokenizer") || class.ends_with("BertTokenizerFast")) {
                return Err(unsupported(
                    &config_path,
                    "tokenizer_class",
                    format!("{class:?} is not a BERT WordPiece tokenizer"),
                ));
            }
        }
        let n = &mut settings.normalization;
        n.lowercase = config.do_lower_case.unwrap_or(n.lowercase);
        n.handle_chinese_chars = config
            .tokenize_chinese_chars
            .unwrap_or(n.handle_chinese_chars);
        n.strip_accents = config.strip_accents;
        settings.split_special_tokens = config.split_special_tokens.unwrap_or(false);

        for named in Named::ALL {
            if let Some(value) = config.special.get(named) {
                settings.named[named.index()] = value
                    .as_ref()
                    .map(|v| v.named_token(&config_path, named.key()))
                    .transpose()?;
            }
        }
        let mut extra = config.special.extra(&config_path)?;

        if let Some(decoder) = &config.added_tokens_decoder {
            for (id, spec) in decoder {
                let id = id.parse::<u32>().map_err(|_| {
                    unsupported(
                        &config_path,
                        "added_tokens_decoder",
                        format!("id {id:?} is not a token id"),
                    )
                })?;
                settings
                    .added
                    .insert(id, spec.added_token(&config_path, "added_tokens_decoder")?);
            }
        } else {
            // Legacy folders (the CompVis LDM one among them).
            if let Some(map) = read_optional_json::<SpecialTokensFile>(&map_path)? {
                for named in Named::ALL {
                    if let Some(value) = map.get(named) {
                        settings.named[named.index()] = value
                            .as_ref()
                            .map(|v| v.named_token(&map_path, named.key()))
                            .transpose()?;
                    }
                }
                for token in map.extra(&map_path)? {
                    if !extra.iter().any(|t| t.content == token.content) {
                        extra.push(token);
                    }
                }
            }
            if let Some(file) = read_optional_json::<BTreeMap<String, u32>>(&added_path)? {
                for (content, id) in file {
                    let is_special = settings
                        .named
                        .iter()
                        .flatten()
                        .any(|t| t.content == content)
                        || extra.iter().any(|t| t.content == content);
                    let token = AddedToken::from(content, is_special).normalized(!is_special);
                    settings.added.insert(id, token);
                }
            }
            for (id, token) in json_added.into_iter().flatten() {
                settings.added.insert(id, token);
            }
        }
        settings.extra = extra;
        // Named tokens saved among the added tokens take those flags, as in transformers.
        for slot in settings.named.iter_mut().flatten() {
            if let Some(saved) = settings.added.values().find(|t| t.content == slot.content) {
                *slot = saved.clone().special(true);
            }
        }
        Ok(settings)
    }

    /// The content of a named token that the pipeline needs.
    pub(super) fn named_content(&self, named: Named) -> Result<&str> {
        match &self.named[named.index()] {
            Some(token) if !token.content.is_empty() => Ok(&token.content),
            _ => Err(unsupported(
                &self.origin,
                named.key(),
                "is null or empty; the LDM pipeline needs this token".into(),
            )),
        }
    }

    /// The named special tokens, then the extra ones.
    pub(super) fn special_tokens(&self) -> Vec<AddedToken> {
        let mut tokens: Vec<AddedToken> = self.named.iter().flatten().cloned().collect();
        for token in &self.extra {
            if !tokens.iter().any(|t| t.content == token.content) {
                tokens.push(token.clone());
            }
        }
        tokens
    }
}

/// A token as the JSON files write it: a bare string or an `AddedToken` object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum TokenFile {
    Content(String),
    Full {
        content: String,
        #[serde(default)]
        single_word: bool,
        #[serde(default)]
        lstrip: bool,
        #[serde(default)]
        rstrip: bool,
        #[serde(default)]
        normalized: Option<bool>,
        #[serde(default)]
        special: Option<bool>,
    },
}

impl TokenFile {
    /// A named or extra special token: special, and by default matched verbatim.
    pub(super) fn named_token(&self, path: &Path, key: &str) -> Result<AddedToken> {
        let token = self.to_token(path, key, Some(true))?;
        Ok(token)
    }

    /// An entry of `added_tokens_decoder`: special only if it says so; a token that is
    /// not special is by default normalized (as `tokenizers`' `AddedToken` defaults).
    pub(super) fn added_token(&self, path: &Path, key: &str) -> Result<AddedToken> {
        self.to_token(path, key, None)
    }

    pub(super) fn to_token(
        &self,
        path: &Path,
        key: &str,
        force_special: Option<bool>,
    ) -> Result<AddedToken> {
        let token = match self {
            Self::Content(content) => AddedToken::from(content, force_special.unwrap_or(true)),
            Self::Full {
                content,
                single_word,
                lstrip,
                rstrip,
                normalized,
                special,
            } => {
                let special = force_special.unwrap_or(special.unwrap_or(false));
                AddedToken::from(content, special)
                    .single_word(*single_word)
                    .lstrip(*lstrip)
                    .rstrip(*rstrip)
                    .normalized(normalized.unwrap_or(!special))
            }
        };
        if token.content.is_empty() {
            return Err(unsupported(path, key, "a token is empty".into()));
        }
        Ok(token)
    }
}

/// A key that may be absent (outer `None`) or `null` (inner `None`).
type Present<T> = Option<Option<T>>;

/// The special-token keys of `special_tokens_map.json` and `tokenizer_config.json`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct SpecialTokensFile {
    #[serde(default, deserialize_with = "present")]
    pub(super) unk_token: Present<TokenFile>,
    #[serde(default, deserialize_with = "present")]
    pub(super) sep_token: Present<TokenFile>,
    #[serde(default, deserialize_with = "present")]
    pub(super) pad_token: Present<TokenFile>,
    #[serde(default, deserialize_with = "present")]
    pub(super) cls_token: Present<TokenFile>,
    #[serde(default, deserialize_with = "present")]
    pub(super) mask_token: Present<TokenFile>,
    #[serde(default)]
    pub(super) additional_special_tokens: Option<Vec<TokenFile>>,
    #[serde(default)]
    pub(super) extra_special_tokens: Option<serde_json::Value>,
}

impl SpecialTokensFile {
    pub(super) fn get(&self, named: Named) -> Option<&Option<TokenFile>> {
        match named {
            Named::Unk => self.unk_token.as_ref(),
            Named::Sep => self.sep_token.as_ref(),
            Named::Pad => self.pad_token.as_ref(),
            Named::Cls => self.cls_token.as_ref(),
            Named::Mask => self.mask_token.as_ref(),
        }
    }

    /// `extra_special_tokens` (a list, or a name -> token map) then
    /// `additional_special_tokens`.
    pub(super) fn extra(&self, path: &Path) -> Result<Vec<AddedToken>> {
        let mut files: Vec<TokenFile> = Vec::new();
        if let Some(value) = &self.extra_special_tokens {
            let list: Vec<serde_json::Value> = match value {
                serde_json::Value::Array(list) => list.clone(),
                serde_json::Value::Object(map) => map.values().cloned().collect(),
                serde_json::Value::Null => Vec::new(),
                other => {
                    return Err(unsupported(
                        path,
                        "extra_special_tokens",
                        format!("{other} is not a list of tokens"),
                    ))
                }
            };
            for value in list {
                files.push(
                    serde_json::from_value(value)
                        .map_err(|e| unsupported(path, "extra_special_tokens", e.to_string()))?,
                );
            }
        }
        files.extend(self.additional_special_tokens.iter().flatten().cloned());
        let mut tokens: Vec<AddedToken> = Vec::new();
        for file in &files {
            let token = file.named_token(path, "additional_special_tokens")?;
            if !tokens.iter().any(|t| t.content == token.content) {
                tokens.push(token);
            }
        }
        Ok(tokens)
    }
}

/// `tokenizer_config.json`: the keys BERT's tokenizer reads; the others are ignored.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ConfigFile {
    #[serde(flatten)]
    pub(super) special: SpecialTokensFile,
    #[serde(default)]
    pub(super) do_lower_case: Option<bool>,
    #[serde(default)]
    pub(super) tokenize_chinese_chars: Option<bool>,
    #[serde(default)]
    pub(super) strip_accents: Option<bool>,
    #[serde(default)]
    pub(super) split_special_tokens: Option<bool>,
    #[serde(default)]
    pub(super) tokenizer_class: Option<String>,
    #[serde(default)]
    pub(super) added_tokens_decoder: Option<BTreeMap<String, TokenFile>>,
}

pub(super) fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Present<TokenFile>, D::Error> {
    Option::deserialize(d).map(Some)
}

/// The parts of `tokenizer.json` read here.
#[derive(Debug, Deserialize)]
pub(super) struct TokenizerJson {
    pub(super) model: TokenizerJsonModel,
    #[serde(default)]
    pub(super) added_tokens: Vec<TokenizerJsonAddedToken>,
}

#[derive(Debug, Deserialize)]
pub(super) struct TokenizerJsonModel {
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    /// A token -> id map, or (older files) a list of tokens in id order.
    pub(super) vocab: serde_json::Value,
}

#[derive(Debug, Deserialize)]
pub(super) struct TokenizerJsonAddedToken {
    pub(super) id: u32,
    pub(super) content: String,
    #[serde(default)]
    pub(super) single_word: bool,
    #[serde(default)]
    pub(super) lstrip: bool,
    #[serde(default)]
    pub(super) rstrip: bool,
    #[serde(default)]
    pub(super) normalized: Option<bool>,
    #[serde(default)]
    pub(super) special: bool,
}

/// The WordPiece vocabulary and the added tokens of a `tokenizer.json`.
pub(super) fn read_tokenizer_json(path: &Path) -> Result<(WordPiece, Vec<(u32, AddedToken)>)> {
    let json_error = |source| Error::Json {
        path: path.to_owned(),
        source,
    };
    let file: TokenizerJson = serde_json::from_str(&read_text(path)?).map_err(json_error)?;
    if let Some(kind) = file.model.kind.as_deref() {
        if kind != "WordPiece" {
            return Err(tokenizer_error(
                path,
                format!("`model` is {kind:?}, not BERT's WordPiece"),
            ));
        }
    }
    let vocab = match file.model.vocab {
        serde_json::Value::Array(tokens) => tokens
            .into_iter()
            .enumerate()
            .map(|(id, token)| (token, serde_json::Value::from(id)))
            .map(|(token, id)| match token {
                serde_json::Value::String(token) => Ok((token, id)),
                other => Err(tokenizer_error(
                    path,
                    format!("vocabulary entry {other} is not a string"),
                )),
            })
            .collect::<Result<serde_json::Map<_, _>>>()?
            .into(),
        map => map,
    };
    // The unknown token and the other parameters are set by `BertTokenizer::build`.
    let model = serde_json::json!({
        "vocab": vocab,
        "unk_token": "[UNK]",
        "continuing_subword_prefix": "##",
        "max_input_chars_per_word": MAX_INPUT_CHARS_PER_WORD,
    });
    let model: WordPiece = serde_json::from_value(model).map_err(json_error)?;
    let added = file
        .added_tokens
        .into_iter()
        .map(|t| {
            let token = AddedToken::from(t.content, t.special)
                .single_word(t.single_word)
                .lstrip(t.lstrip)
                .rstrip(t.rstrip)
                .normalized(t.normalized.unwrap_or(!t.special));
            (t.id, token)
        })
        .collect();
    Ok((model, added))
}

/// `vocab.txt`: one token a line, its id the line's index (a later duplicate wins), as the
/// `tokenizers` `WordPiece` reads it (trailing whitespace trimmed).
pub(super) fn read_vocab_txt(path: &Path) -> Result<WordPiece> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    let vocab = WordPiece::read_bytes(&bytes).map_err(|e| tokenizer_error(path, e.to_string()))?;
    WordPiece::builder()
        .vocab(vocab)
        .build()
        .map_err(|e| tokenizer_error(path, e.to_string()))
}

pub(super) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

pub(super) fn read_optional_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
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

pub(super) fn tokenizer_error(path: &Path, message: String) -> Error {
    Error::Tokenizer {
        path: path.to_owned(),
        message,
    }
}

pub(super) fn unsupported(path: &Path, key: &str, message: String) -> Error {
    Error::UnsupportedConfig {
        path: path.to_owned(),
        key: key.to_owned(),
        message,
    }
}
