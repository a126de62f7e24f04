//! Cursor pagination shared by the list endpoints: a page of items and an
//! opaque cursor naming the last one. Cursors are `_id`s (ObjectIds grow with
//! time), so pages stay stable while new documents arrive.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bson::oid::ObjectId;
use serde::Serialize;
use serde_json::json;

use super::error::ApiError;

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `limit` from the query, 1..=100, default 20.
pub fn limit(requested: Option<i64>) -> Result<i64, ApiError> {
    match requested {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        // The same shape as any other field that fails validation.
        Some(_) => Err(
            ApiError::unprocessable("validation_failed", "some fields are invalid")
                .with_details(json!({ "limit": [format!("must be 1 to {MAX_LIMIT}")] })),
        ),
    }
}

pub fn encode_cursor(last: &ObjectId) -> String {
    URL_SAFE_NO_PAD.encode(last.bytes())
}

pub fn decode_cursor(cursor: &str) -> Result<ObjectId, ApiError> {
    let invalid = || ApiError::bad_request("invalid_cursor", "cursor is not one this API issued");
    let bytes: [u8; 12] = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| invalid())?
        .try_into()
        .map_err(|_| invalid())?;
    Ok(ObjectId::from_bytes(bytes))
}

/// Builds a page from up to `limit + 1` fetched documents: the extra one
/// only says whether another page exists.
pub fn page<D, T>(
    mut docs: Vec<D>,
    limit: i64,
    id_of: impl Fn(&D) -> ObjectId,
    view: impl Fn(D) -> T,
) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = docs.len() > limit;
    docs.truncate(limit);
    let next_cursor = if more {
        docs.last().map(|d| encode_cursor(&id_of(d)))
    } else {
        None
    };
    Page {
        items: docs.into_iter().map(view).collect(),
        next_cursor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let id = ObjectId::new();
        assert_eq!(decode_cursor(&encode_cursor(&id)).ok(), Some(id));
        for bad in ["", "!!", "not base64!", "AAAA", "YWJj"] {
            let error = decode_cursor(bad).expect_err(bad);
            assert_eq!(error.code(), "invalid_cursor");
            assert_eq!(error.status(), axum::http::StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn limit_bounds() {
        assert_eq!(limit(None).ok(), Some(20));
        assert_eq!(limit(Some(100)).ok(), Some(100));
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(101)).is_err());
    }

    #[test]
    fn a_page_says_whether_more_follow() {
        let ids: Vec<ObjectId> = (0..3).map(|_| ObjectId::new()).collect();
        let full = page(ids.clone(), 2, |id| *id, |id| id);
        assert_eq!(full.items.len(), 2);
        assert_eq!(full.next_cursor, Some(encode_cursor(&ids[1])));
        let last = page(ids, 3, |id| *id, |id| id);
        assert_eq!(last.next_cursor, None);
    }
}
