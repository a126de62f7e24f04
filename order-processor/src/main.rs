use anyhow::Context;
use clap::{Parser, Subcommand};
use order_processor::{cli, config::ProcessorConfig, startup::Application};

/// Consumes order events from SQS, processes orders and sends their emails.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect or replay the dead-letter queue.
    Dlq {
        #[command(subcommand)]
        action: cli::DlqAction,
    },
    /// Reads and checks the configuration without connecting to anything,
    /// then lists every setting this service reads, `NAME set` or
    /// `NAME default` (never a value). Exits non-zero naming a bad one.
    CheckConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Cli::parse();
    // First, so OTEL_* and RUST_LOG may come from the env file too.
    let env_source = common::config::load_env_file()?;
    let telemetry =
        common::telemetry::init_telemetry("order-processor", common::telemetry::DEFAULT_FILTER)?;
    let config = ProcessorConfig::from_env().context("reading configuration")?;
    match args.command {
        Some(Command::Dlq { action }) => return cli::dlq(&config, action).await,
        Some(Command::CheckConfig) => {
            print!("{}", common::config::settings_report());
            return Ok(());
        }
        None => {}
    }
    config.log_summary(&env_source);

    let shutdown = common::shutdown::on_signal();
    let app = Application::build(config)
        .await
        .context("starting order-processor")?;
    tracing::info!(
        port = app.port(),
        "order-processor health endpoint listening"
    );
    let stopped = app.run_until_stopped(shutdown).await;
    telemetry.shutdown();
    stopped
}
