use std::collections::HashSet;

use ::metrics::counter;
use axum::{
    Json as JsonResponse,
    extract::State,
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bson::oid::ObjectId;
use common::domain::{OrderStatus, Quantity};
use common::orders::{self as store, ListFilter};
use serde::{Deserialize, Serialize};
use serde_json::json;
use validator::Validate;

use super::{
    cancel::{self, CancelError, CancelRefused},
    idempotency::{self, KeyedRequest, Prior},
    place::{Customer, LineRequest, OrderRequest, PlaceError, PlaceOrderError},
    view::{OrderView, TimelineView},
};
use crate::{
    auth::{AuthUser, users},
    http::error::{ApiError, ApiResult},
    http::extract::{IdPath, Json, Query, object_id_hex},
    http::pagination::{self, Page},
    http::state::AppState,
    metrics,
};

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

#[derive(Debug, Deserialize, Serialize, Validate, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    #[validate(length(min = 1, max = 50, message = "an order has 1 to 50 lines"))]
    #[schema(min_items = 1, max_items = 50)]
    items: Vec<ItemRequest>,
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ItemRequest {
    #[serde(deserialize_with = "object_id_hex::deserialize")]
    #[schema(value_type = String, pattern = "^[0-9a-f]{24}$")]
    product_id: ObjectId,
    #[schema(value_type = u32, minimum = 1, maximum = 1000)]
    quantity: Quantity,
}

#[utoipa::path(post, path = "/api/orders", tag = "orders",
    security(("bearer" = [])),
    request_body = CreateOrder,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
        description = "1 to 255 visible ASCII characters. Retrying with the same key and body replays the first response (header `Idempotent-Replayed: true`)")),
    responses(
        (status = 201, description = "Placed: stock reserved, order and outbox row written in one transaction", body = OrderView),
        (status = 400, description = "Malformed JSON or Idempotency-Key", body = crate::http::error::ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = crate::http::error::ErrorResponse),
        (status = 409, description = "`insufficient_stock`: nothing was written", body = crate::http::error::ErrorResponse),
        (status = 422, description = "Invalid lines, unknown/inactive/duplicate products, or a reused Idempotency-Key", body = crate::http::error::ErrorResponse),
        (status = 503, description = "Database unavailable or too busy: the order was NOT placed; retry", body = crate::http::error::ErrorResponse),
        (status = 504, description = "`outcome_unknown`: the commit was sent and the database never confirmed it; retry with the same Idempotency-Key, or check GET /api/orders first", body = crate::http::error::ErrorResponse),
    ))]
pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Json(body): Json<CreateOrder>,
) -> ApiResult<Response> {
    let lines = distinct_lines(&body)?;
    let keyed = idempotency_key(&headers, user.id, &body)?;
    if let Some(keyed) = &keyed
        && let Prior::Replay { status, body } = idempotency::lookup(&state.db, keyed).await?
    {
        return Ok(replay(status, body));
    }

    // The token carries the email and name; only an older token needs the
    // account read.
    let (email, name) = match (user.email, user.name) {
        (Some(email), Some(name)) => (email, name),
        _ => {
            let account = users::find_by_id(&state.db, user.id)
                .await?
                .ok_or_else(|| ApiError::unauthorized("account no longer exists"))?;
            (account.email, account.username)
        }
    };
    let request = OrderRequest {
        customer: Customer {
            id: user.id,
            email,
            name,
        },
        lines,
        idempotency: keyed.clone(),
        traceparent: None,
    };
    let order = match state.orders.place(request).await {
        Ok(order) => order,
        // Another request with the same key committed first: answer as it did.
        Err(PlaceError::Database(e)) if keyed.is_some() && common::mongo::is_duplicate_key(&e) => {
            let keyed = keyed.as_ref().ok_or_else(|| ApiError::internal(e.into()))?;
            return match idempotency::lookup(&state.db, keyed).await? {
                Prior::Replay { status, body } => Ok(replay(status, body)),
                Prior::None => Err(ApiError::conflict(
                    "idempotency_conflict",
                    "a request with this Idempotency-Key is in progress; retry",
                )),
            };
        }
        Err(e) => return Err(place_refusal(e)),
    };
    tracing::Span::current().record("order_id", order.id.to_hex());
    tracing::info!(order_id = %order.id, total = order.total.minor(), "order placed");
    counter!(metrics::ORDERS_CREATED).increment(1);
    Ok((StatusCode::CREATED, JsonResponse(OrderView::from(order))).into_response())
}

