//! THE REST client for a running order-api at any address (an in-process
//! app or a real binary), used by every test crate: raw calls that return
//! the response, and the shop's steps (register, log in, create a product,
//! place an order, wait until it is processed), each asserting success.

use std::time::Duration;

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::apps::{ADMIN_EMAIL, ADMIN_PASSWORD};

/// Every test customer's password.
pub const PASSWORD: &str = "s3cure-passw0rd";

pub struct ApiClient {
    base: String,
    pub http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str) -> Self {
        ApiClient {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// One request, whatever its answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Response {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        request
            .send()
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

    /// A POST that must answer `expect`; its JSON body.
    async fn post_expecting(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
        expect: StatusCode,
    ) -> Value {
        let (status, answer) = self.post_json(path, token, body).await;
        assert_eq!(status, expect, "POST {path}: {answer}");
        answer
    }

    /// Waits (bounded) until `/api/ready` answers 200.
    pub async fn wait_ready(&self, within: Duration) {
        let url = self.url("/api/ready");
        crate::eventually(within, "order-api to be ready", || async {
            let response = self.http.get(&url).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
    }

    /// Registers a customer (password [`PASSWORD`]) with a unique name,
    /// without logging in; returns the email.
    pub async fn register(&self) -> String {
        let name = crate::unique("buyer");
        let email = format!("{name}@shop.test");
        let body = json!({ "username": &name[..20], "email": email, "password": PASSWORD });
        self.post_expecting("/api/auth/register", None, &body, StatusCode::CREATED)
            .await;
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
        let body = json!({ "email": email, "password": password });
        self.post_expecting("/api/auth/login", None, &body, StatusCode::OK)
            .await
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        self.login_body(email, password).await["accessToken"]
            .as_str()
            .expect("accessToken")
            .to_string()
    }

    pub async fn admin_token(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    /// Creates a product as the admin; returns its id.
    pub async fn product(&self, admin: &str, price: i64, stock: i64) -> String {
        let sku = crate::unique("SKU");
        let body =
            json!({ "name": format!("Product {sku}"), "sku": sku, "price": price, "stock": stock });
        let answer = self
            .post_expecting("/api/products", Some(admin), &body, StatusCode::CREATED)
            .await;
        answer["id"].as_str().expect("id").to_string()
    }

    /// Places a one-line order; returns the order as answered.
    pub async fn order(&self, token: &str, product: &str, quantity: u32) -> Value {
        let body = json!({ "items": [{ "productId": product, "quantity": quantity }] });
        self.post_expecting("/api/orders", Some(token), &body, StatusCode::CREATED)
            .await
    }

    /// POST /api/orders with an Idempotency-Key, whatever its answer.
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
