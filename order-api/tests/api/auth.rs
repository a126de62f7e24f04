use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, error_code, spawn_app};

#[tokio::test]
async fn register_returns_the_user_without_the_hash() {
    let app = spawn_app().await;
    let response = app
        .post(
            "/api/auth/register",
            None,
            &json!({ "username": "alice_1", "email": "Alice@Shop.test", "password": PASSWORD }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["email"], "alice@shop.test", "email stored lowercase");
    assert_eq!(body["role"], "customer");
    assert!(body["id"].is_string());
    let text = body.to_string();
    assert!(
        !text.contains("argon2") && !text.contains("password"),
        "{text}"
    );
}

#[tokio::test]
async fn duplicate_email_is_a_conflict() {
    let app = spawn_app().await;
    let register = |name: &'static str| json!({ "username": name, "email": "same@shop.test", "password": PASSWORD });
    let first = app
        .post("/api/auth/register", None, &register("first"))
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let second = app
        .post("/api/auth/register", None, &register("second"))
        .await;
    assert_eq!(second.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(second).await, "account_exists");
}

#[tokio::test]
async fn invalid_registrations_are_422_with_field_errors() {
    let app = spawn_app().await;
    let cases = [
        json!({ "username": "ok_name", "email": "not-an-email", "password": PASSWORD }),
        json!({ "username": "ok_name", "email": "a@shop.test", "password": "short" }),
        json!({ "username": "x", "email": "a@shop.test", "password": PASSWORD }),
        json!({ "username": "bad name!", "email": "a@shop.test", "password": PASSWORD }),
        json!({ "username": "ok_name", "email": { "$gt": "" }, "password": PASSWORD }),
    ];
    for case in cases {
        let response = app.post("/api/auth/register", None, &case).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{case}"
        );
        assert_eq!(error_code(response).await, "validation_failed", "{case}");
    }
}

/// Addresses the loose check let through and the SMTP client then refused
/// for good, so the account's every confirmation failed: refused at the
/// door now, by the rules the sender applies.
#[tokio::test]
async fn an_address_no_email_could_be_sent_to_is_refused_at_registration() {
    let app = spawn_app().await;
    // 313 characters in labels of 60: past SMTP's 254, within the old check.
    let long = format!(
        "{}@{}.test",
        "a".repeat(64),
        vec!["b".repeat(60); 4].join(".")
    );
    for email in [
        "a..b@shop.test",
        ".a@shop.test",
        "a.@shop.test",
        long.as_str(),
    ] {
        let case = json!({ "username": "ok_name", "email": email, "password": PASSWORD });
        let response = app.post("/api/auth/register", None, &case).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{email}"
        );
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "validation_failed", "{body}");
        assert!(body["error"]["details"]["email"].is_array(), "{body}");
    }
}

