//! The relay: publishes pending outbox rows to SQS, oldest first, in batches.
//!
//! Safe with several order-api instances: each batch is claimed under a lease
//! (an owner token and an expiry), marked published only while still owned,
//! and rows whose holder died are picked up by others when the lease runs out.
//!
//! One road: every row a commit of this process writes (an order's, a
//! cancellation's) comes to it straight from that transaction, already
//! leased to this relay (see `handoff`), and is published by [`Relay::publish`].
//! Claiming is only recovery: on a tokio-cron-scheduler sweep,
//! [`Relay::recover`] takes rows nobody holds (their holder died, their
//! send failed, the hand-off was full, or another program wrote them).
//!
//! Every instance publishes what it writes, so no instance needs to hear of
//! another's commits. (It used to follow the outbox's change stream for
//! them; on SecantusDB a change stream answers a getMore on every write to
//! any collection, which cost more than one database operation per order:
//! local stand-in, "change streams wake on every write", see
//! `common::mongo::server`.)

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
/// Rows marked in one update, at most waiting (see `Relay::mark_within`).
const MARK_AT: usize = 100;
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
    /// How long it waits after rows handed over for more (`OUTBOX_LINGER_MS`).
    linger: Duration,
    /// Rows SQS accepted wait at most this long to be marked published,
    /// with whatever else SQS accepts meanwhile: one update for several
    /// steps' rows (`OUTBOX_MARK_WITHIN_MS`). A crash in that window leaves
    /// the rows leased; the sweep sends them again when the lease runs out,
    /// and the consumer's second delivery changes nothing.
    mark_within: Duration,
    /// This process's relay; every claim token starts with it.
    instance: String,
}

