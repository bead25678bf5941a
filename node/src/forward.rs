//! Forwarding: a secondary is a front door too. It answers from its replicated copy
//! what that copy answers correctly (reads, sold out, unknown item, the sale window, bad
//! quantities, the replay of a key it holds; see `EngineHandle::front`) and hands every
//! other purchase, confirm and cancel to the primary — **in batches**, over a few kept-
//! alive connections, so the primary pays one HTTP request for many purchases and feeds
//! them to its sequencer together.
//!
//! The batcher ([`Forwarder`]) queues operations (at most `queue_max`; past it 503
//! `unavailable` at once), and sends what is waiting as one `POST /admin/v1/forward`
//! whenever one of its `inflight_max` connection slots is free: at most `batch_max`
//! operations, after waiting at most `batch_wait` for more (0 by default: Tokio's timers
//! tick in milliseconds, so any wait costs a light load about a millisecond). Under load
//! the queue fills while every slot is busy, so batches grow by themselves; at rest an
//! operation goes alone, at once. A batch that has no answer within `timeout`, or whose primary cannot
//! be reached, answers each of its operations 503 `unavailable` with `Retry-After`:
//! the client retries with the same idempotency key, and whichever node is primary by
//! then answers the retry idempotently (after a failover the new primary has recovered
//! the old one's tail first, FAILOVER.md). An answer is only what the primary answered:
//! its purchases are durable (in quorum mode, replicated: the primary's quorum hold, `hold_and_mark`
//! wraps the batch route like every write) before the batch's answer is sent.

use std::time::{Duration, Instant};

use flashsale_core::{ErrorBody, ErrorCode, Order, PurchaseRequest};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::engine::OrderAnswer;
use crate::http::error::ApiError;

/// The primary's route that takes a batch (admin token required).
pub const FORWARD_ROUTE: &str = "/admin/v1/forward";

/// The most operations the primary takes in one batch.
pub const BATCH_ACCEPT_MAX: usize = 1024;

/// A batch of operations, as a secondary sends it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForwardBatch {
    #[schema(max_items = 1024)]
    pub ops: Vec<ForwardOp>,
}

/// One operation of a batch. `customer` is the caller's `Flashsale-Customer` (the
/// primary checks the order is theirs); `None` when the caller held the admin token.
/// (Fields it does not know are ignored: a newer secondary may send more.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum ForwardOp {
    Purchase {
        request: PurchaseRequest,
    },
    Confirm {
        #[schema(maximum = 9007199254740991u64)]
        id: u64,
        #[serde(default)]
        #[schema(min_length = 1, max_length = 128, pattern = r"\S")]
        customer: Option<String>,
    },
    Cancel {
        #[schema(maximum = 9007199254740991u64)]
        id: u64,
        #[serde(default)]
        #[schema(min_length = 1, max_length = 128, pattern = r"\S")]
        customer: Option<String>,
    },
}

/// The largest order id (2⁵³−1: every JSON client reads it exactly).
pub const ORDER_ID_MAX: u64 = (1 << 53) - 1;

/// The primary's answers, one per operation, in the batch's order (fields a secondary
/// does not know are ignored: a newer primary may send more during a rolling upgrade).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForwardAnswers {
    pub answers: Vec<ForwardAnswer>,
}

/// What the primary answered one operation: an order, or a problem.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForwardAnswer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Order>,
    /// The order is an idempotent replay (`Idempotent-Replayed: true`).
    #[serde(default)]
    pub replayed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<ErrorBody>,
}

impl ForwardAnswer {
    pub fn of(r: Result<OrderAnswer, ApiError>) -> ForwardAnswer {
        match r {
            Ok(a) => ForwardAnswer {
                order: Some(a.order),
                replayed: a.replayed,
                problem: None,
            },
            Err(e) => ForwardAnswer {
                order: None,
                replayed: false,
                problem: Some(*e.0),
            },
        }
    }

    /// The answer as the secondary gives it to its own client. The primary's problem is
    /// passed on as it is, except `not_primary`/`fenced`: the node asked is no longer
    /// the primary (a failover is under way), which is for the client a 503 to retry,
    /// not a reason to go looking for another node.
    fn into_result(self) -> Result<OrderAnswer, ApiError> {
        match (self.order, self.problem) {
            (Some(order), None) => Ok(OrderAnswer {
                order,
                replayed: self.replayed,
            }),
            (None, Some(p)) if matches!(p.code, ErrorCode::NotPrimary | ErrorCode::Fenced) => {
                Err(unavailable(format!(
                    "the primary changed while this request was forwarded ({}: {}); retry with the same idempotency key",
                    p.code.code(),
                    p.detail
                )))
            }
            (None, Some(p)) => Err(ApiError(Box::new(p))),
            _ => Err(ApiError::new(
                ErrorCode::Internal,
                "the primary's answer has neither an order nor a problem",
            )),
        }
    }
}

