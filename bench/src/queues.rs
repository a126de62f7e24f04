//! Fresh queues for a bench run, so runs never read each other's messages.

use anyhow::Context;
use common::config::SqsConfig;

#[derive(Debug, clap::Args)]
pub struct QueueArgs {
    /// The queue's name; its dead-letter queue is NAME-dlq.
    #[arg(long)]
    name: String,
    #[arg(long, default_value = "http://127.0.0.1:4566")]
    sqs_endpoint: String,
    #[arg(long, default_value = "us-east-1")]
    region: String,
}

async fn client(args: &QueueArgs) -> aws_sdk_sqs::Client {
    common::sqs::client(&SqsConfig {
        region: args.region.clone(),
        endpoint_url: Some(args.sqs_endpoint.clone()),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".to_string().into()),
        queue_name: args.name.clone(),
        dlq_name: format!("{}-dlq", args.name),
    })
    .await
}

/// The queue and its DLQ, with the redrive policy of the real ones
/// (`localstack-init/ready.d/01-create-queues.sh`).
pub async fn create(args: &QueueArgs) -> anyhow::Result<()> {
    let sqs = client(args).await;
    let url = common::sqs::create_queue_pair(&sqs, &args.name, 30, 5)
        .await?
        .url;
    println!("{url}");
    Ok(())
}

pub async fn delete(args: &QueueArgs) -> anyhow::Result<()> {
    let sqs = client(args).await;
    for name in [args.name.clone(), format!("{}-dlq", args.name)] {
        let url = common::sqs::queue_url(&sqs, &name).await?;
        sqs.delete_queue()
            .queue_url(&url)
            .send()
            .await
            .with_context(|| format!("deleting queue {name}"))?;
    }
    Ok(())
}
