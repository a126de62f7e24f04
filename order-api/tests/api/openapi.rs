//! The OpenAPI document against reality: every documented operation is
//! exercised, and every real response body is validated against the schema
//! the document declares for its path, method and status.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

/// The document, and which (method, path, status) triples were checked.
struct Contract {
    doc: Value,
    checked: BTreeSet<(String, String)>,
}

impl Contract {
    async fn fetch(app: &TestApp) -> Self {
        let response = app.get("/api/openapi.json", None).await;
        assert_eq!(response.status(), StatusCode::OK);
        let doc: Value = response.json().await.expect("the document is JSON");
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1")),
            "OpenAPI 3.1: {}",
            doc["openapi"]
        );
        Contract {
            doc,
            checked: BTreeSet::new(),
        }
    }

    /// Sends a request and validates the response against the document.
    async fn call(
        &mut self,
        app: &TestApp,
        method: Method,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request = app.http.request(method.clone(), app.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("sent");
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = response.text().await.expect("body");
        if content_type.starts_with("text/plain") {
            let verb = method.as_str().to_lowercase();
            let documented = &self.doc["paths"][template][&verb]["responses"][status.as_str()];
            assert!(
                documented["content"]["text/plain"].is_object(),
                "{verb} {template} {status} answered text/plain, which the document does not say"
            );
            self.checked.insert((verb, template.to_string()));
            return (status, Value::String(text));
        }
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"))
        };
        self.validate(&method, template, status, &value);
        (status, value)
    }

    fn validate(&mut self, method: &Method, template: &str, status: StatusCode, body: &Value) {
        let verb = method.as_str().to_lowercase();
        let operation = &self.doc["paths"][template][&verb];
        assert!(operation.is_object(), "{verb} {template} is not documented");
        let documented = &operation["responses"][status.as_str()];
        assert!(
            documented.is_object(),
            "{verb} {template} answered {status}, which the document does not list"
        );
        let schema = &documented["content"]["application/json"]["schema"];
        if schema.is_object() {
            let root = json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "components": self.doc["components"],
                "allOf": [schema],
            });
            let validator = jsonschema::draft202012::new(&root).expect("the schema compiles");
            let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
            assert!(
                errors.is_empty(),
                "{verb} {template} {status}: the body does not match the document: {errors:?}\nbody: {body}"
            );
        }
        self.checked.insert((verb, template.to_string()));
    }

    /// Every operation in the document was exercised at least once.
    fn assert_complete(&self) {
        let documented: BTreeSet<(String, String)> = self.doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .expect("operations")
                    .keys()
                    .map(move |verb| (verb.clone(), path.clone()))
            })
            .collect();
        let missed: Vec<_> = documented.difference(&self.checked).collect();
        assert!(
            missed.is_empty(),
            "documented but never exercised: {missed:?}"
        );
    }
}

