//! Placing orders: ONE transaction for a batch of N ≥ 1 orders (a lone
//! order is a batch of one). It reads the batch's products, allocates their
//! stock greedily in arrival order, and writes in one command a guarded
//! decrement per product, the placed orders, their outbox rows and their
//! Idempotency-Key records. Each order is all-or-nothing and gets its own
//! answer: placed, or refused for its own reason.
//!
//! A batch that fails because of one order (a repeated Idempotency-Key, say)
//! is run again without it, and that order gets the failure as its answer.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bson::{DateTime, doc, oid::ObjectId};
use common::{
    domain::{
        EmailAddress, EmailDelivery, Order, OrderLine, OrderStatus, Product, Quantity, TaxRate,
        TimelineEntry, TimelineEvent, Totals,
    },
    event::OrderEventType,
};
use futures::FutureExt;
use metrics::counter;
use mongodb::{
    ClientSession, Database,
    error::{Error as MongoError, TRANSIENT_TRANSACTION_ERROR},
    options::{UpdateOneModel, WriteModel},
};
use tokio::{sync::Notify, time::Instant};

use super::idempotency::{self, KeyedRequest};
use crate::{outbox, products};

/// One requested line, already parsed.
#[derive(Debug, Clone, Copy)]
pub struct LineRequest {
    pub product_id: ObjectId,
    pub quantity: Quantity,
}

pub struct Customer {
    pub id: ObjectId,
    pub email: EmailAddress,
    /// The account's username: the emails greet the customer by it.
    pub name: String,
}

/// One order to place.
pub struct OrderRequest {
    pub customer: Customer,
    pub lines: Vec<LineRequest>,
    pub idempotency: Option<KeyedRequest>,
    /// The placing request's W3C trace context, carried to the outbox row
    /// (the batch is written from the writer's task, outside the request's
    /// span). [`super::batch::OrderBatcher::place`] takes it from the
    /// caller's span when `None`.
    pub traceparent: Option<String>,
}

/// What placing needs besides the database.
#[derive(Clone)]
pub struct ShopSettings {
    pub currency: String,
    pub tax_rate: TaxRate,
    /// Upper bound on placing one order's work before its commit, queueing
    /// and retries included, so a client is never left hanging on a
    /// contended product. A commit once sent is waited for, so the answer
    /// is always true.
    pub deadline: Duration,
    /// This process's relay, woken once a batch's outbox rows are
    /// committed.
    pub relay: Arc<Notify>,
    /// bulkWrite, or one statement each where the server refuses it.
    pub writes: common::mongo::bulk::Writes,
}

/// Why an order was refused. Carried out of the transaction body as the
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
        if error
            .get_custom::<common::mongo::DeadlineBeforeCommit>()
            .is_some()
        {
            PlaceError::TimedOut(deadline)
        } else {
            PlaceError::Database(error)
        }
    }
}

/// One order's write failed the batch's transaction: `index` in the batch.
#[derive(Debug, Clone)]
struct OneOrderFailed {
    index: usize,
    error: MongoError,
}

/// Places `requests` as ONE transaction and answers each, in order: three
/// round trips (read the products, one bulk write, commit) for any number
/// of orders. The step the batcher runs; tests call it directly.
pub async fn place_together(
    db: &Database,
    settings: &ShopSettings,
    requests: &[OrderRequest],
    deadline: Instant,
) -> Vec<Result<Order, PlaceError>> {
    let mut answers: Vec<Option<Result<Order, PlaceError>>> =
        requests.iter().map(|_| None).collect();
    // Indexes into `requests` of the orders still to place.
    let mut pending: Vec<usize> = (0..requests.len()).collect();
    while !pending.is_empty() {
        let batch: Vec<&OrderRequest> = pending.iter().map(|&i| &requests[i]).collect();
        let error = match place_batch(db, settings, &batch, deadline).await {
            Ok(outcomes) => {
                for (&i, outcome) in pending.iter().zip(outcomes) {
                    answers[i] = Some(outcome.map_err(PlaceError::Refused));
                }
                break;
            }
            Err(error) => error,
        };
        if let Some(failed) = error.get_custom::<OneOrderFailed>() {
            if batch.len() > 1 {
                tracing::info!(orders = batch.len(), error = %failed.error, "one order failed its batch; placing the others without it");
                counter!(crate::metrics::ORDER_BATCH_FALLBACKS, "reason" => "one_order_failed")
                    .increment(1);
            }
            let i = pending.remove(failed.index);
            answers[i] = Some(Err(PlaceError::Database(failed.error.clone())));
        } else if common::mongo::is_bulk_write_refused(&error) {
            // `write_all` goes one statement each from now on.
        } else {
            // Nothing was written (the deadline passed before the commit),
            // or the database is out of reach, or the commit's outcome is
            // unknown: each order gets that answer.
            for i in pending.drain(..) {
                answers[i] = Some(Err(PlaceError::from_transaction(
                    error.clone(),
                    settings.deadline,
                )));
            }
        }
    }
    answers
        .into_iter()
        .map(|answer| {
            answer.unwrap_or_else(|| {
                Err(PlaceError::Database(MongoError::custom(
                    "an order was left without an answer",
                )))
            })
        })
        .collect()
}

