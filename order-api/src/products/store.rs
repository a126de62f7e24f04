//! The `products` collection.

use bson::{doc, oid::ObjectId};
use common::domain::Product;
use mongodb::{Collection, Database, IndexModel, options::IndexOptions};
use serde::Serialize;

pub fn collection(db: &Database) -> Collection<Product> {
    db.collection("products")
}

pub async fn create_indexes(db: &Database) -> mongodb::error::Result<()> {
    collection(db)
        .create_index(
            IndexModel::builder()
                .keys(doc! { "sku": 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await?;
    Ok(())
}

pub async fn find(db: &Database, id: ObjectId) -> mongodb::error::Result<Option<Product>> {
    collection(db).find_one(doc! { "_id": id }).await
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductView {
    pub id: String,
    pub sku: String,
    pub name: String,
    pub description: Option<String>,
    /// Minor units.
    pub price: i64,
    pub currency: String,
    pub stock: i64,
    pub active: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Product> for ProductView {
    fn from(p: Product) -> Self {
        ProductView {
            id: p.id.to_hex(),
            sku: p.sku,
            name: p.name,
            description: p.description,
            price: p.price.minor(),
            currency: p.currency,
            stock: p.stock,
            active: p.active,
            created_at: p.created_at.try_to_rfc3339_string().unwrap_or_default(),
            updated_at: p.updated_at.try_to_rfc3339_string().unwrap_or_default(),
        }
    }
}
