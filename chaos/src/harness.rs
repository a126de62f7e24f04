//! One scenario's world: its own database and queues, the real service
//! processes, a catalogue and customers, the ledger of what clients were told,
//! and the closing audit.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use mongodb::Database;
use serde::Serialize;
use test_support::mailtrap::{MailtrapLike, MailtrapOptions};

use crate::{
    audit::{self, AuditInput, Figures},
    inbox::{self, Counts},
    load::{self, Ledger, Plan, SharedLedger, Shoppers, Stop},
    procs::{self, Kind, Launch, Service},
    proxy::Proxy,
    shop::{self, Customer, Product},
    stack::{self, Queues, Stack},
};

/// What every scenario shares: the stack, the binaries, where output goes.
pub struct Env {
    pub stack: Stack,
    pub http: reqwest::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub mongo: mongodb::Client,
    /// Directory holding the built order-api and order-processor.
    pub bin_dir: PathBuf,
    /// `<target>/chaos`: logs per scenario, summary.json.
    pub out_dir: PathBuf,
    /// Distinguishes this run's databases, queues and mail recipients.
    pub run_id: String,
    pub settings: ServiceSettings,
}

/// The services' tunables the suite sets (the rest are their defaults).
#[derive(Debug, Clone, Serialize)]
pub struct ServiceSettings {
    pub retry_base_secs: u64,
    pub retry_cap_secs: u64,
    pub outbox_lease_secs: u64,
    pub email_stale_send_secs: u64,
}

/// How a scenario wants its world.
pub struct Setup {
    pub apis: usize,
    /// order-processor instances sharing the queue.
    pub processors: usize,
    /// order-api reaches SQS through a proxy the scenario can cut.
    pub api_sqs_via_proxy: bool,
    pub stocks: Vec<i64>,
    pub customers: usize,
    /// Processor settings this scenario changes (after the suite's own).
    pub processor_env: Vec<(&'static str, String)>,
    /// The processor sends to a MailTrap-like server of its own, started
    /// with these options, instead of the stack's MailDev.
    pub mailtrap: Option<MailtrapOptions>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            apis: 1,
            processors: 1,
            api_sqs_via_proxy: false,
            stocks: vec![1_000; 4],
            customers: 4,
            processor_env: Vec::new(),
            mailtrap: None,
        }
    }
}

pub struct Ctx<'a> {
    pub env: &'a Env,
    pub name: String,
    pub dir: PathBuf,
    pub db: Database,
    pub queues: Queues,
    pub apis: Vec<Service>,
    /// `processor` alone, or `processor-1`... when several share the queue.
    pub processors: Vec<Service>,
    pub proxy: Option<Proxy>,
    /// The scenario's own MailTrap-like server, when it has one.
    pub mailtrap: Option<MailtrapLike>,
    maildev_api: String,
    pub products: Vec<Product>,
    pub customers: Vec<Customer>,
    pub ledger: SharedLedger,
    /// Orders the scenario tried to cancel: CANCELLED is a right end for them.
    pub cancelled: HashSet<String>,
    /// Orders allowed a duplicate email (a kill interrupted their send).
    pub duplicates_allowed: HashSet<String>,
    /// Inbox counts taken before MailDev was restarted.
    pub inbox_before_restart: Counts,
    /// Messages the scenario itself expects in the dead-letter queue.
    pub expected_dead_letters: u64,
    /// Scenario-specific figures, printed after the common ones.
    pub extras: Vec<(String, String)>,
    /// Scenario-specific guarantees that did not hold.
    pub problems: Vec<String>,
    started: Instant,
}

/// One scenario's result.
#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub passed: bool,
    pub figures: Figures,
    pub extras: Vec<(String, String)>,
    pub problems: Vec<String>,
    pub elapsed_secs: u64,
    pub logs: String,
}

impl Report {
    /// Adds a scenario-specific figure to the line.
    pub fn note(&mut self, name: &str, value: impl std::fmt::Display) {
        self.extras.push((name.to_string(), value.to_string()));
    }

    pub fn failed(scenario: &str, error: &anyhow::Error, logs: String, elapsed: Duration) -> Self {
        Report {
            scenario: scenario.to_string(),
            passed: false,
            figures: Figures::default(),
            extras: Vec::new(),
            problems: vec![format!("{error:#}")],
            elapsed_secs: elapsed.as_secs(),
            logs,
        }
    }

