//! Login throttling, per client address and per account. Every test client
//! is 127.0.0.1, so each test sets small limits on its own app. The limits
//! refill one attempt every 60/limit seconds; each test spends far less.

use std::num::NonZeroU32;

use order_api::config::LoginRateLimits;
use reqwest::{Response, StatusCode, header};
use serde_json::Value;

use crate::helpers::{PASSWORD, TestApp, spawn_app_with};

async fn throttled_app(per_ip: u32, per_account: u32) -> TestApp {
    spawn_app_with(|config| {
        config.auth.login_rate = LoginRateLimits {
            per_ip_per_minute: NonZeroU32::new(per_ip).expect("non-zero"),
            per_account_per_minute: NonZeroU32::new(per_account).expect("non-zero"),
        };
    })
    .await
}

/// Asserts a 429 in the API's error shape; returns its Retry-After.
async fn assert_throttled(response: Response, what: &str) -> u64 {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "{what}");
    let retry_after: u64 = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: Retry-After in whole seconds"));
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited", "{what}: {body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    retry_after
}

#[tokio::test]
async fn hammering_one_account_is_429_while_others_log_in_until_the_address_limit() {
    // Refills: one attempt per 30 s per account, one per 15 s per address.
    let app = throttled_app(4, 2).await;
    let victim = app.register().await;
    let other = app.register().await;

    // Two wrong guesses, the second in another case: one account all the same.
    let first = app.try_login(&victim, "wrong-guess-1").await;
    assert_eq!(first.status(), StatusCode::UNAUTHORIZED);
    let second = app.try_login(&victim.to_uppercase(), "wrong-guess-2").await;
    assert_eq!(second.status(), StatusCode::UNAUTHORIZED);
    // Now even the right password waits: the guesser cannot tell it is right.
    let retry_after = assert_throttled(
        app.try_login(&victim, PASSWORD).await,
        "third try on one account",
    )
    .await;
    assert!((1..=30).contains(&retry_after), "Retry-After {retry_after}");

    // Another account from the same address still gets in...
    let response = app.try_login(&other, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK, "other account");
    // ...until the address has spent its four attempts (the refused one counted).
    let retry_after = assert_throttled(
        app.try_login(&other, PASSWORD).await,
        "fifth try from one address",
    )
    .await;
    assert!((1..=15).contains(&retry_after), "Retry-After {retry_after}");
}

#[tokio::test]
async fn successful_logins_count_too() {
    let app = throttled_app(100, 2).await;
    let email = app.register().await;
    for attempt in 1..=2 {
        let response = app.try_login(&email, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK, "attempt {attempt}");
    }
    assert_throttled(app.try_login(&email, PASSWORD).await, "third good login").await;
}
