//! THE HTTP client of order-api, for every program that calls it from
//! outside (the tests, the bench, the chaos suite): one place that knows
//! the routes, the bodies and the headers. Raw calls return what the server
//! answered, or the transport error, for callers that classify answers
//! (the load generators); the shop's steps (register, log in, create a
//! product) fail with the status and body when the server refuses.

use anyhow::{Context, bail};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

#[derive(Clone)]
pub struct ApiClient {
    base: String,
    pub http: reqwest::Client,
}

impl ApiClient {
    /// A client of the API at `base` (`http://127.0.0.1:8000`) with
    /// reqwest's defaults.
    pub fn new(base: &str) -> Self {
        Self::with_http(base, reqwest::Client::new())
    }

    /// The same on a client the caller built (timeouts, pool size).
    pub fn with_http(base: &str, http: reqwest::Client) -> Self {
        ApiClient {
            base: base.trim_end_matches('/').to_string(),
            http,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path`, with the bearer `token` when given.
    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let request = self.http.request(method, self.url(path));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// One request with an optional JSON body, whatever its answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> reqwest::Result<Response> {
        let mut request = self.request(method, path, token);
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await
    }

    /// `POST /api/orders` of `items` (product id, quantity), with an
    /// Idempotency-Key when given, whatever its answer.
    pub async fn place_order(
        &self,
        token: &str,
        items: &[(&str, u32)],
        key: Option<&str>,
    ) -> reqwest::Result<Response> {
        let items: Vec<Value> = items
            .iter()
            .map(|(product, quantity)| json!({ "productId": product, "quantity": quantity }))
            .collect();
        let mut request = self
            .request(Method::POST, "/api/orders", Some(token))
            .json(&json!({ "items": items }));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await
    }

    /// `POST /api/orders/{id}/cancel`, whatever its answer.
    pub async fn cancel_order(&self, token: &str, order_id: &str) -> reqwest::Result<Response> {
        self.request(
            Method::POST,
            &format!("/api/orders/{order_id}/cancel"),
            Some(token),
        )
        .send()
        .await
    }

    /// Fails unless `GET path` answers 2xx (`/api/health`, `/api/ready`).
    pub async fn check(&self, path: &str) -> anyhow::Result<()> {
        let response = self
            .request(Method::GET, path, None)
            .send()
            .await
            .with_context(|| format!("order-api at {} does not answer", self.base))?;
        if !response.status().is_success() {
            bail!("GET {path} answered {}", response.status());
        }
        Ok(())
    }

    /// Registers an account; its view as answered (201).
    pub async fn register(
        &self,
        username: &str,
        email: &str,
        password: &str,
    ) -> anyhow::Result<Value> {
        let body = json!({ "username": username, "email": email, "password": password });
        self.expect(
            Method::POST,
            "/api/auth/register",
            None,
            &body,
            StatusCode::CREATED,
        )
        .await
        .with_context(|| format!("registering {email}"))
    }

    /// Logs in; the whole answer (tokens and user).
    pub async fn login_body(&self, email: &str, password: &str) -> anyhow::Result<Value> {
        let body = json!({ "email": email, "password": password });
        self.expect(Method::POST, "/api/auth/login", None, &body, StatusCode::OK)
            .await
            .with_context(|| format!("logging in as {email}"))
    }

    /// Logs in; the access token.
    pub async fn login(&self, email: &str, password: &str) -> anyhow::Result<String> {
        let body = self.login_body(email, password).await?;
        access_token(&body)
    }

    /// Creates a product as the admin `token`; its id.
    pub async fn create_product(
        &self,
        token: &str,
        name: &str,
        sku: &str,
        price: i64,
        stock: i64,
    ) -> anyhow::Result<String> {
        let body = json!({ "name": name, "sku": sku, "price": price, "stock": stock });
        let answer = self
            .expect(
                Method::POST,
                "/api/products",
                Some(token),
                &body,
                StatusCode::CREATED,
            )
            .await
            .with_context(|| format!("creating product {sku}"))?;
        Ok(answer["id"].as_str().context("no product id")?.to_string())
    }

    /// A request that must answer `expected`; its JSON body (`null` if
    /// none). Any other answer fails with its status and body.
    pub async fn expect(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: &Value,
        expected: StatusCode,
    ) -> anyhow::Result<Value> {
        let response = self
            .send(method.clone(), path, token, Some(body))
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let answer = response.json().await.unwrap_or(Value::Null);
        if status != expected {
            bail!("{method} {path} answered {status}: {answer}");
        }
        Ok(answer)
    }
}

/// The access token of a login or refresh answer.
pub fn access_token(answer: &Value) -> anyhow::Result<String> {
    Ok(answer["accessToken"]
        .as_str()
        .context("no accessToken in the answer")?
        .to_string())
}
