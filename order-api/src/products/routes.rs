use axum::{Json as JsonResponse, extract::State, http::StatusCode, response::IntoResponse};
use bson::{DateTime, doc, oid::ObjectId};
use common::domain::{Money, Product};
use futures::TryStreamExt;
use serde::Deserialize;
use validator::Validate;

use super::store::{self, ProductView};
use crate::{
    auth::AuthUser,
    error::{ApiError, ApiResult},
    extract::{IdPath, Json, Query},
    state::AppState,
};

fn valid_sku(sku: &str) -> Result<(), validator::ValidationError> {
    if sku
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Ok(())
    } else {
        Err(validator::ValidationError::new("sku")
            .with_message("only letters, digits, '-', '_' and '.'".into()))
    }
}

#[derive(Debug, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    #[validate(length(min = 1, max = 200, message = "must be 1 to 200 characters"))]
    name: String,
    #[validate(
        length(min = 1, max = 64, message = "must be 1 to 64 characters"),
        custom(function = "valid_sku")
    )]
    sku: String,
    /// Minor units (paise): an integer, never a float.
    #[validate(range(
        min = 0,
        max = 1_000_000_000_000i64,
        message = "must be 0 to 10^12 minor units"
    ))]
    price: i64,
    #[validate(range(min = 0, max = 1_000_000_000i64, message = "must be 0 to 10^9"))]
    stock: i64,
    #[validate(length(max = 2000, message = "at most 2000 characters"))]
    description: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    Json(body): Json<CreateProduct>,
) -> ApiResult<impl IntoResponse> {
    user.require_admin()?;
    let price = Money::from_minor(body.price).ok_or_else(|| {
        ApiError::unprocessable("validation_failed", "price must not be negative")
    })?;
    let now = DateTime::now();
    let product = Product {
        id: ObjectId::new(),
        sku: body.sku,
        name: body.name,
        description: body.description,
        price,
        currency: state.config.shop.currency.clone(),
        stock: body.stock,
        active: true,
        created_at: now,
        updated_at: now,
    };
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

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
}

pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> ApiResult<JsonResponse<Vec<ProductView>>> {
    let limit = query.limit.unwrap_or(50).clamp(1, 100);
    let products: Vec<Product> = store::collection(&state.db)
        .find(doc! { "active": true })
        .sort(doc! { "_id": 1 })
        .limit(limit)
        .await?
        .try_collect()
        .await?;
    Ok(JsonResponse(
        products.into_iter().map(ProductView::from).collect(),
    ))
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
