//! Configuration shared by both services: read once from the environment into
//! typed values. A `.env` file is read if present (or the file `ENV_FILE`
//! names), never overriding variables already set.

use std::{
    cell::RefCell,
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    str::FromStr,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use anyhow::{Context, bail};
use secrecy::SecretString;

/// Where the settings came from, so start-up can say it in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvSource {
    /// Only the process environment.
    ProcessOnly,
    /// A dotenv file, as well as the process environment.
    File(PathBuf),
}

/// Loads `ENV_FILE` if set (it must exist), else `.env` if present.
pub fn load_env_file() -> anyhow::Result<EnvSource> {
    if let Some(path) = std::env::var_os("ENV_FILE") {
        let path = PathBuf::from(path);
        dotenvy::from_path(&path)
            .with_context(|| format!("reading ENV_FILE {}", path.display()))?;
        return Ok(EnvSource::File(path));
    }
    match dotenvy::dotenv() {
        Ok(path) => Ok(EnvSource::File(path)),
        Err(e) if e.not_found() => Ok(EnvSource::ProcessOnly),
        Err(e) => Err(e).context("reading .env"),
    }
}

/// A variable that must be set and non-empty.
pub fn required(name: &str) -> anyhow::Result<String> {
    match optional(name) {
        Some(value) => Ok(value),
        None => bail!("{name} must be set (see .env.example)"),
    }
}

/// Every setting this process has looked up, set or not.
static READ: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

thread_local! {
    /// Values standing in for the environment's while a configuration is
    /// read on this thread ([`with_overrides`]).
    static OVERRIDES: RefCell<Option<HashMap<String, String>>> = const { RefCell::new(None) };
}

/// Runs `read` (a service's `from_env`) with `overrides` in place of the
/// environment's values for those names (an empty value counts as unset):
/// how tests configure a service, through the loader production uses.
pub fn with_overrides<T>(overrides: &[(&str, &str)], read: impl FnOnce() -> T) -> T {
    let values = overrides
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    let outer = OVERRIDES.replace(Some(values));
    let read = read();
    OVERRIDES.set(outer);
    read
}

/// A variable that may be absent; empty counts as absent. Every setting is
/// read through here, so `names_read` knows them all.
pub fn optional(name: &str) -> Option<String> {
    READ.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(name.to_string());
    OVERRIDES
        .with_borrow(|overrides| overrides.as_ref()?.get(name).cloned())
        .or_else(|| std::env::var(name).ok())
        .filter(|v| !v.trim().is_empty())
}

/// The settings looked up so far, sorted: after a service has read its
/// configuration, every name it reads (`check-config` prints them, and a
/// test holds the deployment files to them).
pub fn names_read() -> Vec<String> {
    READ.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .cloned()
        .collect()
}

/// What `order-api check-config` and `order-processor check-config` print
/// once the configuration has been read and accepted: one line per setting
/// the service reads, `NAME set` or `NAME default`. Never a value.
pub fn settings_report() -> String {
    names_read()
        .into_iter()
        .map(|name| {
            let state = if optional(&name).is_some() {
                "set"
            } else {
                "default"
            };
            format!("{name} {state}\n")
        })
        .collect()
}

/// A variable parsed into `T`, or `default` when absent.
pub fn parsed_or<T>(name: &str, default: T) -> anyhow::Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match optional(name) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={raw:?} is not valid: {e}")),
    }
}

pub fn seconds_or(name: &str, default_secs: u64) -> anyhow::Result<Duration> {
    parsed_or(name, default_secs).map(Duration::from_secs)
}

pub fn secret(name: &str) -> Option<SecretString> {
    optional(name).map(SecretString::from)
}

#[derive(Debug, Clone)]
pub struct MongoConfig {
    /// May hold credentials: a secret.
    pub uri: SecretString,
    pub database: String,
    /// How long an operation waits to find a usable server before failing.
    pub server_selection_timeout: Duration,
}

impl MongoConfig {
    /// The local stack's server. `maxIdleTimeMS`: it drops connections idle
    /// for over 300 s (local stand-in, "idle connections dropped after
    /// 300 s", see `crate::mongo::server`).
    pub const DEFAULT_URI: &'static str =
        "mongodb://127.0.0.1:27017/?replicaSet=secantus&maxIdleTimeMS=60000";

    pub fn from_env() -> anyhow::Result<Self> {
        Ok(MongoConfig {
            uri: SecretString::from(
                optional("MONGODB_URI").unwrap_or_else(|| Self::DEFAULT_URI.to_string()),
            ),
            database: optional("MONGODB_DATABASE").unwrap_or_else(|| "order_pipeline".into()),
            server_selection_timeout: Duration::from_millis(parsed_or(
                "MONGODB_SERVER_SELECTION_TIMEOUT_MS",
                5_000,
            )?),
        })
    }
}

#[derive(Debug, Clone)]
pub struct SqsConfig {
    pub region: String,
    /// `None` means AWS itself (or `AWS_ENDPOINT_URL`, which the SDK reads).
    pub endpoint_url: Option<String>,
    /// Static credentials; when absent the SDK's default chain is used.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<SecretString>,
    pub queue_name: String,
    pub dlq_name: String,
}

impl SqsConfig {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(SqsConfig {
            region: optional("AWS_REGION")
                .or_else(|| optional("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into()),
            endpoint_url: optional("AWS_ENDPOINT_URL_SQS").or_else(|| optional("AWS_ENDPOINT_URL")),
            access_key_id: optional("AWS_ACCESS_KEY_ID"),
            secret_access_key: secret("AWS_SECRET_ACCESS_KEY"),
            queue_name: optional("SQS_QUEUE_NAME")
                .unwrap_or_else(|| "order-processing-queue".into()),
            dlq_name: optional("SQS_DLQ_NAME").unwrap_or_else(|| "order-processing-dlq".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let config = MongoConfig {
            uri: SecretString::from("mongodb://user:hunter2@db"),
            database: "d".into(),
            server_selection_timeout: Duration::from_secs(1),
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(config.uri.expose_secret().contains("hunter2"));
    }
}

#[cfg(test)]
mod env_example_tests {
    use std::collections::HashMap;

    /// `make run` loads .env.example when there is no .env: it must parse,
    /// and every value the services parse must be valid.
    #[test]
    fn env_example_parses_and_names_every_setting() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../.env.example");
        let vars: HashMap<String, String> = dotenvy::from_path_iter(path)
            .expect(".env.example exists")
            .collect::<Result<_, _>>()
            .expect(".env.example parses as dotenv");
        for name in [
            "MONGODB_URI",
            "SQS_QUEUE_NAME",
            "JWT_SECRET",
            "ADMIN_EMAIL",
            "ADMIN_PASSWORD",
            "OUTBOX_SWEEP_SCHEDULE",
            "EXPIRY_SWEEP_SCHEDULE",
            "SMTP_HOST",
            "SMTP_TLS",
            "MAIL_FROM",
        ] {
            assert!(vars.contains_key(name), "{name} missing from .env.example");
        }
        assert_eq!(vars["OUTBOX_SWEEP_SCHEDULE"], "*/5 * * * * *");
        assert_eq!(vars["MAIL_FROM"], "Order Pipeline <orders@example.com>");
        assert!(vars["JWT_SECRET"].len() >= 32);
    }
}
