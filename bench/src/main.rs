//! `order-bench`: load for a RUNNING order pipeline (order-api and
//! order-processor against their MongoDB, SQS and SMTP), and in the same run
//! the ceiling of its database for the same transaction.
//!
//! It creates its own customers and products through the API, fires orders
//! for a while, waits until every accepted order is processed and emailed,
//! and reports throughput, latencies, end-to-end times, the outbox's lag,
//! errors by kind and the services' memory. See BENCHMARKS.md.

mod ceiling;
mod load;
mod opcount;
mod pipeline;
mod queues;
mod report;
mod sample;
mod shop;
mod statements;
mod stats;

use std::{collections::HashMap, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use bson::oid::ObjectId;
use clap::{Parser, Subcommand, ValueEnum};
use mongodb::{Client, Database, options::ClientOptions};
use tokio_util::sync::CancellationToken;

use crate::{
    ceiling::Ceiling,
    load::{LoginBurst, Mode, Plan},
    report::{Mixed, Report, ScenarioResult},
    shop::Shop,
    stats::Summary,
};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs scenarios against a running order-api and order-processor.
    Run(Box<RunArgs>),
    /// Creates the queue NAME and its dead-letter queue NAME-dlq (for
    /// starting the services on fresh queues).
    CreateQueues(queues::QueueArgs),
    /// Deletes the queue NAME and NAME-dlq.
    DeleteQueues(queues::QueueArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
enum Scenario {
    /// Orders spread over many products.
    Spread,
    /// Every order for ONE product (a flash sale).
    Hot,
    /// Spread orders at a fixed rate: half of what `spread` reached in this
    /// run, or --rate.
    Steady,
    /// Spread orders at a fixed rate with a burst of logins in the middle third.
    Mixed,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Spread => "spread",
            Scenario::Hot => "hot",
            Scenario::Steady => "steady",
            Scenario::Mixed => "mixed",
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    api_url: String,
    #[arg(
        long,
        default_value = "mongodb://127.0.0.1:27017/?replicaSet=secantus&maxIdleTimeMS=60000"
    )]
    mongo_uri: String,
    /// The database the services use (MONGODB_DATABASE).
    #[arg(long)]
    database: String,
    /// order-api's PID, for its memory.
    #[arg(long)]
    api_pid: Option<u32>,
    /// order-processor's PID, for its memory.
    #[arg(long)]
    processor_pid: Option<u32>,
    /// The database server's PID, for the CPU it spends per order (the
    /// services' CPU is counted by their PIDs too).
    #[arg(long)]
    db_pid: Option<u32>,
    /// order-api's metrics listener (API_METRICS_ADDR), for its statements
    /// to MongoDB per order.
    #[arg(long)]
    api_metrics_url: Option<String>,
    /// order-processor's metrics listener (PROCESSOR_METRICS_ADDR).
    #[arg(long)]
    processor_metrics_url: Option<String>,
    /// Scenarios to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "spread,hot,steady,mixed")]
    scenario: Vec<Scenario>,
    /// How long each scenario fires orders: `20s`, `500ms`, `2m`.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Open loop at this many orders/s (spread and hot, and steady/mixed
    /// when no spread ran before them). Without it, closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed-loop buyers, and the ceiling's concurrency.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Products in the spread shape.
    #[arg(long, default_value_t = 64)]
    products: usize,
    /// Lines per spread order (distinct products, one unit each).
    #[arg(long, default_value_t = 1)]
    lines: usize,
    /// Accounts logging in at once during the mixed scenario's burst.
    #[arg(long, default_value_t = 4)]
    login_concurrency: usize,
    #[arg(long, default_value = "admin@example.com")]
    admin_email: String,
    #[arg(long, default_value = "ChangeMe123!")]
    admin_password: String,
    /// How long the ceiling is measured for each shape (default: the
    /// scenario duration, at most 10 s).
    #[arg(long, value_parser = parse_duration)]
    ceiling_duration: Option<Duration>,
    /// Skip measuring the ceiling.
    #[arg(long)]
    no_ceiling: bool,
    /// How long to wait for accepted orders to be processed and emailed.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Also write the results here, as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, unit) = raw
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((raw, "s"), |at| raw.split_at(at));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration like 20s, 500ms or 2m"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{raw:?}: the unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(*args).await,
        Command::CreateQueues(args) => queues::create(&args).await,
        Command::DeleteQueues(args) => queues::delete(&args).await,
    }
}

async fn connect(uri: &str, database: &str, pool: usize) -> anyhow::Result<Database> {
    let mut options = ClientOptions::parse(uri)
        .await
        .context("parsing --mongo-uri")?;
    options.app_name = Some("order-bench".into());
    options.max_pool_size = Some(u32::try_from(pool).unwrap_or(100));
    options.server_selection_timeout = Some(Duration::from_secs(10));
    let db = Client::with_options(options)?.database(database);
    db.run_command(bson::doc! { "ping": 1 })
        .await
        .context("MongoDB does not answer (is the stack up? `scripts/stack.sh up`)")?;
    Ok(db)
}

