//! The inbox: every event id the processor has acted on, with a unique `_id`,
//! written in the same transaction as the order change the event causes. A
//! redelivered event finds its id and changes nothing. Rows expire after the
//! configured retention, which start-up checks is at least the queue's
//! message retention (a message can never outlive its inbox row).

use std::time::Duration;

use bson::{DateTime, doc};
use mongodb::{ClientSession, Collection, Database};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboxEntry {
    /// The event id (the outbox row's id).
    #[serde(rename = "_id")]
    pub event_id: String,
    pub event_type: String,
    pub order_id: String,
    pub handled_at: DateTime,
    pub expires_at: DateTime,
}

fn collection(db: &Database) -> Collection<InboxEntry> {
    db.collection("inbox")
}

/// Entries go once `expires_at` has passed (see `INBOX_RETENTION_SECS`).
pub fn expiring(db: &Database) -> common::expiry::Expiring {
    common::expiry::Expiring::new(db, collection(db).name(), "expires_at")
}

pub async fn create_indexes(db: &Database) -> mongodb::error::Result<()> {
    expiring(db).create_index().await
}

/// Records the event inside the caller's transaction. `Ok(false)` when it was
/// already recorded: the caller must then change nothing.
///
/// Inserts without looking first: the usual first delivery costs one round
/// trip. A duplicate `_id` fails the write, and a failed write aborts the
/// transaction on the server, so on `Ok(false)` the caller must end the
/// transaction (return [`AlreadyHandled`] from it) rather than go on. Two
/// deliveries racing here conflict on the same `_id` and the driver retries
/// the loser, which then meets the winner's row.
pub async fn record_first(
    db: &Database,
    session: &mut ClientSession,
    entry: &InboxEntry,
) -> mongodb::error::Result<bool> {
    match collection(db).insert_one(entry).session(session).await {
        Ok(_) => Ok(true),
        Err(e) if common::mongo::is_duplicate_key(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Ends a transaction whose event the inbox already had: nothing was written.
#[derive(Debug, Clone, Copy)]
pub struct AlreadyHandled;

pub fn entry(event_id: &str, event_type: &str, order_id: &str, retention: Duration) -> InboxEntry {
    let now = DateTime::now();
    InboxEntry {
        event_id: event_id.to_string(),
        event_type: event_type.to_string(),
        order_id: order_id.to_string(),
        handled_at: now,
        expires_at: common::mongo::later(now, retention),
    }
}
