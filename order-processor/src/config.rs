//! order-processor's settings, read once at start-up.

use std::time::Duration;

use anyhow::{Context, bail};
use common::config::{self, EnvSource, MongoConfig, SqsConfig};
use lettre::message::Mailbox;
use secrecy::SecretString;

#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    pub host: String,
    /// Health endpoint port; 0 picks a free one (tests).
    pub port: u16,
    pub mongo: MongoConfig,
    pub sqs: SqsConfig,
    pub smtp: SmtpConfig,
    pub consumer: ConsumerConfig,
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
    /// Orders handled at once within a batch.
    pub concurrency: usize,
    /// Receive loops running side by side (1 to 16); at most
    /// `pollers × max_messages` messages are in hand at once.
    pub pollers: usize,
    /// A `SENDING` email older than this is a crashed attempt and is retried.
    pub stale_send_after: Duration,
    /// A handler still running after this is abandoned; the message is retried.
    pub handler_timeout: Duration,
    /// First retry delay after a transient failure; doubles per receive.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// How long the shared writers (first deliveries, SENT records) wait
    /// after a first item for others before they write (0 to 1000 ms).
    pub linger: Duration,
    /// How long handled event ids are remembered. Must cover the queue's
    /// message retention, or a late redelivery could be processed twice.
    pub inbox_retention: Duration,
    /// How long start-up waits for MongoDB and SQS.
    pub startup_timeout: Duration,
}

impl ProcessorConfig {
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
        let linger_ms: u64 = config::parsed_or("CONSUMER_LINGER_MS", 20)?;
        if linger_ms > 1000 {
            bail!("CONSUMER_LINGER_MS must be 0 to 1000");
        }
        Ok(ProcessorConfig {
            host: config::optional("PROCESSOR_HOST").unwrap_or_else(|| "127.0.0.1".into()),
            port: config::parsed_or("PROCESSOR_PORT", 8001)?,
            mongo: MongoConfig::from_env()?,
            sqs: SqsConfig::from_env()?,
            smtp: SmtpConfig {
                host: config::optional("SMTP_HOST").unwrap_or_else(|| "127.0.0.1".into()),
                port: config::parsed_or("SMTP_PORT", 1025)?,
                tls: config::parsed_or("SMTP_TLS", SmtpTls::None)?,
                username: config::optional("SMTP_USERNAME"),
                password: config::secret("SMTP_PASSWORD"),
                from,
                timeout: config::seconds_or("SMTP_TIMEOUT_SECS", 10)?,
            },
            consumer: ConsumerConfig {
                wait_time: Duration::from_secs(wait_secs),
                max_messages,
                concurrency: config::parsed_or("CONSUMER_CONCURRENCY", 10)?,
                pollers,
                stale_send_after: config::seconds_or("EMAIL_STALE_SEND_SECS", 60)?,
                handler_timeout: config::seconds_or("HANDLER_TIMEOUT_SECS", 120)?,
                retry_base: config::seconds_or("RETRY_BASE_SECS", 2)?,
                retry_cap: config::seconds_or("RETRY_CAP_SECS", 300)?,
                linger: Duration::from_millis(linger_ms),
                inbox_retention: config::seconds_or("INBOX_RETENTION_SECS", 14 * 24 * 3600)?,
                startup_timeout: config::seconds_or("STARTUP_TIMEOUT_SECS", 60)?,
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
            smtp_tls = ?self.smtp.tls,
            smtp_auth = self.smtp.username.is_some(),
            "order-processor configuration"
        );
    }
}
