//! Placing orders: ONE transaction for a batch of N ≥ 1 orders (a lone
//! order is a batch of one). It reads the products it has no cached copy
//! of, allocates their stock greedily in arrival order, and writes in one
//! command a guarded decrement per product (which also checks a cached
//! copy: `products::cache`), the placed orders, their outbox rows and their
//! Idempotency-Key records. Each order is all-or-nothing and gets its own
//! answer: placed, or refused for its own reason.
//!
//! A batch that fails because of one order (a repeated Idempotency-Key, say)
//! is run again without it, and that order gets the failure as its answer.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bson::{DateTime, Document, doc, oid::ObjectId};
use common::{
    domain::{
        EmailAddress, EmailDelivery, Order, OrderLine, OrderStatus, Product, Quantity, TaxRate,
        TimelineEntry, TimelineEvent, Totals,
    },
    event::OrderEventType,
};
use futures::{FutureExt, TryStreamExt};
use metrics::counter;
use mongodb::{
    ClientSession, Database,
    error::{Error as MongoError, ErrorKind, TRANSIENT_TRANSACTION_ERROR},
    options::{UpdateOneModel, WriteModel},
};
use tokio::time::Instant;

use super::idempotency::{self, KeyedRequest};
use crate::{
    outbox::{
        self, Handoff,
        store::{Lease, OutboxMessage},
    },
    products::{self, cache::ProductCache},
};

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
    /// Where committed orders' outbox rows go: this process's relay.
    pub handoff: Handoff,
    /// Set when the server refuses bulkWrite (MongoDB, or its
    /// featureCompatibilityVersion, below 8.0): as decided at start-up
    /// (`common::mongo::server`), or on the first refusal met at run time.
    /// A batch's writes are then sent one statement each, in the same
    /// transaction.
    pub bulk_write_refused: Arc<AtomicBool>,
    /// What placing last knew of each product: a product it has is not
    /// read again (its guarded decrement checks it).
    pub products: ProductCache,
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

/// Places `requests` as ONE transaction and answers each, in order; three
/// round trips (read the products, one bulk write, commit) for any number
/// of orders, two when the products are cached. The step the batcher runs; tests call it directly.
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
        if error.get_custom::<StaleProducts>().is_some() {
            // The stale products are read fresh from now on.
            tracing::debug!(
                orders = batch.len(),
                "a cached product was stale; placing the batch again from a fresh read"
            );
            counter!(crate::metrics::ORDER_BATCH_FALLBACKS, "reason" => "stale_product")
                .increment(1);
        } else if let Some(failed) = error.get_custom::<OneOrderFailed>() {
            if batch.len() > 1 {
                tracing::info!(orders = batch.len(), error = %failed.error, "one order failed its batch; placing the others without it");
                counter!(crate::metrics::ORDER_BATCH_FALLBACKS, "reason" => "one_order_failed")
                    .increment(1);
            }
            let i = pending.remove(failed.index);
            answers[i] = Some(Err(PlaceError::Database(failed.error.clone())));
        } else if common::mongo::is_bulk_write_refused(&error)
            && !settings.bulk_write_refused.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(error = %error, "the server refuses bulkWrite (MongoDB or its featureCompatibilityVersion below 8.0); order batches are written one statement at a time");
            counter!(crate::metrics::ORDER_BATCH_FALLBACKS, "reason" => "bulk_write_refused")
                .increment(1);
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
/// errors; on commit, its outbox rows go to the relay.
async fn place_batch(
    db: &Database,
    settings: &ShopSettings,
    batch: &[&OrderRequest],
    deadline: Instant,
) -> mongodb::error::Result<Vec<Result<Order, PlaceOrderError>>> {
    let lease = settings.handoff.lease();
    let written = common::mongo::transaction_until(
        db,
        "place_order_batch",
        Some(deadline),
        (db, settings, batch, &lease),
        |session, (db, settings, batch, lease)| {
            write_batch(db, session, settings, batch, lease, deadline).boxed()
        },
    )
    .await?;
    settings.products.remember(written.products);
    settings.handoff.give(db, written.rows).await;
    Ok(written.outcomes)
}

/// What one run of the batch's transaction body wrote: each order's
/// outcome, in arrival order, the outbox rows written under the lease, and
/// the products as the commit leaves them (for the cache).
struct Written {
    outcomes: Vec<Result<Order, PlaceOrderError>>,
    rows: Vec<OutboxMessage>,
    products: Vec<Product>,
}

/// Some products' cached copies were stale (their guarded decrements
/// matched nothing): the batch's transaction is given up, and the batch is
/// placed again from a fresh read.
#[derive(Debug, Clone)]
struct StaleProducts;

