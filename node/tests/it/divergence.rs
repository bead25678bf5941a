//! Divergence is detected, never skipped over (FAILOVER.md I4): a node whose log parted
//! from its primary's — an old primary that wrote on after it was replaced — is moved
//! aside whole (kept on its volume) and started again from the primary's, naming the
//! records it dropped; and a tail posted to a node must continue its log.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Node, client, purchase, sale_file};
use serde_json::Value;

async fn admin(http: &reqwest::Client, n: &Node) -> Value {
    http.get(n.url("/admin/v1/status"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn set_role(
    http: &reqwest::Client,
    n: &Node,
    role: &str,
    epoch: u64,
    primary: Option<&Node>,
) {
    let body =
        serde_json::json!({"role": role, "epoch": epoch, "primaryUrl": primary.map(|p| p.url(""))});
    let r = http
        .put(n.url("/admin/v1/role"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

async fn buy(http: &reqwest::Client, n: &Node, key: &str) -> Value {
    let r = http
        .post(n.url("/v1/purchases"))
        .json(&purchase("tee", 1, key, key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{key}");
    r.json().await.unwrap()
}

/// Every order of a node, by id (ids are sequences: 1..=appliedSeq covers them).
async fn orders(http: &reqwest::Client, n: &Node) -> Vec<(u64, String)> {
    let last = admin(http, n).await["appliedSeq"].as_u64().unwrap();
    let mut out = Vec::new();
    for id in 1..=last {
        let r = http
            .get(n.url(&format!("/v1/orders/{id}")))
            .bearer_auth(common::ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            let o: Value = r.json().await.unwrap();
            out.push((id, o["idempotencyKey"].as_str().unwrap().to_string()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_primary_that_wrote_past_its_replacement_is_reseeded_and_names_what_it_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let http = client();
    let sale = sale_file(dir.path(), &[("tee", 1_000, 0)]);
    let poll = ["--replication-idle-poll-ms", "100"];
    let mut args_a = vec!["--role", "primary", "--config", sale.to_str().unwrap()];
    args_a.extend_from_slice(&poll);
    // Small segments: a's log spans several, all moved aside by the reseed.
    args_a.extend_from_slice(&["--segment-bytes-max", "1024"]);
    let a = Node::start(&dir.path().join("a"), &args_a);
    set_role(&http, &a, "primary", 1, None).await;
    for i in 0..10 {
        buy(&http, &a, &format!("before-{i}")).await;
    }
    let mut args_b = vec!["--role", "standby"];
    args_b.extend_from_slice(&poll);
    let b = Node::start(&dir.path().join("b"), &args_b);
    set_role(&http, &b, "secondary", 1, Some(&a)).await;
    let until = Instant::now() + Duration::from_secs(20);
    while admin(&http, &b).await["appliedSeq"] != admin(&http, &a).await["appliedSeq"] {
        assert!(Instant::now() < until, "b never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shared = admin(&http, &b).await["appliedSeq"].as_u64().unwrap();
    // b is made primary at epoch 2 with what it has; a, never told, sells on at epoch 1.
    set_role(&http, &b, "primary", 2, None).await;
    for i in 0..5 {
        buy(&http, &a, &format!("lost-{i}")).await;
    }
    let a_last = admin(&http, &a).await["appliedSeq"].as_u64().unwrap();
    for i in 0..3 {
        buy(&http, &b, &format!("after-{i}")).await;
    }
    // a comes back as b's secondary.
    set_role(&http, &a, "secondary", 2, Some(&b)).await;
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (sa, sb) = (admin(&http, &a).await, admin(&http, &b).await);
        if sa["appliedSeq"] == sb["appliedSeq"] && sa["replication"]["reseeded"].is_object() {
            break;
        }
        assert!(Instant::now() < until, "a never converged: {sa}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        orders(&http, &a).await,
        orders(&http, &b).await,
        "a is b's copy"
    );
    let r = admin(&http, &a).await["replication"]["reseeded"].clone();
    assert_eq!(r["commonSeq"], shared, "{r}");
    assert_eq!(r["droppedFrom"], shared + 1, "{r}");
    assert_eq!(r["droppedTo"], a_last, "{r}");
    assert_eq!(r["droppedEpochs"], serde_json::json!([1]), "{r}");
    // The old log is kept aside on the volume, readable with the offline tools.
    let aside = a.data_dir.join(r["keptAside"].as_str().unwrap());
    let out = Command::new(env!("CARGO_BIN_EXE_stock-node"))
        .args(["wal", "dump"])
        .arg(&aside)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dumped = String::from_utf8_lossy(&out.stdout);
    assert!(
        dumped.contains("lost-4"),
        "the dropped records are kept aside"
    );
}

fn export(data_dir: &std::path::Path, from: u64) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_stock-node"))
        .args(["wal", "export", "--from", &from.to_string()])
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The first `n` records of an exported body (one batch), as a batch of their own.
fn first_records(body: &[u8], n: usize) -> Vec<u8> {
    use flashsale_core::wal::{decode_batch, encode_batch, encode_record};
    let batch = decode_batch(body).unwrap(); // a short log: one batch
    let mut frames = Vec::new();
    for r in &batch.records[..n] {
        encode_record(r, &mut frames).unwrap();
    }
    let last = batch.records[n - 1].seq;
    encode_batch(batch.epoch, batch.first_seq, last, &frames)
}

async fn post(http: &reqwest::Client, n: &Node, query: &str, body: Vec<u8>) -> (u16, Value) {
    let r = http
        .post(n.url(&format!("/admin/v1/wal{query}")))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_tail_must_continue_the_log_it_is_posted_to() {
    let dir = tempfile::tempdir().unwrap();
    let http = client();
    let sale = sale_file(dir.path(), &[("tee", 1_000, 0)]);
    let cfg = sale.to_str().unwrap();
    // Two logs with the same sequences at different epochs.
    let one = Node::start(
        &dir.path().join("one"),
        &["--role", "primary", "--config", cfg],
    );
    set_role(&http, &one, "primary", 1, None).await;
    let three = Node::start(
        &dir.path().join("three"),
        &["--role", "primary", "--config", cfg],
    );
    set_role(&http, &three, "primary", 3, None).await;
    for i in 0..6 {
        buy(&http, &one, &format!("one-{i}")).await;
    }
    // The other log goes further, so it has a tail past the first one's end.
    for i in 0..10 {
        buy(&http, &three, &format!("three-{i}")).await;
    }
    let one_dir = one.data_dir.clone();
    let three_dir = three.data_dir.clone();
    one.stop();
    three.stop();
    let target = Node::start(&dir.path().join("t"), &["--role", "standby"]);
    let (code, a) = post(&http, &target, "", export(&one_dir, 1)).await;
    assert_eq!(code, 200, "{a}");
    let have = a["appliedSeq"].as_u64().unwrap();
    let (code, again) = post(&http, &target, "", export(&one_dir, 1)).await;
    assert_eq!(
        (code, &again["appliedRecords"]),
        (200, &serde_json::json!(0))
    );
    // Overlapping records of another epoch: refused, nothing applied.
    let (code, e) = post(&http, &target, "", export(&three_dir, 3)).await;
    assert_eq!((code, e["code"].as_str()), (409, Some("diverged")), "{e}");
    // The same in a body's second batch, after one that matches (`wal export` writes
    // several): before, only the first batch was checked, and the other log's records
    // past this one's end were applied after it — a mixed history.
    let mut two = export(&one_dir, 1);
    two.extend(export(&three_dir, 3));
    let (code, e) = post(&http, &target, "", two).await;
    assert_eq!((code, e["code"].as_str()), (409, Some("diverged")), "{e}");
    assert_eq!(admin(&http, &target).await["appliedSeq"], have);
    // A later batch that starts right after this node's log, the record before it not
    // in the body (records 1..=3 of this log, then the other's from have + 1): nothing
    // said which log that record is of. Before, applied: the other log's records after
    // this one's.
    let mut gap = first_records(&export(&one_dir, 1), 3);
    gap.extend(export(&three_dir, have + 1));
    let (code, e) = post(&http, &target, "", gap).await;
    assert_eq!(
        (code, e["code"].as_str()),
        (400, Some("bad_request")),
        "{e}"
    );
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains("must follow each other"),
        "{e}"
    );
    assert_eq!(admin(&http, &target).await["appliedSeq"], have);
    // A tail right after the last record must say that record's epoch…
    let tail = export(&three_dir, have + 1);
    let (code, e) = post(&http, &target, "", tail.clone()).await;
    assert_eq!(
        (code, e["code"].as_str()),
        (400, Some("bad_request")),
        "{e}"
    );
    assert!(e["detail"].as_str().unwrap().contains("prev_epoch"), "{e}");
    // …and it must be this log's.
    let (code, e) = post(&http, &target, "?prev_epoch=3", tail).await;
    assert_eq!((code, e["code"].as_str()), (409, Some("diverged")), "{e}");
    assert_eq!(admin(&http, &target).await["appliedSeq"], have);
}
