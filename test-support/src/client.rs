//! The tests' side of THE API client (`order-api-client`): the same calls,
//! each asserting it succeeded, plus the steps tests repeat (a unique
//! customer, a product, waiting until an order is processed).

use std::{ops::Deref, time::Duration};

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::apps::{ADMIN_EMAIL, ADMIN_PASSWORD};

/// Every test customer's password.
pub const PASSWORD: &str = "s3cure-passw0rd";

pub struct ApiClient {
    client: order_api_client::ApiClient,
}

impl Deref for ApiClient {
    type Target = order_api_client::ApiClient;

    fn deref(&self) -> &Self::Target {
        &self.client
    }
}

fn ok<T>(result: anyhow::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{e:#}"))
}

impl ApiClient {
    pub fn new(base: &str) -> Self {
        ApiClient {
            client: order_api_client::ApiClient::new(base),
        }
    }

    /// One request, whatever its answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Response {
        self.client
            .send(method, path, token, body)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        self.send(Method::POST, path, token, Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        self.send(Method::PATCH, path, token, Some(body)).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        self.send(Method::GET, path, token, None).await
    }

    /// [`ApiClient::post`], as its status and JSON body (`null` if none).
    pub async fn post_json(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> (StatusCode, Value) {
        status_and_json(self.post(path, token, body).await).await
    }

    /// [`ApiClient::get`] with a token, as its status and JSON body.
    pub async fn get_json(&self, path: &str, token: &str) -> (StatusCode, Value) {
        status_and_json(self.get(path, Some(token)).await).await
    }

    /// Waits (bounded) until `/api/ready` answers 200.
    pub async fn wait_ready(&self, within: Duration) {
        crate::eventually(within, "order-api to be ready", || async {
            self.client.check("/api/ready").await.ok()
        })
        .await;
    }

    /// Registers a customer (password [`PASSWORD`]) with a unique name,
    /// without logging in; returns the email.
    pub async fn register(&self) -> String {
        let name = crate::unique("buyer");
        let email = format!("{name}@shop.test");
        ok(self.client.register(&name[..20], &email, PASSWORD).await);
        email
    }

    /// Registers and logs in a customer: (email, access token).
    pub async fn customer(&self) -> (String, String) {
        let email = self.register().await;
        let token = self.login(&email, PASSWORD).await;
        (email, token)
    }

    /// One login attempt, whatever its outcome.
    pub async fn try_login(&self, email: &str, password: &str) -> Response {
        let body = json!({ "email": email, "password": password });
        self.post("/api/auth/login", None, &body).await
    }

    /// The whole login answer: tokens and user.
    pub async fn login_body(&self, email: &str, password: &str) -> Value {
        ok(self.client.login_body(email, password).await)
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        ok(self.client.login(email, password).await)
    }

    pub async fn admin_token(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    /// Creates a product as the admin; returns its id.
    pub async fn product(&self, admin: &str, price: i64, stock: i64) -> String {
        let sku = crate::unique("SKU");
        let name = format!("Product {sku}");
        ok(self
            .client
            .create_product(admin, &name, &sku, price, stock)
            .await)
    }

    /// Places a one-line order; returns the order as answered.
    pub async fn order(&self, token: &str, product: &str, quantity: u32) -> Value {
        let response = self
            .client
            .place_order(token, &[(product, quantity)], None)
            .await
            .expect("request sent");
        let (status, answer) = status_and_json(response).await;
        assert_eq!(status, StatusCode::CREATED, "POST /api/orders: {answer}");
        answer
    }

    /// POST /api/orders with an Idempotency-Key, whatever its answer.
    pub async fn post_keyed(&self, token: &str, key: &str, body: &Value) -> Response {
        self.client
            .request(Method::POST, "/api/orders", Some(token))
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

    /// Waits (bounded) until the order is PROCESSED with its email SENT.
    pub async fn wait_processed(&self, token: &str, order_id: &str) -> Value {
        let path = format!("/api/orders/{order_id}");
        crate::eventually(
            Duration::from_secs(20),
            "the order to be PROCESSED with its email SENT",
            || async {
                let (_, order) = self.get_json(&path, token).await;
                (order["status"] == "PROCESSED" && order["email"]["status"] == "SENT")
                    .then_some(order)
            },
        )
        .await
    }
}

async fn status_and_json(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}
