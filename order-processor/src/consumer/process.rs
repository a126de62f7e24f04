//! Processing received events in ONE transaction: the inbox says which were
//! handled before, the orders are read, each event's change is decided on
//! its order (`common::orders::processing::change`), and the new inbox
//! entries and the orders' conditional updates go in one write. First
//! deliveries, redeliveries and cancellations all take this road.
//!
//! Group commit, as placing does: every poller hands its received batch to
//! one writer ([`Processor`]), which processes whatever waited while its
//! previous transaction ran in the next one (`common::batching::next_batch`;
//! a lone batch goes at once), and answers each poller.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use bson::{DateTime, oid::ObjectId};
pub use common::orders::processing::Outcome;
use common::{
    event::OrderEvent,
    orders::{self, processing},
};
use futures::FutureExt;
use mongodb::{
    ClientSession, Database,
    options::{UpdateOneModel, WriteModel},
};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use crate::inbox;

/// One event as received: parsed once, its order's id, the SQS message
/// that carried it and when SQS accepted that.
#[derive(Debug, Clone)]
pub struct Event {
    pub event: OrderEvent,
    pub order_id: ObjectId,
    pub message_id: String,
    pub published_at: Option<DateTime>,
}

impl Event {
    /// Parses a message body; `Unparseable` when it is not an event of a
    /// type this processor knows, for an order id.
    pub fn parse(
        body: &str,
        message_id: &str,
        published_at: Option<DateTime>,
    ) -> Result<Event, ProcessError> {
        let event =
            OrderEvent::from_json(body).map_err(|e| ProcessError::Unparseable(e.to_string()))?;
        let order_id = ObjectId::parse_str(&event.order_id)
            .map_err(|_| ProcessError::Unparseable(format!("order id {:?}", event.order_id)))?;
        Ok(Event {
            event,
            order_id,
            message_id: message_id.to_string(),
            published_at,
        })
    }
}

/// Why an event was not handled.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProcessError {
    #[error("unparseable message body: {0}")]
    Unparseable(String),
    #[error("order {0} does not exist")]
    UnknownOrder(String),
    #[error("transient failure: {0}")]
    Transient(String),
    #[error("the batch's transaction did not commit within its deadline; nothing was written")]
    TimedOut,
}

impl ProcessError {
    /// Its label in `consumer_message_failures_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProcessError::Unparseable(_) => "unparseable",
            ProcessError::UnknownOrder(_) => "unknown_order",
            ProcessError::Transient(_) => "transient",
            ProcessError::TimedOut => "timed_out",
        }
    }

    /// `false` when the same message can never succeed: it goes to the
    /// dead-letter queue at once.
    pub fn is_worth_retrying(&self) -> bool {
        matches!(self, ProcessError::Transient(_) | ProcessError::TimedOut)
    }
}

/// Pollers' batches processed in one transaction, at most.
const MAX_BATCHES: usize = 16;

/// Each event's outcome, in order, or the transaction's error for all.
type Processed = mongodb::error::Result<Vec<Result<Outcome, ProcessError>>>;

/// One poller's batch and where its answer goes.
struct Waiting {
    events: Vec<Event>,
    deadline: Instant,
    answer: oneshot::Sender<Processed>,
}

/// The pollers' end of the writer. Cheap to clone; the writer stops with
/// the last clone.
#[derive(Clone)]
pub struct Processor {
    queue: mpsc::Sender<Waiting>,
}

/// What the writer needs besides the database.
pub struct WriterSettings {
    /// This processor, as the inbox names it.
    pub handled_by: String,
    pub writes: common::mongo::bulk::Writes,
    pub retention: Duration,
}

impl Processor {
    /// Starts the writer.
    pub fn start(db: Database, settings: WriterSettings) -> Processor {
        let (queue, waiting) = mpsc::channel(MAX_BATCHES);
        tokio::spawn(write_until_closed(db, settings, waiting));
        Processor { queue }
    }

