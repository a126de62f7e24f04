use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use common::config::MongoConfig;
use order_api::{
    config::{ApiConfig, ShopConfig},
    products::seed,
    startup::Application,
};

/// The shop's order API. Without a command, serves HTTP (settings from the
/// environment and .env; see .env.example).
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Creates or updates the products in FILE, a JSON array of
    /// {name, sku, price, stock, description?}, matched by sku. Stock of
    /// products that already exist is left as it is.
    SeedProducts { file: PathBuf },
    /// Reads and checks the configuration without connecting to anything,
    /// then lists every setting this service reads, `NAME set` or
    /// `NAME default` (never a value). Exits non-zero naming a bad one.
    CheckConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // First, so OTEL_* and RUST_LOG may come from the env file too.
    let env_source = common::config::load_env_file()?;
    let telemetry =
        common::telemetry::init_telemetry("order-api", common::telemetry::DEFAULT_FILTER)?;
    let done = match cli.command {
        None => {
            let config = ApiConfig::from_env().context("reading configuration")?;
            config.log_summary(&env_source);
            serve(config).await
        }
        Some(Command::SeedProducts { file }) => seed_products(&file).await,
        Some(Command::CheckConfig) => ApiConfig::from_env()
            .context("reading configuration")
            .map(|_| print!("{}", common::config::settings_report())),
    };
    telemetry.shutdown();
    done
}

async fn serve(config: ApiConfig) -> anyhow::Result<()> {
    let shutdown = common::shutdown::on_signal();
    let app = Application::build(config)
        .await
        .context("starting order-api")?;
    tracing::info!(port = app.port(), "order-api listening");
    app.run_until_stopped(shutdown).await
}

/// Needs only the database and the currency: no JWT secret, no queue. The
/// file is checked first, so a bad one is reported even with no database.
async fn seed_products(file: &std::path::Path) -> anyhow::Result<()> {
    let products = seed::read_file(file)?;
    let mongo = MongoConfig::from_env().context("reading configuration")?;
    let shop = ShopConfig::from_env().context("reading configuration")?;
    let db = common::mongo::connect(&mongo, "order-api-seed").await?;
    let summary = seed::seed_products(&db, &shop.currency, products)
        .await
        .with_context(|| format!("seeding products from {}", file.display()))?;
    println!("{summary}");
    Ok(())
}
