//! A small CLIP-format BPE vocabulary learned from the caption grammar.
//!
//! The trainer starts from CLIP's 512 byte symbols (each byte as GPT-2's
//! printable character, and the same with the end-of-word marker `</w>`) and
//! merges the most frequent adjacent pair of a word-frequency table until every
//! word of the corpus is one token. The files it writes (`vocab.json`,
//! `merges.txt`, `tokenizer_config.json`, `special_tokens_map.json`) are laid
//! out exactly as transformers' `CLIPTokenizer` saves them.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::json;

use crate::error::io;
use crate::Result;

/// CLIP's beginning-of-text token.
pub const BOS: &str = "<|startoftext|>";
/// CLIP's end-of-text token, also used for unknown symbols and padding.
pub const EOS: &str = "<|endoftext|>";
const END_OF_WORD: &str = "</w>";

/// A learned vocabulary: the ordered token list and the merge rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpeVocabulary {
    /// Tokens in id order.
    pub tokens: Vec<String>,
    /// Merge rules in priority order.
    pub merges: Vec<(String, String)>,
}

impl BpeVocabulary {
    /// Learns merges from `words` (lower-case words with their frequencies) until
    /// every word is a single token.
    pub fn train(words: &BTreeMap<String, u64>) -> Self {
        let byte_chars = byte_chars();
        let mut segmented: Vec<(Vec<String>, u64)> = words
            .iter()
            .filter(|(word, _)| !word.is_empty())
            .map(|(word, &count)| (symbols(word, &byte_chars), count))
            .collect();
        let mut merges = Vec::new();
        while let Some(pair) = most_frequent_pair(&segmented) {
            for (symbols, _) in &mut segmented {
                merge_pair(symbols, &pair);
            }
            merges.push(pair);
        }
        let mut tokens: Vec<String> = byte_chars.iter().map(|c| c.to_string()).collect();
        tokens.extend(byte_chars.iter().map(|c| format!("{c}{END_OF_WORD}")));
        tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        tokens.push(BOS.to_owned());
        tokens.push(EOS.to_owned());
        Self { tokens, merges }
    }

    /// Number of tokens (the text encoder's `vocab_size`).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the vocabulary is empty (never, once trained).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Writes the tokenizer folder for a context of `max_length` tokens.
    pub fn save(&self, dir: &Path, max_length: usize) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let vocab: serde_json::Map<String, serde_json::Value> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.clone(), json!(id)))
            .collect();
        crate::save::write_json(&dir.join("vocab.json"), &serde_json::Value::Object(vocab))?;
        let mut merges = String::from("#version: 0.2\n");
        for (a, b) in &self.merges {
            merges.push_str(&format!("{a} {b}\n"));
        }
        let path = dir.join("merges.txt");
        std::fs::write(&path, merges).map_err(io(&path))?;
        crate::save::write_json(&dir.join("tokenizer.json"), &self.tokenizer_json())?;
        let special = |content: &str| json!({"content": content, "lstrip": false, "normalized": true, "rstrip": false, "single_word": false});
        crate::save::write_json(
            &dir.join("special_tokens_map.json"),
            &json!({
                "bos_token": special(BOS),
                "eos_token": special(EOS),
                "pad_token": special(EOS),
                "unk_token": special(EOS),
            }),
        )?;
        crate::save::write_json(
            &dir.join("tokenizer_config.json"),
            &json!({
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": max_length,
                "bos_token": BOS,
                "eos_token": EOS,
                "pad_token": EOS,
                "unk_token": EOS,
                "do_lower_case": true,
                "errors": "replace",
                "add_prefix_space": false,
                "clean_up_tokenization_spaces": true,
            }),
        )
    }
}

impl BpeVocabulary {
    /// The same vocabulary as a `tokenizers` `tokenizer.json`, with the
    /// normaliser, pre-tokeniser, post-processor and decoder of CLIP's.
    pub fn tokenizer_json(&self) -> serde_json::Value {
        let vocab: serde_json::Map<String, serde_json::Value> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.clone(), json!(id)))
            .collect();
        let merges: Vec<String> = self
            .merges
            .iter()
            .map(|(a, b)| format!("{a} {b}"))
            .collect();
        let id = |token: &str| self.tokens.iter().position(|t| t == token);
        let added = |token: &str| {
            json!({"id": id(token), "content": token, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": true, "special": true})
        };
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [added(BOS), added(EOS)],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
                {"type": "Lowercase"},
            ]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": CLIP_SPLIT}, "behavior": "Removed", "invert": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
            ]},
            "post_processor": {"type": "RobertaProcessing", "sep": [EOS, id(EOS)], "cls": [BOS, id(BOS)],
                               "trim_offsets": false, "add_prefix_space": false},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": EOS, "continuing_subword_prefix": "",
                      "end_of_word_suffix": END_OF_WORD, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": false, "vocab": vocab, "merges": merges},
        })
    }
}

/// CLIP's pre-tokenisation pattern (special tokens, contractions, letters,
/// single digits, other symbols), as in its `tokenizer.json`.
const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// GPT-2's byte-to-character table in CLIP's vocabulary order: the printable
/// bytes as themselves, then the others mapped to code points from 256 up.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut chars: Vec<char> = (0u32..256)
        .filter(|&b| printable(b))
        .filter_map(char::from_u32)
        .collect();
    let mut next = 256;
    for b in 0u32..256 {
        if !printable(b) {
            chars.extend(char::from_u32(next));
            next += 1;
        }
    }
    chars
}

