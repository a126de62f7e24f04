//! An order's emails as durable work, on the order itself (`email`,
//! `cancellation_email`): each change is a conditional update that names
//! the state it expects.
//!
//! ```text
//! PENDING (due at next_attempt_at) ──claim──> SENDING (lease until next_attempt_at)
//!    ^                                           │
//!    └── retry: refused for now, parked ─────────┤──> SENT
//!                                                └──> FAILED (refused for good, gave up)
//! ```
//! `next_attempt_at` is set exactly while there is work: the sender's one
//! query is `next_attempt_at <= now` on an index, and it finds both due
//! emails and claims whose lease ran out (a crashed sender's). A claim is a
//! compare-and-set on the `next_attempt_at` it saw, so two senders never
//! claim one email; the claim's `attempted_at` is its token afterwards.

use std::time::Duration;

use crate::domain::{EmailKind, Order, OrderStatus, TimelineEntry};
use bson::{Bson, DateTime, Document, doc, oid::ObjectId};
use futures::{FutureExt, TryStreamExt};
use mongodb::{
    Database, IndexModel,
    options::{FindOptions, IndexOptions, UpdateModifications},
};

use super::{
    collection as orders,
    fields::{self, Delivery, ID, TIMELINE, UPDATED_AT},
};

/// One claimed email: the order as the claim left it, and which email.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub order: Order,
    pub kind: EmailKind,
}

impl Claimed {
    /// The claim's token: when it was taken.
    pub fn claimed_at(&self) -> Option<DateTime> {
        self.order.delivery(self.kind).and_then(|d| d.attempted_at)
    }

    /// When the claim's lease runs out.
    pub fn lease_until(&self) -> Option<DateTime> {
        self.order
            .delivery(self.kind)
            .and_then(|d| d.next_attempt_at)
    }
}

/// The index the sender's query runs on, one per kind of email. Sparse: an
/// email with no work to do (most of them: sent, or a cancellation never
/// written) has no entry, so placing and sending an order writes one index
/// entry and removes it, not two entries kept for ever.
pub async fn create_indexes(db: &Database) -> mongodb::error::Result<()> {
    let models: Vec<IndexModel> = [EmailKind::Confirmation, EmailKind::Cancellation]
        .into_iter()
        .map(|kind| {
            IndexModel::builder()
                .keys(doc! { fields::of(kind, Delivery::NextAttemptAt): 1 })
                .options(
                    IndexOptions::builder()
                        .name(format!("{}_next_attempt_at", fields::delivery(kind)))
                        .sparse(true)
                        .build(),
                )
                .build()
        })
        .collect();
    orders(db).create_indexes(models).await?;
    Ok(())
}

/// The update that claims `kind` of email at `now` for `lease`: `SENDING`,
/// its Message-ID, the claim's token, when the lease runs out, and one more
/// attempt (counted at the claim, so a send a crash interrupted counts too;
/// an email parked without being sent gives it back). Used by the
/// processing transaction (an email born claimed) and by [`claim_due`].
pub fn claim_update(kind: EmailKind, message_id: &str, now: DateTime, lease: Duration) -> Document {
    doc! {
        "$set": {
            fields::of(kind, Delivery::Status): "SENDING",
            fields::of(kind, Delivery::MessageId): message_id,
            fields::of(kind, Delivery::AttemptedAt): now,
            fields::of(kind, Delivery::NextAttemptAt): crate::mongo::later(now, lease),
        },
        "$inc": { fields::of(kind, Delivery::Attempts): 1 },
    }
}

