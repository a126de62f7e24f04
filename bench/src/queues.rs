//! Fresh queues for a bench run, so runs never read each other's messages.

use anyhow::Context;
use aws_sdk_sqs::types::QueueAttributeName;
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
    let dlq_url = sqs
        .create_queue()
        .queue_name(format!("{}-dlq", args.name))
        .send()
        .await
        .context("creating the dead-letter queue")?
        .queue_url
        .context("no DLQ url")?;
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .context("reading the DLQ arn")?
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .context("no DLQ arn")?;
    let redrive = serde_json::json!({ "deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5" });
    let url = sqs
        .create_queue()
        .queue_name(&args.name)
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .attributes(QueueAttributeName::VisibilityTimeout, "30")
        .send()
        .await
        .context("creating the queue")?
        .queue_url
        .context("no queue url")?;
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
