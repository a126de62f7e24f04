//! Handling one event: the order change it asks for, recorded in the inbox
//! in the same transaction together with the email it makes due. The email
//! itself is the sender's (`email::sender`): handing it over never waits on
//! SMTP.

use bson::{DateTime, oid::ObjectId};
use common::{
    domain::{EmailKind, Order, OrderStatus},
    event::{OrderEvent, OrderEventType},
};
use futures::FutureExt;

use super::Consumer;
use common::orders::{self, email::Claimed, processing};

use crate::inbox;

/// What handling one event did. Every outcome acknowledges the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The order was processed; its confirmation is due (and handed to the
    /// sender when this transaction claimed it).
    Processed,
    /// Everything this event asks for had already happened (a redelivery).
    Duplicate,
    /// The order was cancelled before it could be processed.
    SkippedCancelled,
    /// The cancellation was noted; its email, written due by the cancel
    /// itself, is the sender's.
    CancellationNoted,
}

/// Why an event was not handled; the message stays in the queue.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("unparseable message body: {0}")]
    Unparseable(String),
    #[error("order {0} does not exist")]
    UnknownOrder(String),
    #[error("transient failure: {0:#}")]
    Transient(#[from] anyhow::Error),
}

/// What the event's transaction did.
#[derive(Debug)]
enum Applied {
    /// The first delivery: the order changed now. `claimed` is the order
    /// with its confirmation claimed for this process's sender, when the
    /// transaction could do that too; `status` the order's status after it.
    First {
        claimed: Option<Box<Order>>,
        status: OrderStatus,
    },
    /// The inbox already had the event: nothing changed.
    Redelivery,
}

impl Outcome {
    /// Its label in `consumer_messages_handled_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Processed => "processed",
            Outcome::Duplicate => "duplicate",
            Outcome::SkippedCancelled => "skipped_cancelled",
            Outcome::CancellationNoted => "cancellation_noted",
        }
    }
}

impl ProcessError {
    /// Its label in `consumer_message_failures_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProcessError::Unparseable(_) => "unparseable",
            ProcessError::UnknownOrder(_) => "unknown_order",
            ProcessError::Transient(_) => "transient",
        }
    }

    /// `false` when the same message can never succeed: it goes to the
    /// dead-letter queue at once.
    pub fn is_worth_retrying(&self) -> bool {
        !matches!(
            self,
            ProcessError::Unparseable(_) | ProcessError::UnknownOrder(_)
        )
    }
}

impl From<mongodb::error::Error> for ProcessError {
    fn from(e: mongodb::error::Error) -> Self {
        ProcessError::Transient(e.into())
    }
}

impl Consumer {
    /// Handles one event body: PENDING → PROCESSED with the confirmation due,
    /// each step conditional so a redelivery repeats none.
    pub async fn try_process_message(&self, body: &str) -> Result<Outcome, ProcessError> {
        self.process_message(body, None, None).await
    }

    /// [`Self::try_process_message`], for an event whose transaction may
    /// already have run with others ([`super::together`]):
    /// `claimed` is then the order it moved. `published_at` is when SQS
    /// accepted the message, noted on the order's timeline on the first
    /// delivery.
    pub(super) async fn process_message(
        &self,
        body: &str,
        claimed: Option<Box<Order>>,
        published_at: Option<DateTime>,
    ) -> Result<Outcome, ProcessError> {
        let event =
            OrderEvent::from_json(body).map_err(|e| ProcessError::Unparseable(e.to_string()))?;
        let id = ObjectId::parse_str(&event.order_id)
            .map_err(|_| ProcessError::Unparseable(format!("order id {:?}", event.order_id)))?;
        let applied = match claimed {
            Some(order) if order.id == id => Applied::First {
                status: order.status,
                claimed: Some(order),
            },
            _ => self.apply(&event, id, published_at).await?,
        };
        let Applied::First { claimed, status } = applied else {
            return Ok(Outcome::Duplicate);
        };
        if let Some(order) = claimed {
            tracing::info!(order_id = %id, status = %order.status, "order processed");
            self.sender.hand_over(Claimed {
                order: *order,
                kind: EmailKind::Confirmation,
            });
            return Ok(Outcome::Processed);
        }
        // The email this event made due (if any) is found by the sweep.
        self.sender.wake();
        Ok(match (event.event_type, status) {
            (OrderEventType::OrderCancelled, _) => Outcome::CancellationNoted,
            (OrderEventType::OrderCreated, OrderStatus::Cancelled) => {
                tracing::info!(order_id = %id, "order was cancelled; not processing it");
                Outcome::SkippedCancelled
            }
            (OrderEventType::OrderCreated, status) => {
                tracing::info!(order_id = %id, %status, "order processed");
                Outcome::Processed
            }
        })
    }

