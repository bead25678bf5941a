//! The selling lease on the node (FAILOVER.md I1): a primary acknowledges no write
//! without an unexpired lease for its epoch, checked when the write is decided and again
//! after its sync, before the answer; a step-down is never logged (I3).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use flashsale_core::admin::{LeaseMode, LeaseRenewal, Role, RoleAssignment};
use flashsale_core::wal::RecordBody;
use flashsale_core::{ItemSpec, PurchaseRequest, SaleConfig, SellError};
use http_body_util::BodyExt;
use stock_node::admission::Admission;
use stock_node::engine::{Engine, EngineHandle, EngineOptions};
use stock_node::http::{AppState, Limits, app};
use stock_node::lease::{Lease, ManualMonotonic};
use stock_node::metrics::Metrics;
use stock_node::wal::{MemDir, read_frames};
use tower::ServiceExt;

const LEASE_MS: u64 = 5_000;

struct Node {
    engine: EngineHandle,
    disk: MemDir,
    lease: Arc<Lease>,
    clock: Arc<ManualMonotonic>,
}

/// A primary at epoch 1 with a sale of 10 `tee`, its lease required and not granted.
async fn primary() -> Node {
    let disk = MemDir::new();
    let clock = Arc::new(ManualMonotonic::new(1_000));
    let lease = Arc::new(Lease::new(LeaseMode::Required, clock.clone()));
    let engine = Engine::open(EngineOptions {
        dir: Some(Arc::new(disk.clone())),
        lease: lease.clone(),
        ..Default::default()
    })
    .unwrap();
    engine
        .set_role(RoleAssignment {
            role: Role::Primary,
            epoch: 1,
            primary_url: None,
        })
        .await
        .unwrap();
    let node = Node {
        engine,
        disk,
        lease,
        clock,
    };
    node.grant();
    node.engine
        .configure(SaleConfig {
            name: "s".into(),
            items: vec![ItemSpec {
                sku: "tee".into(),
                stock: 10,
                per_customer_limit: 0,
            }],
            starts_at_ms: None,
            ends_at_ms: None,
            reservation_ttl_ms: 600_000,
            durability: Default::default(),
        })
        .await
        .unwrap();
    node
}

impl Node {
    /// The operator's renewal: a fresh token, `LEASE_MS` from now.
    fn grant(&self) {
        let token = self.lease.token();
        self.lease
            .renew(
                self.engine.positions().epoch,
                &LeaseRenewal {
                    epoch: self.engine.positions().epoch,
                    token,
                    duration_ms: LEASE_MS,
                },
            )
            .unwrap();
    }

    /// Parked as a standby at epoch 2 (what a failover does to the old primary).
    async fn park(&self) {
        self.engine
            .set_role(RoleAssignment {
                role: Role::Standby,
                epoch: 2,
                primary_url: None,
            })
            .await
            .unwrap();
    }

    /// The node's HTTP API over this engine (admin token `t`, no admission limits).
    fn http(&self) -> AppState {
        AppState::new(
            self.engine.clone(),
            Admission::new(0, 0, 64),
            Metrics::new(self.engine.metrics()),
            Some("t".into()),
            Limits::default(),
        )
    }

    fn wal_bytes(&self) -> Vec<u8> {
        self.disk.with_files(|f| {
            f.iter()
                .filter(|(n, _)| n.starts_with("wal-"))
                .flat_map(|(_, f)| f.data.clone())
                .collect()
        })
    }
}

fn buy(key: &str) -> PurchaseRequest {
    PurchaseRequest {
        sku: "tee".into(),
        quantity: 1,
        customer: key.into(),
        idempotency_key: key.into(),
    }
}