struct Bench {
    args: RunArgs,
    shop: Shop,
    db: Database,
    ceilings: HashMap<usize, Ceiling>,
    /// Accepted orders/s of the spread scenario, once it ran.
    spread_rate: Option<f64>,
    /// For the services' metrics listeners.
    http: reqwest::Client,
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.products == 0 || args.lines == 0 {
        bail!("--concurrency, --products and --lines must be at least 1");
    }
    if args.lines > args.products {
        bail!("--lines cannot exceed --products: an order names each product once");
    }
    let shop = Shop::new(&args.api_url, args.concurrency * 4 + 16)?;
    shop.check().await?;
    let db = connect(&args.mongo_uri, &args.database, args.concurrency * 2 + 8).await?;
    let mut bench = Bench {
        shop,
        db,
        ceilings: HashMap::new(),
        spread_rate: None,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        args,
    };
    let mut results = Vec::new();
    for scenario in bench.args.scenario.clone() {
        let result = bench
            .scenario(scenario)
            .await
            .with_context(|| format!("scenario {}", scenario.name()))?;
        eprintln!(
            "order-bench: {} done: {:.1} orders/s accepted, API p99 {} ms, POST->PROCESSED p99 {} ms",
            result.name,
            result.accepted_per_sec,
            stats::short(result.api_latency.p99_ms),
            stats::short(result.end_to_end_processed.p99_ms),
        );
        results.push(result);
    }
    let report = Report::new(&bench.args.api_url, &bench.args.database, results);
    report.print();
    if let Some(path) = &bench.args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        println!("\nJSON: {}", path.display());
    }
    let unfinished: u64 = report.scenarios.iter().map(|s| s.unfinished).sum();
    if unfinished > 0 {
        bail!("{unfinished} accepted orders were not processed and emailed in time");
    }
    Ok(())
}

impl Bench {
    fn mode(&self, scenario: Scenario) -> anyhow::Result<Mode> {
        let closed = Mode::Closed {
            concurrency: self.args.concurrency,
        };
        let half = self.spread_rate.map(|r| r / 2.0).filter(|r| *r >= 1.0);
        Ok(match scenario {
            Scenario::Spread | Scenario::Hot => self
                .args
                .rate
                .map_or(closed, |rate| Mode::Open { rate }),
            Scenario::Steady => Mode::Open {
                rate: half.or(self.args.rate).context(
                    "steady runs at half of spread's throughput: put spread before it, or give --rate",
                )?,
            },
            Scenario::Mixed => half
                .or(self.args.rate)
                .map_or(closed, |rate| Mode::Open { rate }),
        })
    }

