//! Text clean-up and word splitting in front of CLIP's byte-level BPE.
//!
//! transformers has two CLIP text front ends and diffusers gets one or the other (see
//! [`ClipTokenizerKind`](super::ClipTokenizerKind)):
//! - the slow `CLIPTokenizer` of transformers 4 without `ftfy` runs BERT's `BasicTokenizer`
//!   (no accent stripping, no punctuation split): it drops control and format characters
//!   (zero-width space, zero-width joiner, ...) and U+FFFD, puts spaces around CJK
//!   ideographs, applies NFC and lower-cases each word with Python's `str.lower`;
//! - the `tokenizers` pipeline (`CLIPTokenizerFast`, and `CLIPTokenizer` since transformers
//!   5) applies NFC and lower-cases character by character, then splits each CLIP word again
//!   with GPT-2's byte-level regex.
//!
//! Both split words with CLIP's regex and map every UTF-8 byte to a printable character.

use tokenizers::utils::SysRegex;
use tokenizers::NormalizedString;

/// CLIP's word pattern (openai/CLIP `SimpleTokenizer`, transformers `CLIPTokenizer`).
const WORD_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// GPT-2's split, applied by the `ByteLevel` pre-tokenizer (`use_regex: true`).
const BYTE_LEVEL_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Characters `BasicTokenizer._clean_text` removes: Unicode "Other" (control, format,
/// private use, unassigned) and U+FFFD. Tab, LF and CR are among them but become spaces.
const DROPPED_PATTERN: &str = r"[\p{C}\x{FFFD}]";

/// The regexes of both front ends, compiled once per tokenizer.
#[derive(Debug)]
pub(crate) struct TextSplitter {
    words: SysRegex,
    byte_level: SysRegex,
    dropped: SysRegex,
}

impl TextSplitter {
    pub(crate) fn new() -> Result<Self, String> {
        let compile = |pattern: &str| {
            SysRegex::new(pattern).map_err(|e| format!("cannot compile regex {pattern:?}: {e}"))
        };
        Ok(Self {
            words: compile(WORD_PATTERN)?,
            byte_level: compile(BYTE_LEVEL_PATTERN)?,
            dropped: compile(DROPPED_PATTERN)?,
        })
    }

    /// The slow tokenizer's clean-up: `" ".join(BasicTokenizer(...).tokenize(text))`.
    pub(crate) fn clean_slow(&self, text: &str) -> String {
        let mut kept = String::with_capacity(text.len() + 16);
        let mut last = 0;
        for (start, end) in self.dropped.find_iter(text) {
            push_spacing_cjk(&mut kept, &text[last..start]);
            if matches!(&text[start..end], "\t" | "\n" | "\r") {
                kept.push(' ');
            }
            last = end;
        }
        push_spacing_cjk(&mut kept, &text[last..]);
        let mut normalized = NormalizedString::from(kept);
        normalized.nfc();
        // After the clean-up the only whitespace left is what Python's `str.split()` splits
        // on too (Zs, U+2028, U+2029, space, tab, LF, CR), so `split_whitespace` agrees.
        // `str::to_lowercase` applies the final-sigma rule, as `str.lower` does.
        let words: Vec<String> = normalized
            .get()
            .split_whitespace()
            .map(str::to_lowercase)
            .collect();
        words.join(" ")
    }

    /// The `tokenizers` normalizer: NFC, then per-character lower-casing. (Its whitespace
    /// replacement is left out: whitespace only separates words.)
    pub(crate) fn clean_fast(&self, text: &str) -> String {
        let mut normalized = NormalizedString::from(text);
        normalized.nfc().lowercase();
        normalized.get().to_owned()
    }

    /// CLIP words of a cleaned text, in order.
    pub(crate) fn words<'a>(&'a self, text: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.words.find_iter(text).map(move |(s, e)| &text[s..e])
    }

    /// The pieces the `ByteLevel` pre-tokenizer cuts a word into.
    pub(crate) fn byte_level_pieces<'a>(
        &'a self,
        word: &'a str,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.byte_level
            .find_iter(word)
            .map(move |(s, e)| &word[s..e])
    }
}

/// Appends `text`, with a space on each side of every CJK ideograph.
fn push_spacing_cjk(out: &mut String, text: &str) {
    for c in text.chars() {
        if is_cjk_ideograph(c) {
            out.push(' ');
            out.push(c);
            out.push(' ');
        } else {
            out.push(c);
        }
    }
}

/// The code point ranges `BasicTokenizer._is_chinese_char` treats as CJK ideographs.
fn is_cjk_ideograph(c: char) -> bool {
    matches!(
        u32::from(c),
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B820..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

/// Maps each UTF-8 byte of `word` to the character that stands for it in the vocabulary.
pub(crate) fn byte_level(word: &str) -> String {
    word.bytes().map(|b| BYTE_CHARS[usize::from(b)]).collect()
}

/// GPT-2's `bytes_to_unicode`: printable Latin-1 bytes stand for themselves, the others
/// (controls, space, U+00AD ...) for U+0100 onwards, in byte order.
const BYTE_CHARS: [char; 256] = byte_chars();

const fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_extra: u32 = 0x100;
    let mut byte: u32 = 0;
    while byte < 256 {
        let printable = matches!(byte, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            byte
        } else {
            let code = next_extra;
            next_extra += 1;
            code
        };
        table[byte as usize] = match char::from_u32(code) {
            Some(c) => c,
            None => char::REPLACEMENT_CHARACTER,
        };
        byte += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn splitter() -> TextSplitter {
        TextSplitter::new().unwrap()
    }

    #[test]
    fn byte_table_matches_gpt2() {
        assert_eq!(BYTE_CHARS[b'a' as usize], 'a');
        assert_eq!(BYTE_CHARS[0], '\u{100}');
        assert_eq!(BYTE_CHARS[b' ' as usize], '\u{120}');
        assert_eq!(BYTE_CHARS[0xAD], '\u{143}');
        let mut all: Vec<char> = BYTE_CHARS.to_vec();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 256);
        assert_eq!(byte_level("é"), "Ã©");
    }

    #[test]
    fn slow_clean_up_follows_basic_tokenizer() {
        let s = splitter();
        assert_eq!(s.clean_slow("  A\tPhoto\n\nOF  x "), "a photo of x");
        assert_eq!(s.clean_slow("zero\u{200b}width"), "zerowidth");
        assert_eq!(s.clean_slow("bad\u{fffd}\u{7}char"), "badchar");
        assert_eq!(s.clean_slow("東京タワー"), "東 京 タワー");
        assert_eq!(s.clean_slow("cafe\u{301}"), "caf\u{e9}");
        assert_eq!(s.clean_slow("ΣΑΣ"), "σας");
        assert_eq!(s.clean_slow("a\u{3000}b\u{2028}c"), "a b c");
    }

    #[test]
    fn fast_clean_up_lowercases_per_character() {
        let s = splitter();
        assert_eq!(s.clean_fast("ΣΑΣ"), "σασ");
        assert_eq!(s.clean_fast("zero\u{200b}Width"), "zero\u{200b}width");
    }

    #[test]
    fn words_follow_the_clip_pattern() {
        let s = splitter();
        let words: Vec<&str> = s.words("it's 42 cats!!! <|endoftext|>").collect();
        assert_eq!(
            words,
            ["it", "'s", "4", "2", "cats", "!!!", "<|endoftext|>"]
        );
        let pieces: Vec<&str> = s.byte_level_pieces("<|endoftext|>").collect();
        assert_eq!(pieces, ["<|", "endoftext", "|>"]);
    }
}
