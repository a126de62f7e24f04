//! Documents that are kept for a while and then deleted: published outbox
//! rows, inbox entries, refresh tokens, idempotency keys. Each names the
//! time after which it may go in one date field; a scheduled sweep deletes
//! what has passed, by an indexed range query, a bounded chunk at a time.
//!
//! Why not a TTL index (local stand-in: "TTL scans under a lock", see
//! `crate::mongo::server`): SecantusDB, the local stack's server, expires TTL
//! indexes every 60 s by scanning and decoding every document of every
//! TTL-indexed collection on the server while it holds its storage lock.
//! With the outbox and the inbox gaining a row per order, a 10-minute soak
//! at 84 orders/s saw ~5 s stalls once a minute and single operations of
//! up to 720 ms. The sweep here reads only the expired rows through the
//! index and behaves the same on MongoDB.

use std::sync::Arc;

use bson::{Bson, DateTime, Document, doc};
use futures::TryStreamExt;
use mongodb::{Collection, Database, IndexModel};

/// Documents deleted per statement: one short write at a time, so the sweep
/// never holds the server for long while orders are being written.
pub const CHUNK: usize = 500;

/// Statements per collection per sweep: a backlog larger than this many
/// chunks waits for the next sweep instead of making this one unbounded.
pub const MAX_CHUNKS_PER_SWEEP: usize = 200;

/// A collection whose documents are deleted once the time in `field` has
/// passed. Documents without the field (e.g. pending outbox rows) stay.
#[derive(Debug, Clone)]
pub struct Expiring {
    collection: Collection<Document>,
    field: &'static str,
}

impl Expiring {
    pub fn new(db: &Database, collection: &str, field: &'static str) -> Self {
        Expiring {
            collection: db.collection(collection),
            field,
        }
    }

    pub fn collection_name(&self) -> &str {
        self.collection.name()
    }

    /// An ascending index on the field, what the sweep's range query uses.
    /// An earlier version of this service made it a TTL index under the
    /// same name; that one is dropped first, since an index cannot be
    /// recreated with different options.
    pub async fn create_index(&self) -> mongodb::error::Result<()> {
        let keys = doc! { self.field: 1 };
        let existing: Vec<IndexModel> = match self.collection.list_indexes().await {
            Ok(indexes) => indexes.try_collect().await?,
            // A collection not yet created has no indexes to replace.
            Err(e) if crate::mongo::is_command_error(&e, NAMESPACE_NOT_FOUND) => Vec::new(),
            Err(e) => return Err(e),
        };
        for index in existing {
            let is_ttl = index
                .options
                .as_ref()
                .is_some_and(|o| o.expire_after.is_some());
            if same_keys(&index.keys, &keys) && is_ttl {
                let name = index.options.and_then(|o| o.name).unwrap_or_default();
                tracing::info!(
                    collection = self.collection.name(),
                    index = %name,
                    "replacing a TTL index with the sweep's plain one"
                );
                if let Err(e) = self.collection.drop_index(name).await {
                    // Another instance starting at the same time dropped it.
                    if !crate::mongo::is_command_error(&e, INDEX_NOT_FOUND) {
                        return Err(e);
                    }
                }
            }
        }
        self.collection
            .create_index(IndexModel::builder().keys(keys).build())
            .await?;
        Ok(())
    }

    /// Deletes the documents whose time is before `now`, up to
    /// `MAX_CHUNKS_PER_SWEEP` chunks of `CHUNK`; answers how many went.
    pub async fn delete_expired(&self, now: DateTime) -> mongodb::error::Result<u64> {
        let expired = doc! { self.field: { "$lt": now } };
        let mut deleted = 0;
        for _ in 0..MAX_CHUNKS_PER_SWEEP {
            let ids: Vec<Bson> = self
                .collection
                .find(expired.clone())
                .projection(doc! { "_id": 1 })
                .limit(i64::try_from(CHUNK).unwrap_or(i64::MAX))
                .await?
                .try_collect::<Vec<Document>>()
                .await?
                .into_iter()
                .filter_map(|mut d| d.remove("_id"))
                .collect();
            if ids.is_empty() {
                break;
            }
            let found = ids.len();
            // The time is checked again: a row may have been given a later
            // one since it was read.
            let mut filter = expired.clone();
            filter.insert("_id", doc! { "$in": ids });
            deleted += self.collection.delete_many(filter).await?.deleted_count;
            if found < CHUNK {
                break;
            }
        }
        Ok(deleted)
    }
}

