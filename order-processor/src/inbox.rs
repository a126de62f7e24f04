//! The inbox: every event id the processor has acted on, with a unique `_id`,
//! written in the same transaction as the order change the event causes. A
//! redelivered event finds its id and changes nothing. Rows expire after the
//! configured retention, which start-up checks is at least the queue's
//! message retention (a message can never outlive its inbox row).

use std::{collections::HashSet, time::Duration};

use bson::{DateTime, doc};
use mongodb::{
    ClientSession, Collection, Database,
    options::{InsertOneModel, UpdateOneModel},
};
use serde::{Deserialize, Serialize};

use crate::consumer::Event;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboxEntry {
    /// The event id (the outbox row's id).
    #[serde(rename = "_id")]
    pub event_id: String,
    pub event_type: String,
    pub order_id: String,
    pub handled_at: DateTime,
    /// The processor that handled it (`<pid>-<random>`).
    pub handled_by: String,
    /// The SQS messages that carried the event: one, unless it was
    /// published twice (a relay died between SQS's answer and its mark).
    pub sqs_message_ids: Vec<String>,
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

/// Which of `event_ids` the inbox has, read in the caller's transaction
/// and bounded by the time left before `deadline`.
pub async fn handled(
    db: &Database,
    session: &mut ClientSession,
    event_ids: &[&str],
    deadline: tokio::time::Instant,
) -> mongodb::error::Result<HashSet<String>> {
    let filter = doc! { "_id": { "$in": event_ids } };
    let found = common::mongo::find_in(&collection(db), session, filter, deadline).await?;
    Ok(found.into_iter().map(|entry| entry.event_id).collect())
}

/// The insert of `entry`, for the caller's write. Two deliveries of one
/// event processed at once conflict on its `_id`; the transaction that
/// loses runs again and finds the winner's entry.
pub fn insert_model(db: &Database, entry: &InboxEntry) -> mongodb::error::Result<InsertOneModel> {
    collection(db).insert_one_model(entry)
}

/// The entry for `event`, received in SQS message `message_id` by the
/// processor `handled_by`.
pub fn entry(event: &Event, handled_by: &str, retention: Duration) -> InboxEntry {
    let now = DateTime::now();
    InboxEntry {
        event_id: event.event.event_id.clone(),
        event_type: event.event.event_type.as_str().to_string(),
        order_id: event.event.order_id.clone(),
        handled_at: now,
        handled_by: handled_by.to_string(),
        sqs_message_ids: vec![event.message_id.clone()],
        expires_at: common::mongo::later(now, retention),
    }
}

/// For an event the inbox already has: notes the SQS message that carried
/// it again (no change when it is the same message, redelivered).
pub fn note_message(db: &Database, event: &Event) -> UpdateOneModel {
    UpdateOneModel::builder()
        .namespace(collection(db).namespace())
        .filter(doc! { "_id": &event.event.event_id })
        .update(doc! { "$addToSet": { "sqs_message_ids": &event.message_id } })
        .build()
}
