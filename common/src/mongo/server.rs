//! What the MongoDB server is, read once per process when it first
//! connects, and the statement forms that follow from it. A process talks
//! to one deployment, so this is a process-wide fact ([`server`]).
//!
//! # The local stand-in's behaviours, and what working around them costs
//! The local stack runs SecantusDB (a Python, MongoDB-wire server; its
//! `buildInfo` carries `secantusVersion`). Where code here does something
//! for its sake, it names the behaviour with one of these headings:
//!
//! - **findAndModify scans**: it answers a findAndModify by scanning the
//!   whole collection (9.4 ms at 1,000 documents, 147 ms at 20,000).
//!   Workaround: the update, then a read by `_id`
//!   ([`super::update_and_read`]). On a real server that is one round trip
//!   more per cancel, token rotation or product update, so the form is
//!   chosen here: findAndModify everywhere but on the stand-in.
//! - **`$or` scans**: it answers `$or` by scanning every row instead of
//!   using an index. Workaround: `lease_until: {$not: {$gte: now}}` for
//!   "unleased or expired" (outbox claims). Costs nothing on a real server,
//!   which uses the index for either.
//! - **TTL scans under a lock**: it expires TTL indexes every 60 s by
//!   decoding every document of every TTL-indexed collection under its
//!   storage lock. Workaround: a scheduled sweep by an indexed range
//!   (`crate::expiry`). On a real server: one indexed `deleteMany` per
//!   collection a minute per replica, off the order's path.
//! - **Retryable-write bookkeeping**: it keeps a record of every retryable
//!   write and prunes the table on each one. Workaround: an email's outcome
//!   is one update in a transaction, and the relay marks rows with one
//!   multi-document update. On a real server the first costs a commit round
//!   trip per email (off the placing path); the second saves round trips
//!   anywhere.
//! - **Change streams wake on every write**: a change stream answers a
//!   getMore on every write to any collection. Workaround: no change
//!   stream; a commit wakes its own instance's relay in memory, and a sweep
//!   wakes it for rows other instances wrote. Costs nothing on a real
//!   server.
//! - **afterClusterTime refused on bulkWrite**: a causally consistent
//!   session's rerun opens with `readConcern.afterClusterTime`, which its
//!   bulkWrite refuses (40415). Workaround: transaction sessions are not
//!   causally consistent. Costs nothing: each transaction has its own
//!   session.
//! - **Idle connections dropped after 300 s**: the default URI sets
//!   `maxIdleTimeMS=60000`. Costs a reconnect after a minute's idleness.

use mongodb::{Client, bson::doc};

/// How a batch of orders' writes is sent inside its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderWrites {
    /// One client `bulkWrite` command for the whole batch (MongoDB 8.0+ at
    /// featureCompatibilityVersion 8.0+).
    BulkWrite,
    /// One statement per write, in the same transaction (MongoDB 7.0, or
    /// 8.0 still at featureCompatibilityVersion 7.0).
    OneStatementEach,
}

/// How a conditional update that must answer the document it changed is
/// sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateAndRead {
    /// One `findAndModify` (every real MongoDB).
    FindAndModify,
    /// The update, then a read by `_id` (the local stand-in: findAndModify
    /// scans).
    UpdateThenRead,
}

/// What the server said about itself, and what follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub version: Option<String>,
    pub feature_compatibility: Option<String>,
    /// SecantusDB, the local stack's stand-in.
    pub stand_in: bool,
    pub order_writes: OrderWrites,
    /// Why `order_writes` is what it is, for the start-up log.
    pub order_writes_reason: String,
    pub update_and_read: UpdateAndRead,
}

static SERVER: std::sync::OnceLock<Server> = std::sync::OnceLock::new();

/// Before any connection: an unknown server, every form that is right on a
/// real MongoDB 8.0.
static UNKNOWN: std::sync::LazyLock<Server> =
    std::sync::LazyLock::new(|| Server::decide(None, None, false));

/// The server this process connected to (read on every claim: no copy).
pub fn server() -> &'static Server {
    SERVER.get().unwrap_or(&UNKNOWN)
}

