//! The shop as its customers and admin see it: HTTP calls to order-api.

use std::time::Duration;

use anyhow::Context;
use order_api_client::ApiClient;
use serde::Deserialize;

pub const ADMIN_EMAIL: &str = "admin@chaos.test";
pub const ADMIN_PASSWORD: &str = "chaos-admin-password-1";
const CUSTOMER_PASSWORD: &str = "chaos-customer-password-1";

/// One request's answer as the client learnt it.
#[derive(Debug, Clone)]
pub enum Placed {
    /// 201: acknowledged. `replayed`: the answer is the stored first answer
    /// to this Idempotency-Key (header `Idempotent-Replayed: true`).
    Accepted { order_id: String, replayed: bool },
    /// 409 insufficient_stock: refused, nothing written.
    OutOfStock,
    /// 5xx: the server said it failed, but a timed-out commit may still land.
    ServerError { status: u16 },
    /// The connection could not be made: the request never reached a server.
    NotSent,
    /// Sent, but no answer (the server died mid-request, or a timeout).
    NoAnswer,
    /// Any other answer: a defect in the suite or the API.
    Unexpected { status: u16, body: String },
}

#[derive(Debug, Clone)]
pub struct Customer {
    pub email: String,
    pub token: String,
}

#[derive(Debug, Clone)]
pub struct Product {
    pub id: String,
    pub initial_stock: i64,
}

#[derive(Deserialize)]
struct WithId {
    id: String,
}

pub fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(32)
        .build()
        .context("building the HTTP client")
}

/// THE API client, on the suite's HTTP client, for the API at `api`.
fn client(http: &reqwest::Client, api: &str) -> ApiClient {
    ApiClient::with_http(api, http.clone())
}

pub async fn admin_token(http: &reqwest::Client, api: &str) -> anyhow::Result<String> {
    client(http, api).login(ADMIN_EMAIL, ADMIN_PASSWORD).await
}

pub async fn create_product(
    http: &reqwest::Client,
    api: &str,
    admin: &str,
    sku: &str,
    stock: i64,
) -> anyhow::Result<Product> {
    let name = format!("Chaos item {sku}");
    let id = client(http, api)
        .create_product(admin, &name, sku, 12_345, stock)
        .await?;
    Ok(Product {
        id,
        initial_stock: stock,
    })
}

pub async fn register_customer(
    http: &reqwest::Client,
    api: &str,
    email: &str,
) -> anyhow::Result<Customer> {
    let username = email
        .split('@')
        .next()
        .unwrap_or("customer")
        .replace(['.', '+'], "-");
    let client = client(http, api);
    client.register(&username, email, CUSTOMER_PASSWORD).await?;
    Ok(Customer {
        email: email.to_string(),
        token: client.login(email, CUSTOMER_PASSWORD).await?,
    })
}

/// `POST /api/orders` for one line, with an Idempotency-Key so the suite can
/// later find out whether a request that got no answer committed.
pub async fn place_order(
    http: &reqwest::Client,
    api: &str,
    customer: &Customer,
    product_id: &str,
    quantity: u32,
    key: &str,
) -> Placed {
    let sent = client(http, api)
        .place_order(&customer.token, &[(product_id, quantity)], Some(key))
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) if e.is_connect() => return Placed::NotSent,
        Err(_) => return Placed::NoAnswer,
    };
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v.as_bytes() == b"true");
    let body = match response.text().await {
        Ok(body) => body,
        Err(_) => return Placed::NoAnswer,
    };
    match status {
        201 => match serde_json::from_str::<WithId>(&body) {
            Ok(order) => Placed::Accepted {
                order_id: order.id,
                replayed,
            },
            Err(_) => Placed::Unexpected { status, body },
        },
        409 if body.contains("insufficient_stock") => Placed::OutOfStock,
        500..=599 => Placed::ServerError { status },
        _ => Placed::Unexpected { status, body },
    }
}

/// `POST /api/orders/{id}/cancel`; true when it answered 200.
pub async fn cancel_order(
    http: &reqwest::Client,
    api: &str,
    customer: &Customer,
    order_id: &str,
) -> anyhow::Result<bool> {
    let response = client(http, api)
        .cancel_order(&customer.token, order_id)
        .await
        .context("cancelling an order")?;
    Ok(response.status().as_u16() == 200)
}
