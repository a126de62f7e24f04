//! The `products` collection.

use bson::{Document, doc, oid::ObjectId};
use common::domain::Product;
use futures::{FutureExt, TryStreamExt};
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

pub async fn find_by_sku(db: &Database, sku: &str) -> mongodb::error::Result<Option<Product>> {
    collection(db).find_one(doc! { "sku": sku }).await
}

/// Adds a product; a taken sku is a duplicate-key error.
pub async fn insert(db: &Database, product: &Product) -> mongodb::error::Result<()> {
    common::mongo::insert_bounded(db, "insert_product", &collection(db), product).await
}

/// Applies `set` to one product and returns it as it is afterwards; `None`
/// if there is no such product.
pub async fn update(
    db: &Database,
    id: ObjectId,
    set: Document,
) -> mongodb::error::Result<Option<Product>> {
    common::mongo::bounded_write(
        db,
        "update_product",
        (collection(db), set),
        |session, (products, set)| {
            common::mongo::update_and_read(
                products,
                Some(session),
                doc! { "_id": id },
                doc! { "$set": set.clone() },
            )
            .boxed()
        },
    )
    .await
}

/// Up to `limit` products after `after` in `_id` order. `_id` is unique and
/// indexed, so a page is one index range scan and no product is skipped or
/// repeated between pages, whatever is inserted meanwhile.
pub async fn page(
    db: &Database,
    after: Option<ObjectId>,
    limit: i64,
    include_inactive: bool,
) -> mongodb::error::Result<Vec<Product>> {
    let mut filter = Document::new();
    if let Some(after) = after {
        filter.insert("_id", doc! { "$gt": after });
    }
    if !include_inactive {
        filter.insert("active", true);
    }
    collection(db)
        .find(filter)
        .sort(doc! { "_id": 1 })
        .limit(limit)
        .await?
        .try_collect()
        .await
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
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
            created_at: common::domain::rfc3339_millis(p.created_at),
            updated_at: common::domain::rfc3339_millis(p.updated_at),
        }
    }
}
