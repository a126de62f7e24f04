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
