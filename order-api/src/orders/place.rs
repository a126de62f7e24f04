//! Placing an order: in ONE transaction, reserve every line's stock with a
//! guarded decrement, insert the order, insert its outbox row (and, with an
//! Idempotency-Key, the key's record). Either all of it is written or none.

use std::time::Duration;

use bson::{DateTime, doc, oid::ObjectId};
use common::{
    domain::{
        EmailDelivery, Order, OrderLine, OrderStatus, Product, Quantity, TaxRate, TimelineEntry,
        TimelineEvent, Totals,
    },
    event::OrderEventType,
};
use futures::FutureExt;
use mongodb::{ClientSession, Database, error::Error as MongoError};

use super::{idempotency, store as orders};
use crate::{
    outbox::{
        self,
        store::{Lease, OutboxMessage},
    },
    products::store as products,
};

/// One requested line, already parsed.
#[derive(Debug, Clone, Copy)]
pub struct LineRequest {
    pub product_id: ObjectId,
    pub quantity: Quantity,
}

pub struct Customer {
    pub id: ObjectId,
    pub email: String,
    /// The account's username: the emails greet the customer by it.
    pub name: String,
}

/// Why an order was refused. Carried out of the transaction callback as the
/// driver's custom error, so the driver aborts the transaction.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlaceOrderError {
    #[error("product {product_id} does not exist")]
    UnknownProduct { product_id: ObjectId },
    #[error("product {name:?} is not for sale")]
    InactiveProduct { product_id: ObjectId, name: String },
    #[error("not enough stock of {name:?}: requested {requested}, available {available}")]
    InsufficientStock {
        product_id: ObjectId,
        name: String,
        requested: u32,
        available: i64,
    },
    #[error("the order total is too large")]
    TotalOverflow,
}

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error(transparent)]
    Refused(#[from] PlaceOrderError),
    /// The deadline passed before the commit was sent: not placed.
    #[error("the order could not be placed within {0:?}; nothing was written")]
    TimedOut(Duration),
    #[error(transparent)]
    Database(MongoError),
}

impl PlaceError {
    /// What a placing transaction's error means for the order.
    pub fn from_transaction(error: MongoError, deadline: Duration) -> PlaceError {
        if let Some(refused) = error.get_custom::<PlaceOrderError>() {
            PlaceError::Refused(refused.clone())
        } else if error
            .get_custom::<common::mongo::DeadlineBeforeCommit>()
            .is_some()
        {
            PlaceError::TimedOut(deadline)
        } else {
            PlaceError::Database(error)
        }
    }
}

pub struct OrderSettings<'a> {
    pub currency: &'a str,
    pub tax_rate: TaxRate,
    /// Upper bound on the work before the commit, retries included, so a
    /// client is never left hanging on a contended product. A commit once
    /// sent is waited for, so the answer is always true.
    pub deadline: Duration,
}

/// What the transaction needs to know about one request.
pub struct NewOrder<'a> {
    pub customer: &'a Customer,
    pub lines: &'a [LineRequest],
    pub settings: &'a OrderSettings<'a>,
    pub idempotency: Option<&'a idempotency::KeyedRequest>,
    /// The placing request's W3C trace context, for the outbox row.
    pub traceparent: Option<&'a str>,
    /// The relay claim the outbox row is written under, if any.
    pub lease: Option<&'a Lease>,
}

/// Places an order; retried as a whole on transient transaction errors.
/// Returns the order and its outbox row as committed.
pub async fn place_order(
    db: &Database,
    request: &NewOrder<'_>,
) -> Result<(Order, OutboxMessage), PlaceError> {
    let deadline = tokio::time::Instant::now() + request.settings.deadline;
    common::mongo::transaction_until(
        db,
        "place_order",
        Some(deadline),
        (db, request),
        |session, (db, request)| write_order(db, session, request).boxed(),
    )
    .await
    .map_err(|e| PlaceError::from_transaction(e, request.settings.deadline))
}

