//! What is sampled while a scenario runs: the resident memory of the two
//! services (by PID, from /proc) and the age of the oldest pending outbox row.

use std::time::Duration;

use bson::{Document, doc};
use mongodb::Database;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub const EVERY: Duration = Duration::from_millis(200);

/// Resident memory of one process over a scenario, in KiB.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Rss {
    pub start_kib: u64,
    pub end_kib: u64,
    /// The highest VmRSS sampled during the scenario.
    pub peak_sampled_kib: u64,
    /// VmHWM at the end: the highest RSS since the process started.
    pub high_water_kib: u64,
}

impl Rss {
    pub fn peak_kib(&self) -> u64 {
        self.peak_sampled_kib.max(self.high_water_kib)
    }
}

/// `(VmRSS, VmHWM)` in KiB, or `None` if the process is gone.
pub fn read_rss(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Samples `pid` every [`EVERY`] until `stop`.
pub async fn rss_until(pid: Option<u32>, stop: CancellationToken) -> Option<Rss> {
    let pid = pid?;
    let (first, _) = read_rss(pid)?;
    let mut rss = Rss {
        start_kib: first,
        end_kib: first,
        peak_sampled_kib: first,
        high_water_kib: 0,
    };
    // Bounded by the scenario's own bounds: `stop` is always cancelled.
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(EVERY) => {}
        }
        if let Some((now, hwm)) = read_rss(pid) {
            rss.end_kib = now;
            rss.peak_sampled_kib = rss.peak_sampled_kib.max(now);
            rss.high_water_kib = hwm;
        }
    }
    if let Some((now, hwm)) = read_rss(pid) {
        rss.end_kib = now;
        rss.high_water_kib = hwm;
    }
    Some(rss)
}

/// What [`outbox_age_until`] saw.
pub struct OutboxAge {
    /// The largest age of the oldest pending row, in ms.
    pub worst_ms: Option<u64>,
    /// The reads it made: the bench's own load on the database.
    pub reads: u64,
}

/// The largest age of the oldest pending outbox row seen until `stop`.
pub async fn outbox_age_until(db: Database, stop: CancellationToken) -> OutboxAge {
    let outbox = db.collection::<Document>("outbox");
    let mut worst: Option<u64> = None;
    let mut reads = 0;
    loop {
        reads += 1;
        let oldest = outbox
            .find_one(doc! { "status": "PENDING" })
            .sort(doc! { "_id": 1 })
            .projection(doc! { "created_at": 1 })
            .await;
        if let Ok(found) = oldest {
            let age = found
                .and_then(|row| row.get_datetime("created_at").ok().copied())
                .map_or(0, |at| {
                    u64::try_from(bson::DateTime::now().timestamp_millis() - at.timestamp_millis())
                        .unwrap_or(0)
                });
            worst = Some(worst.unwrap_or(0).max(age));
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
    OutboxAge {
        worst_ms: worst,
        reads,
    }
}
