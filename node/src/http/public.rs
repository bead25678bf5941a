//! The public `/v1` API a shop back-end calls: items, purchases, orders.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use flashsale_core::{ErrorBody, ItemView, Order, PurchaseRequest, SellError};

use crate::engine::OrderAnswer;

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

/// The header that names the customer acting on an order (see [`customer_of`]).
pub const CUSTOMER_HEADER: &str = "flashsale-customer";
/// Set to `true` on an answer that repeats what an earlier request already did.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Holds stock for a customer until the order is confirmed or its reservation expires.
/// An idempotent replay (same key, same body) answers what the first request answered:
/// 201 with the order *as it was created* (state `reserved`, even if it was confirmed,
/// cancelled or expired since — `GET /v1/orders/{id}` tells the state now), marked
/// `Idempotent-Replayed: true`.
#[utoipa::path(post, path = "/v1/purchases", tag = "orders", request_body = PurchaseRequest,
    responses(
        (status = 201, body = Order, description = "reserved; an idempotent replay answers the first answer again, with `Idempotent-Replayed: true`"),
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
        Ok(a) => answered(StatusCode::CREATED, a),
        Err(e) => e.into_response(),
    }
}

/// An order answer, marked when it is a replay.
fn answered(status: StatusCode, a: OrderAnswer) -> Response {
    let mut res = (status, axum::Json(a.order)).into_response();
    if a.replayed {
        res.headers_mut().insert(
            HeaderName::from_static(REPLAYED_HEADER),
            HeaderValue::from_static("true"),
        );
    }
    res
}

async fn sell(s: &AppState, req: PurchaseRequest) -> Result<OrderAnswer, ApiError> {
    s.admission.check_rate()?;
    check_purchase(&req)?;
    // Sold-out fast path (the engine's): the crowd that arrives after the last unit is
    // answered from memory without a place in the engine's queue.
    if let Some(sold_out) = s.engine.sold_out_early(&req) {
        return Err(sold_out.into());
    }
    let _place = s.admission.enter_engine()?;
    Ok(s.engine.purchase_answer(req).await?)
}

/// Bounds what serde cannot (`flashsale_core::rules`), so no request can grow the
/// node's maps without limit.
fn check_purchase(req: &PurchaseRequest) -> Result<(), ApiError> {
    req.check()
        .map_err(|e| ApiError::field(e.field.clone(), e.to_string()))
}

/// Turns a reservation into a sale. Confirming a confirmed order answers 200 again
/// (`Idempotent-Replayed: true`): a retried confirm is a success, not a conflict.
#[utoipa::path(post, path = "/v1/orders/{id}/confirm", tag = "orders",
    params(("id" = u64, Path, description = "the order's id"),
        ("Flashsale-Customer" = String, Header, description = "the order's customer (1 to 128 characters, not blank); the node's admin token may act without it", min_length = 1, max_length = 128, pattern = "[!-~]")),
    responses((status = 200, body = Order, description = "confirmed (or already confirmed: `Idempotent-Replayed: true`)"),
        (status = 400, body = ErrorBody, description = "bad_request: the id is not a number or the customer header is missing"),
        (status = 404, body = ErrorBody, description = "unknown_order: no such order for this customer"),
        (status = 409, body = ErrorBody, description = "order_state: cancelled or expired"),
        (status = 429, body = ErrorBody, description = "rate_limited, with Retry-After"),
        (status = 503, body = ErrorBody, description = "not_primary, fenced or unavailable")))]
pub async fn confirm(
    State(s): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = owned_order(&s, &headers, id)?;
    s.admission.check_rate()?;
    let _place = s.admission.enter_engine()?;
    Ok(answered(
        StatusCode::OK,
        counted(&s, s.engine.confirm(id).await)?,
    ))
}

/// Gives a reservation's stock back. Cancelling a cancelled order answers 200 again
/// (`Idempotent-Replayed: true`).
#[utoipa::path(post, path = "/v1/orders/{id}/cancel", tag = "orders",
    params(("id" = u64, Path, description = "the order's id"),
        ("Flashsale-Customer" = String, Header, description = "the order's customer (1 to 128 characters, not blank); the node's admin token may act without it", min_length = 1, max_length = 128, pattern = "[!-~]")),
    responses((status = 200, body = Order, description = "cancelled (or already cancelled: `Idempotent-Replayed: true`)"),
        (status = 400, body = ErrorBody, description = "bad_request: the id is not a number or the customer header is missing"),
        (status = 404, body = ErrorBody, description = "unknown_order: no such order for this customer"),
        (status = 409, body = ErrorBody, description = "order_state: already confirmed or expired"),
        (status = 429, body = ErrorBody, description = "rate_limited, with Retry-After"),
        (status = 503, body = ErrorBody, description = "not_primary, fenced or unavailable")))]
pub async fn cancel(
    State(s): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = owned_order(&s, &headers, id)?;
    s.admission.check_rate()?;
    let _place = s.admission.enter_engine()?;
    Ok(answered(
        StatusCode::OK,
        counted(&s, s.engine.cancel(id).await)?,
    ))
}

/// Counts a confirm or cancel answered `fenced` (purchases count by code).
fn counted(s: &AppState, r: Result<OrderAnswer, SellError>) -> Result<OrderAnswer, SellError> {
    if let Err(SellError::Fenced(_)) = &r {
        s.metrics.fenced();
    }
    r
}

/// One order, to its customer.
#[utoipa::path(get, path = "/v1/orders/{id}", tag = "orders",
    params(("id" = u64, Path, description = "the order's id"),
        ("Flashsale-Customer" = String, Header, description = "the order's customer (1 to 128 characters, not blank); the node's admin token may act without it", min_length = 1, max_length = 128, pattern = "[!-~]")),
    responses((status = 200, body = Order),
        (status = 400, body = ErrorBody, description = "bad_request: the id is not a number or the customer header is missing"),
        (status = 404, body = ErrorBody, description = "unknown_order: no such order for this customer"),
        (status = 429, body = ErrorBody, description = "rate_limited, with Retry-After")))]
pub async fn get_order(
    State(s): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<Order>, ApiError> {
    let id = owned_order(&s, &headers, id)?;
    s.admission.check_rate()?;
    s.engine
        .order(id)
        .map(axum::Json)
        .ok_or_else(|| SellError::UnknownOrder(id).into())
}

/// The order `id` names, if the caller names its customer in `Flashsale-Customer` (or
/// carries the node's admin token): an order belongs to the customer it was bought
/// for, and a caller that knows only its id can neither read, confirm nor cancel it.
/// Another customer's order answers exactly like an order that does not exist (404
/// `unknown_order`), so ids reveal nothing.
fn owned_order(
    s: &AppState,
    headers: &HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<u64, ApiError> {
    let id = order_id(id)?;
    if super::admin::is_admin(s, headers) {
        // The operator (or whoever holds the node's admin token) may act on any order.
        return Ok(id);
    }
    let customer = customer_of(headers)?;
    match s.engine.order(id) {
        Some(o) if o.customer == customer => Ok(id),
        _ => Err(SellError::UnknownOrder(id).into()),
    }
}

/// The `Flashsale-Customer` header (UTF-8, as the customer id was bought with), or a 400
/// naming it.
fn customer_of(headers: &HeaderMap) -> Result<&str, ApiError> {
    let missing = || {
        ApiError::field(
            "Flashsale-Customer",
            "field `Flashsale-Customer`: the header naming the order's customer is required (the purchase's `customer`, not blank)",
        )
    };
    headers
        .get(CUSTOMER_HEADER)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(missing)
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
