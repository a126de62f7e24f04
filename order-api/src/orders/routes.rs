use std::{collections::HashSet, time::Duration};

use axum::{Json as JsonResponse, extract::State, http::StatusCode, response::IntoResponse};
use bson::{doc, oid::ObjectId};
use common::domain::Quantity;
use serde::{Deserialize, Serialize};
use serde_json::json;
use validator::Validate;

use super::{
    place::{self, Customer, LineRequest, OrderSettings, PlaceError, PlaceOrderError},
    store,
    view::OrderView,
};
use crate::{
    auth::{AuthUser, users},
    error::{ApiError, ApiResult},
    extract::{IdPath, Json, object_id_hex},
    state::AppState,
};

/// How long placing one order may take, retries included.
const PLACE_ORDER_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    #[validate(length(min = 1, max = 50, message = "an order has 1 to 50 lines"))]
    items: Vec<ItemRequest>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ItemRequest {
    #[serde(deserialize_with = "object_id_hex::deserialize")]
    product_id: ObjectId,
    quantity: Quantity,
}

pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    Json(body): Json<CreateOrder>,
) -> ApiResult<impl IntoResponse> {
    let mut seen = HashSet::new();
    let duplicates: Vec<String> = body
        .items
        .iter()
        .filter(|item| !seen.insert(item.product_id))
        .map(|item| item.product_id.to_hex())
        .collect();
    if !duplicates.is_empty() {
        return Err(ApiError::unprocessable(
            "duplicate_products",
            "each product may appear only once in an order",
        )
        .with_details(json!({ "productIds": duplicates })));
    }
    let lines: Vec<LineRequest> = body
        .items
        .iter()
        .map(|item| LineRequest {
            product_id: item.product_id,
            quantity: item.quantity,
        })
        .collect();

    let account = users::find_by_id(&state.db, user.id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("account no longer exists"))?;
    let customer = Customer {
        id: account.id,
        email: account.email,
    };
    let settings = OrderSettings {
        currency: &state.config.shop.currency,
        tax_rate: state.config.shop.tax_rate,
        deadline: PLACE_ORDER_DEADLINE,
    };
    let order = place::place_order(&state.db, &customer, &lines, &settings)
        .await
        .map_err(refusal)?;
    tracing::info!(order_id = %order.id, total = order.total.minor(), "order placed");
    // The row is committed: wake the relay so it reaches the queue now.
    state.outbox_wake.notify_one();
    Ok((StatusCode::CREATED, JsonResponse(OrderView::from(order))))
}

fn refusal(error: PlaceError) -> ApiError {
    match error {
        PlaceError::Refused(PlaceOrderError::InsufficientStock {
            product_id,
            name,
            requested,
            available,
        }) => ApiError::conflict(
            "insufficient_stock",
            format!("not enough stock of {name:?}: requested {requested}, available {available}"),
        )
        .with_details(json!({
            "productId": product_id.to_hex(),
            "name": name,
            "requested": requested,
            "available": available,
        })),
        PlaceError::Refused(PlaceOrderError::UnknownProduct { product_id }) => {
            ApiError::unprocessable(
                "unknown_product",
                format!("product {product_id} does not exist or is not for sale"),
            )
            .with_details(json!({ "productId": product_id.to_hex() }))
        }
        PlaceError::Refused(PlaceOrderError::TotalOverflow) => {
            ApiError::unprocessable("total_too_large", "the order total is too large")
        }
        PlaceError::TimedOut(_) => {
            ApiError::unavailable("the shop is busy; the order was not placed, retry shortly")
        }
        PlaceError::Database(e) => e.into(),
    }
}

pub async fn get_one(
    State(state): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath,
) -> ApiResult<JsonResponse<OrderView>> {
    let mut filter = doc! { "_id": id };
    if !user.is_admin() {
        // Someone else's order is indistinguishable from a missing one.
        filter.insert("user_id", user.id);
    }
    store::collection(&state.db)
        .find_one(filter)
        .await?
        .map(|order| JsonResponse(OrderView::from(order)))
        .ok_or_else(|| ApiError::not_found("order"))
}
