//! The public `/v1` API a shop back-end calls: items, purchases, orders.

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use flashsale_core::{ErrorBody, ItemView, Order, PurchaseRequest, SellError};

use crate::engine::{Front, Lookup, OrderAnswer};
use crate::forward::{
    BATCH_ACCEPT_MAX, ForwardAnswer, ForwardAnswers, ForwardBatch, ForwardOp, ORDER_ID_MAX,
};

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
    responses((status = 200, body = ItemView),
        (status = 400, body = ErrorBody, description = "bad_request: the sku in the path is not text"),
        (status = 404, body = ErrorBody, description = "unknown_item")))]
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
pub const CUSTOMER_HEADER: HeaderName = HeaderName::from_static("flashsale-customer");
/// Set to `true` on an answer that repeats what an earlier request already did.
pub const REPLAYED_HEADER: HeaderName = HeaderName::from_static("idempotent-replayed");

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
    header: KeyHeader,
    body: Result<Json<PurchaseRequest>, ApiError>,
) -> Response {
    let answer = match body.and_then(|Json(req)| with_header_key(header, req)) {
        Ok(req) => sell(&s, req).await,
        Err(e) => Err(e),
    };
    s.metrics.purchase(match &answer {
        Ok(_) => "ok",
        Err(e) => e.code().code(),
    });
    match answer {
        Ok((a, Held::Here)) => answered(StatusCode::CREATED, a),
        Ok((a, Held::Elsewhere)) => held_elsewhere(answered(StatusCode::CREATED, a)),
        Err(e) => e.into_response(),
    }
}

/// Where a successful answer's durability was made sure of (in quorum mode, the hold
/// of `super::replication::hold_and_mark`): by this node's engine, so the answer waits
/// for a secondary's ack; or elsewhere (see [`super::replication::HeldElsewhere`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    Here,
    Elsewhere,
}

fn held_elsewhere(mut res: Response) -> Response {
    res.extensions_mut()
        .insert(super::replication::HeldElsewhere);
    res
}

/// The header that may carry a purchase's idempotency key.
pub const IDEMPOTENCY_HEADER: HeaderName = HeaderName::from_static("idempotency-key");

/// What a purchase's `Idempotency-Key` header says: no key, the key, or why the header
/// is refused. Read from the request's headers in place (axum's `HeaderMap` extractor
/// would copy them all for the one header).
pub struct KeyHeader(Result<Option<String>, ApiError>);

impl<S: Send + Sync> FromRequestParts<S> for KeyHeader {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(key_header(&parts.headers)))
    }
}

/// The header's name as errors name it (their `field`).
const KEY_FIELD: &str = "Idempotency-Key";

fn key_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(&IDEMPOTENCY_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::field(
            KEY_FIELD,
            "Idempotency-Key is sent more than once",
        ));
    }
    value
        .to_str()
        .ok()
        .and_then(header_key)
        .map(Some)
        .ok_or_else(|| {
            ApiError::field(
                KEY_FIELD,
                "Idempotency-Key must be a structured-field string (\"key\", printable ASCII) or a bare token",
            )
        })
}

