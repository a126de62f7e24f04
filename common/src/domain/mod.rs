//! Domain types shared by both services. Values that exist are valid: parsing
//! happens once, at the edge.

mod email;
mod money;
mod order;
mod product;
mod quantity;

pub use email::{EmailAddress, EmailAddressError};
pub use money::{Money, TaxRate};
pub use order::{
    EmailDelivery, EmailKind, EmailStatus, Order, OrderLine, OrderStatus, TimelineEntry,
    TimelineEvent, Totals,
};
pub use product::Product;
pub use quantity::{Quantity, QuantityError};

/// How the API writes a time: RFC 3339 in UTC with exactly three fraction
/// digits (`2026-11-21T14:47:43.900Z`), so the strings sort as the times do.
pub fn rfc3339_millis(at: bson::DateTime) -> String {
    at.to_chrono()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// An integer as JSON carries one: also when written with a zero fraction
/// (`5.0`), which JSON Schema's `integer` admits and a client that writes
/// every number as a float means. A fraction (`5.5`), or a float too large to
/// be exact, is refused: amounts and counts stay integers.
pub fn integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    use serde::de::{Error, Unexpected, Visitor};

    struct Whole;
    impl Visitor<'_> for Whole {
        type Value = i64;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an integer")
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
        }

        fn visit_f64<E: Error>(self, v: f64) -> Result<i64, E> {
            // 2^53: above it not every integer has a float.
            const EXACT: f64 = 9_007_199_254_740_992.0;
            if v.fract() == 0.0 && v.abs() <= EXACT {
                #[allow(clippy::cast_possible_truncation)]
                Ok(v as i64)
            } else {
                Err(E::invalid_value(Unexpected::Float(v), &self))
            }
        }
    }
    deserializer.deserialize_any(Whole)
}

#[cfg(test)]
mod integer_tests {
    #[derive(serde::Deserialize)]
    struct Count(#[serde(deserialize_with = "super::integer")] i64);

    #[test]
    fn whole_numbers_in_either_form_and_no_fractions() {
        let read = |json: &str| serde_json::from_str::<Count>(json).map(|c| c.0);
        assert_eq!(read("5").ok(), Some(5));
        assert_eq!(read("5.0").ok(), Some(5));
        assert_eq!(read("-3").ok(), Some(-3));
        assert!(read("5.5").is_err());
        assert!(read("1e300").is_err());
        assert!(read("\"5\"").is_err());
    }
}

#[cfg(test)]
mod time_format_tests {
    #[test]
    fn times_keep_three_fraction_digits() {
        let at = bson::DateTime::from_millis(1_795_270_063_900);
        assert_eq!(super::rfc3339_millis(at), "2026-11-21T14:07:43.900Z");
    }
}
