//! The server's own count of the operations it ran (`serverStatus`'s
//! `opcounters`), read before and after a stretch of work: what that work
//! cost the database, a figure that, unlike a throughput, does not move with
//! whatever else the machine is doing.

use anyhow::Context;
use bson::{Bson, Document, doc};
use mongodb::Database;
use serde::Serialize;

/// Operations by kind, as the server counts them: a `find` is a query, a
/// `findAndModify`, an aggregation (`count_documents`) or a commit is a
/// command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct OpCounts {
    pub insert: u64,
    pub query: u64,
    pub update: u64,
    pub delete: u64,
    pub getmore: u64,
    pub command: u64,
}

impl OpCounts {
    /// The server's counters now (server-wide: every database on it).
    pub async fn read(db: &Database) -> anyhow::Result<OpCounts> {
        let status = db
            .client()
            .database("admin")
            .run_command(doc! { "serverStatus": 1 })
            .await
            .context("serverStatus")?;
        let counters = status
            .get_document("opcounters")
            .context("serverStatus has no opcounters")?;
        let count = |name: &str| counter(counters, name);
        Ok(OpCounts {
            insert: count("insert"),
            query: count("query"),
            update: count("update"),
            delete: count("delete"),
            getmore: count("getmore"),
            command: count("command"),
        })
    }

    /// What ran between `before` and `self`.
    pub fn since(self, before: OpCounts) -> OpCounts {
        OpCounts {
            insert: self.insert.saturating_sub(before.insert),
            query: self.query.saturating_sub(before.query),
            update: self.update.saturating_sub(before.update),
            delete: self.delete.saturating_sub(before.delete),
            getmore: self.getmore.saturating_sub(before.getmore),
            command: self.command.saturating_sub(before.command),
        }
    }

    pub fn total(self) -> u64 {
        self.insert + self.query + self.update + self.delete + self.getmore + self.command
    }
}

fn counter(counters: &Document, name: &str) -> u64 {
    match counters.get(name) {
        Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Double(n)) if *n >= 0.0 => *n as u64,
        _ => 0,
    }
}

/// The operations a scenario cost, per accepted order.
#[derive(Debug, Clone, Serialize)]
pub struct DbOps {
    /// Everything the server counted from the first order to the end of
    /// the drain, the bench's own reads taken out.
    pub counted: OpCounts,
    /// The bench's own reads in that time (its outbox sampler and its
    /// drain's counts), taken out of `counted`'s total.
    pub own: u64,
    pub per_order: f64,
}

impl DbOps {
    pub fn of(counted: OpCounts, own: u64, orders: u64) -> Option<DbOps> {
        (orders > 0).then(|| DbOps {
            counted,
            own,
            per_order: counted.total().saturating_sub(own) as f64 / orders as f64,
        })
    }
}
