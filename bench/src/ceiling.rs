//! The database's own ceiling: the pipeline's order transaction (guarded
//! stock decrement, order insert, outbox insert) issued straight from the
//! driver, at the same concurrency, into scratch collections of the same
//! database (with the same indexes) so the pipeline's data is untouched.
//! It is measured in two forms (`Form`) and the faster one is the ceiling.

use std::time::{Duration, Instant};

use anyhow::Context;
use bson::{DateTime, Document, doc, oid::ObjectId};
use futures::FutureExt;
use mongodb::{
    ClientSession, Collection, Database, IndexModel,
    options::{IndexOptions, UpdateOneModel, WriteModel},
};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::{
    opcount::OpCounts,
    sample::Pids,
    shop::STOCK,
    stats::{self, Summary},
};

/// How the ceiling's transaction is issued. Neither is best everywhere:
/// on one hot document the write-first form loses less to conflicts (a
/// conflict is found at its first statement), spread over many the one
/// command costs the server less. Both are measured and the faster counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// The guarded decrement first (the product read back after it), then
    /// the order and the outbox row, each its own statement; then commit.
    Statements,
    /// As the pipeline writes: read the product, then the decrement and
    /// both inserts in one bulkWrite command; then commit.
    BulkWrite,
}

impl Form {
    pub const ALL: [Form; 2] = [Form::Statements, Form::BulkWrite];

    pub fn name(self) -> &'static str {
        match self {
            Form::Statements => "statements",
            Form::BulkWrite => "bulkWrite",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub shape: String,
    /// The form these figures are for.
    pub form: Form,
    pub concurrency: usize,
    pub committed: u64,
    pub failed: u64,
    pub per_sec: f64,
    pub latency: Summary,
    /// Database operations per committed transaction (failed attempts'
    /// included), as the server counted them.
    pub ops_per_tx: Option<f64>,
    /// The database server's CPU per committed transaction, in ms.
    pub db_cpu_ms_per_tx: Option<f64>,
    /// The other forms, measured too, that committed less.
    pub slower_forms: Vec<Ceiling>,
}

#[derive(Clone)]
struct Scratch {
    products: Collection<Document>,
    orders: Collection<Document>,
    outbox: Collection<Document>,
}

impl Scratch {
    fn new(db: &Database, tag: &str) -> Self {
        let name = |what: &str| format!("bench_ceiling_{tag}_{what}");
        Scratch {
            products: db.collection(&name("products")),
            orders: db.collection(&name("orders")),
            outbox: db.collection(&name("outbox")),
        }
    }

    /// The indexes the pipeline's collections carry: they are part of the
    /// cost of every insert.
    async fn create_indexes(&self) -> mongodb::error::Result<()> {
        let index = |keys: Document| IndexModel::builder().keys(keys).build();
        self.products
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "sku": 1 })
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
            )
            .await?;
        self.orders
            .create_indexes([
                index(doc! { "user_id": 1, "_id": -1 }),
                index(doc! { "user_id": 1, "status": 1, "_id": -1 }),
                index(doc! { "status": 1, "_id": -1 }),
            ])
            .await?;
        self.outbox
            .create_indexes([
                index(doc! { "status": 1, "_id": 1 }),
                index(doc! { "lease_owner": 1 }),
                index(doc! { "expire_at": 1 }),
            ])
            .await?;
        Ok(())
    }

    async fn drop(&self) {
        for collection in [&self.products, &self.orders, &self.outbox] {
            let _ = collection.drop().await;
        }
    }
}

