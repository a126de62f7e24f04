use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{error_code, spawn_app};

#[tokio::test]
async fn admin_creates_a_product_and_anyone_reads_it() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let response = app
        .post(
            "/api/products",
            Some(&admin),
            &json!({ "name": "Keyboard", "sku": "KB-001", "price": 49900, "stock": 7, "description": "clicky" }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.expect("json");
    assert_eq!(created["price"], 49900);
    assert_eq!(created["currency"], "INR");

    let id = created["id"].as_str().expect("id");
    let fetched: Value = app
        .get(&format!("/api/products/{id}"), None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(fetched["sku"], "KB-001");
    assert_eq!(fetched["stock"], 7);

    let listed: Value = app
        .get("/api/products", None)
        .await
        .json()
        .await
        .expect("json");
    assert!(
        listed
            .as_array()
            .is_some_and(|l| l.iter().any(|p| p["id"] == id))
    );
}

#[tokio::test]
async fn customers_may_not_create_products() {
    let app = spawn_app().await;
    let (_, customer) = app.customer().await;
    let response = app
        .post(
            "/api/products",
            Some(&customer),
            &json!({ "name": "X", "sku": "X-1", "price": 1, "stock": 1 }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(response).await, "forbidden");
}

#[tokio::test]
async fn duplicate_sku_is_a_conflict_and_bad_products_are_422() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let product = json!({ "name": "A", "sku": "DUP-1", "price": 100, "stock": 1 });
    assert_eq!(
        app.post("/api/products", Some(&admin), &product)
            .await
            .status(),
        StatusCode::CREATED
    );
    let duplicate = app.post("/api/products", Some(&admin), &product).await;
    assert_eq!(duplicate.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(duplicate).await, "sku_exists");

    for bad in [
        json!({ "name": "A", "sku": "N-1", "price": -1, "stock": 1 }),
        json!({ "name": "A", "sku": "N-2", "price": 10.5, "stock": 1 }),
        json!({ "name": "A", "sku": "N-3", "price": 100, "stock": -5 }),
        json!({ "name": "", "sku": "N-4", "price": 100, "stock": 1 }),
        json!({ "name": "A", "sku": "N-5", "price": "100", "stock": 1 }),
    ] {
        let response = app.post("/api/products", Some(&admin), &bad).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
}

#[tokio::test]
async fn unknown_and_malformed_product_ids_are_404() {
    let app = spawn_app().await;
    for id in ["000000000000000000000000", "not-an-id"] {
        let response = app.get(&format!("/api/products/{id}"), None).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{id}");
        assert_eq!(error_code(response).await, "not_found");
    }
}

#[tokio::test]
async fn health_answers() {
    let app = spawn_app().await;
    let response = app.get("/api/health", None).await;
    assert_eq!(response.status(), StatusCode::OK);
}
