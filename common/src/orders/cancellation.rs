//! An order becoming CANCELLED, inside the caller's transaction (order-api's
//! cancel puts the stock back and writes the outbox row in the same one).
//!
//! The update names the statuses it may cancel from, so a cancel and the
//! processor racing on the same order settle cleanly: whichever update
//! lands second finds the status it expected gone.

use bson::{DateTime, doc, oid::ObjectId};
use mongodb::{ClientSession, Database, error::Error as MongoError};

use super::fields::{self, STATUS, TIMELINE, UPDATED_AT};
use crate::domain::{EmailDelivery, EmailKind, Order, OrderStatus, TimelineEntry, TimelineEvent};

/// Why an order was not cancelled. Carried out of the transaction body as
/// the driver's custom error, so the driver aborts the transaction.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CancelRefused {
    #[error("order not found")]
    NotFound,
    #[error("the order is already cancelled")]
    AlreadyCancelled,
}

/// Cancels `order_id` at `now` with its cancellation email due; `owner`
/// restricts it to that user's orders. Returns the order as cancelled, or
/// fails with [`CancelRefused`] as the custom error.
pub async fn cancel(
    db: &Database,
    session: &mut ClientSession,
    order_id: ObjectId,
    owner: Option<ObjectId>,
    now: DateTime,
) -> mongodb::error::Result<Order> {
    let filter = super::visible(order_id, owner);
    let cancellable: Vec<&str> = OrderStatus::predecessors_of(OrderStatus::Cancelled)
        .into_iter()
        .map(OrderStatus::as_str)
        .collect();
    let mut conditional = filter.clone();
    conditional.insert(STATUS, doc! { "$in": cancellable });
    let entry = TimelineEntry::new(TimelineEvent::Cancelled, OrderStatus::Cancelled, now);
    let email = crate::mongo::bson_of(&EmailDelivery::due(now))?;
    let cancelled = crate::mongo::update_and_read(
        &super::collection(db),
        Some(&mut *session),
        conditional,
        doc! {
            "$set": {
                STATUS: OrderStatus::Cancelled.as_str(),
                UPDATED_AT: now,
                fields::delivery(EmailKind::Cancellation): email,
            },
            "$push": { TIMELINE: crate::mongo::bson_of(&entry)? },
        },
    )
    .await?;
    if let Some(order) = cancelled {
        return Ok(order);
    }
    let existing = super::collection(db)
        .find_one(filter)
        .session(&mut *session)
        .await?;
    Err(MongoError::custom(match existing {
        None => CancelRefused::NotFound,
        Some(_) => CancelRefused::AlreadyCancelled,
    }))
}
