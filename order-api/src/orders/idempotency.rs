//! `Idempotency-Key`: a client that retries a POST after a timeout gets the
//! first response again instead of a second order.
//!
//! The key's record is written in the SAME transaction as the order, so a
//! record exists exactly when its order does. Two concurrent requests with
//! one key cannot both commit: the unique `_id` lets one win, and the other
//! replays the winner's response. Requests that wrote nothing (refused for
//! stock or validation) leave no record: retrying them is already safe.

use std::time::Duration;

use bson::{DateTime, doc, oid::ObjectId};
use mongodb::{ClientSession, Collection, Database};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use common::domain::Order;

use super::view::OrderView;
use crate::http::error::ApiError;

/// How long a key is remembered.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);
pub const MAX_KEY_LEN: usize = 255;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyId {
    pub user_id: ObjectId,
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    #[serde(rename = "_id")]
    pub id: KeyId,
    /// SHA-256 of the canonical request body.
    pub request_hash: String,
    pub status: u16,
    /// The response body exactly as first sent.
    pub body: String,
    pub order_id: ObjectId,
    pub created_at: DateTime,
    pub expires_at: DateTime,
}

/// A request that carries a key: who, which key, and what it asked for.
#[derive(Debug, Clone)]
pub struct KeyedRequest {
    pub id: KeyId,
    pub request_hash: String,
}

impl KeyedRequest {
    /// Validates the header value and fingerprints the parsed request body.
    pub fn new(user_id: ObjectId, key: &str, body: &impl Serialize) -> Result<Self, ApiError> {
        let key = key.trim();
        if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::bad_request(
                "invalid_idempotency_key",
                format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
            ));
        }
        // The typed body re-serialized: its field order is the struct's, so
        // the client's spacing and key order do not change the fingerprint.
        let canonical = serde_json::to_vec(body).map_err(|e| ApiError::internal(e.into()))?;
        Ok(KeyedRequest {
            id: KeyId {
                user_id,
                key: key.to_string(),
            },
            request_hash: hex::encode(Sha256::digest(canonical)),
        })
    }
}

fn collection(db: &Database) -> Collection<IdempotencyRecord> {
    db.collection("idempotency_keys")
}

/// Keys go once `expires_at` has passed.
pub fn expiring(db: &Database) -> common::expiry::Expiring {
    common::expiry::Expiring::new(db, collection(db).name(), "expires_at")
}

pub async fn create_indexes(db: &Database) -> mongodb::error::Result<()> {
    expiring(db).create_index().await
}

/// What to do with a keyed request, given what is stored.
pub enum Prior {
    /// First time: go ahead.
    None,
    /// Same key and body: answer with this.
    Replay { status: u16, body: String },
}

pub async fn lookup(db: &Database, request: &KeyedRequest) -> Result<Prior, ApiError> {
    let id = bson::to_bson(&request.id).map_err(|e| ApiError::internal(e.into()))?;
    let Some(record) = collection(db).find_one(doc! { "_id": id }).await? else {
        return Ok(Prior::None);
    };
    if record.request_hash != request.request_hash {
        return Err(ApiError::unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body",
        ));
    }
    Ok(Prior::Replay {
        status: record.status,
        body: record.body,
    })
}

/// The record of `order`'s 201 for `request`: the response body exactly as
/// the client gets it.
pub fn record_for(
    request: &KeyedRequest,
    order: &Order,
    now: DateTime,
) -> mongodb::error::Result<IdempotencyRecord> {
    let body = serde_json::to_string(&OrderView::from(order.clone()))
        .map_err(mongodb::error::Error::custom)?;
    Ok(IdempotencyRecord {
        id: request.id.clone(),
        request_hash: request.request_hash.clone(),
        status: 201,
        body,
        order_id: order.id,
        created_at: now,
        expires_at: common::mongo::later(now, RETENTION),
    })
}

/// Stores the response inside the order's transaction.
pub async fn record(
    db: &Database,
    session: &mut ClientSession,
    record: &IdempotencyRecord,
) -> mongodb::error::Result<()> {
    collection(db).insert_one(record).session(session).await?;
    Ok(())
}

/// `record` as one write of a batch's bulk write: several orders'
/// responses stored inside their batch's transaction.
pub fn insert_model(
    db: &Database,
    record: &IdempotencyRecord,
) -> mongodb::error::Result<mongodb::options::InsertOneModel> {
    collection(db).insert_one_model(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Item {
        product_id: String,
        quantity: u32,
    }

    #[derive(Serialize, Deserialize)]
    struct Body {
        items: Vec<Item>,
    }

    #[test]
    fn key_order_and_spacing_do_not_change_the_fingerprint() {
        let user = ObjectId::new();
        let a: Body =
            serde_json::from_str(r#"{"items":[{"productId":"x","quantity":1}]}"#).expect("json");
        let b: Body =
            serde_json::from_str(r#"{ "items": [ { "quantity": 1, "productId": "x" } ] }"#)
                .expect("json");
        let ka = KeyedRequest::new(user, "k1", &a).expect("valid");
        let kb = KeyedRequest::new(user, "k1", &b).expect("valid");
        assert_eq!(ka.request_hash, kb.request_hash);
        let c = KeyedRequest::new(user, "k1", &json!({"items": []})).expect("valid");
        assert_ne!(ka.request_hash, c.request_hash);
    }

    #[test]
    fn keys_must_be_short_visible_ascii() {
        let user = ObjectId::new();
        let body = json!({});
        assert!(KeyedRequest::new(user, "", &body).is_err());
        assert!(KeyedRequest::new(user, "has space", &body).is_err());
        assert!(KeyedRequest::new(user, &"k".repeat(256), &body).is_err());
        assert!(KeyedRequest::new(user, "order-2024-01-01-abc", &body).is_ok());
    }
}
