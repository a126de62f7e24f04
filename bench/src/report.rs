//! The results: one table on stdout, the same figures as JSON, and the
//! issue's targets checked against them.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    ceiling::Ceiling,
    opcount::DbOps,
    sample::{CpuPer, Rss},
    stats::Summary,
};

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
}

impl Machine {
    pub fn here() -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
        }
    }
}

/// The 1-minute load average: how busy the machine was (others' builds too).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

#[derive(Debug, Clone, Serialize)]
pub struct Mixed {
    /// Orders due outside the login burst.
    pub orders_quiet: Summary,
    /// Orders due during it.
    pub orders_during_logins: Summary,
    pub logins: Summary,
    /// p99 during the burst over p99 outside it.
    pub p99_ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub name: String,
    pub mode: String,
    pub duration_secs: f64,
    pub buyers: usize,
    pub products: usize,
    pub lines_per_order: usize,
    pub sent: u64,
    pub accepted: u64,
    pub accepted_per_sec: f64,
    pub api_latency: Summary,
    pub end_to_end_processed: Summary,
    pub end_to_end_email_sent: Summary,
    pub unfinished: u64,
    pub drain_secs: f64,
    pub outbox_oldest_pending_max_ms: Option<u64>,
    /// Database operations per accepted order, load and drain together.
    pub db_ops: Option<DbOps>,
    /// The same stretch as each service counted its statements, per
    /// accepted order (empty without the metrics listeners).
    pub statements: Vec<crate::statements::Statement>,
    /// CPU per accepted order of the database and both services, load and
    /// drain together.
    pub cpu: Option<CpuPer>,
    pub errors: BTreeMap<String, u64>,
    pub api_rss: Option<Rss>,
    pub processor_rss: Option<Rss>,
    pub ceiling: Option<Ceiling>,
    /// Accepted orders/s over the ceiling's committed transactions/s.
    pub ratio_to_ceiling: Option<f64>,
    pub mixed: Option<Mixed>,
    pub load_average_before: f64,
    pub load_average_after: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub what: String,
    pub figure: String,
    pub met: bool,
    /// The scenario whose profile (statements and CPU per order) explains
    /// the figure.
    pub scenario: String,
    /// What the profiles so far say would move it (BENCHMARKS.md).
    pub would_move: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub api_url: String,
    pub database: String,
    pub scenarios: Vec<ScenarioResult>,
    pub targets: Vec<Target>,
}

const MIB: f64 = 1024.0;

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / MIB)
}

impl ScenarioResult {
    /// Where the scenario's database work and CPU per order went: each
    /// service's statements, the database's operations, the CPU.
    fn profile(&self) -> Vec<String> {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let mut lines: Vec<String> = crate::statements::by_service(&self.statements)
            .into_iter()
            .map(|line| format!("statements per order, {line}"))
            .collect();
        let cpu = self.cpu.unwrap_or_default();
        lines.push(format!(
            "database ops per order {}; CPU ms per order: database {}, order-api {}, order-processor {}; load average {:.2}",
            self.db_ops
                .as_ref()
                .map_or("-".into(), |o| format!("{:.1}", o.per_order)),
            ms(cpu.database_ms),
            ms(cpu.api_ms),
            ms(cpu.processor_ms),
            self.load_average_after,
        ));
        lines
    }
}

impl Report {
    pub fn new(api_url: &str, database: &str, scenarios: Vec<ScenarioResult>) -> Report {
        let targets = targets(&scenarios);
        Report {
            machine: Machine::here(),
            api_url: api_url.into(),
            database: database.into(),
            scenarios,
            targets,
        }
    }

