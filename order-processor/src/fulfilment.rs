//! Moving an order through its states with conditional updates: each update
//! names the state it expects, so a redelivered event changes nothing twice,
//! and every change appends to the order's timeline.

use std::time::Duration;

use bson::{Bson, DateTime, doc, oid::ObjectId};
use common::{
    domain::{EmailKind, EmailStatus, Order, OrderStatus, TimelineEntry, TimelineEvent},
    event::OrderEventType,
};
use futures::TryStreamExt;
use mongodb::{ClientSession, Collection, Database, error::Error as MongoError};

use crate::email;

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

/// The event names an order that does not exist: retrying cannot help.
#[derive(Debug, Clone, Copy)]
pub struct UnknownOrder;

pub async fn load_in(
    db: &Database,
    session: &mut ClientSession,
    id: ObjectId,
) -> mongodb::error::Result<Option<Order>> {
    orders(db)
        .find_one(doc! { "_id": id })
        .session(session)
        .await
}

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
    let field = kind.field();
    let now = DateTime::now();
    let mut update = email::store::claim_update(kind, message_id, now, lease);
    update
        .get_document_mut("$set")
        .map_err(MongoError::custom)?
        .extend(doc! {
            format!("{field}.due_since"): now,
            "status": OrderStatus::Processed.as_str(),
            "updated_at": now,
        });
    update.insert(
        "$push",
        doc! { "timeline": { "$each": first_delivery_entries(published_at, now)? } },
    );
    common::mongo::update_then_read(
        &orders(db),
        Some(session),
        doc! {
            "_id": id,
            "status": OrderStatus::Pending.as_str(),
            format!("{field}.status"): "PENDING",
        },
        update,
    )
    .await
}

/// [`process_and_claim`] for the first deliveries of several orders at once,
/// inside the caller's transaction: one update moves every order that is
/// PENDING with its confirmation PENDING, and one read returns those it
/// moved. An order in any other state is left alone and missing from the
/// answer; the caller handles its event on its own.
pub async fn process_and_claim_many(
    db: &Database,
    session: &mut ClientSession,
    orders_published: &[(ObjectId, Option<DateTime>)],
    message_id_domain: &str,
    lease: Duration,
) -> mongodb::error::Result<Vec<Order>> {
    let kind = EmailKind::Confirmation;
    let field = kind.field();
    let now = DateTime::now();
    let ids: Vec<ObjectId> = orders_published.iter().map(|(id, _)| *id).collect();
    let ids = ids.as_slice();
    let message_ids: Vec<String> = ids
        .iter()
        .map(|id| kind.message_id(id, message_id_domain))
        .collect();
    // Each order's own entries: its publication time is its message's.
    let timelines: Vec<Bson> = orders_published
        .iter()
        .map(|(_, published_at)| first_delivery_entries(*published_at, now).map(Bson::Array))
        .collect::<mongodb::error::Result<_>>()?;
    orders(db)
        .update_many(
            doc! {
                "_id": { "$in": ids },
                "status": OrderStatus::Pending.as_str(),
                format!("{field}.status"): "PENDING",
            },
            vec![doc! { "$set": {
                "status": OrderStatus::Processed.as_str(),
                "updated_at": now,
                field: { "$mergeObjects": [format!("${field}"), {
                    "status": "SENDING",
                    "message_id": common::mongo::value_by_id(ids, &message_ids),
                    "attempted_at": now,
                    "next_attempt_at": common::mongo::later(now, lease),
                    "due_since": now,
                    "attempts": { "$add": [{ "$ifNull": [format!("${field}.attempts"), 0] }, 1] },
                }] },
                "timeline": { "$concatArrays": ["$timeline", common::mongo::value_by_id(ids, &timelines)] },
            } }],
        )
        .session(&mut *session)
        .await?;
    // Inside the transaction nothing else can have moved these orders, so
    // SENDING claimed at exactly `now` is this update's work.
    let mut moved = orders(db)
        .find(doc! {
            "_id": { "$in": ids },
            "status": OrderStatus::Processed.as_str(),
            format!("{field}.status"): "SENDING",
            format!("{field}.attempted_at"): now,
        })
        .session(&mut *session)
        .await?;
    moved.stream(session).try_collect().await
}

/// The timeline entries of an `order.created` event's first delivery: when
/// SQS accepted it (if known), then PROCESSING and PROCESSED.
fn first_delivery_entries(
    published_at: Option<DateTime>,
    now: DateTime,
) -> mongodb::error::Result<Vec<Bson>> {
    let mut entries = Vec::with_capacity(3);
    if let Some(at) = published_at {
        entries.push(published(at, OrderEventType::OrderCreated)?);
    }
    for status in [OrderStatus::Processing, OrderStatus::Processed] {
        entries.push(entry(TimelineEvent::entering(status), status, now, None)?);
    }
    Ok(entries)
}

/// The `published` entry of an event SQS accepted at `at`. Its status is the
/// one the event announced: the order was PENDING when it was placed and
/// CANCELLED when it was cancelled.
fn published(at: DateTime, event_type: OrderEventType) -> mongodb::error::Result<Bson> {
    let status = match event_type {
        OrderEventType::OrderCreated => OrderStatus::Pending,
        OrderEventType::OrderCancelled => OrderStatus::Cancelled,
    };
    entry(
        TimelineEvent::Published,
        status,
        at,
        Some(event_type.as_str()),
    )
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
    orders(db)
        .update_one(
            doc! { "_id": id },
            doc! { "$push": { "timeline": published(at, event_type)? } },
        )
        .session(session)
        .await?;
    Ok(())
}

/// Inside the caller's transaction: PENDING → PROCESSING → PROCESSED, each
/// step conditional on the status before it, the confirmation becoming due
/// with the last (the sweep sends it). An order already cancelled is left
/// alone and the skip is noted on its timeline instead. Returns the order's
/// status after it.
pub async fn process(
    db: &Database,
    session: &mut ClientSession,
    id: ObjectId,
) -> mongodb::error::Result<OrderStatus> {
    let Some(mut order) = load_in(db, session, id).await? else {
        return Err(MongoError::custom(UnknownOrder));
    };
    for next in [OrderStatus::Processing, OrderStatus::Processed] {
        if order.status.can_become(next) {
            let now = DateTime::now();
            let mut set = doc! { "status": next.as_str(), "updated_at": now };
            if next == OrderStatus::Processed && order.email.status == EmailStatus::Pending {
                let field = EmailKind::Confirmation.field();
                set.insert(format!("{field}.next_attempt_at"), now);
                set.insert(format!("{field}.due_since"), now);
            }
            let advanced = common::mongo::update_then_read(
                &orders(db),
                Some(&mut *session),
                doc! { "_id": id, "status": order.status.as_str() },
                doc! {
                    "$set": set,
                    "$push": { "timeline": entry(TimelineEvent::entering(next), next, now, None)? },
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
        orders(db)
            .update_one(
                doc! { "_id": id },
                doc! { "$push": { "timeline": entry(
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
