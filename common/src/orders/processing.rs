//! Moving an order through its states with conditional updates: each update
//! names the state it expects, so a redelivered event changes nothing twice,
//! and every change appends to the order's timeline.

use std::time::Duration;

use crate::{
    domain::{EmailKind, EmailStatus, Order, OrderStatus, TimelineEntry, TimelineEvent},
    event::OrderEventType,
};
use bson::{Bson, DateTime, doc, oid::ObjectId};
use futures::TryStreamExt;
use mongodb::{ClientSession, Database, error::Error as MongoError};

use super::{
    email,
    fields::{self, Delivery, ID, STATUS, TIMELINE, UPDATED_AT},
};

fn entry(
    event: TimelineEvent,
    status: OrderStatus,
    at: DateTime,
    detail: Option<&str>,
) -> mongodb::error::Result<Bson> {
    let mut entry = TimelineEntry::new(event, status, at);
    entry.detail = detail.map(str::to_string);
    crate::mongo::bson_of(&entry)
}

/// The event names an order that does not exist: retrying cannot help.
#[derive(Debug, Clone, Copy)]
pub struct UnknownOrder;

/// Inside the caller's transaction, a first delivery's whole change in one
/// update: PENDING → PROCESSED (the timeline gets both steps; PROCESSING
/// alone is never visible outside the transaction) with the confirmation
/// due and already claimed for `lease` by this process's sender, which is
/// handed the order once the transaction commits (`email::store`). One
/// round trip instead of a read, two transitions, a reload and a claim.
///
/// `None` when the order is not PENDING with its confirmation PENDING
/// (cancelled, unknown, or already moved on): the caller then takes the
/// step-by-step path of [`process`].
pub async fn process_and_claim(
    db: &Database,
    session: &mut ClientSession,
    id: ObjectId,
    message_id: &str,
    published_at: Option<DateTime>,
    lease: Duration,
) -> mongodb::error::Result<Option<Order>> {
    let kind = EmailKind::Confirmation;
    let now = DateTime::now();
    let mut update = email::claim_update(kind, message_id, now, lease);
    update
        .get_document_mut("$set")
        .map_err(MongoError::custom)?
        .extend(doc! {
            fields::of(kind, Delivery::DueSince): now,
            STATUS: OrderStatus::Processed.as_str(),
            UPDATED_AT: now,
        });
    update.insert(
        "$push",
        doc! { TIMELINE: { "$each": crate::mongo::bson_of(&first_delivery_entries(published_at, now))? } },
    );
    crate::mongo::update_and_read(
        &super::collection(db),
        Some(session),
        doc! {
            ID: id,
            STATUS: OrderStatus::Pending.as_str(),
            fields::of(kind, Delivery::Status): "PENDING",
        },
        update,
    )
    .await
}

/// One order's first delivery of `order.created`, for
/// [`process_and_claim_many`].
#[derive(Debug, Clone, Copy)]
pub struct FirstDelivery<'a> {
    pub id: ObjectId,
    /// When SQS accepted the event, if known.
    pub published_at: Option<DateTime>,
    /// The order as placed, when the event carried it (`OrderEvent::placed`).
    pub placed: Option<&'a Order>,
}