/// Whether two index key documents name the same fields in the same order
/// with the same directions. Compared by number, not BSON type: a server
/// or another tool may have stored `1` as an int64 or a double.
fn same_keys(a: &Document, b: &Document) -> bool {
    let number = |v: &Bson| match v {
        Bson::Int32(n) => Some(f64::from(*n)),
        Bson::Int64(n) => Some(*n as f64),
        Bson::Double(n) => Some(*n),
        _ => None,
    };
    a.len() == b.len()
        && a.iter().zip(b.iter()).all(|((ka, va), (kb, vb))| {
            ka == kb
                && match (number(va), number(vb)) {
                    (Some(x), Some(y)) => x == y,
                    _ => va == vb,
                }
        })
}

const INDEX_NOT_FOUND: i32 = 27;
const NAMESPACE_NOT_FOUND: i32 = 26;

/// One pass over every collection; a failure on one is logged and the
/// others still run. Answers the total deleted.
pub async fn sweep(expiring: &[Expiring], now: DateTime) -> u64 {
    let mut total = 0;
    for collection in expiring {
        match collection.delete_expired(now).await {
            Ok(0) => {}
            Ok(deleted) => {
                total += deleted;
                metrics::counter!(
                    "expired_documents_deleted_total",
                    "collection" => collection.collection_name().to_string()
                )
                .increment(deleted);
                tracing::debug!(
                    collection = collection.collection_name(),
                    deleted,
                    "expired documents deleted"
                );
            }
            Err(e) => tracing::warn!(
                collection = collection.collection_name(),
                error = %e,
                "deleting expired documents failed; the next sweep tries again"
            ),
        }
    }
    total
}

/// Runs `sweep` on `schedule` (cron with seconds). A sweep still running
/// when the next is due makes that one a no-op rather than a second writer.
pub async fn start_sweep(
    schedule: &str,
    expiring: Vec<Expiring>,
) -> anyhow::Result<crate::schedule::JobScheduler> {
    let expiring = Arc::new(expiring);
    let running = Arc::new(tokio::sync::Mutex::new(()));
    crate::schedule::every(SETTING, schedule, move || {
        let expiring = expiring.clone();
        let running = running.clone();
        async move {
            let Ok(_only) = running.try_lock() else {
                return;
            };
            sweep(&expiring, DateTime::now()).await;
        }
    })
    .await
}

/// Where the schedule is set.
pub const SETTING: &str = "EXPIRY_SWEEP_SCHEDULE";

/// How often expired documents are looked for unless `EXPIRY_SWEEP_SCHEDULE`
/// says otherwise: once a minute, as MongoDB's own TTL monitor does.
pub const DEFAULT_SCHEDULE: &str = "0 * * * * *";

/// `EXPIRY_SWEEP_SCHEDULE`, or the default.
pub fn schedule_from_env() -> String {
    crate::config::optional(SETTING).unwrap_or_else(|| DEFAULT_SCHEDULE.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_compare_by_name_and_number_not_type() {
        let ours = doc! { "expires_at": 1 };
        assert!(same_keys(&doc! { "expires_at": 1_i64 }, &ours));
        assert!(same_keys(&doc! { "expires_at": 1.0 }, &ours));
        assert!(!same_keys(&doc! { "expires_at": -1 }, &ours));
        assert!(!same_keys(&doc! { "other": 1 }, &ours));
        assert!(!same_keys(&doc! { "expires_at": 1, "other": 1 }, &ours));
        assert!(!same_keys(&doc! { "expires_at": "hashed" }, &ours));
    }
}
