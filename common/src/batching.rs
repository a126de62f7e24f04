//! The receiving end of a group commit: the first waiting item, then
//! whatever else is already waiting or, with a linger, arrives within it.
//! Under load the batches grow by themselves; alone, an item goes at once
//! (or after the linger).

use std::time::Duration;

use tokio::{
    sync::mpsc::{self, error::TryRecvError},
    time::Instant,
};

/// The next batch from `queue` (at most `max` items, at least one), or
/// `None` once every sender is gone and the queue is empty. Never waits
/// once it has an item.
pub async fn next_batch<T>(queue: &mut mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    next_batch_lingering(queue, max, Duration::ZERO).await
}

/// [`next_batch`], but once the first item is in, also waits up to
/// `linger` for more (as Kafka's `linger.ms`): at a moderate rate items
/// arrive a few milliseconds apart, and a short wait turns a write per item
/// into a write per batch. A full batch goes at once.
pub async fn next_batch_lingering<T>(
    queue: &mut mpsc::Receiver<T>,
    max: usize,
    linger: Duration,
) -> Option<Vec<T>> {
    let first = queue.recv().await?;
    let mut batch = vec![first];
    fill_lingering(queue, &mut batch, max, linger, |_| 1).await;
    Some(batch)
}

/// Adds to `batch`, whose first item just came in, whatever else is
/// waiting or arrives within `linger` from now, until the items' total
/// `size` reaches `max`: the waiting half of [`next_batch_lingering`], for
/// a caller that receives its first item itself (in a `select!` beside
/// other work) or whose items are unequal (a hand-over of several rows).
pub async fn fill_lingering<T>(
    queue: &mut mpsc::Receiver<T>,
    batch: &mut Vec<T>,
    max: usize,
    linger: Duration,
    size: impl Fn(&T) -> usize,
) {
    let until = Instant::now() + linger;
    let mut total: usize = batch.iter().map(&size).sum();
    while total < max {
        let item = match queue.try_recv() {
            Ok(item) => item,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) if linger.is_zero() => break,
            Err(TryRecvError::Empty) => match tokio::time::timeout_at(until, queue.recv()).await {
                Ok(Some(item)) => item,
                Ok(None) | Err(_) => break,
            },
        };
        total += size(&item);
        batch.push(item);
    }
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

    #[tokio::test]
    async fn a_linger_takes_what_arrives_within_it_and_no_more() {
        let (tx, mut rx) = mpsc::channel(8);
        let (go_on, later) = tokio::sync::oneshot::channel::<()>();
        let sender = tokio::spawn(async move {
            tx.send(0).await.expect("room");
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.send(1).await.expect("room");
            tx.send(2).await.expect("room");
            // Only once the first batch has been taken.
            later.await.expect("go on");
            tx.send(3).await.expect("room");
        });
        let linger = Duration::from_millis(500);
        let started = Instant::now();
        assert_eq!(
            next_batch_lingering(&mut rx, 8, linger).await,
            Some(vec![0, 1, 2]),
            "what arrived within the linger, and it ended with nothing more coming"
        );
        assert!(started.elapsed() >= linger, "it waited out the linger");
        go_on.send(()).expect("sender waits");
        assert_eq!(
            next_batch_lingering(&mut rx, 8, linger).await,
            Some(vec![3])
        );
        sender.await.expect("sender");
        assert_eq!(next_batch_lingering(&mut rx, 8, linger).await, None);
    }

    #[tokio::test]
    async fn filling_counts_each_item_by_its_size_and_stops_once_full() {
        let (tx, mut rx) = mpsc::channel(8);
        for rows in [vec![1, 2], vec![3, 4, 5], vec![6]] {
            tx.send(rows).await.expect("room");
        }
        let mut batch = vec![vec![0]];
        // A linger far longer than the bound: full at 1 + 2 + 3 rows, it
        // must go at once, leaving the last hand-over waiting.
        tokio::time::timeout(
            Duration::from_secs(30),
            fill_lingering(&mut rx, &mut batch, 5, Duration::from_secs(3600), Vec::len),
        )
        .await
        .expect("went at once");
        assert_eq!(batch.concat(), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(rx.try_recv().expect("left waiting"), vec![6]);
    }

    #[tokio::test]
    async fn a_full_batch_does_not_wait_out_the_linger() {
        let (tx, mut rx) = mpsc::channel(8);
        for n in 0..3 {
            tx.send(n).await.expect("room");
        }
        // A linger far longer than the bound: only a batch that went at once
        // comes back within it.
        let batch = tokio::time::timeout(
            Duration::from_secs(30),
            next_batch_lingering(&mut rx, 3, Duration::from_secs(3600)),
        )
        .await
        .expect("a full batch goes at once");
        assert_eq!(batch, Some(vec![0, 1, 2]));
        drop(tx);
    }
}
