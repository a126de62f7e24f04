//! Building and running the processor: the consumer loop and a health endpoint.

use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{config::ProcessorConfig, consumer::Consumer, email::Mailer, health};

pub struct Application {
    listener: TcpListener,
    port: u16,
    consumer: Consumer,
}

impl Application {
    pub async fn build(config: ProcessorConfig) -> anyhow::Result<Self> {
        let db = common::mongo::connect(&config.mongo, "order-processor").await?;
        let sqs = common::sqs::client(&config.sqs).await;
        let queue_url = common::sqs::queue_url(&sqs, &config.sqs.queue_name).await?;
        let mailer = Mailer::new(&config.smtp)?;
        let consumer = Consumer::new(
            db,
            sqs,
            queue_url,
            mailer,
            config.consumer.clone(),
            config.smtp.message_id_domain().to_string(),
        );
        let listener = TcpListener::bind((config.host.as_str(), config.port))
            .await
            .with_context(|| format!("binding {}:{}", config.host, config.port))?;
        let port = listener.local_addr()?.port();
        Ok(Application {
            listener,
            port,
            consumer,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn consumer(&self) -> &Consumer {
        &self.consumer
    }

    /// Consumes and serves health until `shutdown`, then lets the batch in
    /// hand finish (bounded) and exits.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let consumer = tokio::spawn(crate::consumer::run(self.consumer, shutdown.clone()));
        let server_shutdown = shutdown.clone();
        let served = axum::serve(self.listener, health::router())
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
        tracing::info!("order-processor stopped");
        served
    }
}
