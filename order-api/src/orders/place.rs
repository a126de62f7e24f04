//! Placing an order: in ONE transaction, reserve every line's stock with a
//! guarded decrement, insert the order, insert its outbox row. Either all of
//! it is written or none of it.

use std::time::Duration;

use bson::{DateTime, doc, oid::ObjectId};
use common::{
    domain::{
        EmailDelivery, EmailStatus, Order, OrderLine, OrderStatus, Product, Quantity, StatusChange,
        TaxRate, Totals,
    },
    event::{OrderEvent, OrderEventType},
};
use futures::FutureExt;
use mongodb::{ClientSession, Database, error::Error as MongoError};

use crate::{orders::store as orders, outbox, products::store as products};

/// One requested line, already parsed.
#[derive(Debug, Clone, Copy)]
pub struct LineRequest {
    pub product_id: ObjectId,
    pub quantity: Quantity,
}

pub struct Customer {
    pub id: ObjectId,
    pub email: String,
}

/// Why an order was refused. Carried out of the transaction callback as the
/// driver's custom error, so the driver aborts the transaction.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlaceOrderError {
    #[error("product {product_id} does not exist or is not for sale")]
    UnknownProduct { product_id: ObjectId },
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
    #[error("the transaction did not complete within {0:?}")]
    TimedOut(Duration),
    #[error(transparent)]
    Database(MongoError),
}

pub struct OrderSettings<'a> {
    pub currency: &'a str,
    pub tax_rate: TaxRate,
    /// Upper bound on the whole unit, retries included, so a client is never
    /// left hanging on a contended product.
    pub deadline: Duration,
}

/// Places an order; retried as a whole on transient transaction errors.
pub async fn place_order(
    db: &Database,
    customer: &Customer,
    lines: &[LineRequest],
    settings: &OrderSettings<'_>,
) -> Result<Order, PlaceError> {
    let attempt = async {
        let mut session = db
            .client()
            .start_session()
            .await
            .map_err(PlaceError::Database)?;
        session
            .start_transaction()
            // `and_run` with a context rather than `and_run2`: the async
            // closure form trips rust-lang/rust#96865 (Send not general enough).
            .and_run(
                (db, customer, lines, settings),
                |session, (db, customer, lines, settings)| {
                    write_order(db, session, customer, lines, settings).boxed()
                },
            )
            .await
            .map_err(|e| match e.get_custom::<PlaceOrderError>() {
                Some(refused) => PlaceError::Refused(refused.clone()),
                None => PlaceError::Database(e),
            })
    };
    tokio::time::timeout(settings.deadline, attempt)
        .await
        .unwrap_or(Err(PlaceError::TimedOut(settings.deadline)))
}

/// The transaction's body. Runs again from the start on a transient error.
async fn write_order(
    db: &Database,
    session: &mut ClientSession,
    customer: &Customer,
    lines: &[LineRequest],
    settings: &OrderSettings<'_>,
) -> mongodb::error::Result<Order> {
    let now = DateTime::now();
    let mut order_lines = Vec::with_capacity(lines.len());
    for line in lines {
        let product = reserve_stock(db, session, line, now).await?;
        let line_total = product
            .price
            .checked_mul(line.quantity.get())
            .ok_or_else(|| MongoError::custom(PlaceOrderError::TotalOverflow))?;
        order_lines.push(OrderLine {
            product_id: product.id,
            sku: product.sku,
            name: product.name,
            unit_price: product.price,
            quantity: line.quantity,
            line_total,
        });
    }
    let totals = Totals::of(&order_lines, settings.tax_rate)
        .ok_or_else(|| MongoError::custom(PlaceOrderError::TotalOverflow))?;

    let order_id = ObjectId::new();
    let order = Order {
        id: order_id,
        user_id: customer.id,
        customer_email: customer.email.clone(),
        lines: order_lines,
        subtotal: totals.subtotal,
        tax: totals.tax,
        total: totals.total,
        currency: settings.currency.to_string(),
        status: OrderStatus::Pending,
        email: EmailDelivery {
            status: EmailStatus::Pending,
            message_id: None,
            attempts: 0,
            attempted_at: None,
            sent_at: None,
            last_error: None,
        },
        history: vec![StatusChange {
            status: OrderStatus::Pending,
            at: now,
        }],
        created_at: now,
        updated_at: now,
    };
    orders::collection(db)
        .insert_one(&order)
        .session(&mut *session)
        .await?;

    let event_id = ObjectId::new();
    let event = OrderEvent {
        event_id: event_id.to_hex(),
        event_type: OrderEventType::OrderCreated,
        order_id: order_id.to_hex(),
        occurred_at: now.to_chrono(),
    };
    outbox::store::insert(db, session, event_id, order_id, &event).await?;
    Ok(order)
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
    let reserved = products::collection(db)
        .find_one_and_update(
            doc! { "_id": line.product_id, "active": true, "stock": { "$gte": quantity } },
            doc! { "$inc": { "stock": -quantity }, "$set": { "updated_at": now } },
        )
        .session(&mut *session)
        .await?;
    if let Some(product) = reserved {
        return Ok(product);
    }
    let product = products::collection(db)
        .find_one(doc! { "_id": line.product_id })
        .session(&mut *session)
        .await?;
    Err(MongoError::custom(match product {
        Some(p) if p.active => PlaceOrderError::InsufficientStock {
            product_id: p.id,
            name: p.name,
            requested: line.quantity.get(),
            available: p.stock,
        },
        _ => PlaceOrderError::UnknownProduct {
            product_id: line.product_id,
        },
    }))
}
