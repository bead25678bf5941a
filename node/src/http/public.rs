//! The public `/v1` API a shop back-end calls: items, purchases, orders.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flashsale_core::{ErrorBody, ItemView, Order, PurchaseRequest, SellError};

use super::AppState;
use super::error::ApiError;
use super::json::Json;

/// Every item of the sale with its stock.
#[utoipa::path(get, path = "/v1/items", tag = "items",
    responses((status = 200, body = [ItemView]), (status = 429, body = ErrorBody)))]
pub async fn list_items(State(s): State<AppState>) -> Result<axum::Json<Vec<ItemView>>, ApiError> {
    s.admission.check_rate()?;
    Ok(axum::Json(s.engine.items()))
}

/// One item's stock.
#[utoipa::path(get, path = "/v1/items/{sku}", tag = "items",
    params(("sku" = String, Path, description = "the item's SKU")),
    responses((status = 200, body = ItemView), (status = 404, body = ErrorBody, description = "unknown_item")))]
pub async fn get_item(
    State(s): State<AppState>,
    sku: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<ItemView>, ApiError> {
    let sku = path_param("sku", sku)?;
    s.admission.check_rate()?;
    s.engine
        .item(&sku)
        .map(axum::Json)
        .ok_or_else(|| SellError::UnknownItem(sku).into())
}

/// Holds stock for a customer until the order is confirmed or its reservation expires.
/// An idempotent replay (same key, same body) answers 201 with the very same order,
/// so a client that lost the first answer cannot tell the difference.
#[utoipa::path(post, path = "/v1/purchases", tag = "orders", request_body = PurchaseRequest,
    responses(
        (status = 201, body = Order, description = "reserved (or the stored order of an idempotent replay)"),
        (status = 400, body = ErrorBody, description = "bad_request, `field` names the field"),
        (status = 404, body = ErrorBody, description = "unknown_item"),
        (status = 409, body = ErrorBody, description = "sold_out or idempotency_conflict"),
        (status = 410, body = ErrorBody, description = "ended"),
        (status = 413, body = ErrorBody, description = "payload_too_large"),
        (status = 422, body = ErrorBody, description = "limit_exceeded or bad_quantity"),
        (status = 425, body = ErrorBody, description = "not_open"),
        (status = 429, body = ErrorBody, description = "rate_limited, with Retry-After"),
        (status = 503, body = ErrorBody, description = "not_primary, fenced or unavailable")))]
pub async fn purchase(
    State(s): State<AppState>,
    body: Result<Json<PurchaseRequest>, ApiError>,
) -> Response {
    let answer = match body {
        Ok(Json(req)) => sell(&s, req).await,
        Err(e) => Err(e),
    };
    s.metrics.purchase(match &answer {
        Ok(_) => "ok",
        Err(e) => e.code().code(),
    });
    match answer {
        Ok(order) => (StatusCode::CREATED, axum::Json(order)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn sell(s: &AppState, req: PurchaseRequest) -> Result<Order, ApiError> {
    s.admission.check_rate()?;
    check_purchase(&req)?;
    // Sold-out fast path (the engine's): the crowd that arrives after the last unit is
    // answered from memory without a place in the engine's queue.
    if let Some(sold_out) = s.engine.sold_out_early(&req) {
        return Err(sold_out.into());
    }
    let _place = s.admission.enter_engine()?;
    Ok(s.engine.purchase(req).await?)
}

/// Bounds what serde cannot (`flashsale_core::rules`), so no request can grow the
/// node's maps without limit.
fn check_purchase(req: &PurchaseRequest) -> Result<(), ApiError> {
    req.check()
        .map_err(|e| ApiError::field(e.field.clone(), e.to_string()))
}

/// Turns a reservation into a sale.
#[utoipa::path(post, path = "/v1/orders/{id}/confirm", tag = "orders",
    params(("id" = u64, Path, description = "the order's id")),
    responses((status = 200, body = Order), (status = 404, body = ErrorBody, description = "unknown_order"),
        (status = 409, body = ErrorBody, description = "order_state: cancelled or expired")))]
pub async fn confirm(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<Order>, ApiError> {
    let id = order_id(id)?;
    s.admission.check_rate()?;
    let _place = s.admission.enter_engine()?;
    Ok(axum::Json(counted(&s, s.engine.confirm(id).await)?))
}

/// Gives a reservation's stock back.
#[utoipa::path(post, path = "/v1/orders/{id}/cancel", tag = "orders",
    params(("id" = u64, Path, description = "the order's id")),
    responses((status = 200, body = Order), (status = 404, body = ErrorBody, description = "unknown_order"),
        (status = 409, body = ErrorBody, description = "order_state: already confirmed or expired")))]
pub async fn cancel(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<Order>, ApiError> {
    let id = order_id(id)?;
    s.admission.check_rate()?;
    let _place = s.admission.enter_engine()?;
    Ok(axum::Json(counted(&s, s.engine.cancel(id).await)?))
}

/// Counts a confirm or cancel answered `fenced` (purchases count by code).
fn counted(s: &AppState, r: Result<Order, SellError>) -> Result<Order, SellError> {
    if let Err(SellError::Fenced(_)) = &r {
        s.metrics.fenced();
    }
    r
}

/// One order.
#[utoipa::path(get, path = "/v1/orders/{id}", tag = "orders",
    params(("id" = u64, Path, description = "the order's id")),
    responses((status = 200, body = Order), (status = 404, body = ErrorBody, description = "unknown_order")))]
pub async fn get_order(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<Order>, ApiError> {
    let id = order_id(id)?;
    s.admission.check_rate()?;
    s.engine
        .order(id)
        .map(axum::Json)
        .ok_or_else(|| SellError::UnknownOrder(id).into())
}

/// Order ids are numbers; anything else is a 400 naming `id` (axum's own `Path<u64>`
/// rejection would be plain text).
fn order_id(raw: Result<Path<String>, PathRejection>) -> Result<u64, ApiError> {
    let raw = path_param("id", raw)?;
    raw.parse().map_err(|_| {
        ApiError::field(
            "id",
            format!("field `id`: `{raw}` is not an order id (a number)"),
        )
    })
}

/// A path segment as text, or a JSON 400 (e.g. for percent-encoded bytes that are not UTF-8).
fn path_param(name: &str, raw: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    raw.map(|Path(p)| p)
        .map_err(|e| ApiError::field(name, format!("field `{name}`: {e}")))
}
