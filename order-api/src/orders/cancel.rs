//! Cancelling an order: in ONE transaction the order becomes CANCELLED
//! (`common::orders::cancellation`), every line's stock is put back, and an
//! `order.cancelled` outbox row is written; once committed, this process's
//! relay is woken for it (as for a placed order's).
//! The cancellation email is written due in the same transaction: the
//! processor's sender takes it from there (the event only wakes it), so the
//! customer hears of the cancellation even while SQS is unreachable.

use std::{sync::Arc, time::Duration};

use bson::{DateTime, doc, oid::ObjectId};
pub use common::orders::cancellation::CancelRefused;
use common::{domain::Order, event::OrderEventType, orders};
use futures::FutureExt;
use mongodb::{ClientSession, Database, error::Error as MongoError};
use tokio::sync::Notify;

use crate::{outbox, products::store as products};

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
    relay: &Arc<Notify>,
    order_id: ObjectId,
    owner: Option<ObjectId>,
    deadline: Duration,
) -> Result<Order, CancelError> {
    let order = common::mongo::transaction_until(
        db,
        "cancel_order",
        Some(tokio::time::Instant::now() + deadline),
        (db, order_id, owner),
        |session, (db, order_id, owner)| write_cancellation(db, session, *order_id, *owner).boxed(),
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
    relay.notify_one();
    Ok(order)
}

async fn write_cancellation(
    db: &Database,
    session: &mut ClientSession,
    order_id: ObjectId,
    owner: Option<ObjectId>,
) -> mongodb::error::Result<Order> {
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
        [(order.id, traceparent)],
        OrderEventType::OrderCancelled,
        now,
    );
    outbox::store::insert(db, session, &rows).await?;
    Ok(order)
}
