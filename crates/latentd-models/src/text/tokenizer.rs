//! CLIP's tokenizer: byte-level BPE with `</w>` word ends, padded to a fixed context.

use std::fmt;
use std::path::{Path, PathBuf};

use tokenizers::models::bpe::BPE;
use tokenizers::Model;

use super::added_tokens::{AddedToken, AddedTokens, Piece};
use super::normalize::{byte_level, TextSplitter};
use super::tokenizer_files::{tokenizer_error, Settings, TokenSpec, Vocabulary};
use crate::{Error, Result};

/// Which of transformers' CLIP tokenizers to reproduce. They differ only on unusual text:
/// control and format characters (zero-width space, the joiners inside emoji sequences,
/// U+FFFD, soft hyphen), CJK ideographs, a final capital sigma, `<|endoftext|>` written in
/// another casing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClipTokenizerKind {
    /// The `tokenizers` pipeline: what diffusers gets from transformers 5 for either class
    /// name (`CLIPTokenizer` or `CLIPTokenizerFast`), and from transformers 4 for
    /// `CLIPTokenizerFast`. The project's fixtures are made this way.
    #[default]
    Fast,
    /// The slow `CLIPTokenizer` of transformers 4 (without `ftfy`), which diffusers loaded
    /// for Stable Diffusion checkpoints before transformers 5.
    Slow,
}

/// CLIP's tokenizer, producing the `input_ids` diffusers feeds the text encoder.
pub struct ClipTokenizer {
    bpe: BPE,
    splitter: TextSplitter,
    added: AddedTokens,
    kind: ClipTokenizerKind,
    bos: u32,
    eos: u32,
    pad: u32,
    /// Ids of the words `<|startoftext|>` / `<|endoftext|>` when the word pattern finds
    /// them in cleaned text (the slow tokenizer's BPE cache maps them to themselves).
    start_word: u32,
    end_word: u32,
    max_length: usize,
    source: PathBuf,
}

