//! The far end of an order's trip, read from MongoDB: waits until every
//! accepted order is PROCESSED with its confirmation SENT, then measures
//! POST → processed (and → email sent) from the order's own timeline.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::Context;
use bson::{Document, doc, oid::ObjectId};
use futures::TryStreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use mongodb::Database;

use crate::{load::Placed, stats};

/// The wait polls the same database the pipeline works on, so it polls
/// seldom and with queries the indexes answer first.
const POLL_EVERY: Duration = Duration::from_secs(1);

pub struct EndToEnd {
    pub processed: Histogram<u64>,
    pub emailed: Histogram<u64>,
}

pub struct Drained {
    /// Accepted orders not PROCESSED with email SENT when the wait ran out.
    pub unfinished: u64,
    pub waited: Duration,
    /// The counts the wait ran: the bench's own load on the database.
    pub reads: u64,
}

fn owned_by(buyers: &[ObjectId]) -> Document {
    doc! { "user_id": { "$in": buyers } }
}

/// Waits (at most `within`) until all `accepted` orders of `buyers` are done.
pub async fn drain(
    db: &Database,
    buyers: &[ObjectId],
    accepted: u64,
    within: Duration,
) -> anyhow::Result<Drained> {
    let orders = db.collection::<Document>("orders");
    let mut reads = 0;
    let started = Instant::now();
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{prefix:>14} {spinner} {msg}").expect("valid template"),
    );
    bar.set_prefix("draining");
    let mut not_done = u64::MAX;
    while started.elapsed() < within {
        // Not yet processed: answered by the (user_id, status) index.
        let mut unprocessed = owned_by(buyers);
        unprocessed.insert("status", doc! { "$in": ["PENDING", "PROCESSING"] });
        reads += 1;
        not_done = orders
            .count_documents(unprocessed)
            .await
            .context("counting unprocessed orders")?;
        if not_done == 0 {
            // Processed, email not yet sent: checked only once all are processed.
            let mut unsent = owned_by(buyers);
            unsent.insert("status", "PROCESSED");
            unsent.insert("email.status", doc! { "$ne": "SENT" });
            reads += 1;
            not_done = orders
                .count_documents(unsent)
                .await
                .context("counting orders not yet emailed")?;
        }
        bar.set_message(format!("{not_done} orders not yet processed and emailed"));
        bar.tick();
        if not_done == 0 {
            break;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    bar.finish_and_clear();
    Ok(Drained {
        unfinished: not_done.min(accepted),
        waited: started.elapsed(),
        reads,
    })
}

/// POST → processed and → email sent of every order `placed` by `buyers`.
pub async fn end_to_end(
    db: &Database,
    buyers: &[ObjectId],
    placed: &[Placed],
) -> anyhow::Result<EndToEnd> {
    let orders = db.collection::<Document>("orders");
    let due: HashMap<&str, i64> = placed
        .iter()
        .map(|p| (p.order_id.as_str(), p.due_ms))
        .collect();
    let mut processed = stats::histogram();
    let mut emailed = stats::histogram();
    let mut cursor = orders
        .find(owned_by(buyers))
        .projection(doc! { "timeline": 1, "email.sent_at": 1 })
        .await
        .context("reading the bench's orders")?;
    while let Some(order) = cursor.try_next().await.context("reading an order")? {
        let Some(due_ms) = order
            .get_object_id("_id")
            .ok()
            .and_then(|id| due.get(id.to_hex().as_str()).copied())
        else {
            continue;
        };
        let since_due = |at: bson::DateTime| {
            Duration::from_millis(u64::try_from(at.timestamp_millis() - due_ms).unwrap_or(0))
        };
        let processed_at = order.get_array("timeline").ok().and_then(|timeline| {
            timeline.iter().find_map(|entry| {
                let entry = entry.as_document()?;
                (entry.get_str("event").ok()? == "processed")
                    .then(|| entry.get_datetime("at").ok().copied())
                    .flatten()
            })
        });
        if let Some(at) = processed_at {
            stats::record(&mut processed, since_due(at));
        }
        if let Some(at) = order
            .get_document("email")
            .ok()
            .and_then(|e| e.get_datetime("sent_at").ok().copied())
        {
            stats::record(&mut emailed, since_due(at));
        }
    }
    Ok(EndToEnd { processed, emailed })
}