    /// In ONE transaction: record the event in the inbox and make the order
    /// change it asks for (for `order.created`, usually together with the
    /// confirmation's claim). A redelivery finds the event in the inbox and
    /// changes nothing.
    async fn apply(
        &self,
        event: &OrderEvent,
        id: ObjectId,
        published_at: Option<DateTime>,
    ) -> Result<Applied, ProcessError> {
        let entry = inbox::entry(
            &event.event_id,
            event.event_type.as_str(),
            &event.order_id,
            self.config.inbox_retention,
        );
        let message_id = EmailKind::Confirmation.message_id(&id, &self.message_id_domain);
        let lease = self.email_lease;
        let applied = common::mongo::transaction(
            &self.db,
            "apply_event",
            (
                &self.db,
                &entry,
                id,
                event.event_type,
                message_id.as_str(),
                published_at,
            ),
            |session, (db, entry, id, event_type, message_id, published_at)| {
                async move {
                    if !inbox::record_first(db, session, entry).await? {
                        return Err(mongodb::error::Error::custom(inbox::AlreadyHandled));
                    }
                    if *event_type == OrderEventType::OrderCancelled {
                        let Some(order) = orders::load_in(db, session, *id).await? else {
                            return Err(mongodb::error::Error::custom(processing::UnknownOrder));
                        };
                        if let Some(at) = *published_at {
                            processing::note_published(db, session, *id, *event_type, at).await?;
                        }
                        return Ok(Applied::First {
                            claimed: None,
                            status: order.status,
                        });
                    }
                    if let Some(claimed) = processing::process_and_claim(
                        db,
                        session,
                        *id,
                        message_id,
                        *published_at,
                        lease,
                    )
                    .await?
                    {
                        return Ok(Applied::First {
                            status: claimed.status,
                            claimed: Some(Box::new(claimed)),
                        });
                    }
                    // The shared writer (together.rs) records no inbox
                    // entry: an order it moved says so on its timeline, and
                    // this event is that delivery again. Aborting drops the
                    // entry just written.
                    let Some(order) = orders::load_in(db, session, *id).await? else {
                        return Err(mongodb::error::Error::custom(processing::UnknownOrder));
                    };
                    if order.was_processed() {
                        return Err(mongodb::error::Error::custom(inbox::AlreadyHandled));
                    }
                    if let Some(at) = *published_at {
                        processing::note_published(db, session, *id, *event_type, at).await?;
                    }
                    let status = processing::process(db, session, order).await?;
                    Ok(Applied::First {
                        claimed: None,
                        status,
                    })
                }
                .boxed()
            },
        )
        .await;
        match applied {
            Ok(applied) => Ok(applied),
            Err(e) if e.get_custom::<inbox::AlreadyHandled>().is_some() => Ok(Applied::Redelivery),
            Err(e) if e.get_custom::<processing::UnknownOrder>().is_some() => {
                Err(ProcessError::UnknownOrder(id.to_hex()))
            }
            Err(e) => Err(e.into()),
        }
    }
}
