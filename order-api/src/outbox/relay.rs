//! The relay: publishes pending outbox rows to SQS, oldest first. One road
//! for every row, whoever wrote it: [`Relay::publish_step`] claims the
//! oldest rows nobody holds under a lease (an owner token and an expiry),
//! sends them in SQS batches and marks those SQS accepted published, only
//! while it still holds them. Rows whose holder died are claimed again
//! once the lease runs out, by this instance or another.
//!
//! The loop ([`run`]) takes a step when it is woken: by a commit of this
//! process that wrote rows (placing, cancelling), or by the sweep's tick
//! (tokio-cron-scheduler), which finds rows another instance or a dead
//! relay left; and again at once while a step comes back full. Rows that
//! commits write while a step runs are the next step's batch.

use std::{sync::Arc, time::Duration};

use ::metrics::{counter, histogram};
use anyhow::Context;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use bson::DateTime;
use common::{backoff::Schedule, schedule::JobScheduler};
use futures::StreamExt;
use mongodb::Database;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::store::{self, OutboxMessage};
use crate::{config::OutboxConfig, metrics};

/// Rows one SendMessageBatch call carries at most (SQS's limit).
const PER_CALL: usize = 10;
/// A step claims up to this many calls' worth of rows.
const CALLS_PER_STEP: usize = 5;
/// What one SendMessageBatch call carries at most, bodies and attributes of
/// all its messages together: 256 KiB, SQS's limit until 2025 (it is 1 MiB
/// now, as LocalStack enforces) and still that of compatible servers.
const BATCH_BYTES: usize = 256 * 1024;
/// Room kept per message for its attributes (event type and id, trace
/// context: well under this).
const ATTRIBUTE_BYTES: usize = 1024;
/// SendMessageBatch calls in flight at once (standard queues only: a FIFO
/// queue gets its batches one after another, in order).
const SENDS_IN_FLIGHT: usize = 4;

#[derive(Clone)]
pub struct Relay {
    db: Database,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    /// FIFO queues need a group (the order: its events stay in order) and a
    /// deduplication id (the row: a resend within 5 minutes is dropped).
    fifo: bool,
    lease: Duration,
    retention: Duration,
    /// This process's relay (`<pid>-<random>`): every claim token starts
    /// with it, and the rows it publishes name it.
    instance: String,
    /// What wakes the loop: commits that wrote rows, and the sweep.
    wake: Arc<Notify>,
}

/// What one publishing step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PublishOutcome {
    pub published: usize,
    pub failed: usize,
    /// Sent, but the lease had run out before the row could be marked: it
    /// may be sent again by another relay (the consumer's inbox makes the
    /// second delivery change nothing).
    pub lease_lost: usize,
    /// The step was full: more rows may be waiting.
    pub more_pending: bool,
}

impl Relay {
    pub fn new(
        db: Database,
        sqs: aws_sdk_sqs::Client,
        queue_url: String,
        config: &OutboxConfig,
    ) -> Self {
        Relay {
            fifo: queue_url.ends_with(".fifo"),
            db,
            sqs,
            queue_url,
            lease: config.lease,
            retention: config.retention,
            instance: common::telemetry::instance_name(),
            wake: Arc::new(Notify::new()),
        }
    }

