//! The node admin API (`/admin/v1/*`, Bearer token) the operator drives; the contract
//! is documented in `flashsale_core::admin`.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use flashsale_core::admin::{LeaseRenewal, LeaseStatus, NodeStatus, RoleAssignment};
use flashsale_core::{ErrorBody, ErrorCode, SaleConfig, SellError};

use super::AppState;
use super::error::ApiError;
use super::json::Json;

/// Refuses every admin call without `Authorization: Bearer <token>` (401), and all of
/// them when the node was started without a token.
pub async fn require_token(
    State(s): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = s.admin_token.as_deref() else {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "the admin API is disabled: the node has no admin token",
        ));
    };
    match bearer(req.headers()) {
        Bearer::Token(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => {
            Ok(next.run(req).await)
        }
        Bearer::Token(_) => Err(ApiError::new(ErrorCode::Unauthorized, "wrong admin token")),
        Bearer::OtherScheme => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "the Authorization header must be `Bearer <admin token>` (another scheme was given)",
        )),
        Bearer::Missing => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "missing `Authorization: Bearer <admin token>`",
        )),
    }
}

/// What a request's `Authorization` header holds.
pub enum Bearer<'a> {
    Missing,
    OtherScheme,
    Token(&'a str),
}

/// The bearer token of `Authorization` (the scheme is case-insensitive, RFC 9110 §11.1).
pub fn bearer(headers: &axum::http::HeaderMap) -> Bearer<'_> {
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Bearer::Missing;
    };
    match v.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Bearer::Token(token.trim_start_matches(' '))
        }
        _ => Bearer::OtherScheme,
    }
}

/// Whether the request carries this node's admin token.
pub fn is_admin(s: &AppState, headers: &axum::http::HeaderMap) -> bool {
    match (s.admin_token.as_deref(), bearer(headers)) {
        (Some(expected), Bearer::Token(t)) => constant_time_eq(t.as_bytes(), expected.as_bytes()),
        _ => false,
    }
}

/// Compares without an early exit, so the answer time does not leak the token's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The node's role, epoch, sequences, items and load.
#[utoipa::path(get, path = "/admin/v1/status", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = NodeStatus), (status = 401, body = ErrorBody)))]
pub async fn status(State(s): State<AppState>) -> axum::Json<NodeStatus> {
    axum::Json(s.node_status())
}

/// Configures a fresh primary or changes the running sale. Only the primary takes it:
/// the config is a record in its log, and a secondary or standby would write one at
/// an epoch it does not own (a secondary gets the sale from the primary's log).
#[utoipa::path(put, path = "/admin/v1/config", tag = "admin", security(("bearer" = [])),
    request_body = SaleConfig,
    responses((status = 200, body = NodeStatus), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "not_primary: the node is not the primary; fenced: a primary without its selling lease")))]
pub async fn put_config(
    State(s): State<AppState>,
    Json(config): Json<SaleConfig>,
) -> Result<axum::Json<NodeStatus>, ApiError> {
    config
        .check()
        .map_err(|e| ApiError::field(e.field.clone(), e.to_string()))?;
    s.engine.configure(config).await?;
    Ok(axum::Json(s.node_status()))
}

/// Tells the node its role and fencing epoch.
#[utoipa::path(put, path = "/admin/v1/role", tag = "admin", security(("bearer" = [])),
    request_body = RoleAssignment,
    responses((status = 200, body = NodeStatus),
        (status = 400, body = ErrorBody, description = "bad_request: an epoch outside 1..=2^53-1, a primaryUrl that is not an http(s) URL, a secondary without one"),
        (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "fenced: an epoch older than the node's")))]
