use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{error_code, spawn_app};

#[tokio::test]
async fn a_retry_with_the_same_key_replays_the_first_order() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let product = app.product(&admin, 1_000, 5).await;
    let body = json!({ "items": [{ "productId": product, "quantity": 2 }] });

    let first = app.post_keyed(&customer, "checkout-42", &body).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.expect("json");

    let retry = app.post_keyed(&customer, "checkout-42", &body).await;
    assert_eq!(retry.status(), StatusCode::CREATED, "same status code");
    assert_eq!(
        retry
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let retry: Value = retry.json().await.expect("json");
    assert_eq!(retry, first, "the very same response");

    assert_eq!(app.stock_of(&product).await, 3, "stock taken once");
    assert_eq!(app.count("orders").await, 1);
    assert_eq!(app.count("outbox").await, 1);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_422() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let product = app.product(&admin, 1_000, 5).await;
    let one = json!({ "items": [{ "productId": product, "quantity": 1 }] });
    let two = json!({ "items": [{ "productId": product, "quantity": 2 }] });
    assert_eq!(
        app.post_keyed(&customer, "k-1", &one).await.status(),
        StatusCode::CREATED
    );
    let reused = app.post_keyed(&customer, "k-1", &two).await;
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(reused).await, "idempotency_key_reused");
    assert_eq!(app.stock_of(&product).await, 4);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_make_one_order() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let product = app.product(&admin, 1_000, 50).await;
    let body = json!({ "items": [{ "productId": product, "quantity": 1 }] });

    let responses = join_all((0..8).map(|_| async {
        let response = app.post_keyed(&customer, "double-click", &body).await;
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        (status, body)
    }))
    .await;
    let ids: std::collections::HashSet<String> = responses
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, StatusCode::CREATED, "{body}");
            body["id"].as_str().expect("id").to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "every answer names the same order");
    assert_eq!(app.count("orders").await, 1);
    assert_eq!(app.stock_of(&product).await, 49);
}

#[tokio::test]
async fn keys_are_per_user_and_must_be_well_formed() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, alice) = app.customer().await;
    let (_, bob) = app.customer().await;
    let product = app.product(&admin, 1_000, 5).await;
    let body = json!({ "items": [{ "productId": product, "quantity": 1 }] });
    let a: Value = app
        .post_keyed(&alice, "same", &body)
        .await
        .json()
        .await
        .expect("json");
    let b: Value = app
        .post_keyed(&bob, "same", &body)
        .await
        .json()
        .await
        .expect("json");
    assert_ne!(a["id"], b["id"], "another user's key is another key");

    let bad = app.post_keyed(&alice, "has spaces in it", &body).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(bad).await, "invalid_idempotency_key");
}
