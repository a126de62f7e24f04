//! Following the outbox's change stream, so a row committed by ANY instance
//! wakes this relay at once.
//!
//! Rows written already claimed (an order's row, which the instance that
//! wrote it hands straight to its own relay) wake nobody: the stream carries
//! only inserts that no relay holds yet.
//!
//! The resume token is stored at most every [`STORE_EVERY`], so a restart
//! continues about where it left off: it may see a few events again, which
//! only wakes the relay once more. If the server no longer has that point in
//! its history, the stored token is dropped and the relay is woken for a
//! full scan of pending rows: nothing is missed, because the relay reads the
//! rows themselves, never the events.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bson::{Document, doc};
use futures::StreamExt;
use mongodb::{Database, change_stream::event::ResumeToken};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const STATE: &str = "relay_state";
const TOKEN_ID: &str = "outbox-change-stream";
/// How often the resume token is saved at most: one write per insert would
/// cost the database as much as publishing the row.
const STORE_EVERY: Duration = Duration::from_secs(5);

async fn stored_token(db: &Database) -> Option<ResumeToken> {
    let state = db
        .collection::<Document>(STATE)
        .find_one(doc! { "_id": TOKEN_ID })
        .await
        .ok()??;
    bson::from_bson(state.get("token")?.clone()).ok()
}

async fn store_token(db: &Database, token: &ResumeToken) {
    let Ok(value) = bson::to_bson(token) else {
        return;
    };
    let saved = db
        .collection::<Document>(STATE)
        .update_one(
            doc! { "_id": TOKEN_ID },
            doc! { "$set": { "token": value, "at": bson::DateTime::now() } },
        )
        .upsert(true)
        .await;
    if let Err(e) = saved {
        tracing::debug!(error = %e, "could not store the change stream's resume token");
    }
}

async fn forget_token(db: &Database) {
    let _ = db
        .collection::<Document>(STATE)
        .delete_one(doc! { "_id": TOKEN_ID })
        .await;
}

/// Wakes `wake` for every insert into the outbox, until `shutdown`.
pub async fn follow_outbox(db: Database, wake: Arc<Notify>, shutdown: CancellationToken) {
    let outbox = db.collection::<Document>("outbox");
    let mut delay = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        let resume = stored_token(&db).await;
        let resuming = resume.is_some();
        let opened = outbox
            .watch()
            .pipeline([doc! { "$match": {
                "operationType": "insert",
                "fullDocument.lease_owner": null,
            } }])
            .resume_after(resume)
            .await;
        let mut stream = match opened {
            Ok(stream) => {
                delay = Duration::from_millis(500);
                stream
            }
            Err(e) => {
                if resuming {
                    // Most likely the history behind our token is gone.
                    tracing::warn!(error = %e, "cannot resume the outbox change stream; scanning instead");
                    forget_token(&db).await;
                    wake.notify_one();
                } else {
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot open the outbox change stream");
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let mut stored_at: Option<Instant> = None;
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => {
                    if stored_at.is_some() && let Some(token) = stream.resume_token() {
                        store_token(&db, &token).await;
                    }
                    return;
                }
                next = stream.next() => next,
            };
            match next {
                Some(Ok(_event)) => {
                    wake.notify_one();
                    let due = stored_at.is_none_or(|at| at.elapsed() >= STORE_EVERY);
                    if due && let Some(token) = stream.resume_token() {
                        store_token(&db, &token).await;
                        stored_at = Some(Instant::now());
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "outbox change stream failed; reopening");
                    // Anything inserted meanwhile is found by a scan.
                    wake.notify_one();
                    break;
                }
                None => break,
            }
        }
    }
}