    /// Processes `events` (in whatever transaction they land in, given up
    /// before its commit at the earliest deadline of its batches).
    pub async fn process(&self, events: Vec<Event>, deadline: Instant) -> Processed {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (answer, answered) = oneshot::channel();
        let stopped = || mongodb::error::Error::custom("the processing writer stopped");
        self.queue
            .send(Waiting {
                events,
                deadline,
                answer,
            })
            .await
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

async fn write_until_closed(
    db: Database,
    settings: WriterSettings,
    mut queue: mpsc::Receiver<Waiting>,
) {
    while let Some(batches) = common::batching::next_batch(&mut queue, MAX_BATCHES).await {
        let events: Vec<&Event> = batches.iter().flat_map(|b| &b.events).collect();
        let Some(deadline) = batches.iter().map(|b| b.deadline).min() else {
            continue;
        };
        let processed = process(
            &db,
            &events,
            &Settings {
                handled_by: &settings.handled_by,
                writes: &settings.writes,
                retention: settings.retention,
                deadline,
            },
        )
        .await;
        let mut outcomes = processed.map(Vec::into_iter);
        for batch in batches {
            let mine = match &mut outcomes {
                Ok(all) => Ok(all.by_ref().take(batch.events.len()).collect()),
                Err(e) => Err(e.clone()),
            };
            let _ = batch.answer.send(mine);
        }
    }
}

/// What the transaction needs besides the events.
pub struct Settings<'a> {
    /// This processor, as the inbox names it.
    pub handled_by: &'a str,
    pub writes: &'a common::mongo::bulk::Writes,
    pub retention: Duration,
    /// Past it, the transaction is given up before its commit.
    pub deadline: Instant,
}

/// Applies `events` in one transaction. Answers each event's outcome, in
/// order, or the transaction's error for all of them.
pub async fn process(
    db: &Database,
    events: &[&Event],
    settings: &Settings<'_>,
) -> mongodb::error::Result<Vec<Result<Outcome, ProcessError>>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    common::mongo::transaction_until(
        db,
        "process_events",
        Some(settings.deadline),
        (db, events),
        |session, (db, events)| apply(db, session, events, settings).boxed(),
    )
    .await
}

/// The transaction's body: two reads and one write for the whole batch.
async fn apply(
    db: &Database,
    session: &mut ClientSession,
    events: &[&Event],
    settings: &Settings<'_>,
) -> mongodb::error::Result<Vec<Result<Outcome, ProcessError>>> {
    let deadline = settings.deadline;
    let ids: Vec<&str> = events.iter().map(|e| e.event.event_id.as_str()).collect();
    let known = inbox::handled(db, session, &ids, deadline).await?;
    let mut handled = known.clone();
    let order_ids: Vec<ObjectId> = events.iter().map(|e| e.order_id).collect();
    let mut found: HashMap<ObjectId, common::domain::Order> =
        orders::load_many(db, session, &order_ids, deadline).await?;
    let now = DateTime::now();
    let orders = orders::collection(db);
    let mut writes: Vec<WriteModel> = Vec::new();
    let mut updates: HashSet<usize> = HashSet::new();
    let mut outcomes = Vec::with_capacity(events.len());
    for received in events {
        let event = &received.event;
        // A redelivery, or the same event twice in this batch.
        if !handled.insert(event.event_id.clone()) {
            if known.contains(&event.event_id) {
                writes.push(inbox::note_message(db, received).into());
            }
            outcomes.push(Ok(Outcome::Duplicate));
            continue;
        }
        let Some(order) = found.get_mut(&received.order_id) else {
            outcomes.push(Err(ProcessError::UnknownOrder(event.order_id.clone())));
            continue;
        };
        let entry = inbox::entry(received, settings.handled_by, settings.retention);
        writes.push(inbox::insert_model(db, &entry)?.into());
        let (outcome, change) =
            processing::change(order, event.event_type, received.published_at, now)?;
        if let Some(change) = change {
            updates.insert(writes.len());
            writes.push(
                UpdateOneModel::builder()
                    .namespace(orders.namespace())
                    .filter(change.filter)
                    .update(change.update)
                    .build()
                    .into(),
            );
        }
        outcomes.push(Ok(outcome));
    }
    common::mongo::time_left(deadline)?;
    let matched = common::mongo::bulk::write_all(settings.writes, db, session, writes)
        .await
        .map_err(|failed| failed.error)?;
    // Each update names the status this transaction read: inside it
    // nothing else can have moved the order, so a miss is a bug.
    if let Some(missed) = updates.iter().find(|i| matched.get(i) != Some(&1)) {
        return Err(mongodb::error::Error::custom(format!(
            "write {missed} of a processing batch matched no order"
        )));
    }
    Ok(outcomes)
}
