//! Group commit: several orders in ONE transaction, each with its own answer.
//! The batch step is called directly so that a batch is certain; the HTTP
//! tests at the end race real requests through the batcher.

use std::{sync::Arc, time::Duration};

use bson::{doc, oid::ObjectId};
use common::domain::{Quantity, TaxRate};
use futures::{TryStreamExt, future::join_all};
use order_api::{
    orders::{
        idempotency::KeyedRequest,
        place::{
            self, Customer, LineRequest, OrderRequest, PlaceError, PlaceOrderError, ShopSettings,
        },
    },
    outbox::store::{self, OutboxMessage},
};
use reqwest::StatusCode;
use serde_json::json;
use tokio::{sync::Notify, time::Instant};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

fn settings() -> ShopSettings {
    ShopSettings {
        currency: "INR".into(),
        tax_rate: TaxRate::GST_18,
        deadline: Duration::from_secs(10),
        // No relay listens: the rows wait for a sweep.
        relay: Default::default(),
        writes: common::mongo::bulk::Writes::as_decided(),
    }
}

fn request(lines: &[(&str, i64)]) -> OrderRequest {
    OrderRequest {
        customer: Customer {
            id: ObjectId::new(),
            email: common::domain::EmailAddress::parse("batch@shop.test").expect("valid"),
            name: "batch".into(),
        },
        lines: lines
            .iter()
            .map(|(product, quantity)| LineRequest {
                product_id: ObjectId::parse_str(product).expect("product id"),
                quantity: Quantity::parse(*quantity).expect("quantity"),
            })
            .collect(),
        idempotency: None,
        traceparent: None,
    }
}

async fn place_together(
    app: &TestApp,
    requests: &[OrderRequest],
) -> Vec<Result<common::domain::Order, PlaceError>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    place::place_together(&app.db, &settings(), requests, deadline).await
}

fn available_of(outcome: &Result<common::domain::Order, PlaceError>) -> Option<i64> {
    match outcome {
        Err(PlaceError::Refused(PlaceOrderError::InsufficientStock { available, .. })) => {
            Some(*available)
        }
        _ => None,
    }
}

#[tokio::test]
async fn a_batch_answers_each_order_and_refuses_only_the_one_that_does_not_fit() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let scarce = app.product(&admin, 1_000, 3).await;
    let plenty = app.product(&admin, 500, 10).await;

    let outcomes = place_together(
        &app,
        &[
            request(&[(&scarce, 2)]),
            request(&[(&scarce, 2)]),
            request(&[(&scarce, 1)]),
            request(&[(&plenty, 4)]),
        ],
    )
    .await;

    assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
    assert_eq!(available_of(&outcomes[1]), Some(1), "{:?}", outcomes[1]);
    assert!(outcomes[2].is_ok(), "{:?}", outcomes[2]);
    let last = outcomes[3]
        .as_ref()
        .expect("the other product's order is placed");
    assert_eq!(last.total.minor(), 2_360, "4 x 500 plus 18% GST");
    assert_eq!(app.stock_of(&scarce).await, 0);
    assert_eq!(app.stock_of(&plenty).await, 6);
    assert_eq!(app.count("orders").await, 3);
    assert_eq!(app.count("outbox").await, 3, "one event per placed order");
}

#[tokio::test]
async fn a_multi_line_order_that_does_not_fit_takes_nothing_from_any_line() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let a = app.product(&admin, 100, 5).await;
    let b = app.product(&admin, 200, 5).await;
    let c = app.product(&admin, 300, 2).await;

    let outcomes = place_together(
        &app,
        &[
            request(&[(&a, 1), (&b, 1)]),
            request(&[(&a, 2), (&c, 5)]),
            request(&[(&b, 2), (&c, 2)]),
        ],
    )
    .await;

    let first = outcomes[0].as_ref().expect("first placed");
    assert_eq!(first.lines.len(), 2);
    assert_eq!(available_of(&outcomes[1]), Some(2), "{:?}", outcomes[1]);
    let third = outcomes[2].as_ref().expect("third placed");
    assert_eq!(third.subtotal.minor(), 2 * 200 + 2 * 300);
    assert_eq!(
        app.stock_of(&a).await,
        4,
        "the refused order's line of a was not taken"
    );
    assert_eq!(app.stock_of(&b).await, 2);
    assert_eq!(app.stock_of(&c).await, 0);
    assert_eq!(app.count("orders").await, 2);
}

