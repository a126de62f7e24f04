//! The API as the bench uses it: its own users and products, created through
//! the same routes a client would use, and one order request.

use std::time::Duration;

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

/// Every bench account has this password.
pub const PASSWORD: &str = "bench-passw0rd-42";
/// Stock large enough that no run sells out (the API's maximum).
pub const STOCK: i64 = 1_000_000_000;
/// How many accounts or products are created at once.
const SETUP_CONCURRENCY: usize = 4;

#[derive(Clone)]
pub struct Shop {
    pub http: reqwest::Client,
    pub base: String,
}

/// A registered customer and a valid access token.
#[derive(Debug, Clone)]
pub struct Buyer {
    pub id: String,
    pub email: String,
    pub token: String,
}

/// What one order request came to, seen from the client.
pub enum Answer {
    Placed { order_id: String },
    Refused(String),
}

impl Shop {
    pub fn new(base: &str, pool: usize) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(pool)
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        Ok(Shop {
            http,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Fails with a clear message unless the API answers its health check.
    pub async fn check(&self) -> anyhow::Result<()> {
        let response = self
            .http
            .get(self.url("/api/health"))
            .send()
            .await
            .with_context(|| format!("order-api at {} does not answer", self.base))?;
        if !response.status().is_success() {
            bail!("order-api health check answered {}", response.status());
        }
        Ok(())
    }

    pub async fn login(&self, email: &str, password: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(self.url("/api/auth/login"))
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .context("logging in")?;
        let status = response.status();
        let body: Value = response.json().await.context("reading the login answer")?;
        if !status.is_success() {
            bail!("login as {email} answered {status}: {body}");
        }
        Ok(body)
    }

    /// Registers `count` new customers (unique emails) and logs each in.
    pub async fn buyers(&self, tag: &str, count: usize) -> anyhow::Result<Vec<Buyer>> {
        futures::stream::iter(0..count)
            .map(|i| async move {
                let name = format!("b{}{i}", &tag[..tag.len().min(20)]);
                let email = format!("{name}@bench.test");
                let response = self
                    .http
                    .post(self.url("/api/auth/register"))
                    .json(&json!({ "username": name, "email": email, "password": PASSWORD }))
                    .send()
                    .await
                    .context("registering a bench customer")?;
                if response.status() != reqwest::StatusCode::CREATED {
                    bail!(
                        "registering {email} answered {}: {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    );
                }
                let body = self.login(&email, PASSWORD).await?;
                Ok(Buyer {
                    id: body["user"]["id"].as_str().unwrap_or_default().to_string(),
                    email,
                    token: body["accessToken"]
                        .as_str()
                        .context("no accessToken in the login answer")?
                        .to_string(),
                })
            })
            .buffered(SETUP_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Creates `count` products with [`STOCK`] units each, as the admin.
    pub async fn products(
        &self,
        admin_token: &str,
        tag: &str,
        count: usize,
    ) -> anyhow::Result<Vec<String>> {
        futures::stream::iter(0..count)
            .map(|i| async move {
                let sku = format!("BENCH-{tag}-{i}");
                let response = self
                    .http
                    .post(self.url("/api/products"))
                    .bearer_auth(admin_token)
                    .json(&json!({ "name": format!("Bench item {i}"), "sku": sku, "price": 49_900, "stock": STOCK }))
                    .send()
                    .await
                    .context("creating a bench product")?;
                let status = response.status();
                let body: Value = response.json().await.context("reading the product")?;
                if status != reqwest::StatusCode::CREATED {
                    bail!("creating product {sku} answered {status}: {body}");
                }
                Ok(body["id"].as_str().context("no product id")?.to_string())
            })
            .buffered(SETUP_CONCURRENCY)
            .try_collect()
            .await
    }

    /// One `POST /api/orders` of one unit of each of `products`.
    pub async fn order(&self, token: &str, products: &[&str]) -> Answer {
        let items: Vec<Value> = products
            .iter()
            .map(|p| json!({ "productId": p, "quantity": 1 }))
            .collect();
        let sent = self
            .http
            .post(self.url("/api/orders"))
            .bearer_auth(token)
            .json(&json!({ "items": items }))
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => return Answer::Refused(transport_kind(&e)),
        };
        let status = response.status();
        let body: Value = match response.json().await {
            Ok(body) => body,
            Err(e) => {
                return Answer::Refused(format!(
                    "{} unreadable body ({})",
                    status.as_u16(),
                    transport_kind(&e)
                ));
            }
        };
        if status == reqwest::StatusCode::CREATED
            && let Some(id) = body["id"].as_str()
        {
            return Answer::Placed {
                order_id: id.to_string(),
            };
        }
        Answer::Refused(format!(
            "{} {}",
            status.as_u16(),
            body["error"]["code"].as_str().unwrap_or("?")
        ))
    }
}

/// What kind of transport failure, for the errors table.
pub fn transport_kind(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "transport"
    };
    format!("transport {kind}")
}