    /// The one line of figures.
    pub fn line(&self) -> String {
        let f = &self.figures;
        let mut line = format!(
            "chaos: {}: acknowledged={} unknown={} (committed {}) processed={} emails={} duplicate_emails={} lost={} stock_conserved={}",
            self.scenario,
            f.acknowledged,
            f.unknown,
            f.unknown_committed,
            f.processed,
            f.emails,
            f.duplicate_emails,
            f.lost,
            if f.stock_conserved { "yes" } else { "no" },
        );
        if f.cancelled > 0 {
            line.push_str(&format!(" cancelled={}", f.cancelled));
        }
        for (name, value) in &self.extras {
            line.push_str(&format!(" {name}={value}"));
        }
        line.push_str(&format!(" elapsed={}s", self.elapsed_secs));
        if !self.passed {
            line.push_str(" FAILED");
        }
        line
    }
}

pub fn scenario_dir(env: &Env, name: &str) -> PathBuf {
    env.out_dir.join(name)
}

impl<'a> Ctx<'a> {
    /// Adds a scenario-specific figure to the line.
    pub fn note(&mut self, name: &str, value: impl std::fmt::Display) {
        self.extras.push((name.to_string(), value.to_string()));
    }

    pub async fn new(env: &'a Env, name: &str, setup: Setup) -> anyhow::Result<Ctx<'a>> {
        let started = Instant::now();
        let dir = scenario_dir(env, name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let env_file = dir.join("empty.env");
        std::fs::write(&env_file, "# the suite sets every variable itself\n")?;
        let tag = format!("{}-{}", name.split('-').next().unwrap_or("x"), env.run_id);
        let db = env
            .mongo
            .database(&format!("chaos_{}", tag.replace('-', "_")));
        let queues = stack::create_queues(&env.sqs, &format!("chaos-{tag}")).await?;

        let proxy = if setup.api_sqs_via_proxy {
            Some(Proxy::start(env.stack.sqs_port).await?)
        } else {
            None
        };
        let shared = |sqs_port: u16| -> Vec<(String, String)> {
            let uri = env.stack.mongo_uri();
            [
                ("APP_ENV", "development".to_string()),
                ("ENV_FILE", env_file.display().to_string()),
                ("LOG_FORMAT", "json".into()),
                ("MONGODB_URI", uri),
                ("MONGODB_DATABASE", db.name().to_string()),
                ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{sqs_port}")),
                ("AWS_REGION", "us-east-1".into()),
                ("AWS_ACCESS_KEY_ID", "test".into()),
                ("AWS_SECRET_ACCESS_KEY", "test".into()),
                ("SQS_QUEUE_NAME", queues.name.clone()),
                ("SQS_DLQ_NAME", queues.dlq_name.clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
        };
        let api_sqs_port = proxy.as_ref().map_or(env.stack.sqs_port, |p| p.port);
        let mut apis = Vec::new();
        for n in 1..=setup.apis {
            let port = procs::free_port()?;
            let mut vars = shared(api_sqs_port);
            vars.extend(
                [
                    ("RUST_LOG", "info,tokio_cron_scheduler=warn".to_string()),
                    ("API_HOST", "127.0.0.1".into()),
                    ("API_PORT", port.to_string()),
                    // Instances side by side: each scrape listener on a free port.
                    ("API_METRICS_ADDR", "127.0.0.1:0".into()),
                    (
                        "JWT_SECRET",
                        "chaos-suite-jwt-secret-0123456789abcdef".into(),
                    ),
                    ("ADMIN_EMAIL", shop::ADMIN_EMAIL.into()),
                    ("ADMIN_PASSWORD", shop::ADMIN_PASSWORD.into()),
                    ("COOKIE_SECURE", "false".into()),
                    ("LOGIN_RATE_PER_MINUTE_PER_IP", "100000".into()),
                    ("LOGIN_RATE_PER_MINUTE_PER_ACCOUNT", "100000".into()),
                    ("OUTBOX_SWEEP_SCHEDULE", "*/1 * * * * *".into()),
                    (
                        "OUTBOX_LEASE_SECS",
                        env.settings.outbox_lease_secs.to_string(),
                    ),
                    ("STARTUP_TIMEOUT_SECS", "60".into()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v)),
            );
            apis.push(Service::new(Launch {
                kind: Kind::Api,
                label: format!("api-{n}"),
                binary: env.bin_dir.join(Kind::Api.binary()),
                env: vars,
                port,
                log_dir: dir.clone(),
            }));
        }
        let mut vars = shared(env.stack.sqs_port);
        let settings = &env.settings;
        vars.extend(
            [
                ("RUST_LOG", "info".to_string()),
                ("PROCESSOR_HOST", "127.0.0.1".into()),
                ("PROCESSOR_METRICS_ADDR", "127.0.0.1:0".into()),
                ("SMTP_HOST", "127.0.0.1".into()),
                ("SMTP_PORT", env.stack.smtp_port.to_string()),
                ("SMTP_TLS", "none".into()),
                ("MAIL_FROM", "Chaos <orders@chaos.test>".into()),
                ("SQS_WAIT_TIME_SECS", "1".into()),
                ("RETRY_BASE_SECS", settings.retry_base_secs.to_string()),
                ("RETRY_CAP_SECS", settings.retry_cap_secs.to_string()),
                ("SMTP_TIMEOUT_SECS", "5".into()),
                ("HANDLER_TIMEOUT_SECS", "20".into()),
                ("STARTUP_TIMEOUT_SECS", "60".into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
        );
        vars.push((
            "EMAIL_STALE_SEND_SECS".into(),
            settings.email_stale_send_secs.to_string(),
        ));
        let mailtrap = match setup.mailtrap {
            Some(options) => Some(MailtrapLike::start(options).await),
            None => None,
        };
        if let Some(server) = &mailtrap {
            let mut smtp = vec![
                ("SMTP_HOST", server.host().to_string()),
                ("SMTP_PORT", server.smtp_port().to_string()),
                ("SMTP_USERNAME", server.username().to_string()),
                ("SMTP_PASSWORD", server.password().to_string()),
            ];
            if let Some(ca) = server.ca_file() {
                smtp.push(("SMTP_TLS", "starttls".into()));
                smtp.push(("SMTP_TLS_CA_FILE", ca.display().to_string()));
            }
            for (name, value) in smtp {
                vars.retain(|(n, _)| n != name);
                vars.push((name.to_string(), value));
            }
        }
        for (name, value) in &setup.processor_env {
            vars.retain(|(n, _)| n != name);
            vars.push(((*name).to_string(), value.clone()));
        }
        let mut processors = Vec::new();
        for n in 1..=setup.processors {
            let port = procs::free_port()?;
            let mut env_n = vars.clone();
            env_n.push(("PROCESSOR_PORT".into(), port.to_string()));
            processors.push(Service::new(Launch {
                kind: Kind::Processor,
                label: if setup.processors == 1 {
                    "processor".into()
                } else {
                    format!("processor-{n}")
                },
                binary: env.bin_dir.join(Kind::Processor.binary()),
                env: env_n,
                port,
                log_dir: dir.clone(),
            }));
        }

        let mut ctx = Ctx {
            env,
            name: name.to_string(),
            dir,
            db,
            queues,
            apis,
            processors,
            proxy,
            mailtrap,
            maildev_api: env.stack.inbox_api(),
            products: Vec::new(),
            customers: Vec::new(),
            ledger: Arc::new(Mutex::new(Ledger::default())),
            cancelled: HashSet::new(),
            duplicates_allowed: HashSet::new(),
            inbox_before_restart: Counts::new(),
            expected_dead_letters: 0,
            extras: Vec::new(),
            problems: Vec::new(),
            started,
        };
        // One at a time: each creates indexes and the admin on first start.
        for api in &mut ctx.apis {
            api.start(&env.http).await?;
        }
        for processor in &mut ctx.processors {
            processor.start(&env.http).await?;
        }

        let api = ctx.api_url(0);
        let admin = shop::admin_token(&env.http, &api).await?;
        for (n, stock) in setup.stocks.iter().enumerate() {
            let sku = format!("CHAOS-{tag}-{n}").to_uppercase();
            ctx.products
                .push(shop::create_product(&env.http, &api, &admin, &sku, *stock).await?);
        }
        for n in 0..setup.customers {
            let email = format!("c{n}-{tag}@chaos.test");
            ctx.customers
                .push(shop::register_customer(&env.http, &api, &email).await?);
        }
        Ok(ctx)
    }

    pub fn api_url(&self, n: usize) -> String {
        self.apis[n].base_url()
    }

    pub fn shoppers(&self) -> Shoppers {
        Shoppers {
            http: self.env.http.clone(),
            apis: Arc::new(self.apis.iter().map(Service::base_url).collect()),
            customers: Arc::new(self.customers.clone()),
            products: Arc::new(self.products.clone()),
            ledger: self.ledger.clone(),
        }
    }

    /// Starts `plan` in the background; raise the stop flag or await it.
    pub fn start_load(&self, plan: Plan) -> (tokio::task::JoinHandle<()>, Stop) {
        let stop = Stop::default();
        let handle = tokio::spawn(load::run(self.shoppers(), plan, stop.clone()));
        (handle, stop)
    }

    /// Cancels a random acknowledged order now and then until `stop`; every
    /// attempt goes into `cancelled` (an attempt that got no answer may or
    /// may not have landed, so both ends are right for it).
    pub fn start_cancelling(
        &self,
        every: Duration,
        stop: Stop,
    ) -> tokio::task::JoinHandle<HashSet<String>> {
        let shoppers = self.shoppers();
        tokio::spawn(async move {
            let mut tried = HashSet::new();
            let mut turn = 0usize;
            while !stop.raised() {
                tokio::time::sleep(every).await;
                let candidate = {
                    let ledger = shoppers.ledger.lock().expect("ledger");
                    ledger
                        .acknowledged
                        .iter()
                        .rev()
                        .find(|a| !tried.contains(&a.order_id))
                        .cloned()
                };
                let Some(order) = candidate else { continue };
                tried.insert(order.order_id.clone());
                let api = &shoppers.apis[turn % shoppers.apis.len()];
                turn += 1;
                let customer = &shoppers.customers[order.customer];
                let _ = shop::cancel_order(&shoppers.http, api, customer, &order.order_id).await;
            }
            tried
        })
    }

    /// Where this scenario's emails arrive.
    pub fn inbox(&self) -> inbox::Source<'_> {
        match &self.mailtrap {
            Some(server) => inbox::Source::Mailtrap(server),
            None => inbox::Source::MailDev {
                http: &self.env.http,
                api: &self.maildev_api,
            },
        }
    }

    pub fn recipients(&self) -> HashSet<String> {
        self.customers
            .iter()
            .map(|c| c.email.to_lowercase())
            .collect()
    }

    /// Waits until every order has settled and every message left the queue.
    pub async fn wait_quiet(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        if !audit::wait_settled(&self.db, within).await {
            return false;
        }
        loop {
            if let Ok(depth) = stack::depth(&self.env.sqs, &self.queues.url).await
                && depth.total() == 0
            {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Lets the pipeline settle, audits, stops the services.
    pub async fn finish(mut self) -> Report {
        let settled = audit::wait_settled(&self.db, Duration::from_secs(90)).await;
        let ledger = std::mem::take(&mut *self.ledger.lock().expect("ledger"));
        let recipients = self.recipients();
        let audited = audit::audit(AuditInput {
            db: &self.db,
            ledger: &ledger,
            products: &self.products,
            cancelled_on_purpose: &self.cancelled,
            duplicates_allowed: &self.duplicates_allowed,
            inbox_before_restart: &self.inbox_before_restart,
            inbox: self.inbox(),
            recipients: &recipients,
            settled,
        })
        .await;
        let mut figures = match audited {
            Ok(figures) => figures,
            Err(e) => {
                let mut f = Figures::default();
                f.problems.push(format!("auditing: {e:#}"));
                f
            }
        };
        match stack::depth(&self.env.sqs, &self.queues.dlq_url).await {
            Ok(depth) => {
                figures.dead_lettered = depth.total();
                if depth.total() != self.expected_dead_letters {
                    figures.problems.push(format!(
                        "{} message(s) in the dead-letter queue, {} expected",
                        depth.total(),
                        self.expected_dead_letters
                    ));
                }
            }
            Err(e) => figures.problems.push(format!("reading the DLQ: {e:#}")),
        }
        if !ledger.server_errors.is_empty() {
            let answers: Vec<String> = ledger
                .server_errors
                .iter()
                .map(|(status, n)| format!("{n}x{status}"))
                .collect();
            self.note("answered_5xx", answers.join(","));
            // A fault is answered 503 (with Retry-After); any other 5xx is
            // the API failing to say what happened.
            for (status, n) in &ledger.server_errors {
                if *status != 503 {
                    figures.problems.push(format!(
                        "{n} request(s) answered {status}: a fault must get 503 (the API's log has the error)"
                    ));
                }
            }
        }
        if figures.dead_lettered > 0 {
            self.note("dead_lettered", figures.dead_lettered);
        }
        for service in self.apis.iter_mut().chain(self.processors.iter_mut()) {
            if !service.running() {
                figures
                    .problems
                    .push(format!("{} died on its own", service.launch.label));
            }
            let _ = service.terminate().await;
        }

        let mut problems = std::mem::take(&mut figures.problems);
        problems.append(&mut self.problems);
        let passed = problems.is_empty();
        // The queues go when the scenario passed. The database stays either
        // way: a kill -9 can leave a transaction open on the server, and
        // SecantusDB's dropDatabase then waits on its locks with nothing to
        // reap it, wedging the server for everyone (seen in development).
        if passed {
            stack::delete_queues(&self.env.sqs, &self.queues).await;
        }
        Report {
            scenario: self.name.clone(),
            passed,
            figures,
            extras: std::mem::take(&mut self.extras),
            problems,
            elapsed_secs: self.started.elapsed().as_secs(),
            logs: self.dir.display().to_string(),
        }
    }
}
