//! The relay: publishes pending outbox rows to SQS, oldest first, in batches.
//!
//! Safe with several order-api instances: each batch is claimed under a lease
//! (an owner token and an expiry), marked published only while still owned,
//! and rows whose holder died are picked up by others when the lease runs out.
//!
//! An order's row comes to it straight from the transaction that wrote it,
//! already leased to this relay (see `handoff`). Every other pending row is
//! claimed: the relay looks when woken by a commit of this process (a
//! cancellation's row) and on a tokio-cron-scheduler sweep, the safety net
//! for everything else (rows whose holder died, whose publication failed,
//! or that another program wrote).
//!
//! Every instance publishes what it writes, so no instance needs to hear of
//! another's commits. (It used to follow the outbox's change stream for
//! them; on SecantusDB a change stream answers a getMore on every write to
//! any collection, which cost more than one database operation per order.)

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use ::metrics::{counter, histogram};
use anyhow::Context;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use bson::DateTime;
use common::schedule::JobScheduler;
use futures::StreamExt;
use mongodb::Database;
use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{
    handoff::Handoff,
    store::{self, OutboxMessage},
};
use crate::{config::OutboxConfig, metrics};

/// A claim takes up to this many SQS batches' worth of rows: fewer claims
/// when a backlog drains (each one reads every pending row on SecantusDB).
const CLAIM_BATCHES: i64 = 5;
/// Rows handed over by writers published in one step, at most.
const HANDED_PER_STEP: usize = 100;
/// SendMessageBatch calls in flight at once (standard queues only: a FIFO
/// queue gets its batches one after another, in order).
const SENDS_IN_FLIGHT: usize = 4;

/// A fresh claim token of the relay `instance`.
pub(crate) fn claim_token(instance: &str) -> String {
    format!("{instance}:{}", uuid::Uuid::new_v4().simple())
}

#[derive(Clone)]
pub struct Relay {
    db: Database,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    /// FIFO queues need a group (the order: its events stay in order) and a
    /// deduplication id (the row: a resend within 5 minutes is dropped).
    fifo: bool,
    batch_size: i64,
    lease: Duration,
    retention: Duration,
    /// This process's relay; every claim token starts with it.
    instance: String,
}

