use axum::{Json as JsonResponse, extract::State, http::StatusCode, response::IntoResponse};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bson::{DateTime, Document, oid::ObjectId};
use serde::{Deserialize, Serialize};
use validator::Validate;

use super::{
    requests::{NewProduct, ProductPatch},
    store::{self, ProductView},
};
use crate::{
    auth::AuthUser,
    error::{ApiError, ApiResult},
    extract::{IdPath, Json, Query},
    state::AppState,
};

pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    Json(body): Json<NewProduct>,
) -> ApiResult<impl IntoResponse> {
    user.require_admin()?;
    let product = body
        .into_product(&state.config.shop.currency)
        .ok_or_else(|| {
            ApiError::unprocessable("validation_failed", "price must not be negative")
        })?;
    match store::collection(&state.db).insert_one(&product).await {
        Ok(_) => Ok((
            StatusCode::CREATED,
            JsonResponse(ProductView::from(product)),
        )),
        Err(e) if common::mongo::is_duplicate_key(&e) => Err(ApiError::conflict(
            "sku_exists",
            format!("a product with sku {:?} already exists", product.sku),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Changes only the fields given. Orders are untouched: each order line
/// holds its own copy of the name and unit price it was placed at.
pub async fn update(
    State(state): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath,
    Json(patch): Json<ProductPatch>,
) -> ApiResult<JsonResponse<ProductView>> {
    user.require_admin()?;
    if patch.is_empty() {
        return Err(ApiError::unprocessable(
            "validation_failed",
            "the patch changes nothing: give at least one of name, description, price, stock, active",
        ));
    }
    let mut set = Document::new();
    if let Some(name) = patch.name {
        set.insert("name", name);
    }
    if let Some(description) = patch.description {
        set.insert("description", description);
    }
    if let Some(price) = patch.price {
        set.insert("price", price);
    }
    if let Some(stock) = patch.stock {
        set.insert("stock", stock);
    }
    if let Some(active) = patch.active {
        set.insert("active", active);
    }
    set.insert("updated_at", DateTime::now());
    store::update(&state.db, id, set)
        .await?
        .map(|p| JsonResponse(ProductView::from(p)))
        .ok_or_else(|| ApiError::not_found("product"))
}

const DEFAULT_PAGE_SIZE: i64 = 20;

#[derive(Debug, Deserialize, Validate)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    #[validate(range(min = 1, max = 100, message = "must be 1 to 100"))]
    limit: Option<i64>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
    /// Admins only: inactive products too.
    #[serde(default)]
    include_inactive: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductPage {
    items: Vec<ProductView>,
    /// `null` on the last page.
    next_cursor: Option<String>,
}

/// The catalogue in `_id` order, a page at a time. Anyone sees active
/// products; `includeInactive=true` needs an admin's token.
pub async fn list(
    State(state): State<AppState>,
    caller: Result<AuthUser, ApiError>,
    Query(query): Query<ListQuery>,
) -> ApiResult<JsonResponse<ProductPage>> {
    query.validate()?;
    if query.include_inactive {
        caller?.require_admin()?;
    }
    let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE_SIZE);
    // One more than the page holds tells whether another page follows.
    let mut products = store::page(&state.db, after, limit + 1, query.include_inactive).await?;
    let page_size = usize::try_from(limit).unwrap_or(usize::MAX);
    let next_cursor = if products.len() > page_size {
        products.truncate(page_size);
        products.last().map(|p| encode_cursor(p.id))
    } else {
        None
    };
    Ok(JsonResponse(ProductPage {
        items: products.into_iter().map(ProductView::from).collect(),
        next_cursor,
    }))
}

/// Opaque to clients (they must not build cursors), trivial for us: the last
/// id of the page, base64url-encoded.
fn encode_cursor(last: ObjectId) -> String {
    URL_SAFE_NO_PAD.encode(last.to_hex())
}

fn decode_cursor(cursor: &str) -> Result<ObjectId, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|hex| ObjectId::parse_str(hex).ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_cursor",
                "cursor is not one this API issued; start again without it",
            )
        })
}

pub async fn get_one(
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<JsonResponse<ProductView>> {
    store::find(&state.db, id)
        .await?
        .map(|p| JsonResponse(ProductView::from(p)))
        .ok_or_else(|| ApiError::not_found("product"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_anything_else_is_invalid() {
        let id = ObjectId::new();
        assert_eq!(decode_cursor(&encode_cursor(id)).expect("valid"), id);
        for bad in ["", "not base64!", "YWJj", &URL_SAFE_NO_PAD.encode("zz")] {
            let error = decode_cursor(bad).expect_err(bad);
            assert_eq!(error.code(), "invalid_cursor");
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        }
    }
}
