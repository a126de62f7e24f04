//! MongoDB client setup and the error facts callers act on.

use anyhow::Context;
use mongodb::{
    Client, ClientSession, Collection, Database,
    bson::{Document, doc},
    error::{
        Error, ErrorKind, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT,
        WriteFailure,
    },
    event::{EventHandler, command::CommandEvent},
    options::ClientOptions,
};
use secrecy::ExposeSecret;

use crate::config::MongoConfig;

pub const DUPLICATE_KEY: i32 = 11000;
/// The server does not know the command.
pub const COMMAND_NOT_FOUND: i32 = 59;
/// The server's "operation exceeded time limit" (maxTimeMS, maxCommitTimeMS).
pub const MAX_TIME_MS_EXPIRED: i32 = 50;

/// Connects and proves the server answers, so a wrong URI fails at start-up
/// with a clear message instead of on the first request.
pub async fn connect(config: &MongoConfig, app_name: &str) -> anyhow::Result<Database> {
    let mut options = ClientOptions::parse(config.uri.expose_secret())
        .await
        .context("parsing MONGODB_URI")?;
    options.app_name = Some(app_name.to_string());
    options.server_selection_timeout = Some(config.server_selection_timeout);
    options.command_event_handler = Some(EventHandler::callback(count_command));
    let client = Client::with_options(options).context("building the MongoDB client")?;
    let db = client.database(&config.database);
    db.run_command(doc! { "ping": 1 }).await.with_context(|| {
        format!(
            "MongoDB did not answer a ping within {:?} (is it running? `make stack-up` starts it)",
            config.server_selection_timeout
        )
    })?;
    log_server(&client, app_name).await;
    Ok(db)
}

/// Logs the server's version and featureCompatibilityVersion, and warns
/// when either refuses the client bulkWrite the order batches use (MongoDB
/// 8.0, FCV 8.0: a data volume upgraded from mongo:7 keeps FCV 7.0 until
/// an operator raises it). Servers that do not answer these are logged as
/// such; nothing here stops a start.
async fn log_server(client: &Client, app_name: &str) {
    let admin = client.database("admin");
    let version = admin
        .run_command(doc! { "buildInfo": 1 })
        .await
        .ok()
        .and_then(|info| info.get_str("version").ok().map(str::to_string));
    let fcv = admin
        .run_command(doc! { "getParameter": 1, "featureCompatibilityVersion": 1 })
        .await
        .ok()
        .and_then(|answer| {
            let fcv = answer.get_document("featureCompatibilityVersion").ok()?;
            fcv.get_str("version").ok().map(str::to_string)
        });
    let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
    tracing::info!(service = app_name, version = %shown(&version), feature_compatibility = %shown(&fcv), "connected to MongoDB");
    let below_8 = |v: &Option<String>| v.as_deref().is_some_and(below_bulk_write);
    if below_8(&version) || below_8(&fcv) {
        tracing::warn!(
            version = %shown(&version),
            feature_compatibility = %shown(&fcv),
            "MongoDB refuses bulkWrite below version 8.0 or featureCompatibilityVersion 8.0: \
             order batches are written one statement at a time (slower; counted in \
             order_batch_fallbacks_total). Raise it with \
             db.adminCommand({{setFeatureCompatibilityVersion: \"8.0\", confirm: true}})"
        );
    }
}

/// Whether a server version or featureCompatibilityVersion ("7.0",
/// "8.2.11") is below 8.0, where the client bulkWrite command arrived.
fn below_bulk_write(version: &str) -> bool {
    version
        .split('.')
        .next()
        .and_then(|major| major.parse::<u32>().ok())
        .is_some_and(|major| major < 8)
}

/// Whether `error` is the server (or the driver, for a server before 8.0)
/// refusing the client bulkWrite command.
pub fn is_bulk_write_refused(error: &Error) -> bool {
    match error.kind.as_ref() {
        ErrorKind::IncompatibleServer { .. } => true,
        // CommandNotFound, or a server that knows the command but not at
        // this featureCompatibilityVersion.
        ErrorKind::Command(e) => {
            e.code == COMMAND_NOT_FOUND
                || (e.message.contains("bulkWrite") && e.message.contains("feature"))
        }
        _ => false,
    }
}

/// Every command sent, counted by its name and the collection it names
/// (`mongodb_commands_total`): what the service costs the database, in
/// round trips, by statement. `commitTransaction` and the like name none.
fn count_command(event: CommandEvent) {
    if let CommandEvent::Started(started) = event {
        let collection = started
            .command
            .get(&started.command_name)
            .and_then(|target| target.as_str())
            .unwrap_or("")
            .to_string();
        metrics::counter!(
            crate::metrics::MONGODB_COMMANDS,
            "command" => started.command_name,
            "collection" => collection
        )
        .increment(1);
    }
}

/// Whether `error` is a unique-index violation (code 11000). Matched by code:
/// some servers leave `code_name` empty.
pub fn is_duplicate_key(error: &Error) -> bool {
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(e) => e
            .write_errors
            .as_ref()
            .is_some_and(|errors| errors.iter().any(|e| e.code == DUPLICATE_KEY)),
        ErrorKind::BulkWrite(e) => e.write_errors.values().any(|e| e.code == DUPLICATE_KEY),
        _ => false,
    }
}