/// What one publishing step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PublishOutcome {
    pub published: usize,
    pub failed: usize,
    /// Sent, but the lease had run out before the row could be marked: it
    /// may be sent again by another relay (the order's state makes the
    /// consumer's second delivery change nothing).
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
            linger: config.linger,
            mark_within: config.mark_within.min(config.lease / 2),
            instance: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// The writers' end of a hand-off to this relay (see `handoff`), and
    /// the end [`run`] takes.
    pub fn handoff(&self) -> (Handoff, mpsc::Receiver<Vec<OutboxMessage>>) {
        Handoff::new(&self.instance, self.lease, super::handoff::QUEUE_DEPTH)
    }

    /// Recovery: claims and publishes the oldest rows nobody holds (a few
    /// SQS batches' worth at most). Rows SQS accepted are marked published
    /// with their message id; the others are released with the error
    /// recorded.
    pub async fn recover(&self) -> anyhow::Result<PublishOutcome> {
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
        let mut unmarked = Unmarked::default();
        let sent = self.send_all(rows, &mut unmarked).await;
        let marked = self.mark(&mut unmarked).await;
        let mut outcome = sent?;
        let marked = marked?;
        outcome.published += marked.published;
        outcome.lease_lost += marked.lease_lost;
        Ok(outcome)
    }

    /// Sends rows this relay holds in SQS batches; those SQS accepted join
    /// `unmarked` (for [`Relay::mark`]), the others are released with the
    /// error recorded. Fails, after recording, when a whole
    /// SendMessageBatch call failed.
    async fn send_all(
        &self,
        rows: &[OutboxMessage],
        unmarked: &mut Unmarked,
    ) -> anyhow::Result<PublishOutcome> {
        let mut outcome = PublishOutcome::default();
        if rows.is_empty() {
            return Ok(outcome);
        }
        let chunk = usize::try_from(self.batch_size).unwrap_or(10);
        let in_flight = if self.fifo { 1 } else { SENDS_IN_FLIGHT };
        let batches = sqs_batches(rows, chunk);
        // Built first: a stream over a closure trips the compiler's Send check.
        let calls: Vec<_> = batches.iter().map(|batch| self.send(batch)).collect();
        let results: Vec<Result<Sent, String>> = futures::stream::iter(calls)
            .buffered(in_flight)
            .collect()
            .await;
        let sends = batches.into_iter().zip(results);

        let accepted_at = DateTime::now();
        let mut refused: Vec<(&OutboxMessage, String)> = Vec::new();
        let mut send_error = None;
        for (batch, sent) in sends {
            match sent {
                Ok(sent) => {
                    unmarked.add(sent.accepted.into_iter().filter_map(|(i, sqs_message_id)| {
                        Some(Accepted::of(batch.get(i)?, sqs_message_id, accepted_at))
                    }));
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

    /// Marks every row of `unmarked` published in one update (those whose
    /// lease ran out are not: they may be sent again), and empties it. On
    /// failure the rows stay pending, leased, and the sweep sends them
    /// again once their leases run out.
    async fn mark(&self, unmarked: &mut Unmarked) -> anyhow::Result<PublishOutcome> {
        let accepted = std::mem::take(unmarked).rows;
        let mut outcome = PublishOutcome::default();
        if accepted.is_empty() {
            return Ok(outcome);
        }
        let tokens: BTreeSet<&str> = accepted
            .iter()
            .filter_map(|row| row.lease_owner.as_deref())
            .collect();
        let marked = store::mark_published(
            &self.db,
            &tokens.into_iter().collect::<Vec<_>>(),
            &accepted
                .iter()
                .map(|row| (row.id, row.sqs_message_id.as_str()))
                .collect::<Vec<_>>(),
            self.retention,
        )
        .await?;
        for row in accepted {
            if marked.contains(&row.id) {
                tracing::debug!(order_id = %row.order_id, event_id = %row.id, sqs_message_id = row.sqs_message_id, "outbox row published");
                outcome.published += 1;
                counter!(metrics::OUTBOX_PUBLISHED, "event_type" => row.event_type).increment(1);
                let lag = row.accepted_at.timestamp_millis() - row.created_at.timestamp_millis();
                histogram!(metrics::OUTBOX_PUBLISH_LATENCY).record(lag.max(0) as f64 / 1000.0);
            } else {
                tracing::warn!(order_id = %row.order_id, event_id = %row.id, "lease ran out before the row was marked; it may be sent again");
                counter!(metrics::OUTBOX_PUBLISH_FAILURES, "reason" => "lease_lost").increment(1);
                outcome.lease_lost += 1;
            }
        }
        Ok(outcome)
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

/// Rows SQS accepted that are not marked published yet, each with its SQS
/// message id and when SQS accepted it. The relay's loop marks them
/// together, within `Relay::mark_within` of the first (the event is on the queue
/// already: only a resend after a crash waits on the mark).
#[derive(Default)]
struct Unmarked {
    rows: Vec<Accepted>,
    /// When the first of `rows` came.
    since: Option<Instant>,
}

impl Unmarked {
    fn add(&mut self, rows: impl IntoIterator<Item = Accepted>) {
        let before = self.rows.len();
        self.rows.extend(rows);
        if before == 0 && !self.rows.is_empty() {
            self.since = Some(Instant::now());
        }
    }

    /// When the rows must be marked: `within` after the first, or now
    /// once a mark's worth waits. `None` when there are none.
    fn due(&self, within: Duration) -> Option<Instant> {
        let since = self.since?;
        if self.rows.len() >= MARK_AT {
            Some(Instant::now())
        } else {
            Some(since + within)
        }
    }
}

/// What marking a row SQS accepted needs of it: not its body, which
/// carries the whole order.
struct Accepted {
    id: bson::oid::ObjectId,
    order_id: bson::oid::ObjectId,
    event_type: String,
    lease_owner: Option<String>,
    created_at: DateTime,
    sqs_message_id: String,
    accepted_at: DateTime,
}

impl Accepted {
    fn of(row: &OutboxMessage, sqs_message_id: String, accepted_at: DateTime) -> Accepted {
        Accepted {
            id: row.id,
            order_id: row.order_id,
            event_type: row.event_type.clone(),
            lease_owner: row.lease_owner.clone(),
            created_at: row.created_at,
            sqs_message_id,
            accepted_at,
        }
    }
}

/// What one SendMessageBatch call did, by index in the rows it was given.
struct Sent {
    accepted: Vec<(usize, String)>,
    refused: Vec<(usize, String)>,
}

/// Runs the relay until `shutdown`. It waits for one of four things:
/// shutdown, rows a commit of this process handed over (sent with
/// whatever else comes within the linger, up to a step's worth), the time
/// to mark what SQS accepted (together, within `OUTBOX_MARK_WITHIN_MS`), or a sweep
/// tick (a recovery claim, repeated at once while it comes back full). Rows left
/// pending before this start are recovered first. While publishing fails
/// it pauses, exponentially longer (capped): failed rows were let go, and
/// a later sweep takes them. A step in progress is always finished; rows
/// still waiting in the hand-off and leases still held are let go at the
/// end.
pub async fn run(
    relay: Relay,
    mut handed: mpsc::Receiver<Vec<OutboxMessage>>,
    sweep: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let backoff = common::startup::worker_backoff;
    let mut delays = backoff();
    let mut recover_now = true;
    let mut unmarked = Unmarked::default();
    loop {
        let step = if recover_now {
            relay.recover().await
        } else {
            let mark_due = unmarked.due(relay.mark_within);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = sleep_until(mark_due), if mark_due.is_some() => {
                    relay.mark(&mut unmarked).await
                }
                Some(first) = handed.recv() => {
                    // Lingers until a SendMessageBatch's worth is in, then
                    // takes whatever else already waits, up to a step's.
                    let mut batches = vec![first];
                    let full = usize::try_from(relay.batch_size).unwrap_or(10);
                    common::batching::fill_lingering(
                        &mut handed,
                        &mut batches,
                        full,
                        relay.linger,
                        Vec::len,
                    )
                    .await;
                    common::batching::fill_lingering(
                        &mut handed,
                        &mut batches,
                        HANDED_PER_STEP,
                        Duration::ZERO,
                        Vec::len,
                    )
                    .await;
                    relay.send_all(&batches.concat(), &mut unmarked).await
                }
                () = sweep.notified() => relay.recover().await,
            }
        };
        // A step in progress is finished, but no other begins once
        // shutdown has come (a backlog would otherwise keep a full
        // recovery claim going past the drain's deadline).
        if shutdown.is_cancelled() {
            break;
        }
        recover_now = step.as_ref().is_ok_and(|outcome| outcome.more_pending);
        let failure = match step {
            Ok(outcome) if outcome.failed == 0 => None,
            Ok(outcome) => Some(format!("{} rows refused", outcome.failed)),
            Err(e) => Some(format!("{e:#}")),
        };
        let Some(failure) = failure else {
            delays = backoff();
            continue;
        };
        // What SQS took before the failure is marked before the pause.
        if let Err(e) = relay.mark(&mut unmarked).await {
            tracing::warn!(error = %format!("{e:#}"), "could not mark published outbox rows; the sweep sends them again when their leases run out");
        }
        let pause = delays.next().unwrap_or(Duration::from_secs(30));
        tracing::warn!(error = %failure, ?pause, "outbox relay step failed; pausing, and the sweep takes the rows let go");
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    // Rows SQS took are marked before the leases still held are let go.
    if let Err(e) = relay.mark(&mut unmarked).await {
        tracing::warn!(error = %format!("{e:#}"), "could not mark published outbox rows at shutdown; the sweep sends them again");
    }
    handed.close();
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

/// Sleeps until `at` (forever when `None`: the branch is disabled then).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Starts the recovery sweep: on `schedule` (cron with seconds) it ticks
/// `sweep`, which the relay's loop selects on.
pub async fn start_sweep(schedule: &str, sweep: Arc<Notify>) -> anyhow::Result<JobScheduler> {
    common::schedule::every("OUTBOX_SWEEP_SCHEDULE", schedule, move || {
        let sweep = sweep.clone();
        async move { sweep.notify_one() }
    })
    .await
}

#[cfg(test)]
mod tests {
    use bson::oid::ObjectId;

    use super::*;

    fn with_bodies(bodies: &[usize]) -> Vec<OutboxMessage> {
        store::rows_for(
            bodies.iter().map(|_| (ObjectId::new(), None, None)),
            common::event::OrderEventType::OrderCreated,
            DateTime::now(),
            None,
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
