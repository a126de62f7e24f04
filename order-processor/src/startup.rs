//! Building and running the processor: the consumer loop and a health endpoint.

use std::time::Duration;

use anyhow::{Context, bail};
use aws_sdk_sqs::types::QueueAttributeName;
use common::backoff::Schedule;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    config::ProcessorConfig,
    consumer::Consumer,
    dlq::Queues,
    email::{EmailWorker, Mailer, Policy, PolicySettings, Shop, Templates, WorkerSettings},
    health, inbox,
};

pub struct Application {
    listener: TcpListener,
    port: u16,
    /// `GET /metrics`, apart from the health port.
    metrics_listener: TcpListener,
    metrics_port: u16,
    consumer: Consumer,
    emails: EmailWorker,
    health: health::HealthState,
    /// Inbox entries past their retention, and when to delete them.
    expiring: Vec<common::expiry::Expiring>,
    expiry_schedule: String,
}

/// The queue settings that must agree with ours.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    pub visibility_timeout: Duration,
    pub message_retention: Duration,
}

impl Application {
    /// Waits for MongoDB and SQS (with backoff, up to the start-up timeout),
    /// prepares indexes, checks that settings agree, binds the health port.
    pub async fn build(config: ProcessorConfig) -> anyhow::Result<Self> {
        crate::metrics::describe();
        let within = config.consumer.startup_timeout;
        let db = common::startup::wait_for("MongoDB", within, || {
            common::mongo::connect(&config.mongo, "order-processor")
        })
        .await?;
        inbox::create_indexes(&db)
            .await
            .context("creating the inbox indexes")?;
        common::orders::create_indexes(&db)
            .await
            .context("creating the orders indexes")?;
        let sqs = common::sqs::client(&config.sqs).await;
        let queues = common::startup::wait_for("SQS", within, || async {
            Ok(Queues {
                main: common::sqs::queue_url(&sqs, &config.sqs.queue_name).await?,
                dead_letter: common::sqs::queue_url(&sqs, &config.sqs.dlq_name).await?,
            })
        })
        .await?;
        let settings = queue_settings(&sqs, &queues.main).await?;
        check_settings(&config, settings)?;
        let emails = build_email_worker(&config, db.clone())?;
        let expiring = vec![inbox::expiring(&db)];
        let health = health::HealthState {
            probe: common::readiness::ReadinessProbe::new(
                db.clone(),
                sqs.clone(),
                queues.main.clone(),
            ),
            db: db.clone(),
            sqs: sqs.clone(),
            queues: queues.clone(),
            policy: emails.policy().clone(),
        };
        let consumer = Consumer::new(
            db,
            sqs,
            queues,
            emails.clone(),
            config.consumer.clone(),
            settings.visibility_timeout,
        );
        let listener = TcpListener::bind((config.host.as_str(), config.port))
            .await
            .with_context(|| format!("binding {}:{}", config.host, config.port))?;
        let port = listener.local_addr()?.port();
        let metrics_listener = TcpListener::bind(config.metrics_addr)
            .await
            .with_context(|| format!("binding PROCESSOR_METRICS_ADDR {}", config.metrics_addr))?;
        let metrics_port = metrics_listener.local_addr()?.port();
        Ok(Application {
            listener,
            port,
            metrics_listener,
            metrics_port,
            consumer,
            emails,
            health,
            expiring,
            expiry_schedule: config.expiry_schedule,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    pub fn consumer(&self) -> &Consumer {
        &self.consumer
    }

    pub fn emails(&self) -> &EmailWorker {
        &self.emails
    }

    /// Consumes and serves health until `shutdown`, then lets the batch in
    /// hand finish (bounded) and exits.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let expiry = common::expiry::start_sweep(&self.expiry_schedule, self.expiring).await?;
        let consumer = tokio::spawn(crate::consumer::run(self.consumer, shutdown.clone()));
        let emails = tokio::spawn(self.emails.run(shutdown.clone()));
        let metrics_shutdown = shutdown.clone();
        let scrapes = tokio::spawn(
            axum::serve(
                self.metrics_listener,
                health::metrics_router(self.health.clone()),
            )
            .with_graceful_shutdown(async move { metrics_shutdown.cancelled().await })
            .into_future(),
        );
        let server_shutdown = shutdown.clone();
        let served = axum::serve(self.listener, health::router(self.health))
            .with_graceful_shutdown(async move { server_shutdown.cancelled().await })
            .await
            .context("serving the health endpoint");
        shutdown.cancel();
        if tokio::time::timeout(Duration::from_secs(30), consumer)
            .await
            .is_err()
        {
            tracing::warn!("consumer did not stop within 30 s");
        }
        if tokio::time::timeout(Duration::from_secs(30), emails)
            .await
            .is_err()
        {
            tracing::warn!("email worker did not stop within 30 s");
        }
        match scrapes.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "serving /metrics"),
            Err(e) => tracing::warn!(error = %e, "the /metrics listener's task failed"),
            Ok(Ok(())) => {}
        }
        common::schedule::stop(expiry, common::expiry::SETTING).await;
        tracing::info!("order-processor stopped");
        served
    }
}

