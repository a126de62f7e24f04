//! Keeping messages invisible while their batch is processed (heartbeat),
//! and making them invisible for a retry's delay.

use std::{future::Future, time::Duration};

use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry;

/// Runs `work` on received messages, extending their visibility every
/// third of the visibility timeout (one call per ten messages) so SQS does
/// not hand them to another consumer meanwhile. Returns how many
/// extensions it made. `work` bounds itself (the transaction's deadline):
/// it is never dropped half-way.
pub async fn with_heartbeats<T>(
    work: impl Future<Output = T>,
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    receipt_handles: &[&str],
    visibility: Duration,
) -> (T, u32) {
    let every = (visibility / 3).max(Duration::from_secs(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(work);
    let mut extensions = 0;
    loop {
        tokio::select! {
            out = &mut work => return (out, extensions),
            _ = ticks.tick() => {
                for chunk in receipt_handles.chunks(10) {
                    if extend(sqs, queue_url, chunk, visibility).await {
                        extensions += 1;
                    }
                }
            }
        }
    }
}

/// Makes the messages of `receipt_handles` (ten at most) invisible for
/// `visibility` from now; `false` if SQS did not take it.
async fn extend(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    receipt_handles: &[&str],
    visibility: Duration,
) -> bool {
    let entries = batch_entries(receipt_handles.iter().map(|r| (*r, visibility)));
    let extended = sqs
        .change_message_visibility_batch()
        .queue_url(queue_url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())
        .and_then(|out| match out.failed().first() {
            None => Ok(()),
            Some(failed) => Err(format!(
                "{} of {} refused: {}",
                out.failed().len(),
                receipt_handles.len(),
                failed.code()
            )),
        });
    match extended {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(
                %error,
                "could not extend a message's visibility; it may be redelivered while still in hand"
            );
            false
        }
    }
}

/// ChangeMessageVisibilityBatch entries (ten at most per call): each
/// receipt handle invisible for its own duration from now.
pub fn batch_entries<'a>(
    receipts: impl IntoIterator<Item = (&'a str, Duration)>,
) -> Vec<ChangeMessageVisibilityBatchRequestEntry> {
    receipts
        .into_iter()
        .enumerate()
        .filter_map(|(i, (receipt_handle, invisible_for))| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(receipt_handle)
                .visibility_timeout(seconds(invisible_for))
                .build()
                .ok()
        })
        .collect()
}

/// SQS takes visibility timeouts in whole seconds, 0 to 12 hours.
pub fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().min(43_200)).unwrap_or(43_200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_is_whole_seconds_within_limits() {
        assert_eq!(seconds(Duration::from_millis(2_900)), 2);
        assert_eq!(seconds(Duration::from_secs(100_000)), 43_200);
    }
}
