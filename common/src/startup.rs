//! Start-up against dependencies that may still be starting: retry with
//! capped exponential backoff, say so in the log, give up with a clear error.

use std::{future::Future, time::Duration};

use anyhow::Context;
use backon::Retryable;

/// Runs `attempt` until it succeeds or `within` has been spent waiting.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let backoff = crate::backoff::Schedule::new(Duration::from_millis(250), Duration::from_secs(5))
        .builder()
        .with_total_delay(Some(within));
    attempt
        .retry(backoff)
        .notify(|error, delay| {
            tracing::warn!(
                dependency = what,
                error = %format!("{error:#}"),
                retry_in = ?delay,
                "waiting for {what}"
            );
        })
        .await
        .with_context(|| format!("{what} was not reachable within {within:?}"))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn retries_until_the_dependency_answers() {
        let calls = AtomicU32::new(0);
        let value = wait_for("thing", Duration::from_secs(5), || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                anyhow::bail!("not yet")
            }
            Ok(42)
        })
        .await
        .expect("answers on the third try");
        assert_eq!(value, 42);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn gives_up_with_the_dependency_named() {
        let result: anyhow::Result<()> =
            wait_for("MongoDB", Duration::from_millis(300), || async {
                anyhow::bail!("refused")
            })
            .await;
        let message = format!("{:#}", result.expect_err("never answers"));
        assert!(message.contains("MongoDB was not reachable"), "{message}");
        assert!(message.contains("refused"), "{message}");
    }
}
