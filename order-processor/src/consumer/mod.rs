//! The queue consumer. One step, [`Consumer::poll_once`]: receive up to a
//! batch, process all of its events in ONE transaction (`process`) under a
//! visibility heartbeat, and settle every message: deleted when handled,
//! put back with a delay on the retry schedule after a transient failure,
//! or moved to the dead-letter queue at once when retrying cannot help.
//! `run` runs a few pollers, each looping over the step until shutdown.
//!
//! Processing never waits on SMTP: a confirmation becomes due in its
//! order's own update, and the email worker (`email::worker`), woken after
//! each commit, sends it.
//!
//! After maxReceiveCount receives SQS itself dead-letters a message that
//! keeps failing.

mod process;
pub mod visibility;

use std::time::{Duration, Instant};

use ::metrics::{counter, histogram};
use anyhow::Context;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use chrono::Utc;
use common::backoff::Schedule;
use mongodb::Database;
use tokio_util::sync::CancellationToken;

pub use process::{Event, Outcome, ProcessError, Processor};

use crate::{
    config::ConsumerConfig,
    dlq::{self, Queues},
    email::EmailWorker,
    metrics,
};

#[derive(Clone)]
pub struct Consumer {
    sqs: aws_sdk_sqs::Client,
    queues: Queues,
    /// Woken once a batch made emails due.
    emails: EmailWorker,
    config: ConsumerConfig,
    /// The queue's visibility timeout: the heartbeat renews it.
    visibility: Duration,
    /// Where received events are processed, several pollers' in one
    /// transaction.
    processor: Processor,
}

/// What becomes of one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settlement {
    Delete,
    RetryAfter(Duration),
    /// Already moved to the DLQ and deleted from the main queue.
    DeadLettered,
}

/// What one step did.
#[derive(Debug, Default, Clone)]
pub struct BatchReport {
    pub received: usize,
    pub acknowledged: usize,
    pub retried: usize,
    pub dead_lettered: usize,
    pub visibility_extensions: u32,
    /// Each message's outcome, in the order received.
    pub outcomes: Vec<Result<Outcome, ProcessError>>,
}

impl Consumer {
    pub fn new(
        db: Database,
        sqs: aws_sdk_sqs::Client,
        queues: Queues,
        emails: EmailWorker,
        config: ConsumerConfig,
        visibility: Duration,
    ) -> Self {
        Consumer {
            sqs,
            queues,
            emails,
            processor: Processor::start(
                db,
                process::WriterSettings {
                    handled_by: common::telemetry::instance_name(),
                    writes: common::mongo::bulk::Writes::as_decided(),
                    retention: config.inbox_retention,
                },
            ),
            config,
            visibility,
        }
    }

