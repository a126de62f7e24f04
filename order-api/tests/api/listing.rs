use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{error_code, spawn_app};

#[tokio::test]
async fn customers_page_through_their_own_orders_newest_first() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let (_, other) = app.customer().await;
    let product = app.product(&admin, 100, 50).await;
    let mut placed = Vec::new();
    for _ in 0..5 {
        placed.push(app.order(&customer, &product, 1).await["id"].clone());
    }
    app.order(&other, &product, 1).await;

    let first: Value = app
        .get("/api/orders?limit=2", Some(&customer))
        .await
        .json()
        .await
        .expect("json");
    let items = first["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["id"], placed[4], "newest first");
    assert_eq!(items[1]["id"], placed[3]);
    let cursor = first["nextCursor"].as_str().expect("more pages");

    let mut seen: Vec<Value> = items.iter().map(|o| o["id"].clone()).collect();
    let mut next = Some(cursor.to_string());
    while let Some(cursor) = next {
        let page: Value = app
            .get(
                &format!("/api/orders?limit=2&cursor={cursor}"),
                Some(&customer),
            )
            .await
            .json()
            .await
            .expect("json");
        seen.extend(
            page["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|o| o["id"].clone()),
        );
        next = page["nextCursor"].as_str().map(str::to_string);
    }
    placed.reverse();
    assert_eq!(
        seen, placed,
        "every own order exactly once, and no one else's"
    );
}

#[tokio::test]
async fn status_filter_and_admin_view() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, alice) = app.customer().await;
    let (_, bob) = app.customer().await;
    let product = app.product(&admin, 100, 50).await;
    let kept = app.order(&alice, &product, 1).await;
    let dropped = app.order(&alice, &product, 1).await;
    let bobs = app.order(&bob, &product, 1).await;
    let dropped_id = dropped["id"].as_str().expect("id");
    app.post(
        &format!("/api/orders/{dropped_id}/cancel"),
        Some(&alice),
        &json!({}),
    )
    .await;

    let cancelled: Value = app
        .get("/api/orders?status=CANCELLED", Some(&alice))
        .await
        .json()
        .await
        .expect("json");
    let ids: Vec<&Value> = cancelled["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|o| &o["id"])
        .collect();
    assert_eq!(ids, vec![&dropped["id"]]);

    let everything: Value = app
        .get("/api/orders", Some(&admin))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        everything["items"].as_array().expect("items").len(),
        3,
        "admins see all"
    );
    let bob_id = bobs["userId"].as_str().expect("userId");
    let only_bob: Value = app
        .get(&format!("/api/orders?userId={bob_id}"), Some(&admin))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(only_bob["items"].as_array().expect("items").len(), 1);
    assert!(kept["id"].is_string());

    let snooping = app
        .get(&format!("/api/orders?userId={bob_id}"), Some(&alice))
        .await;
    assert_eq!(snooping.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn bad_list_parameters_are_4xx() {
    let app = spawn_app().await;
    let (_, customer) = app.customer().await;
    for (query, status, code) in [
        (
            "limit=0",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "limit=101",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        ("limit=ten", StatusCode::BAD_REQUEST, "invalid_query"),
        (
            "cursor=not-a-cursor",
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
        ),
        ("status=SHIPPED", StatusCode::BAD_REQUEST, "invalid_query"),
    ] {
        let response = app
            .get(&format!("/api/orders?{query}"), Some(&customer))
            .await;
        assert_eq!(response.status(), status, "{query}");
        assert_eq!(error_code(response).await, code, "{query}");
    }
    assert_eq!(
        app.get("/api/orders", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
}
