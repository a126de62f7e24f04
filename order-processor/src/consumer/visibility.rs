//! Keeping a message invisible while its handler runs (heartbeat), and
//! choosing how long it stays invisible after a transient failure (backoff).

use std::{future::Future, time::Duration};

use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry;

/// Handler ran past its deadline; the message is left for redelivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

/// Runs `work`, extending the message's visibility every third of the
/// visibility timeout so SQS does not hand it to another consumer meanwhile,
/// and gives up after `deadline`. Returns how many extensions it made.
pub async fn with_heartbeat<T>(
    work: impl Future<Output = T>,
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    receipt_handle: &str,
    visibility: Duration,
    deadline: Duration,
) -> (Result<T, TimedOut>, u32) {
    with_heartbeats(
        work,
        sqs,
        queue_url,
        &[receipt_handle],
        visibility,
        deadline,
    )
    .await
}

/// [`with_heartbeat`] for work on several messages at once (a batch's
/// shared transaction): every one of them is kept invisible, in one call
/// per ten messages.
pub async fn with_heartbeats<T>(
    work: impl Future<Output = T>,
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    receipt_handles: &[&str],
    visibility: Duration,
    deadline: Duration,
) -> (Result<T, TimedOut>, u32) {
    let every = (visibility / 3).max(Duration::from_secs(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let timeout = tokio::time::sleep(deadline);
    tokio::pin!(work, timeout);
    let mut extensions = 0;
    loop {
        tokio::select! {
            out = &mut work => return (Ok(out), extensions),
            () = &mut timeout => return (Err(TimedOut), extensions),
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
    let extended = if let [receipt_handle] = receipt_handles {
        sqs.change_message_visibility()
            .queue_url(queue_url)
            .receipt_handle(*receipt_handle)
            .visibility_timeout(seconds(visibility))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())
    } else {
        let entries = batch_entries(receipt_handles.iter().map(|r| (*r, visibility)));
        sqs.change_message_visibility_batch()
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
            })
    };
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

/// How long a message waits before its next attempt, given how many times it
/// has been received: `base * 2^(receives-1)`, capped, with ±20% jitter so a
/// burst of failures does not come back as a burst.
pub fn retry_delay(receive_count: u32, base: Duration, cap: Duration) -> Duration {
    let exponent = receive_count.saturating_sub(1).min(20);
    let raw = base.saturating_mul(1u32 << exponent).min(cap);
    let jitter = 0.8 + 0.4 * rand::random::<f64>();
    raw.mul_f64(jitter).min(cap)
}

/// SQS takes visibility timeouts in whole seconds, 0 to 12 hours.
pub fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().min(43_200)).unwrap_or(43_200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_per_receive_and_is_capped() {
        let base = Duration::from_secs(2);
        let cap = Duration::from_secs(60);
        let within = |d: Duration, nominal: f64| {
            let s = d.as_secs_f64();
            s >= nominal * 0.8 - 1e-9 && s <= nominal * 1.2 + 1e-9
        };
        assert!(within(retry_delay(1, base, cap), 2.0));
        assert!(within(retry_delay(2, base, cap), 4.0));
        assert!(within(retry_delay(4, base, cap), 16.0));
        assert!(retry_delay(10, base, cap) <= cap);
        assert!(retry_delay(u32::MAX, base, cap) <= cap, "no overflow");
        assert!(
            within(retry_delay(0, base, cap), 2.0),
            "a first receive counts as one"
        );
    }

    #[test]
    fn visibility_is_whole_seconds_within_limits() {
        assert_eq!(seconds(Duration::from_millis(2_900)), 2);
        assert_eq!(seconds(Duration::from_secs(100_000)), 43_200);
    }
}
