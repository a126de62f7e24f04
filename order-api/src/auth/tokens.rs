//! Access tokens (HS256 JWTs, short-lived) and refresh tokens (random 256-bit,
//! stored only as a SHA-256 hash, rotated on every use; a reused token revokes
//! its whole family).

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bson::{DateTime, doc, oid::ObjectId};
use common::domain::EmailAddress;
use futures::FutureExt;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use mongodb::{ClientSession, Collection, Database, IndexModel};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Role;
use crate::config::AuthConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub sub: String,
    pub role: Role,
    /// The account's email (fixed for the account's life): what placing an
    /// order needs for the confirmation, without reading the account on
    /// every order. Absent from tokens issued before it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailAddress>,
    /// The account's username, for the order emails' greeting, on the same
    /// terms (absent from older tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub typ: String,
}

const ACCESS_TYP: &str = "access";

pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

impl TokenIssuer {
    pub fn new(config: &AuthConfig) -> Self {
        let secret = config.jwt_secret.expose_secret().as_bytes();
        // Only HS256: a token that names another algorithm (or `none`) fails.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "iat", "sub"]);
        validation.leeway = 5;
        TokenIssuer {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            access_ttl: config.access_token_ttl,
            refresh_ttl: config.refresh_token_ttl,
        }
    }

    pub fn issue_access(
        &self,
        user_id: ObjectId,
        role: Role,
        email: &EmailAddress,
        name: &str,
    ) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = AccessClaims {
            sub: user_id.to_hex(),
            role,
            email: Some(email.clone()),
            name: Some(name.to_string()),
            iat: now,
            exp: now + i64::try_from(self.access_ttl.as_secs()).unwrap_or(i64::MAX / 2),
            jti: uuid::Uuid::new_v4().to_string(),
            typ: ACCESS_TYP.into(),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// The claims of a valid, unexpired access token; `None` for anything else.
    pub fn verify_access(&self, token: &str) -> Option<AccessClaims> {
        let data =
            jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation).ok()?;
        (data.claims.typ == ACCESS_TYP).then_some(data.claims)
    }
}

/// A stored refresh token. `_id` is the SHA-256 of the token: the token
/// itself exists only in the client's hands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshTokenRecord {
    #[serde(rename = "_id")]
    pub hash: String,
    pub user_id: ObjectId,
    /// Every token descended from one login shares a family.
    pub family_id: ObjectId,
    pub expires_at: DateTime,
    pub created_at: DateTime,
    #[serde(default)]
    pub used_at: Option<DateTime>,
    #[serde(default)]
    pub revoked_at: Option<DateTime>,
}

fn collection(db: &Database) -> Collection<RefreshTokenRecord> {
    db.collection("refresh_tokens")
}

/// Expired tokens are deleted by the expiry sweep; until then rotation
/// refuses them by their time.
pub fn expiring(db: &Database) -> common::expiry::Expiring {
    common::expiry::Expiring::new(db, collection(db).name(), "expires_at")
}

pub async fn create_indexes(db: &Database) -> mongodb::error::Result<()> {
    collection(db)
        .create_index(IndexModel::builder().keys(doc! { "family_id": 1 }).build())
        .await?;
    expiring(db).create_index().await
}

pub fn hash_refresh_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// What presenting a refresh token led to.
pub enum Rotation {
    /// The token was current: here is its successor.
    Rotated { user_id: ObjectId, token: String },
    /// Unknown, expired or revoked.
    Invalid,
    /// Already used: somebody replayed it. The whole family is now revoked.
    Reused,
}

/// Issues the first refresh token of a new family (at login).
pub async fn issue_refresh(
    db: &Database,
    user_id: ObjectId,
    ttl: Duration,
) -> mongodb::error::Result<String> {
    common::mongo::bounded_write(
        db,
        "issue_refresh_token",
        collection(db),
        |session, tokens| store_new(session, tokens, user_id, ObjectId::new(), ttl).boxed(),
    )
    .await
}

async fn store_new(
    session: &mut ClientSession,
    tokens: &Collection<RefreshTokenRecord>,
    user_id: ObjectId,
    family_id: ObjectId,
    ttl: Duration,
) -> mongodb::error::Result<String> {
    let token = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let now = DateTime::now();
    tokens
        .insert_one(RefreshTokenRecord {
            hash: hash_refresh_token(&token),
            user_id,
            family_id,
            expires_at: common::mongo::later(now, ttl),
            created_at: now,
            used_at: None,
            revoked_at: None,
        })
        .session(session)
        .await?;
    Ok(token)
}

/// Spends `token` and issues its successor in the same family, in one
/// transaction.
pub async fn rotate_refresh(
    db: &Database,
    token: &str,
    ttl: Duration,
) -> mongodb::error::Result<Rotation> {
    common::mongo::bounded_write(
        db,
        "rotate_refresh_token",
        (collection(db), hash_refresh_token(token)),
        |session, (tokens, hash)| rotate(session, tokens, hash, ttl).boxed(),
    )
    .await
}

async fn rotate(
    session: &mut ClientSession,
    tokens: &Collection<RefreshTokenRecord>,
    hash: &str,
    ttl: Duration,
) -> mongodb::error::Result<Rotation> {
    let now = DateTime::now();
    // Claiming the token is one guarded update: two concurrent refreshes
    // with the same token cannot both succeed. What is read back (its user
    // and family) never changes.
    let claimed = common::mongo::update_and_read(
        tokens,
        Some(&mut *session),
        doc! {
            "_id": hash,
            "used_at": null,
            "revoked_at": null,
            "expires_at": { "$gt": now },
        },
        doc! { "$set": { "used_at": now } },
    )
    .await?;
    if let Some(record) = claimed {
        let token = store_new(session, tokens, record.user_id, record.family_id, ttl).await?;
        return Ok(Rotation::Rotated {
            user_id: record.user_id,
            token,
        });
    }
    match tokens
        .find_one(doc! { "_id": hash })
        .session(&mut *session)
        .await?
    {
        Some(record) if record.used_at.is_some() => {
            revoke(session, tokens, record.family_id, now).await?;
            tracing::warn!(user_id = %record.user_id, family = %record.family_id, "refresh token reused; family revoked");
            Ok(Rotation::Reused)
        }
        _ => Ok(Rotation::Invalid),
    }
}

/// Revokes the family `token` belongs to (the token itself included):
/// logging out ends the whole login, not only its latest token. Returns the
/// token's record, or `None` for a token we never issued.
pub async fn revoke_family(
    db: &Database,
    token: &str,
) -> mongodb::error::Result<Option<RefreshTokenRecord>> {
    common::mongo::bounded_write(
        db,
        "revoke_refresh_tokens",
        (collection(db), hash_refresh_token(token)),
        |session, (tokens, hash)| {
            async move {
                let Some(record) = tokens
                    .find_one(doc! { "_id": &*hash })
                    .session(&mut *session)
                    .await?
                else {
                    return Ok(None);
                };
                revoke(session, tokens, record.family_id, DateTime::now()).await?;
                Ok(Some(record))
            }
            .boxed()
        },
    )
    .await
}

async fn revoke(
    session: &mut ClientSession,
    tokens: &Collection<RefreshTokenRecord>,
    family_id: ObjectId,
    now: DateTime,
) -> mongodb::error::Result<()> {
    tokens
        .update_many(
            doc! { "family_id": family_id, "revoked_at": null },
            doc! { "$set": { "revoked_at": now } },
        )
        .session(session)
        .await?;
    Ok(())
}
