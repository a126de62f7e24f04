//! After the faults heal: wait until the pipeline has settled, then count
//! what happened and check the guarantees against the database, the inbox
//! and the ledger of what clients were told.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    time::Duration,
};

use anyhow::Context;
use bson::{Bson, Document, doc, oid::ObjectId};
use futures::TryStreamExt;
use mongodb::Database;
use serde::Serialize;

use crate::{
    inbox::{self, Counts, EmailKind},
    load::Ledger,
    shop::Product,
};

/// The figures of one scenario, as printed and written to summary.json.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Figures {
    /// 201s the clients received.
    pub acknowledged: usize,
    /// Requests whose outcome the client never learnt (no answer, 5xx).
    pub unknown: usize,
    /// Of those, the ones that had committed (their Idempotency-Key is in
    /// the database): they must be processed like any other.
    pub unknown_committed: usize,
    /// Orders in the database (acknowledged + unknown committed).
    pub orders: usize,
    /// Orders that ended PROCESSED (or CANCELLED), with their emails SENT.
    pub processed: usize,
    pub cancelled: usize,
    /// Email copies received for this scenario's orders.
    pub emails: u64,
    /// Copies beyond the first of one order's email.
    pub duplicate_emails: u64,
    /// Acknowledged or committed orders that did not end PROCESSED/CANCELLED
    /// with their email received.
    pub lost: usize,
    pub stock_conserved: bool,
    /// Messages in the scenario's dead-letter queue at the end.
    pub dead_lettered: u64,
    #[serde(skip)]
    pub duplicate_orders: BTreeSet<String>,
    #[serde(skip)]
    pub problems: Vec<String>,
}

fn orders(db: &Database) -> mongodb::Collection<Document> {
    db.collection("orders")
}

/// Orders not yet in a final state: still pending or processing, or an
/// email of theirs still to be sent.
fn unsettled_filter() -> Document {
    doc! { "$or": [
        { "status": { "$nin": ["PROCESSED", "CANCELLED"] } },
        { "email.status": "SENDING" },
        { "status": "PROCESSED", "email.status": "PENDING" },
        { "status": "CANCELLED", "cancellation_email.status": { "$in": ["PENDING", "SENDING"] } },
    ] }
}

/// Waits until every order in the database is settled, up to `within`.
/// Errors reading the database (it may be restarting) count as not yet.
pub async fn wait_settled(db: &Database, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(0) = orders(db).count_documents(unsettled_filter()).await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What one order's emails should look like in the inbox.
#[derive(Debug)]
struct Expected {
    confirmation: bool,
    cancellation: bool,
}

pub struct AuditInput<'a> {
    pub db: &'a Database,
    pub ledger: &'a Ledger,
    pub products: &'a [Product],
    /// Orders cancelled on purpose by the scenario.
    pub cancelled_on_purpose: &'a HashSet<String>,
    /// Orders whose email was being sent (SENDING) when a process was
    /// killed: the only ones allowed a duplicate email.
    pub duplicates_allowed: &'a HashSet<String>,
    /// Inbox copies counted before MailDev was restarted (it forgets them).
    pub inbox_before_restart: &'a Counts,
    pub inbox: inbox::Source<'a>,
    pub recipients: &'a HashSet<String>,
    pub settled: bool,
}

