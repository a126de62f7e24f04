//! The queue consumer.
//!
//! `try_process_message` (process.rs) handles one event and says what
//! happened; `poll_once` receives a batch, handles it under a visibility
//! heartbeat, and settles every message: deleted when handled, put back with
//! an exponential delay after a transient failure, or moved to the
//! dead-letter queue at once when retrying cannot help; `run` loops over
//! `poll_once` until shutdown.
//!
//! Handling never waits on SMTP: the email an event causes is recorded as
//! due work in the event's own transaction and handed to the sender
//! (`email::sender`), so mail trouble never spends a message's receives.
//!
//! After maxReceiveCount receives SQS itself dead-letters a message that
//! keeps failing.

mod process;
mod together;
pub mod visibility;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use ::metrics::{counter, histogram};
use anyhow::Context;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use chrono::Utc;
use common::{domain::Order, event::OrderEvent};
use futures::{StreamExt, stream};
use mongodb::Database;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use process::{Outcome, ProcessError};

use crate::{
    config::ConsumerConfig,
    dlq::{self, Queues},
    email::EmailSender,
    metrics,
};

#[derive(Clone)]
pub struct Consumer {
    db: Database,
    sqs: aws_sdk_sqs::Client,
    queues: Queues,
    /// Sends the emails that events make due.
    sender: EmailSender,
    config: ConsumerConfig,
    /// How long a confirmation claimed in the processing transaction holds.
    email_lease: Duration,
    message_id_domain: String,
    /// The queue's visibility timeout: the heartbeat renews it.
    visibility: Duration,
    /// Where first deliveries are applied, several pollers' in one
    /// transaction.
    together: together::Together,
}

/// What becomes of one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settlement {
    Delete,
    RetryAfter(Duration),
    /// Already moved to the DLQ and deleted from the main queue.
    DeadLettered,
}

/// Counts from one `poll_once`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    pub received: usize,
    pub acknowledged: usize,
    pub retried: usize,
    pub dead_lettered: usize,
    pub visibility_extensions: u32,
    /// First deliveries applied in the batch's shared transaction.
    pub applied_together: usize,
}

