//! The receiving end of a group commit: the first waiting item, then
//! whatever else is already waiting. Under load a batch is what queued
//! while the previous one was written, so batches grow by themselves;
//! alone, an item goes at once. Nothing waits for a batch to fill (as
//! PostgreSQL's `commit_delay`, 0 by default).

use tokio::sync::mpsc;

/// The next batch from `queue` (at most `max` items, at least one), or
/// `None` once every sender is gone and the queue is empty.
pub async fn next_batch<T>(queue: &mut mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    let first = queue.recv().await?;
    let mut batch = vec![first];
    while batch.len() < max {
        match queue.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn takes_what_is_waiting_up_to_the_limit_and_ends_with_the_senders() {
        let (tx, mut rx) = mpsc::channel(8);
        for n in 0..5 {
            tx.send(n).await.expect("room");
        }
        assert_eq!(next_batch(&mut rx, 3).await, Some(vec![0, 1, 2]));
        assert_eq!(next_batch(&mut rx, 3).await, Some(vec![3, 4]));
        drop(tx);
        assert_eq!(next_batch(&mut rx, 3).await, None);
    }
}
