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

/// CPU time `pid` has used so far (all its threads, user and system), in
/// ms, or `None` if the process is gone. /proc counts it in USER_HZ ticks,
/// which Linux fixes at 100 a second for user space on every architecture.
pub fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15: 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 * 10.0)
}

/// CPU used by each of a set of processes, read at the start of some work.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuMark {
    database: Option<f64>,
    api: Option<f64>,
    processor: Option<f64>,
}

/// CPU ms each process used per unit of work (an order, or a ceiling
/// transaction) between a [`CpuMark`] and now.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuPer {
    pub database_ms: Option<f64>,
    pub api_ms: Option<f64>,
    pub processor_ms: Option<f64>,
}

/// The processes whose CPU is counted.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pids {
    pub database: Option<u32>,
    pub api: Option<u32>,
    pub processor: Option<u32>,
}

impl Pids {
    pub fn mark(self) -> CpuMark {
        CpuMark {
            database: self.database.and_then(cpu_ms),
            api: self.api.and_then(cpu_ms),
            processor: self.processor.and_then(cpu_ms),
        }
    }

    /// CPU per unit of work since `mark`; `None` for no work.
    pub fn per(self, mark: CpuMark, units: u64) -> Option<CpuPer> {
        if units == 0 {
            return None;
        }
        let per = |pid: Option<u32>, then: Option<f64>| {
            Some((cpu_ms(pid?)? - then?).max(0.0) / units as f64)
        };
        Some(CpuPer {
            database_ms: per(self.database, mark.database),
            api_ms: per(self.api, mark.api),
            processor_ms: per(self.processor, mark.processor),
        })
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
