//! First deliveries of `order.created` applied together: every poller hands
//! the events of its batch that can share a transaction to one writer,
//! which waits a moment (the linger) for other pollers' and applies them
//! all in ONE transaction: PENDING → PROCESSED and the confirmations'
//! claims, one update for the lot (and no read back when the events carry
//! their orders as placed), then the commit. No inbox entry: the orders' own
//! state is what makes a redelivery change nothing.
//!
//! Why across pollers, and why wait: at a moderate rate each receive brings
//! one or two messages, so a transaction per receive is still about a
//! transaction per order (four statements and a commit each), and the
//! database's cost per order doubles just when the system is not busy.
//! The linger bounds the wait; under load the batch fills first.
//!
//! A lone event is a batch of one. Any event the shared transaction leaves
//! out (a redelivery, an order in another state, or all of them if it fails)
//! takes the one-by-one path, which has the full answer for each case.

use std::{collections::HashMap, time::Duration};

use bson::{DateTime, oid::ObjectId};
use common::{
    domain::Order,
    event::{OrderEvent, OrderEventType},
};
use futures::FutureExt;
use mongodb::Database;
use tokio::sync::{mpsc, oneshot};

use common::orders::processing;

/// Pollers' hand-overs applied in one transaction, at most (a poller hands
/// over at most one receive's worth, ten events).
const MAX_WAITING: usize = 16;

/// One poller's events and where its answer goes.
struct Waiting {
    events: Vec<(OrderEvent, Option<DateTime>)>,
    answer: oneshot::Sender<HashMap<String, Box<Order>>>,
}

/// The pollers' end. Cheap to clone; the writer stops with the last clone.
#[derive(Clone)]
pub struct Together {
    queue: mpsc::Sender<Waiting>,
}

/// What the writer needs besides the database.
#[derive(Clone)]
pub struct Settings {
    pub message_id_domain: String,
    pub linger: Duration,
    /// How long the confirmations' claims hold (`common::orders::email`).
    pub lease: Duration,
}

impl Together {
    /// Starts the writer.
    pub fn start(db: Database, settings: Settings) -> Together {
        let (queue, waiting) = mpsc::channel(MAX_WAITING);
        tokio::spawn(write_until_closed(db, settings, waiting));
        Together { queue }
    }

    /// Applies `events` (each with when SQS accepted it) with whatever other
    /// pollers hand over meanwhile. Returns the orders moved, by event id;
    /// the events missing from it are for the one-by-one path.
    pub async fn apply(
        &self,
        events: Vec<(OrderEvent, Option<DateTime>)>,
    ) -> HashMap<String, Box<Order>> {
        if events.is_empty() {
            return HashMap::new();
        }
        let (answer, answered) = oneshot::channel();
        if self.queue.send(Waiting { events, answer }).await.is_err() {
            return HashMap::new();
        }
        answered.await.unwrap_or_default()
    }
}

async fn write_until_closed(db: Database, settings: Settings, mut queue: mpsc::Receiver<Waiting>) {
    while let Some(batch) =
        common::batching::next_batch_lingering(&mut queue, MAX_WAITING, settings.linger).await
    {
        let events: Vec<(&OrderEvent, Option<DateTime>)> = batch
            .iter()
            .flat_map(|waiting| waiting.events.iter().map(|(e, at)| (e, *at)))
            .collect();
        let mut moved = apply_first_deliveries(&db, &settings, &events).await;
        for waiting in batch {
            let mine = waiting
                .events
                .iter()
                .filter_map(|(event, _)| moved.remove_entry(&event.event_id))
                .collect();
            let _ = waiting.answer.send(mine);
        }
    }
}

/// The shared transaction over `events`' first deliveries of
/// `order.created` (one per order: a second event for an order waits for
/// the one-by-one path). Returns the moved orders by event id.
async fn apply_first_deliveries(
    db: &Database,
    settings: &Settings,
    events: &[(&OrderEvent, Option<DateTime>)],
) -> HashMap<String, Box<Order>> {
    let mut candidates: Vec<(&OrderEvent, ObjectId, Option<DateTime>)> = Vec::new();
    for (event, published_at) in events {
        if event.event_type != OrderEventType::OrderCreated {
            continue;
        }
        let Ok(id) = ObjectId::parse_str(&event.order_id) else {
            continue;
        };
        if candidates.iter().all(|(_, seen, _)| *seen != id) {
            candidates.push((event, id, *published_at));
        }
    }
    // Nothing here is a first delivery of order.created.
    if candidates.is_empty() {
        return HashMap::new();
    }
    let domain = settings.message_id_domain.as_str();
    let lease = settings.lease;
    let applied = common::mongo::transaction(
        db,
        "apply_events",
        (db, &candidates),
        |session, (db, candidates)| {
            async move {
                // No inbox entry: the update matches only orders still
                // PENDING with their confirmation PENDING, so a redelivery
                // matches nothing and takes the one-by-one path, which
                // knows it from the order's timeline (`was_processed`).
                let deliveries: Vec<processing::FirstDelivery> = candidates
                    .iter()
                    .map(|(event, id, published_at)| processing::FirstDelivery {
                        id: *id,
                        published_at: *published_at,
                        placed: event.placed.as_deref().filter(|placed| placed.id == *id),
                    })
                    .collect();
                let moved =
                    processing::process_and_claim_many(db, session, &deliveries, domain, lease)
                        .await?;
                Ok(moved)
            }
            .boxed()
        },
    )
    .await;
    match applied {
        Ok(moved) => moved
            .into_iter()
            .filter_map(|order| {
                let (event, _, _) = candidates.iter().find(|(_, id, _)| *id == order.id)?;
                Some((event.event_id.clone(), Box::new(order)))
            })
            .collect(),
        Err(e) => {
            tracing::warn!(events = candidates.len(), error = %e, "shared transaction failed; handling its events one by one");
            HashMap::new()
        }
    }
}
