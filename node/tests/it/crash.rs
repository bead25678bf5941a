//! Crash test: the real `stock-node` binary, a crowd of concurrent buyers over HTTP,
//! `kill -9` at a random moment (every fifth round SIGTERM), restart on the same data
//! directory — many rounds.
//! After every restart: every acknowledged order is there as acknowledged, idempotent
//! retries get the same order, and stock adds up (sold + held = live orders ≤ stock).
//! `CRASH_SEED=<n>` replays a run; the seed is printed on failure.

use crate::common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Node, purchase, sale_file};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const ROUNDS: usize = 20;
const BUYERS: usize = 12;
const CUSTOMERS: usize = 30;
/// (sku, stock, per-customer limit): small, so the sale sells out in the first rounds
/// and later rounds run on cancels giving stock back.
const ITEMS: [(&str, u64, u32); 2] = [("a", 40, 3), ("b", 30, 2)];
/// The whole test must end well within a minute even on a loaded 2-core machine.
const TEST_BUDGET: Duration = Duration::from_secs(90);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Acked {
    Reserved,
    Confirmed,
    Cancelled,
}

#[derive(Clone, Debug)]
struct Sale {
    id: u64,
    body: Value,
    state: Acked,
    /// A confirm or cancel was sent but its answer lost in a crash: either state is right.
    pending: Option<Acked>,
}

#[derive(Default)]
struct Ledger {
    /// Acknowledged purchases by idempotency key.
    acked: HashMap<String, Sale>,
    /// Purchases sent whose answer was lost: they may or may not have happened.
    unknown: Vec<(String, Value)>,
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn call(req: reqwest::RequestBuilder) -> Result<(u16, Value), reqwest::Error> {
    let res = req.send().await?;
    let status = res.status().as_u16();
    let body: Value = res.json().await?;
    Ok((status, body))
}

/// One buyer: buys, confirms, cancels and retries until told to stop.
async fn buyer(
    node: String,
    w: usize,
    round: usize,
    seed: u64,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let c = http();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let roll = rng.random_range(0..100);
        if roll < 70 {
            let (sku, _, _) = ITEMS[rng.random_range(0..ITEMS.len())];
            let key = format!("r{round}-w{w}-{n}");
            let customer = format!("c{}", rng.random_range(0..CUSTOMERS));
            let body = purchase(sku, rng.random_range(1..=2), &customer, &key);
            match call(c.post(format!("{node}/v1/purchases")).json(&body)).await {
                Ok((201, order)) => {
                    let id = order["id"].as_u64().expect("order id");
                    let sale = Sale {
                        id,
                        body,
                        state: Acked::Reserved,
                        pending: None,
                    };
                    ledger.lock().unwrap().acked.insert(key, sale);
                }
                Ok((status, err)) => {
                    assert!(
                        [409, 422, 503].contains(&status),
                        "purchase answered {status}: {err}"
                    );
                }
                Err(_) => ledger.lock().unwrap().unknown.push((key, body)),
            }
        } else if roll < 95 {
            let target = if roll < 83 {
                Acked::Confirmed
            } else {
                Acked::Cancelled
            };
            let pick = {
                let mut l = ledger.lock().unwrap();
                let open: Vec<_> = l
                    .acked
                    .iter()
                    .filter(|(_, s)| s.state == Acked::Reserved && s.pending.is_none())
                    .map(|(k, s)| (k.clone(), s.id))
                    .collect();
                if open.is_empty() {
                    continue;
                }
                let (key, id) = open[rng.random_range(0..open.len())].clone();
                l.acked.get_mut(&key).unwrap().pending = Some(target);
                (key, id)
            };
            let verb = if target == Acked::Confirmed {
                "confirm"
            } else {
                "cancel"
            };
            let answer = call(
                c.post(format!("{node}/v1/orders/{}/{verb}", pick.1))
                    .bearer_auth(common::ADMIN_TOKEN),
            )
            .await;
            let mut l = ledger.lock().unwrap();
            let sale = l.acked.get_mut(&pick.0).unwrap();
            match answer {
                Ok((200, _)) => (sale.state, sale.pending) = (target, None),
                Ok((status, err)) => panic!("{verb} of a reserved order answered {status}: {err}"),
                Err(_) => {} // stays pending: the change may or may not be durable
            }
        } else {
            let pick = {
                let l = ledger.lock().unwrap();
                let keys: Vec<_> = l
                    .acked
                    .iter()
                    .map(|(k, s)| (k.clone(), s.id, s.body.clone()))
                    .collect();
                if keys.is_empty() {
                    continue;
                }
                keys[rng.random_range(0..keys.len())].clone()
            };
            if let Ok((status, order)) =
                call(c.post(format!("{node}/v1/purchases")).json(&pick.2)).await
            {
                assert_eq!(
                    (status, order["id"].as_u64()),
                    (201, Some(pick.1)),
                    "replay of {}",
                    pick.0
                );
            }
        }
    }
}