#[tokio::test]
async fn real_responses_match_the_openapi_document() {
    let app = spawn_app().await;
    let mut contract = Contract::fetch(&app).await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let product = app.product(&admin, 49_900, 3).await;
    let c = Some(customer.as_str());

    contract
        .call(&app, Method::GET, "/api/health", "/api/health", None, None)
        .await;
    let (status, _) = contract
        .call(&app, Method::GET, "/api/ready", "/api/ready", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = contract
        .call(&app, Method::GET, "/metrics", "/metrics", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);

    let order_body = json!({ "items": [{ "productId": product, "quantity": 1 }] });
    let (status, order) = contract
        .call(
            &app,
            Method::POST,
            "/api/orders",
            "/api/orders",
            c,
            Some(&order_body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = order["id"].as_str().expect("id").to_string();
    let too_many = json!({ "items": [{ "productId": product, "quantity": 50 }] });
    let (status, _) = contract
        .call(
            &app,
            Method::POST,
            "/api/orders",
            "/api/orders",
            c,
            Some(&too_many),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = contract
        .call(
            &app,
            Method::POST,
            "/api/orders",
            "/api/orders",
            c,
            Some(&json!({ "items": [] })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = contract
        .call(
            &app,
            Method::POST,
            "/api/orders",
            "/api/orders",
            None,
            Some(&order_body),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let one = format!("/api/orders/{id}");
    let (status, _) = contract
        .call(&app, Method::GET, "/api/orders/{id}", &one, c, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let missing = "/api/orders/000000000000000000000000";
    let (status, _) = contract
        .call(&app, Method::GET, "/api/orders/{id}", missing, c, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = contract
        .call(
            &app,
            Method::GET,
            "/api/orders",
            "/api/orders?limit=1",
            c,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = contract
        .call(
            &app,
            Method::GET,
            "/api/orders",
            "/api/orders?cursor=zz",
            c,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let cancel = format!("/api/orders/{id}/cancel");
    let (status, _) = contract
        .call(
            &app,
            Method::POST,
            "/api/orders/{id}/cancel",
            &cancel,
            c,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = contract
        .call(
            &app,
            Method::POST,
            "/api/orders/{id}/cancel",
            &cancel,
            c,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let events = format!("/api/orders/{id}/events");
    let (status, _) = contract
        .call(
            &app,
            Method::GET,
            "/api/orders/{id}/events",
            &events,
            c,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Accounts.
    let name = test_support::unique("doc");
    let email = format!("{name}@shop.test");
    let register =
        json!({ "username": &name[..20], "email": email, "password": "s3cure-passw0rd" });
    let auth = "/api/auth/register";
    assert_eq!(
        contract
            .call(&app, Method::POST, auth, auth, None, Some(&register))
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        contract
            .call(&app, Method::POST, auth, auth, None, Some(&register))
            .await
            .0,
        StatusCode::CONFLICT
    );
    let bad = json!({ "username": "x", "email": "nope", "password": "short" });
    assert_eq!(
        contract
            .call(&app, Method::POST, auth, auth, None, Some(&bad))
            .await
            .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let login = "/api/auth/login";
    let credentials = json!({ "email": email, "password": "s3cure-passw0rd" });
    let (status, tokens) = contract
        .call(&app, Method::POST, login, login, None, Some(&credentials))
        .await;
    assert_eq!(status, StatusCode::OK);
    let wrong = json!({ "email": email, "password": "wrong-password" });
    assert_eq!(
        contract
            .call(&app, Method::POST, login, login, None, Some(&wrong))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let refresh = "/api/auth/refresh";
    let body = json!({ "refreshToken": tokens["refreshToken"] });
    let (status, rotated) = contract
        .call(&app, Method::POST, refresh, refresh, None, Some(&body))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        contract
            .call(&app, Method::POST, refresh, refresh, None, Some(&body))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let me = "/api/auth/me";
    let access = rotated["accessToken"].as_str().expect("token");
    assert_eq!(
        contract
            .call(&app, Method::GET, me, me, Some(access), None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        contract.call(&app, Method::GET, me, me, None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let logout = "/api/auth/logout";
    let body = json!({ "refreshToken": rotated["refreshToken"] });
    assert_eq!(
        contract
            .call(&app, Method::POST, logout, logout, None, Some(&body))
            .await
            .0,
        StatusCode::NO_CONTENT
    );

    // The catalogue.
    let a = Some(admin.as_str());
    let products = "/api/products";
    let new = json!({ "name": "Desk lamp", "sku": test_support::unique("LAMP"), "price": 249_900, "stock": 4 });
    let (status, lamp) = contract
        .call(&app, Method::POST, products, products, a, Some(&new))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        contract
            .call(&app, Method::POST, products, products, a, Some(&new))
            .await
            .0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        contract
            .call(&app, Method::POST, products, products, c, Some(&new))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let invalid = json!({ "name": "", "sku": "ok", "price": -1, "stock": 1 });
    assert_eq!(
        contract
            .call(&app, Method::POST, products, products, a, Some(&invalid))
            .await
            .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        contract
            .call(
                &app,
                Method::GET,
                products,
                "/api/products?limit=1",
                None,
                None
            )
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        contract
            .call(
                &app,
                Method::GET,
                products,
                "/api/products?cursor=zz",
                None,
                None
            )
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    let lamp_path = format!("/api/products/{}", lamp["id"].as_str().expect("id"));
    let one = "/api/products/{id}";
    assert_eq!(
        contract
            .call(&app, Method::GET, one, &lamp_path, None, None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        contract
            .call(
                &app,
                Method::GET,
                one,
                "/api/products/000000000000000000000000",
                None,
                None
            )
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let patch = json!({ "price": 199_900, "description": null });
    assert_eq!(
        contract
            .call(&app, Method::PATCH, one, &lamp_path, a, Some(&patch))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        contract
            .call(&app, Method::PATCH, one, &lamp_path, a, Some(&json!({})))
            .await
            .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    contract.assert_complete();
}

#[tokio::test]
async fn the_docs_page_is_served() {
    let app = spawn_app().await;
    let response = app.get("/api/docs", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let html = response.text().await.expect("html");
    assert!(html.contains("<html") && html.contains("openapi"), "{html}");
}

/// schemathesis (installed, pinned, by `scripts/stack.sh up` into
/// `.stack/venv-schemathesis`) generates requests from the served document,
/// valid and invalid, and checks every answer against it (`--checks all`):
/// no 5xx, every status listed, every bound the server enforces stated.
/// Once as the admin and once as a customer, 25 examples per operation.
/// SCHEMATHESIS_SEED replays another run (its seed is in the output).
#[tokio::test]
async fn schemathesis_finds_nothing_the_document_does_not_say() {
    let root = test_support::workspace_root();
    let schemathesis = root.join(".stack/venv-schemathesis/bin/schemathesis");
    assert!(
        schemathesis.is_file(),
        "schemathesis is not installed: {} is missing; run `scripts/stack.sh up` (or `make stack-up`), which installs it",
        schemathesis.display()
    );
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let seed = std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let scratch = std::env::temp_dir().join(test_support::unique("schemathesis"));
    std::fs::create_dir_all(&scratch).expect("scratch directory");
    for (who, token) in [("admin", &admin), ("customer", &customer)] {
        let output = tokio::process::Command::new(&schemathesis)
            .arg("--config-file")
            .arg(root.join("order-api/tests/schemathesis.toml"))
            .arg("--no-color")
            .args(["run", &app.url("/api/openapi.json")])
            .args(["--checks", "all", "--max-examples", "25", "--seed", &seed])
            .args(["--generation-database", "none", "--workers", "1"])
            .arg("--header")
            .arg(format!("Authorization: Bearer {token}"))
            .current_dir(&scratch)
            .kill_on_drop(true)
            .output()
            .await
            .expect("schemathesis runs");
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "schemathesis as the {who} found what the document does not say (seed {seed}):\n{report}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // "967 generated, ..." and the closing "=== ... in 21.3s ===".
        let summary: Vec<&str> = report
            .lines()
            .filter(|line| {
                line.contains(" generated") || line.starts_with("=====") && line.contains(" in ")
            })
            .map(|line| line.trim_matches(|c: char| c == '=' || c.is_whitespace()))
            .collect();
        println!("schemathesis as the {who}: {}", summary.join("; "));
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
