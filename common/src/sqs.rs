//! SQS client setup.

use anyhow::Context;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_sqs::{Client, config::Credentials};
use secrecy::ExposeSecret;

use crate::config::SqsConfig;

pub async fn client(config: &SqsConfig) -> Client {
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).region(Region::new(config.region.clone()));
    if let Some(endpoint) = &config.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    if let (Some(key), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
        loader = loader.credentials_provider(Credentials::new(
            key,
            secret.expose_secret(),
            None,
            None,
            "static-config",
        ));
    }
    Client::new(&loader.load().await)
}

/// The URL of the queue named `name`; a clear error if it does not exist.
pub async fn queue_url(client: &Client, name: &str) -> anyhow::Result<String> {
    let out = client
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .with_context(|| {
            format!("looking up SQS queue {name:?} (does it exist? `make stack-up` creates it)")
        })?;
    out.queue_url
        .with_context(|| format!("SQS returned no URL for queue {name:?}"))
}

/// The URLs of a queue and its dead-letter queue.
#[derive(Debug, Clone)]
pub struct QueuePair {
    pub url: String,
    pub dlq_url: String,
}

/// Creates (idempotently) queue `name` and its dead-letter queue
/// `name-dlq`, with the redrive policy the real ones have
/// (`localstack-init/ready.d/01-create-queues.sh`): after
/// `max_receive_count` receives SQS moves a message to the DLQ. For tests,
/// the chaos suite and the bench, which each use fresh queues.
pub async fn create_queue_pair(
    client: &Client,
    name: &str,
    visibility_timeout_secs: u32,
    max_receive_count: u32,
) -> anyhow::Result<QueuePair> {
    use aws_sdk_sqs::types::QueueAttributeName;
    let dlq_url = client
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .context("creating the dead-letter queue")?
        .queue_url
        .context("no DLQ url")?;
    let dlq_arn = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .context("reading the DLQ arn")?
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .context("no DLQ arn")?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": max_receive_count.to_string(),
    });
    let url = client
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_timeout_secs.to_string(),
        )
        .send()
        .await
        .context("creating the queue")?
        .queue_url
        .context("no queue url")?;
    Ok(QueuePair { url, dlq_url })
}
