//! Cancelling an order: in ONE transaction the order becomes CANCELLED
//! (`common::orders::cancellation`), every line's stock is put back, and an
//! `order.cancelled` outbox row is written,
//! handed to this process's relay once committed (as a placed order's is).
//! The cancellation email is written due in the same transaction: the
//! processor's sender takes it from there (the event only wakes it), so the
//! customer hears of the cancellation even while SQS is unreachable.

use std::time::Duration;

use bson::{DateTime, doc, oid::ObjectId};
pub use common::orders::cancellation::CancelRefused;
use common::{domain::Order, event::OrderEventType, orders};
use futures::FutureExt;
use mongodb::{ClientSession, Database, error::Error as MongoError};

use crate::{
    outbox::{self, Handoff, store::Lease},
    products::store as products,
};

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error(transparent)]
    Refused(CancelRefused),
    #[error("the transaction did not complete within {0:?}")]
    TimedOut(Duration),
    #[error(transparent)]
    Database(MongoError),
}

/// Cancels `order_id`. `owner` restricts it to that user's orders (customers);
/// `None` is an admin, who may cancel any order.
pub async fn cancel_order(
    db: &Database,
    handoff: &Handoff,
    order_id: ObjectId,
    owner: Option<ObjectId>,
    deadline: Duration,
) -> Result<Order, CancelError> {
    let lease = handoff.lease();
    let (order, rows) = common::mongo::transaction_until(
        db,
        "cancel_order",
        Some(tokio::time::Instant::now() + deadline),
        (db, order_id, owner, &lease),
        |session, (db, order_id, owner, lease)| {
            write_cancellation(db, session, *order_id, *owner, lease).boxed()
        },
    )
    .await
    .map_err(|e| {
        if let Some(refused) = e.get_custom::<CancelRefused>() {
            CancelError::Refused(refused.clone())
        } else if e
            .get_custom::<common::mongo::DeadlineBeforeCommit>()
            .is_some()
        {
            CancelError::TimedOut(deadline)
        } else {
            CancelError::Database(e)
        }
    })?;
    handoff.give(db, rows).await;
    Ok(order)
}

async fn write_cancellation(
    db: &Database,
    session: &mut ClientSession,
    order_id: ObjectId,
    owner: Option<ObjectId>,
    lease: &Lease,
) -> mongodb::error::Result<(Order, Vec<outbox::store::OutboxMessage>)> {
    let now = DateTime::now();
    let order = orders::cancellation::cancel(db, session, order_id, owner, now).await?;
    for line in &order.lines {
        products::collection(db)
            .update_one(
                doc! { "_id": line.product_id },
                doc! {
                    "$inc": { "stock": i64::from(line.quantity.get()) },
                    "$set": { "updated_at": now },
                },
            )
            .session(&mut *session)
            .await?;
    }
    // Still in the request's task: its span is the request's.
    let traceparent = common::telemetry::traceparent(&tracing::Span::current());
    let rows = outbox::store::rows_for(
        [(order.id, traceparent, None)],
        OrderEventType::OrderCancelled,
        now,
        Some(lease),
    );
    outbox::store::insert(db, session, &rows).await?;
    Ok((order, rows))
}