#[tokio::test]
async fn a_primary_without_its_lease_acknowledges_nothing_and_writes_nothing() {
    let n = primary().await;
    let sold = n.engine.purchase(buy("k1")).await.unwrap();
    n.clock.advance(LEASE_MS);
    let before = n.wal_bytes();
    for attempt in [
        n.engine.purchase(buy("k2")).await.map(|_| ()),
        n.engine.purchase(buy("k1")).await.map(|_| ()),
        n.engine.confirm(sold.id).await.map(|_| ()),
        n.engine.cancel(sold.id).await.map(|_| ()),
    ] {
        assert!(
            matches!(attempt, Err(SellError::Fenced(_))),
            "without a lease: {attempt:?}"
        );
    }
    // No expiry either: a fenced primary writes nothing a new one would not have.
    n.clock.advance(1);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(n.wal_bytes(), before, "the WAL changed without a lease");
    n.grant();
    assert_eq!(n.engine.purchase(buy("k1")).await.unwrap().id, sold.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_ends_between_decide_and_answer_fences_the_answer_not_the_record() {
    let n = Arc::new(primary().await);
    n.disk.hold_syncs(true);
    let buying = {
        let n = n.clone();
        tokio::spawn(async move { n.engine.purchase(buy("late")).await })
    };
    let t0 = std::time::Instant::now();
    while n.disk.syncs_waiting() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Decided under the lease; the sync takes longer than what was left of it.
    n.clock.advance(LEASE_MS);
    n.disk.hold_syncs(false);
    let answer = buying.await.unwrap();
    assert!(
        matches!(answer, Err(SellError::Fenced(ref m)) if m.contains("not")),
        "{answer:?}"
    );
    // The record is durable: a tail recovery carries it, and the retry finds it there.
    let durable = n.engine.positions().durable_seq;
    let frames = read_frames(&n.disk, 1, durable, 1 << 20).unwrap();
    let mut rest = &frames.bytes[..];
    let mut keys = Vec::new();
    while !rest.is_empty() {
        let (rec, used) = flashsale_core::wal::decode_record(rest).unwrap();
        if let RecordBody::Purchase {
            idempotency_key, ..
        } = rec.body
        {
            keys.push(idempotency_key);
        }
        rest = &rest[used..];
    }
    assert_eq!(keys, ["late"]);
}

#[tokio::test]
async fn a_step_down_is_not_logged_and_stops_selling_at_once() {
    let n = primary().await;
    for i in 0..5 {
        n.engine.purchase(buy(&format!("k{i}"))).await.unwrap();
    }
    let before = n.wal_bytes();
    n.park().await;
    assert_eq!(n.wal_bytes(), before, "a demotion wrote to the log");
    assert_eq!(n.lease.remaining_ms(), 0, "the lease goes with the role");
    assert!(matches!(
        n.engine.purchase(buy("k9")).await,
        Err(SellError::NotPrimary { .. })
    ));
}

#[tokio::test]
async fn readiness_follows_the_lease() {
    let n = primary().await;
    let state = n.http();
    let ready = || async {
        let res = app(state.clone())
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    assert_eq!(ready().await.0, StatusCode::OK);
    n.clock.advance(LEASE_MS);
    let (status, body) = ready().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("lease"), "{body}");
    // Renewed through the admin API with the token its status hands out.
    let token = n.lease.token();
    let renew = serde_json::json!({"epoch": 1, "token": token, "durationMs": LEASE_MS});
    let res = app(state.clone())
        .oneshot(
            Request::put("/admin/v1/lease")
                .header("authorization", "Bearer t")
                .header("content-type", "application/json")
                .body(Body::from(renew.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(ready().await.0, StatusCode::OK);
    // A token of another run of the node is refused, with a fresh one to use.
    let stale =
        serde_json::json!({"epoch": 1, "token": "00000000000000ff:5", "durationMs": LEASE_MS});
    let res = app(state.clone())
        .oneshot(
            Request::put("/admin/v1/lease")
                .header("authorization", "Bearer t")
                .header("content-type", "application/json")
                .body(Body::from(stale.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let body: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["code"], "fenced");
    assert!(body["lease"]["token"].as_str().unwrap().contains(':'));
}

/// Only the sale's own state says "sold out" while units are held, or "no such order":
/// the primary holding its lease. A primary whose lease lapsed (a new one may be
/// selling: an expiry there may have freed a unit this very key bought) and a parked
/// standby (its copy, in a failover, may lack an order the old primary acknowledged)
/// answer 503 instead, and the client retries with the same key. Before, both answered
/// from their own state: 409 `sold_out` to a retry, 404 `unknown_order` to a confirm.
#[tokio::test]
async fn only_the_leased_primary_says_sold_out_or_unknown_order() {
    let n = primary().await;
    for i in 0..10 {
        n.engine.purchase(buy(&format!("k{i}"))).await.unwrap();
    }
    let state = n.http();
    let send = |req: Request<Body>| {
        let state = state.clone();
        async move {
            let res = app(state).oneshot(req).await.unwrap();
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            (
                status.as_u16(),
                body["code"].as_str().unwrap_or("").to_string(),
            )
        }
    };
    let retry = || {
        Request::post("/v1/purchases")
            .header("content-type", "application/json")
            .body(Body::from(
                r#"{"sku":"tee","quantity":1,"customer":"late","idempotencyKey":"late"}"#,
            ))
            .unwrap()
    };
    let confirm = || {
        Request::post("/v1/orders/999/confirm")
            .header("flashsale-customer", "late")
            .body(Body::empty())
            .unwrap()
    };
    let read = |id: u64| {
        Request::get(format!("/v1/orders/{id}"))
            .header("flashsale-customer", "late")
            .body(Body::empty())
            .unwrap()
    };
    // The primary with its lease: its state is the sale's.
    assert_eq!(send(retry()).await, (409, "sold_out".into()));
    assert_eq!(send(confirm()).await, (404, "unknown_order".into()));
    assert_eq!(send(read(999)).await, (404, "unknown_order".into()));
    // Its lease lapsed.
    n.clock.advance(LEASE_MS);
    assert_eq!(send(retry()).await, (503, "fenced".into()));
    let fenced = || {
        let state = state.clone();
        async move {
            let res = app(state)
                .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
                .await
                .unwrap();
            let text = res.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8_lossy(&text)
                .lines()
                .find_map(|l| l.strip_prefix("flashsale_fenced_answers_total "))
                .map(|v| v.trim().parse::<u64>().unwrap())
                .expect("flashsale_fenced_answers_total in /metrics")
        }
    };
    let before = fenced().await;
    assert_eq!(send(confirm()).await, (503, "fenced".into()));
    assert_eq!(fenced().await, before + 1, "the fenced confirm is counted");
    assert_eq!(send(read(999)).await, (503, "unavailable".into()));
    // An order it has, of another customer, still reads as missing.
    assert_eq!(send(read(3)).await, (404, "unknown_order".into()));
    // Parked as a standby.
    n.park().await;
    assert_eq!(send(retry()).await, (503, "not_primary".into()));
    assert_eq!(send(confirm()).await, (503, "not_primary".into()));
    assert_eq!(send(read(999)).await, (503, "unavailable".into()));
    assert_eq!(send(read(3)).await, (404, "unknown_order".into()));
}
