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

use std::time::Duration;

use common::domain::Order;
use mongodb::{Database, error::Error as MongoError};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use super::place::{self, OrderRequest, PlaceError, ShopSettings};

/// Orders in one transaction at most.
pub const MAX_BATCH: usize = 64;
/// Orders waiting before placers wait for room.
const QUEUE_DEPTH: usize = 1024;

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

impl OrderBatcher {
    /// Starts the writer; it stops when the last handle is dropped.
    pub fn start(db: Database, settings: ShopSettings) -> Self {
        let deadline = settings.deadline;
        let (queue, waiting) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(write_until_closed(db, settings, waiting));
        OrderBatcher { queue, deadline }
    }

    /// Places one order, in whatever batch it lands in, and answers as
    /// [`place::place_together`] answered it.
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
    let outcomes = place::place_together(db, settings, &requests, deadline).await;
    for (answer, outcome) in answers.into_iter().zip(outcomes) {
        let _ = answer.send(outcome);
    }
}
