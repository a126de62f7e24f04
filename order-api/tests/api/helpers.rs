use mongodb::Database;
use order_api::config::ApiConfig;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use test_support::{
    TestQueues,
    apps::{self, Running},
    unique,
};

pub use test_support::apps::{ADMIN_EMAIL, ADMIN_PASSWORD, JWT_SECRET};
pub const PASSWORD: &str = "s3cure-passw0rd";

pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    pub db: Database,
    pub sqs: aws_sdk_sqs::Client,
    pub queues: TestQueues,
    _api: Running,
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
    let db = common::mongo::connect(&config.mongo, "api-test")
        .await
        .expect("connecting to MongoDB");
    let api = apps::start_api(config).await;
    TestApp {
        address: api.address(),
        http: reqwest::Client::new(),
        db,
        sqs,
        queues,
        _api: api,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        let mut request = self.http.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request sent")
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        let mut request = self.http.patch(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request sent")
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request sent")
    }

    /// Registers a customer with a unique name and returns (email, access token).
    pub async fn customer(&self) -> (String, String) {
        let email = self.register().await;
        let token = self.login(&email, PASSWORD).await;
        (email, token)
    }

    /// Registers a customer (password [`PASSWORD`]) without logging in, so
    /// no login attempt is spent; returns the email.
    pub async fn register(&self) -> String {
        let name = unique("u");
        let email = format!("{name}@shop.test");
        let response = self
            .post(
                "/api/auth/register",
                None,
                &json!({ "username": &name[..20], "email": email, "password": PASSWORD }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "register");
        email
    }

    /// One login attempt, whatever its outcome.
    pub async fn try_login(&self, email: &str, password: &str) -> Response {
        self.post(
            "/api/auth/login",
            None,
            &json!({ "email": email, "password": password }),
        )
        .await
    }

    /// The whole login response body: tokens and user.
    pub async fn login_body(&self, email: &str, password: &str) -> Value {
        let response = self.try_login(email, password).await;
        assert_eq!(response.status(), StatusCode::OK, "login as {email}");
        response.json().await.expect("json")
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let response = self.try_login(email, password).await;
        assert_eq!(response.status(), StatusCode::OK, "login as {email}");
        let body: Value = response.json().await.expect("json");
        body["accessToken"]
            .as_str()
            .expect("accessToken")
            .to_string()
    }

    pub async fn admin_token(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    /// Creates a product as admin and returns its id.
    pub async fn product(&self, admin: &str, price: i64, stock: i64) -> String {
        let sku = unique("SKU");
        let response = self
            .post(
                "/api/products",
                Some(admin),
                &json!({ "name": format!("Product {sku}"), "sku": sku, "price": price, "stock": stock }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "create product");
        let body: Value = response.json().await.expect("json");
        body["id"].as_str().expect("id").to_string()
    }

    /// Places an order for one product and returns the order JSON.
    pub async fn order(&self, token: &str, product: &str, quantity: u32) -> Value {
        let response = self
            .post(
                "/api/orders",
                Some(token),
                &json!({ "items": [{ "productId": product, "quantity": quantity }] }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "place order");
        response.json().await.expect("json")
    }

    pub async fn post_keyed(&self, token: &str, key: &str, body: &Value) -> Response {
        self.http
            .post(self.url("/api/orders"))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn stock_of(&self, product_id: &str) -> i64 {
        let body: Value = self
            .get(&format!("/api/products/{product_id}"), None)
            .await
            .json()
            .await
            .expect("json");
        body["stock"].as_i64().expect("stock")
    }

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
