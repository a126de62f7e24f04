//! What order-processor counts, and `GET /metrics` in the Prometheus text
//! format. The queue depths (main and dead-letter) are read from SQS at each
//! scrape, bounded by a short timeout.

use std::time::Duration;

use ::metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
use aws_sdk_sqs::types::QueueAttributeName;

use crate::dlq::Queues;

pub const MESSAGES_RECEIVED: &str = "consumer_messages_received_total";
pub const MESSAGES_HANDLED: &str = "consumer_messages_handled_total";
pub const MESSAGE_FAILURES: &str = "consumer_message_failures_total";
pub const MESSAGES_DEAD_LETTERED: &str = "consumer_messages_dead_lettered_total";
pub const VISIBILITY_EXTENSIONS: &str = "consumer_visibility_extensions_total";
pub const HANDLE_DURATION: &str = "consumer_handle_duration_seconds";
pub const EVENT_AGE: &str = "consumer_event_age_seconds";
pub const EMAILS_SENT: &str = "emails_sent_total";
pub const EMAILS_FAILED: &str = "emails_failed_total";
pub const EMAIL_ATTEMPTS: &str = "email_send_attempts_total";
pub const EMAIL_SEND_DURATION: &str = "email_send_duration_seconds";
pub const EMAIL_REPLIES: &str = "email_replies_total";
pub const EMAIL_THROTTLED: &str = "email_throttled_total";
pub const EMAIL_SENDER_STATE: &str = "email_sender_state";
pub const EMAILS_DUE: &str = "emails_due";
pub const EMAIL_OLDEST_DUE_AGE: &str = "email_oldest_due_age_seconds";
pub const EMAIL_BACKLOG_READ: &str = "email_backlog_read_ok";
pub const QUEUE_MESSAGES: &str = "sqs_queue_messages";
pub const QUEUE_READ: &str = "sqs_queue_read_ok";

const QUEUE_TIMEOUT: Duration = Duration::from_secs(1);

/// Installs the recorder and gives every metric its help text.
pub fn describe() {
    common::metrics::install();
    describe_counter!(MESSAGES_RECEIVED, "Messages received from the order queue");
    describe_counter!(
        MESSAGES_HANDLED,
        "Messages handled and acknowledged, by outcome (processed, duplicate, skipped_cancelled, cancellation_noted); duplicate = a redelivery that changed nothing"
    );
    describe_counter!(
        MESSAGE_FAILURES,
        "Messages not handled this time, by kind (unparseable, unknown_order, transient, timed_out)"
    );
    describe_counter!(
        MESSAGES_DEAD_LETTERED,
        "Messages the consumer moved to the dead-letter queue itself (retrying could not help)"
    );
    describe_counter!(
        VISIBILITY_EXTENSIONS,
        "Visibility timeout renewals by the heartbeat of a long-running handler"
    );
    describe_histogram!(
        HANDLE_DURATION,
        ::metrics::Unit::Seconds,
        "Time to process one received batch of messages (one transaction; emails are sent apart from it)"
    );
    describe_histogram!(
        EVENT_AGE,
        ::metrics::Unit::Seconds,
        "From the order change (the event's occurredAt) to the message being handled, by event type"
    );
    describe_counter!(EMAILS_SENT, "Emails the SMTP server accepted, by kind");
    describe_counter!(
        EMAILS_FAILED,
        "Emails recorded FAILED, by kind and reason (refused: a 5xx about this message or recipient; gave_up: refused for now until EMAIL_GIVE_UP_AFTER_SECS)"
    );
    describe_counter!(
        EMAIL_REPLIES,
        "Failed sends by how the reply was classified (transient, throttled, provider_refuses, permanent)"
    );
    describe_counter!(
        EMAIL_THROTTLED,
        "Sends the mail server refused with a rate-limit reply; each is retried, never FAILED"
    );
    describe_gauge!(
        EMAIL_SENDER_STATE,
        "1 for the email worker's current state (closed: sending; open: the server failed N times in a row, probing; refusing: it refuses every email, e.g. 535, probing)"
    );
    describe_gauge!(
        EMAILS_DUE,
        "Emails due now and not yet sent (PENDING with nextAttemptAt passed), both kinds"
    );
    describe_gauge!(
        EMAIL_OLDEST_DUE_AGE,
        ::metrics::Unit::Seconds,
        "How long the oldest due email has been waiting since it became due"
    );
    describe_gauge!(
        EMAIL_BACKLOG_READ,
        "1 when the last scrape could count the due emails, 0 when MongoDB did not answer in time"
    );
    describe_counter!(EMAIL_ATTEMPTS, "SMTP send attempts, by kind");
    describe_histogram!(
        EMAIL_SEND_DURATION,
        ::metrics::Unit::Seconds,
        "Time the SMTP server took to accept or refuse an email"
    );
    describe_gauge!(
        QUEUE_MESSAGES,
        "Approximate messages in a queue (visible plus in flight), by queue (main, dead_letter)"
    );
    describe_gauge!(
        QUEUE_READ,
        "1 when the last scrape could read the queue depths, 0 when SQS did not answer in time"
    );
    // Known series start at zero, so rates and dashboards show 0, not
    // "no data", before the first event.
    counter!(MESSAGES_RECEIVED).increment(0);
    counter!(MESSAGES_DEAD_LETTERED).increment(0);
    counter!(VISIBILITY_EXTENSIONS).increment(0);
    for outcome in [
        "processed",
        "duplicate",
        "skipped_cancelled",
        "cancellation_noted",
    ] {
        counter!(MESSAGES_HANDLED, "outcome" => outcome).increment(0);
    }
    for kind in ["unparseable", "unknown_order", "transient", "timed_out"] {
        counter!(MESSAGE_FAILURES, "kind" => kind).increment(0);
    }
    for kind in ["confirmation", "cancellation"] {
        counter!(EMAILS_SENT, "kind" => kind).increment(0);
        counter!(EMAIL_ATTEMPTS, "kind" => kind).increment(0);
        counter!(EMAIL_THROTTLED, "kind" => kind).increment(0);
        for reason in ["refused", "gave_up"] {
            counter!(EMAILS_FAILED, "kind" => kind, "reason" => reason).increment(0);
        }
    }
    for class in ["transient", "throttled", "provider_refuses", "permanent"] {
        counter!(EMAIL_REPLIES, "class" => class).increment(0);
    }
    for operation in [
        "process_events",
        "claim_emails",
        "record_email_sent",
        "record_email_retry",
        "record_email_failed",
    ] {
        counter!(common::metrics::TRANSACTION_RETRIES, "operation" => operation).increment(0);
    }
}