impl Consumer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: Database,
        sqs: aws_sdk_sqs::Client,
        queues: Queues,
        sender: EmailSender,
        config: ConsumerConfig,
        email_lease: Duration,
        message_id_domain: String,
        visibility: Duration,
    ) -> Self {
        Consumer {
            together: together::Together::start(
                db.clone(),
                together::Settings {
                    message_id_domain: message_id_domain.clone(),
                    linger: config.linger,
                    lease: email_lease,
                },
            ),
            db,
            sqs,
            queues,
            sender,
            config,
            email_lease,
            message_id_domain,
            visibility,
        }
    }

    /// Receives up to a batch, handles it (one order's messages in order,
    /// different orders concurrently up to the configured limit) and settles
    /// every message.
    pub async fn poll_once(&self) -> anyhow::Result<BatchReport> {
        let messages = self.receive().await?;
        self.settle(messages).await
    }

    /// One long poll: up to a batch of messages, possibly none.
    async fn receive(&self) -> anyhow::Result<Vec<Message>> {
        let received = self
            .sqs
            .receive_message()
            .queue_url(&self.queues.main)
            .max_number_of_messages(self.config.max_messages)
            .wait_time_seconds(i32::try_from(self.config.wait_time.as_secs()).unwrap_or(20))
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .context("receiving from SQS")?;
        Ok(received.messages.unwrap_or_default())
    }

    /// Handles received messages and settles each one.
    async fn settle(&self, messages: Vec<Message>) -> anyhow::Result<BatchReport> {
        if messages.is_empty() {
            return Ok(BatchReport::default());
        }

        // Each body is parsed once here; an unparseable one gets no event and
        // is answered on its own path.
        // Messages about the same order are handled one after another, so a
        // duplicate in the same batch finds the first one's work done.
        let mut by_order: HashMap<String, Vec<(Message, Option<OrderEvent>)>> = HashMap::new();
        for message in messages {
            let event = message.body().and_then(|b| OrderEvent::from_json(b).ok());
            let key = event.as_ref().map_or_else(
                || message.message_id().unwrap_or_default().to_string(),
                |e| e.order_id.clone(),
            );
            by_order.entry(key).or_default().push((message, event));
        }
        // Orders with one message each share one transaction for their
        // first deliveries, with other pollers' (see `together`);
        // everything else goes one by one.
        // The shared transaction can wait (on a lock a dead consumer's open
        // transaction holds, until the server aborts it): its messages stay
        // invisible meanwhile, as a handler's do, or other pollers would
        // receive them again and again until SQS dead-letters them.
        let (singles, receipts): (Vec<_>, Vec<_>) = by_order
            .values()
            .filter(|group| group.len() == 1)
            .filter_map(|group| {
                let (message, event) = &group[0];
                Some(((event.clone()?, sent_at(message)), message.receipt_handle()))
            })
            .unzip();
        let receipts: Vec<&str> = receipts.into_iter().flatten().collect();
        let (applied, _) = visibility::with_heartbeats(
            self.together.apply(singles),
            &self.sqs,
            &self.queues.main,
            &receipts,
            self.visibility,
            self.config.handler_timeout,
        )
        .await;
        let mut claimed = applied.unwrap_or_default();
        let applied_together = claimed.len();
        let groups: Vec<Vec<(Message, Option<Box<Order>>)>> = by_order
            .into_values()
            .map(|group| {
                group
                    .into_iter()
                    .map(|(message, event)| {
                        let order = event.and_then(|e| claimed.remove(&e.event_id));
                        (message, order)
                    })
                    .collect()
            })
            .collect();
        let settled: Vec<(Message, Settlement, u32)> = stream::iter(groups)
            .map(|group| async move {
                let mut done = Vec::with_capacity(group.len());
                for (message, order) in group {
                    let (settlement, extensions) = self.handle(&message, order).await;
                    done.push((message, settlement, extensions));
                }
                done
            })
            .buffer_unordered(self.config.concurrency.max(1))
            .flat_map(stream::iter)
            .collect()
            .await;

        counter!(metrics::MESSAGES_RECEIVED).increment(settled.len() as u64);
        let mut report = BatchReport {
            received: settled.len(),
            applied_together,
            ..BatchReport::default()
        };
        let mut delete = Vec::new();
        let mut retry = Vec::new();
        for (message, settlement, extensions) in settled {
            report.visibility_extensions += extensions;
            match settlement {
                Settlement::Delete => {
                    report.acknowledged += 1;
                    delete.push(message);
                }
                Settlement::RetryAfter(delay) => {
                    report.retried += 1;
                    retry.push((message, delay));
                }
                Settlement::DeadLettered => report.dead_lettered += 1,
            }
        }
        self.delete(&delete).await?;
        self.postpone(&retry).await?;
        Ok(report)
    }

    /// Handles one message under a visibility heartbeat and decides its
    /// fate, in a span that joins the trace of the request that placed the
    /// order (the `traceparent` attribute) and names the order.
    async fn handle(&self, message: &Message, claimed: Option<Box<Order>>) -> (Settlement, u32) {
        let event = message.body().and_then(|b| OrderEvent::from_json(b).ok());
        let span = tracing::info_span!(
            "message",
            sqs_message_id = message.message_id().unwrap_or_default(),
            order_id = event.as_ref().map(|e| e.order_id.as_str()),
            event_type = event.as_ref().map(|e| e.event_type.as_str()),
            trace_id = tracing::field::Empty,
        );
        let traceparent = message
            .message_attributes()
            .and_then(|a| a.get(common::telemetry::TRACEPARENT))
            .and_then(|v| v.string_value());
        common::telemetry::continue_trace(&span, traceparent);
        let started = Instant::now();
        let (settlement, extensions) = self.handle_in_span(message, claimed).instrument(span).await;
        histogram!(metrics::HANDLE_DURATION).record(started.elapsed());
        counter!(metrics::VISIBILITY_EXTENSIONS).increment(u64::from(extensions));
        if let (Settlement::Delete, Some(event)) = (settlement, &event) {
            let age = Utc::now() - event.occurred_at;
            histogram!(metrics::EVENT_AGE, "event_type" => event.event_type.as_str())
                .record(age.as_seconds_f64().max(0.0));
        }
        (settlement, extensions)
    }

    async fn handle_in_span(
        &self,
        message: &Message,
        claimed: Option<Box<Order>>,
    ) -> (Settlement, u32) {
        let body = message.body().unwrap_or_default();
        let sqs_id = message.message_id().unwrap_or_default();
        let receipt = message.receipt_handle().unwrap_or_default();
        let (result, extensions) = visibility::with_heartbeat(
            self.process_message(body, claimed, sent_at(message)),
            &self.sqs,
            &self.queues.main,
            receipt,
            self.visibility,
            self.config.handler_timeout,
        )
        .await;
        let receives = receive_count(message);
        let backoff =
            visibility::retry_delay(receives, self.config.retry_base, self.config.retry_cap);
        let settlement = match result {
            Ok(Ok(outcome)) => {
                tracing::debug!(sqs_message_id = sqs_id, ?outcome, "message handled");
                counter!(metrics::MESSAGES_HANDLED, "outcome" => outcome.as_str()).increment(1);
                Settlement::Delete
            }
            Ok(Err(e)) if !e.is_worth_retrying() => {
                counter!(metrics::MESSAGE_FAILURES, "kind" => e.kind()).increment(1);
                let reason = e.to_string();
                match dlq::dead_letter(&self.sqs, &self.queues, message, &reason).await {
                    Ok(()) => {
                        counter!(metrics::MESSAGES_DEAD_LETTERED).increment(1);
                        tracing::error!(sqs_message_id = sqs_id, %reason, "message dead-lettered: retrying cannot help");
                        Settlement::DeadLettered
                    }
                    Err(e) => {
                        tracing::warn!(sqs_message_id = sqs_id, error = %format!("{e:#}"), "could not dead-letter; will retry");
                        Settlement::RetryAfter(backoff)
                    }
                }
            }
            Ok(Err(e)) => {
                counter!(metrics::MESSAGE_FAILURES, "kind" => e.kind()).increment(1);
                tracing::warn!(sqs_message_id = sqs_id, receives, error = %e, retry_in = ?backoff, "message not handled; will retry");
                Settlement::RetryAfter(backoff)
            }
            Err(visibility::TimedOut) => {
                counter!(metrics::MESSAGE_FAILURES, "kind" => "timed_out").increment(1);
                tracing::warn!(sqs_message_id = sqs_id, timeout = ?self.config.handler_timeout, "handler timed out; will retry");
                Settlement::RetryAfter(backoff)
            }
        };
        (settlement, extensions)
    }

    async fn delete(&self, messages: &[Message]) -> anyhow::Result<()> {
        for chunk in messages.chunks(10) {
            let entries = chunk
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
            let out = self
                .sqs
                .delete_message_batch()
                .queue_url(&self.queues.main)
                .set_entries(Some(entries))
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

    /// Makes failed messages invisible for their backoff delay.
    async fn postpone(&self, messages: &[(Message, Duration)]) -> anyhow::Result<()> {
        for chunk in messages.chunks(10) {
            let entries = visibility::batch_entries(
                chunk
                    .iter()
                    .filter_map(|(m, delay)| Some((m.receipt_handle()?, *delay))),
            );
            self.sqs
                .change_message_visibility_batch()
                .queue_url(&self.queues.main)
                .set_entries(Some(entries))
                .send()
                .await
                .context("postponing failed messages")?;
        }
        Ok(())
    }
}

/// When SQS accepted the message (its SentTimestamp, epoch ms).
fn sent_at(message: &Message) -> Option<bson::DateTime> {
    message
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
        .and_then(|ms| ms.parse().ok())
        .map(bson::DateTime::from_millis)
}

fn receive_count(message: &Message) -> u32 {
    message
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// Runs the configured number of pollers until `shutdown`.
///
/// One poller handles a batch and only then receives the next, so the
/// slowest message of each batch holds up the other nine; several pollers
/// keep messages flowing while one waits on its slowest.
pub async fn run(consumer: Consumer, shutdown: CancellationToken) {
    let pollers = consumer.config.pollers.max(1);
    futures::future::join_all((0..pollers).map(|poller| poll(&consumer, poller, &shutdown))).await;
    tracing::info!(pollers, "consumer stopped");
}

/// One poller: receive, handle, settle, until `shutdown`. A receive in
/// progress is abandoned at shutdown (SQS has handed nothing over yet, or
/// its messages reappear after the visibility timeout); a batch in hand is
/// always finished and settled.
async fn poll(consumer: &Consumer, poller: usize, shutdown: &CancellationToken) {
    let backoff = common::startup::worker_backoff;
    let mut delays = backoff();
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => break,
            received = consumer.receive() => received,
        };
        let result = match received {
            Ok(messages) => consumer.settle(messages).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(report) => {
                if report.received > 0 {
                    tracing::debug!(poller, ?report, "batch done");
                }
                delays = backoff();
            }
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(30));
                tracing::warn!(poller, error = %format!("{e:#}"), ?delay, "consumer step failed; backing off");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