    /// This relay's name: every claim token it takes starts with it.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// What a writer wakes once its rows are committed.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// One step: claims the oldest rows nobody holds (a few SQS calls'
    /// worth), sends them, marks those SQS accepted published in one update
    /// at once (a crash resends only what this step sent), and lets go of
    /// the others with the error recorded. Fails, after recording, when a
    /// whole SendMessageBatch call failed.
    pub async fn publish_step(&self) -> anyhow::Result<PublishOutcome> {
        let token = format!("{}:{}", self.instance, uuid::Uuid::new_v4().simple());
        let limit = PER_CALL * CALLS_PER_STEP;
        let rows = store::claim(&self.db, &token, self.lease, limit as i64)
            .await
            .context("claiming pending outbox rows")?;
        let mut outcome = PublishOutcome {
            more_pending: rows.len() == limit,
            ..PublishOutcome::default()
        };
        if rows.is_empty() {
            return Ok(outcome);
        }
        let in_flight = if self.fifo { 1 } else { SENDS_IN_FLIGHT };
        let batches = sqs_batches(&rows, PER_CALL);
        // Built first: a stream over a closure trips the compiler's Send check.
        let calls: Vec<_> = batches.iter().map(|batch| self.send(batch)).collect();
        let results: Vec<Result<Sent, String>> = futures::stream::iter(calls)
            .buffered(in_flight)
            .collect()
            .await;
        let accepted_at = DateTime::now();
        let mut accepted: Vec<(&OutboxMessage, String)> = Vec::new();
        let mut send_error = None;
        for (batch, sent) in batches.into_iter().zip(results) {
            match sent {
                Ok(sent) => {
                    accepted.extend(
                        sent.accepted.into_iter().filter_map(|(i, sqs_message_id)| {
                            Some((batch.get(i)?, sqs_message_id))
                        }),
                    );
                    for (row, reason) in sent
                        .refused
                        .into_iter()
                        .filter_map(|(i, why)| Some((batch.get(i)?, why)))
                    {
                        tracing::warn!(order_id = %row.order_id, event_id = %row.id, %reason, "SQS refused an outbox row");
                        counter!(metrics::OUTBOX_PUBLISH_FAILURES, "reason" => "refused")
                            .increment(1);
                        store::record_failure(&self.db, row.id, &token, &reason).await?;
                        outcome.failed += 1;
                    }
                }
                Err(reason) => {
                    counter!(metrics::OUTBOX_PUBLISH_FAILURES, "reason" => "send_failed")
                        .increment(batch.len() as u64);
                    for row in batch {
                        store::record_failure(&self.db, row.id, &token, &reason).await?;
                    }
                    outcome.failed += batch.len();
                    send_error = Some(reason);
                }
            }
        }
        let sent: Vec<_> = accepted
            .iter()
            .map(|(row, id)| (row.id, id.as_str()))
            .collect();
        let marked = store::mark_published(&self.db, &token, &sent, self.retention).await?;
        for (row, sqs_message_id) in &accepted {
            if marked.contains(&row.id) {
                tracing::debug!(order_id = %row.order_id, event_id = %row.id, sqs_message_id, "outbox row published");
                outcome.published += 1;
                counter!(metrics::OUTBOX_PUBLISHED, "event_type" => row.event_type.clone())
                    .increment(1);
                let lag = accepted_at.timestamp_millis() - row.created_at.timestamp_millis();
                histogram!(metrics::OUTBOX_PUBLISH_LATENCY).record(lag.max(0) as f64 / 1000.0);
            } else {
                tracing::warn!(order_id = %row.order_id, event_id = %row.id, "lease ran out before the row was marked; it may be sent again");
                counter!(metrics::OUTBOX_PUBLISH_FAILURES, "reason" => "lease_lost").increment(1);
                outcome.lease_lost += 1;
            }
        }
        match send_error {
            Some(reason) => anyhow::bail!(reason),
            None => Ok(outcome),
        }
    }

    /// One SendMessageBatch call: the rows SQS accepted (by their index in
    /// `rows`, with the message id) and those it refused (with why), or why
    /// the whole call failed.
    async fn send(&self, rows: &[OutboxMessage]) -> Result<Sent, String> {
        let entries = rows
            .iter()
            .enumerate()
            .map(|(index, row)| self.entry(index, row))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("building the SQS batch: {e:#}"))?;
        let sent = self
            .sqs
            .send_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "SendMessageBatch failed: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(&e)
                )
            })?;
        let index = |id: &str| id.parse::<usize>().ok();
        Ok(Sent {
            accepted: sent
                .successful()
                .iter()
                .filter_map(|ok| Some((index(ok.id())?, ok.message_id().to_string())))
                .collect(),
            refused: sent
                .failed()
                .iter()
                .filter_map(|failed| {
                    let reason = format!(
                        "{}: {}",
                        failed.code(),
                        failed.message().unwrap_or("no message")
                    );
                    Some((index(failed.id())?, reason))
                })
                .collect(),
        })
    }

    fn entry(
        &self,
        index: usize,
        row: &OutboxMessage,
    ) -> anyhow::Result<SendMessageBatchRequestEntry> {
        let attribute = |value: String| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
        };
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(index.to_string())
            .message_body(&row.body)
            .message_attributes("eventType", attribute(row.event_type.clone())?)
            .message_attributes("orderId", attribute(row.order_id.to_hex())?)
            .message_attributes("eventId", attribute(row.id.to_hex())?);
        if let Some(traceparent) = &row.traceparent {
            entry = entry.message_attributes(
                common::telemetry::TRACEPARENT,
                attribute(traceparent.clone())?,
            );
        }
        if self.fifo {
            entry = entry
                .message_group_id(row.order_id.to_hex())
                .message_deduplication_id(row.id.to_hex());
        }
        Ok(entry.build()?)
    }

    /// Lets go of any rows this instance still holds, so another instance
    /// need not wait for the leases to run out.
    pub async fn release(&self) {
        match store::release(&self.db, &self.instance).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "released outbox leases"),
            Err(e) => {
                tracing::warn!(error = %e, "could not release outbox leases; they expire on their own")
            }
        }
    }
}

