//! A secondary as a front door (`stock_node::forward`): real `redis-server`, real
//! `stock-node` processes. It answers from its copy what its copy can answer, forwards
//! the rest to the primary in batches, acknowledges only what the primary made durable,
//! stays within its bounds, and turns a lost primary into a 503 whose same-key retry is
//! answered idempotently.

use crate::replication_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use replication_support::redis::Redis;
use replication_support::*;
use serde_json::{Value, json};

fn buy(sku: &str, quantity: u32, customer: &str, key: &str) -> Value {
    json!({"sku": sku, "quantity": quantity, "customer": customer, "idempotencyKey": key})
}

/// One purchase, retried with the same key on a 503 or a lost connection (as a shop
/// would) until another answer or `deadline`: (status, body, the ids of every 201 seen).
async fn buy_until_answered(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    deadline: Instant,
) -> (u16, Value, Vec<u64>) {
    let mut ids = Vec::new();
    loop {
        match http
            .post(format!("{url}/v1/purchases"))
            .json(body)
            .send()
            .await
        {
            Ok(r) => {
                let status = r.status().as_u16();
                let retry_after = r.headers().get("retry-after").cloned();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                if status == 201 {
                    ids.push(v["id"].as_u64().unwrap());
                }
                if status != 503 {
                    return (status, v, ids);
                }
                assert!(retry_after.is_some(), "a 503 without Retry-After: {v}");
                assert_eq!(v["code"], "unavailable", "a front door's 503: {v}");
                // A public answer names no node's internal address (they are all on
                // loopback here).
                assert!(
                    !v["detail"].as_str().unwrap_or("").contains("127.0.0.1"),
                    "a 503 that names an internal address: {v}"
                );
            }
            Err(_) if Instant::now() < deadline => {}
            Err(e) => panic!("no answer for {body} by the deadline: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "{body}: still 503 at the deadline"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn load_of(status: &Value) -> (u64, u64, u64) {
    let l = &status["load"];
    (
        l["forwarded"].as_u64().unwrap(),
        l["forwardBatches"].as_u64().unwrap(),
        l["forwardFailed"].as_u64().unwrap(),
    )
}

/// Every acknowledged (key → id) is on `node` with the same id and key.
async fn assert_acks_present(http: &reqwest::Client, node: &Node, acked: &BTreeMap<String, u64>) {
    let state = sale_state(http, node).await;
    for (key, id) in acked {
        let o = state
            .orders
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged order {id} ({key}) is missing"));
        assert_eq!(o["idempotencyKey"], key.as_str(), "order {id}: {o}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondaries_are_front_doors_that_forward_in_batches() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let http = client();
    let (mut primary, secondaries) = cluster(
        &http,
        dir.path(),
        &redis.url(),
        &[redis.url(), redis.url()],
        &[],
    )
    .await;
    assert_converged(&http, &primary, &secondaries[0]).await;
    assert_converged(&http, &primary, &secondaries[1]).await;
    let doors: Vec<String> = secondaries.iter().map(|s| s.url("")).collect();

    // The crowd through the two secondaries only: 150 buyers for the 50 units of `c`,
    // 300 purchases of `a` beside them; each retries its own key on a 503.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for w in 0..48usize {
        let (http, doors) = (http.clone(), doors.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in 0..10usize {
                let n = w * 10 + i;
                let (sku, key) = if n % 3 == 0 {
                    ("c", format!("c-{n}"))
                } else {
                    ("a", format!("a-{n}"))
                };
                let body = buy(sku, 1, &format!("cust-{n}"), &key);
                let door = &doors[n % doors.len()];
                let (status, v, ids) = buy_until_answered(&http, door, &body, deadline).await;
                seen.push((key, sku, status, v, ids));
            }
            seen
        }));
    }
    let mut acked = BTreeMap::new();
    let (mut c_acked, mut c_sold_out) = (0, 0);
    for t in tasks {
        for (key, sku, status, v, ids) in t.await.unwrap() {
            // Every 201 this key ever got names the same order.
            assert!(ids.windows(2).all(|w| w[0] == w[1]), "{key}: ids {ids:?}");
            match (sku, status) {
                (_, 201) => {
                    acked.insert(key, ids[0]);
                    if sku == "c" {
                        c_acked += 1;
                    }
                }
                ("c", 409) if v["code"] == "sold_out" => c_sold_out += 1,
                _ => panic!("{key}: {status} {v}"),
            }
        }
    }
    println!(
        "crowd through 2 secondaries: {} acked, c: {c_acked} acked, {c_sold_out} sold out",
        acked.len()
    );
    assert_eq!(c_acked, 50, "the 50 units of c are sold exactly once");
    assert_eq!(c_sold_out, 160 - 50);
    // Batches: the secondaries forwarded, and under this crowd in fewer requests than
    // purchases.
    let mut total = (0, 0);
    for s in &secondaries {
        let (ops, batches, failed) = load_of(&status(&http, s).await);
        println!(
            "secondary {}: {ops} forwarded in {batches} batches, {failed} failed",
            s.addr
        );
        assert!(ops > 0 && batches > 0, "{}: nothing forwarded", s.addr);
        total = (total.0 + ops, total.1 + batches);
    }
    assert!(
        total.1 < total.0,
        "{} operations went in {} batches: no batching",
        total.0,
        total.1
    );
    let p = status(&http, &primary).await;
    assert!(
        p["load"]["answered"]["forward"].as_u64().unwrap() > 0,
        "the primary counts the batches it answered: {p}"
    );
    // Each purchase counted once, where the client got its answer: summed over the
    // sale's nodes (as a dashboard does), the 201s are the crowd's acknowledgements.
    let mut ok = 0;
    for n in std::iter::once(&primary).chain(secondaries.iter()) {
        ok += metric_opt(&http, n, "flashsale_purchases_total{code=\"ok\"}")
            .await
            .unwrap_or(0.0) as u64;
    }
    assert_eq!(
        ok,
        acked.len() as u64,
        "purchases_total{{ok}} over the nodes"
    );
    assert_acks_present(&http, &primary, &acked).await;
    let items: Value = http
        .get(primary.url("/v1/items/c"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        items["held"].as_u64().unwrap() + items["sold"].as_u64().unwrap(),
        50,
        "{items}"
    );

    // `d` (1 unit) sold and confirmed: nothing held, so a copy's sold out is final.
    let r = http
        .post(primary.url("/v1/purchases"))
        .json(&buy("d", 1, "dee", "d-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let d_id = r.json::<Value>().await.unwrap()["id"].as_u64().unwrap();
    let r = http
        .post(primary.url(&format!("/v1/orders/{d_id}/confirm")))
        .header("Flashsale-Customer", "dee")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // What a secondary's copy answers itself: nothing more is forwarded for these.
    let s = &secondaries[1];
    assert_converged(&http, &primary, s).await;
    let before = load_of(&status(&http, s).await).0;
    let (key, id) = acked.iter().find(|(k, _)| k.starts_with("a-")).unwrap();
    let n: usize = key[2..].parse().unwrap();
    let r = http
        .post(s.url("/v1/purchases"))
        .json(&buy("a", 1, &format!("cust-{n}"), key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(
        r.json::<Value>().await.unwrap()["id"],
        *id,
        "the replay names the order"
    );
    let refusals = [
        (
            buy("a", 2, &format!("cust-{n}"), key),
            409,
            "idempotency_conflict",
        ),
        (buy("zz", 1, "x", "zz-1"), 404, "unknown_item"),
        (buy("d", 1, "x", "d-late"), 409, "sold_out"),
    ];
    for (body, code, what) in refusals {
        let r = http
            .post(s.url("/v1/purchases"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), code, "{body}");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], what);
    }
    // An id no order can have, a customer id no purchase could have: answered here too
    // (in a batch the primary would refuse it whole, and the purchases with it).
    let r = http
        .post(s.url("/v1/orders/9007199254740992/confirm"))
        .header("Flashsale-Customer", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .post(s.url(&format!("/v1/orders/{id}/cancel")))
        .header("Flashsale-Customer", "x".repeat(200))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        load_of(&status(&http, s).await).0,
        before,
        "answered locally, not forwarded"
    );
    // `c` is sold out with units held (unconfirmed: an expiry or a cancel may free one
    // the copy has not seen): the primary decides.
    let r = http
        .post(s.url("/v1/purchases"))
        .json(&buy("c", 1, "x", "c-late"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "sold_out");
    assert_eq!(
        load_of(&status(&http, s).await).0,
        before + 1,
        "sold out with holds: forwarded"
    );
    let before = before + 1;

    // Confirm and cancel through a secondary: forwarded, as the order's customer.
    let owner = format!("cust-{n}");
    let r = http
        .post(s.url(&format!("/v1/orders/{id}/confirm")))
        .header("Flashsale-Customer", "someone-else")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "another customer's order");
    let r = http
        .post(s.url(&format!("/v1/orders/{id}/confirm")))
        .header("Flashsale-Customer", &owner)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "confirmed");
    let r = http
        .post(s.url(&format!("/v1/orders/{id}/cancel")))
        .header("Flashsale-Customer", &owner)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "a confirmed order cannot be cancelled");
    assert_eq!(load_of(&status(&http, s).await).0, before + 3);

    // Acknowledged means durable on the primary: kill -9 it, start it again.
    primary.restart();
    assert_acks_present(&http, &primary, &acked).await;
    let o: Value = http
        .get(primary.url(&format!("/v1/orders/{id}")))
        .header("Flashsale-Customer", &owner)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(o["state"], "confirmed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_answers_a_batch_in_order() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let http = client();
    let (primary, _secondaries) = cluster(&http, dir.path(), &redis.url(), &[], &[]).await;
    let route = primary.url("/admin/v1/forward");
    let op = |body: Value| json!({"op": "purchase", "request": body});
    let batch = json!({"ops": [
        op(buy("a", 1, "x", "k1")),
        op(buy("zz", 1, "x", "k2")),
        op(buy("d", 1, "x", "k3")),
        op(buy("d", 1, "y", "k4")),
        op(buy("a", 1, "x", "k1")),
        {"op": "confirm", "id": 999, "customer": "x"},
    ]});
    let r = http.post(&route).json(&batch).send().await.unwrap();
    assert_eq!(r.status(), 401, "the batch route needs the admin token");
    let r = http
        .post(&route)
        .bearer_auth(ADMIN_TOKEN)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let a: Value = r.json().await.unwrap();
    let answers = a["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 6, "{a}");
    let first = answers[0]["order"]["id"].as_u64().unwrap();
    assert_eq!(answers[0]["order"]["idempotencyKey"], "k1");
    assert_eq!(answers[1]["problem"]["code"], "unknown_item");
    // `d` has one unit: exactly one of the two buyers in the same batch gets it.
    let d: Vec<&Value> = answers[2..4].iter().collect();
    assert_eq!(
        d.iter().filter(|x| x["order"].is_object()).count(),
        1,
        "{a}"
    );
    assert_eq!(
        d.iter()
            .filter(|x| x["problem"]["code"] == "sold_out")
            .count(),
        1,
        "{a}"
    );
    assert_eq!(
        answers[4]["order"]["id"], first,
        "the same key in one batch: one order"
    );
    assert_eq!(answers[5]["problem"]["code"], "unknown_order");
    // Bad batches are refused whole, naming what was wrong.
    let too_many = json!({"ops": vec![op(buy("a", 1, "x", "k")); 1025]});
    let r = http
        .post(&route)
        .bearer_auth(ADMIN_TOKEN)
        .json(&too_many)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "ops");
    let r = http
        .post(&route)
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"ops": [{"op": "sell"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_is_bounded_and_a_lost_primary_is_a_retry() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let http = client();
    let bounds = [
        "--forward-connections",
        "1",
        "--forward-queue-max",
        "2",
        "--forward-batch-max",
        "1",
        "--forward-timeout-ms",
        "800",
    ];
    let (primary, secondaries) =
        cluster(&http, dir.path(), &redis.url(), &[redis.url()], &bounds).await;
    let s = &secondaries[0];
    assert_converged(&http, &primary, s).await;

    // A frozen primary: one operation on the wire, two queued, the rest refused at once;
    // the three that waited are refused when their time is up. Every refusal is a 503
    // with Retry-After.
    primary.signal("-STOP");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (http, url) = (http.clone(), s.url("/v1/purchases"));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30 * i)).await;
            let r = http
                .post(url)
                .json(&buy("a", 1, "f", &format!("frozen-{i}")))
                .send()
                .await
                .unwrap();
            let after = started.elapsed();
            let retry = r.headers().contains_key("retry-after");
            (
                r.status().as_u16(),
                retry,
                r.json::<Value>().await.unwrap(),
                after,
            )
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    primary.signal("-CONT");
    // Retried with the same keys once the primary is back: each answered, once — the
    // ones the frozen primary still took (their bytes were on the wire) come back as
    // the same orders.
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..6 {
        let key = format!("frozen-{i}");
        let (status, v, _) =
            buy_until_answered(&http, &s.url(""), &buy("a", 1, "f", &key), deadline).await;
        assert_eq!(status, 201, "{key}: {v}");
    }
    let state = sale_state(&http, &primary).await;
    let frozen = state
        .orders
        .values()
        .filter(|o| o["idempotencyKey"].as_str().unwrap().starts_with("frozen-"))
        .count();
    assert_eq!(frozen, 6, "six keys, six orders");
    let fast = answers
        .iter()
        .filter(|(_, _, _, after)| *after < Duration::from_millis(600))
        .count();
    for (status, retry, body, after) in &answers {
        println!(
            "frozen primary: {status} after {after:?}: {}",
            body["detail"]
        );
        assert_eq!((*status, *retry), (503, true), "{body}");
        assert_eq!(body["code"], "unavailable");
        assert!(
            *after < Duration::from_secs(3),
            "no answer within the bound"
        );
    }
    assert!(
        fast >= 2,
        "over the queue bound, refused at once: {answers:?}"
    );
    assert!(
        6 - fast >= 2,
        "the queued ones waited for their timeout: {answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_mid_batch_is_a_retry_answered_idempotently() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let http = client();
    let (mut primary, secondaries) =
        cluster(&http, dir.path(), &redis.url(), &[redis.url()], &[]).await;
    let s = &secondaries[0];
    assert_converged(&http, &primary, s).await;
    // The primary killed under a crowd that forwards: 503s, then — once it is back —
    // the same keys answered idempotently: every acknowledged order there once.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for w in 0..8usize {
        let (http, url, stopped) = (http.clone(), s.url(""), stopped.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut i = 0;
            while !*stopped.borrow() {
                i += 1;
                let key = format!("kill-{w}-{i}");
                let (status, v, ids) =
                    buy_until_answered(&http, &url, &buy("a", 1, "k", &key), deadline).await;
                assert_eq!(status, 201, "{key}: {v}");
                assert!(ids.windows(2).all(|w| w[0] == w[1]), "{key}: ids {ids:?}");
                got.push((key, ids[0]));
            }
            got
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    primary.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    primary.restart();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.send(true).unwrap();
    let mut acked = BTreeMap::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let failed = load_of(&status(&http, s).await).2;
    println!(
        "primary killed mid-crowd: {} acked, {failed} forwarded ops answered 503",
        acked.len()
    );
    assert!(failed > 0, "the kill was not felt by the crowd");
    assert_acks_present(&http, &primary, &acked).await;
    // Nothing sold twice: `a`'s sold + held are exactly the units of its live orders,
    // and every acknowledged key has one order.
    let state = sale_state(&http, &primary).await;
    let live: u64 = state
        .orders
        .values()
        .filter(|o| {
            o["sku"] == "a" && matches!(o["state"].as_str(), Some("reserved" | "confirmed"))
        })
        .map(|o| o["quantity"].as_u64().unwrap())
        .sum();
    let a = state
        .items
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["sku"] == "a")
        .unwrap();
    assert_eq!(
        a["sold"].as_u64().unwrap() + a["held"].as_u64().unwrap(),
        live,
        "{a}"
    );
    assert!(live >= acked.len() as u64);
}
