//! The caption grammar: writing a caption for a scene, and parsing a caption
//! into the attributes it states. See `GRAMMAR.md` in this crate.

use serde::{Deserialize, Serialize};

use crate::scene::{Background, Colour, Content, Object, Region, Relation, Scene, Shape, Size};

/// What a caption says about one object; an absent size is left free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectSpec {
    /// The stated colour.
    pub colour: Colour,
    /// The stated shape.
    pub shape: Shape,
    /// The stated size, if any.
    pub size: Option<Size>,
}

/// What a caption says about the objects and their placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrangement {
    /// Exactly one object, optionally in a named region.
    One {
        /// The object.
        object: ObjectSpec,
        /// The stated region, if any.
        position: Option<Region>,
    },
    /// Exactly two objects in a relation (`first` relative to `second`).
    Two {
        /// The object named first.
        first: ObjectSpec,
        /// Where `first` is relative to `second`.
        relation: Relation,
        /// The object named second.
        second: ObjectSpec,
    },
}

/// Everything a caption states; whatever it does not state is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SceneSpec {
    /// The objects and their placement.
    pub arrangement: Arrangement,
    /// The stated background colour, if any.
    pub background: Option<Background>,
}

impl SceneSpec {
    /// The stated objects, in caption order.
    pub fn objects(&self) -> Vec<ObjectSpec> {
        match self.arrangement {
            Arrangement::One { object, .. } => vec![object],
            Arrangement::Two { first, second, .. } => vec![first, second],
        }
    }
}

impl Object {
    /// What a caption states about this object.
    pub fn spec(&self) -> ObjectSpec {
        ObjectSpec {
            colour: self.colour,
            shape: self.shape,
            size: self.size_stated.then_some(self.size),
        }
    }
}

impl Scene {
    /// What this scene's caption states.
    pub fn spec(&self) -> SceneSpec {
        let arrangement = match self.content {
            Content::One {
                object,
                position_stated,
            } => Arrangement::One {
                object: object.spec(),
                position: position_stated.then(|| {
                    let f = |v: u32| f64::from(v) / f64::from(crate::scene::SIDE);
                    Region::of_point(f(object.centre.x), f(object.centre.y))
                }),
            },
            Content::Two {
                first,
                relation,
                second,
            } => Arrangement::Two {
                first: first.spec(),
                relation,
                second: second.spec(),
            },
        };
        SceneSpec {
            arrangement,
            background: self.background_stated.then_some(self.background),
        }
    }
}

/// The canonical caption of a scene.
pub fn caption(scene: &Scene) -> String {
    describe(&scene.spec())
}

/// The canonical caption stating exactly `spec`, e.g.
/// "a small red circle at the top left on a black background".
pub fn describe(spec: &SceneSpec) -> String {
    let mut out = match spec.arrangement {
        Arrangement::One { object, position } => {
            let mut s = noun_phrase(&object);
            if let Some(region) = position {
                s.push(' ');
                s.push_str(region.phrase());
            }
            s
        }
        Arrangement::Two {
            first,
            relation,
            second,
        } => format!(
            "{} {} {}",
            noun_phrase(&first),
            relation.phrase(),
            noun_phrase(&second)
        ),
    };
    if let Some(bg) = spec.background {
        out.push_str(" on a ");
        out.push_str(bg.word());
        out.push_str(" background");
    }
    out
}

/// "a [size] colour shape", with "an" before a vowel.
fn noun_phrase(object: &ObjectSpec) -> String {
    let mut words: Vec<&str> = Vec::with_capacity(4);
    if let Some(size) = object.size {
        words.push(size.word());
    }
    words.push(object.colour.word());
    words.push(object.shape.word());
    let article = if words[0].starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {}", words.join(" "))
}

/// Why a caption does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The caption has no words.
    #[error("empty caption")]
    Empty,
    /// A word (or the end of the caption) where something else was required.
    #[error("expected {expected} at word {position}, found {found:?}")]
    Unexpected {
        /// What the grammar allows here.
        expected: &'static str,
        /// The word found, or "" at the end of the caption.
        found: String,
        /// The 0-based index of the offending word.
        position: usize,
    },
}

