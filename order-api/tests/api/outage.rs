//! MongoDB unreachable: the API answers 503 with Retry-After within
//! seconds, never hangs a client, and recovers when the database is back.
//! MongoDB slow: a 503 still means "not placed", and a commit that lands
//! after the deadline is answered as placed.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::json;
use test_support::{
    apps,
    proxy::{CuttableProxy, DelayingProxy},
    unique,
};

use crate::helpers::{self, TestApp};

/// An order for 2 of a product with stock 5, placed while `command` reached
/// MongoDB `delay` late (held back by a proxy the API and the test both go
/// through), with a one-second order deadline; and what came back.
struct HeldBack {
    app: TestApp,
    customer: String,
    product: String,
    response: reqwest::Response,
    _proxy: DelayingProxy,
}

async fn place_with_held_command(command: &str, delay: Duration) -> HeldBack {
    let mongo: std::net::SocketAddr = "127.0.0.1:27017".parse().expect("addr");
    let proxy = DelayingProxy::start(mongo).await;
    let uri = format!("mongodb://{}/?directConnection=true", proxy.addr);
    let app = helpers::spawn_app_with(|config| {
        config.mongo.uri = SecretString::from(uri);
        config.shop.order_deadline = Duration::from_secs(1);
    })
    .await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let product = app.product(&admin, 500, 5).await;
    proxy.hold(command, delay);
    let response = app
        .post(
            "/api/orders",
            Some(&customer),
            &json!({ "items": [{ "productId": product, "quantity": 2 }] }),
        )
        .await;
    assert!(
        proxy.held() >= 1,
        "no {command} was held back: the test tested nothing"
    );
    // Whatever was held reaches the server before the test looks.
    tokio::time::sleep(delay).await;
    HeldBack {
        app,
        customer,
        product,
        response,
        _proxy: proxy,
    }
}

#[tokio::test]
async fn a_commit_that_lands_after_the_deadline_is_answered_as_placed() {
    // The commit reaches the server 2 s after it was sent: after the 1 s
    // deadline. It commits, so the client must hear 201, never 503 "not
    // placed" (a client retrying without a key would then buy twice).
    let held = place_with_held_command("commitTransaction", Duration::from_secs(2)).await;
    let app = &held.app;
    assert_eq!(held.response.status(), StatusCode::CREATED);
    let order: serde_json::Value = held.response.json().await.expect("json");
    assert_eq!(app.count("orders").await, 1);
    assert_eq!(app.stock_of(&held.product).await, 3);
    let id = order["id"].as_str().expect("id");
    let stored = app
        .get(&format!("/api/orders/{id}"), Some(&held.customer))
        .await;
    assert_eq!(stored.status(), StatusCode::OK);
}

#[tokio::test]
async fn work_slower_than_the_deadline_is_answered_503_and_nothing_is_written() {
    // The placing transaction's writes reach the server after the
    // deadline: it is aborted before any commit, and 503 says "not placed".
    let held = place_with_held_command("bulkWrite", Duration::from_secs(3)).await;
    let app = &held.app;
    assert_eq!(held.response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = held.response.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not placed"),
        "{body}"
    );
    assert_eq!(app.count("orders").await, 0);
    assert_eq!(app.count("outbox").await, 0);
    assert_eq!(app.stock_of(&held.product).await, 5);
}