#[tokio::test]
async fn unknown_and_inactive_products_are_refused_per_order_in_a_batch() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let on_sale = app.product(&admin, 100, 5).await;
    let retired = app.product(&admin, 100, 5).await;
    let patched = app
        .patch(
            &format!("/api/products/{retired}"),
            Some(&admin),
            &json!({ "active": false }),
        )
        .await;
    assert_eq!(patched.status(), StatusCode::OK);
    let missing = ObjectId::new().to_hex();

    let outcomes = place_together(
        &app,
        &[
            request(&[(&on_sale, 1), (&missing, 1)]),
            request(&[(&retired, 1)]),
            request(&[(&on_sale, 1)]),
        ],
    )
    .await;

    assert!(
        matches!(
            outcomes[0],
            Err(PlaceError::Refused(PlaceOrderError::UnknownProduct { .. }))
        ),
        "{:?}",
        outcomes[0]
    );
    assert!(
        matches!(
            outcomes[1],
            Err(PlaceError::Refused(PlaceOrderError::InactiveProduct { .. }))
        ),
        "{:?}",
        outcomes[1]
    );
    assert!(outcomes[2].is_ok(), "{:?}", outcomes[2]);
    assert_eq!(app.stock_of(&on_sale).await, 4);
    assert_eq!(app.count("orders").await, 1);
}

#[tokio::test]
async fn a_batch_that_fails_for_one_order_runs_again_without_it() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let product = app.product(&admin, 100, 10).await;
    let customer = ObjectId::new();
    let body = json!({ "items": [{ "productId": product, "quantity": 1 }] });
    let keyed = || {
        let mut r = request(&[(&product, 1)]);
        r.customer.id = customer;
        r.idempotency = Some(KeyedRequest::new(customer, "same-key", &body).expect("key"));
        r
    };

    // Two orders with one key: the batch's second key record is a duplicate,
    // which fails the whole transaction; it runs again without that order.
    let outcomes = place_together(&app, &[keyed(), request(&[(&product, 2)]), keyed()]).await;

    assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
    assert!(outcomes[1].is_ok(), "{:?}", outcomes[1]);
    match &outcomes[2] {
        Err(PlaceError::Database(e)) => assert!(common::mongo::is_duplicate_key(e), "{e}"),
        other => panic!("the repeated key must answer as the single path does: {other:?}"),
    }
    assert_eq!(app.stock_of(&product).await, 7);
    assert_eq!(app.count("orders").await, 2);
    assert_eq!(app.count("idempotency_keys").await, 1);
}

#[tokio::test]
async fn many_concurrent_buyers_of_one_product_get_exactly_the_stock_over_http() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let product = app.product(&admin, 2_500, 100).await;

    // 1 to 3 units each: 250 orders ask for 500 units of 100.
    let statuses: Vec<(StatusCode, i64)> = join_all((0..250).map(|i| {
        let (app, customer, product) = (&app, &customer, &product);
        async move {
            let quantity = i % 3 + 1;
            let body = json!({ "items": [{ "productId": product, "quantity": quantity }] });
            let status = app
                .post("/api/orders", Some(customer), &body)
                .await
                .status();
            (status, quantity)
        }
    }))
    .await;

    let sold: i64 = statuses
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .map(|(_, q)| q)
        .sum();
    assert!(
        statuses
            .iter()
            .all(|(s, _)| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT),
        "{statuses:?}"
    );
    let stock = app.stock_of(&product).await;
    assert!(stock >= 0);
    assert_eq!(
        sold + stock,
        100,
        "every unit is either sold or still in stock"
    );
    // Stock only falls, so a refused order asked for more than is left now.
    assert!(
        statuses
            .iter()
            .filter(|(s, _)| *s == StatusCode::CONFLICT)
            .all(|(_, q)| *q > stock),
        "an order that fitted was refused: {stock} left"
    );
    let placed = statuses
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(app.count("orders").await, placed as u64);
    let totals: Vec<bson::Document> = app
        .db
        .collection::<bson::Document>("orders")
        .aggregate([
            doc! { "$unwind": "$lines" },
            doc! { "$group": { "_id": null, "units": { "$sum": "$lines.quantity" } } },
        ])
        .await
        .expect("aggregate")
        .try_collect()
        .await
        .expect("units");
    let units = match totals[0].get("units") {
        Some(bson::Bson::Int32(n)) => i64::from(*n),
        Some(bson::Bson::Int64(n)) => *n,
        other => panic!("units: {other:?}"),
    };
    assert_eq!(units, 100 - stock, "orders hold exactly what was sold");
}

/// Settings whose relay wake-up this test watches.
fn watched() -> (ShopSettings, Arc<Notify>) {
    let relay = Arc::new(Notify::new());
    let settings = ShopSettings {
        relay: relay.clone(),
        ..settings()
    };
    (settings, relay)
}

