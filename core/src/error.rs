//! Errors a client can see, each with a stable `code` string and HTTP status, answered
//! as RFC 9457 problem details (`application/problem+json`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Stable machine-readable error codes. The string form (`code()`) never changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: malformed JSON or a field out of its domain (`field` names it).
    BadRequest,
    /// 404: unknown item.
    UnknownItem,
    /// 404: unknown order.
    UnknownOrder,
    /// 409: not enough stock left.
    SoldOut,
    /// 409: idempotency key reused with a different body.
    IdempotencyConflict,
    /// 409: the order is not in a state that allows the change (e.g. confirm an expired hold).
    OrderState,
    /// 413: body over the size limit.
    PayloadTooLarge,
    /// 422: over the per-customer limit.
    LimitExceeded,
    /// 422: quantity is zero or larger than any customer may buy.
    BadQuantity,
    /// 409: the sale has not opened yet (`Retry-After`: seconds until it opens). Not 425,
    /// which RFC 8470 reserves for TLS early data and which clients retry on their own.
    NotOpen,
    /// 410: the sale has ended.
    Ended,
    /// 429: over the admission rate (`Retry-After` says when to come back).
    RateLimited,
    /// 503: this node is not the primary (`primary` says who is).
    NotPrimary,
    /// 503: this node's epoch is stale or its lease lapsed; it sells nothing.
    Fenced,
    /// 503: overloaded, shutting down, or not configured yet.
    Unavailable,
    /// 500: a bug or an I/O failure; the request changed nothing it acknowledged.
    Internal,
    /// 401: admin route without the right `Authorization: Bearer` token.
    Unauthorized,
    /// 404: no such route.
    NotFound,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 410: catch-up asked for WAL records this node compacted into a snapshot.
    WalCompacted,
    /// 409: two logs disagree at the same sequence (different epochs): the one that is
    /// not the primary's must be reseeded.
    Diverged,
    /// 431: too many request headers, or too many bytes of them.
    HeadersTooLarge,
    /// 409: WAL records sent to the primary, which writes its own log and takes none
    /// from outside (`POST /admin/v1/wal`).
    IsPrimary,
}

impl ErrorCode {
    pub fn http_status(self) -> u16 {
        use ErrorCode::*;
        match self {
            BadRequest => 400,
            UnknownItem | UnknownOrder => 404,
            SoldOut | IdempotencyConflict | OrderState => 409,
            PayloadTooLarge => 413,
            LimitExceeded | BadQuantity => 422,
            NotOpen => 409,
            Ended => 410,
            RateLimited => 429,
            NotPrimary | Fenced | Unavailable => 503,
            Internal => 500,
            Unauthorized => 401,
            NotFound => 404,
            MethodNotAllowed => 405,
            WalCompacted => 410,
            Diverged => 409,
            HeadersTooLarge => 431,
            IsPrimary => 409,
        }
    }

    pub fn code(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadRequest => "bad_request",
            UnknownItem => "unknown_item",
            UnknownOrder => "unknown_order",
            SoldOut => "sold_out",
            IdempotencyConflict => "idempotency_conflict",
            OrderState => "order_state",
            PayloadTooLarge => "payload_too_large",
            LimitExceeded => "limit_exceeded",
            BadQuantity => "bad_quantity",
            NotOpen => "not_open",
            Ended => "ended",
            RateLimited => "rate_limited",
            NotPrimary => "not_primary",
            Fenced => "fenced",
            Unavailable => "unavailable",
            Internal => "internal",
            Unauthorized => "unauthorized",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            WalCompacted => "wal_compacted",
            Diverged => "diverged",
            HeadersTooLarge => "headers_too_large",
            IsPrimary => "is_primary",
        }
    }
}

impl ErrorCode {
    /// The problem type's short summary (RFC 9457 `title`): the same for every
    /// occurrence of the code.
    pub fn title(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadRequest => "Bad request",
            UnknownItem => "Unknown item",
            UnknownOrder => "Unknown order",
            SoldOut => "Sold out",
            IdempotencyConflict => "Idempotency key reused with a different request",
            OrderState => "Order state does not allow this",
            PayloadTooLarge => "Body too large",
            LimitExceeded => "Over the per-customer limit",
            BadQuantity => "Bad quantity",
            NotOpen => "Sale not open yet",
            Ended => "Sale ended",
            RateLimited => "Rate limited",
            NotPrimary => "Not the primary",
            Fenced => "Fenced",
            Unavailable => "Unavailable",
            Internal => "Internal error",
            Unauthorized => "Unauthorized",
            NotFound => "No such route",
            MethodNotAllowed => "Method not allowed",
            WalCompacted => "WAL compacted",
            Diverged => "Logs diverged",
            HeadersTooLarge => "Request headers too large",
            IsPrimary => "This node is the primary",
        }
    }

    /// The problem type URI (RFC 9457 `type`): a `tag:` URI (RFC 4151) naming the code;
    /// an identifier, not a page to fetch.
    pub fn type_uri(self) -> String {
        format!("{PROBLEM_TYPE_PREFIX}{}", self.code())
    }
}

