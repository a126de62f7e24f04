//! The local stack the suite runs against: where it listens, how to stop and
//! start one of its services (through `scripts/stack.sh`, with the same
//! `STACK_*` ports), and the SQS queues each scenario creates for itself.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use aws_sdk_sqs::types::QueueAttributeName;
use common::config::SqsConfig;

/// Ports of the stack, read from the same variables `scripts/stack.sh` reads,
/// with its defaults: in CI the suite uses the default stack.
#[derive(Debug, Clone)]
pub struct Stack {
    pub mongo_port: u16,
    pub sqs_port: u16,
    pub smtp_port: u16,
    pub mail_web_port: u16,
    pub script: PathBuf,
}

/// The queue's visibility timeout: short, so a killed processor's messages
/// come back quickly.
pub const VISIBILITY_TIMEOUT_SECS: u32 = 10;
/// Receives before SQS itself moves a message to the dead-letter queue, as in
/// `localstack-init/ready.d/01-create-queues.sh`.
pub const MAX_RECEIVE_COUNT: u32 = 5;

fn port(name: &str, default: u16) -> anyhow::Result<u16> {
    match std::env::var(name) {
        Ok(raw) if !raw.trim().is_empty() => raw
            .trim()
            .parse()
            .with_context(|| format!("{name}={raw:?} is not a port")),
        _ => Ok(default),
    }
}

impl Stack {
    pub fn from_env(repo_root: &std::path::Path) -> anyhow::Result<Self> {
        Ok(Stack {
            mongo_port: port("STACK_MONGO_PORT", 27017)?,
            sqs_port: port("STACK_SQS_PORT", 4566)?,
            smtp_port: port("STACK_SMTP_PORT", 1025)?,
            mail_web_port: port("STACK_MAIL_WEB_PORT", 1080)?,
            script: repo_root.join("scripts/stack.sh"),
        })
    }

    pub fn mongo_uri(&self) -> String {
        format!(
            "mongodb://127.0.0.1:{}/?replicaSet=secantus&maxIdleTimeMS=60000",
            self.mongo_port
        )
    }

    pub fn sqs_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.sqs_port)
    }

    pub fn inbox_api(&self) -> String {
        format!("http://127.0.0.1:{}", self.mail_web_port)
    }

    /// `scripts/stack.sh ACTION SERVICE` with this stack's ports; waits for it
    /// (the script waits until a started service answers).
    pub async fn control(&self, action: &str, service: &str) -> anyhow::Result<()> {
        self.script(&[action, service]).await
    }

    /// `scripts/stack.sh up`: every service running again, whatever a failed
    /// scenario left stopped.
    pub async fn ensure_up(&self) -> anyhow::Result<()> {
        self.script(&["up"]).await
    }

    async fn script(&self, args: &[&str]) -> anyhow::Result<()> {
        let shown = args.join(" ");
        let output = tokio::process::Command::new("bash")
            .arg(&self.script)
            .args(args)
            .env("STACK_MONGO_PORT", self.mongo_port.to_string())
            .env("STACK_SQS_PORT", self.sqs_port.to_string())
            .env("STACK_SMTP_PORT", self.smtp_port.to_string())
            .env("STACK_MAIL_WEB_PORT", self.mail_web_port.to_string())
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("running {} {shown}", self.script.display()))?;
        if !output.status.success() {
            bail!(
                "`scripts/stack.sh {shown}` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    pub async fn sqs_client(&self) -> aws_sdk_sqs::Client {
        common::sqs::client(&SqsConfig {
            region: "us-east-1".into(),
            endpoint_url: Some(self.sqs_endpoint()),
            access_key_id: Some("test".into()),
            secret_access_key: Some("test".to_string().into()),
            queue_name: "unused".into(),
            dlq_name: "unused".into(),
        })
        .await
    }

    pub async fn mongo_client(&self) -> anyhow::Result<mongodb::Client> {
        let mut options = mongodb::options::ClientOptions::parse(self.mongo_uri()).await?;
        options.app_name = Some("order-chaos".into());
        options.server_selection_timeout = Some(Duration::from_secs(5));
        Ok(mongodb::Client::with_options(options)?)
    }

    /// Fails, naming the service and how to start it, unless all three answer.
    pub async fn require_up(&self, http: &reqwest::Client) -> anyhow::Result<()> {
        let hint = "start it with `scripts/stack.sh up` (with the same STACK_* ports)";
        let mongo = self.mongo_client().await?;
        mongo
            .database("admin")
            .run_command(bson::doc! { "ping": 1 })
            .await
            .with_context(|| format!("MongoDB at {} is down; {hint}", self.mongo_uri()))?;
        self.sqs_client()
            .await
            .list_queues()
            .max_results(1)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "SQS at {} is down ({}); {hint}",
                    self.sqs_endpoint(),
                    aws_sdk_sqs::error::DisplayErrorContext(&e)
                )
            })?;
        http.get(format!("{}/email", self.inbox_api()))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("the mail inbox at {} is down; {hint}", self.inbox_api()))?;
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Queues {
    pub name: String,
    pub dlq_name: String,
    pub url: String,
    pub dlq_url: String,
}

/// Creates (or, after LocalStack lost them, re-creates) a scenario's queue and
/// its dead-letter queue, with the redrive policy the real ones have.
pub async fn create_queues(sqs: &aws_sdk_sqs::Client, name: &str) -> anyhow::Result<Queues> {
    let dlq_name = format!("{name}-dlq");
    let common::sqs::QueuePair { url, dlq_url } =
        common::sqs::create_queue_pair(sqs, name, VISIBILITY_TIMEOUT_SECS, MAX_RECEIVE_COUNT)
            .await?;
    Ok(Queues {
        name: name.to_string(),
        dlq_name,
        url,
        dlq_url,
    })
}

pub async fn delete_queues(sqs: &aws_sdk_sqs::Client, queues: &Queues) {
    for url in [&queues.url, &queues.dlq_url] {
        let _ = sqs.delete_queue().queue_url(url).send().await;
    }
}

/// Messages in the queue: visible, in flight (received, not yet deleted) and
/// delayed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

impl Depth {
    pub fn total(self) -> u64 {
        self.visible + self.in_flight + self.delayed
    }
}

pub async fn depth(sqs: &aws_sdk_sqs::Client, url: &str) -> anyhow::Result<Depth> {
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "reading the queue depth: {}",
                aws_sdk_sqs::error::DisplayErrorContext(&e)
            )
        })?
        .attributes
        .unwrap_or_default();
    let count = |name: QueueAttributeName| {
        attributes
            .get(&name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Depth {
        visible: count(QueueAttributeName::ApproximateNumberOfMessages),
        in_flight: count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        delayed: count(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
    })
}

/// Bodies in a queue, each received once (hidden for 30 s, not deleted).
pub async fn peek_bodies(sqs: &aws_sdk_sqs::Client, url: &str) -> anyhow::Result<Vec<String>> {
    let mut bodies = Vec::new();
    for _ in 0..5 {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(30)
            .wait_time_seconds(1)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "receiving from the DLQ: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(&e)
                )
            })?;
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            break;
        }
        bodies.extend(messages.into_iter().filter_map(|m| m.body));
    }
    Ok(bodies)
}