    /// The step: receives up to a batch, processes it, settles every
    /// message.
    pub async fn poll_once(&self) -> anyhow::Result<BatchReport> {
        let messages = self.receive().await?;
        self.handle(messages).await
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

    /// Parses each body once, processes the events in one transaction
    /// (kept invisible meanwhile), and settles each message.
    async fn handle(&self, messages: Vec<Message>) -> anyhow::Result<BatchReport> {
        if messages.is_empty() {
            return Ok(BatchReport::default());
        }
        counter!(metrics::MESSAGES_RECEIVED).increment(messages.len() as u64);
        let parsed: Vec<Result<Event, ProcessError>> = messages
            .iter()
            .map(|m| {
                let (body, id) = (
                    m.body().unwrap_or_default(),
                    m.message_id().unwrap_or_default(),
                );
                Event::parse(body, id, sent_at(m))
            })
            .collect();
        let events: Vec<Event> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .cloned()
            .collect();
        let receipts: Vec<&str> = messages.iter().filter_map(|m| m.receipt_handle()).collect();
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.config.handler_timeout;
        let (processed, extensions) = visibility::with_heartbeats(
            self.processor.process(events, deadline),
            &self.sqs,
            &self.queues.main,
            &receipts,
            self.visibility,
        )
        .await;
        histogram!(metrics::HANDLE_DURATION).record(started.elapsed());
        counter!(metrics::VISIBILITY_EXTENSIONS).increment(u64::from(extensions));
        let mut processed = match processed {
            Ok(outcomes) => Ok(outcomes.into_iter()),
            Err(e)
                if e.get_custom::<common::mongo::DeadlineBeforeCommit>()
                    .is_some() =>
            {
                Err(ProcessError::TimedOut)
            }
            Err(e) => Err(ProcessError::Transient(e.to_string())),
        };
        let outcomes: Vec<Result<Outcome, ProcessError>> = parsed
            .iter()
            .map(|event| match (event, &mut processed) {
                (Err(e), _) => Err(e.clone()),
                (Ok(_), Ok(outcomes)) => outcomes
                    .next()
                    .unwrap_or_else(|| Err(ProcessError::Transient("no outcome".into()))),
                (Ok(_), Err(e)) => Err(e.clone()),
            })
            .collect();
        if outcomes
            .iter()
            .any(|o| matches!(o, Ok(Outcome::Processed | Outcome::CancellationNoted)))
        {
            self.emails.wake();
        }

        let mut report = BatchReport {
            received: messages.len(),
            visibility_extensions: extensions,
            ..BatchReport::default()
        };
        let mut delete = Vec::new();
        let mut retry = Vec::new();
        for ((message, event), outcome) in messages.into_iter().zip(&parsed).zip(outcomes) {
            report.outcomes.push(outcome.clone());
            match self.settle(&message, event.as_ref().ok(), outcome).await {
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

    /// Decides a message's fate from its outcome, and says so in a span
    /// that joins the trace of the request that changed the order (the
    /// `traceparent` attribute) and names the order.
    async fn settle(
        &self,
        message: &Message,
        event: Option<&Event>,
        outcome: Result<Outcome, ProcessError>,
    ) -> Settlement {
        let span = tracing::info_span!(
            "message",
            sqs_message_id = message.message_id().unwrap_or_default(),
            order_id = event.map(|e| e.event.order_id.as_str()),
            event_type = event.map(|e| e.event.event_type.as_str()),
            trace_id = tracing::field::Empty,
        );
        let traceparent = message
            .message_attributes()
            .and_then(|a| a.get(common::telemetry::TRACEPARENT))
            .and_then(|v| v.string_value());
        common::telemetry::continue_trace(&span, traceparent);
        let _entered = span.enter();
        let receives = receive_count(message);
        let backoff = Schedule::new(self.config.retry_base, self.config.retry_cap).after(receives);
        match outcome {
            Ok(outcome) => {
                tracing::info!(outcome = outcome.as_str(), "event handled");
                counter!(metrics::MESSAGES_HANDLED, "outcome" => outcome.as_str()).increment(1);
                if let Some(event) = event {
                    let age = Utc::now() - event.event.occurred_at;
                    histogram!(metrics::EVENT_AGE, "event_type" => event.event.event_type.as_str())
                        .record(age.as_seconds_f64().max(0.0));
                }
                Settlement::Delete
            }
            Err(e) if !e.is_worth_retrying() => {
                counter!(metrics::MESSAGE_FAILURES, "kind" => e.kind()).increment(1);
                let reason = e.to_string();
                match dlq::dead_letter(&self.sqs, &self.queues, message, &reason).await {
                    Ok(()) => {
                        counter!(metrics::MESSAGES_DEAD_LETTERED).increment(1);
                        tracing::error!(%reason, "message dead-lettered: retrying cannot help");
                        Settlement::DeadLettered
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "could not dead-letter; will retry");
                        Settlement::RetryAfter(backoff)
                    }
                }
            }
            Err(e) => {
                counter!(metrics::MESSAGE_FAILURES, "kind" => e.kind()).increment(1);
                tracing::warn!(receives, error = %e, retry_in = ?backoff, "message not handled; will retry");
                Settlement::RetryAfter(backoff)
            }
        }
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
    let mut pauses = Schedule::WORKER.delays();
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => break,
            received = consumer.receive() => received,
        };
        let result = match received {
            Ok(messages) => consumer.handle(messages).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(report) => {
                if report.received > 0 {
                    tracing::debug!(poller, ?report, "batch done");
                }
                pauses = Schedule::WORKER.delays();
            }
            Err(e) => {
                let delay = pauses.next().unwrap_or(Schedule::WORKER.cap);
                tracing::warn!(poller, error = %format!("{e:#}"), ?delay, "consumer step failed; backing off");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
