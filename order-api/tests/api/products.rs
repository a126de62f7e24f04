use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_code, spawn_app};

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
        listed["items"]
            .as_array()
            .is_some_and(|l| l.iter().any(|p| p["id"] == id)),
        "{listed}"
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

#[tokio::test]
async fn admin_patches_only_the_fields_given() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let created: Value = app
        .post(
            "/api/products",
            Some(&admin),
            &json!({ "name": "Mouse", "sku": "MS-1", "price": 1_299, "stock": 4, "description": "wired" }),
        )
        .await
        .json()
        .await
        .expect("json");
    let path = format!("/api/products/{}", created["id"].as_str().expect("id"));

    let response = app
        .patch(&path, Some(&admin), &json!({ "price": 999, "stock": 40 }))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let patched: Value = response.json().await.expect("json");
    assert_eq!(patched["price"], 999);
    assert_eq!(patched["stock"], 40);
    assert_eq!(patched["name"], "Mouse", "untouched");
    assert_eq!(patched["description"], "wired", "untouched");
    assert_eq!(patched["sku"], "MS-1");
    assert_ne!(patched["updatedAt"], created["updatedAt"]);

    let patched: Value = app
        .patch(
            &path,
            Some(&admin),
            &json!({ "name": "Wireless mouse", "description": null, "active": false }),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(patched["name"], "Wireless mouse");
    assert_eq!(patched["description"], Value::Null, "null clears it");
    assert_eq!(patched["active"], false);
    assert_eq!(patched["price"], 999);

    let fetched: Value = app.get(&path, None).await.json().await.expect("json");
    assert_eq!(fetched, patched, "the response is what was stored");
}

#[tokio::test]
async fn bad_patches_are_refused() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let id = app.product(&admin, 500, 5).await;
    let path = format!("/api/products/{id}");

    for (body, why) in [
        (json!({}), "empty"),
        (json!({ "sku": "NEW-SKU" }), "the sku cannot change"),
        (
            json!({ "price": 1, "sku": "NEW-SKU" }),
            "the sku cannot change, even beside a valid field",
        ),
        (json!({ "colour": "red" }), "unknown field"),
        (
            json!({ "price": 1, "colour": "red" }),
            "unknown field beside a valid one",
        ),
        (json!({ "price": -1 }), "negative price"),
        (json!({ "price": 9.99 }), "float price"),
        (json!({ "price": "999" }), "price as a string"),
        (json!({ "stock": -1 }), "negative stock"),
        (json!({ "name": "" }), "empty name"),
        (json!({ "name": "x".repeat(201) }), "long name"),
        (
            json!({ "description": "x".repeat(2001) }),
            "long description",
        ),
        (json!({ "active": "no" }), "active as a string"),
    ] {
        let response = app.patch(&path, Some(&admin), &body).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{why}");
        assert_eq!(error_code(response).await, "validation_failed", "{why}");
    }
    assert_eq!(app.stock_of(&id).await, 5, "no bad patch changed anything");

    let unknown = app
        .patch(
            "/api/products/000000000000000000000000",
            Some(&admin),
            &json!({ "price": 1 }),
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(unknown).await, "not_found");

    let by_customer = app
        .patch(&path, Some(&customer), &json!({ "price": 1 }))
        .await;
    assert_eq!(by_customer.status(), StatusCode::FORBIDDEN);
    let anonymous = app.patch(&path, None, &json!({ "price": 1 })).await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_price_change_leaves_placed_orders_alone() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let product = app.product(&admin, 10_000, 5).await;
    let order: Value = app
        .post(
            "/api/orders",
            Some(&customer),
            &json!({ "items": [{ "productId": product, "quantity": 1 }] }),
        )
        .await
        .json()
        .await
        .expect("json");
    let order_path = format!("/api/orders/{}", order["id"].as_str().expect("id"));
    assert_eq!(order["lines"][0]["unitPrice"], 10_000);
    assert_eq!(order["total"], 11_800);

    let repriced = app
        .patch(
            &format!("/api/products/{product}"),
            Some(&admin),
            &json!({ "price": 25_000, "name": "Renamed" }),
        )
        .await;
    assert_eq!(repriced.status(), StatusCode::OK);

    let after: Value = app
        .get(&order_path, Some(&customer))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(after["lines"][0]["unitPrice"], 10_000);
    assert_eq!(after["subtotal"], 10_000);
    assert_eq!(after["total"], 11_800);
    assert_ne!(after["lines"][0]["name"], "Renamed");
}

/// Every item of the catalogue, following `nextCursor` from the first page.
async fn all_pages(app: &TestApp, query: &str, token: Option<&str>) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/products?{query}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let response = app.get(&path, token).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let page: Value = response.json().await.expect("json");
        pages += 1;
        ids.extend(
            page["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|p| p["id"].as_str().expect("id").to_string()),
        );
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => {
                assert!(page["nextCursor"].is_null(), "{page}");
                return (ids, pages);
            }
        }
        assert!(pages < 20, "pagination does not end");
    }
}

