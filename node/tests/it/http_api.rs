//! The HTTP API as a client sees it, against the real `stock-node` binary: the happy
//! paths, and every error status with its JSON body (`code`, `field`, `Retry-After`).

use crate::common;

use common::{ADMIN_TOKEN, Node, client, purchase, sale_file};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    /// `Idempotent-Replayed: true`: the answer repeats what an earlier request did.
    replayed: bool,
    content_type: Option<String>,
    body: Value,
}

async fn send(method: Method, url: &str, token: Option<&str>, body: Option<Vec<u8>>) -> Answer {
    send_as(method, url, token, None, body).await
}

async fn send_as(
    method: Method,
    url: &str,
    token: Option<&str>,
    customer: Option<&str>,
    body: Option<Vec<u8>>,
) -> Answer {
    let mut req = client().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(c) = customer {
        req = req.header("Flashsale-Customer", c);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    answer(req.send().await.expect("request")).await
}

/// What a test reads of a response: status, the headers it checks, the JSON body.
async fn answer(res: reqwest::Response) -> Answer {
    let header = |name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let retry_after = header("retry-after");
    let replayed = header("idempotent-replayed").is_some_and(|v| v == "true");
    let content_type = header("content-type");
    let status = res.status();
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{status}: body is not JSON: {text:?}"));
    Answer {
        status,
        retry_after,
        replayed,
        content_type,
        body,
    }
}

async fn get(node: &Node, path: &str) -> Answer {
    send(Method::GET, &node.url(path), None, None).await
}

async fn post(node: &Node, path: &str, body: &Value) -> Answer {
    send(
        Method::POST,
        &node.url(path),
        None,
        Some(body.to_string().into_bytes()),
    )
    .await
}

/// `POST /v1/purchases` of `purchase(sku, quantity, customer, key)`.
async fn buy(node: &Node, sku: &str, quantity: u32, customer: &str, key: &str) -> Answer {
    post(
        node,
        "/v1/purchases",
        &purchase(sku, quantity, customer, key),
    )
    .await
}

/// An order route, as `customer` (the `Flashsale-Customer` header).
async fn get_as(node: &Node, path: &str, customer: &str) -> Answer {
    send_as(Method::GET, &node.url(path), None, Some(customer), None).await
}

async fn post_as(node: &Node, path: &str, customer: &str) -> Answer {
    send_as(
        Method::POST,
        &node.url(path),
        None,
        Some(customer),
        Some(b"{}".to_vec()),
    )
    .await
}

async fn post_raw(node: &Node, path: &str, body: &str) -> Answer {
    send(
        Method::POST,
        &node.url(path),
        None,
        Some(body.as_bytes().to_vec()),
    )
    .await
}

async fn admin(
    node: &Node,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    send(
        method,
        &node.url(path),
        token,
        body.map(|b| b.to_string().into_bytes()),
    )
    .await
}

/// An error answer: this status and code, as an RFC 9457 problem, with `Retry-After`
/// exactly when a later retry can cure it (429, 503, `not_open`).
fn assert_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status.as_u16(), status, "{}", a.body);
    assert_eq!(a.body["code"], code, "{}", a.body);
    assert!(
        a.body["detail"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        a.body
    );
    assert_eq!(
        a.content_type.as_deref(),
        Some("application/problem+json"),
        "{}",
        a.body
    );
    assert_eq!(a.body["status"], status, "{}", a.body);
    assert_eq!(
        a.body["type"],
        format!("tag:flashsale.dev,2026:problem/{code}"),
        "{}",
        a.body
    );
    assert!(a.body["title"].as_str().is_some_and(|t| !t.is_empty()));
    let retryable = status == 429 || status == 503 || code == "not_open";
    assert_eq!(
        a.retry_after.is_some(),
        retryable,
        "{code}: Retry-After {:?}",
        a.retry_after
    );
    if let Some(r) = &a.retry_after {
        assert!(r.parse::<u64>().is_ok_and(|s| s >= 1), "Retry-After {r}");
        assert_eq!(a.body["retryAfterS"], r.parse::<u64>().unwrap());
    }
}

fn lone_node(dir: &tempfile::TempDir, items: &[(&str, u64, u32)], extra: &[&str]) -> Node {
    let sale = sale_file(dir.path(), items);
    let data = dir.path().join("data");
    let mut args = vec!["--config", sale.to_str().unwrap()];
    args.extend_from_slice(extra);
    Node::start(&data, &args)
}

