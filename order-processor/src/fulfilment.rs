//! Moving an order through its states with conditional updates: each update
//! names the state it expects, so a redelivered event changes nothing twice.

use std::time::Duration;

use bson::{DateTime, doc, oid::ObjectId};
use common::domain::{EmailStatus, Order, OrderStatus};
use mongodb::{Collection, Database, options::ReturnDocument};

pub fn orders(db: &Database) -> Collection<Order> {
    db.collection("orders")
}

pub async fn load(db: &Database, id: ObjectId) -> mongodb::error::Result<Option<Order>> {
    orders(db).find_one(doc! { "_id": id }).await
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
                "$push": { "history": { "status": next.as_str(), "at": now } },
            },
        )
        .return_document(ReturnDocument::After)
        .await
}

/// Claims the right to send the confirmation: the email becomes `SENDING`
/// with a fresh attempt, unless it is already `SENT`/`FAILED` or another
/// attempt started less than `stale_after` ago. `None` means not claimed.
pub async fn claim_email(
    db: &Database,
    id: ObjectId,
    message_id: &str,
    stale_after: Duration,
) -> mongodb::error::Result<Option<Order>> {
    let now = DateTime::now();
    let stale_ms = i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX / 2);
    let stale_before = DateTime::from_millis(now.timestamp_millis().saturating_sub(stale_ms));
    orders(db)
        .find_one_and_update(
            doc! {
                "_id": id,
                "$or": [
                    { "email.status": "PENDING" },
                    { "email.status": "SENDING", "email.attempted_at": { "$lt": stale_before } },
                ],
            },
            doc! {
                "$set": {
                    "email.status": "SENDING",
                    "email.message_id": message_id,
                    "email.attempted_at": now,
                },
                "$inc": { "email.attempts": 1 },
            },
        )
        .return_document(ReturnDocument::After)
        .await
}

pub async fn record_email_sent(db: &Database, id: ObjectId) -> mongodb::error::Result<()> {
    let now = DateTime::now();
    orders(db)
        .update_one(
            doc! { "_id": id, "email.status": "SENDING" },
            doc! { "$set": {
                "email.status": "SENT",
                "email.sent_at": now,
                "email.last_error": null,
                "updated_at": now,
            } },
        )
        .await?;
    Ok(())
}

/// A transient failure: back to `PENDING` so the next delivery may retry.
pub async fn record_email_retry(
    db: &Database,
    id: ObjectId,
    error: &str,
) -> mongodb::error::Result<()> {
    set_email_outcome(db, id, EmailStatus::Pending, error).await
}

/// A permanent refusal (SMTP 5xx): the email is `FAILED` with the reason.
pub async fn record_email_failed(
    db: &Database,
    id: ObjectId,
    error: &str,
) -> mongodb::error::Result<()> {
    set_email_outcome(db, id, EmailStatus::Failed, error).await
}

async fn set_email_outcome(
    db: &Database,
    id: ObjectId,
    status: EmailStatus,
    error: &str,
) -> mongodb::error::Result<()> {
    let status = bson::to_bson(&status).map_err(mongodb::error::Error::custom)?;
    orders(db)
        .update_one(
            doc! { "_id": id, "email.status": "SENDING" },
            doc! { "$set": {
                "email.status": status,
                "email.last_error": error,
                "updated_at": DateTime::now(),
            } },
        )
        .await?;
    Ok(())
}
