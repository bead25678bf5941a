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
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 258, pattern = "^[!-~]([ -~]*[!-~])?$", description = "the purchase's idempotency key (IETF draft-ietf-httpapi-idempotency-key-header: a structured-field string, `\"key\"`; a bare token is accepted too). Required unless the body has `idempotencyKey`; when both are sent they must be the same")),
    responses(
        (status = 201, body = Order, description = "reserved; an idempotent replay answers the first answer again, with `Idempotent-Replayed: true`"),
        (status = 400, body = ErrorBody, description = "bad_request, `field` names the field"),
        (status = 404, body = ErrorBody, description = "unknown_item"),
        (status = 409, body = ErrorBody, description = "sold_out, idempotency_conflict, or not_open (with `Retry-After`: seconds until the sale opens)"),
        (status = 410, body = ErrorBody, description = "ended"),
        (status = 413, body = ErrorBody, description = "payload_too_large"),
        (status = 422, body = ErrorBody, description = "limit_exceeded or bad_quantity"),
        (status = 429, body = ErrorBody, description = "rate_limited, with Retry-After"),
        (status = 503, body = ErrorBody, description = "not_primary, fenced or unavailable")))]
pub async fn purchase(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<PurchaseRequest>, ApiError>,
) -> Response {
    let answer = match body.and_then(|Json(req)| with_header_key(&headers, req)) {
        Ok(req) => sell(&s, req).await,
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

/// The header that may carry a purchase's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// The purchase with its idempotency key from the `Idempotency-Key` header or the body's
/// `idempotencyKey` (one is required; both must agree).
fn with_header_key(
    headers: &HeaderMap,
    mut req: PurchaseRequest,
) -> Result<PurchaseRequest, ApiError> {
    const H: &str = "Idempotency-Key";
    let mut values = headers.get_all(IDEMPOTENCY_HEADER).iter();
    let Some(value) = values.next() else {
        if req.idempotency_key.is_empty() {
            return Err(ApiError::field(
                "idempotencyKey",
                "an idempotency key is required: send the Idempotency-Key header or the body's idempotencyKey",
            ));
        }
        return Ok(req);
    };
    if values.next().is_some() {
        return Err(ApiError::field(H, "Idempotency-Key is sent more than once"));
    }
    let key = value
        .to_str()
        .ok()
        .and_then(header_key)
        .ok_or_else(|| {
            ApiError::field(
                H,
                "Idempotency-Key must be a structured-field string (\"key\", printable ASCII) or a bare token",
            )
        })?;
    if req.idempotency_key.is_empty() {
        req.idempotency_key = key;
    } else if req.idempotency_key != key {
        return Err(ApiError::field(
            H,
            format!(
                "Idempotency-Key `{key}` and the body's idempotencyKey `{}` differ: they must be the same",
                req.idempotency_key
            ),
        ));
    }
    Ok(req)
}

/// The key in an `Idempotency-Key` value: an RFC 8941 string (`"..."`, with `\"` and
/// `\\` escapes) as the IETF draft has it, or the bare value many clients send.
fn header_key(raw: &str) -> Option<String> {
    let Some(inner) = raw.strip_prefix('"') else {
        return (!raw.is_empty()
            && !raw.contains('"')
            && raw.bytes().all(|b| (0x21..0x7f).contains(&b)))
        .then(|| raw.to_string());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                e @ ('"' | '\\') => out.push(e),
                _ => return None,
            },
            '"' => return None,
            c if (' '..='~').contains(&c) => out.push(c),
            _ => return None,
        }
    }
    Some(out)
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

#[cfg(test)]
mod tests {
    use super::header_key;

    #[test]
    fn idempotency_key_header_values() {
        assert_eq!(header_key(r#""k-1""#).as_deref(), Some("k-1"));
        assert_eq!(header_key("k-1").as_deref(), Some("k-1"));
        assert_eq!(header_key(r#""a \"b\" \\""#).as_deref(), Some(r#"a "b" \"#));
        assert_eq!(header_key(r#""open"#), None);
        assert_eq!(header_key(r#""bad \x""#), None);
        assert_eq!(header_key("two words"), None);
        assert_eq!(header_key(""), None);
        assert_eq!(header_key(r#"a"b"#), None);
    }
}
