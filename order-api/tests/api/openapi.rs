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

    /// Runs `steps` in order, each asserting its status; their bodies.
    async fn run(&mut self, app: &TestApp, steps: Vec<Step<'_>>) -> Vec<Value> {
        let mut answers = Vec::with_capacity(steps.len());
        for (method, template, path, token, body, expected) in steps {
            let (status, answer) = self
                .call(app, method.clone(), template, path, token, body.as_ref())
                .await;
            assert_eq!(status, expected, "{method} {path}: {answer}");
            answers.push(answer);
        }
        answers
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

/// One request of a contract run: method, the document's path template,
/// the path sent, the bearer token, the body, and the status it must get.
type Step<'a> = (
    Method,
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<Value>,
    StatusCode,
);

#[tokio::test]
async fn real_responses_match_the_openapi_document() {
    use {Method as M, StatusCode as S};
    let app = spawn_app().await;
    let mut contract = Contract::fetch(&app).await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer().await;
    let product = app.product(&admin, 49_900, 3).await;
    let (a, c) = (Some(admin.as_str()), Some(customer.as_str()));

    let orders = "/api/orders";
    let line = |quantity: u32| json!({ "items": [{ "productId": product, "quantity": quantity }] });
    let placed = contract
        .run(
            &app,
            vec![
                (M::GET, "/api/health", "/api/health", None, None, S::OK),
                (M::GET, "/api/ready", "/api/ready", None, None, S::OK),
                (M::POST, orders, orders, c, Some(line(1)), S::CREATED),
                (M::POST, orders, orders, c, Some(line(50)), S::CONFLICT),
                (
                    M::POST,
                    orders,
                    orders,
                    c,
                    Some(json!({ "items": [] })),
                    S::UNPROCESSABLE_ENTITY,
                ),
                (
                    M::POST,
                    orders,
                    orders,
                    None,
                    Some(line(1)),
                    S::UNAUTHORIZED,
                ),
            ],
        )
        .await;
    let id = placed[2]["id"].as_str().expect("id");
    let (one, cancel, events) = (
        format!("/api/orders/{id}"),
        format!("/api/orders/{id}/cancel"),
        format!("/api/orders/{id}/events"),
    );
    let missing = "/api/orders/000000000000000000000000";
    contract
        .run(
            &app,
            vec![
                (M::GET, "/api/orders/{id}", &one, c, None, S::OK),
                (M::GET, "/api/orders/{id}", missing, c, None, S::NOT_FOUND),
                (M::GET, orders, "/api/orders?limit=1", c, None, S::OK),
                (
                    M::GET,
                    orders,
                    "/api/orders?cursor=zz",
                    c,
                    None,
                    S::BAD_REQUEST,
                ),
                (M::POST, "/api/orders/{id}/cancel", &cancel, c, None, S::OK),
                (
                    M::POST,
                    "/api/orders/{id}/cancel",
                    &cancel,
                    c,
                    None,
                    S::CONFLICT,
                ),
                (M::GET, "/api/orders/{id}/events", &events, c, None, S::OK),
            ],
        )
        .await;

    // Accounts.
    let name = test_support::unique("doc");
    let email = format!("{name}@shop.test");
    let password = test_support::client::PASSWORD;
    let register = json!({ "username": &name[..20], "email": email, "password": password });
    let bad = json!({ "username": "x", "email": "nope", "password": "short" });
    let credentials = |password: &str| json!({ "email": email, "password": password });
    let (auth, login) = ("/api/auth/register", "/api/auth/login");
    let logged_in = contract
        .run(
            &app,
            vec![
                (
                    M::POST,
                    auth,
                    auth,
                    None,
                    Some(register.clone()),
                    S::CREATED,
                ),
                (M::POST, auth, auth, None, Some(register), S::CONFLICT),
                (
                    M::POST,
                    auth,
                    auth,
                    None,
                    Some(bad),
                    S::UNPROCESSABLE_ENTITY,
                ),
                (
                    M::POST,
                    login,
                    login,
                    None,
                    Some(credentials(password)),
                    S::OK,
                ),
                (
                    M::POST,
                    login,
                    login,
                    None,
                    Some(credentials("wrong-password")),
                    S::UNAUTHORIZED,
                ),
            ],
        )
        .await;
    let refresh = "/api/auth/refresh";
    let old = json!({ "refreshToken": logged_in[3]["refreshToken"] });
    let rotated = contract
        .run(
            &app,
            vec![
                (M::POST, refresh, refresh, None, Some(old.clone()), S::OK),
                (M::POST, refresh, refresh, None, Some(old), S::UNAUTHORIZED),
            ],
        )
        .await;
    let access = rotated[0]["accessToken"].as_str().expect("token");
    let (me, logout) = ("/api/auth/me", "/api/auth/logout");
    let new = json!({ "refreshToken": rotated[0]["refreshToken"] });
    contract
        .run(
            &app,
            vec![
                (M::GET, me, me, Some(access), None, S::OK),
                (M::GET, me, me, None, None, S::UNAUTHORIZED),
                (M::POST, logout, logout, None, Some(new), S::NO_CONTENT),
            ],
        )
        .await;

    // The catalogue.
    let products = "/api/products";
    let lamp = json!({ "name": "Desk lamp", "sku": test_support::unique("LAMP"), "price": 249_900, "stock": 4 });
    let invalid = json!({ "name": "", "sku": "ok", "price": -1, "stock": 1 });
    let created = contract
        .run(
            &app,
            vec![
                (
                    M::POST,
                    products,
                    products,
                    a,
                    Some(lamp.clone()),
                    S::CREATED,
                ),
                (
                    M::POST,
                    products,
                    products,
                    a,
                    Some(lamp.clone()),
                    S::CONFLICT,
                ),
                (M::POST, products, products, c, Some(lamp), S::FORBIDDEN),
                (
                    M::POST,
                    products,
                    products,
                    a,
                    Some(invalid),
                    S::UNPROCESSABLE_ENTITY,
                ),
                (M::GET, products, "/api/products?limit=1", None, None, S::OK),
                (
                    M::GET,
                    products,
                    "/api/products?cursor=zz",
                    None,
                    None,
                    S::BAD_REQUEST,
                ),
            ],
        )
        .await;
    let lamp = format!("/api/products/{}", created[0]["id"].as_str().expect("id"));
    let (one, missing) = (
        "/api/products/{id}",
        "/api/products/000000000000000000000000",
    );
    let patch = json!({ "price": 199_900, "description": null });
    contract
        .run(
            &app,
            vec![
                (M::GET, one, &lamp, None, None, S::OK),
                (M::GET, one, missing, None, None, S::NOT_FOUND),
                (M::PATCH, one, &lamp, a, Some(patch), S::OK),
                (
                    M::PATCH,
                    one,
                    &lamp,
                    a,
                    Some(json!({})),
                    S::UNPROCESSABLE_ENTITY,
                ),
            ],
        )
        .await;

    contract.assert_complete();
}

#[tokio::test]
async fn the_docs_page_is_served() {
    let app = spawn_app().await;
    let response = app.get("/api/docs", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok()),
        Some(order_api::openapi::DOCS_CONTENT_SECURITY_POLICY)
    );
    let html = response.text().await.expect("html");
    assert!(
        html.contains("<html") && html.contains("swagger-ui"),
        "{html}"
    );
    assert!(
        !html.contains("://"),
        "nothing loaded from elsewhere: {html}"
    );
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