/// One attempt at the batch's transaction, retried as a whole on transient
/// errors; on commit, the relay is woken for its outbox rows.
async fn place_batch(
    db: &Database,
    settings: &ShopSettings,
    batch: &[&OrderRequest],
    deadline: Instant,
) -> mongodb::error::Result<Vec<Result<Order, PlaceOrderError>>> {
    let written = common::mongo::transaction_until(
        db,
        "place_order_batch",
        Some(deadline),
        (db, settings, batch),
        |session, (db, settings, batch)| {
            write_batch(db, session, settings, batch, deadline).boxed()
        },
    )
    .await?;
    if written.iter().any(Result::is_ok) {
        settings.relay.notify_one();
    }
    Ok(written)
}

/// The batch's transaction body; runs again from the start on a transient
/// error. Each statement is bounded by the time left before `deadline`.
/// Returns each order's outcome, in arrival order.
async fn write_batch(
    db: &Database,
    session: &mut ClientSession,
    settings: &ShopSettings,
    batch: &[&OrderRequest],
    deadline: Instant,
) -> mongodb::error::Result<Vec<Result<Order, PlaceOrderError>>> {
    let now = DateTime::now();
    let mut wanted: Vec<ObjectId> = batch
        .iter()
        .flat_map(|r| r.lines.iter().map(|l| l.product_id))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let catalogue = read_products(db, session, &wanted, deadline).await?;
    let outcomes = allocate(batch, &catalogue, settings, now);

    // One guarded decrement per product, for what the placed orders take.
    let mut taken: HashMap<ObjectId, i64> = HashMap::new();
    for order in outcomes.iter().flatten() {
        for line in &order.lines {
            *taken.entry(line.product_id).or_default() += i64::from(line.quantity.get());
        }
    }
    if taken.is_empty() {
        return Ok(outcomes);
    }
    let taken: Vec<(ObjectId, i64)> = taken.into_iter().collect();
    let placed: Vec<(usize, &Order)> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, outcome)| Some((i, outcome.as_ref().ok()?)))
        .collect();
    let rows = outbox::store::rows_for(
        placed
            .iter()
            .map(|(i, order)| (order.id, batch[*i].traceparent.clone())),
        OrderEventType::OrderCreated,
        now,
    );

    // Every write of the batch in ONE bulkWrite command, in this order:
    // the guarded decrements, the orders, their outbox rows, their
    // idempotency keys. A statement inside a transaction is most of what
    // an order costs SecantusDB (its bookkeeping runs per command, not per
    // document), so one command instead of four or more is the saving.
    // `owners[w]` is the batch index of the order write `w` is for.
    let stock = products::store::collection(db);
    let mut writes: Vec<WriteModel> = Vec::new();
    let mut owners: Vec<Option<usize>> = Vec::new();
    for (product_id, quantity) in &taken {
        writes.push(
            UpdateOneModel::builder()
                .namespace(stock.namespace())
                .filter(doc! { "_id": product_id, "active": true, "stock": { "$gte": quantity } })
                .update(doc! { "$inc": { "stock": -quantity }, "$set": { "updated_at": now } })
                .build()
                .into(),
        );
        owners.push(None);
    }
    let orders = common::orders::collection(db);
    for (i, order) in &placed {
        writes.push(orders.insert_one_model(*order)?.into());
        owners.push(Some(*i));
    }
    let outbox = outbox::store::collection(db);
    for (row, (i, _)) in rows.iter().zip(&placed) {
        writes.push(outbox.insert_one_model(row)?.into());
        owners.push(Some(*i));
    }
    for (i, order) in &placed {
        if let Some(keyed) = &batch[*i].idempotency {
            let record = idempotency::record_for(keyed, order, now)?;
            writes.push(idempotency::insert_model(db, &record)?.into());
            owners.push(Some(*i));
        }
    }
    common::mongo::time_left(deadline)?;
    let matched = common::mongo::bulk::write_all(&settings.writes, db, session, writes)
        .await
        .map_err(|common::mongo::bulk::Failed { index, error }| {
            match index.and_then(|w| owners[w]) {
                Some(index) if !error.contains_label(TRANSIENT_TRANSACTION_ERROR) => {
                    MongoError::custom(OneOrderFailed { index, error })
                }
                _ => error,
            }
        })?;
    // Every decrement matches: the products were read in this transaction,
    // and a concurrent change would have been a write conflict. A miss is
    // refused rather than risk overselling.
    if let Some((index, (product, _))) = taken
        .iter()
        .enumerate()
        .find(|(index, _)| matched.get(index) != Some(&1))
    {
        return Err(MongoError::custom(format!(
            "stock of {product} changed inside a batch transaction (write {index})"
        )));
    }
    Ok(outcomes)
}