/// Everything a restarted node must show, checked against what clients were told.
async fn verify(node: &Node, ledger: &Mutex<Ledger>) {
    let c = http();
    // Purchases whose answer was lost: retry them; whatever the node says now stands.
    let unknown = std::mem::take(&mut ledger.lock().unwrap().unknown);
    for (key, body) in unknown {
        let (status, order) = call(c.post(node.url("/v1/purchases")).json(&body))
            .await
            .unwrap();
        if status == 201 {
            let sale = Sale {
                id: order["id"].as_u64().unwrap(),
                body,
                state: Acked::Reserved,
                pending: None,
            };
            ledger.lock().unwrap().acked.insert(key, sale);
        }
    }
    let acked: Vec<(String, Sale)> = ledger
        .lock()
        .unwrap()
        .acked
        .iter()
        .map(|(k, s)| (k.clone(), s.clone()))
        .collect();
    let mut resolved = Vec::new();
    for (key, sale) in &acked {
        let (status, order) = call(
            c.get(node.url(&format!("/v1/orders/{}", sale.id)))
                .bearer_auth(common::ADMIN_TOKEN),
        )
        .await
        .unwrap();
        assert_eq!(
            status, 200,
            "acknowledged order {} ({key}) lost: {order}",
            sale.id
        );
        for f in ["sku", "quantity", "customer"] {
            assert_eq!(order[f], sale.body[f], "order {} field {f}", sale.id);
        }
        assert_eq!(order["idempotencyKey"], key.as_str());
        let state = match order["state"].as_str().unwrap() {
            "reserved" => Acked::Reserved,
            "confirmed" => Acked::Confirmed,
            "cancelled" => Acked::Cancelled,
            other => panic!("order {} is {other}", sale.id),
        };
        assert!(
            state == sale.state || Some(state) == sale.pending,
            "order {} ({key}) acknowledged {:?} (pending {:?}) but is {state:?}",
            sale.id,
            sale.state,
            sale.pending
        );
        resolved.push((key.clone(), state));
    }
    {
        let mut l = ledger.lock().unwrap();
        for (key, state) in resolved {
            let s = l.acked.get_mut(&key).unwrap();
            (s.state, s.pending) = (state, None);
        }
    }
    // Idempotent retries of acknowledged keys get the very same order.
    for (key, sale) in acked.iter().take(25) {
        let (status, order) = call(c.post(node.url("/v1/purchases")).json(&sale.body))
            .await
            .unwrap();
        assert_eq!(
            (status, order["id"].as_u64()),
            (201, Some(sale.id)),
            "replay of {key}: {order}"
        );
    }
    // Stock adds up: per item, sold and held equal the live orders the node holds.
    let (_, status) = call(c.get(node.url("/admin/v1/status")).bearer_auth(ADMIN_TOKEN))
        .await
        .unwrap();
    let applied_seq = status["appliedSeq"].as_u64().unwrap();
    let orders: Vec<Value> = futures::stream::iter(1..=applied_seq)
        .map(|id| {
            let c = c.clone();
            let url = node.url(&format!("/v1/orders/{id}"));
            async move {
                call(c.get(url).bearer_auth(common::ADMIN_TOKEN))
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(16)
        .filter_map(|(s, o)| async move { (s == 200).then_some(o) })
        .collect()
        .await;
    let (_, items) = call(c.get(node.url("/v1/items"))).await.unwrap();
    for item in items.as_array().unwrap() {
        let sku = item["sku"].as_str().unwrap();
        let n = |f: &str| item[f].as_u64().unwrap();
        let live = |state: &str| -> u64 {
            orders
                .iter()
                .filter(|o| o["sku"] == sku && o["state"] == state)
                .map(|o| o["quantity"].as_u64().unwrap())
                .sum()
        };
        assert!(
            n("sold") + n("held") <= n("stock"),
            "{sku} oversold: {item}"
        );
        assert_eq!(n("sold") + n("held") + n("remaining"), n("stock"), "{item}");
        assert_eq!(
            (n("sold"), n("held")),
            (live("confirmed"), live("reserved")),
            "{sku}: {item}"
        );
    }
    let metrics = common::metrics_text(&c, node.url("/metrics")).await;
    assert!(metrics.contains("flashsale_oversold 0\n"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sales_survive_kill_9_and_nothing_is_oversold() {
    let started = Instant::now();
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test seed: CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let sale = sale_file(dir.path(), &ITEMS);
    let data = dir.path().join("data");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut kills_mid_write = 0;
    for round in 0..ROUNDS {
        assert!(
            started.elapsed() < TEST_BUDGET,
            "over the time budget after {round} rounds (seed {seed})"
        );
        // Only the first start gets the sale file: later rounds must come back from the WAL.
        let mut node = if round == 0 {
            Node::start(&data, &["--config", sale.to_str().unwrap()])
        } else {
            Node::start(&data, &[])
        };
        if round > 0 {
            verify(&node, &ledger).await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let buyers: Vec<_> = (0..BUYERS)
            .map(|w| {
                let s = rng.random();
                tokio::spawn(buyer(
                    node.url(""),
                    w,
                    round,
                    s,
                    ledger.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(30..400))).await;
        // Every fifth round is a graceful stop instead: SIGTERM under load must drain,
        // sync and exit 0, losing nothing either.
        if round % 5 == 4 {
            let status = node.stop();
            assert!(
                status.success(),
                "SIGTERM under load: {status} (seed {seed})"
            );
        } else {
            node.kill9();
        }
        stop.store(true, Ordering::Relaxed);
        for b in buyers {
            b.await.expect("a buyer saw a wrong answer");
        }
        if !ledger.lock().unwrap().unknown.is_empty() {
            kills_mid_write += 1;
        }
    }
    let node = Node::start(&data, &[]);
    verify(&node, &ledger).await;
    let acked = ledger.lock().unwrap().acked.len();
    eprintln!(
        "crash test: {ROUNDS} rounds ({} kill -9, {} SIGTERM), {acked} acknowledged orders checked, {kills_mid_write} stops with purchases in flight, {:?}",
        ROUNDS - ROUNDS / 5,
        ROUNDS / 5,
        started.elapsed()
    );
    assert!(acked >= 20, "too few sales to mean anything: {acked}");
    assert!(
        kills_mid_write >= ROUNDS / 4,
        "kills rarely hit in-flight purchases: {kills_mid_write}"
    );
}