impl ClipTokenizer {
    /// Loads a tokenizer folder, as [`ClipTokenizerKind::Fast`]: the vocabulary from
    /// `vocab.json` + `merges.txt` or, when they are absent, from `tokenizer.json`; special
    /// tokens and `model_max_length` (default 77) from `tokenizer_config.json` and
    /// `special_tokens_map.json` when present.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let settings = Settings::read(dir)?;
        let vocab_path = dir.join("vocab.json");
        let merges_path = dir.join("merges.txt");
        let json_path = dir.join("tokenizer.json");
        let unk = settings.unk.content.as_str();
        let vocabulary = if vocab_path.is_file() && merges_path.is_file() {
            Vocabulary::from_vocab_merges(&vocab_path, &merges_path, unk)?
        } else if json_path.is_file() {
            Vocabulary::from_tokenizer_json(&json_path, unk)?
        } else {
            return Err(tokenizer_error(
                dir,
                "no vocab.json + merges.txt and no tokenizer.json".into(),
            ));
        };
        Self::build(vocabulary, settings)
    }

    /// Builds a [`ClipTokenizerKind::Fast`] tokenizer from `vocab.json` + `merges.txt` with
    /// CLIP's bos/eos/unk tokens and the given pad token and context length.
    pub fn from_vocab_merges(
        vocab: &Path,
        merges: &Path,
        pad_token: &str,
        max_length: usize,
    ) -> Result<Self> {
        let settings = Settings::clip_defaults(pad_token, max_length);
        let vocabulary = Vocabulary::from_vocab_merges(vocab, merges, &settings.unk.content)?;
        Self::build(vocabulary, settings)
    }

    /// Like [`ClipTokenizer::from_vocab_merges`], from the files' texts (e.g. embedded in
    /// the binary); `vocab` and `merges` name them in errors.
    pub fn from_vocab_merges_text(
        (vocab, vocab_text): (&Path, &str),
        (merges, merges_text): (&Path, &str),
        pad_token: &str,
        max_length: usize,
    ) -> Result<Self> {
        let settings = Settings::clip_defaults(pad_token, max_length);
        let vocabulary = Vocabulary::from_vocab_merges_text(
            vocab_text,
            merges_text,
            vocab,
            merges,
            &settings.unk.content,
        )?;
        Self::build(vocabulary, settings)
    }

    /// The same vocabulary and settings, reproducing the given transformers tokenizer.
    pub fn with_kind(mut self, kind: ClipTokenizerKind) -> Self {
        self.kind = kind;
        self
    }

    fn build(vocabulary: Vocabulary, settings: Settings) -> Result<Self> {
        let Vocabulary { bpe, added, source } = vocabulary;
        if settings.max_length < 2 {
            return Err(tokenizer_error(
                &source,
                format!(
                    "max_length {} leaves no room for bos and eos",
                    settings.max_length
                ),
            ));
        }
        let splitter = TextSplitter::new().map_err(|message| tokenizer_error(&source, message))?;
        // Ids saved with the added tokens win over the vocabulary, as in transformers.
        let declared: Vec<AddedToken> = added.into_iter().chain(settings.added).collect();
        let id_of = |key: &str, spec: &TokenSpec| -> Result<AddedToken> {
            let id = declared
                .iter()
                .find(|t| t.content == spec.content)
                .map(|t| t.id)
                .or_else(|| bpe.token_to_id(&spec.content))
                .ok_or_else(|| {
                    tokenizer_error(
                        &source,
                        format!("{key} {:?} is not in the vocabulary", spec.content),
                    )
                })?;
            Ok(AddedToken {
                content: spec.content.clone(),
                id,
                lstrip: spec.lstrip,
                rstrip: spec.rstrip,
            })
        };
        let bos = id_of("bos_token", &settings.bos)?;
        let eos = id_of("eos_token", &settings.eos)?;
        let unk = id_of("unk_token", &settings.unk)?;
        let pad = id_of("pad_token", &settings.pad)?;
        let additional = settings
            .additional
            .iter()
            .map(|spec| id_of("additional special token", spec))
            .collect::<Result<Vec<_>>>()?;
        let word_id = |word: &str| bpe.token_to_id(word).unwrap_or(unk.id);
        let (start_word, end_word) = (word_id("<|startoftext|>"), word_id("<|endoftext|>"));
        let (bos_id, eos_id, pad_id) = (bos.id, eos.id, pad.id);
        let added = AddedTokens::new(
            [bos, eos, unk, pad]
                .into_iter()
                .chain(additional)
                .chain(declared.iter().cloned()),
        );
        Ok(Self {
            bpe,
            splitter,
            added,
            kind: ClipTokenizerKind::default(),
            bos: bos_id,
            eos: eos_id,
            pad: pad_id,
            start_word,
            end_word,
            max_length: settings.max_length,
            source,
        })
    }

    /// Token ids of length [`max_length`](Self::max_length): bos, the text's tokens
    /// (truncated to `max_length - 2`), eos, then padding.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let content = self.content_ids(text)?;
        let kept = content.len().min(self.max_length - 2);
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos);
        ids.extend_from_slice(&content[..kept]);
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        Ok(ids)
    }

    /// Number of tokens the text has before truncation, bos and eos not counted (it fits
    /// when this is at most `max_length - 2`).
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.content_ids(text)?.len())
    }

    /// The context length every encoding is padded or truncated to.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Which transformers tokenizer this one reproduces.
    pub fn kind(&self) -> ClipTokenizerKind {
        self.kind
    }

    /// The number of tokens of the BPE vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.bpe.get_vocab_size()
    }

    /// The id padding uses.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    fn content_ids(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for piece in self.added.split(text) {
            match piece {
                Piece::Token(id) => ids.push(id),
                Piece::Text(segment) => self.push_segment(segment, &mut ids)?,
            }
        }
        Ok(ids)
    }

    fn push_segment(&self, segment: &str, ids: &mut Vec<u32>) -> Result<()> {
        match self.kind {
            ClipTokenizerKind::Slow => {
                let cleaned = self.splitter.clean_slow(segment);
                for word in self.splitter.words(&cleaned) {
                    match word {
                        "<|startoftext|>" => ids.push(self.start_word),
                        "<|endoftext|>" => ids.push(self.end_word),
                        _ => self.push_bpe(word, ids)?,
                    }
                }
            }
            ClipTokenizerKind::Fast => {
                let cleaned = self.splitter.clean_fast(segment);
                for word in self.splitter.words(&cleaned) {
                    for piece in self.splitter.byte_level_pieces(word) {
                        self.push_bpe(piece, ids)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn push_bpe(&self, word: &str, ids: &mut Vec<u32>) -> Result<()> {
        let tokens = self
            .bpe
            .tokenize(&byte_level(word))
            .map_err(|e| self.error(format!("cannot tokenize {word:?}: {e}")))?;
        ids.extend(tokens.into_iter().map(|t| t.id));
        Ok(())
    }

    fn error(&self, message: String) -> Error {
        tokenizer_error(&self.source, message)
    }
}

impl fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("source", &self.source)
            .field("kind", &self.kind)
            .field("vocab_size", &self.bpe.get_vocab_size())
            .field("max_length", &self.max_length)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder holding the given files, removed when dropped.
    fn folder(name: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("latentd-clip-{name}-"))
            .tempdir()
            .unwrap();
        for (file, text) in files {
            std::fs::write(dir.path().join(file), text).unwrap();
        }
        dir
    }

    const VOCAB: &str = r#"{"c": 0, "a": 1, "t": 2, "t</w>": 3, "at</w>": 4, "cat</w>": 5,
        "!": 6, "!</w>": 7, "<|startoftext|>": 8, "<|endoftext|>": 9}"#;
    const MERGES: &str = "#version: 0.2\na t</w>\nc at</w>\n";

    #[test]
    fn encodes_with_bos_eos_truncation_and_padding() {
        let dir = folder("encode", &[("vocab.json", VOCAB), ("merges.txt", MERGES)]);
        let tokenizer = ClipTokenizer::from_vocab_merges(
            &dir.path().join("vocab.json"),
            &dir.path().join("merges.txt"),
            "!",
            5,
        )
        .unwrap();
        assert_eq!(tokenizer.encode("CAT").unwrap(), [8, 5, 9, 6, 6]);
        assert_eq!(
            tokenizer.encode("cat cat cat cat").unwrap(),
            [8, 5, 5, 5, 9]
        );
        assert_eq!(tokenizer.count_tokens("cat cat cat cat").unwrap(), 4);
        // The pad token is an added token: matched verbatim, never BPE'd as "!</w>".
        assert_eq!(tokenizer.encode("cat!").unwrap(), [8, 5, 6, 9, 6]);
        assert_eq!(tokenizer.encode("").unwrap(), [8, 9, 6, 6, 6]);
    }

    #[test]
    fn kinds_differ_on_special_words_in_other_casing() {
        let dir = folder("kinds", &[("vocab.json", VOCAB), ("merges.txt", MERGES)]);
        let fast = ClipTokenizer::from_vocab_merges(
            &dir.path().join("vocab.json"),
            &dir.path().join("merges.txt"),
            "<|endoftext|>",
            77,
        )
        .unwrap();
        assert_eq!(fast.kind(), ClipTokenizerKind::Fast);
        // The fast pipeline BPEs "<|", "endoftext", "|>"; lower-cased, the slow tokenizer's
        // word pattern finds `<|endoftext|>` again and maps it to its id.
        assert!(fast.count_tokens("CAT<|ENDOFTEXT|>").unwrap() > 2);
        let slow = fast.with_kind(ClipTokenizerKind::Slow);
        assert_eq!(slow.encode("CAT<|ENDOFTEXT|>").unwrap()[..4], [8, 5, 9, 9]);
    }

    #[test]
    fn can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ClipTokenizer>();
    }

    #[test]
    fn missing_files_and_tokens_are_errors() {
        let empty = folder("none", &[]);
        let err = ClipTokenizer::from_dir(empty.path()).unwrap_err();
        assert!(
            matches!(err, Error::Tokenizer { ref path, .. } if path == empty.path()),
            "{err}"
        );

        let dir = folder(
            "nopad",
            &[
                ("vocab.json", VOCAB),
                ("merges.txt", MERGES),
                ("special_tokens_map.json", r#"{"pad_token": "<pad>"}"#),
            ],
        );
        let err = ClipTokenizer::from_dir(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("vocab.json") && err.to_string().contains("<pad>"),
            "{err}"
        );

        let dir = folder("badjson", &[("vocab.json", "{"), ("merges.txt", MERGES)]);
        let err = ClipTokenizer::from_dir(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Json { .. }), "{err}");
    }
}
