use axum::{Json as JsonResponse, extract::State, http::StatusCode, response::IntoResponse};
use bson::{DateTime, Document};
use serde::Deserialize;

use super::{
    requests::{NewProduct, ProductPatch},
    store::{self, ProductView},
};
use crate::{
    auth::AuthUser,
    http::error::{ApiError, ApiResult},
    http::extract::{IdPath, Json, Query},
    http::pagination::{self, Page},
    http::state::AppState,
};

#[utoipa::path(post, path = "/api/products", tag = "products",
    security(("bearer" = [])),
    request_body = NewProduct,
    responses(
        (status = 201, description = "Created", body = ProductView),
        (status = 401, description = "Missing or invalid token", body = crate::http::error::ErrorResponse),
        (status = 403, description = "Not an admin", body = crate::http::error::ErrorResponse),
        (status = 409, description = "`sku_exists`", body = crate::http::error::ErrorResponse),
        (status = 422, description = "Invalid fields", body = crate::http::error::ErrorResponse),
    ))]
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
    match store::insert(&state.db, &product).await {
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
#[utoipa::path(patch, path = "/api/products/{id}", tag = "products",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Product id")),
    request_body = ProductPatch,
    responses(
        (status = 200, description = "Updated; placed orders keep the price they were placed at", body = ProductView),
        (status = 401, description = "Missing or invalid token", body = crate::http::error::ErrorResponse),
        (status = 403, description = "Not an admin", body = crate::http::error::ErrorResponse),
        (status = 404, description = "No such product", body = crate::http::error::ErrorResponse),
        (status = 422, description = "Empty patch, unknown or invalid fields", body = crate::http::error::ErrorResponse),
    ))]
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// `nextCursor` of the previous page.
    #[param(pattern = "^[A-Za-z0-9_-]{16}$")]
    cursor: Option<String>,
    /// Admins only: inactive products too.
    #[serde(default)]
    include_inactive: bool,
}

/// The catalogue in `_id` order, a page at a time. Anyone sees active
/// products; `includeInactive=true` needs an admin's token.
#[utoipa::path(get, path = "/api/products", tag = "products",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of the catalogue in id order", body = Page<ProductView>),
        (status = 400, description = "Invalid query or cursor", body = crate::http::error::ErrorResponse),
        (status = 401, description = "`includeInactive` without a token", body = crate::http::error::ErrorResponse),
        (status = 403, description = "`includeInactive` by a customer", body = crate::http::error::ErrorResponse),
        (status = 422, description = "`limit` out of range", body = crate::http::error::ErrorResponse),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: Result<AuthUser, ApiError>,
    Query(query): Query<ListQuery>,
) -> ApiResult<JsonResponse<Page<ProductView>>> {
    let limit = pagination::limit(query.limit)?;
    if query.include_inactive {
        caller?.require_admin()?;
    }
    let after = query
        .cursor
        .as_deref()
        .map(pagination::decode_cursor)
        .transpose()?;
    let products = store::page(&state.db, after, limit + 1, query.include_inactive).await?;
    Ok(JsonResponse(pagination::page(
        products,
        limit,
        |p| p.id,
        ProductView::from,
    )))
}

#[utoipa::path(get, path = "/api/products/{id}", tag = "products",
    params(("id" = String, Path, description = "Product id")),
    responses(
        (status = 200, description = "The product", body = ProductView),
        (status = 404, description = "No such product", body = crate::http::error::ErrorResponse),
    ))]
pub async fn get_one(
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> ApiResult<JsonResponse<ProductView>> {
    store::find(&state.db, id)
        .await?
        .map(|p| JsonResponse(ProductView::from(p)))
        .ok_or_else(|| ApiError::not_found("product"))
}
