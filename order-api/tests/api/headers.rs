//! The headers every response carries (one tower-http layer), checked on
//! every operation the OpenAPI document lists, answered however it is.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::spawn_app;

#[tokio::test]
async fn every_operation_answers_with_the_security_headers_and_no_store() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let product = app.product(&admin, 500, 5).await;
    let order = app.order(&customer, &product, 1).await;
    let order_id = order["id"].as_str().expect("id").to_string();
    let document: Value = app
        .get("/api/openapi.json", None)
        .await
        .json()
        .await
        .expect("the OpenAPI document");
    let paths = document["paths"].as_object().expect("paths");

    let mut checked = 0;
    for (path, operations) in paths {
        let id = if path.contains("products") {
            &product
        } else {
            &order_id
        };
        let concrete = path.replace("{id}", id);
        for method in operations.as_object().expect("operations").keys() {
            let method: Method = method.to_uppercase().parse().expect("a method");
            // The admin for the catalogue, the customer for the rest; any
            // answer (2xx, 4xx) must carry them.
            let token = if path.contains("products") {
                &admin
            } else {
                &customer
            };
            let body = (method != Method::GET).then(|| json!({}));
            let response = app
                .send(method.clone(), &concrete, Some(token), body.as_ref())
                .await;
            let headers = response.headers();
            for (name, value) in order_api::http::SECURITY_HEADERS {
                assert_eq!(
                    headers.get(&name).and_then(|v| v.to_str().ok()),
                    Some(value),
                    "{method} {path} ({}): {name}",
                    response.status()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 12, "every operation of the document: {checked}");
}

#[tokio::test]
async fn token_responses_are_never_stored() {
    let app = spawn_app().await;
    let (email, _) = app.customer().await;
    let login = app.try_login(&email, test_support::client::PASSWORD).await;
    assert_eq!(login.status(), reqwest::StatusCode::OK);
    assert_eq!(
        login
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store"),
        "a token response (RFC 6749 5.1)"
    );
}
