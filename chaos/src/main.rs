//! order-chaos: the fault-injection suite of issue 4.
//!
//! Runs the REAL `order-api` and `order-processor` binaries (built by
//! `cargo build --bins`) against the local stack, under a bounded load of
//! orders, and breaks things: kill -9 either service, stop SQS, SMTP or
//! MongoDB, run two APIs at once, oversell, redeliver. After each scenario
//! it prints one line of figures and checks that nothing acknowledged was
//! lost, that every order ended PROCESSED (or CANCELLED), that stock was
//! conserved, and that no email went out twice except where a kill fell
//! between the SMTP server's accept and the SENT write.
//!
//! Usage: `order-chaos [1,2,...]` (or `SCENARIOS=1,7`); `make chaos` builds
//! and runs it. The stack's ports come from the same `STACK_*` variables as
//! `scripts/stack.sh`. Output: one line per scenario, `N passed, M failed`,
//! and `<target>/chaos/summary.json`; per-scenario service logs in
//! `<target>/chaos/<scenario>/`. Exits non-zero if any guarantee failed.

mod audit;
mod harness;
mod inbox;
mod load;
mod procs;
mod proxy;
mod scenarios;
mod shop;
mod stack;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use harness::{Env, Report, ServiceSettings};

/// A scenario that has not finished by then is failed (and its processes
/// killed): nothing here waits forever. The fleet (10) runs its faults for
/// 100 s after two throughput bursts.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(360);

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chaos: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<bool> {
    let selection = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("SCENARIOS").ok())
        .unwrap_or_default();
    let selected = select(&selection)?;

    let repo_root = repo_root();
    let bin_dir = bin_dir()?;
    for binary in ["order-api", "order-processor"] {
        let path = bin_dir.join(binary);
        if !path.is_file() {
            bail!(
                "{} is missing: build it first (`cargo build --bins`)",
                path.display()
            );
        }
    }
    let out_dir = bin_dir
        .parent()
        .map_or_else(|| repo_root.join("target"), Path::to_path_buf)
        .join("chaos");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    let stack = stack::Stack::from_env(&repo_root)?;
    let http = shop::http_client()?;
    stack.require_up(&http).await?;
    let env = Env {
        sqs: stack.sqs_client().await,
        mongo: stack.mongo_client().await?,
        http,
        bin_dir,
        out_dir: out_dir.clone(),
        run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
        settings: settings_from_env()?,
        stack,
    };
    println!(
        "chaos: run {} against mongo :{}, sqs :{}, smtp :{} (inbox :{}); settings {:?}; logs in {}",
        env.run_id,
        env.stack.mongo_port,
        env.stack.sqs_port,
        env.stack.smtp_port,
        env.stack.mail_web_port,
        env.settings,
        out_dir.display()
    );

    let mut reports = Vec::new();
    for (number, name) in selected {
        let started = Instant::now();
        let report = match tokio::time::timeout(
            SCENARIO_TIMEOUT,
            scenarios::run(&env, number, name),
        )
        .await
        {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => Report::failed(
                name,
                &e,
                harness::scenario_dir(&env, name).display().to_string(),
                started.elapsed(),
            ),
            Err(_) => Report::failed(
                name,
                &anyhow::anyhow!("did not finish within {SCENARIO_TIMEOUT:?}"),
                harness::scenario_dir(&env, name).display().to_string(),
                started.elapsed(),
            ),
        };
        println!("{}", report.line());
        for problem in &report.problems {
            println!("chaos: {}:   {problem}", report.scenario);
        }
        if !report.passed {
            println!("chaos: {}:   logs: {}", report.scenario, report.logs);
            // A scenario that failed mid-outage must not leave a service
            // stopped under the next one.
            if let Err(e) = env.stack.ensure_up().await {
                println!("chaos: {}:   restarting the stack: {e:#}", report.scenario);
            }
        }
        reports.push(report);
    }

    let passed = reports.iter().filter(|r| r.passed).count();
    let failed = reports.len() - passed;
    let summary = serde_json::json!({
        "run": env.run_id,
        "settings": env.settings,
        "passed": passed,
        "failed": failed,
        "scenarios": reports,
    });
    let summary_path = out_dir.join("summary.json");
    std::fs::write(&summary_path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("writing {}", summary_path.display()))?;
    println!(
        "chaos: {passed} passed, {failed} failed (summary: {})",
        summary_path.display()
    );
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// `""`/`all` for every scenario, or a comma-separated list of numbers.
fn select(selection: &str) -> anyhow::Result<Vec<(u8, &'static str)>> {
    let selection = selection.trim();
    if selection.is_empty() || selection == "all" {
        return Ok(scenarios::ALL.to_vec());
    }
    let mut chosen = Vec::new();
    for part in selection.split(',') {
        let number: u8 = part.trim().parse().with_context(|| {
            format!(
                "scenario {part:?} is not a number (1 to {})",
                scenarios::ALL.len()
            )
        })?;
        let scenario = scenarios::ALL
            .iter()
            .find(|(n, _)| *n == number)
            .with_context(|| {
                format!(
                    "there is no scenario {number} (1 to {})",
                    scenarios::ALL.len()
                )
            })?;
        chosen.push(*scenario);
    }
    Ok(chosen)
}

/// The repository: `CHAOS_REPO_ROOT`, else where this crate was built from.
fn repo_root() -> PathBuf {
    std::env::var_os("CHAOS_REPO_ROOT").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        PathBuf::from,
    )
}

/// The services' binaries: `CHAOS_BIN_DIR`, else next to this one (cargo puts
/// every binary of the workspace in the same target directory).
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CHAOS_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locating order-chaos")?;
    exe.parent()
        .map(Path::to_path_buf)
        .context("order-chaos has no parent directory")
}

fn settings_from_env() -> anyhow::Result<ServiceSettings> {
    let number = |name: &str, default: Option<u64>| -> anyhow::Result<Option<u64>> {
        match std::env::var(name) {
            Ok(raw) if !raw.trim().is_empty() => {
                Ok(Some(raw.trim().parse().with_context(|| {
                    format!("{name}={raw:?} is not a number")
                })?))
            }
            _ => Ok(default),
        }
    };
    Ok(ServiceSettings {
        retry_base_secs: number("CHAOS_RETRY_BASE_SECS", Some(2))?.unwrap_or(2),
        retry_cap_secs: number("CHAOS_RETRY_CAP_SECS", Some(16))?.unwrap_or(16),
        outbox_lease_secs: number("CHAOS_OUTBOX_LEASE_SECS", Some(10))?.unwrap_or(10),
        email_stale_send_secs: number("CHAOS_EMAIL_STALE_SEND_SECS", Some(30))?.unwrap_or(30),
    })
}