#[tokio::test]
async fn purchase_confirm_cancel_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let node = lone_node(&dir, &[("tee", 5, 2), ("cap", 1, 0)], &[]);

    let items = get(&node, "/v1/items").await;
    assert_eq!(items.status, 200);
    assert_eq!(items.body.as_array().unwrap().len(), 2);

    let bought = buy(&node, "tee", 2, "alice", "k1").await;
    assert_eq!(bought.status, 201, "{}", bought.body);
    assert_eq!(bought.body["state"], "reserved");
    assert_eq!(bought.body["quantity"], 2);
    let id = bought.body["id"].as_u64().unwrap();
    let tee = get(&node, "/v1/items/tee").await;
    assert_eq!(
        (tee.body["held"].as_u64(), tee.body["remaining"].as_u64()),
        (Some(2), Some(3))
    );

    let confirmed = post_as(&node, &format!("/v1/orders/{id}/confirm"), "alice").await;
    assert_eq!(confirmed.status, 200, "{}", confirmed.body);
    assert_eq!(confirmed.body["state"], "confirmed");
    let order = get_as(&node, &format!("/v1/orders/{id}"), "alice").await;
    assert_eq!(
        (order.status.as_u16(), &order.body["state"]),
        (200, &json!("confirmed"))
    );
    let tee = get(&node, "/v1/items/tee").await;
    assert_eq!(
        (tee.body["sold"].as_u64(), tee.body["held"].as_u64()),
        (Some(2), Some(0))
    );

    // Cancelling a reservation gives its stock back to the next buyer.
    let cap = buy(&node, "cap", 1, "bob", "k2").await;
    assert_eq!(cap.status, 201);
    assert_error(&buy(&node, "cap", 1, "carol", "k3").await, 409, "sold_out");
    let cap_id = cap.body["id"].as_u64().unwrap();
    let cancelled = post_as(&node, &format!("/v1/orders/{cap_id}/cancel"), "bob").await;
    assert_eq!(
        (cancelled.status.as_u16(), &cancelled.body["state"]),
        (200, &json!("cancelled"))
    );
    assert_eq!(get(&node, "/v1/items/cap").await.body["remaining"], 1);
    assert_eq!(buy(&node, "cap", 1, "carol", "k4").await.status, 201);
    // A cancelled order cannot be confirmed.
    assert_error(
        &post_as(&node, &format!("/v1/orders/{cap_id}/confirm"), "bob").await,
        409,
        "order_state",
    );
}

/// A purchase with an `Idempotency-Key` header (and maybe a body without the key).
async fn post_keyed(node: &Node, key: &str, body: &Value) -> Answer {
    answer(
        client()
            .post(node.url("/v1/purchases"))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .expect("request"),
    )
    .await
}

#[tokio::test]
async fn the_idempotency_key_header_is_the_body_field_and_they_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    let node = lone_node(&dir, &[("tee", 5, 0)], &[]);
    let bare = json!({"sku": "tee", "quantity": 1, "customer": "alice"});
    // The header alone (the draft's structured-field string) makes the key.
    let first = post_keyed(&node, r#""h-1""#, &bare).await;
    assert_eq!(first.status.as_u16(), 201, "{}", first.body);
    assert_eq!(first.body["idempotencyKey"], "h-1");
    // The same key as a bare header, or in the body, is the same purchase: a replay.
    let again = post_keyed(&node, "h-1", &bare).await;
    assert_eq!((again.status.as_u16(), again.replayed), (201, true));
    assert_eq!(again.body["id"], first.body["id"]);
    let by_body = buy(&node, "tee", 1, "alice", "h-1").await;
    assert_eq!((by_body.status.as_u16(), by_body.replayed), (201, true));
    // Header and body both, the same: fine.
    let both = post_keyed(&node, "h-2", &purchase("tee", 1, "alice", "h-2")).await;
    assert_eq!((both.status.as_u16(), both.replayed), (201, false));

    // Header and body differ, a malformed header, no key at all: 400 naming the key's
    // place, and nothing sold.
    let differ = post_keyed(&node, "h-3", &purchase("tee", 1, "alice", "other")).await;
    assert_error(&differ, 400, "bad_request");
    assert_eq!(differ.body["field"], "Idempotency-Key");
    let open = post_keyed(&node, r#""h-4"#, &bare).await;
    assert_error(&open, 400, "bad_request");
    assert_eq!(open.body["field"], "Idempotency-Key");
    let none = post(&node, "/v1/purchases", &bare).await;
    assert_error(&none, 400, "bad_request");
    assert_eq!(none.body["field"], "idempotencyKey");
    let tee = get(&node, "/v1/items/tee").await;
    assert_eq!(tee.body["remaining"], 3, "{}", tee.body);
}

#[tokio::test]
async fn orders_belong_to_their_customer_and_retries_tell_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let node = lone_node(&dir, &[("tee", 5, 0)], &[]);
    let first = buy(&node, "tee", 2, "alice", "k1").await;
    assert_eq!((first.status.as_u16(), first.replayed), (201, false));
    let id = first.body["id"].as_u64().unwrap();
    let order = format!("/v1/orders/{id}");

    // Knowing the id is not enough: no customer is a 400 naming the header, another
    // customer is told the order does not exist — and nothing changes.
    let a = get(&node, &order).await;
    assert_error(&a, 400, "bad_request");
    assert_eq!(a.body["field"], "Flashsale-Customer");
    assert_error(
        &get_as(&node, &order, "mallory").await,
        404,
        "unknown_order",
    );
    for verb in ["confirm", "cancel"] {
        assert_error(
            &post_as(&node, &format!("{order}/{verb}"), "mallory").await,
            404,
            "unknown_order",
        );
        assert_error(
            &post(&node, &format!("{order}/{verb}"), &json!({})).await,
            400,
            "bad_request",
        );
    }
    let mine = get_as(&node, &order, "alice").await;
    assert_eq!(
        (mine.status.as_u16(), &mine.body["state"]),
        (200, &json!("reserved"))
    );
    assert_eq!(
        get(&node, "/v1/items/tee").await.body["held"],
        2,
        "still held"
    );

    // A confirm retried is a success, marked as a replay.
    let c1 = post_as(&node, &format!("{order}/confirm"), "alice").await;
    let c2 = post_as(&node, &format!("{order}/confirm"), "alice").await;
    assert_eq!(
        (c1.status.as_u16(), c1.replayed),
        (200, false),
        "{}",
        c1.body
    );
    assert_eq!(
        (c2.status.as_u16(), c2.replayed),
        (200, true),
        "{}",
        c2.body
    );
    assert_eq!(c2.body["state"], "confirmed");
    assert_error(
        &post_as(&node, &format!("{order}/cancel"), "alice").await,
        409,
        "order_state",
    );
    // A purchase replayed after the confirm answers its first answer again, and says so.
    let again = buy(&node, "tee", 2, "alice", "k1").await;
    assert_eq!((again.status.as_u16(), again.replayed), (201, true));
    assert_eq!(
        (again.body["id"].as_u64(), &again.body["state"]),
        (Some(id), &json!("reserved"))
    );

    // A cancel retried is a success too.
    let other = buy(&node, "tee", 1, "bob", "k2").await;
    let other = format!("/v1/orders/{}", other.body["id"]);
    let x1 = post_as(&node, &format!("{other}/cancel"), "bob").await;
    let x2 = post_as(&node, &format!("{other}/cancel"), "bob").await;
    assert_eq!((x1.status.as_u16(), x1.replayed), (200, false));
    assert_eq!(
        (x2.status.as_u16(), x2.replayed, &x2.body["state"]),
        (200, true, &json!("cancelled"))
    );
    assert_eq!(get(&node, "/v1/items/tee").await.body["remaining"], 3);
}