#[tokio::test]
async fn login_returns_tokens_and_an_http_only_cookie() {
    let app = spawn_app().await;
    let (email, _) = app.customer().await;
    let response = app
        .post(
            "/api/auth/login",
            None,
            &json!({ "email": email, "password": PASSWORD }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .expect("refresh cookie")
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(cookie.starts_with("refresh_token="), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(cookie.contains("Path=/api/auth"), "{cookie}");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["tokenType"], "Bearer");
    assert_eq!(body["expiresIn"], 900);
    assert!(body["refreshToken"].as_str().is_some_and(|t| t.len() >= 43));
    assert_eq!(body["user"]["email"], email.as_str());
}

#[tokio::test]
async fn wrong_password_and_unknown_email_get_the_same_401() {
    let app = spawn_app().await;
    let (email, _) = app.customer().await;
    let wrong = app
        .post(
            "/api/auth/login",
            None,
            &json!({ "email": email, "password": "wrong-password" }),
        )
        .await;
    let unknown = app
        .post(
            "/api/auth/login",
            None,
            &json!({ "email": "nobody@shop.test", "password": "wrong-password" }),
        )
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    let wrong: Value = wrong.json().await.expect("json");
    let unknown: Value = unknown.json().await.expect("json");
    assert_eq!(
        wrong, unknown,
        "responses must not reveal whether the email exists"
    );
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_token_revokes_the_family() {
    let app = spawn_app().await;
    let (email, _) = app.customer().await;
    let login: Value = app
        .post(
            "/api/auth/login",
            None,
            &json!({ "email": email, "password": PASSWORD }),
        )
        .await
        .json()
        .await
        .expect("json");
    let first = login["refreshToken"].as_str().expect("token").to_string();

    let rotated = app
        .post("/api/auth/refresh", None, &json!({ "refreshToken": first }))
        .await;
    assert_eq!(rotated.status(), StatusCode::OK);
    let rotated: Value = rotated.json().await.expect("json");
    let second = rotated["refreshToken"].as_str().expect("token").to_string();
    assert_ne!(first, second, "refresh must rotate the token");
    assert!(rotated["accessToken"].is_string());

    // Replaying the spent token is theft: 401, and its successor dies too.
    let replay = app
        .post("/api/auth/refresh", None, &json!({ "refreshToken": first }))
        .await;
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    let successor = app
        .post(
            "/api/auth/refresh",
            None,
            &json!({ "refreshToken": second }),
        )
        .await;
    assert_eq!(successor.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn refresh_reads_the_cookie_when_the_body_is_empty() {
    let app = spawn_app().await;
    let (email, _) = app.customer().await;
    let login = app
        .post(
            "/api/auth/login",
            None,
            &json!({ "email": email, "password": PASSWORD }),
        )
        .await;
    let cookie = login
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("cookie")
        .to_string();
    let response = app
        .http
        .post(app.url("/api/auth/refresh"))
        .header(header::COOKIE, cookie)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn protected_routes_refuse_missing_and_invalid_tokens() {
    let app = spawn_app().await;
    let body = json!({ "items": [] });
    let missing = app.post("/api/orders", None, &body).await;
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(missing).await, "unauthorized");
    let garbage = app.post("/api/orders", Some("not.a.jwt"), &body).await;
    assert_eq!(garbage.status(), StatusCode::UNAUTHORIZED);

    // A token signed with another key.
    let (_, token) = app.customer().await;
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged_signature = "A".repeat(parts[2].len());
    parts[2] = &forged_signature;
    let forged = parts.join(".");
    let response = app.post("/api/orders", Some(&forged), &body).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

/// The `Set-Cookie` header of a response, as a string.
fn set_cookie(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(header::SET_COOKIE)
        .expect("a Set-Cookie header")
        .to_str()
        .expect("ascii")
        .to_string()
}

fn assert_clears_the_refresh_cookie(cookie: &str) {
    assert!(cookie.starts_with("refresh_token=;"), "{cookie}");
    assert!(cookie.contains("Max-Age=0"), "{cookie}");
    // A browser removes a cookie only if the path matches the one it set.
    assert!(cookie.contains("Path=/api/auth"), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
}

async fn refresh_with(app: &TestApp, token: &str) -> StatusCode {
    app.post("/api/auth/refresh", None, &json!({ "refreshToken": token }))
        .await
        .status()
}

#[tokio::test]
async fn logout_revokes_the_refresh_token_and_clears_the_cookie() {
    let app = spawn_app().await;
    let email = app.register().await;
    let login = app.login_body(&email, PASSWORD).await;
    let token = login["refreshToken"].as_str().expect("token");

    let response = app
        .post("/api/auth/logout", None, &json!({ "refreshToken": token }))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_clears_the_refresh_cookie(&set_cookie(&response));

    let record = app
        .db
        .collection::<mongodb::bson::Document>("refresh_tokens")
        .find_one(mongodb::bson::doc! {})
        .await
        .expect("query")
        .expect("the login's token record");
    assert!(
        record.get_datetime("revoked_at").is_ok(),
        "revoked_at set: {record}"
    );
    assert_eq!(refresh_with(&app, token).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn logout_reads_the_cookie_and_ends_only_that_login() {
    let app = spawn_app().await;
    let email = app.register().await;
    let laptop = app.login_body(&email, PASSWORD).await;
    let phone = app.login_body(&email, PASSWORD).await;
    let laptop_token = laptop["refreshToken"].as_str().expect("token");

    let response = app
        .http
        .post(app.url("/api/auth/logout"))
        .header(header::COOKIE, format!("refresh_token={laptop_token}"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_clears_the_refresh_cookie(&set_cookie(&response));

    assert_eq!(
        refresh_with(&app, laptop_token).await,
        StatusCode::UNAUTHORIZED
    );
    let phone_token = phone["refreshToken"].as_str().expect("token");
    assert_eq!(
        refresh_with(&app, phone_token).await,
        StatusCode::OK,
        "another login of the same account stays signed in"
    );
}

/// Logout ends the whole login: presenting any token of it, even one already
/// rotated away, revokes the token the client holds now.
#[tokio::test]
async fn logout_revokes_the_rotated_successor_too() {
    let app = spawn_app().await;
    let email = app.register().await;
    let login = app.login_body(&email, PASSWORD).await;
    let first = login["refreshToken"].as_str().expect("token");
    let rotated: Value = app
        .post("/api/auth/refresh", None, &json!({ "refreshToken": first }))
        .await
        .json()
        .await
        .expect("json");
    let current = rotated["refreshToken"].as_str().expect("token");

    let response = app
        .post("/api/auth/logout", None, &json!({ "refreshToken": first }))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(refresh_with(&app, current).await, StatusCode::UNAUTHORIZED);
}

/// Logout is idempotent: whatever the client holds, afterwards it holds no
/// session, and the answer does not reveal whether a token was live.
#[tokio::test]
async fn logout_without_a_live_token_is_still_204_and_clears_the_cookie() {
    let app = spawn_app().await;
    let no_token = app
        .http
        .post(app.url("/api/auth/logout"))
        .send()
        .await
        .expect("sent");
    assert_eq!(no_token.status(), StatusCode::NO_CONTENT);
    assert_clears_the_refresh_cookie(&set_cookie(&no_token));

    let unknown = app
        .post(
            "/api/auth/logout",
            None,
            &json!({ "refreshToken": "never-issued-token" }),
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::NO_CONTENT);
    assert_clears_the_refresh_cookie(&set_cookie(&unknown));

    let email = app.register().await;
    let login = app.login_body(&email, PASSWORD).await;
    let token = login["refreshToken"].as_str().expect("token");
    for _ in 0..2 {
        let twice = app
            .post("/api/auth/logout", None, &json!({ "refreshToken": token }))
            .await;
        assert_eq!(twice.status(), StatusCode::NO_CONTENT);
    }
}

#[tokio::test]
async fn me_is_the_caller_without_the_hash() {
    let app = spawn_app().await;
    let (email, token) = app.customer().await;
    let response = app.get("/api/auth/me", Some(&token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["email"], email.as_str());
    assert_eq!(body["role"], "customer");
    assert!(body["id"].is_string() && body["username"].is_string());
    let text = body.to_string();
    assert!(
        !text.contains("argon2") && !text.to_lowercase().contains("hash"),
        "{text}"
    );

    let admin = app.admin_token().await;
    let body: Value = app
        .get("/api/auth/me", Some(&admin))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["role"], "admin");

    let anonymous = app.get("/api/auth/me", None).await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(anonymous).await, "unauthorized");
}

/// `{"$gt": ""}` where a string belongs would, if it reached a MongoDB
/// filter, match any email. Typed fields refuse it at the door.
#[tokio::test]
async fn operator_objects_in_login_and_register_fields_are_422() {
    let app = spawn_app().await;
    let email = app.register().await;
    let operator = json!({ "$gt": "" });
    let cases = [
        (
            "/api/auth/login",
            json!({ "email": operator, "password": PASSWORD }),
        ),
        (
            "/api/auth/login",
            json!({ "email": email, "password": operator }),
        ),
        (
            "/api/auth/login",
            json!({ "email": { "$ne": null }, "password": { "$ne": null } }),
        ),
        (
            "/api/auth/register",
            json!({ "username": operator, "email": "x@shop.test", "password": PASSWORD }),
        ),
        (
            "/api/auth/register",
            json!({ "username": "okname", "email": operator, "password": PASSWORD }),
        ),
        (
            "/api/auth/register",
            json!({ "username": "okname", "email": "x@shop.test", "password": operator }),
        ),
        (
            "/api/auth/refresh",
            json!({ "refreshToken": { "$gt": "" } }),
        ),
        ("/api/auth/logout", json!({ "refreshToken": { "$gt": "" } })),
    ];
    for (path, body) in cases {
        let response = app.post(path, None, &body).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path} {body}"
        );
        assert_eq!(
            error_code(response).await,
            "validation_failed",
            "{path} {body}"
        );
    }
}