/// The lines of a request, refusing any product named twice.
fn distinct_lines(body: &CreateOrder) -> ApiResult<Vec<LineRequest>> {
    let mut seen = HashSet::new();
    let mut duplicates: Vec<String> = body
        .items
        .iter()
        .filter(|item| !seen.insert(item.product_id))
        .map(|item| item.product_id.to_hex())
        .collect();
    if !duplicates.is_empty() {
        duplicates.dedup();
        return Err(ApiError::unprocessable(
            "duplicate_products",
            "each product may appear only once in an order",
        )
        .with_details(json!({ "productIds": duplicates })));
    }
    Ok(body
        .items
        .iter()
        .map(|item| LineRequest {
            product_id: item.product_id,
            quantity: item.quantity,
        })
        .collect())
}

fn idempotency_key(
    headers: &HeaderMap,
    user_id: ObjectId,
    body: &CreateOrder,
) -> ApiResult<Option<KeyedRequest>> {
    let Some(raw) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = raw.to_str().map_err(|_| {
        ApiError::bad_request("invalid_idempotency_key", "Idempotency-Key must be ASCII")
    })?;
    KeyedRequest::new(user_id, key, body).map(Some)
}

fn replay(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (IDEMPOTENT_REPLAYED, HeaderValue::from_static("true")),
        ],
        body,
    )
        .into_response()
}

/// Every way an order is not placed, in one match: the answer, and the
/// `orders_refused_total` reason, which for a refusal is its error code.
fn place_refusal(error: PlaceError) -> ApiError {
    let (reason, answer) = match error {
        PlaceError::Refused(PlaceOrderError::InsufficientStock {
            product_id,
            name,
            requested,
            available,
        }) => {
            let code = "insufficient_stock";
            let answer = ApiError::conflict(
                code,
                format!(
                    "not enough stock of {name:?}: requested {requested}, available {available}"
                ),
            )
            .with_details(json!({
                "productId": product_id.to_hex(),
                "name": name,
                "requested": requested,
                "available": available,
            }));
            (code, answer)
        }
        PlaceError::Refused(PlaceOrderError::UnknownProduct { product_id }) => {
            let code = "unknown_product";
            let answer =
                ApiError::unprocessable(code, format!("product {product_id} does not exist"))
                    .with_details(json!({ "productId": product_id.to_hex() }));
            (code, answer)
        }
        PlaceError::Refused(PlaceOrderError::InactiveProduct { product_id, name }) => {
            let code = "product_inactive";
            let answer = ApiError::unprocessable(code, format!("{name:?} is not for sale"))
                .with_details(json!({ "productId": product_id.to_hex() }));
            (code, answer)
        }
        PlaceError::Refused(PlaceOrderError::TotalOverflow) => {
            let code = "total_too_large";
            (
                code,
                ApiError::unprocessable(code, "the order total is too large"),
            )
        }
        PlaceError::TimedOut(_) => (
            "timed_out",
            ApiError::unavailable("the shop is busy; the order was not placed, retry shortly"),
        ),
        PlaceError::Database(e) => ("database", e.into()),
    };
    counter!(metrics::ORDERS_REFUSED, "reason" => reason).increment(1);
    answer
}

/// Customers see their own orders; admins see everyone's.
fn visibility(user: &AuthUser) -> Option<ObjectId> {
    (!user.is_admin()).then_some(user.id)
}

#[utoipa::path(get, path = "/api/orders/{id}", tag = "orders",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order with its status and email state", body = OrderView),
        (status = 401, description = "Missing or invalid token", body = crate::http::error::ErrorResponse),
        (status = 404, description = "No such order, or not yours", body = crate::http::error::ErrorResponse),
    ))]
pub async fn get_one(
    State(state): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath,
) -> ApiResult<JsonResponse<OrderView>> {
    store::find_visible(&state.db, id, visibility(&user))
        .await?
        .map(|order| JsonResponse(OrderView::from(order)))
        .ok_or_else(|| ApiError::not_found("order"))
}

