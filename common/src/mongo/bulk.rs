//! Several writes inside a transaction as one command: a client `bulkWrite`
//! where the server takes it, one statement each where it does not (as
//! decided at start-up in [`super::server`], or on the first refusal met).
//! Placing writes a batch of orders this way, processing a batch of events.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use mongodb::{
    ClientSession, Database,
    bson::Document,
    error::{Error, ErrorKind},
    options::WriteModel,
};

use super::server::{OrderWrites, server};

/// How a service sends its batches of writes: bulkWrite until the server
/// refuses it, one statement each from then on. Cheap to clone; each
/// service holds one.
#[derive(Clone)]
pub struct Writes {
    /// As decided at start-up, or set on the first refusal met at run time
    /// (an Atlas tier whose featureCompatibilityVersion could not be read).
    one_by_one: Arc<AtomicBool>,
}

impl Writes {
    /// As [`server`] decided.
    pub fn as_decided() -> Writes {
        let one_by_one = server().order_writes == OrderWrites::OneStatementEach;
        Writes {
            one_by_one: Arc::new(one_by_one.into()),
        }
    }
}

/// A write of [`write_all`] failed: which one, when known.
pub struct Failed {
    pub index: Option<usize>,
    pub error: Error,
}

/// Sends `writes` in the caller's transaction, in order. Returns each
/// update's matched count by its index in `writes`. A refusal of bulkWrite
/// is remembered (later calls go one statement each, and
/// `order_batch_fallbacks_total{reason="bulk_write_refused"}` counts it)
/// and returned: the caller's transaction runs again.
pub async fn write_all(
    how: &Writes,
    db: &Database,
    session: &mut ClientSession,
    writes: Vec<WriteModel>,
) -> Result<HashMap<usize, u64>, Failed> {
    if writes.is_empty() {
        return Ok(HashMap::new());
    }
    if !how.one_by_one.load(Ordering::Relaxed) {
        return match db
            .client()
            .bulk_write(writes)
            .verbose_results()
            .session(&mut *session)
            .await
        {
            Ok(written) => Ok(written
                .update_results
                .iter()
                .map(|(index, result)| (*index, result.matched_count))
                .collect()),
            Err(error) => {
                if super::is_bulk_write_refused(&error)
                    && !how.one_by_one.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(%error, "the server refuses bulkWrite (MongoDB or its featureCompatibilityVersion below 8.0); batches are written one statement at a time from now on");
                    metrics::counter!(crate::metrics::BATCH_FALLBACKS, "reason" => "bulk_write_refused").increment(1);
                }
                let index = match error.kind.as_ref() {
                    ErrorKind::BulkWrite(e) => e.write_errors.keys().min().copied(),
                    _ => None,
                };
                Err(Failed { index, error })
            }
        };
    }
    let mut matched = HashMap::new();
    for (index, write) in writes.into_iter().enumerate() {
        let written = match write {
            WriteModel::InsertOne(m) => db
                .collection::<Document>(&m.namespace.coll)
                .insert_one(m.document)
                .session(&mut *session)
                .await
                .map(|_| ()),
            WriteModel::UpdateOne(m) => db
                .collection::<Document>(&m.namespace.coll)
                .update_one(m.filter, m.update)
                .session(&mut *session)
                .await
                .map(|result| {
                    matched.insert(index, result.matched_count);
                }),
            other => Err(Error::custom(format!("no statement form for {other:?}"))),
        };
        written.map_err(|error| Failed {
            index: Some(index),
            error,
        })?;
    }
    Ok(matched)
}
