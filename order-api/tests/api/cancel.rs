use mongodb::bson::{Document, doc, oid::ObjectId};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{error_code, spawn_app};

#[tokio::test]
async fn cancelling_restores_stock_exactly_and_announces_it() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let keyboard = app.product(&admin, 49_900, 10).await;
    let mouse = app.product(&admin, 1_500, 10).await;
    let order: Value = app
        .post(
            "/api/orders",
            Some(&customer),
            &json!({ "items": [
                { "productId": keyboard, "quantity": 3 },
                { "productId": mouse, "quantity": 7 },
            ] }),
        )
        .await
        .json()
        .await
        .expect("json");
    let id = order["id"].as_str().expect("id");
    assert_eq!(app.stock_of(&keyboard).await, 7);
    assert_eq!(app.stock_of(&mouse).await, 3);

    let cancelled = app
        .post(
            &format!("/api/orders/{id}/cancel"),
            Some(&customer),
            &json!({}),
        )
        .await;
    assert_eq!(cancelled.status(), StatusCode::OK);
    let cancelled: Value = cancelled.json().await.expect("json");
    assert_eq!(cancelled["status"], "CANCELLED");
    assert_eq!(cancelled["cancellationEmail"]["status"], "PENDING");
    assert_eq!(app.stock_of(&keyboard).await, 10, "exactly restored");
    assert_eq!(app.stock_of(&mouse).await, 10, "exactly restored");

    let events: Vec<String> = app
        .db
        .collection::<Document>("outbox")
        .find(doc! {})
        .await
        .expect("query")
        .try_collect_events()
        .await;
    assert_eq!(events, vec!["order.created", "order.cancelled"]);

    let again = app
        .post(
            &format!("/api/orders/{id}/cancel"),
            Some(&customer),
            &json!({}),
        )
        .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(again).await, "already_cancelled");
    assert_eq!(
        app.stock_of(&keyboard).await,
        10,
        "a second cancel restores nothing"
    );
}

#[tokio::test]
async fn only_the_owner_or_an_admin_may_cancel() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, owner) = app.customer().await;
    let (_, stranger) = app.customer().await;
    let product = app.product(&admin, 100, 5).await;
    let first = app.order(&owner, &product, 1).await;
    let second = app.order(&owner, &product, 1).await;

    let path = |o: &Value| format!("/api/orders/{}/cancel", o["id"].as_str().expect("id"));
    let refused = app.post(&path(&first), Some(&stranger), &json!({})).await;
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.stock_of(&product).await, 3);

    assert_eq!(
        app.post(&path(&first), Some(&owner), &json!({}))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.post(&path(&second), Some(&admin), &json!({}))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(app.stock_of(&product).await, 5);
    let unknown = format!("/api/orders/{}/cancel", ObjectId::new().to_hex());
    assert_eq!(
        app.post(&unknown, Some(&owner), &json!({})).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_timeline_shows_placement_and_cancellation() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let (_, stranger) = app.customer().await;
    let product = app.product(&admin, 100, 5).await;
    let order = app.order(&customer, &product, 1).await;
    let id = order["id"].as_str().expect("id");
    app.post(
        &format!("/api/orders/{id}/cancel"),
        Some(&customer),
        &json!({}),
    )
    .await;

    let timeline: Value = app
        .get(&format!("/api/orders/{id}/events"), Some(&customer))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(timeline["orderId"], id);
    assert_eq!(timeline["status"], "CANCELLED");
    let events = timeline["events"].as_array().expect("events");
    assert_eq!(events.first().map(|e| &e["event"]), Some(&json!("placed")));
    // The relay's `published` entries may land after the cancellation.
    let last = events
        .iter()
        .rfind(|e| e["event"] != "published")
        .expect("an entry");
    assert_eq!(last["event"], "cancelled");
    assert_eq!(last["status"], "CANCELLED");
    assert!(last["at"].as_str().is_some_and(|t| t.ends_with('Z')));

    let hidden = app
        .get(&format!("/api/orders/{id}/events"), Some(&stranger))
        .await;
    assert_eq!(hidden.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn inactive_products_cannot_be_ordered() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let product = app.product(&admin, 100, 5).await;
    app.db
        .collection::<Document>("products")
        .update_one(
            doc! { "_id": ObjectId::parse_str(&product).expect("id") },
            doc! { "$set": { "active": false } },
        )
        .await
        .expect("deactivate");
    let response = app
        .post(
            "/api/orders",
            Some(&customer),
            &json!({ "items": [{ "productId": product, "quantity": 1 }] }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(response).await, "product_inactive");
    assert_eq!(app.count("orders").await, 0);
    // The refusal is counted under its error code, the one name for it.
    let metrics = test_support::metrics::scrape(&app.metrics_address).await;
    let refused = |reason| metrics.value("orders_refused_total", &[("reason", reason)]);
    assert!(refused("product_inactive") >= 1.0);
    assert!(!metrics.has("orders_refused_total", &[("reason", "inactive_product")]));
}

/// The `event_type` of every outbox row, oldest first.
trait EventTypes {
    async fn try_collect_events(self) -> Vec<String>;
}

impl EventTypes for mongodb::Cursor<Document> {
    async fn try_collect_events(self) -> Vec<String> {
        use futures::TryStreamExt;
        let rows: Vec<Document> = self.try_collect().await.expect("rows");
        rows.iter()
            .map(|r| r.get_str("event_type").expect("event_type").to_string())
            .collect()
    }
}
