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
//! `next_attempt_at` is set exactly while there is work: the worker's one
//! query is `next_attempt_at <= now` on an index, and it finds both due
//! emails and claims whose lease ran out (a crashed worker's). A claim reads
//! and claims in one transaction, so two workers never claim one email; the
//! claim's `attempted_at` is its token afterwards.

use std::{collections::BTreeMap, time::Duration};

use crate::domain::{EmailKind, EmailStatus, Order, OrderStatus, TimelineEntry};
use bson::{Bson, DateTime, Document, doc, oid::ObjectId};
use futures::{FutureExt, TryStreamExt};
use mongodb::{
    ClientSession, Database, IndexModel,
    error::Error as MongoError,
    options::{IndexOptions, UpdateModifications},
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

/// Claims up to `limit` due emails (oldest due first, confirmations before
/// cancellations), each for `lease`: `SENDING`, its Message-ID, the
/// claim's token (`attempted_at`), when the lease runs out, and one more
/// attempt (counted at the claim, so a send a crash interrupted counts too;
/// an email parked without being sent gives it back). Emails whose lease
/// ran out (a crashed sender's) are due too.
pub async fn claim_due(
    db: &Database,
    now: DateTime,
    limit: usize,
    lease: Duration,
    message_id_domain: &str,
) -> mongodb::error::Result<Vec<Claimed>> {
    let mut claimed = Vec::new();
    for kind in [EmailKind::Confirmation, EmailKind::Cancellation] {
        let room = limit.saturating_sub(claimed.len());
        if room == 0 {
            break;
        }
        // In a transaction with a deadline, not as plain writes: a plain
        // write waits, with no limit, behind a transaction a killed process
        // left open on an order, and the worker would wait with it. Here
        // the claim is given up and tried again next step.
        let claim = crate::mongo::transaction_until(
            db,
            "claim_emails",
            Some(tokio::time::Instant::now() + CLAIM_DEADLINE),
            (db, kind, now, room, lease, message_id_domain),
            |session, (db, kind, now, room, lease, domain)| {
                claim_kind(db, session, *kind, *now, *room, *lease, domain).boxed()
            },
        )
        .await;
        match claim {
            Ok(orders) => claimed.extend(orders.into_iter().map(|order| Claimed { order, kind })),
            Err(e)
                if e.get_custom::<crate::mongo::DeadlineBeforeCommit>()
                    .is_some() =>
            {
                tracing::warn!(
                    email = kind.as_str(),
                    "due emails are held by another transaction; they are tried again next step"
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok(claimed)
}

/// The claim's transaction body: the due orders are read and claimed in
/// one update, so what was read is what was claimed (another sender's
/// claim of one of them is a write conflict, and the transaction runs
/// again). Returns the orders as the claim left them.
async fn claim_kind(
    db: &Database,
    session: &mut ClientSession,
    kind: EmailKind,
    now: DateTime,
    limit: usize,
    lease: Duration,
    message_id_domain: &str,
) -> mongodb::error::Result<Vec<Order>> {
    let due_at = fields::of(kind, Delivery::NextAttemptAt);
    let mut found = orders(db)
        .find(doc! { due_at.as_str(): { "$lte": now } })
        .sort(doc! { due_at.as_str(): 1 })
        .limit(i64::try_from(limit).unwrap_or(i64::MAX))
        .session(&mut *session)
        .await?;
    let mut due: Vec<Order> = found.stream(&mut *session).try_collect().await?;
    if due.is_empty() {
        return Ok(due);
    }
    let ids: Vec<ObjectId> = due.iter().map(|order| order.id).collect();
    let message_ids: Vec<String> = ids
        .iter()
        .map(|id| kind.message_id(id, message_id_domain))
        .collect();
    let until = crate::mongo::later(now, lease);
    let field = fields::delivery(kind);
    let claimed = orders(db)
        .update_many(
            doc! { ID: { "$in": &ids }, due_at.as_str(): { "$lte": now } },
            vec![doc! { "$set": {
                field: { "$mergeObjects": [fields::value(field), {
                    Delivery::Status.name(): "SENDING",
                    Delivery::MessageId.name(): crate::mongo::value_by_id(&ids, &message_ids),
                    Delivery::AttemptedAt.name(): now,
                    Delivery::NextAttemptAt.name(): until,
                    Delivery::Attempts.name(): { "$add": [{ "$ifNull": [fields::value(&fields::of(kind, Delivery::Attempts)), 0] }, 1] },
                }] },
            } }],
        )
        .session(&mut *session)
        .await?;
    if usize::try_from(claimed.modified_count).ok() != Some(due.len()) {
        return Err(MongoError::custom(
            "due emails changed inside their claim's transaction",
        ));
    }
    for (order, message_id) in due.iter_mut().zip(message_ids) {
        if let Some(email) = order.delivery_mut(kind) {
            email.status = EmailStatus::Sending;
            email.message_id = Some(message_id);
            email.attempted_at = Some(now);
            email.next_attempt_at = Some(until);
            email.attempts += 1;
        }
    }
    Ok(due)
}

/// How long one claim may wait for orders another transaction holds.
const CLAIM_DEADLINE: Duration = Duration::from_secs(2);

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

/// The SMTP server accepted each of `accepted` (a claimed email, and when
/// it was accepted): `SENT`, each with its own `sent_at`, in one write per
/// kind of email and order status (usually one). Only emails still
/// `SENDING` change, so repeating it changes nothing.
pub async fn record_sent(
    db: &Database,
    accepted: &[(Claimed, DateTime)],
) -> mongodb::error::Result<()> {
    let mut groups: BTreeMap<(&str, &str), Vec<&(Claimed, DateTime)>> = BTreeMap::new();
    for sent in accepted {
        let key = (sent.0.kind.as_str(), sent.0.order.status.as_str());
        groups.entry(key).or_default().push(sent);
    }
    for group in groups.into_values() {
        let (kind, status) = (group[0].0.kind, group[0].0.order.status);
        let ids: Vec<ObjectId> = group.iter().map(|(claim, _)| claim.order.id).collect();
        let times: Vec<DateTime> = group.iter().map(|(_, at)| *at).collect();
        let entries: Vec<Bson> = times
            .iter()
            .map(|at| timeline_entry(kind, true, status, *at, None).map(|e| Bson::Array(vec![e])))
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
        .await?;
    }
    Ok(())
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