/// The purchase with its idempotency key from the `Idempotency-Key` header or the body's
/// `idempotencyKey` (one is required; both must agree). A refused body is named before
/// a refused header.
fn with_header_key(
    KeyHeader(header): KeyHeader,
    mut req: PurchaseRequest,
) -> Result<PurchaseRequest, ApiError> {
    let Some(key) = header? else {
        if req.idempotency_key.is_empty() {
            return Err(ApiError::field(
                "idempotencyKey",
                "an idempotency key is required: send the Idempotency-Key header or the body's idempotencyKey",
            ));
        }
        return Ok(req);
    };
    if req.idempotency_key.is_empty() {
        req.idempotency_key = key;
    } else if req.idempotency_key != key {
        return Err(ApiError::field(
            KEY_FIELD,
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
    let mut res = super::json::answer(status, &a.order);
    if a.replayed {
        res.headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    res
}

async fn sell(s: &AppState, req: PurchaseRequest) -> Result<(OrderAnswer, Held), ApiError> {
    s.admission.check_rate()?;
    check_purchase(&req)?;
    // The sold-out fast path (the crowd that arrives after the last unit is answered
    // from memory without a place in the engine's queue) and, on a secondary, what its
    // copy can answer; the rest to the engine or, forwarded, the primary's.
    let caught_up = s.replication.as_ref().is_none_or(|r| r.caught_up());
    match (
        s.engine.front(&req, super::now_ms(), caught_up),
        &s.forwarder,
    ) {
        (Front::Refuse(e), _) => Err(e.into()),
        (Front::Replay(order), _) => Ok((
            OrderAnswer {
                order,
                replayed: true,
            },
            Held::Elsewhere,
        )),
        (Front::Forward(primary), Some(f)) => f
            .forward(primary, ForwardOp::Purchase { request: req })
            .await
            .map(|a| (a, Held::Elsewhere)),
        // Without forwarding, the engine refuses it (`not_primary`, naming the primary).
        (Front::Forward(_) | Front::Engine, _) => {
            take_purchase(s, req).await.map(|a| (a, Held::Here))
        }
    }
}

/// A purchase into this node's engine, holding a place in its queue.
async fn take_purchase(s: &AppState, req: PurchaseRequest) -> Result<OrderAnswer, ApiError> {
    let _place = s.admission.enter_engine()?;
    Ok(s.engine.purchase_answer(req).await?)
}

/// `POST /admin/v1/forward` (admin token): a secondary's batch of purchases, confirms
/// and cancels (`crate::forward`), answered in order. They enter the engine together,
/// so they share its group commits; each holds a place in the engine's queue like a
/// direct request (a full queue answers that operation 503). No admission rate: the
/// secondary applied its own. The answer is sent once every purchase in it is durable
/// (and, in quorum mode, replicated: `replication::hold_and_mark` holds this route's answers).
#[utoipa::path(post, path = "/admin/v1/forward", tag = "admin", security(("bearer" = [])),
    request_body = ForwardBatch,
    responses((status = 200, body = ForwardAnswers, description = "one answer per operation, in order: an order (with `replayed`) or a problem"),
        (status = 400, body = ErrorBody, description = "bad_request: not a batch, or more than 1024 operations (`field` = ops)"),
        (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody, description = "payload_too_large: over 8 MiB"),
        (status = 503, body = ErrorBody, description = "unavailable: in quorum mode, no secondary acknowledged the batch in time (every purchase in it may still complete: retry with the same keys)")))]
pub async fn forwarded(
    State(s): State<AppState>,
    body: Result<Json<ForwardBatch>, ApiError>,
) -> Response {
    let batch = match body {
        Ok(Json(b)) => b,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = check_batch(&batch) {
        return e.into_response();
    }
    let answers = futures::future::join_all(
        batch
            .ops
            .into_iter()
            .map(|op| async { ForwardAnswer::of(forwarded_op(&s, op).await) }),
    )
    .await;
    axum::Json(ForwardAnswers { answers }).into_response()
}

/// A batch's shape: a secondary checks every purchase before it forwards one, so an
/// operation that breaks the rules means a broken sender, and the whole batch is refused
/// (400 naming `ops[i].<field>`) before anything in it runs. What only the sale can say
/// (sold out, an unknown item, a limit) is answered per operation.
fn check_batch(batch: &ForwardBatch) -> Result<(), ApiError> {
    if batch.ops.len() > BATCH_ACCEPT_MAX {
        return Err(ApiError::field(
            "ops",
            format!(
                "field `ops`: {} operations in one batch, at most {BATCH_ACCEPT_MAX}",
                batch.ops.len()
            ),
        ));
    }
    for (i, op) in batch.ops.iter().enumerate() {
        match op {
            ForwardOp::Purchase { request } => {
                if request.idempotency_key.is_empty() {
                    return Err(ApiError::field(
                        format!("ops[{i}].request.idempotencyKey"),
                        "a forwarded purchase carries its idempotency key",
                    ));
                }
                request.check().map_err(|e| {
                    ApiError::field(format!("ops[{i}].request.{}", e.field), e.to_string())
                })?;
                if request.quantity == 0 {
                    return Err(ApiError::field(
                        format!("ops[{i}].request.quantity"),
                        "at least 1",
                    ));
                }
            }
            ForwardOp::Confirm { id, .. } | ForwardOp::Cancel { id, .. } if *id > ORDER_ID_MAX => {
                return Err(ApiError::field(
                    format!("ops[{i}].id"),
                    format!("field `ops[{i}].id`: at most {ORDER_ID_MAX}"),
                ));
            }
            ForwardOp::Confirm { customer, .. } | ForwardOp::Cancel { customer, .. } => {
                if let Some(c) = customer {
                    flashsale_core::rules::check_id("customer", c).map_err(|e| {
                        ApiError::field(format!("ops[{i}].customer"), e.to_string())
                    })?;
                }
            }
        }
    }
    Ok(())
}

async fn forwarded_op(s: &AppState, op: ForwardOp) -> Result<OrderAnswer, ApiError> {
    match op {
        ForwardOp::Purchase { request } => {
            let r = async {
                if let Some(sold_out) = s.engine.sold_out_early(&request) {
                    return Err(sold_out.into());
                }
                take_purchase(s, request).await
            }
            .await;
            // Counted once, by the node that answers the client (the secondary):
            // `flashsale_purchases_total` summed over a sale's nodes is the crowd's
            // purchases. Only a fenced answer is counted here too: it is this node's.
            if matches!(&r, Err(e) if e.code() == flashsale_core::ErrorCode::Fenced) {
                s.metrics.fenced();
            }
            r
        }
        ForwardOp::Confirm { id, customer } => {
            forwarded_action(s, id, customer, OrderAction::Confirm).await
        }
        ForwardOp::Cancel { id, customer } => {
            forwarded_action(s, id, customer, OrderAction::Cancel).await
        }
    }
}

/// A forwarded confirm or cancel of `customer`'s order `id` (any order when `None`).
async fn forwarded_action(
    s: &AppState,
    id: u64,
    customer: Option<String>,
    action: OrderAction,
) -> Result<OrderAnswer, ApiError> {
    // A node that is no longer the sale's authority (demoted since the secondary chose
    // it) says so before it looks for the order: its copy may lack an order the new
    // primary made, and "no such order" would be a final answer where the client must
    // retry.
    authoritative(s)?;
    owns(s, id, customer.as_deref())?;
    let _place = s.admission.enter_engine()?;
    Ok(action.run(s, id).await?)
}

/// `customer`'s order `id` (any order when `None`: the caller held the admin token).
fn owns(s: &AppState, id: u64, customer: Option<&str>) -> Result<(), ApiError> {
    let Some(customer) = customer else {
        return Ok(());
    };
    match s.engine.order(id) {
        Some(o) if belongs(&o, Some(customer)) => Ok(()),
        _ => Err(SellError::UnknownOrder(id).into()),
    }
}

/// Whether `o` is `customer`'s (any order is, for `None`: the admin token).
fn belongs(o: &Order, customer: Option<&str>) -> bool {
    customer.is_none_or(|c| o.customer == c)
}

/// A confirm or cancel on a secondary that forwards: to the primary, with the caller's
/// customer, without looking at the local copy (which may not have the order yet).
/// `None`: this node acts itself.
async fn forward_order_action(
    s: &AppState,
    headers: &HeaderMap,
    id: Result<u64, ApiError>,
    action: OrderAction,
) -> Option<Result<Response, ApiError>> {
    let (f, primary) = s.forward_target()?;
    let answer = async {
        let id = id?;
        let customer = if super::admin::is_admin(s, headers) {
            None
        } else {
            Some(customer_of(headers)?.to_string())
        };
        // What cannot name an order (an id past the largest, a customer id no purchase
        // could have) is answered here as the primary would: it never joins a batch,
        // which the primary would refuse whole.
        if id > ORDER_ID_MAX
            || customer
                .as_deref()
                .is_some_and(|c| flashsale_core::rules::check_id("customer", c).is_err())
        {
            return Err(SellError::UnknownOrder(id).into());
        }
        s.admission.check_rate()?;
        let op = match action {
            OrderAction::Confirm => ForwardOp::Confirm { id, customer },
            OrderAction::Cancel => ForwardOp::Cancel { id, customer },
        };
        Ok(held_elsewhere(answered(
            StatusCode::OK,
            f.forward(primary, op).await?,
        )))
    };
    Some(answer.await)
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
    order_action(&s, &headers, id, OrderAction::Confirm).await
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
    order_action(&s, &headers, id, OrderAction::Cancel).await
}

/// What a confirm or a cancel does to an order.
#[derive(Clone, Copy)]
enum OrderAction {
    Confirm,
    Cancel,
}

impl OrderAction {
    /// Asks the engine, counting a `fenced` answer.
    async fn run(self, s: &AppState, id: u64) -> Result<OrderAnswer, SellError> {
        let r = match self {
            OrderAction::Confirm => s.engine.confirm(id).await,
            OrderAction::Cancel => s.engine.cancel(id).await,
        };
        counted(s, r)
    }
}

/// `POST /v1/orders/{id}/confirm` or `/cancel`: forwarded on a secondary that forwards,
/// else the caller's own order (see [`caller_customer`]) into the engine.
async fn order_action(
    s: &AppState,
    headers: &HeaderMap,
    id: Result<Path<String>, PathRejection>,
    action: OrderAction,
) -> Result<Response, ApiError> {
    let id = order_id(id);
    if let Some(forwarded) = forward_order_action(s, headers, id.clone(), action).await {
        return forwarded;
    }
    let id = id?;
    let customer = caller_customer(s, headers)?;
    // The token before the order is looked at: a guess at another customer's order
    // (answered like a missing one) costs what any request does, so guessing is
    // bounded by the admission rate.
    s.admission.check_rate()?;
    // Only the sale's own state may say "no such order" (a parked standby's copy, in a
    // failover, may not have an order the old primary acknowledged).
    authoritative(s)?;
    owns(s, id, customer)?;
    let _place = s.admission.enter_engine()?;
    Ok(answered(StatusCode::OK, action.run(s, id).await?))
}

/// Counts a confirm or cancel answered `fenced`, by the engine or before it (purchases
/// count by code).
fn counted<T>(s: &AppState, r: Result<T, SellError>) -> Result<T, SellError> {
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
        (status = 429, body = ErrorBody, description = "rate_limited, with Retry-After"),
        (status = 503, body = ErrorBody, description = "unavailable: busy or shutting down, or a copy (a secondary, or any node but the primary holding its lease) that has not yet applied the record this id would be: retry, or read from the primary")))]
pub async fn get_order(
    State(s): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<Order>, ApiError> {
    let id = order_id(id)?;
    let customer = caller_customer(&s, &headers)?;
    // The admission rate bounds the crowd, guesses at other customers' orders included
    // (they cost a token before the order is looked at); whoever holds the admin token
    // (the operator, a support tool reading orders back) is not it.
    if customer.is_some() {
        s.admission.check_rate()?;
    }
    // Another customer's order is answered like one that does not exist (`owns`).
    match s.engine.look_up(id) {
        Lookup::Found(o) if belongs(&o, customer) => Ok(axum::Json(o)),
        Lookup::NotSeenYet { applied_seq } => Err(SellError::Unavailable(format!(
            "this node's copy has applied records up to {applied_seq}; order {id} may be newer: retry, or read it from the primary"
        ))
        .into()),
        Lookup::Found(_) | Lookup::Unknown => Err(SellError::UnknownOrder(id).into()),
    }
}

/// [`crate::engine::EngineHandle::authoritative`], counting a `fenced` answer as the
/// engine's would be (`flashsale_fenced_answers_total`).
fn authoritative(s: &AppState) -> Result<(), SellError> {
    counted(s, s.engine.authoritative())
}

/// Whose orders the caller may act on: `None` for the node's admin token (the operator,
/// or whoever holds it, may act on any order), else the customer its
/// `Flashsale-Customer` header names (a 400 without one). An order belongs to the
/// customer it was bought for, and a caller that knows only its id can neither read,
/// confirm nor cancel it: [`owns`] answers another customer's order exactly like one
/// that does not exist (404 `unknown_order`), so ids reveal nothing.
fn caller_customer<'h>(s: &AppState, headers: &'h HeaderMap) -> Result<Option<&'h str>, ApiError> {
    if super::admin::is_admin(s, headers) {
        return Ok(None);
    }
    customer_of(headers).map(Some)
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
        .get(&CUSTOMER_HEADER)
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
