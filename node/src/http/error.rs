//! Every answer that is not a success: one RFC 9457 problem ([`ErrorBody`],
//! `application/problem+json`) with a stable `code`, the HTTP status that code maps
//! to, and `Retry-After` on every answer a later retry can cure (429, `not_open`, 503).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flashsale_core::{ErrorBody, ErrorCode, PROBLEM_JSON, SellError};

use crate::admission::Refusal;

/// An error as the HTTP layer answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError(pub Box<ErrorBody>);

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError(Box::new(ErrorBody::new(code, message)))
    }

    /// 400 naming the request field at fault (a JSON path such as `quantity` or `items[2].sku`).
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(ErrorCode::BadRequest, message);
        e.0.field = Some(field.into());
        e
    }

    /// 413: the request body is over its route's limit.
    pub fn body_too_large() -> ApiError {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            "request body is over the size limit",
        )
    }

    pub fn code(&self) -> ErrorCode {
        self.0.code
    }

    /// The same problem answered with another status than its code's (the admin
    /// contract answers a stale epoch 409 `fenced`: the caller is out of date).
    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.0.status = status.as_u16();
        self
    }
}

/// `Retry-After` of a retryable answer that names no wait of its own: a failover or a
/// busy engine is over in about this long; a client retrying sooner only adds load.
pub const RETRY_AFTER_DEFAULT_S: u64 = 1;
/// `Retry-After` of a purchase refused past the memory budget.
pub const MEMORY_RETRY_AFTER_S: u64 = 60;

impl From<SellError> for ApiError {
    fn from(e: SellError) -> ApiError {
        let mut body = e.body();
        match e {
            SellError::NotOpen { starts_at_ms } => {
                body.retry_after_s = Some(seconds_until(starts_at_ms, now_ms()));
            }
            // A full node stays full until it is given more memory: not a retry a second.
            SellError::Full => body.retry_after_s = Some(MEMORY_RETRY_AFTER_S),
            _ => {}
        }
        ApiError(Box::new(body))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Whole seconds from `now_ms` until `at_ms`, rounded up, at least 1.
fn seconds_until(at_ms: i64, now_ms: i64) -> u64 {
    let ms = at_ms.saturating_sub(now_ms).max(1) as u64;
    ms.div_ceil(1000)
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
        let mut problem = *self.0;
        // The code's status, unless the route says otherwise (`ApiError::with_status`).
        let status = StatusCode::from_u16(problem.status)
            .or_else(|_| StatusCode::from_u16(problem.code.http_status()))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        problem.status = status.as_u16();
        let retryable = matches!(status.as_u16(), 429 | 503) || problem.code == ErrorCode::NotOpen;
        if !retryable {
            problem.retry_after_s = None;
        } else if problem.retry_after_s.is_none() {
            problem.retry_after_s = Some(RETRY_AFTER_DEFAULT_S);
        }
        let retry = problem.retry_after_s;
        // ErrorBody is plain data; serialising it cannot fail, but never panic on a path
        // every client can reach.
        let body = serde_json::to_vec(&problem)
            .unwrap_or_else(|_| br#"{"code":"internal","detail":"?"}"#.to_vec());
        let mut res = (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
            body,
        )
            .into_response();
        if let Some(s) = retry {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if matches!(problem.code, ErrorCode::NotPrimary | ErrorCode::Fenced) {
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
            (SellError::NotOpen { starts_at_ms: 5 }, 409, "not_open"),
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
            assert_eq!(body["detail"], msg);
            assert_eq!(body["status"], status);
            assert_eq!(
                body["type"],
                format!("tag:flashsale.dev,2026:problem/{code}")
            );
            assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()));
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
            (s, retry.as_deref(), body["code"].as_str()),
            (503, Some("1"), Some("unavailable"))
        );
    }

    #[tokio::test]
    async fn every_answer_a_retry_can_cure_says_when_and_no_other_does() {
        for e in [
            SellError::NotPrimary { primary: None },
            SellError::Fenced("lease lapsed".into()),
            SellError::Unavailable("shutting down".into()),
        ] {
            let (s, retry, body) = answer(e).await;
            assert_eq!((s, retry.as_deref()), (503, Some("1")));
            assert_eq!(body["retryAfterS"], 1);
        }
        // not_open: the seconds until the window opens, rounded up.
        let opens = now_ms() + 42_500;
        let (s, retry, body) = answer(SellError::NotOpen {
            starts_at_ms: opens,
        })
        .await;
        let secs: u64 = retry.as_deref().unwrap().parse().unwrap();
        assert_eq!(s, 409);
        assert!((42..=43).contains(&secs), "{secs}");
        assert_eq!(body["retryAfterS"], secs);
        assert_eq!(seconds_until(1_000, 1_000), 1, "at least one second");
        assert_eq!(seconds_until(2_001, 1_000), 2);
        for e in [
            SellError::UnknownItem("x".into()),
            SellError::Ended { ends_at_ms: 1 },
            SellError::Internal("disk".into()),
        ] {
            let (_, retry, body) = answer(e).await;
            assert_eq!(retry, None);
            assert!(body.get("retryAfterS").is_none());
        }
    }

    #[tokio::test]
    async fn errors_are_problem_json() {
        let res = ApiError::from(SellError::UnknownItem("x".into())).into_response();
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}
