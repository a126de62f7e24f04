//! Launching the real services in-process, on free ports, against the local
//! stack: each call gets the database and queue it is given.

use std::{num::NonZeroU32, time::Duration};

use order_api::config::{
    AdminSeed, ApiConfig, AuthConfig, LoginRateLimits, OutboxConfig, ShopConfig,
};
use order_processor::config::{
    ConsumerConfig, EmailConfig, ProcessorConfig, ShopEmailConfig, SmtpConfig, SmtpTls,
};
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

pub fn api_config(database: &str, queue: &str) -> ApiConfig {
    ApiConfig {
        host: "127.0.0.1".into(),
        port: 0,
        metrics_addr: FREE_LOOPBACK_PORT,
        development: true,
        mongo: crate::mongo_config(database),
        sqs: crate::sqs_config(queue),
        auth: AuthConfig {
            jwt_secret: JWT_SECRET.into(),
            access_token_ttl: Duration::from_secs(900),
            refresh_token_ttl: Duration::from_secs(3600),
            cookie_secure: false,
            max_concurrent_hashes: 2,
            login_rate: LoginRateLimits {
                per_ip_per_minute: TEST_LOGIN_RATE,
                per_account_per_minute: TEST_LOGIN_RATE,
            },
        },
        admin: Some(AdminSeed {
            username: "admin".into(),
            email: common::domain::EmailAddress::parse(ADMIN_EMAIL).expect("a valid address"),
            password: ADMIN_PASSWORD.into(),
        }),
        shop: ShopConfig {
            currency: "INR".into(),
            tax_rate: common::domain::TaxRate::GST_18,
            order_deadline: Duration::from_secs(10),
        },
        outbox: OutboxConfig {
            batch_size: 10,
            sweep_schedule: "*/1 * * * * *".into(),
            lease: Duration::from_secs(30),
            retention: Duration::from_secs(7 * 24 * 3600),
            linger: Duration::from_millis(25),
            mark_within: Duration::from_millis(200),
        },
        expiry_schedule: EXPIRY_SCHEDULE.into(),
        startup_timeout: Duration::from_secs(5),
    }
}

pub fn processor_config(database: &str, queue: &str) -> ProcessorConfig {
    ProcessorConfig {
        host: "127.0.0.1".into(),
        port: 0,
        metrics_addr: FREE_LOOPBACK_PORT,
        mongo: crate::mongo_config(database),
        sqs: crate::sqs_config(queue),
        smtp: SmtpConfig {
            host: crate::SMTP_HOST.into(),
            port: crate::SMTP_PORT,
            tls: SmtpTls::None,
            username: None,
            password: None,
            from: "Order Pipeline Tests <orders@shop.test>"
                .parse()
                .expect("valid mailbox"),
            timeout: Duration::from_secs(10),
            tls_ca_file: None,
            rate_limit: None,
            rate_period: Duration::from_secs(10),
            max_connections: 4,
            max_messages_per_connection: 100,
        },
        consumer: ConsumerConfig {
            wait_time: Duration::from_secs(1),
            max_messages: 10,
            concurrency: 4,
            pollers: 2,
            handler_timeout: Duration::from_secs(30),
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(5),
            linger: Duration::from_millis(5),
            inbox_retention: Duration::from_secs(14 * 24 * 3600),
            startup_timeout: Duration::from_secs(5),
        },
        shop: ShopEmailConfig {
            name: "Test Shop".into(),
            support_email: "help@shop.test".into(),
            order_url: Some("http://127.0.0.1/orders/{order_id}".into()),
            tax_label: "GST (18%)".into(),
            template_dir: None,
        },
        email: EmailConfig {
            lease: Duration::from_secs(60),
            give_up_after: Duration::from_secs(3 * 24 * 3600),
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(5),
            breaker_threshold: 5,
            probe_base: Duration::from_millis(500),
            probe_cap: Duration::from_secs(2),
            poll_interval: Duration::from_millis(200),
            batch: 20,
            sent_linger: Duration::from_millis(100),
        },
        expiry_schedule: EXPIRY_SCHEDULE.into(),
    }
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
