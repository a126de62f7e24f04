//! Group commit: several orders in ONE transaction, each with its own answer.
//! The batch step is called directly so that a batch is certain; the HTTP
//! tests at the end race real requests through the batcher.

use std::time::Duration;

use bson::{doc, oid::ObjectId};
use common::domain::{Quantity, TaxRate};
use futures::{TryStreamExt, future::join_all};
use order_api::orders::{
    batch::{self, OrderRequest, ShopSettings},
    idempotency::KeyedRequest,
    place::{Customer, LineRequest, PlaceError, PlaceOrderError},
};
use reqwest::StatusCode;
use serde_json::json;
use tokio::time::Instant;

use crate::helpers::{TestApp, spawn_app};

fn settings() -> ShopSettings {
    ShopSettings {
        currency: "INR".into(),
        tax_rate: TaxRate::GST_18,
        deadline: Duration::from_secs(10),
    }
}

fn request(lines: &[(&str, i64)]) -> OrderRequest {
    OrderRequest {
        customer: Customer {
            id: ObjectId::new(),
            email: "batch@shop.test".into(),
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
    batch::place_together(&app.db, &settings(), requests, deadline).await
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
async fn a_batch_that_fails_for_one_order_falls_back_to_exact_answers_one_by_one() {
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
    // which fails the whole transaction.
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
