//! The `orders` collection.

use bson::{Document, doc, oid::ObjectId};
use common::domain::{Order, OrderStatus};
use futures::TryStreamExt;
use mongodb::{Collection, Database, IndexModel};

pub fn collection(db: &Database) -> Collection<Order> {
    db.collection("orders")
}

pub async fn create_indexes(db: &Database) -> mongodb::error::Result<()> {
    collection(db)
        .create_indexes([
            // A customer's orders, newest first.
            IndexModel::builder()
                .keys(doc! { "user_id": 1, "_id": -1 })
                .build(),
            IndexModel::builder()
                .keys(doc! { "user_id": 1, "status": 1, "_id": -1 })
                .build(),
            // An admin's view of everything, by status.
            IndexModel::builder()
                .keys(doc! { "status": 1, "_id": -1 })
                .build(),
        ])
        .await?;
    Ok(())
}

/// One order, if `owner` (when given) placed it: someone else's order is
/// indistinguishable from a missing one.
pub async fn find_visible(
    db: &Database,
    id: ObjectId,
    owner: Option<ObjectId>,
) -> mongodb::error::Result<Option<Order>> {
    let mut filter = doc! { "_id": id };
    if let Some(owner) = owner {
        filter.insert("user_id", owner);
    }
    collection(db).find_one(filter).await
}

pub struct ListFilter {
    pub owner: Option<ObjectId>,
    pub status: Option<OrderStatus>,
    /// Only orders older than this one (the previous page's last).
    pub before: Option<ObjectId>,
    pub limit: i64,
}

/// Newest first; fetches `limit + 1` so the caller can tell whether more follow.
pub async fn list(db: &Database, filter: &ListFilter) -> mongodb::error::Result<Vec<Order>> {
    let mut query = Document::new();
    if let Some(owner) = filter.owner {
        query.insert("user_id", owner);
    }
    if let Some(status) = filter.status {
        query.insert("status", status.as_str());
    }
    if let Some(before) = filter.before {
        query.insert("_id", doc! { "$lt": before });
    }
    collection(db)
        .find(query)
        .sort(doc! { "_id": -1 })
        .limit(filter.limit + 1)
        .await?
        .try_collect()
        .await
}