/// The batch's transaction body; runs again from the start on a transient
/// error. Products the cache has are not read: their guarded decrements
/// check them (see [`products::cache`]). Each statement is bounded by the
/// time left before `deadline`.
async fn write_batch(
    db: &Database,
    session: &mut ClientSession,
    settings: &ShopSettings,
    batch: &[&OrderRequest],
    lease: &Lease,
    deadline: Instant,
) -> mongodb::error::Result<Written> {
    let now = DateTime::now();
    let mut wanted: Vec<ObjectId> = batch
        .iter()
        .flat_map(|r| r.lines.iter().map(|l| l.product_id))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut catalogue = settings.products.get_many(&wanted);
    let mut guessed: HashSet<ObjectId> = catalogue.keys().copied().collect();
    let unknown: Vec<ObjectId> = wanted
        .iter()
        .filter(|id| !guessed.contains(id))
        .copied()
        .collect();
    read_products(db, session, &unknown, &mut catalogue, deadline).await?;
    let mut outcomes = allocate(batch, &catalogue, settings, now);

    // A refusal is decided on what this transaction read, never on the
    // cache: the cached products of refused orders are read, and the batch
    // allocated again.
    let mut doubtful: Vec<ObjectId> = batch
        .iter()
        .zip(&outcomes)
        .filter(|(_, outcome)| outcome.is_err())
        .flat_map(|(request, _)| request.lines.iter().map(|l| l.product_id))
        .filter(|id| guessed.contains(id))
        .collect();
    if !doubtful.is_empty() {
        doubtful.sort_unstable();
        doubtful.dedup();
        for id in &doubtful {
            catalogue.remove(id);
            guessed.remove(id);
        }
        read_products(db, session, &doubtful, &mut catalogue, deadline).await?;
        outcomes = allocate(batch, &catalogue, settings, now);
    }

    // One guarded decrement per product, for what the placed orders take.
    let mut taken: HashMap<ObjectId, i64> = HashMap::new();
    for order in outcomes.iter().flatten() {
        for line in &order.lines {
            *taken.entry(line.product_id).or_default() += i64::from(line.quantity.get());
        }
    }
    if taken.is_empty() {
        let products = catalogue
            .into_values()
            .filter(|p| !guessed.contains(&p.id))
            .collect();
        return Ok(Written {
            outcomes,
            rows: Vec::new(),
            products,
        });
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
            .map(|(i, order)| (order.id, batch[*i].traceparent.clone(), Some(*order))),
        OrderEventType::OrderCreated,
        now,
        Some(lease),
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
        let product = catalogue.get(product_id).ok_or_else(|| {
            MongoError::custom(format!("product {product_id} was taken without being read"))
        })?;
        writes.push(
            UpdateOneModel::builder()
                .namespace(stock.namespace())
                .filter(products::cache::guard(product, *quantity))
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
    let one_by_one = settings.bulk_write_refused.load(Ordering::Relaxed);
    common::mongo::time_left(deadline)?;
    let matched = write_all(db, session, writes, one_by_one)
        .await
        .map_err(|(write, error)| match write.and_then(|w| owners[w]) {
            Some(index) if !error.contains_label(TRANSIENT_TRANSACTION_ERROR) => {
                MongoError::custom(OneOrderFailed { index, error })
            }
            _ => error,
        })?;
    let missed: Vec<ObjectId> = taken
        .iter()
        .enumerate()
        .filter(|(index, _)| matched.get(index) != Some(&1))
        .map(|(_, (product_id, _))| *product_id)
        .collect();
    if let Some(read) = missed.iter().find(|id| !guessed.contains(id)) {
        // Cannot happen for a product read inside the transaction (a
        // concurrent change is a write conflict); refuse the batch rather
        // than oversell.
        return Err(MongoError::custom(format!(
            "stock of {read} changed inside a batch transaction"
        )));
    }
    if !missed.is_empty() {
        settings.products.found_stale(&missed);
        return Err(MongoError::custom(StaleProducts));
    }
    let products = catalogue
        .into_values()
        .map(|mut product| {
            if let Some((_, quantity)) = taken.iter().find(|(id, _)| *id == product.id) {
                product.stock -= quantity;
                product.updated_at = now;
            }
            product
        })
        .collect();
    Ok(Written {
        outcomes,
        rows,
        products,
    })
}

/// Reads `ids` into `catalogue`, inside the transaction, bounded by the
/// time left before `deadline`; a product that does not exist is left out.
async fn read_products(
    db: &Database,
    session: &mut ClientSession,
    ids: &[ObjectId],
    catalogue: &mut HashMap<ObjectId, Product>,
    deadline: Instant,
) -> mongodb::error::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let left = common::mongo::time_left(deadline)?;
    let mut found = products::store::collection(db)
        .find(doc! { "_id": { "$in": ids } })
        .max_time(left)
        .session(&mut *session)
        .await?;
    let mut stream = found.stream(&mut *session);
    while let Some(product) = stream.try_next().await? {
        catalogue.insert(product.id, product);
    }
    Ok(())
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

/// Sends `writes` in one bulkWrite, or `one_by_one`, one statement each.
/// Returns each update's matched count by its index; on failure, the index
/// of the write that failed when it is known.
async fn write_all(
    db: &Database,
    session: &mut ClientSession,
    writes: Vec<WriteModel>,
    one_by_one: bool,
) -> Result<HashMap<usize, u64>, (Option<usize>, MongoError)> {
    if !one_by_one {
        return match db
            .client()
            .bulk_write(writes)
            .verbose_results()
            .session(&mut *session)
            .await
        {
            Ok(written) => Ok(written
                .update_results
                .iter()
                .map(|(index, result)| (*index, result.matched_count))
                .collect()),
            Err(error) => {
                let failed = match error.kind.as_ref() {
                    ErrorKind::BulkWrite(e) => e.write_errors.keys().min().copied(),
                    _ => None,
                };
                Err((failed, error))
            }
        };
    }
    let mut matched = HashMap::new();
    for (index, write) in writes.into_iter().enumerate() {
        let written = match write {
            WriteModel::InsertOne(m) => db
                .collection::<Document>(&m.namespace.coll)
                .insert_one(m.document)
                .session(&mut *session)
                .await
                .map(|_| ()),
            WriteModel::UpdateOne(m) => db
                .collection::<Document>(&m.namespace.coll)
                .update_one(m.filter, m.update)
                .session(&mut *session)
                .await
                .map(|result| {
                    matched.insert(index, result.matched_count);
                }),
            other => Err(MongoError::custom(format!(
                "no statement form for {other:?}"
            ))),
        };
        written.map_err(|error| (Some(index), error))?;
    }
    Ok(matched)
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
