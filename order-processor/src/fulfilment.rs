//! Moving an order through its states with conditional updates: each update
//! names the state it expects, so a redelivered event changes nothing twice,
//! and every change appends to the order's timeline.

use std::time::Duration;

use bson::{Bson, DateTime, doc, oid::ObjectId};
use common::domain::{EmailKind, EmailStatus, Order, OrderStatus, TimelineEntry, TimelineEvent};
use mongodb::{Collection, Database, error::Error as MongoError, options::ReturnDocument};

pub fn orders(db: &Database) -> Collection<Order> {
    db.collection("orders")
}

pub async fn load(db: &Database, id: ObjectId) -> mongodb::error::Result<Option<Order>> {
    orders(db).find_one(doc! { "_id": id }).await
}

fn entry(
    event: TimelineEvent,
    status: OrderStatus,
    at: DateTime,
    detail: Option<&str>,
) -> mongodb::error::Result<Bson> {
    let mut entry = TimelineEntry::new(event, status, at);
    entry.detail = detail.map(str::to_string);
    bson::to_bson(&entry).map_err(MongoError::custom)
}

/// Moves the order to `next` if it is in a status that may become `next`.
/// Returns the updated order, or `None` when it was not in such a status
/// (already moved on, or cancelled).
pub async fn advance(
    db: &Database,
    id: ObjectId,
    next: OrderStatus,
) -> mongodb::error::Result<Option<Order>> {
    let from: Vec<&str> = OrderStatus::predecessors_of(next)
        .into_iter()
        .map(OrderStatus::as_str)
        .collect();
    let now = DateTime::now();
    orders(db)
        .find_one_and_update(
            doc! { "_id": id, "status": { "$in": from } },
            doc! {
                "$set": { "status": next.as_str(), "updated_at": now },
                "$push": { "timeline": entry(TimelineEvent::entering(next), next, now, None)? },
            },
        )
        .return_document(ReturnDocument::After)
        .await
}

/// Notes, once, that the processor found the order cancelled and did not
/// process it.
pub async fn record_processing_skipped(db: &Database, id: ObjectId) -> mongodb::error::Result<()> {
    let skipped = TimelineEvent::ProcessingSkipped.as_str();
    orders(db)
        .update_one(
            doc! { "_id": id, "status": "CANCELLED", "timeline.event": { "$ne": skipped } },
            doc! { "$push": { "timeline": entry(
                TimelineEvent::ProcessingSkipped,
                OrderStatus::Cancelled,
                DateTime::now(),
                Some("order was cancelled before processing"),
            )? } },
        )
        .await?;
    Ok(())
}

/// Claims the right to send `kind` of email: it becomes `SENDING` with a
/// fresh attempt, unless it is already `SENT`/`FAILED` or another attempt
/// started less than `stale_after` ago. `None` means not claimed.
pub async fn claim_email(
    db: &Database,
    id: ObjectId,
    kind: EmailKind,
    message_id: &str,
    stale_after: Duration,
) -> mongodb::error::Result<Option<Order>> {
    let field = kind.field();
    let now = DateTime::now();
    let stale_ms = i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX / 2);
    let stale_before = DateTime::from_millis(now.timestamp_millis().saturating_sub(stale_ms));
    orders(db)
        .find_one_and_update(
            doc! {
                "_id": id,
                "$or": [
                    { format!("{field}.status"): "PENDING" },
                    {
                        format!("{field}.status"): "SENDING",
                        format!("{field}.attempted_at"): { "$lt": stale_before },
                    },
                ],
            },
            doc! {
                "$set": {
                    format!("{field}.status"): "SENDING",
                    format!("{field}.message_id"): message_id,
                    format!("{field}.attempted_at"): now,
                },
                "$inc": { format!("{field}.attempts"): 1 },
            },
        )
        .return_document(ReturnDocument::After)
        .await
}

/// The SMTP server accepted the email.
pub async fn record_email_sent(
    db: &Database,
    order: &Order,
    kind: EmailKind,
) -> mongodb::error::Result<()> {
    let field = kind.field();
    let now = DateTime::now();
    orders(db)
        .update_one(
            doc! { "_id": order.id, format!("{field}.status"): "SENDING" },
            doc! {
                "$set": {
                    format!("{field}.status"): "SENT",
                    format!("{field}.sent_at"): now,
                    format!("{field}.last_error"): null,
                    "updated_at": now,
                },
                "$push": { "timeline": entry(kind.sent_event(), order.status, now, None)? },
            },
        )
        .await?;
    Ok(())
}

/// A transient failure: back to `PENDING` so the next delivery may retry.
pub async fn record_email_retry(
    db: &Database,
    id: ObjectId,
    kind: EmailKind,
    error: &str,
) -> mongodb::error::Result<()> {
    let field = kind.field();
    let status = bson::to_bson(&EmailStatus::Pending).map_err(MongoError::custom)?;
    orders(db)
        .update_one(
            doc! { "_id": id, format!("{field}.status"): "SENDING" },
            doc! { "$set": {
                format!("{field}.status"): status,
                format!("{field}.last_error"): error,
                "updated_at": DateTime::now(),
            } },
        )
        .await?;
    Ok(())
}

/// A permanent refusal (SMTP 5xx): the email is `FAILED` with the reason.
pub async fn record_email_failed(
    db: &Database,
    order: &Order,
    kind: EmailKind,
    error: &str,
) -> mongodb::error::Result<()> {
    let field = kind.field();
    let now = DateTime::now();
    orders(db)
        .update_one(
            doc! { "_id": order.id, format!("{field}.status"): "SENDING" },
            doc! {
                "$set": {
                    format!("{field}.status"): "FAILED",
                    format!("{field}.last_error"): error,
                    "updated_at": now,
                },
                "$push": { "timeline": entry(kind.failed_event(), order.status, now, Some(error))? },
            },
        )
        .await?;
    Ok(())
}