/// Whether `error` is the server refusing a command with `code` (e.g. 26,
/// NamespaceNotFound; 27, IndexNotFound).
pub fn is_command_error(error: &Error, code: i32) -> bool {
    matches!(error.kind.as_ref(), ErrorKind::Command(e) if e.code == code)
}

/// Whether `error` means the database could not be reached (as opposed to
/// a request it refused): the API answers 503 for these, not 500.
pub fn is_unavailable(error: &Error) -> bool {
    matches!(
        error.kind.as_ref(),
        ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
    ) || error.contains_label(mongodb::error::RETRYABLE_WRITE_ERROR)
}

/// Whether `error` leaves a commit's outcome unknown: the commit was sent
/// and no answer says whether it took effect. Never "not written".
pub fn outcome_unknown(error: &Error) -> bool {
    error.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
}

/// An aggregation expression for a pipeline update over several documents
/// that gives each its own value: `values[i]` to the document whose `_id` is
/// `ids[i]`. Both lists are literals, so no value is read as a field path.
pub fn value_by_id<V: Into<bson::Bson> + Clone>(
    ids: &[bson::oid::ObjectId],
    values: &[V],
) -> bson::Document {
    let values: Vec<bson::Bson> = values.iter().cloned().map(Into::into).collect();
    doc! { "$arrayElemAt": [
        { "$literal": values },
        { "$indexOfArray": [{ "$literal": ids }, "$_id"] },
    ] }
}

/// What `find_one_and_update(filter, update)` with `ReturnDocument::After`
/// answers, as two statements: the conditional update, then, if it matched,
/// a read of that document by the filter's `_id` (which `filter` must name).
/// Inside a transaction (`session` given, in one) the pair is as atomic as
/// the single command. Without one, the read may also see a later writer's
/// change: callers use it where the claim is the update and what they read
/// back is the document's content.
///
/// Why not the one command: SecantusDB, the local stack's server, writes a
/// findAndModify through the filter `{_id, $and: [filter]}` and answers that
/// by scanning the whole collection. Measured against it (a transaction each,
/// 500-byte documents): findAndModify 9.4 ms at 1,000 documents, 72 ms at
/// 5,000 and 147 ms at 20,000; this pair 1.9, 1.5 and 2.0 ms.
pub async fn update_then_read<T>(
    collection: &Collection<T>,
    mut session: Option<&mut ClientSession>,
    filter: Document,
    update: Document,
) -> mongodb::error::Result<Option<T>>
where
    T: serde::de::DeserializeOwned + Send + Sync,
{
    let id = filter
        .get("_id")
        .cloned()
        .ok_or_else(|| Error::custom("update_then_read needs a filter on _id"))?;
    let update = collection.update_one(filter, update);
    let updated = match session.as_deref_mut() {
        Some(session) => update.session(session).await?,
        None => update.await?,
    };
    if updated.matched_count == 0 {
        return Ok(None);
    }
    let read = collection.find_one(doc! { "_id": id });
    match session {
        Some(session) => read.session(session).await,
        None => read.await,
    }
}

/// `value` as BSON for a statement, a serialization failure as the
/// driver's error (so it fails the statement's transaction like any other).
pub fn bson_of<T: serde::Serialize + ?Sized>(value: &T) -> mongodb::error::Result<bson::Bson> {
    bson::to_bson(value).map_err(mongodb::error::Error::custom)
}

/// `at` plus `span`, saturating instead of overflowing.
pub fn later(at: bson::DateTime, span: std::time::Duration) -> bson::DateTime {
    let ms = i64::try_from(span.as_millis()).unwrap_or(i64::MAX);
    bson::DateTime::from_millis(at.timestamp_millis().saturating_add(ms))
}

/// A transaction's deadline passed before its commit was sent: it was
/// aborted, nothing was written. (A commit once sent is never cut off by a
/// deadline: its answer is waited for.)
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the deadline passed before the transaction could commit; nothing was written")]
pub struct DeadlineBeforeCommit;

