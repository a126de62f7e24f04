//! The queue consumer. `try_process_message` handles one event and says what
//! happened; `poll_once` receives a batch, handles it and deletes what was
//! handled; `run` loops over `poll_once` until shutdown.
//!
//! A message is deleted only after its order is `PROCESSED` and its email is
//! settled (`SENT`, or `FAILED` for good). Anything else leaves it in the
//! queue: SQS redelivers it after the visibility timeout and, after
//! maxReceiveCount receives, moves it to the dead-letter queue.

use std::{collections::HashMap, time::Duration};

use anyhow::Context;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message};
use backon::{BackoffBuilder, ExponentialBuilder};
use bson::oid::ObjectId;
use common::{
    domain::{EmailKind, EmailStatus, Order, OrderStatus},
    event::{OrderEvent, OrderEventType},
};
use futures::{StreamExt, stream};
use mongodb::Database;
use tokio_util::sync::CancellationToken;

use crate::{
    config::ConsumerConfig,
    email::{self, Mailer, SendError},
    fulfilment,
};

#[derive(Clone)]
pub struct Consumer {
    db: Database,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    mailer: Mailer,
    config: ConsumerConfig,
    message_id_domain: String,
}

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

impl From<mongodb::error::Error> for ProcessError {
    fn from(e: mongodb::error::Error) -> Self {
        ProcessError::Transient(e.into())
    }
}

/// Counts from one `poll_once`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    pub received: usize,
    pub acknowledged: usize,
    pub left_for_redelivery: usize,
}

impl Consumer {
    pub fn new(
        db: Database,
        sqs: aws_sdk_sqs::Client,
        queue_url: String,
        mailer: Mailer,
        config: ConsumerConfig,
        message_id_domain: String,
    ) -> Self {
        Consumer {
            db,
            sqs,
            queue_url,
            mailer,
            config,
            message_id_domain,
        }
    }

    /// Handles one event body: PENDING → PROCESSING → PROCESSED, then the
    /// confirmation email, each step conditional so a redelivery repeats none.
    pub async fn try_process_message(&self, body: &str) -> Result<Outcome, ProcessError> {
        let event =
            OrderEvent::from_json(body).map_err(|e| ProcessError::Unparseable(e.to_string()))?;
        let id = ObjectId::parse_str(&event.order_id)
            .map_err(|_| ProcessError::Unparseable(format!("order id {:?}", event.order_id)))?;
        match event.event_type {
            OrderEventType::OrderCreated => self.fulfil(id).await,
            OrderEventType::OrderCancelled => self.announce_cancellation(id).await,
        }
    }

    async fn load(&self, id: ObjectId) -> Result<Order, ProcessError> {
        fulfilment::load(&self.db, id)
            .await?
            .ok_or_else(|| ProcessError::UnknownOrder(id.to_hex()))
    }