/// The products of `ids` that exist, read inside the transaction and
/// bounded by the time left before `deadline`.
async fn read_products(
    db: &Database,
    session: &mut ClientSession,
    ids: &[ObjectId],
    deadline: Instant,
) -> mongodb::error::Result<HashMap<ObjectId, Product>> {
    let found = common::mongo::find_in(
        &products::store::collection(db),
        session,
        doc! { "_id": { "$in": ids } },
        deadline,
    )
    .await?;
    Ok(found
        .into_iter()
        .map(|product| (product.id, product))
        .collect())
}

/// Greedy, in arrival order: an order is placed if every line fits in what
/// the orders before it left of `catalogue`'s stock.
fn allocate(
    batch: &[&OrderRequest],
    catalogue: &HashMap<ObjectId, Product>,
    settings: &ShopSettings,
    now: DateTime,
) -> Vec<Result<Order, PlaceOrderError>> {
    let mut left: HashMap<ObjectId, i64> = catalogue.iter().map(|(id, p)| (*id, p.stock)).collect();
    let mut outcomes = Vec::with_capacity(batch.len());
    for request in batch {
        let outcome = reserve(catalogue, &left, &request.lines).and_then(|reserved| {
            build_order(
                &request.customer,
                request.lines.iter().zip(reserved),
                settings,
                now,
            )
        });
        if let Ok(order) = &outcome {
            for line in &order.lines {
                if let Some(stock) = left.get_mut(&line.product_id) {
                    *stock -= i64::from(line.quantity.get());
                }
            }
        }
        outcomes.push(outcome);
    }
    outcomes
}

/// The order document for `lines`, each with the product as it was when its
/// stock was reserved: name and unit price are snapshotted into the line.
fn build_order<'p>(
    customer: &Customer,
    lines: impl IntoIterator<Item = (&'p LineRequest, &'p Product)>,
    settings: &ShopSettings,
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
        currency: settings.currency.clone(),
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

/// The products of `lines` if every line is for sale and fits in `left`;
/// otherwise why not.
fn reserve<'c>(
    catalogue: &'c HashMap<ObjectId, Product>,
    left: &HashMap<ObjectId, i64>,
    lines: &[LineRequest],
) -> Result<Vec<&'c Product>, PlaceOrderError> {
    let mut needs: HashMap<ObjectId, i64> = HashMap::new();
    let mut reserved = Vec::with_capacity(lines.len());
    for line in lines {
        let Some(product) = catalogue.get(&line.product_id) else {
            return Err(PlaceOrderError::UnknownProduct {
                product_id: line.product_id,
            });
        };
        if !product.active {
            return Err(PlaceOrderError::InactiveProduct {
                product_id: product.id,
                name: product.name.clone(),
            });
        }
        let need = needs.entry(product.id).or_default();
        *need += i64::from(line.quantity.get());
        let available = left.get(&product.id).copied().unwrap_or(0);
        if available < *need {
            return Err(PlaceOrderError::InsufficientStock {
                product_id: product.id,
                name: product.name.clone(),
                requested: line.quantity.get(),
                available: available.max(0),
            });
        }
        reserved.push(product);
    }
    Ok(reserved)
}
