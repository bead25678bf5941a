//! What operations tooling reads (health, readiness, metrics) and the layers every
//! request passes (timeout, latency histogram, JSON answers for unknown routes).

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flashsale_core::ErrorCode;
use futures::FutureExt;
use futures::future::{self, BoxFuture, Either};
use serde::Serialize;
use tower::{Layer, Service};
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;

/// `/healthz`: the process answers.
#[derive(Serialize, ToSchema)]
pub struct Health {
    status: &'static str,
}

/// The process is up and its event loop answers.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
pub async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// `/readyz` when ready.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ready {
    ready: bool,
    role: flashsale_core::admin::Role,
    epoch: u64,
    sale: Option<String>,
}

/// 200 once the node has a sale configured, its WAL open and healthy, and a role other
/// than `standby` (a lone `--role primary` node: once configured; a `--role standby`
/// node: after both `PUT /admin/v1/config` and `PUT /admin/v1/role`); else 503
/// `unavailable` naming what is missing. Also 503 once shutdown has begun.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, body = Ready), (status = 503, body = flashsale_core::ErrorBody)))]
pub async fn readyz(State(s): State<AppState>) -> Result<axum::Json<Ready>, ApiError> {
    let missing = s.not_ready();
    if !missing.is_empty() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("not ready: {}", missing.join("; ")),
        ));
    }
    let st = s.engine.status();
    Ok(axum::Json(Ready {
        ready: true,
        role: st.role,
        epoch: st.epoch,
        sale: st.sale,
    }))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", description = "OpenMetrics text")))]
pub async fn metrics(State(s): State<AppState>) -> Result<Response, ApiError> {
    s.metrics
        .lease_remaining_ms(s.engine.lease().remaining_ms());
    s.metrics.observe_load(
        &s.admission.load(),
        s.forwarder.as_ref().map(|f| f.counters()),
    );
    let text = s
        .metrics
        .encode(&s.engine.items())
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("encoding metrics: {e}")))?;
    let ct = HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");
    Ok(([(header::CONTENT_TYPE, ct)], text).into_response())
}

/// The middleware every route passes (outside the admin routes' `admin::require_token`):
/// refuses oversized heads and declared bodies, bounds the bodies it lets through
/// ([`bounded`]) and every request's time, turns a panic in the handler or in its own
/// work into a JSON 500 ([`panic_answer`]), passes the answer through `replication::hold_and_mark` (the
/// quorum hold and the applied-seq headers), and records its latency by route and
/// status.
///
/// A tower layer written out rather than `axum::middleware::from_fn`: that one clones
/// the route's service into a new boxed service for every request and boxes its future
/// twice; here a request costs one boxed future (about 1 000 instructions fewer per
/// purchase, counted with callgrind). Panics are caught here too rather than by
/// tower-http's `CatchPanicLayer`, a layer of its own that boxed every answer's body
/// once more (about 1 000 instructions a purchase).
#[derive(Clone)]
pub struct ObserveLayer(pub AppState);

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            state: self.0.clone(),
        }
    }
}

/// [`ObserveLayer`] around one route's service.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    state: AppState,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let s = self.state.clone();
        let started = Instant::now();
        let method = req.method().clone();
        let route = req.extensions().get::<MatchedPath>().cloned();
        // Every step that could panic is caught, so a bug still answers a JSON 500 and
        // is counted, never a reset connection: here the checks before the handler,
        // below the handler, the quorum hold, the timer and dropping what the timeout
        // cut off, and the metrics after.
        let inner = &mut self.inner;
        let prepared = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let limit = body_limit(route.as_ref().map(|m| m.as_str()), s.limits.body_bytes_max);
            if let Some(why) = headers_too_large(&req) {
                return Err(ApiError::new(ErrorCode::HeadersTooLarge, why));
            }
            if declared_too_large(&req, limit) {
                // Refused before reading: a client announcing a huge body is not waited for.
                return Err(ApiError::body_too_large());
            }
            let req = bounded(req, limit);
            // An axum route's `call` only builds its future (a `Oneshot` that calls the
            // handler's service when first polled), so the handler runs in `answer`.
            Ok((super::replication::holds(&s, &req), inner.call(req)))
        }));
        Box::pin(async move {
            let res = match prepared {
                Err(panic) => panic_answer(panic),
                Ok(Err(e)) => e.into_response(),
                Ok(Ok((hold, handled))) => {
                    let timed = async {
                        let answer = std::pin::pin!(async {
                            let Ok(res) = handled.await;
                            super::replication::hold_and_mark(&s, hold, res).await
                        });
                        // The deadline counts from when the request reached this layer.
                        let mut timer = super::deadline::take(super::deadline::after(
                            started,
                            s.limits.request_timeout,
                        ));
                        // The timer outside tokio's task budget, as `tokio::time::timeout`
                        // polls it: a handler that spends the budget is still cut off.
                        let expired = tokio::task::unconstrained(timer.as_mut());
                        let res = match future::select(answer, expired).await {
                            Either::Left((res, _)) => res,
                            // A purchase cut off here may still commit; its idempotent retry gets the order.
                            Either::Right(_) => ApiError::new(
                                ErrorCode::Unavailable,
                                format!(
                                    "request timed out after {} ms",
                                    s.limits.request_timeout.as_millis()
                                ),
                            )
                            .into_response(),
                        };
                        super::deadline::give(timer);
                        res
                    };
                    AssertUnwindSafe(timed)
                        .catch_unwind()
                        .await
                        .unwrap_or_else(panic_answer)
                }
            };
            let counted = std::panic::catch_unwind(AssertUnwindSafe(|| {
                record(&s, &method, route.as_ref(), &res, started)
            }));
            if let Err(panic) = counted {
                log_panic(&*panic);
            }
            Ok(res)
        })
    }
}