/// An idempotency key is its customer's. Another customer who uses it first (a guessed
/// or leaked key) buys for themselves and takes nothing from its owner, whose purchase
/// and retries work as if they had not; nor does the answer tell anyone else whether the
/// key was used. (Keys were global: the owner got 409 `idempotency_conflict` for good.)
#[tokio::test]
async fn a_key_is_its_customers_and_nobody_else_can_take_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = lone_node(&dir, &[("tee", 3, 0)], &[]);
    let squatter = buy(&node, "tee", 1, "mallory", "alice-1").await;
    assert_eq!(squatter.status, 201, "{:?}", squatter.body);
    let alice = buy(&node, "tee", 1, "alice", "alice-1").await;
    assert_eq!(alice.status, 201, "{:?}", alice.body);
    assert_eq!(alice.body["customer"], "alice");
    assert_ne!(alice.body["id"], squatter.body["id"]);
    let retry = buy(&node, "tee", 1, "alice", "alice-1").await;
    assert_eq!(
        (retry.status, &retry.body["id"]),
        (StatusCode::CREATED, &alice.body["id"]),
        "alice's retry gets alice's order"
    );
    // A probe with the key under another name learns nothing about it.
    let probe = buy(&node, "no-such", 1, "eve", "alice-1").await;
    assert_error(&probe, 404, "unknown_item");
}

#[tokio::test]
async fn idempotent_replay_returns_the_same_order_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = lone_node(&dir, &[("tee", 3, 0)], &[]);
    let first = buy(&node, "tee", 1, "alice", "same-key").await;
    assert_eq!(first.status, 201);
    let again = buy(&node, "tee", 1, "alice", "same-key").await;
    assert_eq!(
        (again.status, &again.body),
        (StatusCode::CREATED, &first.body)
    );
    assert_eq!(
        get(&node, "/v1/items/tee").await.body["remaining"],
        2,
        "a replay must not sell again"
    );
    let other = buy(&node, "tee", 2, "alice", "same-key").await;
    assert_error(&other, 409, "idempotency_conflict");

    // A clean stop exits 0; the order survives it.
    assert!(node.stop().success());
    let mut node = Node::start(&dir.path().join("data"), &[]);
    let replay = buy(&node, "tee", 1, "alice", "same-key").await;
    assert_eq!(
        (replay.status, &replay.body["id"]),
        (StatusCode::CREATED, &first.body["id"])
    );
    assert_eq!(get(&node, "/v1/items/tee").await.body["remaining"], 2);

    // Also after kill -9 (no final sync): acknowledged means durable.
    node.kill9();
    let node = Node::start(&dir.path().join("data"), &[]);
    let replay = buy(&node, "tee", 1, "alice", "same-key").await;
    assert_eq!(replay.body["id"], first.body["id"]);
}

#[tokio::test]
async fn bad_requests_are_json_400s_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let node = lone_node(&dir, &[("tee", 5, 0)], &[]);
    let malformed = post_raw(&node, "/v1/purchases", "{\"sku\": ").await;
    assert_error(&malformed, 400, "bad_request");
    assert!(malformed.body.get("field").is_none());
    let cases = [
        (
            r#"{"sku":"tee","quantity":"two","customer":"c","idempotencyKey":"k"}"#,
            "quantity",
        ),
        (
            r#"{"sku":"tee","customer":"c","idempotencyKey":"k"}"#,
            "quantity",
        ),
        (
            r#"{"sku":"tee","quantity":1,"customer":"c"}"#,
            "idempotencyKey",
        ),
        (
            r#"{"sku":"tee","quantity":1,"customer":"c","idempotencyKey":"k","coupon":"x"}"#,
            "coupon",
        ),
        (
            r#"{"sku":7,"quantity":1,"customer":"c","idempotencyKey":"k"}"#,
            "sku",
        ),
        (
            r#"{"sku":"tee","quantity":1,"customer":"","idempotencyKey":"k"}"#,
            "customer",
        ),
    ];
    for (body, field) in cases {
        let a = post_raw(&node, "/v1/purchases", body).await;
        assert_error(&a, 400, "bad_request");
        assert_eq!(a.body["field"], field, "{body}");
        assert!(
            a.body["detail"].as_str().unwrap().contains(field),
            "{}",
            a.body
        );
    }
    let long_key = "k".repeat(1000);
    let a = buy(&node, "tee", 1, "c", &long_key).await;
    assert_eq!(a.body["field"], "idempotencyKey");
    let a = get(&node, "/v1/orders/not-a-number").await;
    assert_error(&a, 400, "bad_request");
    assert_eq!(a.body["field"], "id");
    // None of it sold anything.
    assert_eq!(get(&node, "/v1/items/tee").await.body["remaining"], 5);
}