/// The Prometheus exposition, after refreshing the queue depths and the
/// email backlog.
pub async fn render(db: &mongodb::Database, sqs: &aws_sdk_sqs::Client, queues: &Queues) -> String {
    match tokio::time::timeout(
        QUEUE_TIMEOUT,
        common::orders::email::backlog(db, bson::DateTime::now()),
    )
    .await
    {
        Ok(Ok(backlog)) => {
            gauge!(EMAILS_DUE).set(backlog.due as f64);
            gauge!(EMAIL_OLDEST_DUE_AGE).set(backlog.oldest_due_age.as_secs_f64());
            gauge!(EMAIL_BACKLOG_READ).set(1.0);
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "counting due emails for /metrics");
            gauge!(EMAIL_BACKLOG_READ).set(0.0);
        }
        Err(_) => {
            tracing::warn!(timeout = ?QUEUE_TIMEOUT, "counting due emails for /metrics timed out");
            gauge!(EMAIL_BACKLOG_READ).set(0.0);
        }
    }
    let read = tokio::time::timeout(QUEUE_TIMEOUT, async {
        let main = queue_depth(sqs, &queues.main).await?;
        let dead_letter = queue_depth(sqs, &queues.dead_letter).await?;
        anyhow::Ok((main, dead_letter))
    })
    .await;
    match read {
        Ok(Ok((main, dead_letter))) => {
            gauge!(QUEUE_MESSAGES, "queue" => "main").set(main as f64);
            gauge!(QUEUE_MESSAGES, "queue" => "dead_letter").set(dead_letter as f64);
            gauge!(QUEUE_READ).set(1.0);
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %format!("{e:#}"), "reading queue depths for /metrics");
            gauge!(QUEUE_READ).set(0.0);
        }
        Err(_) => {
            tracing::warn!(timeout = ?QUEUE_TIMEOUT, "reading queue depths for /metrics timed out");
            gauge!(QUEUE_READ).set(0.0);
        }
    }
    common::metrics::render()
}

/// Visible plus in-flight messages, as SQS approximates them.
async fn queue_depth(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> anyhow::Result<u64> {
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await?
        .attributes
        .unwrap_or_default();
    let count = |name| {
        attributes
            .get(&name)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(count(QueueAttributeName::ApproximateNumberOfMessages)
        + count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible))
}
