use bson::{DateTime, oid::ObjectId};
use serde::{Deserialize, Serialize};

use super::Money;

/// A product as stored in the `products` collection.
///
/// Invariant: `stock >= 0`. Every decrement is guarded by `stock >= quantity`
/// in the same update, so concurrent orders cannot take it below zero.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Product {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub sku: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub price: Money,
    pub currency: String,
    pub stock: i64,
    pub active: bool,
    pub created_at: DateTime,
    pub updated_at: DateTime,
}
