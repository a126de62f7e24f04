//! Launching the real services in-process, on free ports, against the local
//! stack: each call gets the database and queue it is given.

use std::{num::NonZeroU32, time::Duration};

use order_api::config::ApiConfig;
use order_processor::config::ProcessorConfig;
use tokio_util::sync::CancellationToken;

pub const ADMIN_EMAIL: &str = "admin@shop.test";
pub const ADMIN_PASSWORD: &str = "admin-password-123";
/// The JWT secret every test API signs with, so tests can forge tokens.
pub const JWT_SECRET: &str = "integration-test-secret-0123456789abcdef";
/// Login attempts per minute in tests: every client is 127.0.0.1, so only
/// tests about throttling set a small limit (`spawn_app_with`).
pub const TEST_LOGIN_RATE: NonZeroU32 = NonZeroU32::new(10_000).expect("non-zero");

/// The metrics listener of a test service: loopback, a free port.
const FREE_LOOPBACK_PORT: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0),
);

/// A running service; stopping it (or dropping this) cancels its shutdown token.
pub struct Running {
    pub port: u16,
    /// Its `GET /metrics` listener's port.
    pub metrics_port: u16,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The metrics listener's base URL (`metrics::scrape` adds `/metrics`).
    pub fn metrics_address(&self) -> String {
        format!("http://127.0.0.1:{}", self.metrics_port)
    }

    /// Graceful stop, as on SIGTERM; waits for it to finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Every second, so a test sees expired documents go within a few.
pub const EXPIRY_SCHEDULE: &str = "*/1 * * * * *";

/// The settings every test service shares: loopback on free ports, the
/// local stack, its own database and queue.
fn shared(database: &str, queue: &str) -> Vec<(&'static str, String)> {
    [
        ("MONGODB_URI", crate::mongo_uri()),
        ("MONGODB_DATABASE", database.to_string()),
        ("AWS_ENDPOINT_URL_SQS", crate::sqs_endpoint()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("SQS_QUEUE_NAME", queue.to_string()),
        ("SQS_DLQ_NAME", format!("{queue}-dlq")),
        ("EXPIRY_SWEEP_SCHEDULE", EXPIRY_SCHEDULE.into()),
        ("STARTUP_TIMEOUT_SECS", "5".into()),
    ]
    .into()
}

/// Reads a configuration through its service's own loader, with `settings`
/// in place of the environment's.
fn load<T>(settings: Vec<(&'static str, String)>, read: impl FnOnce() -> anyhow::Result<T>) -> T {
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    common::config::with_overrides(&settings, read).expect("the tests' settings are valid")
}

pub fn api_config(database: &str, queue: &str) -> ApiConfig {
    let rate = TEST_LOGIN_RATE.to_string();
    let mut settings = shared(database, queue);
    settings.extend([
        ("APP_ENV", "development".into()),
        ("API_HOST", "127.0.0.1".into()),
        ("API_PORT", "0".into()),
        ("API_METRICS_ADDR", FREE_LOOPBACK_PORT.to_string()),
        ("JWT_SECRET", JWT_SECRET.into()),
        ("REFRESH_TOKEN_TTL_SECS", "3600".into()),
        ("COOKIE_SECURE", "false".into()),
        ("MAX_CONCURRENT_HASHES", "2".into()),
        ("LOGIN_RATE_PER_MINUTE_PER_IP", rate.clone()),
        ("LOGIN_RATE_PER_MINUTE_PER_ACCOUNT", rate),
        ("ADMIN_EMAIL", ADMIN_EMAIL.into()),
        ("ADMIN_PASSWORD", ADMIN_PASSWORD.into()),
        ("OUTBOX_SWEEP_SCHEDULE", "*/1 * * * * *".into()),
    ]);
    load(settings, ApiConfig::from_env)
}

pub fn processor_config(database: &str, queue: &str) -> ProcessorConfig {
    let mut settings = shared(database, queue);
    settings.extend([
        ("PROCESSOR_HOST", "127.0.0.1".into()),
        ("PROCESSOR_PORT", "0".into()),
        ("PROCESSOR_METRICS_ADDR", FREE_LOOPBACK_PORT.to_string()),
        ("SMTP_HOST", crate::SMTP_HOST.into()),
        ("SMTP_PORT", crate::SMTP_PORT.to_string()),
        (
            "MAIL_FROM",
            "Order Pipeline Tests <orders@shop.test>".into(),
        ),
        ("SMTP_MAX_CONNECTIONS", "4".into()),
        ("SQS_WAIT_TIME_SECS", "1".into()),
        ("CONSUMER_POLLERS", "2".into()),
        ("HANDLER_TIMEOUT_SECS", "30".into()),
        ("RETRY_BASE_SECS", "1".into()),
        ("RETRY_CAP_SECS", "5".into()),
        ("SHOP_NAME", "Test Shop".into()),
        ("SHOP_SUPPORT_EMAIL", "help@shop.test".into()),
        (
            "SHOP_ORDER_URL",
            "http://127.0.0.1/orders/{order_id}".into(),
        ),
        ("EMAIL_RETRY_BASE_SECS", "1".into()),
        ("EMAIL_RETRY_CAP_SECS", "5".into()),
        ("EMAIL_PROBE_CAP_SECS", "2".into()),
        ("EMAIL_POLL_MS", "200".into()),
    ]);
    load(settings, ProcessorConfig::from_env)
}

pub async fn start_api(config: ApiConfig) -> Running {
    let app = order_api::startup::Application::build(config)
        .await
        .expect("order-api starts against the local stack");
    let ports = (app.port(), app.metrics_port());
    Running::spawn(ports, |shutdown| app.run_until_stopped(shutdown))
}

pub async fn start_processor(config: ProcessorConfig) -> Running {
    let app = order_processor::startup::Application::build(config)
        .await
        .expect("order-processor starts against the local stack");
    let ports = (app.port(), app.metrics_port());
    Running::spawn(ports, |shutdown| app.run_until_stopped(shutdown))
}

impl Running {
    /// Runs a built service until its shutdown token is cancelled.
    /// `ports`: the public (or health) port and the metrics port.
    fn spawn<F>(
        (port, metrics_port): (u16, u16),
        run: impl FnOnce(CancellationToken) -> F,
    ) -> Running
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(shutdown.clone()));
        Running {
            port,
            metrics_port,
            shutdown,
            task: Some(task),
        }
    }
}
