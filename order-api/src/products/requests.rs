//! What an admin may say about a product, and the rules it must follow.
//! One set of rules for the HTTP routes and the seed file alike.

use bson::{DateTime, oid::ObjectId};
use common::domain::{Money, Product};
use serde::{Deserialize, Deserializer};
use validator::Validate;

/// Prices are minor units (paise); 10^12 paise is ₹10 billion.
const MAX_PRICE_MINOR: i64 = 1_000_000_000_000;
const MAX_STOCK: i64 = 1_000_000_000;

fn valid_sku(sku: &str) -> Result<(), validator::ValidationError> {
    if sku
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Ok(())
    } else {
        Err(validator::ValidationError::new("sku")
            .with_message("only letters, digits, '-', '_' and '.'".into()))
    }
}

/// A product to create. Unknown fields are refused, and every string field is
/// a string: an operator object such as `{"$gt": ""}` fails to deserialize.
#[derive(Debug, Clone, Deserialize, Validate, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    #[validate(length(min = 1, max = 200, message = "must be 1 to 200 characters"))]
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    #[validate(
        length(min = 1, max = 64, message = "must be 1 to 64 characters"),
        custom(function = "valid_sku")
    )]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub sku: String,
    /// Minor units (paise): an integer, never a float.
    #[validate(range(
        min = 0,
        max = "MAX_PRICE_MINOR",
        message = "must be 0 to 10^12 minor units"
    ))]
    #[serde(deserialize_with = "common::domain::integer")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub price: i64,
    #[validate(range(min = 0, max = "MAX_STOCK", message = "must be 0 to 10^9"))]
    #[serde(deserialize_with = "common::domain::integer")]
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub stock: i64,
    #[validate(length(max = 2000, message = "at most 2000 characters"))]
    #[schema(max_length = 2000)]
    pub description: Option<String>,
}

impl NewProduct {
    /// The product this describes, new and active, priced in `currency`.
    /// `None` only for a negative price, which validation refuses first.
    pub fn into_product(self, currency: &str) -> Option<Product> {
        let now = DateTime::now();
        Some(Product {
            id: ObjectId::new(),
            sku: self.sku,
            name: self.name,
            description: self.description,
            price: Money::from_minor(self.price)?,
            currency: currency.to_owned(),
            stock: self.stock,
            active: true,
            created_at: now,
            updated_at: now,
        })
    }
}

/// A change to a product: only the fields present change. The sku is the
/// product's identity and cannot change. `"description": null` clears it.
#[derive(Debug, Default, Deserialize, Validate, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct ProductPatch {
    #[validate(length(min = 1, max = 200, message = "must be 1 to 200 characters"))]
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false, min_length = 1, max_length = 200)]
    pub name: Option<String>,
    /// Absent: unchanged; `null`: cleared; a string: replaced.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 2000)]
    #[validate(length(max = 2000, message = "at most 2000 characters"))]
    pub description: Option<Option<String>>,
    #[validate(range(
        min = 0,
        max = "MAX_PRICE_MINOR",
        message = "must be 0 to 10^12 minor units"
    ))]
    #[serde(default, deserialize_with = "some_integer")]
    #[schema(nullable = false, minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub price: Option<i64>,
    #[validate(range(min = 0, max = "MAX_STOCK", message = "must be 0 to 10^9"))]
    #[serde(default, deserialize_with = "some_integer")]
    #[schema(nullable = false, minimum = 0, maximum = 1_000_000_000)]
    pub stock: Option<i64>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub active: Option<bool>,
}

impl ProductPatch {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.description.is_none()
            && self.price.is_none()
            && self.stock.is_none()
            && self.active.is_none()
    }
}

/// Tells a field given as `null` (`Some(None)`) from one left out (`None`,
/// through `#[serde(default)]`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// [`not_null`] for an integer, in either JSON form ([`common::domain::integer`]).
fn some_integer<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    common::domain::integer(d).map(Some)
}

/// A field that may be left out but, given, is never `null`: as the
/// schema says (`null` would read as "left out" and change nothing).
fn not_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_patch_tells_null_from_absent() {
        let cleared: ProductPatch =
            serde_json::from_value(json!({ "description": null })).expect("parses");
        assert_eq!(cleared.description, Some(None));
        assert!(!cleared.is_empty());
        let absent: ProductPatch = serde_json::from_value(json!({})).expect("parses");
        assert_eq!(absent.description, None);
        assert!(absent.is_empty());
    }

    #[test]
    fn a_patch_follows_the_rules_of_creation() {
        for bad in [
            json!({ "name": "" }),
            json!({ "price": -1 }),
            json!({ "stock": 1_000_000_001 }),
            json!({ "description": "x".repeat(2001) }),
        ] {
            let patch: ProductPatch = serde_json::from_value(bad.clone()).expect("parses");
            assert!(patch.validate().is_err(), "{bad}");
        }
    }
}