    pub fn print(&self) {
        println!(
            "\norder-bench: {} CPUs ({}), {}, database {}",
            self.machine.cpus, self.machine.cpu_model, self.api_url, self.database
        );
        println!(
            "\n{:<8} {:<14} {:>9} {:>10} {:>6} {:>26} {:>26} {:>9} {:>7}  errors",
            "scenario",
            "mode",
            "orders/s",
            "ceiling/s",
            "ratio",
            "API ms p50/p90/p99/max",
            "POST->PROCESSED ms",
            "outbox ms",
            "load",
        );
        for s in &self.scenarios {
            let errors = if s.errors.is_empty() {
                "none".to_string()
            } else {
                s.errors
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let unfinished = if s.unfinished > 0 {
                format!(" ({} unfinished)", s.unfinished)
            } else {
                String::new()
            };
            println!(
                "{:<8} {:<14} {:>9.1} {:>10} {:>6} {:>26} {:>26} {:>9} {:>7.2}  {errors}{unfinished}",
                s.name,
                s.mode,
                s.accepted_per_sec,
                s.ceiling
                    .as_ref()
                    .map_or("-".into(), |c| format!("{:.1}", c.per_sec)),
                s.ratio_to_ceiling.map_or("-".into(), |r| format!("{r:.2}")),
                s.api_latency.cell(),
                s.end_to_end_processed.cell(),
                s.outbox_oldest_pending_max_ms
                    .map_or("-".into(), |ms| ms.to_string()),
                s.load_average_after,
            );
        }
        println!("\nRSS MiB (start / end / peak)   order-api             order-processor");
        for s in &self.scenarios {
            let cell = |rss: &Option<Rss>| {
                rss.map_or("-".to_string(), |r| {
                    format!(
                        "{} / {} / {}",
                        mib(r.start_kib),
                        mib(r.end_kib),
                        mib(r.peak_kib())
                    )
                })
            };
            println!(
                "{:<30} {:<21} {}",
                s.name,
                cell(&s.api_rss),
                cell(&s.processor_rss)
            );
        }
        println!(
            "\nper order        database ops   insert  query  update  command  getmore   CPU ms: database  order-api  order-processor"
        );
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        for s in &self.scenarios {
            let Some(ops) = &s.db_ops else { continue };
            let per = |n: u64| n as f64 / s.accepted.max(1) as f64;
            let cpu = s.cpu.unwrap_or_default();
            println!(
                "{:<16} {:>12.1} {:>8.2} {:>6.2} {:>7.2} {:>8.2} {:>8.2} {:>18} {:>10} {:>16}",
                s.name,
                ops.per_order,
                per(ops.counted.insert),
                per(ops.counted.query),
                per(ops.counted.update),
                per(ops.counted.command),
                per(ops.counted.getmore),
                ms(cpu.database_ms),
                ms(cpu.api_ms),
                ms(cpu.processor_ms),
            );
        }
        if self.scenarios.iter().any(|s| !s.statements.is_empty()) {
            println!(
                "\nstatements per order, as each service counted them (mongodb_commands_total)"
            );
            for s in &self.scenarios {
                for line in crate::statements::by_service(&s.statements) {
                    println!("{:<8} {line}", s.name);
                }
            }
        }
        for s in &self.scenarios {
            if let Some(m) = &s.mixed {
                println!(
                    "\n{}: order p99 {} ms without logins, {} ms during the login burst ({:.2}x); {} logins, p99 {} ms",
                    s.name,
                    crate::stats::short(m.orders_quiet.p99_ms),
                    crate::stats::short(m.orders_during_logins.p99_ms),
                    m.p99_ratio,
                    m.logins.count,
                    crate::stats::short(m.logins.p99_ms),
                );
            }
        }
        let mut shown = Vec::new();
        for s in &self.scenarios {
            if let Some(c) = &s.ceiling
                && !shown.contains(&c.shape)
            {
                shown.push(c.shape.clone());
                for (i, form) in std::iter::once(c).chain(&c.slower_forms).enumerate() {
                    println!(
                        "ceiling, {} shape, {} form{}: {} tx/s committed at c={} ({} failed), tx ms {}, per transaction {} database operations and {} ms of database CPU",
                        c.shape,
                        form.form.name(),
                        if i == 0 { " (the ceiling)" } else { "" },
                        format_args!("{:.1}", form.per_sec),
                        form.concurrency,
                        form.failed,
                        form.latency.cell(),
                        form.ops_per_tx.map_or("-".into(), |n| format!("{n:.1}")),
                        form.db_cpu_ms_per_tx
                            .map_or("-".into(), |n| format!("{n:.2}")),
                    );
                }
            }
        }
        if !self.targets.is_empty() {
            println!("\ntargets (issue 16; RSS from issue 6):");
            for t in &self.targets {
                println!(
                    "  [{}] {}: {}",
                    if t.met { "met" } else { "NOT met" },
                    t.what,
                    t.figure
                );
                if t.met {
                    continue;
                }
                if let Some(s) = self.scenarios.iter().find(|s| s.name == t.scenario) {
                    for line in s.profile() {
                        println!("      profile ({}): {line}", s.name);
                    }
                }
                if !t.would_move.is_empty() {
                    println!("      would move it: {}", t.would_move);
                }
            }
        }
    }
}

/// What would move a target not met, from the profiles so far
/// (BENCHMARKS.md, sessions 13 and 14).
const BESIDE_THE_ORDER: &str = "the statements beside the placement's own (its read, bulkWrite and commit): the relay's claim and mark, the processor's batch transaction (inbox and order reads, one write, commit), the email claim's transaction and SENT's (update, commit), each a transaction because SecantusDB retries a plain write behind a killed process's open transaction for minutes (session 13); a server that bounds such waits (MongoDB's maxTimeMS) would let the last ones be plain writes";
const SATURATION: &str = "database CPU per order, not statements (shared by the batches): the order document is written three times (placement, PROCESSED, SENT), each rewrite carrying its growing timeline, where the ceiling inserts it once; on 2 shared cores the database, the SQS emulator, both services and the bench compete, and one run swings 1.6x-2.8x on the same binaries";
const LATENCY: &str = "at half load the figure sits within ~10% of the goal and swings run to run with the machine's load (2 cores for the database, the SQS emulator, both services and the bench); the statements and CPU per order above are its cost";
const LOGINS: &str = "argon2 already runs on its own pool at niceness 10, but its hashes take the cores the database needs; the ratio swings 1.2x-3.3x run to run, a repeated, median-reported burst would make one run readable";

fn targets(scenarios: &[ScenarioResult]) -> Vec<Target> {
    let mut targets = Vec::new();
    let find = |name: &str| scenarios.iter().find(|s| s.name == name);
    if let Some(s) = find("spread")
        && let Some(r) = s.ratio_to_ceiling
    {
        targets.push(Target {
            what: "spread throughput >= 80% of the same-run ceiling".into(),
            figure: format!("{:.0}%", r * 100.0),
            met: r >= 0.80,
            scenario: s.name.clone(),
            would_move: SATURATION,
        });
    }
    if let Some(s) = find("hot")
        && let Some(r) = s.ratio_to_ceiling
    {
        targets.push(Target {
            what: "hot product >= 2x the same-run one-document ceiling".into(),
            figure: format!("{r:.2}x"),
            met: r >= 2.0,
            scenario: s.name.clone(),
            would_move: SATURATION,
        });
    }
    // Database CPU per order against the ceiling transaction's (the spread
    // shape's: the same order alone, without the rest of the pipeline).
    let ceiling_cpu = find("spread")
        .and_then(|s| s.ceiling.as_ref())
        .and_then(|c| c.db_cpu_ms_per_tx);
    for (name, load, limit) in [("steady", "half load", 1.5), ("spread", "saturation", 1.3)] {
        let per_order = find(name).and_then(|s| s.cpu.as_ref()?.database_ms);
        if let (Some(per_order), Some(ceiling)) = (per_order, ceiling_cpu) {
            let ratio = per_order / ceiling;
            targets.push(Target {
                what: format!(
                    "database CPU per order at {load} ({name}) <= {limit}x the ceiling transaction's"
                ),
                figure: format!("{per_order:.2} / {ceiling:.2} ms = {ratio:.2}x"),
                met: ratio <= limit,
                scenario: name.into(),
                would_move: if name == "steady" { BESIDE_THE_ORDER } else { SATURATION },
            });
        }
    }
    if let Some(s) = find("steady") {
        if let Some(ops) = &s.db_ops {
            targets.push(Target {
                what: "database operations per order at half load <= 4".into(),
                figure: format!("{:.1}", ops.per_order),
                met: ops.per_order <= 4.0,
                scenario: s.name.clone(),
                would_move: BESIDE_THE_ORDER,
            });
        }
        targets.push(Target {
            what: "API p99 <= 50 ms at half load".into(),
            figure: format!("{} ms", crate::stats::short(s.api_latency.p99_ms)),
            met: s.api_latency.count > 0 && s.api_latency.p99_ms <= 50.0,
            scenario: s.name.clone(),
            would_move: LATENCY,
        });
        targets.push(Target {
            what: "POST->email (SMTP accepted) p99 <= 250 ms at half load".into(),
            figure: format!("{} ms", crate::stats::short(s.end_to_end_email_sent.p99_ms)),
            met: s.end_to_end_email_sent.count > 0 && s.end_to_end_email_sent.p99_ms <= 250.0,
            scenario: s.name.clone(),
            would_move: LATENCY,
        });
    }
    for (service, pick) in [
        (
            "order-api",
            (|s: &ScenarioResult| s.api_rss) as fn(&ScenarioResult) -> Option<Rss>,
        ),
        ("order-processor", |s: &ScenarioResult| s.processor_rss),
    ] {
        let peak = scenarios
            .iter()
            .filter_map(pick)
            .map(|r| r.peak_kib())
            .max();
        if let Some(peak) = peak {
            targets.push(Target {
                what: format!("{service} peak RSS <= 64 MiB"),
                figure: format!("{} MiB", mib(peak)),
                met: peak <= 64 * 1024,
                scenario: String::new(),
                would_move: "",
            });
        }
    }
    if let Some(m) = find("mixed").and_then(|s| s.mixed.as_ref()) {
        targets.push(Target {
            what: "order p99 during a login burst <= 1.5x without".into(),
            figure: format!("{:.2}x", m.p99_ratio),
            met: m.p99_ratio <= 1.5,
            scenario: "mixed".into(),
            would_move: LOGINS,
        });
    }
    targets
}