#[utoipa::path(get, path = "/api/orders/{id}/events", tag = "orders",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order's timeline, oldest first", body = TimelineView),
        (status = 401, description = "Missing or invalid token", body = crate::http::error::ErrorResponse),
        (status = 404, description = "No such order, or not yours", body = crate::http::error::ErrorResponse),
    ))]
pub async fn events(
    State(state): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath,
) -> ApiResult<JsonResponse<TimelineView>> {
    store::find_visible(&state.db, id, visibility(&user))
        .await?
        .map(|order| JsonResponse(TimelineView::from(order)))
        .ok_or_else(|| ApiError::not_found("order"))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// `nextCursor` of the previous page.
    #[param(pattern = "^[A-Za-z0-9_-]{16}$")]
    cursor: Option<String>,
    status: Option<OrderStatus>,
    /// Admins only: one customer's orders.
    #[param(pattern = "^[0-9a-fA-F]{24}$")]
    user_id: Option<String>,
}

#[utoipa::path(get, path = "/api/orders", tag = "orders",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "Newest first; customers see their own, admins everyone's", body = Page<OrderView>),
        (status = 400, description = "Invalid query or cursor", body = crate::http::error::ErrorResponse),
        (status = 401, description = "Missing or invalid token", body = crate::http::error::ErrorResponse),
        (status = 403, description = "`userId` given by a customer", body = crate::http::error::ErrorResponse),
        (status = 422, description = "`limit` out of range", body = crate::http::error::ErrorResponse),
    ))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(query): Query<ListQuery>,
) -> ApiResult<JsonResponse<Page<OrderView>>> {
    let limit = pagination::limit(query.limit)?;
    let before = query
        .cursor
        .as_deref()
        .map(pagination::decode_cursor)
        .transpose()?;
    let owner = match (user.is_admin(), query.user_id.as_deref()) {
        (false, None) => Some(user.id),
        (false, Some(_)) => return Err(ApiError::forbidden()),
        (true, None) => None,
        (true, Some(raw)) => Some(ObjectId::parse_str(raw).map_err(|_| {
            ApiError::unprocessable("validation_failed", "userId is not a valid id")
        })?),
    };
    let filter = ListFilter {
        owner,
        status: query.status,
        before,
        limit,
    };
    let orders = store::list(&state.db, &filter).await?;
    Ok(JsonResponse(pagination::page(
        orders,
        limit,
        |o| o.id,
        OrderView::from,
    )))
}

#[utoipa::path(post, path = "/api/orders/{id}/cancel", tag = "orders",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Order id")),
    responses(
        (status = 200, description = "Cancelled: stock restored and `order.cancelled` enqueued in one transaction", body = OrderView),
        (status = 401, description = "Missing or invalid token", body = crate::http::error::ErrorResponse),
        (status = 404, description = "No such order, or not yours", body = crate::http::error::ErrorResponse),
        (status = 409, description = "`already_cancelled`", body = crate::http::error::ErrorResponse),
        (status = 503, description = "Database unavailable or too busy: the order was NOT cancelled; retry", body = crate::http::error::ErrorResponse),
        (status = 504, description = "`outcome_unknown`: the commit was sent and the database never confirmed it; read the order before retrying", body = crate::http::error::ErrorResponse),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath,
) -> ApiResult<JsonResponse<OrderView>> {
    let order = cancel::cancel_order(
        &state.db,
        &state.relay,
        id,
        visibility(&user),
        state.config.shop.order_deadline,
    )
    .await
    .map_err(|e| match e {
        CancelError::Refused(CancelRefused::NotFound) => ApiError::not_found("order"),
        CancelError::Refused(CancelRefused::AlreadyCancelled) => {
            ApiError::conflict("already_cancelled", "the order is already cancelled")
        }
        CancelError::TimedOut(_) => {
            ApiError::unavailable("the shop is busy; the order was not cancelled, retry shortly")
        }
        CancelError::Database(e) => e.into(),
    })?;
    tracing::info!(order_id = %order.id, "order cancelled; stock restored");
    counter!(metrics::ORDERS_CANCELLED).increment(1);
    Ok(JsonResponse(OrderView::from(order)))
}
