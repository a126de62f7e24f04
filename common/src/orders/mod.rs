//! The `orders` collection: its one owner, for both services. The API
//! places orders (its batch writes the documents `collection` types) and
//! cancels them (`cancellation`); the processor moves them on
//! (`processing`) and sends their emails (`email`). Every filter and update
//! names its fields through `fields`.

pub mod cancellation;
pub mod email;
pub mod fields;
pub mod processing;

use std::collections::HashMap;

use bson::{Document, doc, oid::ObjectId};
use futures::TryStreamExt;
use mongodb::{ClientSession, Collection, Database, IndexModel};

use crate::domain::{Order, OrderStatus};
use fields::{ID, STATUS, USER_ID};

pub fn collection(db: &Database) -> Collection<Order> {
    db.collection("orders")
}

/// Every index of the collection; either service may create them (the
/// same definitions, so creating them twice changes nothing).
pub async fn create_indexes(db: &Database) -> mongodb::error::Result<()> {
    collection(db)
        .create_indexes([
            // A customer's orders, newest first.
            IndexModel::builder()
                .keys(doc! { USER_ID: 1, ID: -1 })
                .build(),
            IndexModel::builder()
                .keys(doc! { USER_ID: 1, STATUS: 1, ID: -1 })
                .build(),
            // An admin's view of everything, by status.
            IndexModel::builder()
                .keys(doc! { STATUS: 1, ID: -1 })
                .build(),
        ])
        .await?;
    email::create_indexes(db).await
}

pub async fn load(db: &Database, id: ObjectId) -> mongodb::error::Result<Option<Order>> {
    collection(db).find_one(doc! { ID: id }).await
}

/// The orders of `ids` that exist, read in the caller's transaction and
/// bounded by the time left before `deadline`.
pub async fn load_many(
    db: &Database,
    session: &mut ClientSession,
    ids: &[ObjectId],
    deadline: tokio::time::Instant,
) -> mongodb::error::Result<HashMap<ObjectId, Order>> {
    let found = crate::mongo::find_in(
        &collection(db),
        session,
        doc! { ID: { "$in": ids } },
        deadline,
    )
    .await?;
    Ok(found.into_iter().map(|order| (order.id, order)).collect())
}

/// One order, if `owner` (when given) placed it: someone else's order is
/// indistinguishable from a missing one.
pub async fn find_visible(
    db: &Database,
    id: ObjectId,
    owner: Option<ObjectId>,
) -> mongodb::error::Result<Option<Order>> {
    collection(db).find_one(visible(id, owner)).await
}

/// The filter matching order `id` if `owner` (when given) placed it.
pub fn visible(id: ObjectId, owner: Option<ObjectId>) -> Document {
    let mut filter = doc! { ID: id };
    if let Some(owner) = owner {
        filter.insert(USER_ID, owner);
    }
    filter
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
        query.insert(USER_ID, owner);
    }
    if let Some(status) = filter.status {
        query.insert(STATUS, status.as_str());
    }
    if let Some(before) = filter.before {
        query.insert(ID, doc! { "$lt": before });
    }
    collection(db)
        .find(query)
        .sort(doc! { ID: -1 })
        .limit(filter.limit + 1)
        .await?
        .try_collect()
        .await
}