#[tokio::test]
async fn with_the_database_unreachable_the_api_answers_503_and_recovers() {
    test_support::require_stack().await;
    let mongo: std::net::SocketAddr = "127.0.0.1:27017".parse().expect("addr");
    let mut proxy = CuttableProxy::start(mongo).await;
    let database = unique("outage").replace('-', "_");
    let queue = unique("outage");
    let sqs = test_support::sqs_client().await;
    test_support::create_queues(&sqs, &queue, 30).await;
    let mut config = apps::api_config(&database, &queue);
    // Straight to the proxy: without directConnection the driver would find
    // the real member's address and go around the cut.
    config.mongo.uri =
        SecretString::from(format!("mongodb://{}/?directConnection=true", proxy.addr));
    config.mongo.server_selection_timeout = Duration::from_secs(2);
    let api = apps::start_api(config).await;
    let http = reqwest::Client::new();
    let login = || {
        http.post(format!("{}/api/auth/login", api.address()))
            .json(&json!({ "email": apps::ADMIN_EMAIL, "password": apps::ADMIN_PASSWORD }))
            .send()
    };
    assert_eq!(login().await.expect("sent").status(), StatusCode::OK);
    let token: serde_json::Value = login().await.expect("sent").json().await.expect("json");
    let token = token["accessToken"].as_str().expect("token").to_string();

    proxy.cut();
    for path in ["/api/products", "/api/orders"] {
        let started = Instant::now();
        let response = tokio::time::timeout(
            Duration::from_secs(20),
            http.get(format!("{}{path}", api.address()))
                .bearer_auth(&token)
                .send(),
        )
        .await
        .expect("the API answers instead of hanging")
        .expect("sent");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(response.headers().contains_key("retry-after"), "{path}");
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "unavailable");
        eprintln!("{path}: 503 after {:?}", started.elapsed());
    }

    proxy.restore().await;
    test_support::eventually(Duration::from_secs(20), "the API to recover", || async {
        let response = http
            .get(format!("{}/api/products", api.address()))
            .send()
            .await
            .ok()?;
        (response.status() == StatusCode::OK).then_some(())
    })
    .await;
}

/// An order-api whose SQS is reached through a proxy the test can cut, on a
/// fresh database and fresh queues named after `prefix`.
struct SqsBehindProxy {
    proxy: CuttableProxy,
    api: apps::Running,
    database: String,
}

async fn api_with_sqs_behind_a_proxy(prefix: &str) -> SqsBehindProxy {
    test_support::require_stack().await;
    let sqs_addr: std::net::SocketAddr = "127.0.0.1:4566".parse().expect("addr");
    let proxy = CuttableProxy::start(sqs_addr).await;
    let database = unique(prefix).replace('-', "_");
    let queue = unique(prefix);
    let sqs = test_support::sqs_client().await;
    test_support::create_queues(&sqs, &queue, 30).await;
    let mut config = apps::api_config(&database, &queue);
    config.sqs.endpoint_url = Some(format!("http://{}", proxy.addr));
    let api = apps::start_api(config).await;
    SqsBehindProxy {
        proxy,
        api,
        database,
    }
}

