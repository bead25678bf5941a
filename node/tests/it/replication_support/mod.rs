//! Shared by the `replication_*` tests: real `redis-server`s, real `stock-node`
//! processes (primary and secondaries), a pub/sub-dropping proxy, a purchase load, and
//! the full-state comparison every test ends with.
#![allow(dead_code)] // each test file uses its own part

use crate::common;
pub mod drop_proxy;
pub mod node;
pub mod redis;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

pub use node::{ADMIN_TOKEN, Node};

/// The replication tests run one at a time: each starts Redis and several nodes, and the
/// machine has two cores.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a secondary may take to converge once the load stops.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// An HTTP client with a bounded time per request.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

/// `GET /admin/v1/status`.
/// A counter or gauge from the node's `/metrics` text (`name` may carry its labels:
/// `flashsale_purchases_total{code="ok"}`); `None` when the node has no such series.
pub async fn metric_opt(http: &reqwest::Client, node: &Node, name: &str) -> Option<f64> {
    common::metric_in(
        &common::metrics_text(http, node.url("/metrics")).await,
        name,
    )
}

/// [`metric_opt`] for a series the node must have.
pub async fn metric(http: &reqwest::Client, node: &Node, name: &str) -> f64 {
    metric_opt(http, node, name)
        .await
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

pub async fn status(http: &reqwest::Client, node: &Node) -> Value {
    http.get(node.url("/admin/v1/status"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `PUT /admin/v1/role`; panics unless 2xx.
pub async fn set_role(
    http: &reqwest::Client,
    node: &Node,
    role: &str,
    epoch: u64,
    primary_url: Option<&str>,
) {
    let body = serde_json::json!({"role": role, "epoch": epoch, "primaryUrl": primary_url});
    let r = http
        .put(node.url("/admin/v1/role"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let code = r.status();
    assert!(
        code.is_success(),
        "PUT role {role} on {}: {code} {}",
        node.addr,
        r.text().await.unwrap_or_default()
    );
}

/// A node's whole sale: every item, and every order by id (ids are the purchases'
/// WAL sequences, so `1..=appliedSeq` covers them all).
#[derive(Debug, PartialEq)]
pub struct SaleState {
    pub applied_seq: u64,
    pub items: Value,
    pub orders: BTreeMap<u64, Value>,
}

pub async fn sale_state(http: &reqwest::Client, node: &Node) -> SaleState {
    let applied_seq = status(http, node).await["appliedSeq"].as_u64().unwrap();
    let items = http
        .get(node.url("/v1/items"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Every order by its public GET, 16 at a time (one at a time, the debug build's
    // round trips made this most of a replication test's run).
    let orders: BTreeMap<u64, Value> = futures::stream::iter(1..=applied_seq)
        .map(|id| async move {
            let r = http
                .get(node.url(&format!("/v1/orders/{id}")))
                .bearer_auth(common::ADMIN_TOKEN)
                .send()
                .await
                .unwrap();
            match r.status() {
                reqwest::StatusCode::OK => Some((id, r.json().await.unwrap())),
                _ => None,
            }
        })
        .buffer_unordered(16)
        .filter_map(std::future::ready)
        .collect()
        .await;
    SaleState {
        applied_seq,
        items,
        orders,
    }
}

/// Waits until `secondary` has applied everything `primary` has durable, then
/// asserts both hold exactly the same sale (items and every order).
pub async fn assert_converged(
    http: &reqwest::Client,
    primary: &Node,
    secondary: &Node,
) -> SaleState {
    let target = status(http, primary).await["durableSeq"].as_u64().unwrap();
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let s = status(http, secondary).await;
        let applied = s["appliedSeq"].as_u64().unwrap();
        if applied >= target {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "secondary {} stuck at {applied} of {target} after {CONVERGE_TIMEOUT:?}: {s}",
            secondary.addr
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p = sale_state(http, primary).await;
    let s = sale_state(http, secondary).await;
    assert_eq!(p.applied_seq, s.applied_seq, "applied sequences differ");
    assert_eq!(
        p.items, s.items,
        "items differ between primary {} and secondary {}",
        primary.addr, secondary.addr
    );
    assert_eq!(p.orders.len(), s.orders.len(), "order counts differ");
    for (id, o) in &p.orders {
        assert_eq!(Some(o), s.orders.get(id), "order {id} differs");
    }
    p
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Acknowledged purchases: (order id, idempotency key).
    pub acked: Vec<(u64, String)>,
    pub confirmed: u64,
    pub cancelled: u64,
    pub refused: u64,
}

/// Purchases from `workers` concurrent clients against `primary` until `stop`
/// resolves; every third order confirmed, every seventh cancelled.
pub async fn purchase_load(
    http: reqwest::Client,
    primary_url: String,
    workers: usize,
    skus: &'static [&'static str],
    stop: tokio::sync::watch::Receiver<bool>,
) -> LoadReport {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let http = http.clone();
        let base = primary_url.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut rep = LoadReport::default();
            let mut i = 0u64;
            while !*stop.borrow() {
                i += 1;
                let key = format!("w{w}-{i}");
                let body = serde_json::json!({
                    "sku": skus[(i as usize + w) % skus.len()],
                    "quantity": 1 + (i % 2) as u32,
                    "customer": format!("c{w}-{}", i % 50),
                    "idempotencyKey": key,
                });
                let Ok(r) = http
                    .post(format!("{base}/v1/purchases"))
                    .json(&body)
                    .send()
                    .await
                else {
                    rep.refused += 1;
                    continue;
                };
                if r.status() != 201 {
                    rep.refused += 1;
                    continue;
                }
                let o: Value = r.json().await.unwrap();
                let id = o["id"].as_u64().unwrap();
                rep.acked.push((id, key));
                let then = if i.is_multiple_of(3) {
                    Some("confirm")
                } else if i.is_multiple_of(7) {
                    Some("cancel")
                } else {
                    None
                };
                if let Some(action) = then {
                    let r = http
                        .post(format!("{base}/v1/orders/{id}/{action}"))
                        .header("Flashsale-Customer", o["customer"].as_str().unwrap_or(""))
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status().is_success()) {
                        if action == "confirm" {
                            rep.confirmed += 1;
                        } else {
                            rep.cancelled += 1;
                        }
                    }
                }
            }
            rep
        }));
    }
    let mut all = LoadReport::default();
    for t in tasks {
        let r = t.await.unwrap();
        all.acked.extend(r.acked);
        all.confirmed += r.confirmed;
        all.cancelled += r.cancelled;
        all.refused += r.refused;
    }
    all
}

/// A primary and `n` secondaries on one Redis (`redis_urls[i]` for secondary i, so a
/// test can put a proxy in between), epoch 1, the sale configured on the primary.
pub async fn cluster(
    http: &reqwest::Client,
    dir: &std::path::Path,
    primary_redis: &str,
    secondary_redis: &[String],
    extra: &[&str],
) -> (Node, Vec<Node>) {
    let sale = node::sale_file(
        dir,
        &[
            ("a", 1_000_000, 0),
            ("b", 1_000_000, 0),
            ("c", 50, 0),
            ("d", 1, 0),
        ],
    );
    let mut args = vec![
        "--role",
        "primary",
        "--config",
        sale.to_str().unwrap(),
        "--node-name",
        "p",
    ];
    args.extend_from_slice(extra);
    let primary = node::start(&dir.join("p"), primary_redis, &args);
    set_role(http, &primary, "primary", 1, None).await;
    let mut secs = Vec::new();
    for (i, url) in secondary_redis.iter().enumerate() {
        let name = format!("s{i}");
        let mut args = vec!["--role", "standby", "--node-name", name.as_str()];
        args.extend_from_slice(extra);
        let s = node::start(&dir.join(&name), url, &args);
        set_role(http, &s, "secondary", 1, Some(&primary.url(""))).await;
        secs.push(s);
    }
    (primary, secs)
}
