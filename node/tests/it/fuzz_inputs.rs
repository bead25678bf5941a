//! Fuzzing, bounded in time (it runs in `make test`): arbitrary and damaged input to
//! everything that decodes what a client or a peer sends — the JSON bodies, the WAL
//! batches of replication and `POST /admin/v1/wal`, and raw bytes on the node's socket.
//! Nothing may panic, no answer may be a 5xx, and the node must still sell afterwards.
//! `PROPTEST_CASES` raises the number of cases for a longer run.

use crate::common;

use std::time::Duration;

use flashsale_core::admin::{LeaseRenewal, RoleAssignment};
use flashsale_core::wal::{
    Record, RecordBody, decode_batch, decode_record, encode_batch, encode_record, peek_frame,
};
use flashsale_core::{PurchaseRequest, SaleConfig};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use stock_node::http::json::parse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{ADMIN_TOKEN, Node, client, sale_file};

/// Bodies that look like JSON: braces, quotes, the API's field names, numbers.
fn jsonish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(",".to_string()),
        Just(":".to_string()),
        Just("\"sku\"".to_string()),
        Just("\"quantity\"".to_string()),
        Just("\"customer\"".to_string()),
        Just("\"idempotencyKey\"".to_string()),
        Just("\"items\"".to_string()),
        Just("\"stock\"".to_string()),
        Just("\"epoch\"".to_string()),
        Just("\"role\"".to_string()),
        Just("\"primaryUrl\"".to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "\"[a-z0-9 \\\\\u{0}-\u{1f}\u{80}-\u{ff}]{0,12}\"",
        "[ \t\r\n]{0,2}",
    ];
    proptest::collection::vec(token, 0..40).prop_map(|t| t.concat())
}

fn decode_all(bytes: &[u8]) {
    let _ = parse::<PurchaseRequest>(bytes);
    let _ = parse::<SaleConfig>(bytes);
    let _ = parse::<RoleAssignment>(bytes);
    let _ = parse::<LeaseRenewal>(bytes);
    let _ = parse::<serde_json::Value>(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn any_bytes_as_a_json_body(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        decode_all(&bytes);
    }

    #[test]
    fn json_like_bodies(body in jsonish()) {
        decode_all(body.as_bytes());
        // What is accepted is an object that reads back the same.
        if let Ok(p) = parse::<PurchaseRequest>(body.as_bytes()) {
            let again = serde_json::to_vec(&p).unwrap();
            prop_assert_eq!(parse::<PurchaseRequest>(&again).unwrap(), p);
        }
    }

    #[test]
    fn any_bytes_as_wal(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_batch(&bytes);
        let _ = decode_record(&bytes);
        let _ = peek_frame(&bytes);
    }

    /// A real batch with one byte changed: refused, or (a change the checksums cannot
    /// see does not exist for CRC-32C on one byte) never decoded into other records.
    #[test]
    fn a_batch_with_one_byte_changed_is_refused(at in 0usize..10_000, xor in 1u8..=255) {
        let batch = sample_batch();
        let mut damaged = batch.clone();
        let at = at % damaged.len();
        damaged[at] ^= xor;
        prop_assert!(decode_batch(&damaged).is_err(), "byte {} changed, still decoded", at);
        prop_assert!(decode_batch(&batch).is_ok());
    }
}

fn sample_batch() -> Vec<u8> {
    let mut frames = Vec::new();
    for seq in 5..=8u64 {
        let rec = Record {
            seq,
            epoch: 2,
            at_ms: 1_700_000_000_000 + seq as i64,
            body: RecordBody::Purchase {
                sku: "tee".into(),
                quantity: 1,
                customer: format!("c{seq}"),
                idempotency_key: format!("k{seq}"),
                expires_at_ms: 1_700_000_060_000,
            },
        };
        encode_record(&rec, &mut frames).unwrap();
    }
    encode_batch(2, 5, 8, &frames)
}

/// Raw bytes on the socket, HTTP-shaped or not: the node answers each connection with
/// a status below 500 or closes it, and sells on afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_requests_never_crash_the_node_nor_get_a_5xx() {
    let dir = tempfile::tempdir().unwrap();
    let sale = sale_file(dir.path(), &[("tee", 1_000, 0)]);
    let node = Node::start(
        &dir.path().join("data"),
        &[
            "--config",
            sale.to_str().unwrap(),
            "--idle-timeout-ms",
            "300",
        ],
    );
    let routes = [
        "/v1/purchases",
        "/v1/items",
        "/v1/items/tee",
        "/v1/orders/1",
        "/v1/orders/1/confirm",
        "/admin/v1/wal",
        "/admin/v1/role",
        "/admin/v1/config",
        "/admin/v1/lease",
        "/admin/v1/snapshot",
        "/%ff%fe",
        "/v1/orders/99999999999999999999999",
    ];
    let head = (
        prop_oneof![
            Just("GET"),
            Just("POST"),
            Just("PUT"),
            Just("DELETE"),
            Just("PATCH"),
            Just("BREW")
        ],
        proptest::sample::select(routes.to_vec()),
        proptest::collection::vec(
            prop_oneof![
                Just(format!("Authorization: Bearer {ADMIN_TOKEN}")),
                Just("Authorization: bearer x".to_string()),
                Just("Content-Type: application/json".to_string()),
                Just("Content-Length: 5".to_string()),
                Just("Content-Length: -1".to_string()),
                Just("Content-Length: 99999999999".to_string()),
                Just("Transfer-Encoding: chunked".to_string()),
                Just("Flashsale-Customer: c".to_string()),
                Just("Expect: 100-continue".to_string()),
                "[A-Za-z-]{1,12}: [ -~]{0,40}",
            ],
            0..6,
        ),
        prop_oneof![
            jsonish().prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..300),
        ],
    );
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400u32);
    let mut runner = TestRunner::new(Config::with_cases(cases));
    let mut inputs = Vec::new();
    for _ in 0..cases {
        let (method, path, headers, body) = head.new_tree(&mut runner).unwrap().current();
        let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: n\r\n");
        for h in headers {
            raw.push_str(&h);
            raw.push_str("\r\n");
        }
        raw.push_str("Connection: close\r\n\r\n");
        let mut raw = raw.into_bytes();
        raw.extend_from_slice(&body);
        inputs.push(raw);
    }
    // And pure noise, and heads cut short.
    for i in 0..50u8 {
        inputs.push((0..i).map(|b| b.wrapping_mul(37)).collect());
        inputs.push(format!("POST /v1/purchases HTTP/1.1\r\nContent-Length: {i}\r\n").into_bytes());
    }
    for (i, raw) in inputs.iter().enumerate() {
        let mut c = tokio::net::TcpStream::connect(&node.addr).await.unwrap();
        let _ = c.write_all(raw).await;
        let _ = c.shutdown().await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer);
        // The fuzzer holds the admin token, so it may demote or fence the node: a 503
        // that names its reason (`not_primary`, `fenced`...) is an honest answer. A 500,
        // or a 5xx without the JSON error body, is not.
        let bad_5xx = text.starts_with("HTTP/1.1 5")
            && !(text.starts_with("HTTP/1.1 503") && text.contains("\"code\":\""));
        assert!(
            !bad_5xx,
            "case {i}: {:?} answered {}",
            String::from_utf8_lossy(raw),
            text
        );
    }
    let http = client();
    assert_eq!(
        http.get(node.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let bought = http
        .post(node.url("/v1/purchases"))
        .json(&common::purchase("tee", 1, "after", "after-fuzz"))
        .send()
        .await
        .unwrap();
    assert_eq!(bought.status(), 201, "the node still sells");
}
