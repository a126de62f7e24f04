use std::time::Duration;

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{error_code, spawn_app};

#[tokio::test]
async fn an_order_reserves_stock_snapshots_prices_and_reaches_the_queue() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let keyboard = app.product(&admin, 49_900, 5).await;
    let cable = app.product(&admin, 1_050, 10).await;

    let response = app
        .post(
            "/api/orders",
            Some(&customer),
            &json!({ "items": [
                { "productId": keyboard, "quantity": 2 },
                { "productId": cable, "quantity": 1 },
            ] }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let order: Value = response.json().await.expect("json");
    assert_eq!(order["status"], "PENDING");
    assert_eq!(order["subtotal"], 100_850);
    assert_eq!(order["tax"], 18_153, "18% GST, rounded half up");
    assert_eq!(order["total"], 119_003);
    assert_eq!(order["currency"], "INR");
    assert_eq!(order["lines"][0]["unitPrice"], 49_900);
    assert!(
        order["lines"][0]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("Product"))
    );
    assert_eq!(order["email"]["status"], "PENDING");

    assert_eq!(app.stock_of(&keyboard).await, 3);
    assert_eq!(app.stock_of(&cable).await, 9);

    // The relay is woken by the commit: the event is on the queue promptly.
    let order_id = order["id"].as_str().expect("id").to_string();
    let bodies = test_support::receive_bodies(&app.sqs, &app.queues.queue_url, 1).await;
    assert_eq!(bodies.len(), 1, "exactly one event on the queue");
    let event: Value = serde_json::from_str(&bodies[0]).expect("event JSON");
    assert_eq!(event["type"], "order.created");
    assert_eq!(event["orderId"], order_id.as_str());

    // SQS accepts the message before the relay marks the row: wait for it.
    let rows = app.db.collection::<mongodb::bson::Document>("outbox");
    let outbox = test_support::eventually(
        Duration::from_secs(5),
        "the row marked published",
        || async {
            let row = rows.find_one(mongodb::bson::doc! {}).await.ok().flatten()?;
            (row.get_str("status").ok() == Some("PUBLISHED")).then_some(row)
        },
    )
    .await;
    assert!(
        outbox
            .get_str("sqs_message_id")
            .is_ok_and(|id| !id.is_empty())
    );
}

#[tokio::test]
async fn insufficient_stock_is_409_and_writes_nothing() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let plenty = app.product(&admin, 100, 10).await;
    let scarce = app.product(&admin, 100, 1).await;

    let response = app
        .post(
            "/api/orders",
            Some(&customer),
            // The first line would succeed alone: it must be rolled back too.
            &json!({ "items": [
                { "productId": plenty, "quantity": 3 },
                { "productId": scarce, "quantity": 2 },
            ] }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "insufficient_stock");
    assert_eq!(body["error"]["details"]["productId"], scarce.as_str());
    assert_eq!(body["error"]["details"]["available"], 1);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Product"))
    );

    assert_eq!(app.stock_of(&plenty).await, 10, "first line rolled back");
    assert_eq!(app.stock_of(&scarce).await, 1);
    assert_eq!(app.count("orders").await, 0);
    assert_eq!(app.count("outbox").await, 0);
}

#[tokio::test]
async fn fifty_concurrent_orders_for_ten_units_sell_exactly_ten() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let product = app.product(&admin, 2_500, 10).await;
    let body = json!({ "items": [{ "productId": product, "quantity": 1 }] });

    let statuses: Vec<StatusCode> = join_all((0..50).map(|_| async {
        app.post("/api/orders", Some(&customer), &body)
            .await
            .status()
    }))
    .await;
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::CONFLICT)
        .count();
    assert_eq!(created, 10, "statuses: {statuses:?}");
    assert_eq!(refused, 40, "statuses: {statuses:?}");
    assert_eq!(app.stock_of(&product).await, 0);
    assert_eq!(app.count("orders").await, 10);
    assert_eq!(app.count("outbox").await, 10);
}

#[tokio::test]
async fn bad_order_requests_get_the_right_4xx() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let product = app.product(&admin, 100, 5).await;

    let malformed = app
        .http
        .post(app.url("/api/orders"))
        .bearer_auth(&customer)
        .header("content-type", "application/json")
        .body("{\"items\": [")
        .send()
        .await
        .expect("sent");
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(malformed).await, "malformed_json");

    let not_json = app
        .http
        .post(app.url("/api/orders"))
        .bearer_auth(&customer)
        .body("items=1")
        .send()
        .await
        .expect("sent");
    assert_eq!(not_json.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let cases = [
        (
            json!({ "items": [{ "productId": product, "quantity": 0 }] }),
            "validation_failed",
        ),
        (
            json!({ "items": [{ "productId": product, "quantity": -2 }] }),
            "validation_failed",
        ),
        (
            json!({ "items": [{ "productId": product, "quantity": 1001 }] }),
            "validation_failed",
        ),
        (
            json!({ "items": [{ "productId": product, "quantity": 1.5 }] }),
            "validation_failed",
        ),
        (json!({ "items": [] }), "validation_failed"),
        (
            json!({ "items": [{ "productId": "nope", "quantity": 1 }] }),
            "validation_failed",
        ),
        (
            json!({ "items": [{ "productId": { "$gt": "" }, "quantity": 1 }] }),
            "validation_failed",
        ),
        (
            json!({ "items": [{ "productId": "000000000000000000000000", "quantity": 1 }] }),
            "unknown_product",
        ),
        (
            json!({ "items": [{ "productId": product, "quantity": 1 }, { "productId": product, "quantity": 2 }] }),
            "duplicate_products",
        ),
    ];
    for (body, code) in cases {
        let response = app.post("/api/orders", Some(&customer), &body).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
        assert_eq!(error_code(response).await, code, "{body}");
    }
    assert_eq!(
        app.stock_of(&product).await,
        5,
        "no bad request touched stock"
    );
    assert_eq!(app.count("orders").await, 0);
}

