//! The relay: publishes pending outbox rows to SQS, oldest first, in batches.
//!
//! Safe with several order-api instances: each batch is claimed under a lease
//! (an owner token and an expiry), marked published only while still owned,
//! and rows whose holder died are picked up by others when the lease runs out.
//!
//! It wakes at once when this process commits an order, when the outbox's
//! change stream reports an insert (orders committed by other instances),
//! and on a tokio-cron-scheduler sweep, the safety net for everything else.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use ::metrics::{counter, histogram};
use anyhow::Context;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use bson::{DateTime, oid::ObjectId};
use mongodb::Database;
use tokio::sync::Notify;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

use super::store::{self, OutboxMessage};
use crate::{config::OutboxConfig, metrics, orders::store as orders};

/// How long noting a batch's publication on the order timelines may hold up
/// the next batch.
const NOTE_TIMEOUT: Duration = Duration::from_secs(5);

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

    /// Claims and publishes one batch of the oldest pending rows. Rows SQS
    /// accepted are marked published with their message id; the others are
    /// released with the error recorded.
    pub async fn try_publish_batch(&self) -> anyhow::Result<PublishOutcome> {
        let token = format!("{}:{}", self.instance, uuid::Uuid::new_v4().simple());
        let rows = store::claim(&self.db, &token, self.lease, self.batch_size)
            .await
            .context("claiming pending outbox rows")?;
        if rows.is_empty() {
            return Ok(PublishOutcome::default());
        }
        let entries = rows
            .iter()
            .enumerate()
            .map(|(index, row)| self.entry(index, row))
            .collect::<Result<Vec<_>, _>>()?;
        let sent = match self
            .sqs
            .send_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(sent) => sent,
            Err(e) => {
                let reason = format!(
                    "SendMessageBatch failed: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(&e)
                );
                counter!(metrics::OUTBOX_PUBLISH_FAILURES, "reason" => "send_failed")
                    .increment(rows.len() as u64);
                for row in &rows {
                    store::record_failure(&self.db, row.id, &token, &reason).await?;
                }
                anyhow::bail!(reason);
            }
        };

        let mut outcome = PublishOutcome {
            more_pending: i64::try_from(rows.len()).unwrap_or(0) == self.batch_size,
            ..PublishOutcome::default()
        };
        let accepted_at = DateTime::now();
        let accepted: Vec<(&OutboxMessage, &str)> = sent
            .successful()
            .iter()
            .filter_map(|ok| Some((row_for(&rows, ok.id())?, ok.message_id())))
            .collect();
        let marked = store::mark_published(
            &self.db,
            &token,
            &accepted
                .iter()
                .map(|(row, message_id)| (row.id, *message_id))
                .collect::<Vec<_>>(),
            self.retention,
        )
        .await?;
        let mut published: Vec<&OutboxMessage> = Vec::new();
        for (row, sqs_message_id) in accepted {
            if marked.contains(&row.id) {
                tracing::debug!(order_id = %row.order_id, event_id = %row.id, sqs_message_id, "outbox row published");
                outcome.published += 1;
                published.push(row);
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
        self.note_on_timelines(&published, accepted_at).await;
        for failed in sent.failed() {
            let Some(row) = row_for(&rows, failed.id()) else {
                continue;
            };
            let reason = format!(
                "{}: {}",
                failed.code(),
                failed.message().unwrap_or("no message")
            );
            tracing::warn!(order_id = %row.order_id, event_id = %row.id, %reason, "SQS refused an outbox row");
            counter!(metrics::OUTBOX_PUBLISH_FAILURES, "reason" => "refused").increment(1);
            store::record_failure(&self.db, row.id, &token, &reason).await?;
            outcome.failed += 1;
        }
        Ok(outcome)
    }

    /// Adds `published` to each order's timeline. Informational: the rows
    /// are already marked, so a failure here is logged, not retried.
    async fn note_on_timelines(&self, published: &[&OutboxMessage], at: DateTime) {
        let mut by_type: BTreeMap<&str, Vec<ObjectId>> = BTreeMap::new();
        for row in published {
            by_type
                .entry(&row.event_type)
                .or_default()
                .push(row.order_id);
        }
        for (event_type, order_ids) in by_type {
            let noted = tokio::time::timeout(
                NOTE_TIMEOUT,
                orders::record_published(&self.db, &order_ids, event_type, at),
            )
            .await;
            match noted {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, orders = order_ids.len(), "could not note publication on order timelines")
                }
                Err(_) => {
                    tracing::warn!(timeout = ?NOTE_TIMEOUT, orders = order_ids.len(), "noting publication on order timelines timed out")
                }
            }
        }
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

fn row_for<'a>(rows: &'a [OutboxMessage], entry_id: &str) -> Option<&'a OutboxMessage> {
    entry_id.parse::<usize>().ok().and_then(|i| rows.get(i))
}

/// Runs the relay until `shutdown`: publish while there is work, then sleep
/// until woken; back off exponentially (capped) while publishing fails.
/// A step in progress is always finished; leases are released at the end.
pub async fn run(relay: Relay, wake: Arc<Notify>, shutdown: CancellationToken) {
    let backoff = common::startup::worker_backoff;
    let mut delays = backoff();
    loop {
        let pause = match relay.try_publish_batch().await {
            Ok(outcome) if outcome.failed == 0 => {
                delays = backoff();
                if outcome.more_pending && !shutdown.is_cancelled() {
                    continue;
                }
                None
            }
            Ok(outcome) => {
                tracing::warn!(
                    failed = outcome.failed,
                    "some outbox rows were refused; backing off"
                );
                delays.next()
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "outbox relay step failed; backing off");
                delays.next()
            }
        };
        let woken = async {
            match pause {
                Some(delay) => tokio::time::sleep(delay).await,
                None => wake.notified().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = woken => {}
        }
    }
    relay.release().await;
    tracing::info!("outbox relay stopped");
}

/// Starts the safety-net sweep: on `schedule` (cron with seconds) it wakes
/// the relay, which then publishes anything still pending.
pub async fn start_sweep(schedule: &str, wake: Arc<Notify>) -> anyhow::Result<JobScheduler> {
    let scheduler = JobScheduler::new()
        .await
        .context("creating the sweep scheduler")?;
    let job = Job::new_async(schedule, move |_id, _scheduler| {
        let wake = wake.clone();
        Box::pin(async move { wake.notify_one() })
    })
    .with_context(|| format!("OUTBOX_SWEEP_SCHEDULE {schedule:?} is not a valid cron schedule"))?;
    scheduler.add(job).await.context("adding the sweep job")?;
    scheduler
        .start()
        .await
        .context("starting the sweep scheduler")?;
    Ok(scheduler)
}