pub async fn put_role(
    State(s): State<AppState>,
    Json(role): Json<RoleAssignment>,
) -> Result<Response, ApiError> {
    role.check()
        .map_err(|e| ApiError::field(e.field.clone(), e.to_string()))?;
    match s.engine.set_role(role).await {
        Ok(_) => Ok(axum::Json(s.node_status()).into_response()),
        // The admin contract answers a stale epoch with 409: the caller is out of date,
        // this node is fine (elsewhere `fenced` is a 503: this node may not sell).
        Err(e @ SellError::Fenced(_)) => Err(ApiError::from(e).with_status(StatusCode::CONFLICT)),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison_needs_every_byte() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}

/// Renews the selling lease (see `crate::lease`): 200 with the lease and a fresh token;
/// 409 `fenced` for another epoch or a token of an earlier run (with a fresh token, to
/// renew with at once).
#[utoipa::path(put, path = "/admin/v1/lease", tag = "admin", security(("bearer" = [])),
    request_body = LeaseRenewal,
    responses((status = 200, body = LeaseStatus), (status = 401, body = ErrorBody),
        (status = 409, body = LeaseRefused, description = "fenced: wrong epoch, or a token of an earlier run")))]
pub async fn put_lease(
    State(s): State<AppState>,
    Json(renewal): Json<LeaseRenewal>,
) -> Result<Response, ApiError> {
    let lease = s.engine.lease();
    let epoch = s.engine.positions().epoch;
    match lease.renew(epoch, &renewal) {
        Ok(status) => Ok(axum::Json(status).into_response()),
        Err(e) => {
            let mut problem = ErrorBody::new(ErrorCode::Fenced, e.to_string());
            problem.status = StatusCode::CONFLICT.as_u16();
            let refused = LeaseRefused {
                problem,
                lease: lease.status(),
            };
            Ok((
                StatusCode::CONFLICT,
                [(
                    axum::http::header::CONTENT_TYPE,
                    flashsale_core::PROBLEM_JSON,
                )],
                axum::Json(refused),
            )
                .into_response())
        }
    }
}

/// Gives the lease up at once (a clean step-down also does, with the role).
#[utoipa::path(delete, path = "/admin/v1/lease", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = LeaseStatus), (status = 401, body = ErrorBody)))]
pub async fn delete_lease(State(s): State<AppState>) -> axum::Json<LeaseStatus> {
    axum::Json(s.engine.lease().release())
}

/// A refused renewal: why, and the lease as it stands with a fresh token.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRefused {
    /// Why (code `fenced`, status 409), as every error: an RFC 9457 problem.
    #[serde(flatten)]
    pub problem: ErrorBody,
    pub lease: LeaseStatus,
}

/// The order ledger of this node's durable state (`crate::ledger`): every confirmed
/// order by id — id, sku, quantity, customer, idempotency key, reserved and confirmed
/// times, the epoch that sold it — as JSON lines (`format=jsonl`, the default) or CSV
/// (`format=csv`). Ask the primary: after a failover its ledger is the sale's. The rows
/// are those `stock-node wal ledger` reads offline from the same data directory.
#[utoipa::path(get, path = "/admin/v1/ledger", tag = "admin", security(("bearer" = [])),
    params(("format" = Option<String>, Query, nullable = false, pattern = "^(jsonl|json|csv)$", description = "`jsonl` (default) or `csv`")),
    responses(
        (status = 200, description = "the ledger: one LedgerEntry a line (jsonl), or CSV with a header row", content(
            (crate::ledger::LedgerEntry = "application/jsonl"),
            (String = "text/csv"))),
        (status = 400, body = ErrorBody, description = "bad_request: a format other than jsonl or csv"),
        (status = 401, body = ErrorBody)))]
pub async fn ledger(
    State(s): State<AppState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Response, ApiError> {
    use crate::ledger::Format;
    let mut format = Format::Jsonl;
    for pair in query.as_deref().unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("format=") {
            format = Format::parse(v)
                .ok_or_else(|| ApiError::field("format", format!("format `{v}`: jsonl or csv")))?;
        }
    }
    let engine = s.engine.clone();
    let body = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        crate::ledger::write(&engine.ledger(), format, &mut out).map(|()| out)
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, format!("ledger: {e}")))?
    .map_err(|e| ApiError::new(ErrorCode::Internal, format!("ledger: {e}")))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, format.content_type())],
        body,
    )
        .into_response())
}