#[tokio::test]
async fn the_catalogue_pages_by_cursor_in_id_order() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(app.product(&admin, 100, 1).await);
    }
    created.sort();

    let (ids, pages) = all_pages(&app, "limit=2", None).await;
    assert_eq!(ids, created, "every product once, in _id order");
    assert_eq!(pages, 3);

    // An exact multiple of the page size ends with nextCursor null, not an empty page.
    let (ids, pages) = all_pages(&app, "limit=5", None).await;
    assert_eq!(ids, created);
    assert_eq!(pages, 1);

    let default: Value = app
        .get("/api/products", None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(default["items"].as_array().map(Vec::len), Some(5));
    assert!(default["nextCursor"].is_null());
}

#[tokio::test]
async fn the_default_page_is_twenty() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    for _ in 0..21 {
        app.product(&admin, 100, 1).await;
    }
    let first: Value = app
        .get("/api/products", None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(first["items"].as_array().map(Vec::len), Some(20));
    assert!(first["nextCursor"].is_string());
}

#[tokio::test]
async fn bad_limits_and_cursors_are_refused() {
    let app = spawn_app().await;
    for limit in ["0", "101", "-3"] {
        let response = app.get(&format!("/api/products?limit={limit}"), None).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit={limit}"
        );
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "validation_failed");
        assert_eq!(body["error"]["details"]["limit"][0], "must be 1 to 100");
    }
    for limit in ["1", "100"] {
        let response = app.get(&format!("/api/products?limit={limit}"), None).await;
        assert_eq!(response.status(), StatusCode::OK, "limit={limit}");
    }
    let not_a_number = app.get("/api/products?limit=ten", None).await;
    assert_eq!(not_a_number.status(), StatusCode::BAD_REQUEST);

    let not_an_id = URL_SAFE_NO_PAD.encode("not-an-id");
    let short_hex = URL_SAFE_NO_PAD.encode("66f0000000000000000000");
    for cursor in ["garbage!", &not_an_id, &short_hex] {
        let response = app
            .get(&format!("/api/products?cursor={cursor}"), None)
            .await;
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "cursor={cursor}"
        );
        assert_eq!(
            error_code(response).await,
            "invalid_cursor",
            "cursor={cursor}"
        );
    }
}

#[tokio::test]
async fn inactive_products_are_listed_only_for_admins_who_ask() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let active = app.product(&admin, 100, 1).await;
    let retired = app.product(&admin, 100, 1).await;
    let response = app
        .patch(
            &format!("/api/products/{retired}"),
            Some(&admin),
            &json!({ "active": false }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    let (anonymous, _) = all_pages(&app, "limit=10", None).await;
    assert_eq!(anonymous, vec![active.clone()]);
    let (as_customer, _) = all_pages(&app, "limit=10", Some(&customer)).await;
    assert_eq!(as_customer, vec![active.clone()]);
    let (as_admin, _) = all_pages(&app, "limit=10", Some(&admin)).await;
    assert_eq!(
        as_admin,
        vec![active.clone()],
        "admins too, unless they ask"
    );

    let (everything, _) = all_pages(&app, "limit=1&includeInactive=true", Some(&admin)).await;
    let mut expected = vec![active, retired];
    expected.sort();
    assert_eq!(everything, expected);

    let by_customer = app
        .get("/api/products?includeInactive=true", Some(&customer))
        .await;
    assert_eq!(by_customer.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(by_customer).await, "forbidden");
    let by_anonymous = app.get("/api/products?includeInactive=true", None).await;
    assert_eq!(by_anonymous.status(), StatusCode::UNAUTHORIZED);
}

/// `{"$gt": ""}` in any string field of a product is refused before it
/// could reach a query.
#[tokio::test]
async fn operator_objects_in_product_fields_are_422() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let id = app.product(&admin, 100, 1).await;
    let operator = json!({ "$gt": "" });
    let base = json!({ "name": "A", "sku": "OP-1", "price": 1, "stock": 1, "description": "d" });
    for field in ["name", "sku", "description"] {
        let mut body = base.clone();
        body[field] = operator.clone();
        let response = app.post("/api/products", Some(&admin), &body).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "create {field}"
        );
        assert_eq!(
            error_code(response).await,
            "validation_failed",
            "create {field}"
        );
    }
    for field in ["name", "description"] {
        let response = app
            .patch(
                &format!("/api/products/{id}"),
                Some(&admin),
                &json!({ field: operator }),
            )
            .await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "patch {field}"
        );
        assert_eq!(
            error_code(response).await,
            "validation_failed",
            "patch {field}"
        );
    }
    assert_eq!(app.count("products").await, 1, "nothing created");
}
