//! The API as the bench uses it: its own users and products, created through
//! the same routes a client would use, and one order request.

use std::time::Duration;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use order_api_client::ApiClient;
use serde_json::Value;

/// Every bench account has this password.
pub const PASSWORD: &str = "bench-passw0rd-42";
/// Stock large enough that no run sells out (the API's maximum).
pub const STOCK: i64 = 1_000_000_000;
/// How many accounts or products are created at once.
const SETUP_CONCURRENCY: usize = 4;

#[derive(Clone)]
pub struct Shop {
    api: ApiClient,
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
            api: ApiClient::with_http(base, http),
        })
    }

    /// Fails with a clear message unless the API answers its health check.
    pub async fn check(&self) -> anyhow::Result<()> {
        self.api.check("/api/health").await
    }

    pub async fn login(&self, email: &str, password: &str) -> anyhow::Result<Value> {
        self.api.login_body(email, password).await
    }

    /// Registers `count` new customers (unique emails) and logs each in.
    pub async fn buyers(&self, tag: &str, count: usize) -> anyhow::Result<Vec<Buyer>> {
        futures::stream::iter(0..count)
            .map(|i| async move {
                let name = format!("b{}{i}", &tag[..tag.len().min(20)]);
                let email = format!("{name}@bench.test");
                self.api.register(&name, &email, PASSWORD).await?;
                let body = self.login(&email, PASSWORD).await?;
                Ok(Buyer {
                    id: body["user"]["id"].as_str().unwrap_or_default().to_string(),
                    email,
                    token: order_api_client::access_token(&body)?,
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
                let name = format!("Bench item {i}");
                self.api
                    .create_product(admin_token, &name, &sku, 49_900, STOCK)
                    .await
            })
            .buffered(SETUP_CONCURRENCY)
            .try_collect()
            .await
    }

    /// One `POST /api/orders` of one unit of each of `products`.
    pub async fn order(&self, token: &str, products: &[&str]) -> Answer {
        let items: Vec<(&str, u32)> = products.iter().map(|p| (*p, 1)).collect();
        let sent = self.api.place_order(token, &items, None).await;
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