#[tokio::test]
async fn unknown_things_limits_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let node = lone_node(&dir, &[("tee", 3, 2)], &["--body-bytes-max", "1024"]);
    assert_error(&get(&node, "/v1/items/nope").await, 404, "unknown_item");
    assert_error(&buy(&node, "nope", 1, "c", "k0").await, 404, "unknown_item");
    assert_error(
        &get_as(&node, "/v1/orders/999999", "c").await,
        404,
        "unknown_order",
    );
    assert_error(
        &post_as(&node, "/v1/orders/999999/confirm", "c").await,
        404,
        "unknown_order",
    );

    let zero = buy(&node, "tee", 0, "c", "k1").await;
    assert_error(&zero, 422, "bad_quantity");
    assert_eq!(zero.body["field"], "quantity");
    assert_eq!(buy(&node, "tee", 2, "alice", "k2").await.status, 201);
    // The per-customer limit counts what alice already holds.
    assert_error(
        &buy(&node, "tee", 1, "alice", "k3").await,
        422,
        "limit_exceeded",
    );
    assert_error(&buy(&node, "tee", 2, "bob", "k4").await, 409, "sold_out");
    assert_eq!(buy(&node, "tee", 1, "bob", "k5").await.status, 201);
    // Sold out now: answered from memory, with the same body.
    let gone = buy(&node, "tee", 1, "carol", "k6").await;
    assert_error(&gone, 409, "sold_out");
    // …but a replay of an acknowledged key still gets its order back.
    assert_eq!(buy(&node, "tee", 1, "bob", "k5").await.status, 201);

    let big = format!(
        r#"{{"sku":"tee","quantity":1,"customer":"{}","idempotencyKey":"k"}}"#,
        "x".repeat(4096)
    );
    assert_error(
        &post_raw(&node, "/v1/purchases", &big).await,
        413,
        "payload_too_large",
    );
    // A body announced larger than the limit is refused before it is sent, not waited for.
    let started = std::time::Instant::now();
    let mut raw = tokio::net::TcpStream::connect(&node.addr).await.unwrap();
    let head = "POST /v1/purchases HTTP/1.1\r\nHost: n\r\nContent-Length: 999999999\r\n\r\n{";
    tokio::io::AsyncWriteExt::write_all(&mut raw, head.as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::io::AsyncReadExt::read(&mut raw, &mut buf)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(
        text.starts_with("HTTP/1.1 413") && text.contains("payload_too_large"),
        "{text}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // A body of undeclared length (chunked) is read up to the same limit: over it, the
    // same 413; within it, a purchase like any other (here k5's replay).
    let text = post_chunked(&node.addr, &big).await;
    assert!(
        text.starts_with("HTTP/1.1 413") && text.contains("payload_too_large"),
        "{text}"
    );
    let text = post_chunked(&node.addr, &purchase("tee", 1, "bob", "k5").to_string()).await;
    assert!(
        text.starts_with("HTTP/1.1 201") && text.contains("idempotent-replayed: true"),
        "{text}"
    );

    assert_error(&get(&node, "/v2/nothing").await, 404, "not_found");
    assert_error(
        &send(Method::DELETE, &node.url("/v1/items"), None, None).await,
        405,
        "method_not_allowed",
    );
    assert_error(
        &get(&node, "/v1/purchases").await,
        405,
        "method_not_allowed",
    );

    let metrics = common::metrics_text(&client(), node.url("/metrics")).await;
    assert!(metrics.contains("flashsale_oversold 0"), "{metrics}");
    assert!(
        metrics.contains("flashsale_purchases_total{code=\"sold_out\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flashsale_item_sold{sku=\"tee\"}"),
        "{metrics}"
    );
    // The sequencer's time per group commit is observed once for every batch written.
    let batches = common::metric_in(&metrics, "flashsale_engine_batches_total").unwrap();
    assert!(batches >= 1.0, "{metrics}");
    assert_eq!(
        common::metric_in(&metrics, "flashsale_engine_batch_apply_us_count"),
        Some(batches),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_sale_window_and_the_admission_rate() {
    let dir = tempfile::tempdir().unwrap();
    let node = lone_node(
        &dir,
        &[("tee", 100, 0)],
        &["--admission-rate-per-s", "1", "--admission-burst", "3"],
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let window = |starts: i64, ends: i64| {
        json!({"name": "test-sale", "items": [{"sku": "tee", "stock": 100}], "reservationTtlMs": 600_000,
               "startsAtMs": starts, "endsAtMs": ends})
    };
    let put = |body: Value| {
        let node = &node;
        async move {
            admin(
                node,
                Method::PUT,
                "/admin/v1/config",
                Some(ADMIN_TOKEN),
                Some(&body),
            )
            .await
        }
    };
    assert_eq!(
        put(window(now_ms + 3_600_000, now_ms + 7_200_000))
            .await
            .status,
        200
    );
    let early = buy(&node, "tee", 1, "c", "w1").await;
    assert_error(&early, 409, "not_open");
    // Retry-After: the seconds until the window opens (an hour away).
    let wait: u64 = early.retry_after.as_deref().unwrap().parse().unwrap();
    assert!((3_590..=3_600).contains(&wait), "Retry-After {wait}");
    assert_eq!(
        put(window(now_ms - 7_200_000, now_ms - 3_600_000))
            .await
            .status,
        200
    );
    assert_error(&buy(&node, "tee", 1, "c", "w2").await, 410, "ended");

    // The burst of 3 is spent (or nearly: a token comes back every second), so within
    // a few quick calls the bucket is empty and the node says when to come back.
    let mut limited = None;
    for i in 0..5 {
        let a = buy(&node, "tee", 1, "c", &format!("r{i}")).await;
        if a.status == 429 {
            limited = Some(a);
            break;
        }
        assert_error(&a, 410, "ended");
    }
    let limited = limited.expect("no 429 within 5 calls over a burst of 3 at 1/s");
    assert_error(&limited, 429, "rate_limited");
    let retry: u64 = limited
        .retry_after
        .expect("Retry-After header")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(limited.body["retryAfterS"], retry);
    // Probes and the admin API are never rate limited.
    assert_eq!(get(&node, "/healthz").await.status, 200);
    assert_eq!(
        admin(
            &node,
            Method::GET,
            "/admin/v1/status",
            Some(ADMIN_TOKEN),
            None
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn a_standby_node_waits_for_role_and_config_and_admin_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        &dir.path().join("data"),
        &["--role", "standby", "--log-format", "json"],
    );
    assert_eq!(get(&node, "/healthz").await.status, 200);
    assert_error(&get(&node, "/readyz").await, 503, "unavailable");
    assert_error(
        &admin(&node, Method::GET, "/admin/v1/status", None, None).await,
        401,
        "unauthorized",
    );
    assert_error(
        &admin(&node, Method::GET, "/admin/v1/status", Some("wrong"), None).await,
        401,
        "unauthorized",
    );

    let st = admin(
        &node,
        Method::GET,
        "/admin/v1/status",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (st.status.as_u16(), &st.body["role"]),
        (200, &json!("standby"))
    );
    assert!(st.body["purchasesPerS"].is_number(), "{}", st.body);

    let sale =
        json!({"name": "s", "items": [{"sku": "tee", "stock": 2}], "reservationTtlMs": 60_000});
    let bad =
        json!({"name": "s", "items": [{"sku": "tee", "stock": -2}], "reservationTtlMs": 60_000});
    let a = admin(
        &node,
        Method::PUT,
        "/admin/v1/config",
        Some(ADMIN_TOKEN),
        Some(&bad),
    )
    .await;
    assert_error(&a, 400, "bad_request");
    assert_eq!(a.body["field"], "items[0].stock");
    let a = admin(
        &node,
        Method::PUT,
        "/admin/v1/config",
        Some(ADMIN_TOKEN),
        Some(&sale),
    )
    .await;
    // Only the primary takes the sale's config: a standby would log it at an epoch it
    // does not own. Refused, and nothing changes.
    assert_error(&a, 503, "not_primary");
    let st = admin(
        &node,
        Method::GET,
        "/admin/v1/status",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (&st.body["sale"], &st.body["appliedSeq"]),
        (&json!(null), &json!(0)),
        "{}",
        st.body
    );
    let role = json!({"role": "primary", "epoch": 3});
    let a = admin(
        &node,
        Method::PUT,
        "/admin/v1/role",
        Some(ADMIN_TOKEN),
        Some(&role),
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), &a.body["epoch"]),
        (200, &json!(3)),
        "{}",
        a.body
    );
    let a = admin(
        &node,
        Method::PUT,
        "/admin/v1/config",
        Some(ADMIN_TOKEN),
        Some(&sale),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let ready = get(&node, "/readyz").await;
    assert_eq!(
        (ready.status.as_u16(), &ready.body["role"]),
        (200, &json!("primary"))
    );
    assert_eq!(buy(&node, "tee", 1, "c", "s1").await.status, 201);
    // Parked (as a failover parks the old primary): a standby with its sale.
    let park = json!({"role": "standby", "epoch": 4});
    let a = admin(
        &node,
        Method::PUT,
        "/admin/v1/role",
        Some(ADMIN_TOKEN),
        Some(&park),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    // A standby with its sale is ready (to be promoted), but sells nothing.
    let ready = get(&node, "/readyz").await;
    assert_eq!(
        (ready.status.as_u16(), &ready.body["role"]),
        (200, &json!("standby")),
        "{}",
        ready.body
    );
    let refused = buy(&node, "tee", 1, "c", "s3").await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    // … and closes the connection after saying so: a client that came through the
    // primary Service reconnects (to the new primary) instead of asking it again.
    let answer = tokio::task::spawn_blocking({
        let addr = node.url("").trim_start_matches("http://").to_string();
        move || {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let body = r#"{"sku":"tee","quantity":1,"customer":"c","idempotencyKey":"s4"}"#;
            write!(
                c,
                "POST /v1/purchases HTTP/1.1\r\nHost: n\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut all = String::new();
            c.read_to_string(&mut all).map(|_| all)
        }
    })
    .await
    .unwrap()
    .expect("the node closes the connection after a not_primary answer");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );

    let stale = json!({"role": "primary", "epoch": 3});
    assert_error(
        &admin(
            &node,
            Method::PUT,
            "/admin/v1/role",
            Some(ADMIN_TOKEN),
            Some(&stale),
        )
        .await,
        409,
        "fenced",
    );

    // A sale file at start is for a primary: a standby started with one is refused,
    // naming the flag, before it opens (or creates) its data directory.
    let file = dir.path().join("sale.json");
    std::fs::write(&file, sale.to_string()).unwrap();
    let data = dir.path().join("standby-with-sale");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stock-node"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--role",
            "standby",
            "--config",
        ])
        .arg(&file)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--role primary"),
        "{stderr}"
    );
    assert!(!data.exists(), "the data directory was created");
}

#[tokio::test]
async fn the_openapi_document_describes_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let node = lone_node(&dir, &[("tee", 1, 0)], &[]);
    let doc = get(&node, "/openapi.json").await;
    assert_eq!(doc.status, 200);
    for path in [
        "/v1/items",
        "/v1/items/{sku}",
        "/v1/purchases",
        "/v1/orders/{id}/confirm",
        "/admin/v1/role",
    ] {
        assert!(doc.body["paths"].get(path).is_some(), "missing {path}");
    }
    for schema in [
        "PurchaseRequest",
        "Order",
        "ErrorBody",
        "ItemView",
        "NodeStatus",
    ] {
        assert!(
            doc.body["components"]["schemas"].get(schema).is_some(),
            "missing {schema}"
        );
    }
}

#[tokio::test]
async fn at_the_connection_limit_the_idle_keep_alive_connection_makes_room() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let node = lone_node(&dir, &[("tee", 1, 0)], &["--connections-max", "2"]);
    // Two keep-alive connections take both places, each answered once and now idle.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(&node.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: n\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(s);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // A third client is served at once (before: it waited until one of them closed)...
    let third = client()
        .get(node.url("/healthz"))
        .timeout(std::time::Duration::from_millis(700))
        .send()
        .await
        .expect("a third client was locked out by two idle connections");
    assert_eq!(third.status(), 200);
    // ...because the connection idle the longest was closed to make room.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(2), held[0].read(&mut buf))
        .await
        .expect("the idle connection was not closed");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}

