//! Recording `SENT` for emails SMTP accepted: many at once (group commit).
//!
//! After SMTP accepts an email its order must say `SENT`; recorded one by
//! one, that is a transaction per email (an update and a commit). Here
//! every send that has just gone through waits in one queue, and one writer
//! records whatever is waiting in one write and answers each. A lone email
//! is recorded the same way, after the linger.
//!
//! Each send waits for its own record before it counts as done, so a crash
//! before the record leaves the email `SENDING`: its lease runs out and it
//! is sent again with the same Message-ID.

use std::{collections::BTreeMap, time::Duration};

use bson::{DateTime, oid::ObjectId};
use common::domain::{EmailKind, Order, OrderStatus};
use mongodb::{Database, error::Error as MongoError};
use tokio::sync::{mpsc, oneshot};

use common::orders::email as store;

/// Emails recorded in one write, at most.
const MAX_BATCH: usize = 64;
/// Handlers waiting for the writer before they wait for room.
const QUEUE_DEPTH: usize = 256;

struct Sent {
    order: ObjectId,
    kind: EmailKind,
    /// The order's status when the email was sent, for its timeline entry.
    status: OrderStatus,
    /// When the SMTP server accepted it: its `sent_at`, however long the
    /// record then waits for others.
    accepted_at: DateTime,
    recorded: oneshot::Sender<mongodb::error::Result<()>>,
}

/// The handlers' end. Cheap to clone; the writer stops with the last clone.
#[derive(Clone)]
pub struct SentLog {
    queue: mpsc::Sender<Sent>,
}

impl SentLog {
    /// Starts the writer, which waits up to `linger` after a first record
    /// for others (the emails of one batch are sent side by side and finish
    /// a few milliseconds apart).
    pub fn start(db: Database, linger: Duration) -> SentLog {
        let (queue, waiting) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(write_until_closed(db, waiting, linger));
        SentLog { queue }
    }

    /// Records that SMTP accepted `kind` of `order`'s emails, in whatever
    /// write it lands in; returns once that write committed.
    pub async fn record(&self, order: &Order, kind: EmailKind) -> mongodb::error::Result<()> {
        let (recorded, answer) = oneshot::channel();
        let sent = Sent {
            order: order.id,
            kind,
            status: order.status,
            accepted_at: DateTime::now(),
            recorded,
        };
        self.queue
            .send(sent)
            .await
            .map_err(|_| MongoError::custom("the SENT writer stopped"))?;
        answer
            .await
            .map_err(|_| MongoError::custom("the SENT writer dropped a record"))?
    }
}

/// Takes the first waiting record, then whatever else arrives within the
/// linger, and writes them.
async fn write_until_closed(db: Database, mut waiting: mpsc::Receiver<Sent>, linger: Duration) {
    while let Some(batch) =
        common::batching::next_batch_lingering(&mut waiting, MAX_BATCH, linger).await
    {
        write(&db, batch).await;
    }
}

/// One write per kind of email and order status in `batch` (usually one:
/// confirmations of PROCESSED orders), each answered with its outcome.
async fn write(db: &Database, batch: Vec<Sent>) {
    let mut groups: BTreeMap<(&'static str, &'static str), Vec<Sent>> = BTreeMap::new();
    for sent in batch {
        groups
            .entry((sent.kind.field(), sent.status.as_str()))
            .or_default()
            .push(sent);
    }
    for group in groups.into_values() {
        let accepted: Vec<(ObjectId, DateTime)> = group
            .iter()
            .map(|sent| (sent.order, sent.accepted_at))
            .collect();
        let written = store::record_sent(db, &accepted, group[0].kind, group[0].status).await;
        for sent in group {
            let _ = sent.recorded.send(written.clone());
        }
    }
}