/// How long a transaction is rerun on transient errors and its commit
/// retried on an unknown result, as the driver's own `with_transaction`.
const TRANSACTION_RETRY_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Runs `body` in one transaction on a fresh session: committed whole, or
/// aborted and run again from the start on TransientTransactionError, and
/// its commit retried on UnknownTransactionCommitResult, for up to 120 s
/// (the driver's `with_transaction` rules). Each rerun is counted in
/// `transaction_retries_total{operation}`.
///
/// `deadline` bounds the work before the commit: past it, the transaction
/// is aborted and the error is [`DeadlineBeforeCommit`], which means nothing
/// was written. Once the commit is sent its outcome is waited for and
/// reported, so a commit that lands after the deadline is a success, and an
/// error whose outcome is unknown carries UnknownTransactionCommitResult.
///
/// `body` gets the session and `context`; it is a function returning a
/// boxed future (not an async closure) because the async closure form trips
/// rust-lang/rust#96865 ("Send is not general enough").
pub async fn transaction_until<C, R, F>(
    db: &Database,
    operation: &'static str,
    deadline: Option<tokio::time::Instant>,
    mut context: C,
    mut body: F,
) -> mongodb::error::Result<R>
where
    F: for<'b> FnMut(
        &'b mut mongodb::ClientSession,
        &'b mut C,
    ) -> futures::future::BoxFuture<'b, mongodb::error::Result<R>>,
{
    let started = std::time::Instant::now();
    let within_limit = || started.elapsed() < TRANSACTION_RETRY_LIMIT;
    let before_deadline = || deadline.is_none_or(|d| tokio::time::Instant::now() < d);
    // Not causally consistent: the session is this transaction's alone, so
    // there is nothing earlier in it to read after, and a causally
    // consistent session makes a rerun's first statement carry
    // `readConcern.afterClusterTime` (the failed run's operation time),
    // which the bulkWrite command refuses when it opens a transaction.
    let mut session = db
        .client()
        .start_session()
        .causal_consistency(false)
        .await?;
    let mut runs = 0_u64;
    let outcome = 'run: loop {
        runs += 1;
        if !before_deadline() {
            break Err(Error::custom(DeadlineBeforeCommit));
        }
        if let Err(e) = session.start_transaction().await {
            break Err(e);
        }
        let ran = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, body(&mut session, &mut context))
                .await
                .unwrap_or_else(|_| Err(Error::custom(DeadlineBeforeCommit))),
            None => body(&mut session, &mut context).await,
        };
        let value = match ran {
            Ok(value) => value,
            Err(e) => {
                // A body error may have aborted it on the server already.
                let _ = session.abort_transaction().await;
                if e.contains_label(TRANSIENT_TRANSACTION_ERROR) && within_limit() {
                    continue 'run;
                }
                break Err(e);
            }
        };
        loop {
            match session.commit_transaction().await {
                Ok(()) => break 'run Ok(value),
                Err(e)
                    if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
                        && !is_command_error(&e, MAX_TIME_MS_EXPIRED)
                        && within_limit() => {}
                Err(e) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) && within_limit() => {
                    continue 'run;
                }
                Err(e) => break 'run Err(e),
            }
        }
    };
    if runs > 1 {
        metrics::counter!(crate::metrics::TRANSACTION_RETRIES, "operation" => operation)
            .increment(runs - 1);
    }
    outcome
}

/// How long a request's write off the order path (an account, a refresh
/// token, a product) may work before its commit.
pub const REQUEST_WRITE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// A request path's write, bounded on the server's side: `body` runs as a
/// transaction that is given up before its commit once
/// [`REQUEST_WRITE_DEADLINE`] has passed ([`DeadlineBeforeCommit`]: nothing
/// written). The driver has no `maxTimeMS` for inserts and updates, and
/// outside a transaction MongoDB makes a write that meets an orphaned
/// transaction's (a killed instance's) documents wait up to the transaction
/// lifetime, 60 s; inside one it fails at once with a transient
/// WriteConflict, and is rerun here until the deadline.
pub async fn bounded_write<C, R, F>(
    db: &Database,
    operation: &'static str,
    context: C,
    body: F,
) -> mongodb::error::Result<R>
where
    F: for<'b> FnMut(
        &'b mut mongodb::ClientSession,
        &'b mut C,
    ) -> futures::future::BoxFuture<'b, mongodb::error::Result<R>>,
{
    let deadline = tokio::time::Instant::now() + REQUEST_WRITE_DEADLINE;
    transaction_until(db, operation, Some(deadline), context, body).await
}

/// Inserts `document` as a [`bounded_write`] (a taken unique key is the
/// driver's duplicate-key error).
pub async fn insert_bounded<T>(
    db: &Database,
    operation: &'static str,
    collection: &Collection<T>,
    document: &T,
) -> mongodb::error::Result<()>
where
    T: serde::Serialize + Send + Sync,
{
    use futures::FutureExt;
    bounded_write(
        db,
        operation,
        (collection, document),
        |session, (into, document)| {
            async move {
                into.insert_one(*document)
                    .session(session)
                    .await
                    .map(|_| ())
            }
            .boxed()
        },
    )
    .await
}

/// [`transaction_until`] without a deadline.
pub async fn transaction<C, R, F>(
    db: &Database,
    operation: &'static str,
    context: C,
    body: F,
) -> mongodb::error::Result<R>
where
    F: for<'b> FnMut(
        &'b mut mongodb::ClientSession,
        &'b mut C,
    ) -> futures::future::BoxFuture<'b, mongodb::error::Result<R>>,
{
    transaction_until(db, operation, None, context, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_write_needs_version_and_fcv_8() {
        assert!(below_bulk_write("7.0"));
        assert!(below_bulk_write("7.0.14"));
        assert!(!below_bulk_write("8.0"));
        assert!(!below_bulk_write("8.2.11"));
        assert!(!below_bulk_write("garbage"));
    }
}
