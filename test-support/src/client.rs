//! A REST client for a running order-api at any address (an in-process
//! app or a real binary): the few calls tests make, each asserting success.

use std::time::Duration;

use serde_json::{Value, json};

pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str) -> Self {
        ApiClient {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, token: Option<&str>, body: &Value, expect: u16) -> Value {
        let (status, answer) = self
            .call(reqwest::Method::POST, path, token, Some(body))
            .await;
        assert_eq!(status, expect, "POST {path}: {answer}");
        answer
    }

    /// Waits (bounded) until `/api/ready` answers 200.
    pub async fn wait_ready(&self, within: Duration) {
        let url = format!("{}/api/ready", self.base);
        crate::eventually(within, "order-api to be ready", || async {
            let response = self.http.get(&url).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let body = json!({ "email": email, "password": password });
        let answer = self.post("/api/auth/login", None, &body, 200).await;
        answer["accessToken"]
            .as_str()
            .expect("accessToken")
            .to_string()
    }

    /// Registers a customer with a unique email and returns their token.
    pub async fn new_customer(&self) -> String {
        let name = crate::unique("buyer");
        let email = format!("{name}@shop.test");
        let password = "s3cure-passw0rd";
        let body = json!({ "username": &name[..20], "email": email, "password": password });
        self.post("/api/auth/register", None, &body, 201).await;
        self.login(&email, password).await
    }

    pub async fn new_product(&self, admin: &str, price: i64, stock: i64) -> String {
        let sku = crate::unique("SKU");
        let body =
            json!({ "name": format!("Widget {sku}"), "sku": sku, "price": price, "stock": stock });
        let answer = self.post("/api/products", Some(admin), &body, 201).await;
        answer["id"].as_str().expect("id").to_string()
    }

    /// Places a one-line order and returns its id.
    pub async fn place_order(&self, token: &str, product: &str, quantity: u32) -> String {
        let body = json!({ "items": [{ "productId": product, "quantity": quantity }] });
        let answer = self.post("/api/orders", Some(token), &body, 201).await;
        answer["id"].as_str().expect("id").to_string()
    }

    /// Waits (bounded) until the order is PROCESSED with its email SENT.
    pub async fn wait_processed(&self, token: &str, order_id: &str) -> Value {
        let path = format!("/api/orders/{order_id}");
        crate::eventually(
            Duration::from_secs(20),
            "the order to be PROCESSED with its email SENT",
            || async {
                let (_, order) = self
                    .call(reqwest::Method::GET, &path, Some(token), None)
                    .await;
                (order["status"] == "PROCESSED" && order["email"]["status"] == "SENT")
                    .then_some(order)
            },
        )
        .await
    }
}
