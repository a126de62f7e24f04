//! First deliveries of `order.created` applied together: every poller hands
//! the events of its batch that can be applied together to one writer,
//! which waits a moment (the linger) for other pollers' and applies them
//! all with ONE update and ONE read (`processing::process_and_claim_many`):
//! PENDING → PROCESSED and the confirmations' claims, two statements for
//! the lot and no transaction around them (each order's change is atomic
//! on its own document, and the claim's token says which this update
//! took). No inbox entry: the orders' own state is what makes a
//! redelivery change nothing.
//!
//! Why across pollers, and why wait: at a moderate rate each receive brings
//! one or two messages, so a write per receive is still about a write per
//! order, and the database's cost per order doubles just when the system
//! is not busy. The linger bounds the wait; under load the batch fills
//! first.
//!
//! A lone event is a batch of one. Any event the shared update leaves
//! out (a redelivery, an order in another state, or all of them if it fails)
//! takes the one-by-one path, which has the full answer for each case.

use std::{collections::HashMap, time::Duration};

use bson::{DateTime, oid::ObjectId};
use common::{
    domain::Order,
    event::{OrderEvent, OrderEventType},
};
use mongodb::Database;
use tokio::sync::{mpsc, oneshot};

use common::orders::processing;

/// Pollers' hand-overs applied in one update, at most (a poller hands
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

/// The shared update over `events`' first deliveries of
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
    // One event alone is as cheap on its own path.
    if candidates.is_empty() {
        return HashMap::new();
    }
    // No inbox entry: the update matches only orders still PENDING with
    // their confirmation PENDING, so a redelivery matches nothing and takes
    // the one-by-one path, which knows it from the order's timeline
    // (`was_processed`).
    let orders: Vec<(ObjectId, Option<DateTime>)> = candidates
        .iter()
        .map(|(_, id, published_at)| (*id, *published_at))
        .collect();
    // A plain write waits behind a transaction a killed process left open
    // on one of these orders, until the server ends it (MongoDB's
    // transactionLifetimeLimitSeconds, 60 s by default), as the shared
    // transaction's retries did. No deadline of ours: a write given up on
    // would still be waiting on the server, and the one-by-one path's
    // transactions on the same orders would then contend with it.
    let applied = processing::process_and_claim_many(
        db,
        &orders,
        &settings.message_id_domain,
        settings.lease,
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
            tracing::warn!(events = candidates.len(), error = %e, "the first deliveries' shared update failed; handling its events one by one");
            HashMap::new()
        }
    }
}
