//! The `outbox` collection. A row is written in the same transaction as the
//! order it announces, claimed by one relay at a time under a lease, and
//! marked published once SQS has accepted it. Published rows expire.

use std::time::Duration;

use bson::{DateTime, Document, doc, oid::ObjectId};
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
    /// The claim token of the relay batch that holds the row, while it does.
    #[serde(default)]
    pub lease_owner: Option<String>,
    #[serde(default)]
    pub lease_until: Option<DateTime>,
    #[serde(default)]
    pub published_at: Option<DateTime>,
    #[serde(default)]
    pub sqs_message_id: Option<String>,
    /// The relay that published it (`<pid>-<random>` of its process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_by: Option<String>,
    /// The W3C trace context of the request that wrote the row; sent with
    /// the message so the processor's work joins that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Set when published; the TTL index deletes the row then.
    #[serde(default)]
    pub expire_at: Option<DateTime>,
}

pub fn collection(db: &Database) -> Collection<OutboxMessage> {
    db.collection("outbox")
}

pub async fn create_indexes(db: &Database) -> mongodb::error::Result<()> {
    collection(db)
        .create_indexes([
            IndexModel::builder()
                .keys(doc! { "status": 1, "_id": 1 })
                .build(),
            IndexModel::builder()
                .keys(doc! { "lease_owner": 1 })
                .build(),
        ])
        .await?;
    expiring(db).create_index().await
}

/// Published rows go `OUTBOX_RETENTION_SECS` after publishing; pending
/// rows have no `expire_at` and never go.
pub fn expiring(db: &Database) -> common::expiry::Expiring {
    common::expiry::Expiring::new(db, collection(db).name(), "expire_at")
}

/// Writes `rows` (made by [`rows_for`]) inside the caller's transaction:
/// the events exist exactly when the changes they announce do.
pub async fn insert(
    db: &Database,
    session: &mut ClientSession,
    rows: &[OutboxMessage],
) -> mongodb::error::Result<()> {
    if !rows.is_empty() {
        collection(db).insert_many(rows).session(session).await?;
    }
    Ok(())
}

/// The rows announcing `event_type` for each of `orders` (its id and the
/// trace context of the request that changed it), for [`insert`] or a
/// caller's bulk write.
pub fn rows_for(
    orders: impl IntoIterator<Item = (ObjectId, Option<String>)>,
    event_type: OrderEventType,
    occurred_at: DateTime,
) -> Vec<OutboxMessage> {
    orders
        .into_iter()
        .map(|(order_id, traceparent)| {
            let id = ObjectId::new();
            let event = OrderEvent {
                event_id: id.to_hex(),
                event_type,
                order_id: order_id.to_hex(),
                occurred_at: occurred_at.to_chrono(),
            };
            OutboxMessage {
                id,
                order_id,
                event_type: event_type.as_str().to_string(),
                body: event.to_json(),
                status: OutboxStatus::Pending,
                attempts: 0,
                last_error: None,
                created_at: DateTime::now(),
                lease_owner: None,
                lease_until: None,
                published_at: None,
                sqs_message_id: None,
                published_by: None,
                traceparent,
                expire_at: None,
            }
        })
        .collect()
}

/// Claims up to `limit` of the oldest pending rows that nobody holds (or
/// whose holder's lease ran out) for `token`, until `lease` from now, and
/// returns them. `_id` order is creation order closely enough for
/// "oldest first".
///
/// Two relays can pick the same candidates; the conditional update lets only
/// one of them stamp each row, and each reads back only what carries its own
/// token.
pub async fn claim(
    db: &Database,
    token: &str,
    lease: Duration,
    limit: i64,
) -> mongodb::error::Result<Vec<OutboxMessage>> {
    let now = DateTime::now();
    // Unleased (null) or lease run out: `$not: {$gte}` matches both. Not
    // `$or`, which SecantusDB answers by scanning every row, published ones
    // included, instead of using the status index (local stand-in: "`$or`
    // scans", see `common::mongo::server`; no cost on a real server).
    let free = doc! {
        "status": "PENDING",
        "lease_until": { "$not": { "$gte": now } },
    };
    let mut candidates: Vec<OutboxMessage> = collection(db)
        .find(free.clone())
        .sort(doc! { "_id": 1 })
        .limit(limit)
        .await?
        .try_collect()
        .await?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<ObjectId> = candidates.iter().map(|row| row.id).collect();
    let until = common::mongo::later(now, lease);
    let mut claim = free;
    claim.insert("_id", doc! { "$in": &ids });
    let stamped = collection(db)
        .update_many(
            claim,
            doc! { "$set": { "lease_owner": token, "lease_until": until } },
        )
        .await?;
    // Usually every candidate was stamped, and what was read is what is
    // held; only when another relay took some is the claim read back.
    if usize::try_from(stamped.modified_count).is_ok_and(|n| n == candidates.len()) {
        for row in &mut candidates {
            row.lease_owner = Some(token.to_string());
            row.lease_until = Some(until);
        }
        return Ok(candidates);
    }
    collection(db)
        .find(doc! { "lease_owner": token, "status": "PENDING" })
        .sort(doc! { "_id": 1 })
        .await?
        .try_collect()
        .await
}