/// Counts and checks. Every guarantee that does not hold is a problem in the
/// returned figures.
pub async fn audit(input: AuditInput<'_>) -> anyhow::Result<Figures> {
    let mut figures = Figures {
        acknowledged: input.ledger.acknowledged.len(),
        unknown: input.ledger.unknown_keys.len(),
        ..Figures::default()
    };
    if !input.settled {
        figures.problems.push(
            "the pipeline did not settle in time (orders still pending or emails unsent)".into(),
        );
    }
    for unexpected in &input.ledger.unexpected {
        figures.problems.push(format!(
            "unexpected answer to POST /api/orders: {unexpected}"
        ));
    }

    let all: Vec<Document> = orders(input.db)
        .find(doc! {})
        .await
        .context("reading orders")?
        .try_collect()
        .await
        .context("reading orders")?;
    figures.orders = all.len();

    // Which unknown requests committed: their key's record is written in the
    // order's own transaction.
    let committed_unknown: HashSet<String> = if input.ledger.unknown_keys.is_empty() {
        HashSet::new()
    } else {
        input
            .db
            .collection::<Document>("idempotency_keys")
            .find(doc! { "_id.key": { "$in": &input.ledger.unknown_keys } })
            .await?
            .try_collect::<Vec<_>>()
            .await?
            .into_iter()
            .filter_map(|r| r.get_object_id("order_id").ok().map(|id| id.to_hex()))
            .collect()
    };
    figures.unknown_committed = committed_unknown.len();
    let acknowledged: HashSet<&str> = input
        .ledger
        .acknowledged
        .iter()
        .map(|a| a.order_id.as_str())
        .collect();

    // Wait (briefly) for the inbox to show every email the database says was
    // sent: MailDev stores a mail just after accepting it.
    let mut expected: HashMap<String, Expected> = HashMap::new();
    for order in &all {
        let id = order.get_object_id("_id")?.to_hex();
        let status = order.get_str("status").unwrap_or("?");
        let email = email_status(order, "email");
        expected.insert(
            id,
            Expected {
                confirmation: status == "PROCESSED" || email == "SENT",
                cancellation: status == "CANCELLED",
            },
        );
    }
    let mut received = Counts::new();
    for _ in 0..30 {
        received = input.inbox_before_restart.clone();
        inbox::merge(&mut received, &input.inbox.count(input.recipients).await?);
        let complete = expected.iter().all(|(id, e)| {
            (!e.confirmation || received.contains_key(&(id.clone(), EmailKind::Confirmation)))
                && (!e.cancellation
                    || received.contains_key(&(id.clone(), EmailKind::Cancellation)))
        });
        if complete {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut lost = Vec::new();
    let mut quantities: HashMap<ObjectId, i64> = HashMap::new();
    let mut in_db: HashSet<String> = HashSet::new();
    for order in &all {
        let id = order.get_object_id("_id")?.to_hex();
        in_db.insert(id.clone());
        let status = order.get_str("status").unwrap_or("?");
        let confirmation = email_status(order, "email");
        let cancellation = email_status(order, "cancellation_email");
        let got = |kind| received.get(&(id.clone(), kind)).copied().unwrap_or(0);
        let ok = match status {
            "PROCESSED" => confirmation == "SENT" && got(EmailKind::Confirmation) >= 1,
            "CANCELLED" => {
                cancellation == "SENT"
                    && got(EmailKind::Cancellation) >= 1
                    && (confirmation != "SENT" || got(EmailKind::Confirmation) >= 1)
            }
            _ => false,
        };
        if status == "CANCELLED" {
            figures.cancelled += 1;
            if !input.cancelled_on_purpose.contains(&id) {
                figures
                    .problems
                    .push(format!("order {id} is CANCELLED but nobody cancelled it"));
            }
        } else {
            for line in order
                .get_array("lines")
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                if let Bson::Document(line) = line {
                    let product = line.get_object_id("product_id")?;
                    let quantity = match line.get("quantity") {
                        Some(Bson::Int32(n)) => i64::from(*n),
                        Some(Bson::Int64(n)) => *n,
                        other => anyhow::bail!("order {id}: quantity {other:?}"),
                    };
                    *quantities.entry(product).or_default() += quantity;
                }
            }
        }
        if ok {
            figures.processed += 1;
        } else {
            lost.push(format!(
                "order {id}: status {status}, email {confirmation} (received {}), cancellation email {cancellation} (received {})",
                got(EmailKind::Confirmation),
                got(EmailKind::Cancellation)
            ));
        }
        if !acknowledged.contains(id.as_str()) && !committed_unknown.contains(&id) {
            figures.problems.push(format!(
                "order {id} is in the database but no client placed it (neither acknowledged nor an unanswered request)"
            ));
        }
    }
    for ack in &input.ledger.acknowledged {
        if !in_db.contains(&ack.order_id) {
            lost.push(format!(
                "order {} was acknowledged (201) but is not in the database",
                ack.order_id
            ));
        }
    }
    figures.lost = lost.len();
    for line in lost.iter().take(5) {
        figures.problems.push(format!("lost: {line}"));
    }

    // Emails: each order's at most once, except where a kill interrupted a send.
    for ((id, kind), copies) in &received {
        figures.emails += copies;
        if !in_db.contains(id) {
            figures.problems.push(format!(
                "{copies} email(s) for {id} ({kind:?}), which is not an order of this scenario"
            ));
        }
        if *copies > 1 {
            figures.duplicate_emails += copies - 1;
            figures.duplicate_orders.insert(id.clone());
            if !input.duplicates_allowed.contains(id) {
                figures.problems.push(format!(
                    "{copies} copies of order {id}'s {kind:?} email, and no kill interrupted that send"
                ));
            }
        }
    }

    // Stock: what there was = what is left + what live orders hold.
    figures.stock_conserved = true;
    let products = input.db.collection::<Document>("products");
    for product in input.products {
        let id = ObjectId::parse_str(&product.id)?;
        let current = products
            .find_one(doc! { "_id": id })
            .await?
            .and_then(|p| match p.get("stock") {
                Some(Bson::Int64(n)) => Some(*n),
                Some(Bson::Int32(n)) => Some(i64::from(*n)),
                _ => None,
            })
            .context("product stock")?;
        let held = quantities.get(&id).copied().unwrap_or(0);
        if product.initial_stock != current + held {
            figures.stock_conserved = false;
            figures.problems.push(format!(
                "stock of {} not conserved: initial {} != current {current} + held by live orders {held}",
                product.id, product.initial_stock
            ));
        }
    }
    Ok(figures)
}

fn email_status<'a>(order: &'a Document, field: &str) -> &'a str {
    order
        .get_document(field)
        .ok()
        .and_then(|e| e.get_str("status").ok())
        .unwrap_or("NONE")
}

/// Orders whose email is being sent right now (`SENDING`): read just after a
/// processor was killed, these are the sends the kill interrupted.
pub async fn sending_now(db: &Database) -> anyhow::Result<HashSet<String>> {
    let docs: Vec<Document> = orders(db)
        .find(doc! { "$or": [ { "email.status": "SENDING" }, { "cancellation_email.status": "SENDING" } ] })
        .projection(doc! { "_id": 1 })
        .await?
        .try_collect()
        .await?;
    Ok(docs
        .into_iter()
        .filter_map(|d| d.get_object_id("_id").ok().map(|id| id.to_hex()))
        .collect())
}

/// Outbox rows not yet published.
pub async fn pending_outbox(db: &Database) -> anyhow::Result<u64> {
    Ok(db
        .collection::<Document>("outbox")
        .count_documents(doc! { "status": "PENDING" })
        .await?)
}
