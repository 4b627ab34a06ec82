//! Tokens matched verbatim in the raw text before any clean-up: transformers' "added
//! tokens" (`<|startoftext|>`, `<|endoftext|>`, the pad token, tokens a fine-tune added).

/// One added token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AddedToken {
    pub(crate) content: String,
    pub(crate) id: u32,
    /// Eats the whitespace on its left.
    pub(crate) lstrip: bool,
    /// Eats the whitespace on its right.
    pub(crate) rstrip: bool,
}

/// A piece of the raw text: ordinary text, or the id of an added token found in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece<'t> {
    Text(&'t str),
    Token(u32),
}

/// The added tokens of a tokenizer, longest first.
#[derive(Debug, Clone, Default)]
pub(crate) struct AddedTokens {
    by_length: Vec<AddedToken>,
}

impl AddedTokens {
    /// The first definition of a content wins; empty contents are ignored.
    pub(crate) fn new(tokens: impl IntoIterator<Item = AddedToken>) -> Self {
        let mut by_length: Vec<AddedToken> = Vec::new();
        for token in tokens {
            if !token.content.is_empty() && !by_length.iter().any(|t| t.content == token.content) {
                by_length.push(token);
            }
        }
        by_length.sort_by_key(|t| std::cmp::Reverse(t.content.len()));
        Self { by_length }
    }

    /// Splits `text` at the leftmost-longest occurrences of the added tokens, as
    /// transformers' `Trie.split` does; `lstrip`/`rstrip` tokens trim their neighbours.
    /// Text pieces left empty are dropped.
    pub(crate) fn split<'t>(&self, text: &'t str) -> Vec<Piece<'t>> {
        let mut pieces = Vec::new();
        let mut text_start = 0;
        let mut strip_next = false;
        let mut pos = 0;
        while let Some(rest) = text.get(pos..).filter(|rest| !rest.is_empty()) {
            let Some(token) = self
                .by_length
                .iter()
                .find(|t| rest.starts_with(t.content.as_str()))
            else {
                pos += rest.chars().next().map_or(1, char::len_utf8);
                continue;
            };
            let mut before = &text[text_start..pos];
            if strip_next {
                before = before.trim_start();
            }
            if token.lstrip {
                before = before.trim_end();
            }
            if !before.is_empty() {
                pieces.push(Piece::Text(before));
            }
            pieces.push(Piece::Token(token.id));
            strip_next = token.rstrip;
            pos += token.content.len();
            text_start = pos;
        }
        let mut tail = &text[text_start..];
        if strip_next {
            tail = tail.trim_start();
        }
        if !tail.is_empty() {
            pieces.push(Piece::Text(tail));
        }
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(content: &str, id: u32, lstrip: bool, rstrip: bool) -> AddedToken {
        AddedToken {
            content: content.into(),
            id,
            lstrip,
            rstrip,
        }
    }

    #[test]
    fn splits_at_leftmost_longest_match() {
        let added = AddedTokens::new([
            token("<|endoftext|>", 2, false, false),
            token("!", 0, false, false),
            token("!!x", 5, false, false),
        ]);
        assert_eq!(
            added.split("hi!<|endoftext|>!!x é"),
            [
                Piece::Text("hi"),
                Piece::Token(0),
                Piece::Token(2),
                Piece::Token(5),
                Piece::Text(" é"),
            ]
        );
        assert_eq!(added.split(""), []);
        assert_eq!(added.split("plain"), [Piece::Text("plain")]);
    }

    #[test]
    fn strip_flags_trim_neighbours() {
        let added = AddedTokens::new([token("<t>", 7, true, true)]);
        assert_eq!(
            added.split("a  <t>  b"),
            [Piece::Text("a"), Piece::Token(7), Piece::Text("b")]
        );
    }

    #[test]
    fn first_definition_wins() {
        let added = AddedTokens::new([token("!", 0, false, false), token("!", 9, false, false)]);
        assert_eq!(added.split("!"), [Piece::Token(0)]);
    }
}