#[tokio::test]
async fn readiness_names_sqs_when_it_is_unreachable_and_recovers() {
    let SqsBehindProxy { mut proxy, api, .. } = api_with_sqs_behind_a_proxy("ready").await;
    let ready = || async {
        let response = reqwest::get(format!("{}/api/ready", api.address()))
            .await
            .expect("sent");
        let status = response.status();
        (
            status,
            response.json::<serde_json::Value>().await.expect("json"),
        )
    };

    let (status, body) = ready().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checks"]["mongodb"], "ok");
    assert_eq!(body["checks"]["sqs"], "ok");

    proxy.cut();
    let started = Instant::now();
    let (status, body) = ready().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["checks"]["mongodb"], "ok", "only SQS is down: {body}");
    assert_ne!(body["checks"]["sqs"], "ok", "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered promptly"
    );
    let health = reqwest::get(format!("{}/api/health", api.address()))
        .await
        .expect("sent");
    assert_eq!(
        health.status(),
        StatusCode::OK,
        "liveness does not depend on SQS"
    );

    proxy.restore().await;
    test_support::eventually(Duration::from_secs(15), "readiness to return", || async {
        let (status, _) = ready().await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test]
async fn orders_taken_while_sqs_is_down_are_published_when_it_returns() {
    let SqsBehindProxy {
        mut proxy,
        api,
        database,
    } = api_with_sqs_behind_a_proxy("sqsdown").await;
    let db = common::mongo::connect(&test_support::mongo_config(&database), "sqsdown-test")
        .await
        .expect("connect");
    let client = test_support::client::ApiClient::new(&api.address());
    let admin = client.login(apps::ADMIN_EMAIL, apps::ADMIN_PASSWORD).await;
    let product = client.product(&admin, 100, 50).await;
    let (_, customer) = client.customer().await;

    // Long enough for several failed attempts: the relay's pause grows past
    // the 1 s sweep that keeps waking it.
    proxy.cut();
    for _ in 0..6 {
        client.order(&customer, &product, 1).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    proxy.restore().await;

    let outbox = db.collection::<mongodb::bson::Document>("outbox");
    test_support::eventually(
        Duration::from_secs(45),
        "every row to be published once SQS is back",
        || async {
            let pending = outbox
                .count_documents(mongodb::bson::doc! { "status": "PENDING" })
                .await
                .ok()?;
            (pending == 0).then_some(())
        },
    )
    .await;
    assert_eq!(
        outbox
            .count_documents(mongodb::bson::doc! {})
            .await
            .expect("count"),
        6
    );
}

#[tokio::test]
async fn a_write_that_meets_an_orphaned_transaction_is_refused_with_503_not_held() {
    let app = helpers::spawn_app().await;
    let admin = app.admin_token().await;
    let sku = unique("ORPHAN");
    // What a killed instance leaves behind: a transaction that holds the
    // sku's index entry and never ends (real MongoDB keeps it 60 s).
    let mut orphan = app.db.client().start_session().await.expect("session");
    orphan.start_transaction().await.expect("transaction");
    app.db
        .collection::<bson::Document>("products")
        .insert_one(bson::doc! { "sku": &sku, "name": "orphan", "price": 1_i64, "stock": 1_i64, "active": true })
        .session(&mut orphan)
        .await
        .expect("the orphan's write");

    let body = json!({ "name": "Product", "sku": &sku, "price": 100, "stock": 3 });
    let answered = app
        .http
        .post(app.url("/api/products"))
        .bearer_auth(&admin)
        .json(&body)
        // Far above the API's own bound; reached only if the write waits
        // for the orphan.
        .timeout(Duration::from_secs(40))
        .send()
        .await
        .expect("answered, not held until the orphan ends");
    assert_eq!(answered.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(answered.headers().contains_key("retry-after"));

    orphan.abort_transaction().await.expect("abort the orphan");
    assert_eq!(
        app.post("/api/products", Some(&admin), &body)
            .await
            .status(),
        StatusCode::CREATED,
        "once the orphan is gone the same request is placed: the 503 wrote nothing"
    );
}

#[tokio::test]
async fn a_server_that_refuses_bulk_write_still_places_orders_one_statement_at_a_time() {
    // What MongoDB below 8.0 (or a volume kept at FCV 7.0) answers: the
    // proxy renames bulkWrite, and the server knows no such command.
    let mongo: std::net::SocketAddr = "127.0.0.1:27017".parse().expect("addr");
    let proxy = DelayingProxy::start(mongo).await;
    let uri = format!("mongodb://{}/?directConnection=true", proxy.addr);
    let app = helpers::spawn_app_with(|config| config.mongo.uri = SecretString::from(uri)).await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let product = app.product(&admin, 500, 5).await;
    proxy.rename("bulkWrite", "bulkWritx");

    let first = app.order(&customer, &product, 2).await;
    let second = app.order(&customer, &product, 1).await;

    assert_eq!(
        proxy.held(),
        1,
        "bulkWrite was tried once, refused, and not sent again"
    );
    assert_ne!(first["id"], second["id"]);
    assert_eq!(app.stock_of(&product).await, 2);
    assert_eq!(app.count("orders").await, 2);
    assert_eq!(app.count("outbox").await, 2);
    // At least this app's one (the registry is the test process's).
    let fallbacks = test_support::metrics::scrape(&app.metrics_address)
        .await
        .value(
            "order_batch_fallbacks_total",
            &[("reason", "bulk_write_refused")],
        );
    assert!(fallbacks >= 1.0, "fallbacks counted: {fallbacks}");
}