/// What one SendMessageBatch call did, by index in the rows it was given.
struct Sent {
    accepted: Vec<(usize, String)>,
    refused: Vec<(usize, String)>,
}

/// Runs the relay until `shutdown`: a step at once (rows left pending
/// before this start), then one whenever it is woken, and again at once
/// while a step comes back full. While steps fail it pauses on the worker
/// schedule (failed rows were let go; a later step takes them). A step in
/// progress is always finished; leases still held are let go at the end.
pub async fn run(relay: Relay, shutdown: CancellationToken) {
    let mut pauses = Schedule::WORKER.delays();
    loop {
        let step = relay.publish_step().await;
        if shutdown.is_cancelled() {
            break;
        }
        let failure = match &step {
            Ok(outcome) if outcome.failed == 0 => None,
            Ok(outcome) => Some(format!("{} rows refused", outcome.failed)),
            Err(e) => Some(format!("{e:#}")),
        };
        match failure {
            None if step.is_ok_and(|o| o.more_pending) => continue,
            None => pauses = Schedule::WORKER.delays(),
            Some(failure) => {
                let pause = pauses.next().unwrap_or(Schedule::WORKER.cap);
                tracing::warn!(error = %failure, ?pause, "outbox relay step failed; pausing");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = relay.wake.notified() => {}
        }
    }
    relay.release().await;
    tracing::info!("outbox relay stopped");
}

/// `rows` in SendMessageBatch calls, in order: at most `per_call` rows and
/// [`BATCH_BYTES`] a call (an `order.created` body carries the order, up to
/// 50 lines and about 50 KB, so ten of the largest do not fit in one).
fn sqs_batches(rows: &[OutboxMessage], per_call: usize) -> Vec<&[OutboxMessage]> {
    let per_call = per_call.max(1);
    let mut batches = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let size = row.body.len() + ATTRIBUTE_BYTES;
        if i > start && (i - start == per_call || bytes + size > BATCH_BYTES) {
            batches.push(&rows[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < rows.len() {
        batches.push(&rows[start..]);
    }
    batches
}

/// Starts the sweep: on `schedule` (cron with seconds) it wakes the relay.
pub async fn start_sweep(schedule: &str, relay: &Relay) -> anyhow::Result<JobScheduler> {
    let wake = relay.waker();
    common::schedule::every("OUTBOX_SWEEP_SCHEDULE", schedule, move || {
        let wake = wake.clone();
        async move { wake.notify_one() }
    })
    .await
}

#[cfg(test)]
mod tests {
    use bson::oid::ObjectId;

    use super::*;

    fn with_bodies(bodies: &[usize]) -> Vec<OutboxMessage> {
        store::rows_for(
            bodies.iter().map(|_| (ObjectId::new(), None)),
            common::event::OrderEventType::OrderCreated,
            DateTime::now(),
        )
        .into_iter()
        .zip(bodies)
        .map(|(mut row, bytes)| {
            row.body = "x".repeat(*bytes);
            row
        })
        .collect()
    }

    fn sizes(batches: &[&[OutboxMessage]]) -> Vec<usize> {
        batches.iter().map(|batch| batch.len()).collect()
    }

    #[test]
    fn batches_hold_at_most_per_call_rows_in_order() {
        let rows = with_bodies(&[100; 23]);
        let batches = sqs_batches(&rows, 10);
        assert_eq!(sizes(&batches), [10, 10, 3]);
        let ids: Vec<_> = batches.concat().iter().map(|row| row.id).collect();
        assert_eq!(ids, rows.iter().map(|row| row.id).collect::<Vec<_>>());
        assert!(sqs_batches(&[], 10).is_empty());
    }

    #[test]
    fn batches_stay_within_sqs_bytes_per_call() {
        // 50 KiB bodies: five fit in 256 KiB with their attributes' room.
        let rows = with_bodies(&[50 * 1024; 12]);
        let batches = sqs_batches(&rows, 10);
        assert_eq!(sizes(&batches), [5, 5, 2]);
        for batch in batches {
            let bytes: usize = batch.iter().map(|r| r.body.len() + ATTRIBUTE_BYTES).sum();
            assert!(bytes <= BATCH_BYTES, "{bytes}");
        }
        // A row over the limit on its own still goes alone (SQS refuses it,
        // recorded against that row only).
        assert_eq!(
            sizes(&sqs_batches(&with_bodies(&[BATCH_BYTES; 2]), 10)),
            [1, 1]
        );
    }
}