/// [`process_and_claim`] for the first deliveries of several orders at once,
/// inside the caller's transaction: one update moves every order that is
/// PENDING with its confirmation PENDING. An order in any other state is
/// left alone and missing from the answer; the caller handles its event on
/// its own.
///
/// The answer is the moved orders. When the update moved every one and each
/// event carried its order as placed, they are those snapshots with the
/// update's changes ([`first_delivered`]): the filter matched only orders
/// still as placed, and inside the transaction nothing else moved them. A
/// read of what it moved otherwise, one statement more.
pub async fn process_and_claim_many(
    db: &Database,
    session: &mut ClientSession,
    deliveries: &[FirstDelivery<'_>],
    message_id_domain: &str,
    lease: Duration,
) -> mongodb::error::Result<Vec<Order>> {
    let kind = EmailKind::Confirmation;
    let field = fields::delivery(kind);
    let now = DateTime::now();
    let ids: Vec<ObjectId> = deliveries.iter().map(|d| d.id).collect();
    let ids = ids.as_slice();
    let message_ids: Vec<String> = ids
        .iter()
        .map(|id| kind.message_id(id, message_id_domain))
        .collect();
    // Each order's own entries: its publication time is its message's.
    let timelines: Vec<Vec<TimelineEntry>> = deliveries
        .iter()
        .map(|d| first_delivery_entries(d.published_at, now))
        .collect();
    let timelines_bson: Vec<Bson> = timelines
        .iter()
        .map(crate::mongo::bson_of)
        .collect::<mongodb::error::Result<_>>()?;
    let next_attempt_at = crate::mongo::later(now, lease);
    let result = super::collection(db)
        .update_many(
            doc! {
                ID: { "$in": ids },
                STATUS: OrderStatus::Pending.as_str(),
                fields::of(kind, Delivery::Status): "PENDING",
            },
            vec![doc! { "$set": {
                STATUS: OrderStatus::Processed.as_str(),
                UPDATED_AT: now,
                field: { "$mergeObjects": [fields::value(field), {
                    Delivery::Status.name(): "SENDING",
                    Delivery::MessageId.name(): crate::mongo::value_by_id(ids, &message_ids),
                    Delivery::AttemptedAt.name(): now,
                    Delivery::NextAttemptAt.name(): next_attempt_at,
                    Delivery::DueSince.name(): now,
                    Delivery::Attempts.name(): { "$add": [{ "$ifNull": [fields::value(&fields::of(kind, Delivery::Attempts)), 0] }, 1] },
                }] },
                TIMELINE: { "$concatArrays": [fields::value(TIMELINE), crate::mongo::value_by_id(ids, &timelines_bson)] },
            } }],
        )
        .session(&mut *session)
        .await?;
    let all_moved = usize::try_from(result.modified_count).is_ok_and(|n| n == ids.len());
    let placed: Option<Vec<&Order>> = deliveries.iter().map(|d| d.placed).collect();
    if let (true, Some(placed)) = (all_moved, placed) {
        return Ok(placed
            .into_iter()
            .zip(message_ids)
            .zip(timelines)
            .map(|((order, message_id), timeline)| {
                first_delivered(order.clone(), message_id, timeline, now, next_attempt_at)
            })
            .collect());
    }
    // Inside the transaction nothing else can have moved these orders, so
    // SENDING claimed at exactly `now` is this update's work.
    let mut moved = super::collection(db)
        .find(doc! {
            ID: { "$in": ids },
            STATUS: OrderStatus::Processed.as_str(),
            fields::of(kind, Delivery::Status): "SENDING",
            fields::of(kind, Delivery::AttemptedAt): now,
        })
        .session(&mut *session)
        .await?;
    moved.stream(session).try_collect().await
}

/// What [`process_and_claim_many`]'s update makes of an order as placed:
/// PROCESSED at `now`, its confirmation claimed (SENDING as `message_id`,
/// the claim running to `next_attempt_at`), `timeline` appended.
fn first_delivered(
    mut order: Order,
    message_id: String,
    timeline: Vec<TimelineEntry>,
    now: DateTime,
    next_attempt_at: DateTime,
) -> Order {
    order.status = OrderStatus::Processed;
    order.updated_at = now;
    let email = &mut order.email;
    email.status = EmailStatus::Sending;
    email.message_id = Some(message_id);
    email.attempted_at = Some(now);
    email.next_attempt_at = Some(next_attempt_at);
    email.due_since = Some(now);
    email.attempts += 1;
    order.timeline.extend(timeline);
    order
}

/// The timeline entries of an `order.created` event's first delivery: when
/// SQS accepted it (if known), then PROCESSING and PROCESSED.
fn first_delivery_entries(published_at: Option<DateTime>, now: DateTime) -> Vec<TimelineEntry> {
    let published = published_at.map(|at| published(at, OrderEventType::OrderCreated));
    published
        .into_iter()
        .chain(
            [OrderStatus::Processing, OrderStatus::Processed]
                .map(|status| TimelineEntry::new(TimelineEvent::entering(status), status, now)),
        )
        .collect()
}

/// The `published` entry of an event SQS accepted at `at`. Its status is the
/// one the event announced: the order was PENDING when it was placed and
/// CANCELLED when it was cancelled.
fn published(at: DateTime, event_type: OrderEventType) -> TimelineEntry {
    let status = match event_type {
        OrderEventType::OrderCreated => OrderStatus::Pending,
        OrderEventType::OrderCancelled => OrderStatus::Cancelled,
    };
    let mut entry = TimelineEntry::new(TimelineEvent::Published, status, at);
    entry.detail = Some(event_type.as_str().to_string());
    entry
}

/// Inside the caller's transaction: notes on the order's timeline that SQS
/// accepted its `event_type` event at `at`.
pub async fn note_published(
    db: &Database,
    session: &mut ClientSession,
    id: ObjectId,
    event_type: OrderEventType,
    at: DateTime,
) -> mongodb::error::Result<()> {
    super::collection(db)
        .update_one(
            doc! { ID: id },
            doc! { "$push": { TIMELINE: crate::mongo::bson_of(&published(at, event_type))? } },
        )
        .session(session)
        .await?;
    Ok(())
}

/// Inside the caller's transaction: PENDING → PROCESSING → PROCESSED, each
/// step conditional on the status before it, the confirmation becoming due
/// with the last (the sweep sends it). An order already cancelled is left
/// alone and the skip is noted on its timeline instead. `order` is as the
/// caller read it in the same transaction. Returns the order's status after it.
pub async fn process(
    db: &Database,
    session: &mut ClientSession,
    mut order: Order,
) -> mongodb::error::Result<OrderStatus> {
    let id = order.id;
    for next in [OrderStatus::Processing, OrderStatus::Processed] {
        if order.status.can_become(next) {
            let now = DateTime::now();
            let mut set = doc! { STATUS: next.as_str(), UPDATED_AT: now };
            if next == OrderStatus::Processed && order.email.status == EmailStatus::Pending {
                let kind = EmailKind::Confirmation;
                set.insert(fields::of(kind, Delivery::NextAttemptAt), now);
                set.insert(fields::of(kind, Delivery::DueSince), now);
            }
            let advanced = crate::mongo::update_and_read(
                &super::collection(db),
                Some(&mut *session),
                doc! { ID: id, STATUS: order.status.as_str() },
                doc! {
                    "$set": set,
                    "$push": { TIMELINE: entry(TimelineEvent::entering(next), next, now, None)? },
                },
            )
            .await?;
            // In a transaction the order cannot change under us; a miss
            // would be a bug, so fail the transaction rather than guess.
            order = advanced.ok_or_else(|| {
                MongoError::custom(format!("order {id} changed inside a transaction"))
            })?;
        }
    }
    if order.status == OrderStatus::Cancelled {
        super::collection(db)
            .update_one(
                doc! { ID: id },
                doc! { "$push": { TIMELINE: entry(
                    TimelineEvent::ProcessingSkipped,
                    OrderStatus::Cancelled,
                    DateTime::now(),
                    Some("order was cancelled before processing"),
                )? } },
            )
            .session(session)
            .await?;
    }
    Ok(order.status)
}
