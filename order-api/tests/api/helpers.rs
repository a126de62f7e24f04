use mongodb::Database;
use order_api::config::ApiConfig;
use reqwest::Response;
use serde_json::Value;
use test_support::{
    TestQueues,
    apps::{self, Running},
    client::ApiClient,
    unique,
};

pub use test_support::apps::JWT_SECRET;
pub use test_support::client::PASSWORD;

pub struct TestApp {
    /// The metrics listener's base URL (not the public port).
    pub metrics_address: String,
    api: ApiClient,
    pub db: Database,
    pub sqs: aws_sdk_sqs::Client,
    pub queues: TestQueues,
    /// Kept until the test ends: dropping it stops the service.
    _running: Running,
}

/// Starts order-api on a free port against the real stack, with a fresh
/// database and fresh queues.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// `spawn_app` with the test configuration changed first.
pub async fn spawn_app_with(configure: impl FnOnce(&mut ApiConfig)) -> TestApp {
    test_support::require_stack().await;
    let database = unique("api").replace('-', "_");
    let queue = unique("orders");
    let sqs = test_support::sqs_client().await;
    let queues = test_support::create_queues(&sqs, &queue, 30).await;
    let mut config = apps::api_config(&database, &queue);
    configure(&mut config);
    // The test's own client is not the service's: a fail point set for
    // the service's `appName` leaves the test's reads alone.
    let db = common::mongo::connect(&test_support::mongo_config(&database), "api-test")
        .await
        .expect("connecting to MongoDB");
    let api = apps::start_api(config).await;
    TestApp {
        metrics_address: api.metrics_address(),
        api: ApiClient::new(&api.address()),
        db,
        sqs,
        queues,
        _running: api,
    }
}

/// The client's calls and the shop's steps (test_support's one client).
impl std::ops::Deref for TestApp {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

impl TestApp {
    pub async fn count(&self, collection: &str) -> u64 {
        self.db
            .collection::<mongodb::bson::Document>(collection)
            .count_documents(mongodb::bson::doc! {})
            .await
            .expect("count")
    }
}

/// The `error.code` of an error response, asserting the one error shape.
pub async fn error_code(response: Response) -> String {
    let body: Value = response.json().await.expect("error bodies are JSON");
    assert!(
        body["error"]["message"].is_string(),
        "error body shape: {body}"
    );
    body["error"]["code"]
        .as_str()
        .expect("error.code")
        .to_string()
}