async fn woken(relay: &Notify) -> bool {
    tokio::time::timeout(Duration::from_millis(200), relay.notified())
        .await
        .is_ok()
}

#[tokio::test]
async fn a_committed_batch_and_a_cancellation_wake_the_relay_for_their_rows() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let product = app.product(&admin, 100, 2).await;
    let (settings, relay) = watched();

    let deadline = Instant::now() + Duration::from_secs(10);
    let requests = [
        request(&[(&product, 1)]),
        request(&[(&product, 5)]),
        request(&[(&product, 1)]),
    ];
    let outcomes = place::place_together(&app.db, &settings, &requests, deadline).await;
    let placed: Vec<ObjectId> = outcomes.iter().flatten().map(|o| o.id).collect();
    assert_eq!(placed.len(), 2, "{outcomes:?}");
    assert!(woken(&relay).await, "the commit woke the relay");
    let rows = |app: &TestApp| {
        let db = app.db.clone();
        async move {
            store::collection(&db)
                .find(doc! {})
                .sort(doc! { "_id": 1 })
                .await
                .expect("query")
                .try_collect::<Vec<OutboxMessage>>()
                .await
                .expect("rows")
        }
    };
    let stored = rows(&app).await;
    assert_eq!(
        stored.iter().map(|r| r.order_id).collect::<Vec<_>>(),
        placed,
        "one row per placed order, none for the refused one"
    );
    for row in &stored {
        assert_eq!(row.status, store::OutboxStatus::Pending);
        assert_eq!(row.lease_owner, None, "any relay may take it");
    }

    let cancelled = order_api::orders::cancel::cancel_order(
        &app.db,
        &settings.relay,
        placed[0],
        None,
        Duration::from_secs(10),
    )
    .await
    .expect("cancelled");
    assert_eq!(cancelled.id, placed[0]);
    assert!(woken(&relay).await, "the cancellation woke the relay");
    let stored = rows(&app).await;
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[2].event_type, "order.cancelled");
    assert_eq!(stored[2].order_id, placed[0]);
}

#[tokio::test]
async fn an_order_and_its_cancellation_over_http_reach_the_queue_with_no_sweep() {
    // The sweep effectively off: only the commits' wake-ups publish them.
    let app = spawn_app_with(|config| config.outbox.sweep_schedule = "0 0 0 1 1 *".into()).await;
    let admin = app.admin_token().await;
    let product = app.product(&admin, 100, 10).await;
    let (_, token) = app.customer().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let order = app.order(&token, &product, 1).await;
    let order_id = ObjectId::parse_str(order["id"].as_str().expect("id")).expect("order id");
    let cancel = app
        .post(
            &format!("/api/orders/{order_id}/cancel"),
            Some(&token),
            &json!({}),
        )
        .await;
    assert_eq!(cancel.status(), StatusCode::OK);

    test_support::eventually(
        Duration::from_secs(5),
        "the order's and the cancellation's rows to be published",
        || async {
            let rows: Vec<OutboxMessage> = store::collection(&app.db)
                .find(doc! { "order_id": order_id, "status": "PUBLISHED" })
                .await
                .ok()?
                .try_collect()
                .await
                .ok()?;
            (rows.len() == 2).then_some(())
        },
    )
    .await;
}

/// When another transaction holds a product, a placement's bulkWrite meets
/// a write conflict and the transaction runs again in the same session;
/// each rerun's statements must be ones the server takes (a causally
/// consistent session would add `readConcern.afterClusterTime`, which the
/// stand-in's bulkWrite refuses: a 500). Once the holder lets go, the
/// order is placed.
#[tokio::test]
async fn a_placement_rerun_after_a_write_conflict_is_placed() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let product = app.product(&admin, 500, 10).await;
    app.order(&customer, &product, 1).await;

    let mut holder = app.db.client().start_session().await.expect("session");
    holder.start_transaction().await.expect("transaction");
    app.db
        .collection::<bson::Document>("products")
        .update_one(
            doc! { "_id": ObjectId::parse_str(&product).expect("id") },
            doc! { "$set": { "held": true } },
        )
        .session(&mut holder)
        .await
        .expect("the holder's write");

    let order = json!({ "items": [{ "productId": product, "quantity": 2 }] });
    let placing = app.post("/api/orders", Some(&customer), &order);
    let release = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        holder.abort_transaction().await.expect("abort the holder");
    };
    let (response, ()) = tokio::join!(placing, release);
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(app.stock_of(&product).await, 7);
}
