//! What a real MongoDB replica set (7.0/8.0, Atlas) answers and the local
//! server never does on its own, driven by its `failCommand` fail point on
//! this service's connections only: a featureCompatibilityVersion that
//! refuses bulkWrite, an election, a commit's write concern error, a
//! statement slower than the order's deadline, a storm of write conflicts.

use std::time::Duration;

use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};
use test_support::{
    fail_point::{fail, named_uri},
    metrics::scrape,
    unique,
};
use tokio::time::Instant;

use crate::helpers::{TestApp, spawn_app_with};

/// order-api whose MongoDB client is named `app_name` (what the fail
/// points match), with `deadline` to place an order.
async fn app_named(app_name: &str, deadline: Duration) -> TestApp {
    let uri = named_uri(app_name);
    spawn_app_with(|config| {
        config.mongo.uri = SecretString::from(uri);
        config.shop.order_deadline = deadline;
    })
    .await
}

async fn place(app: &TestApp, token: &str, product: &str, quantity: u32) -> (StatusCode, Value) {
    let body = json!({ "items": [{ "productId": product, "quantity": quantity }] });
    let response = app.post("/api/orders", Some(token), &body).await;
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_server_at_fcv_7_refusing_bulk_write_with_115_places_every_order() {
    let name = unique("fcv7");
    let app = app_named(&name, Duration::from_secs(10)).await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let product = app.product(&admin, 500, 5).await;
    let fallbacks = || async {
        scrape(&app.metrics_address).await.value(
            "order_batch_fallbacks_total",
            &[("reason", "bulk_write_refused")],
        )
    };
    let before = fallbacks().await;
    // MongoDB 8.0 at featureCompatibilityVersion 7.0, word for word.
    let refusing = fail(
        &name,
        &["bulkWrite"],
        None,
        bson::doc! {
            "errorCode": 115,
            "errmsg": "BulkWrite may not be run without featureFlagBulkWriteCommand enabled",
        },
    )
    .await;

    let first = place(&app, &customer, &product, 2).await;
    let second = place(&app, &customer, &product, 1).await;
    refusing.off().await;

    assert_eq!(first.0, StatusCode::CREATED, "{}", first.1);
    assert_eq!(second.0, StatusCode::CREATED, "{}", second.1);
    assert_eq!(app.stock_of(&product).await, 2);
    assert_eq!(app.count("orders").await, 2);
    assert_eq!(app.count("outbox").await, 2);
    // The registry is the test process's: other tests' fallbacks may add.
    assert!(
        fallbacks().await >= before + 1.0,
        "the refusal was counted as a fallback"
    );
}

#[tokio::test]
async fn an_election_answers_503_with_retry_after_never_500() {
    let name = unique("election");
    let app = app_named(&name, Duration::from_secs(3)).await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let product = app.product(&admin, 500, 10).await;
    let placed = app.order(&customer, &product, 1).await;
    let order = placed["id"].as_str().expect("id").to_string();

    for (code, name_of) in [
        (11602, "InterruptedDueToReplStateChange"),
        (10107, "NotWritablePrimary"),
    ] {
        // A read whose one retry meets the election too (every read of
        // this service's, as its relay's sweep reads too).
        let electing = fail(
            &name,
            &["find", "aggregate"],
            None,
            bson::doc! { "errorCode": code, "errmsg": name_of },
        )
        .await;
        let read = app
            .get(&format!("/api/orders/{order}"), Some(&customer))
            .await;
        electing.off().await;
        assert_eq!(
            read.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{code} on a read"
        );
        assert!(
            read.headers().contains_key("retry-after"),
            "{code}: Retry-After"
        );

        // The order's writes: the transaction is rerun after the election.
        let electing = fail(
            &name,
            &["bulkWrite", "insert", "update", "commitTransaction"],
            Some(2),
            bson::doc! { "errorCode": code, "errmsg": name_of },
        )
        .await;
        let (status, body) = place(&app, &customer, &product, 1).await;
        electing.off().await;
        assert!(
            status == StatusCode::CREATED || status == StatusCode::SERVICE_UNAVAILABLE,
            "{code} on the order's writes: {status} {body}"
        );
    }
    // After a state-change error the driver forgets the primary until its
    // monitor finds one again (a real election takes seconds too): until
    // then reads answer 503, never 500, and then 200.
    test_support::eventually(
        Duration::from_secs(30),
        "reads to answer 200 again",
        || async {
            let status = app
                .get(&format!("/api/orders/{order}"), Some(&customer))
                .await
                .status();
            assert!(
                status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
                "after the election: {status}"
            );
            (status == StatusCode::OK).then_some(())
        },
    )
    .await;
    let stock = app.stock_of(&product).await;
    assert_eq!(
        i64::try_from(app.count("orders").await).expect("count"),
        10 - stock,
        "every order placed took its stock, and nothing else did"
    );
}

#[tokio::test]
async fn a_commits_write_concern_error_50_is_retried_and_the_order_exists_once() {
    let name = unique("wce50");
    let app = app_named(&name, Duration::from_secs(10)).await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let product = app.product(&admin, 500, 5).await;
    let body = json!({ "items": [{ "productId": product, "quantity": 2 }] });
    let slow = fail(
        &name,
        &["commitTransaction"],
        Some(1),
        bson::doc! { "writeConcernError": {
            "code": 50,
            "codeName": "MaxTimeMSExpired",
            "errmsg": "operation exceeded time limit",
        } },
    )
    .await;

    let first = app.post_keyed(&customer, "wce-50", &body).await;
    slow.off().await;
    let first_status = first.status();
    let first: Value = first.json().await.expect("json");
    assert!(
        first_status == StatusCode::CREATED || first_status == StatusCode::GATEWAY_TIMEOUT,
        "{first_status} {first}"
    );
    let again = app.post_keyed(&customer, "wce-50", &body).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    let again: Value = again.json().await.expect("json");
    if first_status == StatusCode::CREATED {
        assert_eq!(again["id"], first["id"], "the retry returns the same order");
    }
    assert_eq!(app.count("orders").await, 1, "the order exists once");
    assert_eq!(app.stock_of(&product).await, 3);
}

#[tokio::test]
async fn a_statement_slower_than_the_deadline_leaves_no_transaction_open() {
    let name = unique("deadline");
    let app = app_named(&name, Duration::from_secs(1)).await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let product = app.product(&admin, 500, 10).await;
    // Placed once, the product is cached: the next order's first statement
    // is its write, which takes the product's lock.
    app.order(&customer, &product, 1).await;
    let slow = fail(
        &name,
        &["bulkWrite"],
        Some(1),
        bson::doc! { "blockConnection": true, "blockTimeMS": 2_500 },
    )
    .await;

    let sent = Instant::now();
    let (status, body) = place(&app, &customer, &product, 2).await;
    slow.off().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    // Once the slow statement has run on the server, and at once, not
    // after the server's 60 s transaction lifetime (the deadline is 1 s):
    // the failed order's transaction holds nothing.
    tokio::time::sleep_until(sent + Duration::from_millis(3_000)).await;
    let next = place(&app, &customer, &product, 3).await;
    assert_eq!(next.0, StatusCode::CREATED, "{}", next.1);
    assert_eq!(app.count("orders").await, 2, "the slow order wrote nothing");
    assert_eq!(app.stock_of(&product).await, 6);
}

#[tokio::test]
async fn a_write_conflict_storm_is_rerun_with_backoff_and_never_oversells() {
    let name = unique("storm");
    let app = app_named(&name, Duration::from_secs(10)).await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let product = app.product(&admin, 500, 5).await;
    app.order(&customer, &product, 1).await;
    let before = scrape(&app.metrics_address).await.value(
        "transaction_retries_total",
        &[("operation", "place_order_batch")],
    );
    let reruns = 6_u32;
    let storm = fail(
        &name,
        &["bulkWrite", "insert", "update"],
        Some(reruns),
        bson::doc! {
            "errorCode": 112,
            "errmsg": "WriteConflict error: this operation conflicted with another operation",
            "errorLabels": ["TransientTransactionError"],
        },
    )
    .await;

    let started = Instant::now();
    let answers =
        futures::future::join_all((0..8).map(|_| place(&app, &customer, &product, 1))).await;
    let took = started.elapsed();
    storm.off().await;

    let placed = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .count();
    for (status, body) in &answers {
        assert!(
            *status == StatusCode::CREATED || *status == StatusCode::CONFLICT,
            "placed or refused: {status} {body}"
        );
    }
    assert_eq!(placed, 4, "the stock left, and no more");
    assert_eq!(app.stock_of(&product).await, 0);
    let after = scrape(&app.metrics_address).await.value(
        "transaction_retries_total",
        &[("operation", "place_order_batch")],
    );
    assert!(
        after - before >= f64::from(reruns),
        "every conflict rerun counted: {before} -> {after}"
    );
    // 5 ms growing by 1.5 six times is at least 83 ms of pauses (jitter
    // only adds): reruns were spaced, not immediate.
    assert!(took >= Duration::from_millis(83), "reruns took {took:?}");
}
