//! Group commit: concurrent order placements are queued and written in
//! batches, ONE transaction per batch, instead of one transaction each.
//!
//! Why: every order for a product decrements the same stock document, so
//! concurrent transactions for one hot product conflict and retry, and the
//! database commits only a few dozen a second. One writer places one batch
//! at a time, so no two of its transactions conflict, and a batch is as
//! big as the orders that arrived while the last one committed (several
//! writers in parallel were measured and made smaller batches and more
//! conflicts on a one-core database; BENCHMARKS.md, session 4).
//!
//! Invariants, as for a single order: each order is all-or-nothing and gets
//! its own answer (placed, or refused for its own reason); stock never goes
//! below zero, because the batch allocates stock greedily in arrival order
//! from what it read and then applies one guarded decrement per product.

use std::{collections::HashMap, time::Duration};

use bson::{DateTime, doc, oid::ObjectId};
use common::{
    domain::{Order, Product, TaxRate},
    event::OrderEventType,
};
use futures::{FutureExt, TryStreamExt};
use metrics::counter;
use mongodb::{
    ClientSession, Database,
    error::Error as MongoError,
    options::{UpdateOneModel, WriteModel},
};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use super::{
    idempotency::{self, KeyedRequest},
    place::{self, Customer, LineRequest, NewOrder, OrderSettings, PlaceError, PlaceOrderError},
    store as orders,
};
use crate::{
    outbox::{
        self, Handoff,
        store::{Lease, OutboxMessage},
    },
    products::store as products,
};

/// Orders in one transaction at most.
pub const MAX_BATCH: usize = 64;
/// Orders waiting before placers wait for room.
const QUEUE_DEPTH: usize = 1024;

/// One order as the batcher holds it: owned, since it outlives the request's
/// borrow while it waits in the queue.
pub struct OrderRequest {
    pub customer: Customer,
    pub lines: Vec<LineRequest>,
    pub idempotency: Option<KeyedRequest>,
    /// The placing request's W3C trace context, carried to the outbox row
    /// (the batch is written from the writer's task, outside the request's
    /// span). `place` fills it in from the caller's span when `None`.
    pub traceparent: Option<String>,
}

struct Job {
    request: OrderRequest,
    deadline: Instant,
    answer: oneshot::Sender<Result<Order, PlaceError>>,
}

/// The handle the routes place orders through. Cheap to clone.
#[derive(Clone)]
pub struct OrderBatcher {
    queue: mpsc::Sender<Job>,
    deadline: Duration,
}

/// What the batch workers need besides the database.
#[derive(Clone)]
pub struct ShopSettings {
    pub currency: String,
    pub tax_rate: TaxRate,
    /// Upper bound on placing one order's work before its commit, queueing
    /// and retries included.
    pub deadline: Duration,
    /// Where committed orders' outbox rows go: this process's relay. `None`
    /// writes them unleased, for any relay to claim.
    pub handoff: Option<Handoff>,
}

impl OrderBatcher {
    /// Starts the writer; it stops when the last handle is dropped.
    pub fn start(db: Database, settings: ShopSettings) -> Self {
        let deadline = settings.deadline;
        let (queue, waiting) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(write_until_closed(db, settings, waiting));
        OrderBatcher { queue, deadline }
    }

    /// Places one order, in whatever batch it lands in. Same answers as
    /// [`place::place_order`].
    pub async fn place(&self, mut request: OrderRequest) -> Result<Order, PlaceError> {
        if request.traceparent.is_none() {
            request.traceparent = common::telemetry::traceparent(&tracing::Span::current());
        }
        let deadline = Instant::now() + self.deadline;
        let (answer, answered) = oneshot::channel();
        let job = Job {
            request,
            deadline,
            answer,
        };
        // Until the order is queued nothing is written, so the deadline may
        // cut the wait short. After that the batch keeps it: its deadline
        // stops the work before the commit, and a commit once sent is
        // waited for, so the answer that comes back is the true one.
        match tokio::time::timeout_at(deadline, self.queue.send(job)).await {
            Err(_) => return Err(PlaceError::TimedOut(self.deadline)),
            Ok(Err(_)) => {
                return Err(PlaceError::Database(MongoError::custom(
                    "order batcher stopped",
                )));
            }
            Ok(Ok(())) => {}
        }
        answered.await.map_err(|_| {
            PlaceError::Database(MongoError::custom("order batcher dropped an order"))
        })?
    }
}

/// The writer: takes the first waiting order, then whatever else is already
/// queued (never waiting for more), and places them as one batch.
async fn write_until_closed(db: Database, settings: ShopSettings, mut queue: mpsc::Receiver<Job>) {
    while let Some(batch) = common::batching::next_batch(&mut queue, MAX_BATCH).await {
        place_batch(&db, &settings, batch).await;
    }
}