/// The byte symbols of `word`, the last one marked as the end of the word.
fn symbols(word: &str, byte_chars: &[char]) -> Vec<String> {
    let table: HashMap<u8, char> = (0u32..256)
        .zip(byte_table_order(byte_chars))
        .map(|(b, c)| (b as u8, c))
        .collect();
    let mut out: Vec<String> = word
        .bytes()
        .filter_map(|b| table.get(&b).map(|c| c.to_string()))
        .collect();
    if let Some(last) = out.last_mut() {
        last.push_str(END_OF_WORD);
    }
    out
}

/// The character of each byte value 0..=255 (the inverse of the table order).
fn byte_table_order(byte_chars: &[char]) -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let order: Vec<u32> = (0u32..256)
        .filter(|&b| printable(b))
        .chain((0u32..256).filter(|&b| !printable(b)))
        .collect();
    let mut by_byte = vec!['\0'; 256];
    for (&b, &c) in order.iter().zip(byte_chars) {
        by_byte[b as usize] = c;
    }
    by_byte
}

/// The adjacent pair with the highest total count; ties go to the smallest pair.
fn most_frequent_pair(words: &[(Vec<String>, u64)]) -> Option<(String, String)> {
    let mut counts: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for (symbols, count) in words {
        for pair in symbols.windows(2) {
            *counts.entry((&pair[0], &pair[1])).or_default() += count;
        }
    }
    let best = counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))?;
    Some((best.0 .0.to_owned(), best.0 .1.to_owned()))
}

/// Replaces every occurrence of `pair` in `symbols`, left to right.
fn merge_pair(symbols: &mut Vec<String>, pair: &(String, String)) {
    let mut out = Vec::with_capacity(symbols.len());
    let mut i = 0;
    while i < symbols.len() {
        if i + 1 < symbols.len() && symbols[i] == pair.0 && symbols[i + 1] == pair.1 {
            out.push(format!("{}{}", pair.0, pair.1));
            i += 2;
        } else {
            out.push(std::mem::take(&mut symbols[i]));
            i += 1;
        }
    }
    *symbols = out;
}

/// Word frequencies of `texts` split as CLIP's pre-tokenizer splits plain
/// lower-case ASCII text: runs of letters, runs of digits one by one, and runs
/// of other visible characters.
pub fn word_counts<'a>(texts: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for text in texts {
        let lower = text.to_lowercase();
        let mut chars = lower.chars().peekable();
        while let Some(&c) = chars.peek() {
            let mut word = String::new();
            if c.is_alphabetic() {
                while let Some(&c) = chars.peek().filter(|c| c.is_alphabetic()) {
                    word.push(c);
                    chars.next();
                }
            } else if c.is_numeric() || c.is_whitespace() {
                chars.next();
                if c.is_numeric() {
                    word.push(c);
                }
            } else {
                while let Some(&c) = chars
                    .peek()
                    .filter(|c| !(c.is_alphanumeric() || c.is_whitespace()))
                {
                    word.push(c);
                    chars.next();
                }
            }
            if !word.is_empty() {
                *counts.entry(word).or_default() += 1;
            }
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use latentd_models::text::ClipTokenizer;

    fn corpus() -> BTreeMap<String, u64> {
        word_counts([
            "a red circle above a small blue square on a gray background",
            "an orange triangle at the top left.",
            "a yellow square",
        ])
    }

    #[test]
    fn byte_table_is_clip_order() {
        let chars = byte_chars();
        assert_eq!(chars.len(), 256);
        assert_eq!(chars[0], '!');
        assert_eq!(chars[93], '~');
        // Byte 0 is the first non-printable byte, mapped to U+0100.
        assert_eq!(byte_table_order(&chars)[0], '\u{100}');
        assert_eq!(byte_table_order(&chars)[b'a' as usize], 'a');
    }

    #[test]
    fn every_word_becomes_one_token() {
        let words = corpus();
        let vocab = BpeVocabulary::train(&words);
        assert_eq!(vocab.len(), 512 + vocab.merges.len() + 2);
        let tmp = tempfile::Builder::new()
            .prefix("latentd-bpe-")
            .tempdir()
            .unwrap();
        let dir = tmp.path();
        vocab.save(dir, 16).unwrap();
        let tokenizer = ClipTokenizer::from_dir(dir).unwrap();
        assert_eq!(tokenizer.max_length(), 16);
        for word in words.keys() {
            assert_eq!(tokenizer.count_tokens(word).unwrap(), 1, "{word}");
        }
        let ids = tokenizer.encode("a red circle.").unwrap();
        let id = |t: &str| vocab.tokens.iter().position(|x| x == t).unwrap() as u32;
        assert_eq!(
            &ids[..6],
            &[
                id(BOS),
                id("a</w>"),
                id("red</w>"),
                id("circle</w>"),
                id(".</w>"),
                id(EOS)
            ]
        );
        assert_eq!(ids[6..], [id(EOS); 10]);
        // An unseen word still encodes, from smaller pieces.
        assert!(tokenizer.count_tokens("crimson").unwrap() > 1);
        // tokenizer.json alone gives the same ids.
        std::fs::remove_file(dir.join("vocab.json")).unwrap();
        std::fs::remove_file(dir.join("merges.txt")).unwrap();
        let from_json = ClipTokenizer::from_dir(dir).unwrap();
        for text in ["a red circle.", "An ORANGE  triangle, at 12", "crimson"] {
            assert_eq!(
                from_json.encode(text).unwrap(),
                tokenizer.encode(text).unwrap()
            );
        }
    }

    #[test]
    fn splits_like_clip() {
        let counts = word_counts(["A red  circle, at 12."]);
        let words: Vec<_> = counts.keys().map(String::as_str).collect();
        assert_eq!(words, [",", ".", "1", "2", "a", "at", "circle", "red"]);
    }
}
