//! The relay: publishes pending outbox rows to SQS, oldest first, in batches.
//!
//! It wakes at once when this process commits an order, and a
//! tokio-cron-scheduler job wakes it periodically as a safety net for rows
//! nobody announced (written by another instance, or left by a failed send).

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use backon::{BackoffBuilder, ExponentialBuilder};
use mongodb::Database;
use tokio::sync::Notify;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

use super::store::{self, OutboxMessage};

#[derive(Clone)]
pub struct Relay {
    db: Database,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    batch_size: i64,
}

/// What one publishing step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PublishOutcome {
    pub published: usize,
    pub failed: usize,
    /// The batch was full: more rows may be waiting.
    pub more_pending: bool,
}

impl Relay {
    pub fn new(db: Database, sqs: aws_sdk_sqs::Client, queue_url: String, batch_size: i64) -> Self {
        Relay {
            db,
            sqs,
            queue_url,
            batch_size: batch_size.clamp(1, 10),
        }
    }

    /// Publishes one batch of the oldest pending rows. Rows SQS accepted are
    /// marked published with their message id; the others stay pending with
    /// the error recorded.
    pub async fn try_publish_batch(&self) -> anyhow::Result<PublishOutcome> {
        let rows = store::oldest_pending(&self.db, self.batch_size)
            .await
            .context("reading pending outbox rows")?;
        if rows.is_empty() {
            return Ok(PublishOutcome::default());
        }
        let entries = rows
            .iter()
            .enumerate()
            .map(|(index, row)| entry(index, row))
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
                for row in &rows {
                    store::record_failure(&self.db, row.id, &reason).await?;
                }
                anyhow::bail!(reason);
            }
        };

        let mut outcome = PublishOutcome {
            more_pending: i64::try_from(rows.len()).unwrap_or(0) == self.batch_size,
            ..PublishOutcome::default()
        };
        for ok in sent.successful() {
            let Some(row) = row_for(&rows, ok.id()) else {
                continue;
            };
            store::mark_published(&self.db, row.id, ok.message_id()).await?;
            tracing::debug!(order_id = %row.order_id, event_id = %row.id, sqs_message_id = ok.message_id(), "outbox row published");
            outcome.published += 1;
        }
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
            store::record_failure(&self.db, row.id, &reason).await?;
            outcome.failed += 1;
        }
        Ok(outcome)
    }
}

fn entry(index: usize, row: &OutboxMessage) -> anyhow::Result<SendMessageBatchRequestEntry> {
    let attribute = |value: String| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
    };
    Ok(SendMessageBatchRequestEntry::builder()
        .id(index.to_string())
        .message_body(&row.body)
        .message_attributes("eventType", attribute(row.event_type.clone())?)
        .message_attributes("orderId", attribute(row.order_id.to_hex())?)
        .message_attributes("eventId", attribute(row.id.to_hex())?)
        .build()?)
}

fn row_for<'a>(rows: &'a [OutboxMessage], entry_id: &str) -> Option<&'a OutboxMessage> {
    entry_id.parse::<usize>().ok().and_then(|i| rows.get(i))
}

/// Runs the relay until `shutdown`: publish while there is work, then sleep
/// until woken; back off exponentially (capped) while publishing fails.
pub async fn run(relay: Relay, wake: Arc<Notify>, shutdown: CancellationToken) {
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
        let pause = match relay.try_publish_batch().await {
            Ok(outcome) if outcome.failed == 0 => {
                delays = backoff();
                if outcome.more_pending {
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