/// The request's latency by route and status, and a log line for a server-side failure
/// (the rest only when asked for).
fn record(
    s: &AppState,
    method: &Method,
    route: Option<&MatchedPath>,
    res: &Response,
    started: Instant,
) {
    let route = route.map_or("unmatched", |m| m.as_str());
    let status = res.status().as_u16();
    let elapsed = started.elapsed();
    s.metrics
        .request(method.as_str(), route, status, elapsed.as_secs_f64());
    if status >= 500 {
        tracing::warn!(%method, route, status, elapsed_us = elapsed.as_micros() as u64, "request failed");
    } else {
        tracing::debug!(%method, route, status, elapsed_us = elapsed.as_micros() as u64, "request");
    }
}

/// Most request headers, and bytes of them (names and values), a request may carry.
/// The HTTP server lets up to [`super::server::HEADERS_HARD_MAX`] (100) through, so that
/// what lies between is refused here with a JSON body (beyond that, and for a head that
/// is not HTTP, hyper answers on its own, with an empty body).
pub const HEADERS_MAX: usize = 90;
pub const HEADER_BYTES_MAX: usize = 16 * 1024;

fn headers_too_large(req: &Request) -> Option<String> {
    let h = req.headers();
    let bytes: usize = h.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if h.len() > HEADERS_MAX || bytes > HEADER_BYTES_MAX {
        return Some(format!(
            "{} headers of {bytes} bytes: at most {HEADERS_MAX} headers and {HEADER_BYTES_MAX} bytes",
            h.len()
        ));
    }
    None
}

/// The largest body `route` takes: the admin routes that carry WAL records, a snapshot
/// or a forwarded batch have their own (much larger) limits; everything else `--body-bytes-max`.
fn body_limit(route: Option<&str>, body_bytes_max: usize) -> usize {
    match route {
        Some(flashsale_core::replication::WAL_ROUTE) => super::replication::WAL_POST_BYTES_MAX,
        Some(flashsale_core::replication::SNAPSHOT_ROUTE) => {
            crate::engine::replica::SNAPSHOT_BYTES_MAX
        }
        Some(crate::forward::FORWARD_ROUTE) => super::FORWARD_BODY_BYTES_MAX,
        _ => body_bytes_max,
    }
}

/// A `Content-Length` over the limit (a body without one is bounded while it is read:
/// [`bounded`]).
fn declared_too_large(req: &Request, body_bytes_max: usize) -> bool {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > body_bytes_max as u64)
}

/// `req` with its body bounded by `limit` while it is read: here the node bounds every
/// body it reads, with the limits of [`body_limit`] (the routes that read with axum's
/// `Bytes` turn axum's own default limit off). A body of known length (a
/// `Content-Length`, which hyper reads exactly, or none at all) is within the limit
/// once [`declared_too_large`] passed it, and is left as it is; only one of unknown
/// length (chunked) is wrapped. (axum's `DefaultBodyLimit` layer put an extension in
/// every request, and its extractors boxed every body behind a limit: ~2 100
/// instructions a purchase, counted with `make bench-instructions`.)
fn bounded(req: Request, limit: usize) -> Request {
    use axum::body::HttpBody;
    if req
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| n <= limit as u64)
    {
        return req;
    }
    req.map(|b| axum::body::Body::new(http_body_util::Limited::new(b, limit)))
}

pub async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no route {} {}", req.method(), req.uri().path()),
    )
}

pub async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// A panic in a handler is a bug; the client still gets JSON and the node keeps serving.
pub fn panic_answer(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    log_panic(&*panic);
    let mut res = ApiError::new(ErrorCode::Internal, "internal error").into_response();
    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    res
}

/// Logs a caught panic with its message.
fn log_panic(panic: &(dyn std::any::Any + Send)) {
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    tracing::error!(panic = %what, "handler panicked");
}
