//! Helpers for integration tests against the REAL local stack: MongoDB
//! (SecantusDB or mongod), SQS (LocalStack) and an SMTP server with an inbox
//! API (MailDev), plus a MailTrap-like SMTP server a test starts for itself
//! (`mailtrap`: a real aiosmtpd server with MailTrap's limits and replies).
//! Nothing here fakes them.
//!
//! A test that needs the stack and finds it down panics with a message that
//! says how to start it; it never passes or skips silently.

pub mod apps;
pub mod client;
pub mod fail_point;
pub mod mailtrap;
pub mod metrics;
pub mod process;
pub mod proxy;

use std::{future::Future, time::Duration};

use common::config::{MongoConfig, SqsConfig};
use serde::Deserialize;

pub const MONGO_URI: &str = "mongodb://127.0.0.1:27017/?replicaSet=secantus&maxIdleTimeMS=60000";
pub const SQS_ENDPOINT: &str = "http://127.0.0.1:4566";
pub const SMTP_HOST: &str = "127.0.0.1";
pub const SMTP_PORT: u16 = 1025;
pub const INBOX_API: &str = "http://127.0.0.1:1080";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

pub fn mongo_uri() -> String {
    env_or("TEST_MONGODB_URI", MONGO_URI)
}

pub fn sqs_endpoint() -> String {
    env_or("TEST_SQS_ENDPOINT", SQS_ENDPOINT)
}

pub fn inbox_api() -> String {
    env_or("TEST_INBOX_API", INBOX_API)
}

/// A name no other test (or earlier run) uses: LocalStack and the database
/// keep state between runs, so every test gets fresh ones.
/// The workspace's root directory (where `.stack/` is).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support sits in the workspace root")
        .to_path_buf()
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub fn mongo_config(database: &str) -> MongoConfig {
    MongoConfig {
        uri: mongo_uri().into(),
        database: database.to_string(),
        server_selection_timeout: Duration::from_secs(5),
    }
}

pub fn sqs_config(queue_name: &str) -> SqsConfig {
    SqsConfig {
        region: "us-east-1".into(),
        endpoint_url: Some(sqs_endpoint()),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".to_string().into()),
        queue_name: queue_name.to_string(),
        dlq_name: format!("{queue_name}-dlq"),
    }
}

const STACK_HINT: &str = "the local stack is not running: start it with `make stack-up` (or \
     `scripts/stack.sh up`). Against docker compose's mongo from the host, set \
     TEST_MONGODB_URI=mongodb://127.0.0.1:27017/?directConnection=true (its member is named \
     mongo:27017, which resolves only inside compose)";

/// Panics, naming the service, unless MongoDB, SQS and the mail inbox answer.
pub async fn require_stack() {
    let probe = mongo_config("stack_probe");
    if let Err(e) = common::mongo::connect(&probe, "test-probe").await {
        panic!("MongoDB at {} is down: {e:#}\n{STACK_HINT}", mongo_uri());
    }
    let sqs = sqs_client().await;
    if let Err(e) = sqs.list_queues().max_results(1).send().await {
        panic!(
            "SQS at {} is down: {}\n{STACK_HINT}",
            sqs_endpoint(),
            aws_sdk_sqs::error::DisplayErrorContext(&e)
        );
    }
    if let Err(e) = reqwest::get(format!("{}/email", inbox_api()))
        .await
        .and_then(reqwest::Response::error_for_status)
    {
        panic!(
            "the mail inbox at {} is down: {e}\n{STACK_HINT}",
            inbox_api()
        );
    }
}

pub async fn sqs_client() -> aws_sdk_sqs::Client {
    common::sqs::client(&sqs_config("unused")).await
}

pub struct TestQueues {
    pub queue_url: String,
    pub dlq_url: String,
}

/// Creates a queue and its dead-letter queue (maxReceiveCount 5), like
/// `localstack-init/ready.d/01-create-queues.sh` does for the real ones.
pub async fn create_queues(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    visibility_timeout_secs: u32,
) -> TestQueues {
    let common::sqs::QueuePair {
        url: queue_url,
        dlq_url,
    } = common::sqs::create_queue_pair(sqs, name, visibility_timeout_secs, 5)
        .await
        .unwrap_or_else(|e| panic!("creating the test queues {name}: {e:#}"));
    TestQueues { queue_url, dlq_url }
}

/// All bodies currently receivable from `queue_url` (drains up to `max`).
pub async fn receive_bodies(sqs: &aws_sdk_sqs::Client, queue_url: &str, max: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    for _ in 0..10 {
        if bodies.len() >= max {
            break;
        }
        let out = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receiving from the test queue");
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            break;
        }
        bodies.extend(messages.into_iter().filter_map(|m| m.body));
    }
    bodies
}

/// Polls `check` every 100 ms until it yields a value or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `collection` holds no document with `_id: id` (a scheduled
/// deletion has run); panics after `timeout` if it is still there.
pub async fn until_deleted(
    collection: &mongodb::Collection<mongodb::bson::Document>,
    id: &str,
    timeout: Duration,
) {
    let what = format!("{} {id:?} to be deleted", collection.name());
    eventually(timeout, &what, || async {
        let found = collection
            .find_one(mongodb::bson::doc! { "_id": id })
            .await
            .expect("query");
        found.is_none().then_some(())
    })
    .await;
}

#[derive(Debug, Clone, Deserialize)]
pub struct Recipient {
    pub address: String,
}

/// One mail as MailDev's API shows it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedEmail {
    pub subject: String,
    #[serde(default)]
    pub message_id: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub html: Option<String>,
    pub to: Vec<Recipient>,
}

/// The mail catcher's inbox, filtered to one recipient (tests use unique
/// addresses, so they never see each other's mail).
pub async fn emails_to(address: &str) -> Vec<ReceivedEmail> {
    let all: Vec<ReceivedEmail> = reqwest::get(format!("{}/email", inbox_api()))
        .await
        .expect("reading the mail inbox")
        .json()
        .await
        .expect("the inbox answers JSON");
    all.into_iter()
        .filter(|m| m.to.iter().any(|r| r.address.eq_ignore_ascii_case(address)))
        .collect()
}
