//! Every answer that is not a success: one JSON [`ErrorBody`] with a stable `code`,
//! the HTTP status that code maps to, and `Retry-After` where a client should wait.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flashsale_core::{ErrorBody, ErrorCode, SellError};

use crate::admission::Refusal;

/// An error as the HTTP layer answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError(pub ErrorBody);

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError(ErrorBody {
            code,
            message: message.into(),
            field: None,
            primary: None,
            retry_after_s: None,
        })
    }

    /// 400 naming the request field at fault (a JSON path such as `quantity` or `items[2].sku`).
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(ErrorCode::BadRequest, message);
        e.0.field = Some(field.into());
        e
    }

    pub fn code(&self) -> ErrorCode {
        self.0.code
    }
}

impl From<SellError> for ApiError {
    fn from(e: SellError) -> ApiError {
        ApiError(e.body())
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        match r {
            Refusal::Rate { retry_after_s, .. } => {
                let mut e = ApiError::new(ErrorCode::RateLimited, r.to_string());
                e.0.retry_after_s = Some(retry_after_s);
                e
            }
            Refusal::Busy { .. } => ApiError::new(ErrorCode::Unavailable, r.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry = self.0.retry_after_s;
        // ErrorBody is plain data; serialising it cannot fail, but never panic on a path
        // every client can reach.
        let body = serde_json::to_vec(&self.0)
            .unwrap_or_else(|_| br#"{"code":"internal","message":"?"}"#.to_vec());
        let mut res = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if let Some(s) = retry {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if matches!(self.0.code, ErrorCode::NotPrimary | ErrorCode::Fenced) {
            // This node does not sell (any more): close the connection, so a client that
            // reached it through the primary Service reconnects and lands on the new
            // primary instead of asking this one again over its kept-alive connection.
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    async fn answer(e: impl Into<ApiError>) -> (u16, Option<String>, serde_json::Value) {
        let res = e.into().into_response();
        let status = res.status().as_u16();
        let retry = res
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_string());
        let body = to_bytes(res.into_body(), 1 << 16).await.unwrap();
        (status, retry, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn sell_errors_map_to_their_status_and_stable_code() {
        let cases: Vec<(SellError, u16, &str)> = vec![
            (SellError::UnknownItem("x".into()), 404, "unknown_item"),
            (SellError::UnknownOrder(7), 404, "unknown_order"),
            (
                SellError::SoldOut {
                    sku: "x".into(),
                    remaining: 0,
                    requested: 1,
                },
                409,
                "sold_out",
            ),
            (
                SellError::IdempotencyConflict("k".into()),
                409,
                "idempotency_conflict",
            ),
            (
                SellError::LimitExceeded {
                    customer: "c".into(),
                    sku: "x".into(),
                    limit: 1,
                    held: 1,
                    requested: 1,
                },
                422,
                "limit_exceeded",
            ),
            (
                SellError::BadQuantity {
                    quantity: 0,
                    reason: "must be positive".into(),
                },
                422,
                "bad_quantity",
            ),
            (SellError::NotOpen { starts_at_ms: 5 }, 425, "not_open"),
            (SellError::Ended { ends_at_ms: 5 }, 410, "ended"),
            (
                SellError::NotPrimary {
                    primary: Some("http://p:8080".into()),
                },
                503,
                "not_primary",
            ),
            (SellError::Internal("disk".into()), 500, "internal"),
        ];
        for (e, status, code) in cases {
            let msg = e.to_string();
            let (s, _, body) = answer(e).await;
            assert_eq!(s, status, "{code}");
            assert_eq!(body["code"], code);
            assert_eq!(body["message"], msg);
        }
        let (_, _, body) = answer(SellError::NotPrimary {
            primary: Some("http://p:8080".into()),
        })
        .await;
        assert_eq!(body["primary"], "http://p:8080");
        let (_, _, body) = answer(SellError::BadQuantity {
            quantity: 0,
            reason: "zero".into(),
        })
        .await;
        assert_eq!(body["field"], "quantity");
    }

    #[tokio::test]
    async fn rate_refusals_carry_retry_after_in_header_and_body() {
        let (s, retry, body) = answer(Refusal::Rate {
            rate_per_s: 5,
            retry_after_s: 2,
        })
        .await;
        assert_eq!((s, retry.as_deref()), (429, Some("2")));
        assert_eq!(body["code"], "rate_limited");
        assert_eq!(body["retryAfterS"], 2);
        let (s, retry, body) = answer(Refusal::Busy { inflight_max: 3 }).await;
        assert_eq!(
            (s, retry, body["code"].as_str()),
            (503, None, Some("unavailable"))
        );
    }
}
