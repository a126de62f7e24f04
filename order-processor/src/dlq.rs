//! The dead-letter queue: what lands there, and moving it back after a fix.
//!
//! SQS moves a message there itself after maxReceiveCount receives. The
//! consumer moves a message there at once when retrying cannot help (an
//! unparseable body, an unknown event type, an order that does not exist),
//! with the reason in a `deadLetterReason` attribute.

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};

pub const REASON_ATTRIBUTE: &str = "deadLetterReason";

#[derive(Debug, Clone)]
pub struct Queues {
    pub main: String,
    pub dead_letter: String,
}

/// Moves `message` to the DLQ now, with `reason`, and deletes it from the
/// main queue. A crash between the two leaves a copy in both; the consumer
/// dead-letters the main-queue copy again on its next receive.
pub async fn dead_letter(
    sqs: &aws_sdk_sqs::Client,
    queues: &Queues,
    message: &Message,
    reason: &str,
) -> anyhow::Result<()> {
    let mut attributes = message.message_attributes().cloned().unwrap_or_default();
    attributes.insert(
        REASON_ATTRIBUTE.to_string(),
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(truncate(reason, 1_000))
            .build()?,
    );
    sqs.send_message()
        .queue_url(&queues.dead_letter)
        .message_body(message.body().unwrap_or_default())
        .set_message_attributes(Some(attributes))
        .send()
        .await
        .context("sending to the dead-letter queue")?;
    if let Some(receipt) = message.receipt_handle() {
        sqs.delete_message()
            .queue_url(&queues.main)
            .receipt_handle(receipt)
            .send()
            .await
            .context("deleting the dead-lettered message from the main queue")?;
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// One dead letter, as `dlq list` shows it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message_id: String,
    pub body: String,
    pub reason: Option<String>,
    pub receive_count: Option<String>,
    pub sent_at: Option<String>,
}

impl DeadLetter {
    fn from_message(m: &Message) -> Self {
        let system = m.attributes();
        DeadLetter {
            message_id: m.message_id().unwrap_or_default().to_string(),
            body: m.body().unwrap_or_default().to_string(),
            reason: m
                .message_attributes()
                .and_then(|a| a.get(REASON_ATTRIBUTE))
                .and_then(|v| v.string_value())
                .map(str::to_string),
            receive_count: system
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .cloned(),
            sent_at: system
                .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                .cloned(),
        }
    }
}

/// Receives from the DLQ without keeping anything: each message becomes
/// visible again almost at once. Bounded: at most `max` messages and 20
/// receive calls.
pub async fn peek(
    sqs: &aws_sdk_sqs::Client,
    dlq_url: &str,
    max: usize,
) -> anyhow::Result<Vec<DeadLetter>> {
    let mut seen = HashSet::new();
    let mut letters = Vec::new();
    let mut empty_rounds = 0;
    for _ in 0..20 {
        if letters.len() >= max || empty_rounds >= 2 {
            break;
        }
        let out = sqs
            .receive_message()
            .queue_url(dlq_url)
            .max_number_of_messages(10)
            .visibility_timeout(1)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .context("reading the dead-letter queue")?;
        let mut new = 0;
        for m in out.messages() {
            if seen.insert(m.message_id().unwrap_or_default().to_string()) && letters.len() < max {
                letters.push(DeadLetter::from_message(m));
                new += 1;
            }
        }
        if new == 0 {
            empty_rounds += 1;
        }
    }
    Ok(letters)
}

/// Moves up to `max` messages from the DLQ back to the main queue, without
/// the `deadLetterReason` attribute. Each is sent before it is deleted, so a
/// crash duplicates rather than loses (the consumer is idempotent). Stops
/// after three empty polls in a row: messages a preview just looked at are
/// invisible for a moment.
pub async fn redrive(
    sqs: &aws_sdk_sqs::Client,
    queues: &Queues,
    max: usize,
) -> anyhow::Result<usize> {
    let mut moved = 0;
    let mut empty_polls = 0;
    for _ in 0..(max / 10 + 10) {
        if moved >= max || empty_polls >= 3 {
            break;
        }
        let want = i32::try_from((max - moved).min(10)).unwrap_or(10);
        let out = sqs
            .receive_message()
            .queue_url(&queues.dead_letter)
            .max_number_of_messages(want)
            .visibility_timeout(60)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .context("receiving from the dead-letter queue")?;
        if out.messages().is_empty() {
            empty_polls += 1;
            continue;
        }
        empty_polls = 0;
        for m in out.messages() {
            let attributes: HashMap<String, MessageAttributeValue> = m
                .message_attributes()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|(k, _)| k != REASON_ATTRIBUTE)
                .collect();
            sqs.send_message()
                .queue_url(&queues.main)
                .message_body(m.body().unwrap_or_default())
                .set_message_attributes((!attributes.is_empty()).then_some(attributes))
                .send()
                .await
                .context("sending back to the main queue")?;
            if let Some(receipt) = m.receipt_handle() {
                sqs.delete_message()
                    .queue_url(&queues.dead_letter)
                    .receipt_handle(receipt)
                    .send()
                    .await
                    .context("deleting a redriven message from the dead-letter queue")?;
            }
            moved += 1;
        }
    }
    Ok(moved)
}