/// The prefix of every problem type URI: `tag:flashsale.dev,2026:problem/<code>`.
pub const PROBLEM_TYPE_PREFIX: &str = "tag:flashsale.dev,2026:problem/";

/// The media type of every error answer (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The body of every error response: an RFC 9457 problem details object whose
/// extension members keep the stable `code` and the facts a client acts on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// The problem type: `tag:flashsale.dev,2026:problem/<code>`.
    #[serde(rename = "type", default)]
    #[schema(required = true)]
    pub type_uri: String,
    /// The problem type's short summary (the same for every occurrence of a code).
    #[serde(default)]
    #[schema(required = true)]
    pub title: String,
    /// The HTTP status of the answer (the code's, except where a route documents
    /// another: `fenced` is 409 on the admin role route).
    #[serde(default)]
    #[schema(required = true)]
    pub status: u16,
    /// What was wrong with this request, for a person.
    pub detail: String,
    /// The stable machine-readable code (extension member): act on this.
    pub code: ErrorCode,
    /// The request field at fault, for 400/422.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The primary's address, for `not_primary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// Seconds to wait before the same request may succeed (also in `Retry-After`):
    /// on `rate_limited`, `not_open` and every 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
}

impl ErrorBody {
    /// A problem of this code with its type, title and status filled in.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> ErrorBody {
        ErrorBody {
            type_uri: code.type_uri(),
            title: code.title().to_string(),
            status: code.http_status(),
            detail: detail.into(),
            code,
            field: None,
            primary: None,
            retry_after_s: None,
        }
    }
}

/// Why the selling engine refused a command. Maps 1:1 onto an [`ErrorCode`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SellError {
    #[error("field `{field}`: {reason}")]
    BadRequest { field: String, reason: String },
    #[error("unknown item `{0}`")]
    UnknownItem(String),
    #[error("unknown order {0}")]
    UnknownOrder(u64),
    #[error("`{sku}` has {remaining} left, {requested} asked")]
    SoldOut {
        sku: String,
        remaining: u64,
        requested: u32,
    },
    #[error("idempotency key `{0}` was used with a different request")]
    IdempotencyConflict(String),
    #[error("order {id} is {state}, cannot {action}")]
    OrderState {
        id: u64,
        state: String,
        action: String,
    },
    #[error(
        "customer `{customer}` may have {limit} of `{sku}`, already has {held}, asked {requested}"
    )]
    LimitExceeded {
        customer: String,
        sku: String,
        limit: u32,
        held: u64,
        requested: u32,
    },
    #[error("quantity {quantity}: {reason}")]
    BadQuantity { quantity: u32, reason: String },
    #[error("the sale opens at {starts_at_ms} (unix ms)")]
    NotOpen { starts_at_ms: i64 },
    #[error("the sale ended at {ends_at_ms} (unix ms)")]
    Ended { ends_at_ms: i64 },
    #[error("this node is not the primary")]
    NotPrimary { primary: Option<String> },
    #[error("fenced: {0}")]
    Fenced(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A new purchase past the node's memory budget (503 `unavailable`, a long
    /// `Retry-After`: a full node stays full until it is given more memory).
    #[error(
        "unavailable: this node holds as many orders as its memory allows: it takes no new purchases; orders it holds can still be confirmed, cancelled and read"
    )]
    Full,
    #[error("internal error: {0}")]
    Internal(String),
    #[error("diverged: {0}")]
    Diverged(String),
}

impl From<crate::rules::RuleError> for SellError {
    fn from(e: crate::rules::RuleError) -> Self {
        SellError::BadRequest {
            field: e.field,
            reason: e.reason,
        }
    }
}

impl SellError {
    pub fn code(&self) -> ErrorCode {
        use SellError::*;
        match self {
            BadRequest { .. } => ErrorCode::BadRequest,
            UnknownItem(_) => ErrorCode::UnknownItem,
            UnknownOrder(_) => ErrorCode::UnknownOrder,
            SoldOut { .. } => ErrorCode::SoldOut,
            IdempotencyConflict(_) => ErrorCode::IdempotencyConflict,
            OrderState { .. } => ErrorCode::OrderState,
            LimitExceeded { .. } => ErrorCode::LimitExceeded,
            BadQuantity { .. } => ErrorCode::BadQuantity,
            NotOpen { .. } => ErrorCode::NotOpen,
            Ended { .. } => ErrorCode::Ended,
            NotPrimary { .. } => ErrorCode::NotPrimary,
            Fenced(_) => ErrorCode::Fenced,
            Unavailable(_) | Full => ErrorCode::Unavailable,
            Internal(_) => ErrorCode::Internal,
            Diverged(_) => ErrorCode::Diverged,
        }
    }

    /// The body a client sees.
    pub fn body(&self) -> ErrorBody {
        let field = match self {
            SellError::BadRequest { field, .. } => Some(field.clone()),
            SellError::BadQuantity { .. } => Some("quantity".to_string()),
            _ => None,
        };
        let primary = match self {
            SellError::NotPrimary { primary } => primary.clone(),
            _ => None,
        };
        let mut body = ErrorBody::new(self.code(), self.to_string());
        body.field = field;
        body.primary = primary;
        body
    }
}