/// The transaction's body. Runs again from the start on a transient error.
async fn write_order(
    db: &Database,
    session: &mut ClientSession,
    request: &NewOrder<'_>,
) -> mongodb::error::Result<(Order, OutboxMessage)> {
    let now = DateTime::now();
    let mut products = Vec::with_capacity(request.lines.len());
    for line in request.lines {
        products.push(reserve_stock(db, session, line, now).await?);
    }
    let order = build_order(
        request.customer,
        request.lines.iter().zip(&products),
        request.settings,
        now,
    )
    .map_err(MongoError::custom)?;
    orders::collection(db)
        .insert_one(&order)
        .session(&mut *session)
        .await?;
    let row = outbox::store::enqueue_many(
        db,
        session,
        [(order.id, request.traceparent.map(str::to_string))],
        OrderEventType::OrderCreated,
        now,
        request.lease,
    )
    .await?
    .pop()
    .ok_or_else(|| MongoError::custom("the order's outbox row was not written"))?;
    if let Some(keyed) = request.idempotency {
        idempotency::record(db, session, &idempotency::record_for(keyed, &order, now)?).await?;
    }
    Ok((order, row))
}

/// The order document for `lines`, each with the product as it was when its
/// stock was reserved: name and unit price are snapshotted into the line.
pub(super) fn build_order<'p>(
    customer: &Customer,
    lines: impl IntoIterator<Item = (&'p LineRequest, &'p Product)>,
    settings: &OrderSettings<'_>,
    now: DateTime,
) -> Result<Order, PlaceOrderError> {
    let mut order_lines = Vec::new();
    for (line, product) in lines {
        let line_total = product
            .price
            .checked_mul(line.quantity.get())
            .ok_or(PlaceOrderError::TotalOverflow)?;
        order_lines.push(OrderLine {
            product_id: product.id,
            sku: product.sku.clone(),
            name: product.name.clone(),
            unit_price: product.price,
            quantity: line.quantity,
            line_total,
        });
    }
    let totals =
        Totals::of(&order_lines, settings.tax_rate).ok_or(PlaceOrderError::TotalOverflow)?;
    Ok(Order {
        id: ObjectId::new(),
        user_id: customer.id,
        customer_email: customer.email.clone(),
        customer_name: Some(customer.name.clone()),
        lines: order_lines,
        subtotal: totals.subtotal,
        tax: totals.tax,
        total: totals.total,
        currency: settings.currency.to_string(),
        status: OrderStatus::Pending,
        email: EmailDelivery::pending(),
        cancellation_email: None,
        timeline: vec![TimelineEntry::new(
            TimelineEvent::Placed,
            OrderStatus::Pending,
            now,
        )],
        created_at: now,
        updated_at: now,
    })
}

/// Takes `line.quantity` units of the product, only if that many are in
/// stock: the guard and the decrement are one update, so stock never goes
/// below zero however many orders race.
async fn reserve_stock(
    db: &Database,
    session: &mut ClientSession,
    line: &LineRequest,
    now: DateTime,
) -> mongodb::error::Result<Product> {
    let quantity = i64::from(line.quantity.get());
    let reserved = common::mongo::update_then_read(
        &products::collection(db),
        Some(&mut *session),
        doc! { "_id": line.product_id, "active": true, "stock": { "$gte": quantity } },
        doc! { "$inc": { "stock": -quantity }, "$set": { "updated_at": now } },
    )
    .await?;
    if let Some(product) = reserved {
        return Ok(product);
    }
    let product = products::collection(db)
        .find_one(doc! { "_id": line.product_id })
        .session(&mut *session)
        .await?;
    Err(MongoError::custom(match product {
        None => PlaceOrderError::UnknownProduct {
            product_id: line.product_id,
        },
        Some(p) if !p.active => PlaceOrderError::InactiveProduct {
            product_id: p.id,
            name: p.name,
        },
        Some(p) => PlaceOrderError::InsufficientStock {
            product_id: p.id,
            name: p.name,
            requested: line.quantity.get(),
            available: p.stock,
        },
    }))
}
