//! Firing orders: open loop (a fixed schedule; latency counted from the time
//! a request was DUE, so a slow server cannot hide behind a slow client) or
//! closed loop (N buyers, each sending its next order when the last returns).
//! A login burst can run alongside.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use tokio::task::JoinSet;

use crate::{
    shop::{Answer, Buyer, PASSWORD, Shop},
    stats,
};

/// Open-loop requests outstanding beyond this are not sent (and counted):
/// the client must not drown itself.
const MAX_IN_FLIGHT: usize = 4096;
/// How long the end of a run waits for requests still in flight.
const FINISH_WITHIN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// `rate` orders a second, on a schedule.
    Open { rate: f64 },
    /// `concurrency` buyers, back to back.
    Closed { concurrency: usize },
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Open { rate } => write!(f, "open {rate:.0}/s"),
            Mode::Closed { concurrency } => write!(f, "closed c={concurrency}"),
        }
    }
}

/// Logins running alongside the orders between `from` and `until` (offsets
/// from the start), `concurrency` at a time.
#[derive(Debug, Clone)]
pub struct LoginBurst {
    pub emails: Vec<String>,
    pub concurrency: usize,
    pub from: Duration,
    pub until: Duration,
}

pub struct Plan {
    pub mode: Mode,
    pub duration: Duration,
    pub buyers: Vec<Buyer>,
    pub products: Vec<String>,
    pub lines: usize,
    pub burst: Option<LoginBurst>,
}

/// An accepted order and when its request was due (ms since the epoch).
pub struct Placed {
    pub order_id: String,
    pub due_ms: i64,
}

pub struct Recorded {
    pub api: Histogram<u64>,
    /// Orders due outside / inside the login burst (mixed scenario).
    pub api_quiet: Histogram<u64>,
    pub api_burst: Histogram<u64>,
    pub logins: Histogram<u64>,
    pub placed: Vec<Placed>,
    pub errors: BTreeMap<String, u64>,
    pub sent: u64,
    pub elapsed: Duration,
}

impl Recorded {
    fn new() -> Self {
        Recorded {
            api: stats::histogram(),
            api_quiet: stats::histogram(),
            api_burst: stats::histogram(),
            logins: stats::histogram(),
            placed: Vec::new(),
            errors: BTreeMap::new(),
            sent: 0,
            elapsed: Duration::ZERO,
        }
    }

    fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }
}

struct Run {
    shop: Shop,
    plan: Plan,
    start: Instant,
    wall_start: SystemTime,
    recorded: Mutex<Recorded>,
    accepted: AtomicU64,
    failed: AtomicU64,
}

impl Run {
    fn in_burst(&self, due: Instant) -> bool {
        self.plan.burst.as_ref().is_some_and(|b| {
            let at = due.saturating_duration_since(self.start);
            at >= b.from && at < b.until
        })
    }

    fn pick_products(&self) -> Vec<&str> {
        let products = &self.plan.products;
        if products.len() <= 1 || self.plan.lines >= products.len() {
            return products
                .iter()
                .map(String::as_str)
                .take(self.plan.lines.max(1))
                .collect();
        }
        let mut rng = rand::rng();
        let mut chosen: Vec<&str> = Vec::with_capacity(self.plan.lines);
        // Distinct products: an order names each product once. Bounded: the
        // plan has more products than lines.
        for _ in 0..self.plan.lines * 16 {
            let p = products[rng.random_range(0..products.len())].as_str();
            if !chosen.contains(&p) {
                chosen.push(p);
            }
            if chosen.len() == self.plan.lines {
                break;
            }
        }
        chosen
    }

    /// One order, due at `due`: its latency counts from then.
    async fn order(&self, buyer: usize, due: Instant) {
        let due_ms = epoch_ms(self.wall_start + due.saturating_duration_since(self.start));
        let buyer = &self.plan.buyers[buyer % self.plan.buyers.len()];
        let products = self.pick_products();
        let answer = self.shop.order(&buyer.token, &products).await;
        let latency = due.elapsed();
        let burst = self.in_burst(due);
        let mut recorded = self.recorded.lock().expect("recorder lock");
        recorded.sent += 1;
        stats::record(&mut recorded.api, latency);
        if burst {
            stats::record(&mut recorded.api_burst, latency);
        } else {
            stats::record(&mut recorded.api_quiet, latency);
        }
        match answer {
            Answer::Placed { order_id } => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                recorded.placed.push(Placed { order_id, due_ms });
            }
            Answer::Refused(kind) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                recorded.error(kind);
            }
        }
    }

    async fn login(&self, email: &str) {
        let started = Instant::now();
        let result = self.shop.login(email, PASSWORD).await;
        let mut recorded = self.recorded.lock().expect("recorder lock");
        stats::record(&mut recorded.logins, started.elapsed());
        if let Err(e) = result {
            let kind = format!(
                "login: {}",
                e.to_string().split(':').next().unwrap_or("failed")
            );
            recorded.error(kind);
        }
    }
}