#[tokio::test]
async fn bodies_over_64_kib_are_413() {
    let app = spawn_app().await;
    let (_, customer) = app.customer().await;
    let huge = format!(
        "{{\"items\": [], \"pad\": \"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let response = app
        .http
        .post(app.url("/api/orders"))
        .bearer_auth(&customer)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn only_the_owner_or_an_admin_sees_an_order() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, owner) = app.customer().await;
    let (_, stranger) = app.customer().await;
    let product = app.product(&admin, 100, 5).await;
    let order: Value = app
        .post(
            "/api/orders",
            Some(&owner),
            &json!({ "items": [{ "productId": product, "quantity": 1 }] }),
        )
        .await
        .json()
        .await
        .expect("json");
    let path = format!("/api/orders/{}", order["id"].as_str().expect("id"));

    assert_eq!(app.get(&path, Some(&owner)).await.status(), StatusCode::OK);
    assert_eq!(app.get(&path, Some(&admin)).await.status(), StatusCode::OK);
    let hidden = app.get(&path, Some(&stranger)).await;
    assert_eq!(hidden.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(hidden).await, "not_found");
    assert_eq!(
        app.get(&path, None).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn rows_left_pending_are_published_by_the_sweep() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let product = app.product(&admin, 100, 5).await;
    let created = app
        .post(
            "/api/orders",
            Some(&customer),
            &json!({ "items": [{ "productId": product, "quantity": 1 }] }),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let _ = test_support::receive_bodies(&app.sqs, &app.queues.queue_url, 1).await;

    // A row nobody announced (as if written by an instance that died before
    // publishing): only the periodic sweep can find it.
    let outbox = app.db.collection::<mongodb::bson::Document>("outbox");
    outbox
        .update_many(
            mongodb::bson::doc! {},
            mongodb::bson::doc! { "$set": { "status": "PENDING" } },
        )
        .await
        .expect("reset");
    test_support::eventually(
        Duration::from_secs(10),
        "the sweep to republish",
        || async {
            let row = outbox
                .find_one(mongodb::bson::doc! {})
                .await
                .ok()
                .flatten()?;
            (row.get_str("status").ok() == Some("PUBLISHED")).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_failed_send_leaves_the_row_pending_with_the_error_recorded() {
    test_support::require_stack().await;
    // A database no running relay watches, so only the relay under test acts.
    let database = test_support::unique("relay").replace('-', "_");
    let db = common::mongo::connect(&test_support::mongo_config(&database), "relay-test")
        .await
        .expect("connect");
    let sqs = test_support::sqs_client().await;
    let queues = test_support::create_queues(&sqs, &test_support::unique("relay"), 30).await;
    let outbox = order_api::outbox::store::collection(&db);
    let rows = order_api::outbox::store::rows_for(
        [(mongodb::bson::oid::ObjectId::new(), None)],
        common::event::OrderEventType::OrderCreated,
        mongodb::bson::DateTime::now(),
    );
    outbox.insert_many(&rows).await.expect("enqueue");

    // A queue that does not exist: the send fails.
    let gone = format!("{}-gone", queues.queue_url);
    let config = test_support::apps::api_config(&database, "unused").outbox;
    let broken = order_api::outbox::Relay::new(db.clone(), sqs.clone(), gone, &config);
    let result = broken.publish_step().await;
    assert!(result.is_err(), "{result:?}");
    let row = outbox
        .find_one(mongodb::bson::doc! {})
        .await
        .expect("query")
        .expect("row");
    assert_eq!(row.status, order_api::outbox::store::OutboxStatus::Pending);
    assert_eq!(row.attempts, 1);
    assert!(
        row.last_error
            .as_deref()
            .is_some_and(|e| e.contains("SendMessageBatch")),
        "{row:?}"
    );

    // The next attempt, with SQS reachable, publishes it.
    let relay =
        order_api::outbox::Relay::new(db.clone(), sqs.clone(), queues.queue_url.clone(), &config);
    let outcome = relay.publish_step().await.expect("publishes");
    assert_eq!(outcome.published, 1);
    let row = outbox
        .find_one(mongodb::bson::doc! {})
        .await
        .expect("query")
        .expect("row");
    assert_eq!(
        row.status,
        order_api::outbox::store::OutboxStatus::Published
    );
    assert!(row.sqs_message_id.is_some());
}
