//! order-api's settings, read once at start-up.

use std::{net::SocketAddr, num::NonZeroU32, time::Duration};

use anyhow::{Context, bail};
use common::{
    config::{self, EnvSource, MongoConfig, SqsConfig},
    domain::{EmailAddress, TaxRate},
};
use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub host: String,
    /// 0 picks a free port (tests).
    pub port: u16,
    /// Where `GET /metrics` is served: a listener of its own, off the
    /// public port, loopback unless set (port 0 picks a free one).
    pub metrics_addr: SocketAddr,
    pub development: bool,
    pub mongo: MongoConfig,
    pub sqs: SqsConfig,
    pub auth: AuthConfig,
    pub admin: Option<AdminSeed>,
    pub shop: ShopConfig,
    pub outbox: OutboxConfig,
    /// When expired outbox rows, refresh tokens and idempotency keys are
    /// deleted (cron with seconds; `common::expiry`).
    pub expiry_schedule: String,
    /// How long start-up waits for MongoDB and SQS.
    pub startup_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub jwt_secret: SecretString,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// `Secure` on the refresh cookie; off only for local plain http.
    pub cookie_secure: bool,
    /// Concurrent argon2 computations; each takes ~19 MiB and a core.
    pub max_concurrent_hashes: usize,
    pub login_rate: LoginRateLimits,
}

/// Half the cores, at least one: argon2 is CPU-bound and each one in flight
/// keeps a ~19 MiB block, so a login burst leaves the other half of the
/// machine to orders and holds the service's memory down.
fn default_concurrent_hashes() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Login attempts allowed per minute, as a burst that refills evenly over the
/// minute. Every attempt counts, successful or not.
#[derive(Debug, Clone, Copy)]
pub struct LoginRateLimits {
    /// Per client address (an IPv6 client's whole /64).
    pub per_ip_per_minute: NonZeroU32,
    /// Per account, keyed by the lowercased email.
    pub per_account_per_minute: NonZeroU32,
}

#[derive(Debug, Clone)]
pub struct AdminSeed {
    pub username: String,
    pub email: EmailAddress,
    pub password: SecretString,
}

#[derive(Debug, Clone)]
pub struct ShopConfig {
    pub currency: String,
    pub tax_rate: TaxRate,
    /// How long placing or cancelling one order may work before its commit
    /// (`ORDER_DEADLINE_SECS`, 10), retries included. Past it the answer is
    /// 503, "not placed"; a commit once sent is waited for.
    pub order_deadline: Duration,
}

impl ShopConfig {
    /// Read on its own too: `order-api seed-products` needs the currency but
    /// none of the serving settings (no JWT secret, no queue).
    pub fn from_env() -> anyhow::Result<Self> {
        let tax_rate = TaxRate::from_basis_points(config::parsed_or("TAX_RATE_BPS", 1800)?)
            .context("TAX_RATE_BPS must be between 0 and 10000")?;
        Ok(ShopConfig {
            currency: config::optional("CURRENCY").unwrap_or_else(|| "INR".into()),
            tax_rate,
            order_deadline: config::seconds_or("ORDER_DEADLINE_SECS", 10)?,
        })
    }
}

impl LoginRateLimits {
    pub const DEFAULT_PER_IP: NonZeroU32 = NonZeroU32::new(30).expect("non-zero");
    pub const DEFAULT_PER_ACCOUNT: NonZeroU32 = NonZeroU32::new(10).expect("non-zero");
}

#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// Cron schedule (with seconds) of the sweep that wakes the relay for
    /// rows no commit of this process woke it for.
    pub sweep_schedule: String,
    /// How long a relay owns the rows it claimed; an instance that dies
    /// holding rows releases them when this runs out.
    pub lease: Duration,
    /// Published rows are deleted this long after publication (TTL index).
    pub retention: Duration,
}

pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// Used only when APP_ENV=development and JWT_SECRET is unset.
const DEVELOPMENT_JWT_SECRET: &str = "dev-only-secret-change-me-0123456789abcdef";

/// Every secret value this repository publishes (`.env.example`,
/// `docker-compose.yml`'s defaults, the Kubernetes local overlay, the bench
/// tool's defaults): anyone who has read the repository knows them, so
/// outside APP_ENV=development none is accepted as `JWT_SECRET` (it would
/// let them sign an admin's token) or `ADMIN_PASSWORD`. A test reads those
/// files and fails when one publishes a value missing here.
pub const PUBLISHED_SECRETS: &[&str] = &[DEVELOPMENT_JWT_SECRET, "ChangeMe123!"];

/// The rules registration applies to a password (`RegisterRequest`).
pub const PASSWORD_LENGTH: std::ops::RangeInclusive<usize> = 8..=128;

