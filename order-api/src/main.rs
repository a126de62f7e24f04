use anyhow::Context;
use order_api::{config::ApiConfig, startup::Application};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init_telemetry(common::telemetry::DEFAULT_FILTER);
    let env_source = common::config::load_env_file()?;
    let config = ApiConfig::from_env().context("reading configuration")?;
    config.log_summary(&env_source);

    let shutdown = common::shutdown::on_signal();
    let app = Application::build(config)
        .await
        .context("starting order-api")?;
    tracing::info!(port = app.port(), "order-api listening");
    app.run_until_stopped(shutdown).await
}