fn unavailable(detail: String) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, detail)
}

/// The bounds of forwarding (`--forward-*`).
#[derive(Clone, Debug)]
pub struct ForwardLimits {
    /// Operations per batch.
    pub batch_max: usize,
    /// How long a batch that is not full may wait for more operations.
    pub batch_wait: Duration,
    /// Operations waiting for a connection slot; past it 503 at once.
    pub queue_max: usize,
    /// Batches on their way at once (= connections to the primary).
    pub inflight_max: usize,
    /// From an operation's arrival to the primary's answer; past it 503.
    pub timeout: Duration,
}

impl Default for ForwardLimits {
    fn default() -> Self {
        ForwardLimits {
            batch_max: 128,
            batch_wait: Duration::ZERO,
            queue_max: 4096,
            inflight_max: 4,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Counts of forwarding (in `/metrics` and `/admin/v1/status`).
#[derive(Debug, Default)]
pub struct ForwardCounters {
    /// Operations sent to the primary.
    pub ops: std::sync::atomic::AtomicU64,
    /// Batches sent.
    pub batches: std::sync::atomic::AtomicU64,
    /// Operations answered 503 here: queue full, timed out, or the primary unreachable.
    pub failed: std::sync::atomic::AtomicU64,
}

struct Pending {
    primary: String,
    op: ForwardOp,
    queued: Instant,
    reply: oneshot::Sender<Result<OrderAnswer, ApiError>>,
}

/// The secondary's batcher: cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    tx: mpsc::Sender<Pending>,
    counters: std::sync::Arc<ForwardCounters>,
    timeout: Duration,
}

impl Forwarder {
    /// Starts the batcher (on the current Tokio runtime). It stops when every clone of
    /// the `Forwarder` is dropped.
    pub fn start(limits: ForwardLimits, admin_token: Option<String>) -> Forwarder {
        let (tx, rx) = mpsc::channel(limits.queue_max.max(1));
        let counters = std::sync::Arc::new(ForwardCounters::default());
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .pool_max_idle_per_host(limits.inflight_max)
            .tcp_nodelay(true)
            .build()
            .expect("an HTTP client without TLS always builds");
        let timeout = limits.timeout;
        tokio::spawn(batcher(rx, limits, http, admin_token, counters.clone()));
        Forwarder {
            tx,
            counters,
            timeout,
        }
    }

    pub fn counters(&self) -> &ForwardCounters {
        &self.counters
    }

    /// Sends `op` to the primary at `primary` (a base URL) and waits for its answer.
    pub async fn forward(&self, primary: String, op: ForwardOp) -> Result<OrderAnswer, ApiError> {
        use std::sync::atomic::Ordering::Relaxed;
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            primary,
            op,
            queued: Instant::now(),
            reply,
        };
        if self.tx.try_send(pending).is_err() {
            self.counters.failed.fetch_add(1, Relaxed);
            return Err(unavailable(
                "too many requests are waiting to be forwarded to the primary; retry with the same idempotency key".into(),
            ));
        }
        // The batcher answers every operation it takes (the timeout included); this
        // bound only guards against a batcher that is gone.
        match tokio::time::timeout(self.timeout + Duration::from_secs(1), answer).await {
            Ok(Ok(r)) => r,
            _ => {
                self.counters.failed.fetch_add(1, Relaxed);
                Err(unavailable(
                    "the forwarded request has no answer; retry with the same idempotency key"
                        .into(),
                ))
            }
        }
    }
}

async fn batcher(
    mut rx: mpsc::Receiver<Pending>,
    limits: ForwardLimits,
    http: reqwest::Client,
    admin_token: Option<String>,
    counters: std::sync::Arc<ForwardCounters>,
) {
    let slots = std::sync::Arc::new(Semaphore::new(limits.inflight_max.max(1)));
    let mut carry: Option<Pending> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // Wait for a free connection; what arrives meanwhile joins this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Let the handlers that are running now queue theirs (a yield, not a timer).
        tokio::task::yield_now().await;
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + limits.batch_wait;
        while batch.len() < limits.batch_max {
            let next = match rx.try_recv() {
                Ok(p) => p,
                Err(mpsc::error::TryRecvError::Empty) if !limits.batch_wait.is_zero() => {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(p)) => p,
                        _ => break,
                    }
                }
                Err(_) => break,
            };
            // One batch goes to one primary; an operation for another waits for the next.
            if next.primary != batch[0].primary {
                carry = Some(next);
                break;
            }
            batch.push(next);
        }
        let http = http.clone();
        let token = admin_token.clone();
        let counters = counters.clone();
        let timeout = limits.timeout;
        tokio::spawn(async move {
            send(&http, token.as_deref(), batch, timeout, &counters).await;
            drop(slot);
        });
    }
}