async fn place_batch(db: &Database, settings: &ShopSettings, batch: Vec<Job>) {
    let now = Instant::now();
    // A client that gave up, or an order whose time ran out in the queue,
    // is not placed: nothing is written for it.
    let (live, expired): (Vec<Job>, Vec<Job>) = batch
        .into_iter()
        .filter(|job| !job.answer.is_closed())
        .partition(|job| job.deadline > now);
    for job in expired {
        let _ = job
            .answer
            .send(Err(PlaceError::TimedOut(settings.deadline)));
    }
    let Some(deadline) = live.iter().map(|job| job.deadline).min() else {
        return;
    };
    let (requests, answers): (Vec<OrderRequest>, Vec<_>) = live
        .into_iter()
        .map(|job| (job.request, job.answer))
        .unzip();
    let outcomes = place_together(db, settings, &requests, deadline).await;
    for (answer, outcome) in answers.into_iter().zip(outcomes) {
        let _ = answer.send(outcome);
    }
}

/// Places `requests` as ONE transaction and answers each, in order. A
/// batch of one takes the same path: three round trips (read the products,
/// one bulk write, commit) against the single-order path's five or more.
/// The step the writer runs; tests call it directly.
pub async fn place_together(
    db: &Database,
    settings: &ShopSettings,
    requests: &[OrderRequest],
    deadline: Instant,
) -> Vec<Result<Order, PlaceError>> {
    if requests.is_empty() {
        return Vec::new();
    }
    let lease = settings.handoff.as_ref().map(Handoff::lease);
    let attempt = common::mongo::transaction_until(
        db,
        "place_order_batch",
        Some(deadline),
        (db, settings, requests, lease.as_ref()),
        |session, (db, settings, requests, lease)| {
            write_batch(db, session, settings, requests, *lease).boxed()
        },
    )
    .await;
    match attempt {
        Ok((outcomes, rows)) => {
            hand_off(db, settings, rows).await;
            outcomes
                .into_iter()
                .map(|outcome| outcome.map_err(PlaceError::Refused))
                .collect()
        }
        // Nothing was written (the deadline passed before the commit), or
        // the database is out of reach, or the commit's outcome is unknown:
        // one by one would only fail slower, and each order gets the answer.
        Err(e)
            if e.get_custom::<common::mongo::DeadlineBeforeCommit>()
                .is_some()
                || common::mongo::is_unavailable(&e)
                || common::mongo::outcome_unknown(&e) =>
        {
            requests
                .iter()
                .map(|_| Err(PlaceError::from_transaction(e.clone(), settings.deadline)))
                .collect()
        }
        // Something about one of the orders (a duplicate Idempotency-Key,
        // say) failed the whole batch: place each on its own so each gets
        // its exact answer.
        Err(e) => {
            let reason = if common::mongo::is_bulk_write_refused(&e) {
                tracing::warn!(orders = requests.len(), error = %e, "the server refuses bulkWrite (MongoDB or its featureCompatibilityVersion below 8.0); placing the batch's orders one by one");
                "bulk_write_refused"
            } else {
                tracing::info!(orders = requests.len(), error = %e, "batch failed; placing its orders one by one");
                "batch_failed"
            };
            counter!(crate::metrics::ORDER_BATCH_FALLBACKS, "reason" => reason).increment(1);
            let mut outcomes = Vec::with_capacity(requests.len());
            for request in requests {
                outcomes.push(place_alone(db, settings, request, deadline).await);
            }
            outcomes
        }
    }
}

/// Gives a committed transaction's outbox rows to the relay, if any.
async fn hand_off(db: &Database, settings: &ShopSettings, rows: Vec<OutboxMessage>) {
    if let Some(handoff) = &settings.handoff
        && !rows.is_empty()
    {
        handoff.give(db, rows).await;
    }
}

/// The single-order path, exactly as without batching: for the orders of a
/// batch that failed as a whole, so each gets its own exact answer.
async fn place_alone(
    db: &Database,
    settings: &ShopSettings,
    request: &OrderRequest,
    deadline: Instant,
) -> Result<Order, PlaceError> {
    let lease = settings.handoff.as_ref().map(Handoff::lease);
    let order_settings = OrderSettings {
        currency: &settings.currency,
        tax_rate: settings.tax_rate,
        deadline: deadline.saturating_duration_since(Instant::now()),
    };
    let single = NewOrder {
        customer: &request.customer,
        lines: &request.lines,
        settings: &order_settings,
        idempotency: request.idempotency.as_ref(),
        traceparent: request.traceparent.as_deref(),
        lease: lease.as_ref(),
    };
    match place::place_order(db, &single).await {
        Ok((order, row)) => {
            hand_off(db, settings, vec![row]).await;
            Ok(order)
        }
        // The deadline is the order's whole one, not the remainder passed down.
        Err(PlaceError::TimedOut(_)) => Err(PlaceError::TimedOut(settings.deadline)),
        Err(other) => Err(other),
    }
}

