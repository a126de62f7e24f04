//! Handling one event: the order change it asks for (recorded in the inbox in
//! the same transaction) and the email that follows it.

use std::time::Instant;

use ::metrics::{counter, histogram};
use bson::{DateTime, oid::ObjectId};
use common::{
    domain::{EmailKind, EmailStatus, Order, OrderStatus},
    event::{OrderEvent, OrderEventType},
};
use futures::FutureExt;

use super::Consumer;
use crate::{
    email::{self, SendError},
    fulfilment, inbox, metrics,
};

/// What handling one event did. Every outcome acknowledges the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The order was processed and its confirmation sent now.
    Processed,
    /// Everything this event asks for had already happened (a redelivery).
    Duplicate,
    /// The order was cancelled before it could be processed.
    SkippedCancelled,
    /// The cancellation email was sent now.
    CancellationSent,
    /// The SMTP server refused the email for good (recorded as FAILED).
    EmailFailed,
}

/// Why an event was not handled; the message stays in the queue.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("unparseable message body: {0}")]
    Unparseable(String),
    #[error("order {0} does not exist")]
    UnknownOrder(String),
    #[error("another attempt is sending this order's email")]
    InFlight,
    #[error("transient failure: {0:#}")]
    Transient(#[from] anyhow::Error),
}

/// What the event's transaction did.
#[derive(Debug)]
enum Applied {
    /// The first delivery: the order changed now. `claimed` is the order
    /// with its confirmation already claimed for this attempt, when the
    /// transaction could do that too.
    First { claimed: Option<Box<Order>> },
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
            Outcome::CancellationSent => "cancellation_sent",
            Outcome::EmailFailed => "email_failed",
        }
    }
}

