//! order-processor's settings, read once at start-up.

use std::{net::SocketAddr, num::NonZeroU32, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use common::config::{self, EnvSource, MongoConfig, SqsConfig};
use lettre::message::Mailbox;
use secrecy::SecretString;

#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    pub host: String,
    /// Health endpoint port; 0 picks a free one (tests).
    pub port: u16,
    /// Where `GET /metrics` is served: a listener of its own, apart from
    /// the health port, loopback unless set (port 0 picks a free one).
    pub metrics_addr: SocketAddr,
    pub mongo: MongoConfig,
    pub sqs: SqsConfig,
    pub smtp: SmtpConfig,
    pub consumer: ConsumerConfig,
    pub email: EmailConfig,
    /// What the emails say about the shop, and where their templates are.
    pub shop: ShopEmailConfig,
    /// When expired inbox entries are deleted (cron with seconds;
    /// `common::expiry`).
    pub expiry_schedule: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain SMTP: MailDev, Mailpit.
    None,
    /// STARTTLS upgrade: MailTrap's sandbox on 2525.
    StartTls,
    /// TLS from the first byte (SMTPS, usually 465).
    Tls,
}

impl std::str::FromStr for SmtpTls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(SmtpTls::None),
            "starttls" => Ok(SmtpTls::StartTls),
            "tls" => Ok(SmtpTls::Tls),
            other => Err(format!("{other:?}: expected none, starttls or tls")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub from: Mailbox,
    pub timeout: Duration,
    /// A CA to trust besides the system's (`SMTP_TLS_CA_FILE`, PEM): a
    /// private CA, or the test server's. Invalid certificates are never
    /// accepted.
    pub tls_ca_file: Option<PathBuf>,
    /// At most this many emails per `rate_period` (`SMTP_RATE_LIMIT`);
    /// `None` is unlimited (MailDev, Mailpit).
    pub rate_limit: Option<NonZeroU32>,
    pub rate_period: Duration,
    /// Connections open at once (MailTrap: 10 per account).
    pub max_connections: usize,
    /// Emails sent on one connection before it is replaced (MailTrap: 100).
    pub max_messages_per_connection: u32,
}

/// What the emails say about the shop (`email::render`).
#[derive(Debug, Clone)]
pub struct ShopEmailConfig {
    /// `SHOP_NAME`.
    pub name: String,
    /// `SHOP_SUPPORT_EMAIL`; MAIL_FROM's address when unset.
    pub support_email: String,
    /// `SHOP_ORDER_URL`, with `{order_id}` in it: the emails link to it.
    pub order_url: Option<String>,
    /// `SHOP_TAX_LABEL`, the tax line's label.
    pub tax_label: String,
    /// `EMAIL_TEMPLATE_DIR`: the shop's templates, replacing the built-in
    /// ones of the same name.
    pub template_dir: Option<PathBuf>,
}

/// How the email worker treats email as durable work (`email::worker`).
#[derive(Debug, Clone)]
pub struct EmailConfig {
    /// How long a claim holds an email (`EMAIL_STALE_SEND_SECS`): a
    /// `SENDING` email older than this belongs to a crashed worker and is
    /// sent again (same Message-ID).
    pub lease: Duration,
    /// A transiently refused email is `FAILED` once due this long (3 days).
    pub give_up_after: Duration,
    /// The first retry's delay; doubles per attempt, jittered, up to the cap.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Consecutive transient failures that open the breaker.
    pub breaker_threshold: u32,
    /// The breaker's probes: from `probe_base`, doubling, up to `probe_cap`.
    pub probe_base: Duration,
    pub probe_cap: Duration,
    /// How often the email worker looks for due emails when nothing wakes it.
    pub poll_interval: Duration,
}