/// `concurrency` workers committing order transactions for `duration`,
/// spread over `products` products (1: every transaction on one document).
pub async fn measure(
    db: &Database,
    tag: &str,
    products: usize,
    concurrency: usize,
    duration: Duration,
    db_pid: Option<u32>,
    form: Form,
) -> anyhow::Result<Ceiling> {
    let scratch = Scratch::new(db, tag);
    scratch
        .create_indexes()
        .await
        .context("creating the ceiling's scratch collections")?;
    let now = DateTime::now();
    let ids: Vec<ObjectId> = (0..products.max(1)).map(|_| ObjectId::new()).collect();
    scratch
        .products
        .insert_many(ids.iter().enumerate().map(|(i, id)| {
            doc! {
                "_id": id, "sku": format!("CEIL-{tag}-{i}"), "name": format!("Ceiling item {i}"),
                "description": null, "price": 49_900_i64, "currency": "INR", "stock": STOCK,
                "active": true, "created_at": now, "updated_at": now,
            }
        }))
        .await
        .context("creating the ceiling's products")?;

    let database = Pids {
        database: db_pid,
        ..Pids::default()
    };
    let cpu_before = database.mark();
    let ops_before = OpCounts::read(db).await?;
    let start = Instant::now();
    let end = start + duration;
    let mut workers = JoinSet::new();
    for worker in 0..concurrency {
        let (db, scratch, ids) = (db.clone(), scratch.clone(), ids.clone());
        workers.spawn(async move {
            let mut latency = stats::histogram();
            let (mut committed, mut failed) = (0u64, 0u64);
            let user = ObjectId::new();
            let mut n = worker;
            while Instant::now() < end {
                let product = ids[n % ids.len()];
                n += concurrency;
                let began = Instant::now();
                match place(&db, &scratch, form, user, product).await {
                    Ok(()) => {
                        committed += 1;
                        stats::record(&mut latency, began.elapsed());
                    }
                    Err(_) => failed += 1,
                }
            }
            (latency, committed, failed)
        });
    }
    let mut latency = stats::histogram();
    let (mut committed, mut failed) = (0, 0);
    while let Some(done) = workers.join_next().await {
        let (h, c, f) = done.context("a ceiling worker panicked")?;
        latency.add(&h).context("merging histograms")?;
        committed += c;
        failed += f;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ops = OpCounts::read(db).await?.since(ops_before).total();
    let cpu = database.per(cpu_before, committed);
    scratch.drop().await;
    Ok(Ceiling {
        shape: if products <= 1 { "hot" } else { "spread" }.into(),
        form,
        concurrency,
        committed,
        failed,
        per_sec: committed as f64 / elapsed,
        latency: Summary::of(&latency),
        ops_per_tx: (committed > 0).then(|| ops as f64 / committed as f64),
        db_cpu_ms_per_tx: cpu.and_then(|c| c.database_ms),
        slower_forms: Vec::new(),
    })
}

/// One order transaction, retried by the driver as the pipeline's is.
async fn place(
    db: &Database,
    scratch: &Scratch,
    form: Form,
    user: ObjectId,
    product: ObjectId,
) -> mongodb::error::Result<()> {
    let mut session = db.client().start_session().await?;
    session
        .start_transaction()
        .and_run(
            (scratch, user, product),
            |session, (scratch, user, product)| match form {
                Form::Statements => write_statements(session, scratch, *user, *product).boxed(),
                Form::BulkWrite => write_bulk(session, scratch, *user, *product).boxed(),
            },
        )
        .await
}

/// The order and outbox documents the pipeline would write for one unit of
/// `product` (as read from the scratch catalogue) bought by `user`.
fn order_and_row(user: ObjectId, product: &Document, now: DateTime) -> (Document, Document) {
    let order_id = ObjectId::new();
    let price = product.get_i64("price").unwrap_or(0);
    let tax = price * 18 / 100;
    let order = doc! {
        "_id": order_id, "user_id": user, "customer_email": "ceiling@bench.test",
        "lines": [{
            "product_id": product.get("_id").cloned().unwrap_or(bson::Bson::Null),
            "sku": product.get_str("sku").unwrap_or(""),
            "name": product.get_str("name").unwrap_or(""), "unit_price": price,
            "quantity": 1, "line_total": price,
        }],
        "subtotal": price, "tax": tax, "total": price + tax, "currency": "INR",
        "status": "PENDING",
        "email": { "status": "PENDING", "message_id": null, "attempts": 0,
                   "attempted_at": null, "sent_at": null, "last_error": null },
        "cancellation_email": null,
        "timeline": [{ "event": "placed", "status": "PENDING", "at": now }],
        "created_at": now, "updated_at": now,
    };
    let event_id = ObjectId::new();
    let body = serde_json::json!({
        "eventId": event_id.to_hex(), "eventType": "order.created",
        "orderId": order_id.to_hex(), "occurredAt": now.try_to_rfc3339_string().unwrap_or_default(),
    })
    .to_string();
    let row = doc! {
        "_id": event_id, "order_id": order_id, "event_type": "order.created", "body": body,
        "status": "PENDING", "attempts": 0, "last_error": null, "created_at": now,
        "lease_owner": null, "lease_until": null, "published_at": null,
        "sqs_message_id": null, "expire_at": null,
    };
    (order, row)
}

/// The guarded decrement of one unit, as both forms issue it.
fn decrement(product: ObjectId, now: DateTime) -> (Document, Document) {
    (
        doc! { "_id": product, "active": true, "stock": { "$gte": 1_i64 } },
        doc! { "$inc": { "stock": -1_i64 }, "$set": { "updated_at": now } },
    )
}

async fn write_statements(
    session: &mut ClientSession,
    scratch: &Scratch,
    user: ObjectId,
    product: ObjectId,
) -> mongodb::error::Result<()> {
    let now = DateTime::now();
    // The decrement first, read back (a findAndModify would scan the whole
    // collection on SecantusDB: see `common::mongo::update_and_read`).
    let (filter, update) = decrement(product, now);
    let reserved =
        common::mongo::update_and_read(&scratch.products, Some(&mut *session), filter, update)
            .await?
            .ok_or_else(|| mongodb::error::Error::custom("ceiling product sold out"))?;
    let (order, row) = order_and_row(user, &reserved, now);
    scratch
        .orders
        .insert_one(order)
        .session(&mut *session)
        .await?;
    scratch.outbox.insert_one(row).session(session).await?;
    Ok(())
}

async fn write_bulk(
    session: &mut ClientSession,
    scratch: &Scratch,
    user: ObjectId,
    product: ObjectId,
) -> mongodb::error::Result<()> {
    let now = DateTime::now();
    // As the pipeline writes an order (`orders::place::write_batch`): read
    // the product, then every write in one bulkWrite command, the guarded
    // decrement first, then the commit.
    let found = scratch
        .products
        .find_one(doc! { "_id": product })
        .session(&mut *session)
        .await?
        .ok_or_else(|| mongodb::error::Error::custom("ceiling product missing"))?;
    let (order, row) = order_and_row(user, &found, now);
    let (filter, update) = decrement(product, now);
    let writes: Vec<WriteModel> = vec![
        UpdateOneModel::builder()
            .namespace(scratch.products.namespace())
            .filter(filter)
            .update(update)
            .build()
            .into(),
        scratch.orders.insert_one_model(order)?.into(),
        scratch.outbox.insert_one_model(row)?.into(),
    ];
    let written = scratch
        .products
        .client()
        .bulk_write(writes)
        .verbose_results()
        .session(session)
        .await?;
    if written.update_results.get(&0).map(|r| r.matched_count) != Some(1) {
        return Err(mongodb::error::Error::custom("ceiling product sold out"));
    }
    Ok(())
}