    async fn scenario(&mut self, scenario: Scenario) -> anyhow::Result<ScenarioResult> {
        let args = self.args.clone();
        let mode = self.mode(scenario)?;
        let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let buyers_wanted = match mode {
            Mode::Closed { concurrency } => concurrency,
            Mode::Open { .. } => args.concurrency,
        };
        let product_count = if scenario == Scenario::Hot {
            1
        } else {
            args.products
        };
        let lines = if scenario == Scenario::Hot {
            1
        } else {
            args.lines
        };
        eprintln!(
            "order-bench: {}: {mode}, {} s, {buyers_wanted} buyers, {product_count} products; setting up",
            scenario.name(),
            args.duration.as_secs_f64()
        );
        let admin = self
            .shop
            .login(&args.admin_email, &args.admin_password)
            .await
            .context("logging in as the admin (--admin-email/--admin-password)")?;
        let admin = admin["accessToken"]
            .as_str()
            .context("no admin accessToken")?
            .to_string();
        let products = self.shop.products(&admin, &tag, product_count).await?;
        let buyers = self.shop.buyers(&tag, buyers_wanted).await?;
        let burst = if scenario == Scenario::Mixed {
            let login_users = self
                .shop
                .buyers(&format!("{tag}l"), args.login_concurrency * 4)
                .await?;
            Some(LoginBurst {
                emails: login_users.into_iter().map(|b| b.email).collect(),
                concurrency: args.login_concurrency,
                from: args.duration / 3,
                until: args.duration * 2 / 3,
            })
        } else {
            None
        };
        let buyer_ids: Vec<ObjectId> = buyers
            .iter()
            .map(|b| ObjectId::parse_str(&b.id))
            .collect::<Result<_, _>>()
            .context("a buyer id from the login answer")?;

        let load_before = report::load_average();
        let stop = CancellationToken::new();
        let api_rss = tokio::spawn(sample::rss_until(args.api_pid, stop.clone()));
        let processor_rss = tokio::spawn(sample::rss_until(args.processor_pid, stop.clone()));
        let outbox_age = tokio::spawn(sample::outbox_age_until(self.db.clone(), stop.clone()));
        let plan = Plan {
            mode,
            duration: args.duration,
            buyers,
            products,
            lines,
            burst,
        };
        let cpu_before = self.pids().mark();
        let ops_before = opcount::OpCounts::read(&self.db).await?;
        let statements_before = self.statements().await?;
        let recorded = load::run(self.shop.clone(), plan, scenario.name()).await;
        let accepted = recorded.placed.len() as u64;
        let drained = pipeline::drain(&self.db, &buyer_ids, accepted, args.drain_timeout).await;
        stop.cancel();
        let drained = drained?;
        let outbox_age = outbox_age.await.context("the outbox sampler")?;
        let ops = opcount::OpCounts::read(&self.db).await?.since(ops_before);
        let statements = self
            .statements()
            .await?
            .per_order_since(&statements_before, accepted);
        let cpu = self.pids().per(cpu_before, accepted);
        let db_ops = opcount::DbOps::of(ops, outbox_age.reads + drained.reads, accepted);
        let e2e = pipeline::end_to_end(&self.db, &buyer_ids, &recorded.placed).await?;
        let load_after = report::load_average();

        let accepted_per_sec = accepted as f64 / recorded.elapsed.as_secs_f64().max(0.001);
        if scenario == Scenario::Spread && matches!(mode, Mode::Closed { .. }) {
            self.spread_rate = Some(accepted_per_sec);
        }
        let ceiling = if args.no_ceiling {
            None
        } else {
            Some(self.ceiling(product_count).await?)
        };
        let mixed = (scenario == Scenario::Mixed).then(|| {
            let quiet = Summary::of(&recorded.api_quiet);
            let during = Summary::of(&recorded.api_burst);
            Mixed {
                p99_ratio: if quiet.p99_ms > 0.0 {
                    during.p99_ms / quiet.p99_ms
                } else {
                    f64::NAN
                },
                orders_quiet: quiet,
                orders_during_logins: during,
                logins: Summary::of(&recorded.logins),
            }
        });
        Ok(ScenarioResult {
            name: scenario.name().into(),
            mode: mode.to_string(),
            duration_secs: args.duration.as_secs_f64(),
            buyers: buyer_ids.len(),
            products: product_count,
            lines_per_order: lines,
            sent: recorded.sent,
            accepted,
            accepted_per_sec,
            api_latency: Summary::of(&recorded.api),
            end_to_end_processed: Summary::of(&e2e.processed),
            end_to_end_email_sent: Summary::of(&e2e.emailed),
            unfinished: drained.unfinished,
            drain_secs: drained.waited.as_secs_f64(),
            outbox_oldest_pending_max_ms: outbox_age.worst_ms,
            db_ops,
            statements,
            cpu,
            errors: recorded.errors,
            api_rss: api_rss.await.ok().flatten(),
            processor_rss: processor_rss.await.ok().flatten(),
            ratio_to_ceiling: ceiling
                .as_ref()
                .filter(|c| c.per_sec > 0.0)
                .map(|c| accepted_per_sec / c.per_sec),
            ceiling,
            mixed,
            load_average_before: load_before,
            load_average_after: load_after,
        })
    }

    /// The services' statement counters now (none without their metrics
    /// listeners).
    async fn statements(&self) -> anyhow::Result<statements::Counts> {
        let listeners: Vec<statements::Listener> = [
            ("order-api", &self.args.api_metrics_url),
            ("order-processor", &self.args.processor_metrics_url),
        ]
        .into_iter()
        .filter_map(|(service, url)| {
            Some(statements::Listener {
                service,
                url: url.clone()?,
            })
        })
        .collect();
        statements::Counts::read(&self.http, &listeners).await
    }

    fn pids(&self) -> sample::Pids {
        sample::Pids {
            database: self.args.db_pid,
            api: self.args.api_pid,
            processor: self.args.processor_pid,
        }
    }

    /// The ceiling for `products` products at --concurrency, measured once per run.
    async fn ceiling(&mut self, products: usize) -> anyhow::Result<Ceiling> {
        if let Some(known) = self.ceilings.get(&products) {
            return Ok(known.clone());
        }
        let within = self
            .args
            .ceiling_duration
            .unwrap_or_else(|| self.args.duration.min(Duration::from_secs(10)));
        eprintln!(
            "order-bench: ceiling, {} product(s), c={}, {} s for each of {} forms",
            products,
            self.args.concurrency,
            within.as_secs_f64(),
            ceiling::Form::ALL.len()
        );
        let mut measured = Vec::new();
        for form in ceiling::Form::ALL {
            let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
            measured.push(
                ceiling::measure(
                    &self.db,
                    &tag,
                    products,
                    self.args.concurrency,
                    within,
                    self.args.db_pid,
                    form,
                )
                .await?,
            );
        }
        // The faster form is the ceiling; the others are kept for the record.
        measured.sort_by(|a, b| b.per_sec.total_cmp(&a.per_sec));
        let mut best = measured.remove(0);
        best.slower_forms = measured;
        self.ceilings.insert(products, best.clone());
        Ok(best)
    }
}
