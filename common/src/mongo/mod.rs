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

pub mod bulk;
pub mod errors;
pub mod server;

pub use errors::{Failure, classify};
pub use server::server;

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
    // An `appName` in the URI wins: operators (and the fault-injection
    // tests, whose fail points match it) name their clients there.
    options.app_name.get_or_insert_with(|| app_name.to_string());
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
    server::detect(&client, app_name).await;
    Ok(db)
}

/// Whether `error` is the server (or the driver, for a server before 8.0)
/// refusing the client bulkWrite command, in any of its forms (59
/// CommandNotFound, 115 CommandNotSupported at featureCompatibilityVersion
/// 7.0, a message naming it).
pub fn is_bulk_write_refused(error: &Error) -> bool {
    classify(error) == Failure::FormRefused
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

/// `find_one_and_update(filter, update)` with `ReturnDocument::After`: the
/// conditional update, answering the document as it left it, or `None` when
/// `filter` matched nothing. Sent in the form [`server`] chose.
pub async fn update_and_read<T>(
    collection: &Collection<T>,
    session: Option<&mut ClientSession>,
    filter: Document,
    update: Document,
) -> mongodb::error::Result<Option<T>>
where
    T: serde::de::DeserializeOwned + Send + Sync,
{
    update_and_read_as(
        server().update_and_read,
        collection,
        session,
        filter,
        update,
    )
    .await
}

/// [`update_and_read`] in the form `form`. `UpdateThenRead` is two
/// statements: the conditional update, then, if it matched, a read of that
/// document by the filter's `_id` (which `filter` must name). Inside a
/// transaction the pair is as atomic as the single command; without one,
/// the read may also see a later writer's change: callers use it where the
/// claim is the update and what they read back is the document's content.
/// (Local stand-in: findAndModify scans; see [`server`].)
pub async fn update_and_read_as<T>(
    form: server::UpdateAndRead,
    collection: &Collection<T>,
    mut session: Option<&mut ClientSession>,
    filter: Document,
    update: Document,
) -> mongodb::error::Result<Option<T>>
where
    T: serde::de::DeserializeOwned + Send + Sync,
{
    if form == server::UpdateAndRead::FindAndModify {
        let modify = collection
            .find_one_and_update(filter, update)
            .return_document(mongodb::options::ReturnDocument::After);
        return match session {
            Some(session) => modify.session(session).await,
            None => modify.await,
        };
    }
    let id = filter
        .get("_id")
        .cloned()
        .ok_or_else(|| Error::custom("update_and_read needs a filter on _id"))?;
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
/// aborted on the server, nothing was written. (A commit once sent is never
/// cut off by a deadline: its answer is waited for.)
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the deadline passed before the transaction could commit; nothing was written")]
pub struct DeadlineBeforeCommit;

/// What is left before `deadline`, as a statement's `maxTimeMS`; once it
/// has passed, [`DeadlineBeforeCommit`]. A transaction body calls it before
/// each statement: the server bounds a read by the time left, and a write
/// inside a transaction waits for no lock (it meets a conflict at once), so
/// no statement runs far past the deadline and none is ever dropped.
pub fn time_left(deadline: tokio::time::Instant) -> mongodb::error::Result<std::time::Duration> {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    if left.is_zero() {
        Err(Error::custom(DeadlineBeforeCommit))
    } else {
        Ok(left)
    }
}

/// What `filter` matches in `collection`, read in the caller's transaction
/// (`session`) and bounded by the time left before `deadline`
/// ([`time_left`]): a transaction body's read.
pub async fn find_in<T>(
    collection: &Collection<T>,
    session: &mut ClientSession,
    filter: Document,
    deadline: tokio::time::Instant,
) -> mongodb::error::Result<Vec<T>>
where
    T: serde::de::DeserializeOwned + Send + Sync,
{
    use futures::TryStreamExt;
    let mut found = collection
        .find(filter)
        .max_time(time_left(deadline)?)
        .session(&mut *session)
        .await?;
    found.stream(session).try_collect().await
}

/// How long a transaction is rerun on transient errors and its commit
/// retried on an unknown result, as the driver's own `with_transaction`.
const TRANSACTION_RETRY_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// The pause before a transaction's rerun, as the driver's
/// `with_transaction` (the convenient transaction API's backoff): 5 ms
/// growing by 1.5 each rerun, capped at 500 ms, jittered, because on a hot
/// document an immediate rerun mostly meets the same conflict again.
const RERUN: crate::backoff::Schedule = crate::backoff::Schedule::new(
    std::time::Duration::from_millis(5),
    std::time::Duration::from_millis(500),
)
.factor(1.5);

/// Runs `body` in one transaction on a fresh session: committed whole, or
/// aborted and run again from the start, after a backoff
/// ([`RERUN`]), on TransientTransactionError, and its commit
/// retried on UnknownTransactionCommitResult (a writeConcernError 50
/// included), for up to 120 s (the driver's `with_transaction` rules). Each
/// rerun is counted in `transaction_retries_total{operation}`.
///
/// `deadline` bounds the work before the commit. The body bounds each of
/// its statements by it ([`time_left`]); it is never cut off mid-statement,
/// since a dropped first statement would leave the transaction open on the
/// server (the driver aborts only what the server has heard of) with its
/// locks, until its 60 s lifetime ends. Past the deadline, the transaction
/// is aborted and the error is [`DeadlineBeforeCommit`]: nothing was
/// written. Once the commit is sent its outcome is waited for and
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
    let past_deadline = || deadline.is_some_and(|d| time_left(d).is_err());
    // Not causally consistent: the session is this transaction's alone, so
    // there is nothing earlier in it to read after (and the local stand-in
    // refuses afterClusterTime on a bulkWrite; see `server`).
    let mut session = db
        .client()
        .start_session()
        .causal_consistency(false)
        .await?;
    let mut backoff = RERUN.delays();
    let mut runs = 0_u64;
    let outcome = 'run: loop {
        runs += 1;
        if past_deadline() {
            break Err(Error::custom(DeadlineBeforeCommit));
        }
        if let Err(e) = session.start_transaction().await {
            break Err(e);
        }
        let value = match body(&mut session, &mut context).await {
            Ok(_) if past_deadline() => {
                let _ = session.abort_transaction().await;
                break Err(Error::custom(DeadlineBeforeCommit));
            }
            Ok(value) => value,
            Err(e) => {
                // A body error may have aborted it on the server already.
                let _ = session.abort_transaction().await;
                if e.contains_label(TRANSIENT_TRANSACTION_ERROR) && within_limit() {
                    let pause = backoff.next().unwrap_or_default();
                    let resume = tokio::time::Instant::now() + pause;
                    tokio::time::sleep_until(deadline.map_or(resume, |d| d.min(resume))).await;
                    continue 'run;
                }
                if deadline.is_some() && errors::is_time_limit(&e) {
                    break Err(Error::custom(DeadlineBeforeCommit));
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
