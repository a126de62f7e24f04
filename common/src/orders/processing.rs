//! What an event does to its order: decided on the order as the processing
//! transaction read it ([`change`]), written as one update conditional on
//! the status it was decided on, and appended to the order's timeline. The
//! processor runs it for a whole received batch in one transaction
//! (`order_processor::consumer::process`).

use bson::{DateTime, Document, doc};

use super::fields::{self, Delivery, ID, STATUS, TIMELINE, UPDATED_AT};
use crate::{
    domain::{EmailKind, Order, OrderStatus, TimelineEntry, TimelineEvent},
    event::OrderEventType,
};

/// What handling one event did. Every outcome acknowledges the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// PENDING → PROCESSED; its confirmation is due for the email worker.
    Processed,
    /// The order was cancelled before it could be processed.
    SkippedCancelled,
    /// The cancellation was noted; its email, made due by the cancel
    /// itself, is the email worker's.
    CancellationNoted,
    /// Everything this event asks for had already happened (a redelivery).
    Duplicate,
}

impl Outcome {
    /// Its label in `consumer_messages_handled_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Processed => "processed",
            Outcome::SkippedCancelled => "skipped_cancelled",
            Outcome::CancellationNoted => "cancellation_noted",
            Outcome::Duplicate => "duplicate",
        }
    }
}

/// A conditional update of one order.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub filter: Document,
    pub update: Document,
}

/// What an `event` does to `order`, and the update that makes it (none when
/// nothing changes). `order` is changed as the update changes it, so a
/// second event for it in the same batch is decided on the first's work.
/// `published_at`: when SQS accepted the message, noted on the timeline.
pub fn change(
    order: &mut Order,
    event: OrderEventType,
    published_at: Option<DateTime>,
    now: DateTime,
) -> mongodb::error::Result<(Outcome, Option<Change>)> {
    use OrderStatus::{Cancelled, Pending, Processed, Processing};
    let was = order.status;
    let (outcome, steps) = match (event, was) {
        (OrderEventType::OrderCreated, Pending) => (
            Outcome::Processed,
            [Processing, Processed]
                .map(|status| TimelineEntry::new(TimelineEvent::entering(status), status, now))
                .to_vec(),
        ),
        (OrderEventType::OrderCreated, Processing | Processed) => {
            return Ok((Outcome::Duplicate, None));
        }
        // Processed before it was cancelled, or already skipped.
        (OrderEventType::OrderCreated, Cancelled)
            if order.has(TimelineEvent::Processing)
                || order.has(TimelineEvent::ProcessingSkipped) =>
        {
            return Ok((Outcome::Duplicate, None));
        }
        (OrderEventType::OrderCreated, Cancelled) => {
            let mut skipped = TimelineEntry::new(TimelineEvent::ProcessingSkipped, Cancelled, now);
            skipped.detail = Some("order was cancelled before processing".into());
            (Outcome::SkippedCancelled, vec![skipped])
        }
        (OrderEventType::OrderCancelled, _) => (Outcome::CancellationNoted, Vec::new()),
    };
    let entries: Vec<TimelineEntry> = published_at
        .map(|at| published(at, event))
        .into_iter()
        .chain(steps)
        .collect();
    if entries.is_empty() {
        return Ok((outcome, None));
    }
    let mut set = doc! { UPDATED_AT: now };
    if outcome == Outcome::Processed {
        // The confirmation becomes due: the email worker's query finds it.
        let kind = EmailKind::Confirmation;
        set.insert(STATUS, Processed.as_str());
        set.insert(fields::of(kind, Delivery::NextAttemptAt), now);
        set.insert(fields::of(kind, Delivery::DueSince), now);
        order.status = Processed;
        order.email.next_attempt_at = Some(now);
        order.email.due_since = Some(now);
    }
    order.updated_at = now;
    order.timeline.extend(entries.iter().cloned());
    let update = doc! {
        "$set": set,
        "$push": { TIMELINE: { "$each": crate::mongo::bson_of(&entries)? } },
    };
    let filter = doc! { ID: order.id, STATUS: was.as_str() };
    Ok((outcome, Some(Change { filter, update })))
}

/// The `published` entry of an event SQS accepted at `at`. Its status is the
/// one the event announced: the order was PENDING when it was placed and
/// CANCELLED when it was cancelled.
fn published(at: DateTime, event: OrderEventType) -> TimelineEntry {
    let status = match event {
        OrderEventType::OrderCreated => OrderStatus::Pending,
        OrderEventType::OrderCancelled => OrderStatus::Cancelled,
    };
    let mut entry = TimelineEntry::new(TimelineEvent::Published, status, at);
    entry.detail = Some(event.as_str().to_string());
    entry
}