/// Sends one batch and hands each operation its answer.
async fn send(
    http: &reqwest::Client,
    token: Option<&str>,
    batch: Vec<Pending>,
    timeout: Duration,
    counters: &ForwardCounters,
) {
    use std::sync::atomic::Ordering::Relaxed;
    // Operations that waited their whole time in the queue are not sent.
    let now = Instant::now();
    let (live, stale): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .partition(|p| now.duration_since(p.queued) < timeout);
    fail_all(
        stale,
        "the request waited too long to be forwarded to the primary",
        counters,
    );
    let Some(first) = live.first() else { return };
    let left = timeout.saturating_sub(now.duration_since(first.queued));
    let url = format!("{}{FORWARD_ROUTE}", first.primary.trim_end_matches('/'));
    let (ops, waiting): (Vec<_>, Vec<_>) = live.into_iter().map(|p| (p.op, p.reply)).unzip();
    let n = ops.len();
    counters.ops.fetch_add(n as u64, Relaxed);
    counters.batches.fetch_add(1, Relaxed);
    let mut req = http.post(&url).timeout(left).json(&ForwardBatch { ops });
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    // What a failed batch's clients read names no internal address: reqwest's errors
    // carry the URL, so they go to the log (with the primary) and the detail without it.
    let mut cause = None;
    let answers = match req.send().await {
        Ok(r) if r.status().is_success() => match r.json::<ForwardAnswers>().await {
            Ok(a) if a.answers.len() == n => Ok(a.answers),
            Ok(a) => Err(format!(
                "the primary answered {} operations for {n}",
                a.answers.len()
            )),
            Err(e) => Err(format!(
                "the primary's answer could not be read: {}",
                e.without_url()
            )),
        },
        Ok(r) => {
            let status = r.status();
            let detail = r
                .json::<ErrorBody>()
                .await
                .map(|p| format!("{}: {}", p.code.code(), p.detail))
                .unwrap_or_default();
            Err(format!("the primary answered {status} {detail}"))
        }
        Err(e) if e.is_timeout() => Err(format!("the primary did not answer within {timeout:?}")),
        Err(e) => {
            let why = if e.is_connect() {
                "the primary could not be reached"
            } else {
                "the connection to the primary failed before its answer"
            };
            cause = Some(e);
            Err(why.to_string())
        }
    };
    match answers {
        Ok(answers) => {
            for (reply, a) in waiting.into_iter().zip(answers) {
                let _ = reply.send(a.into_result());
            }
        }
        Err(why) => {
            tracing::warn!(%why, ?cause, primary = first_url(&url), ops = n, "forwarded batch failed");
            counters.failed.fetch_add(n as u64, Relaxed);
            let detail = format!("{why}; retry with the same idempotency key");
            for reply in waiting {
                let _ = reply.send(Err(unavailable(detail.clone())));
            }
        }
    }
}

fn first_url(url: &str) -> &str {
    url.trim_end_matches(FORWARD_ROUTE)
}

fn fail_all(batch: Vec<Pending>, why: &str, counters: &ForwardCounters) {
    if batch.is_empty() {
        return;
    }
    counters
        .failed
        .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
    for p in batch {
        let _ = p.reply.send(Err(unavailable(format!(
            "{why}; retry with the same idempotency key"
        ))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_format_is_tagged_by_op() {
        let b = ForwardBatch {
            ops: vec![
                ForwardOp::Confirm {
                    id: 7,
                    customer: Some("c".into()),
                },
                ForwardOp::Cancel {
                    id: 8,
                    customer: None,
                },
            ],
        };
        let text = serde_json::to_string(&b).unwrap();
        assert_eq!(
            text,
            r#"{"ops":[{"op":"confirm","id":7,"customer":"c"},{"op":"cancel","id":8,"customer":null}]}"#
        );
        assert_eq!(serde_json::from_str::<ForwardBatch>(&text).unwrap(), b);
        assert!(serde_json::from_str::<ForwardBatch>(r#"{"ops":[{"op":"sell","id":1}]}"#).is_err());
    }

    #[test]
    fn a_lost_primary_is_a_retry_for_the_client_not_a_redirect() {
        let a = ForwardAnswer::of(Err(ApiError::from(flashsale_core::SellError::NotPrimary {
            primary: Some("http://x".into()),
        })));
        let e = a.into_result().unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unavailable);
        let a = ForwardAnswer::of(Err(ApiError::from(flashsale_core::SellError::SoldOut {
            sku: "a".into(),
            remaining: 0,
            requested: 1,
        })));
        assert_eq!(a.into_result().unwrap_err().code(), ErrorCode::SoldOut);
    }
}