/// Reads what the server is, once per process, and logs the decision.
/// Servers that refuse to say (Atlas' shared tiers refuse `getParameter`)
/// are decided on what they did say; nothing here stops a start.
pub(super) async fn detect(client: &Client, app_name: &str) {
    if SERVER.get().is_some() {
        return;
    }
    let admin = client.database("admin");
    let build = admin.run_command(doc! { "buildInfo": 1 }).await.ok();
    let version = build
        .as_ref()
        .and_then(|info| info.get_str("version").ok().map(str::to_string));
    let stand_in = build
        .as_ref()
        .is_some_and(|info| info.contains_key("secantusVersion"));
    let fcv = admin
        .run_command(doc! { "getParameter": 1, "featureCompatibilityVersion": 1 })
        .await
        .ok()
        .and_then(|answer| {
            let fcv = answer.get_document("featureCompatibilityVersion").ok()?;
            fcv.get_str("version").ok().map(str::to_string)
        });
    let server = Server::decide(version, fcv, stand_in);
    let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
    tracing::info!(
        service = app_name,
        version = %shown(&server.version),
        feature_compatibility = %shown(&server.feature_compatibility),
        stand_in = server.stand_in,
        order_writes = ?server.order_writes,
        update_and_read = ?server.update_and_read,
        reason = %server.order_writes_reason,
        "connected to MongoDB; orders are written as decided here"
    );
    let _ = SERVER.set(server);
}

impl Server {
    /// The decision, from what the server said.
    pub fn decide(version: Option<String>, fcv: Option<String>, stand_in: bool) -> Server {
        let below_8 = |v: &Option<String>| v.as_deref().is_some_and(below_bulk_write);
        let (order_writes, order_writes_reason) = if below_8(&version) {
            (
                OrderWrites::OneStatementEach,
                format!(
                    "MongoDB {} has no bulkWrite command (8.0 and later)",
                    version.as_deref().unwrap_or_default()
                ),
            )
        } else if below_8(&fcv) {
            (
                OrderWrites::OneStatementEach,
                format!(
                    "featureCompatibilityVersion is {}: MongoDB refuses bulkWrite until it is raised \
                     (db.adminCommand({{setFeatureCompatibilityVersion: \"8.0\", confirm: true}}))",
                    fcv.as_deref().unwrap_or_default()
                ),
            )
        } else if fcv.is_none() {
            (
                OrderWrites::BulkWrite,
                "featureCompatibilityVersion not readable (Atlas' shared tiers refuse getParameter): \
                 bulkWrite is tried, and a refusal switches to one statement each"
                    .to_string(),
            )
        } else {
            (
                OrderWrites::BulkWrite,
                "MongoDB and its featureCompatibilityVersion are 8.0 or later".to_string(),
            )
        };
        Server {
            version,
            feature_compatibility: fcv,
            stand_in,
            order_writes,
            order_writes_reason,
            update_and_read: if stand_in {
                UpdateAndRead::UpdateThenRead
            } else {
                UpdateAndRead::FindAndModify
            },
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn decided(version: Option<&str>, fcv: Option<&str>) -> OrderWrites {
        Server::decide(version.map(Into::into), fcv.map(Into::into), false).order_writes
    }

    #[test]
    fn bulk_write_needs_version_and_fcv_8() {
        assert!(below_bulk_write("7.0"));
        assert!(below_bulk_write("7.0.14"));
        assert!(!below_bulk_write("8.0"));
        assert!(!below_bulk_write("8.2.11"));
        assert!(!below_bulk_write("garbage"));
        assert_eq!(
            decided(Some("7.0.14"), Some("7.0")),
            OrderWrites::OneStatementEach
        );
        assert_eq!(
            decided(Some("8.0.4"), Some("7.0")),
            OrderWrites::OneStatementEach
        );
        assert_eq!(decided(Some("8.0.4"), Some("8.0")), OrderWrites::BulkWrite);
        // Atlas' shared tiers: no FCV to read; a refusal is met at run time.
        assert_eq!(decided(Some("8.0.4"), None), OrderWrites::BulkWrite);
        assert_eq!(decided(None, None), OrderWrites::BulkWrite);
    }

    #[test]
    fn only_the_stand_in_reads_back_after_an_update() {
        let real = Server::decide(Some("8.0.4".into()), Some("8.0".into()), false);
        let stand_in = Server::decide(Some("8.2.11".into()), Some("8.2".into()), true);
        assert_eq!(real.update_and_read, UpdateAndRead::FindAndModify);
        assert_eq!(stand_in.update_and_read, UpdateAndRead::UpdateThenRead);
    }
}