/// What one publishing step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PublishOutcome {
    pub published: usize,
    pub failed: usize,
    /// Sent, but the lease had run out before the row could be marked: it
    /// may be sent again by another relay (the consumer's inbox absorbs it).
    pub lease_lost: usize,
    /// The batch was full: more rows may be waiting.
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
            batch_size: config.batch_size.clamp(1, 10),
            lease: config.lease,
            retention: config.retention,
            instance: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// The writers' end of a hand-off to this relay (see `handoff`), and
    /// the end [`run`] takes.
    pub fn handoff(&self, wake: Arc<Notify>) -> (Handoff, mpsc::Receiver<Vec<OutboxMessage>>) {
        Handoff::new(
            &self.instance,
            self.lease,
            wake,
            super::handoff::QUEUE_DEPTH,
        )
    }

    /// Claims and publishes the oldest pending rows (a few SQS batches'
    /// worth at most). Rows SQS accepted are marked published with their
    /// message id; the others are released with the error recorded.
    pub async fn try_publish_batch(&self) -> anyhow::Result<PublishOutcome> {
        let token = claim_token(&self.instance);
        let limit = self.batch_size * CLAIM_BATCHES;
        let rows = store::claim(&self.db, &token, self.lease, limit)
            .await
            .context("claiming pending outbox rows")?;
        let more_pending = i64::try_from(rows.len()).unwrap_or(0) == limit;
        let mut outcome = self.publish(&rows).await?;
        outcome.more_pending = more_pending;
        Ok(outcome)
    }

    /// Publishes rows this relay holds (each under its own claim token), in
    /// SQS batches, then marks those SQS accepted in one update and releases
    /// the others with the error recorded. Fails, after recording, when a
    /// whole SendMessageBatch call failed.
    pub async fn publish(&self, rows: &[OutboxMessage]) -> anyhow::Result<PublishOutcome> {
        let mut outcome = PublishOutcome::default();
        if rows.is_empty() {
            return Ok(outcome);
        }
        let chunk = usize::try_from(self.batch_size).unwrap_or(10);
        let in_flight = if self.fifo { 1 } else { SENDS_IN_FLIGHT };
        let batches: Vec<&[OutboxMessage]> = rows.chunks(chunk).collect();
        // Built first: a stream over a closure trips the compiler's Send check.
        let calls: Vec<_> = batches.iter().map(|batch| self.send(batch)).collect();
        let results: Vec<Result<Sent, String>> = futures::stream::iter(calls)
            .buffered(in_flight)
            .collect()
            .await;
        let sends = batches.into_iter().zip(results);

        let accepted_at = DateTime::now();
        let mut accepted: Vec<(&OutboxMessage, String)> = Vec::new();
        let mut refused: Vec<(&OutboxMessage, String)> = Vec::new();
        let mut send_error = None;
        for (batch, sent) in sends {
            match sent {
                Ok(sent) => {
                    accepted.extend(
                        sent.accepted
                            .into_iter()
                            .filter_map(|(i, id)| Some((batch.get(i)?, id))),
                    );
                    refused.extend(
                        sent.refused
                            .into_iter()
                            .filter_map(|(i, why)| Some((batch.get(i)?, why))),
                    );
                }
                Err(reason) => {
                    counter!(metrics::OUTBOX_PUBLISH_FAILURES, "reason" => "send_failed")
                        .increment(batch.len() as u64);
                    for row in batch {
                        self.record_failure(row, &reason).await?;
                    }
                    outcome.failed += batch.len();
                    send_error = Some(reason);
                }
            }
        }

        let tokens: BTreeSet<&str> = accepted
            .iter()
            .filter_map(|(row, _)| row.lease_owner.as_deref())
            .collect();
        let marked = store::mark_published(
            &self.db,
            &tokens.into_iter().collect::<Vec<_>>(),
            &accepted
                .iter()
                .map(|(row, message_id)| (row.id, message_id.as_str()))
                .collect::<Vec<_>>(),
            self.retention,
        )
        .await?;
        for (row, sqs_message_id) in accepted {
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
        for (row, reason) in refused {
            tracing::warn!(order_id = %row.order_id, event_id = %row.id, %reason, "SQS refused an outbox row");
            counter!(metrics::OUTBOX_PUBLISH_FAILURES, "reason" => "refused").increment(1);
            self.record_failure(row, &reason).await?;
            outcome.failed += 1;
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

    async fn record_failure(&self, row: &OutboxMessage, reason: &str) -> anyhow::Result<()> {
        let token = row.lease_owner.as_deref().unwrap_or_default();
        store::record_failure(&self.db, row.id, token, reason).await?;
        Ok(())
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

/// Runs the relay until `shutdown`: publish rows handed over by writers as
/// they come, claim pending rows when woken (and again while a claim comes
/// back full), and back off exponentially (capped) while publishing fails.
/// A step in progress is always finished; rows still waiting in the
/// hand-off and leases still held are let go at the end.
pub async fn run(
    relay: Relay,
    mut handed: mpsc::Receiver<Vec<OutboxMessage>>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let backoff = common::startup::worker_backoff;
    let mut delays = backoff();
    // Rows left pending before this start are claimed at once.
    let mut claim_due = true;
    // While publishing fails: no step before this. A deadline, not a sleep
    // restarted on every wake, or frequent wakes (the sweep) would keep
    // the relay waiting for ever.
    let mut paused_until: Option<Instant> = None;
    let mut rows: Vec<OutboxMessage> = Vec::new();
    // Whether any writer can still hand rows over.
    let mut writers = true;
    loop {
        if paused_until.is_some_and(|until| Instant::now() >= until) {
            paused_until = None;
        }
        let step = if paused_until.is_some() {
            None
        } else {
            while rows.len() < HANDED_PER_STEP {
                match handed.try_recv() {
                    Ok(batch) => rows.extend(batch),
                    Err(_) => break,
                }
            }
            if !rows.is_empty() {
                let published = relay.publish(&rows).await;
                rows.clear();
                Some(published)
            } else if claim_due {
                let claimed = relay.try_publish_batch().await;
                claim_due = claimed.as_ref().is_ok_and(|o| o.more_pending);
                Some(claimed)
            } else {
                None
            }
        };
        let failed = match &step {
            Some(Ok(outcome)) if outcome.failed == 0 => {
                delays = backoff();
                false
            }
            Some(Ok(outcome)) => {
                tracing::warn!(
                    failed = outcome.failed,
                    "some outbox rows were refused; backing off"
                );
                true
            }
            Some(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "outbox relay step failed; backing off");
                true
            }
            None => false,
        };
        if failed {
            // Failed rows were let go: a claim picks them up after the pause.
            claim_due = true;
            paused_until = delays.next().map(|delay| Instant::now() + delay);
        }
        if shutdown.is_cancelled() {
            break;
        }
        if step.is_some() && paused_until.is_none() {
            continue;
        }
        // Nothing to do now: wait for rows, a wake, or the end of a pause.
        let pause_over = async {
            match paused_until {
                Some(until) => tokio::time::sleep_until(until).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            batch = handed.recv(), if paused_until.is_none() && writers => match batch {
                Some(batch) => rows = batch,
                None => writers = false,
            },
            () = wake.notified() => claim_due = true,
            () = pause_over => paused_until = None,
        }
    }
    handed.close();
    relay.release().await;
    tracing::info!("outbox relay stopped");
}

/// Starts the safety-net sweep: on `schedule` (cron with seconds) it wakes
/// the relay, which then publishes anything still pending.
pub async fn start_sweep(schedule: &str, wake: Arc<Notify>) -> anyhow::Result<JobScheduler> {
    common::schedule::every("OUTBOX_SWEEP_SCHEDULE", schedule, move || {
        let wake = wake.clone();
        async move { wake.notify_one() }
    })
    .await
}