impl ProcessError {
    /// Its label in `consumer_message_failures_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProcessError::Unparseable(_) => "unparseable",
            ProcessError::UnknownOrder(_) => "unknown_order",
            ProcessError::InFlight => "in_flight",
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
    /// Handles one event body: PENDING → PROCESSED, then the confirmation
    /// email, each step conditional so a redelivery repeats none.
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
                claimed: Some(order),
            },
            _ => self.apply(&event, id, published_at).await?,
        };
        match event.event_type {
            OrderEventType::OrderCreated => self.confirm(id, applied).await,
            OrderEventType::OrderCancelled => self.announce_cancellation(id).await,
        }
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
                        if fulfilment::load_in(db, session, *id).await?.is_none() {
                            return Err(mongodb::error::Error::custom(fulfilment::UnknownOrder));
                        }
                        if let Some(at) = *published_at {
                            fulfilment::note_published(db, session, *id, *event_type, at).await?;
                        }
                        return Ok(Applied::First { claimed: None });
                    }
                    if let Some(claimed) =
                        fulfilment::process_and_claim(db, session, *id, message_id, *published_at)
                            .await?
                    {
                        return Ok(Applied::First {
                            claimed: Some(Box::new(claimed)),
                        });
                    }
                    if let Some(at) = *published_at {
                        fulfilment::note_published(db, session, *id, *event_type, at).await?;
                    }
                    fulfilment::process(db, session, *id).await?;
                    Ok(Applied::First { claimed: None })
                }
                .boxed()
            },
        )
        .await;
        match applied {
            Ok(applied) => Ok(applied),
            Err(e) if e.get_custom::<inbox::AlreadyHandled>().is_some() => Ok(Applied::Redelivery),
            Err(e) if e.get_custom::<fulfilment::UnknownOrder>().is_some() => {
                Err(ProcessError::UnknownOrder(id.to_hex()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn load(&self, id: ObjectId) -> Result<Order, ProcessError> {
        fulfilment::load(&self.db, id)
            .await?
            .ok_or_else(|| ProcessError::UnknownOrder(id.to_hex()))
    }

    /// After `order.created`: the confirmation email, unless the order was
    /// cancelled first.
    async fn confirm(&self, id: ObjectId, applied: Applied) -> Result<Outcome, ProcessError> {
        let first_delivery = matches!(applied, Applied::First { .. });
        if let Applied::First {
            claimed: Some(order),
        } = applied
        {
            tracing::info!(order_id = %id, status = %order.status, "order processed");
            return self
                .deliver(&order, EmailKind::Confirmation)
                .await
                .map(|failed| failed.unwrap_or(Outcome::Processed));
        }
        let order = self.load(id).await?;
        if order.status == OrderStatus::Cancelled {
            if order.email.status == EmailStatus::Sending {
                return self.settle_abandoned_confirmation(&order).await;
            }
            tracing::info!(order_id = %id, "order was cancelled; not processing it");
            return Ok(Outcome::SkippedCancelled);
        }
        if first_delivery {
            tracing::info!(order_id = %id, status = %order.status, "order processed");
        }
        match order.email.status {
            EmailStatus::Sent => Ok(if first_delivery {
                Outcome::Processed
            } else {
                Outcome::Duplicate
            }),
            EmailStatus::Failed => Ok(Outcome::EmailFailed),
            EmailStatus::Pending | EmailStatus::Sending => self
                .send(&order, EmailKind::Confirmation)
                .await
                .map(|failed| failed.unwrap_or(Outcome::Processed)),
        }
    }

    /// A cancelled order whose confirmation was claimed by an attempt that
    /// died before recording whether SMTP took it (a crash between the claim
    /// and `SENT`, then a cancel). It is not sent now (the order is
    /// cancelled); once the attempt is stale it is recorded FAILED with why,
    /// so it does not stay `SENDING` for ever. Until then, a live attempt may
    /// still record it: retry later.
    async fn settle_abandoned_confirmation(&self, order: &Order) -> Result<Outcome, ProcessError> {
        let stale_ms = i64::try_from(self.config.stale_send_after.as_millis()).unwrap_or(i64::MAX);
        let started = order
            .email
            .attempted_at
            .map_or(0, |at| at.timestamp_millis());
        if DateTime::now().timestamp_millis().saturating_sub(started) < stale_ms {
            return Err(ProcessError::InFlight);
        }
        let reason = "the order was cancelled after an attempt to send this confirmation died \
                      before recording whether it went out; it is not sent again";
        fulfilment::record_email_failed(&self.db, order, EmailKind::Confirmation, reason).await?;
        tracing::warn!(order_id = %order.id, "abandoned confirmation of a cancelled order recorded as FAILED");
        Ok(Outcome::SkippedCancelled)
    }

    /// Sends the cancellation email of a cancelled order, once.
    async fn announce_cancellation(&self, id: ObjectId) -> Result<Outcome, ProcessError> {
        let order = self.load(id).await?;
        let Some(delivery) = order.cancellation_email.as_ref() else {
            return Err(ProcessError::Transient(anyhow::anyhow!(
                "order {id} has no cancellation record although it was announced cancelled"
            )));
        };
        match delivery.status {
            EmailStatus::Sent => Ok(Outcome::Duplicate),
            EmailStatus::Failed => Ok(Outcome::EmailFailed),
            EmailStatus::Pending | EmailStatus::Sending => self
                .send(&order, EmailKind::Cancellation)
                .await
                .map(|failed| failed.unwrap_or(Outcome::CancellationSent)),
        }
    }

    /// Sends one of the order's emails as a recorded side effect: claim
    /// (`SENDING`), SMTP, then `SENT` or `FAILED`. `Some(EmailFailed)` when
    /// the server refused it for good.
    async fn send(&self, order: &Order, kind: EmailKind) -> Result<Option<Outcome>, ProcessError> {
        let message_id = kind.message_id(&order.id, &self.message_id_domain);
        // Intent first: a crash after this line leaves a visible SENDING.
        let Some(claimed) = fulfilment::claim_email(
            &self.db,
            order.id,
            kind,
            &message_id,
            self.config.stale_send_after,
        )
        .await?
        else {
            return Err(ProcessError::InFlight);
        };
        self.deliver(&claimed, kind).await
    }

    /// SMTP for an email this attempt has claimed, then `SENT`, `FAILED`, or
    /// back to `PENDING` on a transient failure.
    async fn deliver(
        &self,
        claimed: &Order,
        kind: EmailKind,
    ) -> Result<Option<Outcome>, ProcessError> {
        let message_id = kind.message_id(&claimed.id, &self.message_id_domain);
        let order_id = claimed.id.to_hex();
        let rendered = match kind {
            EmailKind::Confirmation => email::confirmation(claimed),
            EmailKind::Cancellation => email::cancellation(claimed),
        };
        let attempt = claimed.delivery(kind).map_or(0, |d| d.attempts);
        let kind_label = kind.as_str();
        counter!(metrics::EMAIL_ATTEMPTS, "kind" => kind_label).increment(1);
        let started = Instant::now();
        let sent = self
            .mailer
            .send(&claimed.customer_email, &message_id, rendered)
            .await;
        histogram!(metrics::EMAIL_SEND_DURATION, "kind" => kind_label).record(started.elapsed());
        match sent {
            Ok(()) => {
                counter!(metrics::EMAILS_SENT, "kind" => kind_label).increment(1);
                self.sent.record(claimed, kind).await?;
                tracing::info!(order_id, email = kind.field(), attempt, "email sent");
                Ok(None)
            }
            Err(SendError::Permanent(reason)) => {
                counter!(metrics::EMAILS_FAILED, "kind" => kind_label, "retry" => "permanent")
                    .increment(1);
                fulfilment::record_email_failed(&self.db, claimed, kind, &reason).await?;
                tracing::error!(order_id, email = kind.field(), %reason, "email refused for good");
                Ok(Some(Outcome::EmailFailed))
            }
            Err(SendError::Transient(reason)) => {
                counter!(metrics::EMAILS_FAILED, "kind" => kind_label, "retry" => "transient")
                    .increment(1);
                fulfilment::record_email_retry(&self.db, claimed.id, kind, &reason).await?;
                Err(ProcessError::Transient(anyhow::anyhow!(
                    "sending the {}: {reason}",
                    kind.field()
                )))
            }
        }
    }
}