pub fn epoch_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs `plan` against `shop`, showing progress under `label`.
pub async fn run(shop: Shop, plan: Plan, label: &str) -> Recorded {
    let duration = plan.duration;
    let run = Arc::new(Run {
        shop,
        plan,
        start: Instant::now(),
        wall_start: SystemTime::now(),
        recorded: Mutex::new(Recorded::new()),
        accepted: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let bar = progress(label, duration);
    let ticker = {
        let (run, bar) = (run.clone(), bar.clone());
        tokio::spawn(async move {
            loop {
                let secs = run.start.elapsed().as_secs_f64().max(0.001);
                let accepted = run.accepted.load(Ordering::Relaxed);
                bar.set_position(run.start.elapsed().as_millis().try_into().unwrap_or(0));
                bar.set_message(format!(
                    "accepted {accepted} ({:.0}/s), errors {}",
                    accepted as f64 / secs,
                    run.failed.load(Ordering::Relaxed)
                ));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let burst = run.plan.burst.clone().map(|burst| {
        let run = run.clone();
        tokio::spawn(async move { login_burst(run, burst).await })
    });
    match run.plan.mode {
        Mode::Open { rate } => open_loop(&run, rate, duration).await,
        Mode::Closed { concurrency } => closed_loop(&run, concurrency, duration).await,
    }
    if let Some(burst) = burst {
        let _ = burst.await;
    }
    ticker.abort();
    bar.finish_and_clear();
    let elapsed = run.start.elapsed();
    let mut recorded = std::mem::replace(
        &mut *run.recorded.lock().expect("recorder lock"),
        Recorded::new(),
    );
    // Includes the tail of requests in flight at the end: they belong to it.
    recorded.elapsed = elapsed;
    recorded
}

fn progress(label: &str, duration: Duration) -> ProgressBar {
    let bar = ProgressBar::new(duration.as_millis().try_into().unwrap_or(u64::MAX));
    bar.set_style(
        ProgressStyle::with_template("{prefix:>14} [{elapsed:>3}] {wide_bar} {msg}")
            .expect("valid template"),
    );
    bar.set_prefix(label.to_string());
    bar
}

async fn open_loop(run: &Arc<Run>, rate: f64, duration: Duration) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut tasks = JoinSet::new();
    let end = run.start + duration;
    for i in 0u32.. {
        let due = run.start + interval * i;
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        while tasks.try_join_next().is_some() {}
        if tasks.len() >= MAX_IN_FLIGHT {
            run.recorded
                .lock()
                .expect("recorder lock")
                .error("client backlog (not sent)".into());
            continue;
        }
        let run = run.clone();
        tasks.spawn(async move { run.order(i as usize, due).await });
    }
    finish(tasks).await;
}

async fn closed_loop(run: &Arc<Run>, concurrency: usize, duration: Duration) {
    let end = run.start + duration;
    let mut tasks = JoinSet::new();
    for buyer in 0..concurrency {
        let run = run.clone();
        tasks.spawn(async move {
            while Instant::now() < end {
                run.order(buyer, Instant::now()).await;
            }
        });
    }
    finish(tasks).await;
}

async fn login_burst(run: Arc<Run>, burst: LoginBurst) {
    tokio::time::sleep_until((run.start + burst.from).into()).await;
    let until = run.start + burst.until;
    let mut tasks = JoinSet::new();
    for worker in 0..burst.concurrency {
        let (run, emails) = (run.clone(), burst.emails.clone());
        tasks.spawn(async move {
            let mut n = worker;
            while Instant::now() < until && !emails.is_empty() {
                run.login(&emails[n % emails.len()]).await;
                n += burst.concurrency;
            }
        });
    }
    finish(tasks).await;
}

async fn finish(mut tasks: JoinSet<()>) {
    let drained = tokio::time::timeout(FINISH_WITHIN, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
    }
}