    async fn fulfil(&self, id: ObjectId) -> Result<Outcome, ProcessError> {
        let order_id = id.to_hex();
        let order_id = order_id.as_str();
        let mut order = self.load(id).await?;
        let mut changed = false;
        for next in [OrderStatus::Processing, OrderStatus::Processed] {
            if order.status == OrderStatus::Cancelled {
                break;
            }
            if order.status.can_become(next) {
                match fulfilment::advance(&self.db, id, next).await? {
                    Some(updated) => {
                        tracing::info!(order_id, status = %next, "order advanced");
                        order = updated;
                        changed = true;
                    }
                    // Someone else moved it meanwhile (another delivery, or
                    // a cancel): read where it is now.
                    None => order = self.load(id).await?,
                }
            }
        }
        if order.status == OrderStatus::Cancelled {
            // The cancel won the race: never mark it processed, and say so.
            fulfilment::record_processing_skipped(&self.db, id).await?;
            tracing::info!(order_id, "order was cancelled; not processing it");
            return Ok(Outcome::SkippedCancelled);
        }
        match order.email.status {
            EmailStatus::Sent => Ok(if changed {
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
        let order_id = order.id.to_hex();
        let rendered = match kind {
            EmailKind::Confirmation => email::confirmation(&claimed),
            EmailKind::Cancellation => email::cancellation(&claimed),
        };
        let attempt = claimed.delivery(kind).map_or(0, |d| d.attempts);
        match self
            .mailer
            .send(&claimed.customer_email, &message_id, rendered)
            .await
        {
            Ok(()) => {
                fulfilment::record_email_sent(&self.db, &claimed, kind).await?;
                tracing::info!(order_id, email = kind.field(), attempt, "email sent");
                Ok(None)
            }
            Err(SendError::Permanent(reason)) => {
                fulfilment::record_email_failed(&self.db, &claimed, kind, &reason).await?;
                tracing::error!(order_id, email = kind.field(), %reason, "email refused for good");
                Ok(Some(Outcome::EmailFailed))
            }
            Err(SendError::Transient(reason)) => {
                fulfilment::record_email_retry(&self.db, order.id, kind, &reason).await?;
                Err(ProcessError::Transient(anyhow::anyhow!(
                    "sending the {}: {reason}",
                    kind.field()
                )))
            }
        }
    }

    /// Receives up to a batch, handles it (one order's messages in order,
    /// different orders concurrently) and deletes the handled messages.
    pub async fn poll_once(&self) -> anyhow::Result<BatchReport> {
        let received = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(self.config.max_messages)
            .wait_time_seconds(i32::try_from(self.config.wait_time.as_secs()).unwrap_or(20))
            .message_attribute_names("All")
            .send()
            .await
            .context("receiving from SQS")?;
        let messages = received.messages.unwrap_or_default();
        if messages.is_empty() {
            return Ok(BatchReport::default());
        }

        // Messages about the same order are handled one after another, so a
        // duplicate in the same batch finds the first one's work done.
        let mut by_order: HashMap<String, Vec<Message>> = HashMap::new();
        for message in messages.iter().cloned() {
            let key = message
                .body()
                .and_then(|b| OrderEvent::from_json(b).ok())
                .map(|e| e.order_id)
                .unwrap_or_else(|| message.message_id().unwrap_or_default().to_string());
            by_order.entry(key).or_default().push(message);
        }
        let handled: Vec<Message> = stream::iter(by_order.into_values())
            .map(|group| async move {
                let mut done = Vec::new();
                for message in group {
                    if self.handle(&message).await {
                        done.push(message);
                    }
                }
                done
            })
            .buffer_unordered(self.config.concurrency.max(1))
            .flat_map(stream::iter)
            .collect()
            .await;

        let report = BatchReport {
            received: messages.len(),
            acknowledged: handled.len(),
            left_for_redelivery: messages.len() - handled.len(),
        };
        self.delete(&handled).await?;
        Ok(report)
    }

    /// Whether the message may be deleted.
    async fn handle(&self, message: &Message) -> bool {
        let body = message.body().unwrap_or_default();
        let sqs_id = message.message_id().unwrap_or_default();
        match self.try_process_message(body).await {
            Ok(outcome) => {
                tracing::debug!(sqs_message_id = sqs_id, ?outcome, "message handled");
                true
            }
            Err(e @ ProcessError::InFlight) => {
                tracing::info!(sqs_message_id = sqs_id, reason = %e, "leaving message for redelivery");
                false
            }
            Err(e) => {
                tracing::warn!(sqs_message_id = sqs_id, error = %e, "message not handled; SQS will redeliver it");
                false
            }
        }
    }

    async fn delete(&self, messages: &[Message]) -> anyhow::Result<()> {
        let entries = messages
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .set_receipt_handle(m.receipt_handle().map(str::to_string))
                    .build()
                    .ok()
            })
            .collect::<Vec<_>>();
        for chunk in entries.chunks(10) {
            let out = self
                .sqs
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(chunk.to_vec()))
                .send()
                .await
                .context("deleting handled messages")?;
            for failed in out.failed() {
                // Harmless: the message comes back and is a duplicate then.
                tracing::warn!(code = failed.code(), "SQS did not delete a handled message");
            }
        }
        Ok(())
    }
}

/// Polls until `shutdown`. A receive in progress is abandoned at shutdown
/// (its messages reappear after the visibility timeout); a batch being
/// handled is finished first.
pub async fn run(consumer: Consumer, shutdown: CancellationToken) {
    let backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut delays = backoff();
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => break,
            result = consumer.poll_once() => result,
        };
        match result {
            Ok(report) => {
                if report.received > 0 {
                    tracing::debug!(?report, "batch done");
                }
                delays = backoff();
            }
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(30));
                tracing::warn!(error = %format!("{e:#}"), ?delay, "consumer step failed; backing off");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    tracing::info!("consumer stopped");
}
