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
            let digits = v.trim();
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(E::invalid_value(de::Unexpected::Str(v), &self));
            }
            digits
                .parse::<u64>()
                .map(Some)
                .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }

    deserializer.deserialize_option(SeedVisitor)
}

/// The seed's schema: a uint64 number or a string of its decimal digits.
pub fn schema() -> impl Into<RefOr<Schema>> {
    let number = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::UInt64)))
        .minimum(Some(0))
        .maximum(Some(u64::MAX as f64));
    let string = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[0-9]{1,20}$"))
        .description(Some("the seed's decimal digits, for values above 2^53"));
    let one_of: OneOf = OneOfBuilder::new()
        .item(number)
        .item(string)
        .description(Some(
            "Seed; the same seed and parameters give the same images (default: random \
             below 2^53, returned). Any u64, as a number or a decimal string.",
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