/// The email worker as the settings describe it: templates, SMTP, and its
/// policy (pace, breaker, retry schedule).
pub fn build_email_worker(
    config: &ProcessorConfig,
    db: mongodb::Database,
) -> anyhow::Result<EmailWorker> {
    let smtp = &config.smtp;
    let email = &config.email;
    let mailer = Mailer::new(smtp)?;
    let policy = Policy::new(
        PolicySettings {
            rate: smtp.rate_limit.map(|n| (n, smtp.rate_period)),
            throttle_cooldown: smtp.rate_period,
            breaker_threshold: email.breaker_threshold,
            probes: Schedule::new(email.probe_base, email.probe_cap),
            retries: Schedule::new(email.retry_base, email.retry_cap),
            give_up_after: email.give_up_after,
        },
        &Mailer::provider(smtp),
    );
    let shop = &config.shop;
    let templates = Templates::load(
        Shop {
            name: shop.name.clone(),
            support_email: shop.support_email.clone(),
            order_url: shop.order_url.clone(),
            tax_label: shop.tax_label.clone(),
        },
        shop.template_dir.as_deref(),
    )?;
    Ok(EmailWorker::new(
        db,
        mailer,
        templates,
        policy,
        WorkerSettings {
            lease: email.lease,
            poll_interval: email.poll_interval,
            concurrency: smtp.max_connections,
            message_id_domain: smtp.message_id_domain().to_string(),
        },
    ))
}

async fn queue_settings(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
) -> anyhow::Result<QueueSettings> {
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::VisibilityTimeout)
        .attribute_names(QueueAttributeName::MessageRetentionPeriod)
        .send()
        .await
        .context("reading the queue's settings")?
        .attributes
        .unwrap_or_default();
    let seconds = |name: QueueAttributeName| -> anyhow::Result<Duration> {
        let raw = attributes
            .get(&name)
            .with_context(|| format!("the queue reports no {name}"))?;
        Ok(Duration::from_secs(
            raw.parse().with_context(|| format!("{name}={raw:?}"))?,
        ))
    };
    Ok(QueueSettings {
        visibility_timeout: seconds(QueueAttributeName::VisibilityTimeout)?,
        message_retention: seconds(QueueAttributeName::MessageRetentionPeriod)?,
    })
}

/// Settings that must agree, each refused with what and why.
pub fn check_settings(config: &ProcessorConfig, queue: QueueSettings) -> anyhow::Result<()> {
    let consumer = &config.consumer;
    if queue.visibility_timeout < Duration::from_secs(3) {
        bail!(
            "the queue's VisibilityTimeout is {:?}; at least 3 s is needed, because the heartbeat renews it every third of it while a handler runs",
            queue.visibility_timeout
        );
    }
    if config.email.lease <= config.smtp.timeout + Duration::from_secs(5) {
        bail!(
            "EMAIL_STALE_SEND_SECS ({:?}) must be longer than SMTP_TIMEOUT_SECS ({:?}) plus 5 s: a send still waiting on the mail server would look abandoned and be claimed again, and the customer could get the email twice",
            config.email.lease,
            config.smtp.timeout
        );
    }
    if consumer.inbox_retention < queue.message_retention {
        bail!(
            "INBOX_RETENTION_SECS ({:?}) is shorter than the queue's MessageRetentionPeriod ({:?}): a message redelivered after its inbox entry expired would be processed again",
            consumer.inbox_retention,
            queue.message_retention
        );
    }
    if consumer.retry_cap > Duration::from_secs(43_200) {
        bail!("RETRY_CAP_SECS may be at most 43200 (SQS's 12-hour visibility limit)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ProcessorConfig {
        // SAFETY of the test: from_env only reads; defaults apply to unset vars.
        ProcessorConfig::from_env().expect("defaults are valid")
    }

    fn queue(visibility: u64, retention: u64) -> QueueSettings {
        QueueSettings {
            visibility_timeout: Duration::from_secs(visibility),
            message_retention: Duration::from_secs(retention),
        }
    }

    #[test]
    fn defaults_agree_with_a_default_queue() {
        assert!(check_settings(&config(), queue(30, 4 * 24 * 3600)).is_ok());
    }

    #[test]
    fn a_visibility_timeout_too_short_to_heartbeat_is_refused() {
        let error = check_settings(&config(), queue(2, 3600)).expect_err("refused");
        assert!(error.to_string().contains("VisibilityTimeout"), "{error}");
    }

    #[test]
    fn an_inbox_that_forgets_before_the_queue_does_is_refused() {
        let mut config = config();
        config.consumer.inbox_retention = Duration::from_secs(3600);
        let error = check_settings(&config, queue(30, 7200)).expect_err("refused");
        let message = error.to_string();
        assert!(
            message.contains("INBOX_RETENTION_SECS") && message.contains("processed again"),
            "{message}"
        );
    }

    #[test]
    fn a_stale_send_window_within_the_smtp_timeout_is_refused() {
        let mut config = config();
        config.email.lease = config.smtp.timeout;
        let error = check_settings(&config, queue(30, 3600)).expect_err("refused");
        assert!(
            error.to_string().contains("EMAIL_STALE_SEND_SECS"),
            "{error}"
        );
    }
}