/// Parses a caption into the attributes it states.
///
/// Case, surrounding whitespace and a final full stop are ignored; besides
/// the canonical forms written by [`describe`] it accepts a few synonyms
/// ("grey", "centre", "middle", "to the left of", "in/at/on" before a region,
/// an optional "corner" after a corner region, "a"/"an" either way).
pub fn parse(text: &str) -> Result<SceneSpec, ParseError> {
    let lowered = text.trim().trim_end_matches('.').to_lowercase();
    let words: Vec<&str> = lowered.split_whitespace().collect();
    if words.is_empty() {
        return Err(ParseError::Empty);
    }
    let mut p = Parser { words, at: 0 };
    let first = p.object()?;
    let arrangement = match p.relation() {
        Some(relation) => Arrangement::Two {
            first,
            relation,
            second: p.object()?,
        },
        None => Arrangement::One {
            object: first,
            position: p.region()?,
        },
    };
    let background = p.background()?;
    if let Some(word) = p.peek() {
        return Err(p.unexpected("end of caption", word));
    }
    Ok(SceneSpec {
        arrangement,
        background,
    })
}

/// A recursive-descent parser over lower-cased words.
struct Parser<'a> {
    words: Vec<&'a str>,
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&'a str> {
        self.words.get(self.at).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<&'a str> {
        self.words.get(self.at + ahead).copied()
    }

    fn unexpected(&self, expected: &'static str, found: &str) -> ParseError {
        ParseError::Unexpected {
            expected,
            found: found.to_string(),
            position: self.at,
        }
    }

    /// Consumes the next word, which must satisfy `f`.
    fn take<T>(
        &mut self,
        expected: &'static str,
        f: impl Fn(&str) -> Option<T>,
    ) -> Result<T, ParseError> {
        let word = self.peek().unwrap_or("");
        match f(word) {
            Some(v) => {
                self.at += 1;
                Ok(v)
            }
            None => Err(self.unexpected(expected, word)),
        }
    }

    /// Consumes the words of `phrase` if they come next.
    fn accept(&mut self, phrase: &[&str]) -> bool {
        let matches = phrase
            .iter()
            .enumerate()
            .all(|(i, w)| self.peek_at(i) == Some(*w));
        if matches {
            self.at += phrase.len();
        }
        matches
    }

    /// object = article [size] colour shape
    fn object(&mut self) -> Result<ObjectSpec, ParseError> {
        self.take("\"a\" or \"an\"", |w| matches!(w, "a" | "an").then_some(()))?;
        let size = self.peek().and_then(Size::from_word);
        if size.is_some() {
            self.at += 1;
        }
        let colour = self.take("a colour", Colour::from_word)?;
        let shape = self.take("a shape", Shape::from_word)?;
        Ok(ObjectSpec {
            colour,
            shape,
            size,
        })
    }

    /// relation = ["to the"] ("left" | "right") "of" | "above" | "below"
    fn relation(&mut self) -> Option<Relation> {
        let start = self.at;
        let lead = self.accept(&["to", "the"]);
        let found = if self.accept(&["left", "of"]) {
            Some(Relation::LeftOf)
        } else if self.accept(&["right", "of"]) {
            Some(Relation::RightOf)
        } else if !lead && self.accept(&["above"]) {
            Some(Relation::Above)
        } else if !lead && self.accept(&["below"]) {
            Some(Relation::Below)
        } else {
            None
        };
        if found.is_none() {
            self.at = start;
        }
        found
    }

    /// region = ("at" | "in" | "on") "the" place ["corner"]
    fn region(&mut self) -> Result<Option<Region>, ParseError> {
        if !matches!(self.peek(), Some("at" | "in" | "on")) || self.peek_at(1) != Some("the") {
            return Ok(None);
        }
        self.at += 2;
        let vertical = self.peek().and_then(|w| match w {
            "top" => Some(0),
            "bottom" => Some(2),
            _ => None,
        });
        if let Some(row) = vertical {
            self.at += 1;
            let column = match self.peek() {
                Some("left") => Some(0),
                Some("right") => Some(2),
                _ => None,
            };
            if column.is_some() {
                self.at += 1;
                self.accept(&["corner"]);
            }
            return Ok(Some(Region::from_cell(column.unwrap_or(1), row)));
        }
        self.take("a region", |w| match w {
            "left" => Some(Region::Left),
            "right" => Some(Region::Right),
            "center" | "centre" | "middle" => Some(Region::Center),
            _ => None,
        })
        .map(Some)
    }

    /// background = "on" ["a"] bg-colour "background"
    fn background(&mut self) -> Result<Option<Background>, ParseError> {
        if self.peek() != Some("on") {
            return Ok(None);
        }
        self.at += 1;
        self.accept(&["a"]);
        let bg = self.take("a background colour", |w| match w {
            "grey" => Some(Background::Gray),
            w => Background::from_word(w),
        })?;
        self.take("\"background\"", |w| (w == "background").then_some(()))?;
        Ok(Some(bg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(
        colour: Colour,
        shape: Shape,
        size: Option<Size>,
        position: Option<Region>,
    ) -> SceneSpec {
        SceneSpec {
            arrangement: Arrangement::One {
                object: ObjectSpec {
                    colour,
                    shape,
                    size,
                },
                position,
            },
            background: None,
        }
    }

    #[test]
    fn writes_the_documented_examples() {
        let s = one(Colour::Red, Shape::Circle, None, None);
        assert_eq!(describe(&s), "a red circle");
        let s = one(
            Colour::Blue,
            Shape::Square,
            Some(Size::Small),
            Some(Region::TopLeft),
        );
        assert_eq!(describe(&s), "a small blue square at the top left");
        let mut s = one(Colour::Orange, Shape::Triangle, None, Some(Region::Center));
        s.background = Some(Background::White);
        assert_eq!(
            describe(&s),
            "an orange triangle in the center on a white background"
        );
        let s = SceneSpec {
            arrangement: Arrangement::Two {
                first: ObjectSpec {
                    colour: Colour::Yellow,
                    shape: Shape::Triangle,
                    size: None,
                },
                relation: Relation::LeftOf,
                second: ObjectSpec {
                    colour: Colour::Green,
                    shape: Shape::Circle,
                    size: Some(Size::Large),
                },
            },
            background: None,
        };
        assert_eq!(
            describe(&s),
            "a yellow triangle left of a large green circle"
        );
    }

    #[test]
    fn accepts_synonyms() {
        let canonical = parse("a small blue square at the top left on a gray background").unwrap();
        for variant in [
            "A small blue square in the top left corner on grey background.",
            "  a  small blue square at the top left on a grey background  ",
            "an small blue square on the top left on a gray background",
        ] {
            assert_eq!(parse(variant).unwrap(), canonical, "{variant}");
        }
        assert_eq!(
            parse("a red circle to the left of a blue square").unwrap(),
            parse("a red circle left of a blue square").unwrap()
        );
        assert_eq!(
            parse("a red circle in the middle").unwrap(),
            one(Colour::Red, Shape::Circle, None, Some(Region::Center))
        );
        assert_eq!(
            parse("a red circle at the top").unwrap(),
            one(Colour::Red, Shape::Circle, None, Some(Region::Top))
        );
    }

    #[test]
    fn rejects_malformed_captions_with_a_position() {
        let cases = [("", ParseError::Empty), ("   .", ParseError::Empty)];
        for (text, err) in cases {
            assert_eq!(parse(text), Err(err));
        }
        let position = |text: &str| match parse(text) {
            Err(ParseError::Unexpected { position, .. }) => position,
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(position("red circle"), 0);
        assert_eq!(position("a pink circle"), 1);
        assert_eq!(position("a red hexagon"), 2);
        assert_eq!(position("a red circle at the sky"), 5);
        assert_eq!(position("a red circle left of"), 5);
        assert_eq!(position("a red circle on a blue background"), 5);
        assert_eq!(position("a red circle and more"), 3);
        assert_eq!(position("a red circle to the above a blue square"), 3);
        assert_eq!(position("a red circle on a white"), 6);
    }
}