/// Claims up to `limit` due emails of `kind` (oldest due first), each for
/// `lease`. What another sender claimed first is skipped.
pub async fn claim_due(
    db: &Database,
    kind: EmailKind,
    now: DateTime,
    limit: usize,
    lease: Duration,
    message_id_domain: &str,
) -> mongodb::error::Result<Vec<Claimed>> {
    let due_at = fields::of(kind, Delivery::NextAttemptAt);
    let options = FindOptions::builder()
        .sort(doc! { due_at.as_str(): 1 })
        .limit(i64::try_from(limit).unwrap_or(i64::MAX))
        .projection(doc! { ID: 1, due_at.as_str(): 1 })
        .build();
    let due: Vec<Document> = db
        .collection::<Document>(orders(db).name())
        .find(doc! { due_at.as_str(): { "$lte": now } })
        .with_options(options)
        .await?
        .try_collect()
        .await?;
    let mut claimed = Vec::with_capacity(due.len());
    for seen in due {
        let (Ok(id), Some(was_due)) = (seen.get_object_id(ID), field(&seen, kind)) else {
            continue;
        };
        let message_id = kind.message_id(&id, message_id_domain);
        let filter = doc! { ID: id, due_at.as_str(): was_due };
        let update = claim_update(kind, &message_id, now, lease);
        // In a transaction with a deadline, not as a plain write: a plain
        // write waits, with no limit, behind a transaction a killed
        // process left open on this order (its SENT write, say), and the
        // whole sweep would wait with it. Here that email is skipped until
        // the next sweep.
        let claim = crate::mongo::transaction_until(
            db,
            "claim_email",
            Some(tokio::time::Instant::now() + CLAIM_DEADLINE),
            (db, &filter, &update),
            |session, (db, filter, update)| {
                async move {
                    crate::mongo::update_and_read(
                        &orders(db),
                        Some(session),
                        filter.clone(),
                        update.clone(),
                    )
                    .await
                }
                .boxed()
            },
        )
        .await;
        match claim {
            Ok(Some(order)) => claimed.push(Claimed { order, kind }),
            Ok(None) => {}
            Err(e)
                if e.get_custom::<crate::mongo::DeadlineBeforeCommit>()
                    .is_some() =>
            {
                tracing::warn!(order_id = %id, email = kind.as_str(), "a due email is held by another transaction; it is tried again next sweep");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(claimed)
}

/// How long one claim may wait for an order another transaction holds.
const CLAIM_DEADLINE: Duration = Duration::from_secs(2);

/// The `next_attempt_at` of `kind` in a projected order document.
fn field(document: &Document, kind: EmailKind) -> Option<Bson> {
    document
        .get_document(fields::delivery(kind))
        .ok()?
        .get(Delivery::NextAttemptAt.name())
        .cloned()
}

/// The filter that matches an email only while `claim` still holds it.
fn still_claimed(claim: &Claimed) -> Document {
    let mut filter = doc! {
        ID: claim.order.id,
        fields::of(claim.kind, Delivery::Status): "SENDING",
    };
    if let Some(at) = claim.claimed_at() {
        filter.insert(fields::of(claim.kind, Delivery::AttemptedAt), at);
    }
    filter
}

/// Extends a claim's lease from `now` (before a send that waited for the
/// pace). `false` when the claim was lost to another sender.
pub async fn renew(
    db: &Database,
    claim: &mut Claimed,
    now: DateTime,
    lease: Duration,
) -> mongodb::error::Result<bool> {
    let until = crate::mongo::later(now, lease);
    let renewed = orders(db)
        .update_one(
            still_claimed(claim),
            doc! { "$set": { fields::of(claim.kind, Delivery::NextAttemptAt): until } },
        )
        .await?;
    if renewed.matched_count == 0 {
        return Ok(false);
    }
    if let Some(delivery) = claim.order.delivery_mut(claim.kind) {
        delivery.next_attempt_at = Some(until);
    }
    Ok(true)
}

fn timeline_entry(
    kind: EmailKind,
    sent: bool,
    status: OrderStatus,
    at: DateTime,
    detail: Option<&str>,
) -> mongodb::error::Result<Bson> {
    let event = if sent {
        kind.sent_event()
    } else {
        kind.failed_event()
    };
    let mut entry = TimelineEntry::new(event, status, at);
    entry.detail = detail.map(str::to_string);
    crate::mongo::bson_of(&entry)
}

/// The SMTP server accepted `kind` of email of each of `accepted` (an
/// order, and when the server accepted its email), orders that were all
/// `status` when it was sent: one write for all of them, each order getting
/// its own `sent_at`. Only emails still `SENDING` change, so repeating it
/// changes nothing.
pub async fn record_sent(
    db: &Database,
    accepted: &[(ObjectId, DateTime)],
    kind: EmailKind,
    status: OrderStatus,
) -> mongodb::error::Result<()> {
    let ids: Vec<ObjectId> = accepted.iter().map(|(id, _)| *id).collect();
    let times: Vec<DateTime> = accepted.iter().map(|(_, at)| *at).collect();
    let entries: Vec<Bson> = accepted
        .iter()
        .map(|(_, at)| timeline_entry(kind, true, status, *at, None).map(|e| Bson::Array(vec![e])))
        .collect::<mongodb::error::Result<_>>()?;
    let field = fields::delivery(kind);
    record_outcome(
        db,
        "record_email_sent",
        doc! { ID: { "$in": &ids }, fields::of(kind, Delivery::Status): "SENDING" },
        vec![
            doc! { "$set": {
                field: { "$mergeObjects": [fields::value(field), {
                    Delivery::Status.name(): "SENT",
                    Delivery::SentAt.name(): crate::mongo::value_by_id(&ids, &times),
                    Delivery::LastError.name(): null,
                }] },
                UPDATED_AT: DateTime::now(),
                TIMELINE: { "$concatArrays": [fields::value(TIMELINE), crate::mongo::value_by_id(&ids, &entries)] },
            } },
            doc! { "$unset": fields::of(kind, Delivery::NextAttemptAt) },
        ],
    )
    .await
}

/// Back to `PENDING`, due at `next_attempt_at`, with why, unless the claim
/// was lost. `attempted`: the SMTP server was asked; `false` for an email
/// parked while the breaker is open, which gives its claim's attempt back.
pub async fn record_retry(
    db: &Database,
    claim: &Claimed,
    reason: &str,
    next_attempt_at: DateTime,
    attempted: bool,
) -> mongodb::error::Result<()> {
    let mut update = doc! {
        "$set": {
            fields::of(claim.kind, Delivery::Status): "PENDING",
            fields::of(claim.kind, Delivery::LastError): reason,
            fields::of(claim.kind, Delivery::NextAttemptAt): next_attempt_at,
            UPDATED_AT: DateTime::now(),
        },
    };
    if !attempted {
        update.insert(
            "$inc",
            doc! { fields::of(claim.kind, Delivery::Attempts): -1 },
        );
    }
    record_outcome(db, "record_email_retry", still_claimed(claim), update).await
}

/// `FAILED` with the reason: refused for good, given up, or not to be sent
/// (`attempted` false: its claim's attempt is given back).
pub async fn record_failed(
    db: &Database,
    claim: &Claimed,
    reason: &str,
    attempted: bool,
) -> mongodb::error::Result<()> {
    let now = DateTime::now();
    let mut update = doc! {
        "$set": {
            fields::of(claim.kind, Delivery::Status): "FAILED",
            fields::of(claim.kind, Delivery::LastError): reason,
            UPDATED_AT: now,
        },
        "$unset": { fields::of(claim.kind, Delivery::NextAttemptAt): "" },
        "$push": { TIMELINE: timeline_entry(claim.kind, false, claim.order.status, now, Some(reason))? },
    };
    if !attempted {
        update.insert(
            "$inc",
            doc! { fields::of(claim.kind, Delivery::Attempts): -1 },
        );
    }
    record_outcome(db, "record_email_failed", still_claimed(claim), update).await
}

/// Applies `update` to what `filter` matches as a one-statement transaction
/// rather than a plain update. The driver retries the transaction on a
/// transient error; a plain single-document update would be a retryable
/// write, and SecantusDB keeps a record of every retryable write and prunes
/// that table on each one: with one per order it spent a third of its time
/// sorting it under load (local stand-in: "retryable-write bookkeeping",
/// see `crate::mongo::server`; a commit round trip per email on a real
/// server).
async fn record_outcome(
    db: &Database,
    operation: &'static str,
    filter: Document,
    update: impl Into<UpdateModifications>,
) -> mongodb::error::Result<()> {
    let update: UpdateModifications = update.into();
    crate::mongo::transaction(
        db,
        operation,
        (db, filter, update),
        |session, (db, filter, update)| {
            async move {
                orders(db)
                    .update_many(filter.clone(), update.clone())
                    .session(session)
                    .await?;
                Ok(())
            }
            .boxed()
        },
    )
    .await
}

/// How much email work is waiting now: due emails (both kinds) and how
/// long the oldest has been due.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    pub due: u64,
    pub oldest_due_age: Duration,
}

pub async fn backlog(db: &Database, now: DateTime) -> mongodb::error::Result<Backlog> {
    let mut backlog = Backlog::default();
    let raw = db.collection::<Document>(orders(db).name());
    for kind in [EmailKind::Confirmation, EmailKind::Cancellation] {
        let due_at = fields::of(kind, Delivery::NextAttemptAt);
        let filter = doc! { due_at.as_str(): { "$lte": now }, fields::of(kind, Delivery::Status): "PENDING" };
        backlog.due += raw.count_documents(filter.clone()).await?;
        let oldest = raw
            .find_one(filter)
            .sort(doc! { due_at.as_str(): 1 })
            .projection(doc! { fields::of(kind, Delivery::DueSince): 1, due_at.as_str(): 1 })
            .await?;
        let since = oldest.as_ref().and_then(|o| {
            let email = o.get_document(fields::delivery(kind)).ok()?;
            email
                .get_datetime(Delivery::DueSince.name())
                .or_else(|_| email.get_datetime(Delivery::NextAttemptAt.name()))
                .ok()
                .copied()
        });
        if let Some(since) = since {
            let age = now
                .timestamp_millis()
                .saturating_sub(since.timestamp_millis());
            let age = Duration::from_millis(u64::try_from(age).unwrap_or(0));
            backlog.oldest_due_age = backlog.oldest_due_age.max(age);
        }
    }
    Ok(backlog)
}