/// The batch's transaction body; runs again from the start on a transient
/// error. Returns each order's outcome, in arrival order, and the outbox
/// rows it wrote (under `lease`, when given).
async fn write_batch(
    db: &Database,
    session: &mut ClientSession,
    settings: &ShopSettings,
    requests: &[OrderRequest],
    lease: Option<&Lease>,
) -> mongodb::error::Result<(Vec<Result<Order, PlaceOrderError>>, Vec<OutboxMessage>)> {
    let now = DateTime::now();
    let mut wanted: Vec<ObjectId> = requests
        .iter()
        .flat_map(|r| r.lines.iter().map(|l| l.product_id))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let catalogue: HashMap<ObjectId, Product> = products::collection(db)
        .find(doc! { "_id": { "$in": &wanted } })
        .session(&mut *session)
        .await?
        .stream(&mut *session)
        .map_ok(|p| (p.id, p))
        .try_collect()
        .await?;

    let order_settings = OrderSettings {
        currency: &settings.currency,
        tax_rate: settings.tax_rate,
        deadline: settings.deadline,
    };
    // Greedy, in arrival order: an order is placed if every line fits in
    // what the orders before it left.
    let mut left: HashMap<ObjectId, i64> = catalogue.iter().map(|(id, p)| (*id, p.stock)).collect();
    let mut outcomes = Vec::with_capacity(requests.len());
    for request in requests {
        let outcome = reserve(&catalogue, &left, &request.lines).and_then(|reserved| {
            place::build_order(
                &request.customer,
                request.lines.iter().zip(reserved),
                &order_settings,
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

    // One guarded decrement per product, for what the placed orders take.
    let mut taken: HashMap<ObjectId, i64> = HashMap::new();
    for order in outcomes.iter().flatten() {
        for line in &order.lines {
            *taken.entry(line.product_id).or_default() += i64::from(line.quantity.get());
        }
    }
    let taken: Vec<(ObjectId, i64)> = taken.into_iter().collect();
    let placed: Vec<&Order> = outcomes.iter().flatten().collect();
    if placed.is_empty() {
        return Ok((outcomes, Vec::new()));
    }
    let traced = requests
        .iter()
        .zip(&outcomes)
        .filter_map(|(request, outcome)| {
            Some((outcome.as_ref().ok()?.id, request.traceparent.clone()))
        });
    let rows = outbox::store::rows_for(traced, OrderEventType::OrderCreated, now, lease);
    let records = requests
        .iter()
        .zip(&outcomes)
        .filter_map(|(request, outcome)| {
            Some((request.idempotency.as_ref()?, outcome.as_ref().ok()?))
        })
        .map(|(keyed, order)| idempotency::record_for(keyed, order, now))
        .collect::<mongodb::error::Result<Vec<_>>>()?;

    // Every write of the batch in ONE bulkWrite command, in this order:
    // the guarded decrements, the orders, their outbox rows, their
    // idempotency keys. A statement inside a transaction is most of what
    // an order costs SecantusDB (its bookkeeping runs per command, not per
    // document), so one command instead of four or more is the saving.
    let stock = products::collection(db);
    let mut writes: Vec<WriteModel> = taken
        .iter()
        .map(|(product_id, quantity)| {
            UpdateOneModel::builder()
                .namespace(stock.namespace())
                .filter(doc! { "_id": product_id, "active": true, "stock": { "$gte": quantity } })
                .update(doc! { "$inc": { "stock": -quantity }, "$set": { "updated_at": now } })
                .build()
                .into()
        })
        .collect();
    let orders = orders::collection(db);
    for order in &placed {
        writes.push(orders.insert_one_model(*order)?.into());
    }
    let outbox = outbox::store::collection(db);
    for row in &rows {
        writes.push(outbox.insert_one_model(row)?.into());
    }
    for record in &records {
        writes.push(idempotency::insert_model(db, record)?.into());
    }
    let written = db
        .client()
        .bulk_write(writes)
        .verbose_results()
        .session(&mut *session)
        .await?;
    for (index, (product_id, _)) in taken.iter().enumerate() {
        if written.update_results.get(&index).map(|r| r.matched_count) != Some(1) {
            // Cannot happen inside the transaction (a concurrent change is a
            // write conflict); refuse the batch rather than oversell.
            return Err(MongoError::custom(format!(
                "stock of {product_id} changed inside a batch transaction"
            )));
        }
    }
    Ok((outcomes, rows))
}

/// The products of `lines` if every line is for sale and fits in `left`;
/// otherwise why not, as placing the order alone would say.
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
