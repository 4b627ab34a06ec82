//! Seeds on the wire: any u64, as a JSON number or a decimal string (numbers above 2^53
//! do not survive JavaScript or typed clients' doubles), documented as such.

use serde::de::{self, Deserializer, Visitor};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
use utoipa::openapi::{OneOf, RefOr, Schema};

/// Deserializes an optional seed given as a number or a decimal string.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    struct SeedVisitor;

    impl<'de> Visitor<'de> for SeedVisitor {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(
                "a seed between 0 and 18446744073709551615, as a number or a decimal string",
            )
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map(Some)
                .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse_decimal(v)
                .map(Some)
                .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }

    deserializer.deserialize_option(SeedVisitor)
}

/// A seed written as its decimal digits (nothing else: no sign, no spaces), as
/// [`decimal_pattern`] describes it; `None` for anything else or a value over u64.
pub fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A regular expression matching exactly the decimal strings of 0..=u64::MAX (leading
/// zeros allowed up to 20 digits, as [`parse_decimal`] reads them).
pub fn decimal_pattern() -> String {
    let max = u64::MAX.to_string();
    let digits = max.len();
    // Shorter than the maximum's 20 digits, or 20 digits starting with a 0: any.
    let mut branches = vec![
        format!("[0-9]{{1,{}}}", digits - 1),
        format!("0[0-9]{{{}}}", digits - 1),
    ];
    // 20 digits: the maximum's first i digits, then a smaller digit, then any.
    for (i, digit) in max.bytes().enumerate() {
        let digit = digit - b'0';
        let low = if i == 0 { 1 } else { 0 };
        if digit > low {
            let smaller = if digit - 1 == low {
                low.to_string()
            } else {
                format!("[{low}-{}]", digit - 1)
            };
            let rest = match digits - i - 1 {
                0 => String::new(),
                1 => "[0-9]".to_string(),
                n => format!("[0-9]{{{n}}}"),
            };
            branches.push(format!("{}{smaller}{rest}", &max[..i]));
        }
    }
    branches.push(max);
    format!("^({})$", branches.join("|"))
}

/// The seed's schema: a uint64 number, a string of its decimal digits, or null.
pub fn schema() -> impl Into<RefOr<Schema>> {
    let number = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::UInt64)))
        .minimum(Some(0))
        .maximum(Some(u64::MAX as f64));
    let string = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(decimal_pattern()))
        .description(Some("the seed's decimal digits, for values above 2^53"));
    let one_of: OneOf = OneOfBuilder::new()
        .item(number)
        .item(string)
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some(
            "Seed; the same seed and parameters give the same images (default: random \
             below 2^53, returned). Any u64, as a number or a decimal string; null or \
             absent: random.",
        ))
        .build();
    Schema::OneOf(one_of)
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "super::deserialize")]
        seed: Option<u64>,
    }

    fn seed(json: &str) -> Result<Option<u64>, String> {
        serde_json::from_str::<Body>(json)
            .map(|b| b.seed)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_decimal_pattern_matches_exactly_the_u64_range() {
        let pattern = super::decimal_pattern();
        // A small matcher for the pattern's alternation of digit classes, enough to check
        // it against the parser at the edges.
        let matches = |text: &str| -> bool {
            let inner = &pattern[2..pattern.len() - 2];
            inner.split('|').any(|branch| branch_matches(branch, text))
        };
        for text in [
            "0",
            "7",
            "1234567890123456789",
            "09999999999999999999",
            "18446744073709551615",
            "18446744073709551614",
            "18446744073709551609",
            "17999999999999999999",
            "18446744073709551616",
            "18446744073709551620",
            "18446744073709552000",
            "19000000000000000000",
            "99999999999999999999",
            "100000000000000000000",
            "",
            "+5",
            " 5",
            "5 ",
        ] {
            assert_eq!(
                matches(text),
                super::parse_decimal(text).is_some(),
                "{text:?} against {pattern}"
            );
        }
    }

    /// Whether `text` matches one branch: literal digits, `[a-b]` classes and `[0-9]{n}` or
    /// `[0-9]{m,n}` runs.
    fn branch_matches(branch: &str, text: &str) -> bool {
        let mut pos = 0;
        let bytes = text.as_bytes();
        let mut rest = branch;
        while !rest.is_empty() {
            if let Some(class) = rest.strip_prefix('[') {
                let (lo, hi) = (class.as_bytes()[0], class.as_bytes()[2]);
                rest = &class[4..];
                let (min, max) = if let Some(count) = rest.strip_prefix('{') {
                    let end = count.find('}').unwrap();
                    let spec = &count[..end];
                    rest = &count[end + 1..];
                    match spec.split_once(',') {
                        Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                        None => (spec.parse().unwrap(), spec.parse().unwrap()),
                    }
                } else {
                    (1, 1)
                };
                let mut n = 0;
                while n < max && pos < bytes.len() && (lo..=hi).contains(&bytes[pos]) {
                    n += 1;
                    pos += 1;
                }
                if n < min {
                    return false;
                }
            } else {
                let c = rest.as_bytes()[0];
                rest = &rest[1..];
                if pos >= bytes.len() || bytes[pos] != c {
                    return false;
                }
                pos += 1;
            }
        }
        pos == bytes.len()
    }

    #[test]
    fn seeds_parse_as_numbers_and_decimal_strings() {
        assert_eq!(seed("{}"), Ok(None));
        assert_eq!(seed(r#"{"seed": null}"#), Ok(None));
        assert_eq!(seed(r#"{"seed": 42}"#), Ok(Some(42)));
        assert_eq!(
            seed(r#"{"seed": "5144162125717175227"}"#),
            Ok(Some(5144162125717175227))
        );
        assert_eq!(
            seed(r#"{"seed": "18446744073709551615"}"#),
            Ok(Some(u64::MAX))
        );
        for bad in [
            r#"-1"#,
            r#""-1""#,
            r#""18446744073709551616""#,
            r#""1e3""#,
            r#""""#,
            "1.5",
        ] {
            assert!(seed(&format!(r#"{{"seed": {bad}}}"#)).is_err(), "{bad}");
        }
    }
}
