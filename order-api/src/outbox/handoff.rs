//! Rows that go from the transaction that wrote them straight to this
//! process's relay, with no claim to read them back: the one road every
//! committed row takes (an order's, a cancellation's).
//!
//! A transaction writes its outbox rows already leased to a claim of this
//! process's relay, exactly as the relay's own claim would have stamped
//! them, and once committed the rows are handed to the relay in memory. The
//! relay publishes it and marks it published as it does rows it claimed.
//! Publishing an order then costs no claim round trips (three before: find
//! the oldest pending rows, stamp them, read them back; and SecantusDB reads
//! every pending row to answer the first, so a relay that fell behind got
//! slower with every row it fell behind).
//!
//! Nothing is lost on the way: until the lease runs out, no other relay
//! takes the row; if this process dies first, the lease runs out and any
//! relay's recovery sweep takes the row, as it takes a dead relay's claimed
//! rows. If the relay's queue is full (or it has stopped), the writer lets
//! go of the lease at once and the next sweep takes the rows.

use std::{sync::Arc, time::Duration};

use bson::DateTime;
use mongodb::Database;
use tokio::sync::mpsc;

use super::store::{self, Lease, OutboxMessage};

/// Committed batches of rows waiting for the relay, at most.
pub const QUEUE_DEPTH: usize = 256;

/// The writers' end. Cheap to clone.
#[derive(Clone)]
pub struct Handoff {
    instance: Arc<str>,
    lease: Duration,
    queue: mpsc::Sender<Vec<OutboxMessage>>,
}

impl Handoff {
    /// A writers' end for the relay `instance` (holding `depth` batches at
    /// most), and the relay's end.
    pub fn new(
        instance: &str,
        lease: Duration,
        depth: usize,
    ) -> (Handoff, mpsc::Receiver<Vec<OutboxMessage>>) {
        let (queue, handed) = mpsc::channel(depth.max(1));
        let handoff = Handoff {
            instance: instance.into(),
            lease,
            queue,
        };
        (handoff, handed)
    }

    /// A fresh claim of this relay's for rows about to be written.
    pub fn lease(&self) -> Lease {
        Lease {
            owner: super::relay::claim_token(&self.instance),
            until: common::mongo::later(DateTime::now(), self.lease),
        }
    }

    /// Hands committed `rows` (all written under one [`Self::lease`]) to the
    /// relay. If it cannot take them now, the lease is let go and the next
    /// recovery sweep takes them.
    pub async fn give(&self, db: &Database, rows: Vec<OutboxMessage>) {
        let Some(owner) = rows.first().and_then(|row| row.lease_owner.clone()) else {
            return;
        };
        if self.queue.try_send(rows).is_ok() {
            return;
        }
        match store::release_lease(db, &owner).await {
            Ok(_) => tracing::info!("relay queue full or stopped; its rows are left for the sweep"),
            // The lease runs out on its own; the sweep then finds them.
            Err(e) => {
                tracing::warn!(error = %e, "relay queue full or stopped and the lease could not be let go; the rows wait for it to run out")
            }
        }
    }
}