impl ApiConfig {
    /// Loopback: only this machine's scraper reads it unless a deployment
    /// says otherwise (`API_METRICS_ADDR=0.0.0.0:9100` in a pod).
    pub const DEFAULT_METRICS_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        9100,
    ));

    pub fn from_env() -> anyhow::Result<Self> {
        // Unset is production: a deployment that forgets it is refused the
        // development defaults, never given them.
        let development = config::optional("APP_ENV").is_some_and(|e| e == "development");
        let jwt_secret = match config::secret("JWT_SECRET") {
            Some(secret) => secret,
            None if development => SecretString::from(DEVELOPMENT_JWT_SECRET),
            None => bail!(
                "JWT_SECRET must be set to at least {MIN_JWT_SECRET_BYTES} random bytes \
                 (only APP_ENV=development may run without it, on a built-in development secret)"
            ),
        };
        if jwt_secret.expose_secret().len() < MIN_JWT_SECRET_BYTES {
            bail!(
                "JWT_SECRET is {} bytes; at least {MIN_JWT_SECRET_BYTES} are required so tokens cannot be brute-forced",
                jwt_secret.expose_secret().len()
            );
        }
        if !development && PUBLISHED_SECRETS.contains(&jwt_secret.expose_secret()) {
            bail!(
                "JWT_SECRET is a value published in this repository (.env.example, docker-compose.yml, \
                 the local Kubernetes overlay): anyone could sign tokens with it. Set a fresh one of at \
                 least {MIN_JWT_SECRET_BYTES} random bytes (e.g. `openssl rand -base64 48`); only \
                 APP_ENV=development accepts it"
            );
        }
        let admin = match (
            config::optional("ADMIN_EMAIL"),
            config::secret("ADMIN_PASSWORD"),
        ) {
            (Some(email), Some(password)) => Some(AdminSeed {
                username: config::optional("ADMIN_USERNAME").unwrap_or_else(|| "admin".into()),
                email: EmailAddress::parse(&email)
                    .map_err(|e| anyhow::anyhow!("ADMIN_EMAIL {email:?}: {e}"))?,
                password,
            }),
            (None, None) => None,
            _ => bail!("set both ADMIN_EMAIL and ADMIN_PASSWORD, or neither"),
        };
        if let Some(admin) = &admin {
            let password = admin.password.expose_secret();
            if !PASSWORD_LENGTH.contains(&password.chars().count()) {
                bail!(
                    "ADMIN_PASSWORD must be {} to {} characters, as registration requires",
                    PASSWORD_LENGTH.start(),
                    PASSWORD_LENGTH.end()
                );
            }
            if !development && PUBLISHED_SECRETS.contains(&password) {
                bail!(
                    "ADMIN_PASSWORD is a value published in this repository (.env.example, \
                     docker-compose.yml, the local Kubernetes overlay): anyone could log in as the \
                     admin. Set another; only APP_ENV=development accepts it"
                );
            }
        }
        Ok(ApiConfig {
            host: config::optional("API_HOST").unwrap_or_else(|| "127.0.0.1".into()),
            port: config::parsed_or("API_PORT", 8000)?,
            metrics_addr: config::parsed_or("API_METRICS_ADDR", Self::DEFAULT_METRICS_ADDR)?,
            development,
            mongo: MongoConfig::from_env()?,
            sqs: SqsConfig::from_env()?,
            auth: AuthConfig {
                jwt_secret,
                access_token_ttl: config::seconds_or("JWT_ACCESS_TTL_SECS", 15 * 60)?,
                refresh_token_ttl: config::seconds_or("REFRESH_TOKEN_TTL_SECS", 7 * 24 * 3600)?,
                cookie_secure: config::parsed_or("COOKIE_SECURE", true)?,
                max_concurrent_hashes: config::parsed_or(
                    "MAX_CONCURRENT_HASHES",
                    default_concurrent_hashes(),
                )?,
                login_rate: LoginRateLimits {
                    per_ip_per_minute: config::parsed_or(
                        "LOGIN_RATE_PER_MINUTE_PER_IP",
                        LoginRateLimits::DEFAULT_PER_IP,
                    )?,
                    per_account_per_minute: config::parsed_or(
                        "LOGIN_RATE_PER_MINUTE_PER_ACCOUNT",
                        LoginRateLimits::DEFAULT_PER_ACCOUNT,
                    )?,
                },
            },
            admin,
            shop: ShopConfig::from_env()?,
            outbox: OutboxConfig {
                sweep_schedule: config::optional("OUTBOX_SWEEP_SCHEDULE")
                    .unwrap_or_else(|| "*/5 * * * * *".into()),
                lease: config::seconds_or("OUTBOX_LEASE_SECS", 30)?,
                retention: config::seconds_or("OUTBOX_RETENTION_SECS", 7 * 24 * 3600)?,
            },
            expiry_schedule: common::expiry::schedule_from_env(),
            startup_timeout: config::seconds_or("STARTUP_TIMEOUT_SECS", 60)?,
        })
    }

    /// One start-up line saying where settings came from; never a secret.
    pub fn log_summary(&self, source: &EnvSource) {
        match source {
            EnvSource::File(path) if path.ends_with(".env.example") => tracing::warn!(
                file = %path.display(),
                "no .env found: running with the DEVELOPMENT DEFAULTS from .env.example"
            ),
            EnvSource::File(path) => {
                tracing::info!(file = %path.display(), "settings read from file and environment")
            }
            EnvSource::ProcessOnly => tracing::info!("settings read from the environment"),
        }
        tracing::info!(
            host = %self.host,
            port = self.port,
            metrics = %self.metrics_addr,
            database = %self.mongo.database,
            queue = %self.sqs.queue_name,
            sqs_endpoint = self.sqs.endpoint_url.as_deref().unwrap_or("aws"),
            development = self.development,
            "order-api configuration"
        );
    }
}