impl SmtpConfig {
    /// The domain of the sender address: Message-IDs live under it.
    pub fn message_id_domain(&self) -> &str {
        self.from.email.domain()
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// SQS long-poll wait (0 to 20 s).
    pub wait_time: Duration,
    /// Messages per receive (1 to 10).
    pub max_messages: i32,
    /// Receive loops running side by side (1 to 16); at most
    /// `pollers × max_messages` messages are in hand at once.
    pub pollers: usize,
    /// A batch's transaction not committed by then is given up (nothing is
    /// written) and its messages are retried.
    pub handler_timeout: Duration,
    /// First retry delay after a transient failure; doubles per receive.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// How long handled event ids are remembered. Must cover the queue's
    /// message retention, or a late redelivery could be processed twice.
    pub inbox_retention: Duration,
    /// How long start-up waits for MongoDB and SQS.
    pub startup_timeout: Duration,
}

impl ProcessorConfig {
    /// Loopback, beside order-api's 9100 (`PROCESSOR_METRICS_ADDR`).
    pub const DEFAULT_METRICS_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        9101,
    ));

    pub fn from_env() -> anyhow::Result<Self> {
        let from_raw = config::optional("MAIL_FROM")
            .unwrap_or_else(|| "Order Pipeline <orders@example.com>".into());
        let from: Mailbox = from_raw
            .parse()
            .with_context(|| format!("MAIL_FROM={from_raw:?} is not a mailbox"))?;
        let wait_secs: u64 = config::parsed_or("SQS_WAIT_TIME_SECS", 20)?;
        if wait_secs > 20 {
            bail!("SQS_WAIT_TIME_SECS must be 0 to 20 (SQS's long-poll limit)");
        }
        let max_messages: i32 = config::parsed_or("SQS_MAX_MESSAGES", 10)?;
        if !(1..=10).contains(&max_messages) {
            bail!("SQS_MAX_MESSAGES must be 1 to 10");
        }
        let pollers: usize = config::parsed_or("CONSUMER_POLLERS", 4)?;
        if !(1..=16).contains(&pollers) {
            bail!("CONSUMER_POLLERS must be 1 to 16");
        }
        let max_connections: usize = config::parsed_or("SMTP_MAX_CONNECTIONS", 10)?;
        if !(1..=100).contains(&max_connections) {
            bail!("SMTP_MAX_CONNECTIONS must be 1 to 100");
        }
        let max_messages_per_connection: u32 =
            config::parsed_or("SMTP_MAX_MESSAGES_PER_CONNECTION", 100)?;
        if max_messages_per_connection == 0 {
            bail!("SMTP_MAX_MESSAGES_PER_CONNECTION must be at least 1");
        }
        let breaker_threshold: u32 = config::parsed_or("EMAIL_BREAKER_THRESHOLD", 5)?;
        if breaker_threshold == 0 {
            bail!("EMAIL_BREAKER_THRESHOLD must be at least 1");
        }
        Ok(ProcessorConfig {
            host: config::optional("PROCESSOR_HOST").unwrap_or_else(|| "127.0.0.1".into()),
            port: config::parsed_or("PROCESSOR_PORT", 8001)?,
            metrics_addr: config::parsed_or("PROCESSOR_METRICS_ADDR", Self::DEFAULT_METRICS_ADDR)?,
            mongo: MongoConfig::from_env()?,
            sqs: SqsConfig::from_env()?,
            smtp: SmtpConfig {
                host: config::optional("SMTP_HOST").unwrap_or_else(|| "127.0.0.1".into()),
                port: config::parsed_or("SMTP_PORT", 1025)?,
                tls: config::parsed_or("SMTP_TLS", SmtpTls::None)?,
                username: config::optional("SMTP_USERNAME"),
                password: config::secret("SMTP_PASSWORD"),
                from: from.clone(),
                timeout: config::seconds_or("SMTP_TIMEOUT_SECS", 10)?,
                tls_ca_file: config::optional("SMTP_TLS_CA_FILE").map(PathBuf::from),
                rate_limit: match config::parsed_or::<u32>("SMTP_RATE_LIMIT", 0)? {
                    0 => None,
                    n => NonZeroU32::new(n),
                },
                rate_period: config::seconds_or("SMTP_RATE_PERIOD_SECS", 10)?,
                max_connections,
                max_messages_per_connection,
            },
            consumer: ConsumerConfig {
                wait_time: Duration::from_secs(wait_secs),
                max_messages,
                pollers,
                handler_timeout: config::seconds_or("HANDLER_TIMEOUT_SECS", 120)?,
                retry_base: config::seconds_or("RETRY_BASE_SECS", 2)?,
                retry_cap: config::seconds_or("RETRY_CAP_SECS", 300)?,
                inbox_retention: config::seconds_or("INBOX_RETENTION_SECS", 14 * 24 * 3600)?,
                startup_timeout: config::seconds_or("STARTUP_TIMEOUT_SECS", 60)?,
            },
            email: EmailConfig {
                lease: config::seconds_or("EMAIL_STALE_SEND_SECS", 60)?,
                give_up_after: config::seconds_or("EMAIL_GIVE_UP_AFTER_SECS", 3 * 24 * 3600)?,
                retry_base: config::seconds_or("EMAIL_RETRY_BASE_SECS", 5)?,
                retry_cap: config::seconds_or("EMAIL_RETRY_CAP_SECS", 600)?,
                breaker_threshold,
                probe_base: Duration::from_secs(1),
                probe_cap: config::seconds_or("EMAIL_PROBE_CAP_SECS", 8)?,
                poll_interval: Duration::from_millis(config::parsed_or("EMAIL_POLL_MS", 1000)?),
            },
            shop: ShopEmailConfig {
                name: config::optional("SHOP_NAME").unwrap_or_else(|| "Order Pipeline".into()),
                support_email: config::optional("SHOP_SUPPORT_EMAIL")
                    .unwrap_or_else(|| from.email.to_string()),
                order_url: config::optional("SHOP_ORDER_URL"),
                tax_label: config::optional("SHOP_TAX_LABEL").unwrap_or_else(|| "GST (18%)".into()),
                template_dir: config::optional("EMAIL_TEMPLATE_DIR").map(PathBuf::from),
            },
            expiry_schedule: common::expiry::schedule_from_env(),
        })
    }

    pub fn log_summary(&self, source: &EnvSource) {
        if let EnvSource::File(path) = source {
            if path.ends_with(".env.example") {
                tracing::warn!(file = %path.display(), "no .env found: running with the DEVELOPMENT DEFAULTS from .env.example");
            } else {
                tracing::info!(file = %path.display(), "settings read from file and environment");
            }
        }
        tracing::info!(
            database = %self.mongo.database,
            queue = %self.sqs.queue_name,
            smtp_host = %self.smtp.host,
            smtp_port = self.smtp.port,
            metrics = %self.metrics_addr,
            smtp_tls = ?self.smtp.tls,
            smtp_auth = self.smtp.username.is_some(),
            smtp_rate_limit = ?self.smtp.rate_limit,
            smtp_rate_period = ?self.smtp.rate_period,
            "order-processor configuration"
        );
    }
}
