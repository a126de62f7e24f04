//! The `outbox` collection. A row is written in the same transaction as the
//! order it announces, and is marked published once SQS has accepted it.

use bson::{DateTime, doc, oid::ObjectId};
use common::event::{OrderEvent, OrderEventType};
use futures::TryStreamExt;
use mongodb::{ClientSession, Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboxStatus {
    Pending,
    Published,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxMessage {
    /// Also the event id: the consumer's idempotency key.
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub order_id: ObjectId,
    pub event_type: String,
    /// The SQS message body, exactly as sent.
    pub body: String,
    pub status: OutboxStatus,
    pub attempts: i32,
    #[serde(default)]
    pub last_error: Option<String>,
    pub created_at: DateTime,
    #[serde(default)]
    pub published_at: Option<DateTime>,
    #[serde(default)]
    pub sqs_message_id: Option<String>,
}

pub fn collection(db: &Database) -> Collection<OutboxMessage> {
    db.collection("outbox")
}

pub async fn create_indexes(db: &Database) -> mongodb::error::Result<()> {
    collection(db)
        .create_index(
            IndexModel::builder()
                .keys(doc! { "status": 1, "_id": 1 })
                .build(),
        )
        .await?;
    Ok(())
}

/// Writes the event announcing `event_type` for `order_id`, inside the
/// caller's transaction: the event exists exactly when the change does.
pub async fn enqueue(
    db: &Database,
    session: &mut ClientSession,
    order_id: ObjectId,
    event_type: OrderEventType,
    occurred_at: DateTime,
) -> mongodb::error::Result<()> {
    let id = ObjectId::new();
    let event = OrderEvent {
        event_id: id.to_hex(),
        event_type,
        order_id: order_id.to_hex(),
        occurred_at: occurred_at.to_chrono(),
    };
    let row = OutboxMessage {
        id,
        order_id,
        event_type: event.event_type.as_str().to_string(),
        body: event.to_json(),
        status: OutboxStatus::Pending,
        attempts: 0,
        last_error: None,
        created_at: DateTime::now(),
        published_at: None,
        sqs_message_id: None,
    };
    collection(db).insert_one(row).session(session).await?;
    Ok(())
}

/// The oldest pending rows, at most `limit`. ObjectIds grow with time, so
/// `_id` order is commit order closely enough for "oldest first".
pub async fn oldest_pending(
    db: &Database,
    limit: i64,
) -> mongodb::error::Result<Vec<OutboxMessage>> {
    collection(db)
        .find(doc! { "status": "PENDING" })
        .sort(doc! { "_id": 1 })
        .limit(limit)
        .await?
        .try_collect()
        .await
}

pub async fn mark_published(
    db: &Database,
    id: ObjectId,
    sqs_message_id: &str,
) -> mongodb::error::Result<()> {
    collection(db)
        .update_one(
            doc! { "_id": id, "status": "PENDING" },
            doc! {
                "$set": {
                    "status": "PUBLISHED",
                    "published_at": DateTime::now(),
                    "sqs_message_id": sqs_message_id,
                },
                "$inc": { "attempts": 1 },
            },
        )
        .await?;
    Ok(())
}

/// Records a failed attempt; the row stays pending for the next one.
pub async fn record_failure(
    db: &Database,
    id: ObjectId,
    error: &str,
) -> mongodb::error::Result<()> {
    collection(db)
        .update_one(
            doc! { "_id": id, "status": "PENDING" },
            doc! { "$set": { "last_error": error }, "$inc": { "attempts": 1 } },
        )
        .await?;
    Ok(())
}
