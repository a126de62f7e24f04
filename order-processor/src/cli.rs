//! Operator commands: `order-processor dlq list` and `dlq redrive`.

use anyhow::Context;
use clap::Subcommand;

use crate::{config::ProcessorConfig, dlq};

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Show what is dead-lettered (nothing is removed).
    List {
        /// At most this many messages.
        #[arg(long, default_value_t = 50)]
        max: usize,
    },
    /// Move dead letters back to the main queue after a fix. Without --yes
    /// it only previews what would move.
    Redrive {
        #[arg(long, default_value_t = 100)]
        max: usize,
        /// Actually move them.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn dlq(config: &ProcessorConfig, action: DlqAction) -> anyhow::Result<()> {
    let sqs = common::sqs::client(&config.sqs).await;
    let queues = dlq::Queues {
        main: common::sqs::queue_url(&sqs, &config.sqs.queue_name).await?,
        dead_letter: common::sqs::queue_url(&sqs, &config.sqs.dlq_name).await?,
    };
    match action {
        DlqAction::List { max } => {
            let letters = dlq::peek(&sqs, &queues.dead_letter, max).await?;
            print_letters(&config.sqs.dlq_name, &letters);
        }
        DlqAction::Redrive { max, yes: false } => {
            let letters = dlq::peek(&sqs, &queues.dead_letter, max).await?;
            print_letters(&config.sqs.dlq_name, &letters);
            println!(
                "preview only: `order-processor dlq redrive --max {max} --yes` moves {} message(s) back to {}",
                letters.len(),
                config.sqs.queue_name
            );
        }
        DlqAction::Redrive { max, yes: true } => {
            let moved = dlq::redrive(&sqs, &queues, max)
                .await
                .context("redriving the dead-letter queue")?;
            println!(
                "moved {moved} message(s) from {} back to {}",
                config.sqs.dlq_name, config.sqs.queue_name
            );
        }
    }
    Ok(())
}

fn print_letters(queue: &str, letters: &[dlq::DeadLetter]) {
    println!("{} message(s) in {queue}", letters.len());
    for letter in letters {
        let body: String = letter.body.chars().take(200).collect();
        println!(
            "- {} receives={} reason={} body={}",
            letter.message_id,
            letter.receive_count.as_deref().unwrap_or("?"),
            letter
                .reason
                .as_deref()
                .unwrap_or("(moved by SQS after maxReceiveCount)"),
            body
        );
    }
}