/// Marks the rows SQS accepted published, each with its SQS message id, in
/// one update, but only those the claim `token` still holds. Returns the ids it marked;
/// a row missing from them lost its lease (another relay may publish it
/// again: the consumer's inbox makes that harmless).
///
/// One multi-document update per batch rather than one update per row: fewer
/// round trips, and a multi-document update is not a retryable write, so
/// the server keeps no per-write retry record for it (SecantusDB spent a
/// third of its time pruning those: local stand-in, "retryable-write
/// bookkeeping", see `common::mongo::server`). A failure is safe to repeat: the
/// update is conditional on the lease.
pub async fn mark_published(
    db: &Database,
    token: &str,
    sent: &[(ObjectId, &str)],
    retention: Duration,
) -> mongodb::error::Result<Vec<ObjectId>> {
    if sent.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<ObjectId> = sent.iter().map(|(id, _)| *id).collect();
    let message_ids: Vec<&str> = sent.iter().map(|(_, message_id)| *message_id).collect();
    let now = DateTime::now();
    let result = collection(db)
        .update_many(
            doc! { "_id": { "$in": &ids }, "status": "PENDING", "lease_owner": token },
            vec![
                doc! { "$set": {
                    "status": "PUBLISHED",
                    "published_at": now,
                    "sqs_message_id": common::mongo::value_by_id(&ids, &message_ids),
                    "expire_at": common::mongo::later(now, retention),
                    "published_by": token.split(':').next().unwrap_or_default(),
                    "attempts": { "$add": [{ "$ifNull": ["$attempts", 0] }, 1] },
                } },
                doc! { "$unset": ["lease_owner", "lease_until"] },
            ],
        )
        .await?;
    if usize::try_from(result.modified_count).is_ok_and(|n| n == ids.len()) {
        return Ok(ids);
    }
    // Some leases ran out: the rows carrying this batch's message ids are
    // the ones this update marked.
    let marked = db
        .collection::<Document>("outbox")
        .find(doc! { "_id": { "$in": &ids }, "sqs_message_id": { "$in": &message_ids } })
        .projection(doc! { "_id": 1 })
        .await?
        .try_collect::<Vec<Document>>()
        .await?;
    Ok(marked
        .iter()
        .filter_map(|d| d.get_object_id("_id").ok())
        .collect())
}

/// Records a failed attempt and lets go of the row: it stays pending for
/// the next attempt, by this relay or another.
pub async fn record_failure(
    db: &Database,
    id: ObjectId,
    token: &str,
    error: &str,
) -> mongodb::error::Result<()> {
    collection(db)
        .update_one(
            doc! { "_id": id, "status": "PENDING", "lease_owner": token },
            doc! {
                "$set": { "last_error": error },
                "$unset": { "lease_owner": "", "lease_until": "" },
                "$inc": { "attempts": 1 },
            },
        )
        .await?;
    Ok(())
}

/// Lets go of every row this relay instance still holds (at shutdown).
pub async fn release(db: &Database, instance: &str) -> mongodb::error::Result<u64> {
    let prefix = format!("^{}:", regex_lite::escape(instance));
    let result = collection(db)
        .update_many(
            doc! { "status": "PENDING", "lease_owner": { "$regex": prefix } },
            doc! { "$unset": { "lease_owner": "", "lease_until": "" } },
        )
        .await?;
    Ok(result.modified_count)
}

/// How far behind publishing is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    pub pending: u64,
    /// Since the oldest pending row was written; zero when none is.
    pub oldest_age: Duration,
}

pub async fn backlog(db: &Database) -> mongodb::error::Result<Backlog> {
    let pending = collection(db)
        .count_documents(doc! { "status": "PENDING" })
        .await?;
    let oldest = db
        .collection::<Document>("outbox")
        .find_one(doc! { "status": "PENDING" })
        .sort(doc! { "_id": 1 })
        .projection(doc! { "created_at": 1 })
        .await?;
    let oldest_age = oldest
        .and_then(|row| row.get_datetime("created_at").ok().copied())
        .map_or(Duration::ZERO, |at| {
            let ms = DateTime::now().timestamp_millis() - at.timestamp_millis();
            Duration::from_millis(u64::try_from(ms).unwrap_or(0))
        });
    Ok(Backlog {
        pending,
        oldest_age,
    })
}