#[tokio::test]
async fn a_full_engine_queue_answers_503_at_once_and_slow_requests_time_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let node = lone_node(&dir, &[("tee", 1_000, 0)], &["--engine-inflight-max", "1"]);
    // One place in the engine's queue: a crowd gets 201 or an immediate 503, never a hang.
    let crowd: Vec<_> = (0..60)
        .map(|i| {
            let url = node.url("/v1/purchases");
            tokio::spawn(async move {
                let body = purchase("tee", 1, &format!("c{i}"), &format!("q{i}"));
                let res = client().post(url).json(&body).send().await.unwrap();
                (res.status().as_u16(), res.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let (mut sold, mut busy) = (0, 0);
    for c in crowd {
        match c.await.unwrap() {
            (201, _) => sold += 1,
            (503, body) => {
                assert_eq!(body["code"], "unavailable", "{body}");
                busy += 1;
            }
            (s, body) => panic!("{s}: {body}"),
        }
    }
    assert!(sold >= 1 && busy >= 1, "sold {sold}, refused {busy}");
    assert_eq!(
        get(&node, "/v1/items/tee").await.body["held"],
        sold,
        "a refused purchase held stock"
    );

    // A client that stops sending its body is cut off by the request timeout (on a node
    // of its own: a 300 ms timeout could cut off a slow fsync above, which still commits).
    let dir = tempfile::tempdir().unwrap();
    let node = lone_node(&dir, &[("tee", 1, 0)], &["--request-timeout-ms", "300"]);
    let started = std::time::Instant::now();
    let mut raw = tokio::net::TcpStream::connect(&node.addr).await.unwrap();
    let head = "POST /v1/purchases HTTP/1.1\r\nHost: n\r\nContent-Length: 100\r\n\r\n{\"sku\":";
    raw.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = raw.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(
        text.starts_with("HTTP/1.1 503") && text.contains("timed out"),
        "{text}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn loose_ends_of_the_api_answer_a_clear_json_error_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = lone_node(&dir, &[("tee", 5, 0)], &[]);
    let c = client();

    // A positional array is not a purchase nor a sale.
    assert_error(
        &post_raw(&node, "/v1/purchases", r#"["tee", 1, "c", "k"]"#).await,
        400,
        "bad_request",
    );
    let cfg = send(
        Method::PUT,
        &node.url("/admin/v1/config"),
        Some(ADMIN_TOKEN),
        Some(br#"["s", [["tee", 9, 0]], null, null, 60000]"#.to_vec()),
    )
    .await;
    assert_error(&cfg, 400, "bad_request");
    // A duplicate key names its field.
    let dup = post_raw(
        &node,
        "/v1/purchases",
        r#"{"sku":"tee","sku":"tee","quantity":1,"customer":"c","idempotencyKey":"k"}"#,
    )
    .await;
    assert_error(&dup, 400, "bad_request");
    assert_eq!(dup.body["field"], "sku");

    // Too many headers, over the routes' limit and within hyper's: a JSON 431, not an
    // empty body. Past hyper's limit, hyper's own bare 431.
    let with_headers = |n: usize| {
        let mut req = c.get(node.url("/v1/items"));
        for i in 0..n {
            req = req.header(format!("x-h{i}"), "v");
        }
        req
    };
    let r = with_headers(stock_node::http::ops::HEADERS_MAX + 3)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "headers_too_large", "{body}");
    let r = with_headers(stock_node::http::server::HEADERS_HARD_MAX + 20)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert!(
        r.headers().get("content-type").is_none() && r.bytes().await.unwrap().is_empty(),
        "hyper's own bare 431 past its limit"
    );

    // The Bearer scheme in any case; another scheme is named as the problem.
    let lower = c
        .get(node.url("/admin/v1/status"))
        .header("authorization", format!("bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), 200);
    let basic = c
        .get(node.url("/admin/v1/status"))
        .header("authorization", "Basic eDp5")
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    let body: Value = basic.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("another scheme"),
        "{body}"
    );

    // A role the node could never be fenced out of, or one it cannot follow.
    for (role, field) in [
        (json!({"role": "primary", "epoch": u64::MAX}), "epoch"),
        (json!({"role": "primary", "epoch": 0}), "epoch"),
        (json!({"role": "secondary", "epoch": 2}), "primaryUrl"),
        (
            json!({"role": "secondary", "epoch": 2, "primaryUrl": "not a url"}),
            "primaryUrl",
        ),
    ] {
        let a = admin(
            &node,
            Method::PUT,
            "/admin/v1/role",
            Some(ADMIN_TOKEN),
            Some(&role),
        )
        .await;
        assert_error(&a, 400, "bad_request");
        assert_eq!(a.body["field"], field, "{role}");
    }
    // An empty WAL post to the primary is not a success.
    let wal = send(
        Method::POST,
        &node.url("/admin/v1/wal"),
        Some(ADMIN_TOKEN),
        Some(Vec::new()),
    )
    .await;
    assert_error(&wal, 409, "is_primary");

    // Invented methods do not grow /metrics: they are counted as `other`.
    let before = common::metrics_text(&c, node.url("/metrics")).await;
    for i in 0..300 {
        let m = Method::from_bytes(format!("M{i}X").as_bytes()).unwrap();
        let _ = c.request(m, node.url("/v1/items")).send().await.unwrap();
    }
    let after = common::metrics_text(&c, node.url("/metrics")).await;
    assert!(!after.contains("M17X"), "a client's method became a label");
    assert!(after.contains(r#"method="other""#));
    assert!(
        after.len() < before.len() + 8 * 1024,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );

    // Nothing above sold anything or changed the role.
    assert_eq!(get(&node, "/v1/items/tee").await.body["remaining"], 5);
    let st = admin(
        &node,
        Method::GET,
        "/admin/v1/status",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(st.body["role"], "primary");
}

/// Guessing at orders is bounded by the admission rate like any request: a guess that
/// names another customer (answered like a missing order, 404) costs a token, so a
/// crowd cannot try customers for an order id faster than the node admits requests.
#[tokio::test]
async fn guesses_at_other_customers_orders_cost_admission_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let node = lone_node(
        &dir,
        &[("tee", 5, 0)],
        &["--admission-rate-per-s", "1", "--admission-burst", "2"],
    );
    let bought = buy(&node, "tee", 1, "ann", "k1").await;
    assert_eq!(bought.status, 201, "{}", bought.body);
    let id = bought.body["id"].as_u64().unwrap();
    let path = format!("/v1/orders/{id}");
    for route in ["", "/cancel"] {
        // A full bucket (2 tokens) first: the guesses it pays for answer like a
        // missing order, and the next is refused.
        tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
        let mut limited = None;
        let mut unknown = 0;
        for i in 0..6 {
            let guess = format!("guess-{i}");
            let a = if route.is_empty() {
                get_as(&node, &path, &guess).await
            } else {
                post_as(&node, &format!("{path}{route}"), &guess).await
            };
            if a.status == 429 {
                limited = Some(a);
                break;
            }
            assert_error(&a, 404, "unknown_order");
            unknown += 1;
        }
        let limited = limited.unwrap_or_else(|| {
            panic!("6 quick guesses at `{path}{route}` over a burst of 2 at 1/s: none refused")
        });
        assert_error(&limited, 429, "rate_limited");
        assert!(
            unknown >= 1,
            "`{path}{route}`: no guess answered before the 429"
        );
    }
    // With the bucket empty, a request naming no customer still gets the 400 naming
    // the header (it takes no token), on the read and on the cancel.
    let nameless = get(&node, &path).await;
    assert_error(&nameless, 400, "bad_request");
    assert_eq!(nameless.body["field"], "Flashsale-Customer");
    let nameless = post(&node, &format!("{path}/cancel"), &json!({})).await;
    assert_error(&nameless, 400, "bad_request");
    // The order is untouched, and its customer reads it once a token is back.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let mine = get_as(&node, &path, "ann").await;
    assert_eq!(mine.status, 200, "{}", mine.body);
    assert_eq!(mine.body["state"], "reserved");
}

/// The load counters an autoscaler (or KEDA, or prometheus-adapter) reads: what the
/// node answered by kind, what it refused for load, its engine queue, its CPU — in
/// `/admin/v1/status` and in `/metrics`, the same figures.
#[tokio::test]
async fn load_counters_say_what_the_node_answered_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = lone_node(
        &dir,
        &[("tee", 5, 0)],
        &["--admission-rate-per-s", "1", "--admission-burst", "4"],
    );
    let mut refused = 0;
    for _ in 0..10 {
        let a = get(&node, "/v1/items").await;
        if a.status == 429 {
            refused += 1;
        }
    }
    assert!(refused >= 5, "only {refused} of 10 refused at 1/s, burst 4");
    let st = admin(
        &node,
        Method::GET,
        "/admin/v1/status",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    let load = &st.body["load"];
    assert_eq!(load["answered"]["read"], 10, "{load}");
    assert_eq!(load["answered"]["purchase"], 0, "{load}");
    assert_eq!(load["refusedForLoad"]["rate"], refused, "{load}");
    assert_eq!(load["refusedForLoad"]["busy"], 0, "{load}");
    assert_eq!(load["engineInflight"], 0, "{load}");
    assert_eq!(load["engineInflightMax"], 4096, "{load}");
    assert!(load["processCpuSeconds"].as_f64().unwrap() > 0.0, "{load}");
    assert!(load["requestsPerS"].as_f64().is_some(), "{load}");

    let text = common::metrics_text(&client(), node.url("/metrics")).await;
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no `{line_start}` in /metrics:\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        value(r#"flashsale_refused_for_load_total{reason="rate"}"#),
        refused as f64
    );
    assert_eq!(
        value(r#"flashsale_requests_answered_total{kind="read"}"#),
        10.0
    );
    assert_eq!(value("flashsale_engine_inflight_max "), 4096.0);
    assert_eq!(value("flashsale_engine_inflight "), 0.0);
    assert!(value("process_cpu_seconds_total ") > 0.0);
    value("flashsale_requests_per_second ");
}

/// `POST /v1/purchases` with `body` in one chunk (no `Content-Length`), over a raw
/// connection; the whole answer as text.
async fn post_chunked(addr: &str, body: &str) -> String {
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /v1/purchases HTTP/1.1\r\nHost: n\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut raw, req.as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut answer)
        .await
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// VmRSS of a process, in bytes.
fn resident_bytes_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// A crowd buying and cancelling in a loop grows a node without bound (every order is
/// kept for its key). Past its memory budget the node refuses new purchases, 503 saying
/// it is full, instead of growing until the kernel kills it; every order it holds can
/// still be read, confirmed and cancelled, and a retry of a purchase it has gets its
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_memory_budget_a_node_refuses_new_purchases_and_keeps_its_orders() {
    // The budget: what a node like this one holds once serving, and 3 MiB more.
    let dir = tempfile::tempdir().unwrap();
    let probe = lone_node(&dir, &[("tee", 1_000_000, 0)], &[]);
    assert_eq!(get(&probe, "/v1/items/tee").await.status, 200);
    let budget = resident_bytes_of(probe.pid()) + (3 << 20);
    drop(probe);
    let dir = tempfile::tempdir().unwrap();
    let node = lone_node(
        &dir,
        &[("tee", 1_000_000, 0)],
        &["--memory-max-bytes", &budget.to_string()],
    );
    let kept = buy(&node, "tee", 1, "keeper", "kept").await;
    assert_eq!(kept.status, 201);
    let kept_id = kept.body["id"].as_u64().unwrap();

    let started = std::time::Instant::now();
    let deadline = started + std::time::Duration::from_secs(90);
    let refusal = std::sync::Arc::new(tokio::sync::OnceCell::new());
    let cycles = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let crowd: Vec<_> = (0..16)
        .map(|w| {
            let (base, refusal, cycles) = (node.url(""), refusal.clone(), cycles.clone());
            tokio::spawn(async move {
                let http = client();
                let mut i = 0;
                while refusal.get().is_none() && std::time::Instant::now() < deadline {
                    i += 1;
                    let customer = format!("looper-{w}");
                    let r = http
                        .post(format!("{base}/v1/purchases"))
                        .json(&purchase("tee", 1, &customer, &format!("loop-{w}-{i}")))
                        .send()
                        .await
                        .unwrap();
                    let status = r.status();
                    let body: Value = r.json().await.unwrap();
                    if status == 503 {
                        let _ = refusal.set(body);
                        return;
                    }
                    assert_eq!(status, 201, "{body}");
                    let id = body["id"].as_u64().unwrap();
                    let r = http
                        .post(format!("{base}/v1/orders/{id}/cancel"))
                        .header("Flashsale-Customer", &customer)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    cycles.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in crowd {
        t.await.unwrap();
    }
    let cycles = cycles.load(std::sync::atomic::Ordering::Relaxed);
    let Some(refused) = refusal.get() else {
        panic!(
            "{cycles} purchase-cancel cycles in {:?}, and no purchase refused past a budget of {} MiB: the node holds {} MiB",
            started.elapsed(),
            budget >> 20,
            resident_bytes_of(node.pid()) >> 20
        );
    };
    println!(
        "refused after {cycles} purchase-cancel cycles in {:?}: {refused}",
        started.elapsed()
    );
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert_eq!(refused["retryAfterS"], 60, "{refused}");
    assert!(
        refused["detail"].as_str().unwrap().contains("memory"),
        "{refused}"
    );
    // Still refused: a new purchase does not get in.
    assert_error(
        &buy(&node, "tee", 1, "newcomer", "n1").await,
        503,
        "unavailable",
    );
    // What the engine refuses on its own is refused as such, not as full.
    assert_error(
        &buy(&node, "hat", 1, "newcomer", "n2").await,
        404,
        "unknown_item",
    );
    // What it holds goes on: a retry of a purchase it has, reading, confirming.
    let retry = buy(&node, "tee", 1, "keeper", "kept").await;
    assert_eq!((retry.status.as_u16(), retry.replayed), (201, true));
    assert_eq!(retry.body["id"], kept_id);
    let path = format!("/v1/orders/{kept_id}");
    assert_eq!(get_as(&node, &path, "keeper").await.status, 200);
    let confirmed = post_as(&node, &format!("{path}/confirm"), "keeper").await;
    assert_eq!(confirmed.status, 200, "{}", confirmed.body);
    let st = admin(
        &node,
        Method::GET,
        "/admin/v1/status",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert!(
        st.body["load"]["refusedForLoad"]["memory"].as_u64() >= Some(2),
        "{}",
        st.body["load"]
    );
}
