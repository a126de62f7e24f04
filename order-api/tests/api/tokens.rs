//! Access tokens that must not work. Each forged token differs from a valid
//! one in one way only, and `a_token_forged_with_the_real_secret_is_accepted`
//! proves the forging itself is right, so each refusal is for that one
//! difference.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{JWT_SECRET, PASSWORD, TestApp, error_code, spawn_app};

/// Claims exactly like the ones the API issues to `user_id`.
fn valid_claims(user_id: &str, role: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "sub": user_id,
        "role": role,
        "iat": now,
        "exp": now + 600,
        "jti": uuid::Uuid::new_v4().to_string(),
        "typ": "access",
    })
}

fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("signs")
}

/// A customer and the id the API knows them by.
async fn customer_id(app: &TestApp) -> (String, String) {
    let (_, token) = app.customer().await;
    let me: Value = app
        .get("/api/auth/me", Some(&token))
        .await
        .json()
        .await
        .expect("json");
    (me["id"].as_str().expect("id").to_string(), token)
}

async fn assert_refused(app: &TestApp, token: &str, what: &str) {
    let response = app.get("/api/auth/me", Some(token)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
    assert_eq!(error_code(response).await, "unauthorized", "{what}");
}

#[tokio::test]
async fn a_token_forged_with_the_real_secret_is_accepted() {
    let app = spawn_app().await;
    let (id, _) = customer_id(&app).await;
    let response = app
        .get("/api/auth/me", Some(&sign(&valid_claims(&id, "customer"))))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_alg_none_token_is_refused() {
    let app = spawn_app().await;
    let (id, _) = customer_id(&app).await;
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(valid_claims(&id, "admin").to_string());
    assert_refused(
        &app,
        &format!("{header}.{payload}."),
        "alg none, no signature",
    )
    .await;
    // And with the signature of a real token left on.
    let real = sign(&valid_claims(&id, "admin"));
    let signature = real.rsplit('.').next().expect("signature");
    assert_refused(
        &app,
        &format!("{header}.{payload}.{signature}"),
        "alg none, stray signature",
    )
    .await;
}

#[tokio::test]
async fn a_token_whose_payload_was_edited_is_refused() {
    let app = spawn_app().await;
    let (_, token) = customer_id(&app).await;
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("base64url"))
            .expect("claims JSON");
    assert_eq!(claims["role"], "customer");
    claims["role"] = json!("admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    assert_refused(&app, &tampered, "role changed, signature kept").await;
    let create = app
        .post(
            "/api/products",
            Some(&tampered),
            &json!({ "name": "Free", "sku": "FREE-1", "price": 0, "stock": 1 }),
        )
        .await;
    assert_eq!(create.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let app = spawn_app().await;
    let (id, _) = customer_id(&app).await;
    let mut claims = valid_claims(&id, "customer");
    let now = chrono::Utc::now().timestamp();
    // Well past the 5 s leeway.
    claims["iat"] = json!(now - 960);
    claims["exp"] = json!(now - 60);
    assert_refused(&app, &sign(&claims), "expired a minute ago").await;
}

#[tokio::test]
async fn a_refresh_token_is_not_an_access_token() {
    let app = spawn_app().await;
    let email = app.register().await;
    let login = app.login_body(&email, PASSWORD).await;
    let refresh = login["refreshToken"].as_str().expect("token");
    assert_refused(&app, refresh, "refresh token as Bearer").await;
}

#[tokio::test]
async fn a_correctly_signed_token_of_another_type_is_refused() {
    let app = spawn_app().await;
    let (id, _) = customer_id(&app).await;
    let mut claims = valid_claims(&id, "customer");
    claims["typ"] = json!("refresh");
    assert_refused(&app, &sign(&claims), "typ refresh").await;
    claims["typ"] = json!("ACCESS");
    assert_refused(&app, &sign(&claims), "typ in another case").await;
}
