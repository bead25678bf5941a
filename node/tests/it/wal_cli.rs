//! `stock-node wal verify | dump | export` on a real data directory, through the real
//! binary: what the operator's recovery Job and a person at a terminal get.

use std::process::Command;

use flashsale_core::admin::Role;
use flashsale_core::wal::{RecordBody, decode_batch};
use flashsale_core::{ItemSpec, PurchaseRequest, SaleConfig};
use stock_node::engine::{Engine, EngineOptions};

const BIN: &str = env!("CARGO_BIN_EXE_stock-node");

async fn sample_dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let e = Engine::open(EngineOptions {
        data_dir: tmp.path().to_owned(),
        initial_role: Some(Role::Primary),
        segment_bytes_max: 512,
        ..Default::default()
    })
    .unwrap();
    let cfg = SaleConfig {
        name: "cli".into(),
        items: vec![ItemSpec {
            sku: "a".into(),
            stock: 100,
            per_customer_limit: 0,
        }],
        starts_at_ms: None,
        ends_at_ms: None,
        reservation_ttl_ms: 60_000,
        durability: Default::default(),
    };
    e.configure(cfg).await.unwrap();
    for i in 0..20 {
        let req = PurchaseRequest {
            sku: "a".into(),
            quantity: 1,
            customer: format!("c{i}"),
            idempotency_key: format!("k{i}"),
        };
        e.purchase(req).await.unwrap();
    }
    drop(e);
    tmp
}

fn wal(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("wal")
        .args(args)
        .output()
        .expect("run stock-node")
}

#[tokio::test]
async fn verify_dump_export() {
    let tmp = sample_dir().await;
    let dir = tmp.path().to_str().unwrap();

    let out = wal(&["verify", dir]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["lastSeq"], 21);
    assert_eq!(report["records"], 21);
    assert!(report["tornTail"].is_null());
    assert!(
        report["segments"].as_array().unwrap().len() > 1,
        "small segments roll"
    );

    let out = wal(&["dump", dir, "--from", "19", "--json"]);
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines
            .iter()
            .map(|l| l["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![19, 20, 21]
    );
    assert_eq!(lines[0]["body"]["type"], "purchase");

    let file = tmp.path().join("export.bin");
    let out = wal(&[
        "export",
        dir,
        "--from",
        "5",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let batch = decode_batch(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        (batch.first_seq, batch.last_seq, batch.records.len()),
        (5, 21, 17)
    );
    assert!(
        matches!(&batch.records[0].body, RecordBody::Purchase { customer, .. } if customer == "c3")
    );
}

#[tokio::test]
async fn verify_fails_on_damage_in_the_middle_and_changes_nothing() {
    let tmp = sample_dir().await;
    let seg = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .min()
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[30] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();

    let out = wal(&["verify", tmp.path().to_str().unwrap()]);
    assert!(!out.status.success(), "verify must fail on a damaged log");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(seg.file_name().unwrap().to_str().unwrap()),
        "names the file: {err}"
    );
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "verify is read-only");
    let out = wal(&[
        "export",
        tmp.path().to_str().unwrap(),
        "--from",
        "1",
        "--out",
        "-",
    ]);
    assert!(!out.status.success(), "export refuses a damaged log");
}

use crate::common;

/// Runs `stock-node wal ship <dir> --to <node> <extra…>`: (exit code, stdout JSON).
fn ship(dir: &std::path::Path, to: &str, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let out = Command::new(BIN)
        .args(["wal", "ship"])
        .arg(dir)
        .args(["--to", to, "--admin-token", common::ADMIN_TOKEN])
        .args(extra)
        .output()
        .expect("run stock-node");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

async fn metric(node: &common::Node, name: &str) -> f64 {
    let text = common::metrics_text(&common::client(), node.url("/metrics")).await;
    common::metric_in(&text, name).unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ship_posts_the_tail_in_bounded_chunks_and_a_rerun_changes_nothing() {
    let src = sample_dir().await;
    let dir = tempfile::tempdir().unwrap();
    let node = common::Node::start(&dir.path().join("t"), &["--role", "standby"]);
    let (code, report, err) = ship(src.path(), &node.url(""), &["--chunk-bytes", "200"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(report["logEnd"], 21, "{report}");
    assert_eq!(report["recordsApplied"], 21, "{report}");
    assert_eq!(report["targetAppliedSeq"], 21, "{report}");
    // 21 records of ~50-120 bytes in chunks of 200 bytes: one group commit per chunk.
    assert!(metric(&node, "flashsale_engine_batches_total").await >= 8.0);
    for i in 0..20u64 {
        let o: serde_json::Value = reqwest::Client::new()
            .get(node.url(&format!("/v1/orders/{}", i + 2)))
            .bearer_auth(common::ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(o["idempotencyKey"], format!("k{i}"));
    }
    let (code, again, err) = ship(src.path(), &node.url(""), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        again["recordsApplied"], 0,
        "a rerun changes nothing: {again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_chunk_is_not_held_to_the_public_body_limit() {
    // The public routes take bodies of at most 1 KiB here; one chunk of the whole tail
    // (21 records, a few KiB) is an admin body with its own limit.
    let src = sample_dir().await;
    let dir = tempfile::tempdir().unwrap();
    let node = common::Node::start(
        &dir.path().join("t"),
        &["--role", "standby", "--body-bytes-max", "1024"],
    );
    let (code, report, err) = ship(src.path(), &node.url(""), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(report["recordsApplied"], 21, "{report}");
    let big = reqwest::Client::new()
        .post(node.url("/v1/purchases"))
        .header("content-type", "application/json")
        .body(vec![b' '; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413, "the public limit still holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ship_exit_codes_say_whether_a_retry_can_help() {
    let src = sample_dir().await;
    let dir = tempfile::tempdir().unwrap();
    // Nobody listens there: 5 (a retry may help).
    let (code, _, err) = ship(src.path(), "http://127.0.0.1:1", &["--attempts", "2"]);
    assert_eq!(code, 5, "{err}");
    // A primary takes no one's log: 4.
    let primary = common::Node::start(&dir.path().join("p"), &["--role", "primary"]);
    let (code, _, err) = ship(src.path(), &primary.url(""), &[]);
    assert_eq!(code, 4, "{err}");
    // A log damaged in the middle is not shipped: 3.
    let broken = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(src.path()).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, broken.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let first = std::fs::read_dir(broken.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".seg"))
        .min()
        .unwrap();
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&first, bytes).unwrap();
    let node = common::Node::start(&dir.path().join("t"), &["--role", "standby"]);
    let (code, _, err) = ship(broken.path(), &node.url(""), &[]);
    assert_eq!(code, 3, "{err}");
    // No token: 2.
    let out = Command::new(BIN)
        .args(["wal", "ship"])
        .arg(src.path())
        .args(["--to", &node.url("")])
        .env_remove("STOCK_NODE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A node whose log is another: 4.
    let other = sample_dir_at_epoch(7).await;
    let target = common::Node::start(&dir.path().join("o"), &["--role", "standby"]);
    let (code, _, err) = ship(other.path(), &target.url(""), &[]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = ship(src.path(), &target.url(""), &["--from", "1"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("diverged"), "{err}");
}

/// The recovery Job names the old primary's epoch: a volume whose log never reached it
/// (an empty one in its place, another node's log) is not the tail. Shipping it would
/// succeed and leave the candidate without the old primary's sales: 3, nothing sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ship_refuses_a_log_that_never_reached_the_expected_epoch() {
    let src = sample_dir_at_epoch(7).await;
    let empty = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = common::Node::start(&dir.path().join("t"), &["--role", "standby"]);
    for (log, expect) in [(empty.path(), "1"), (src.path(), "8")] {
        let (code, _, err) = ship(log, &node.url(""), &["--expect-epoch", expect]);
        assert_eq!(code, 3, "{err}");
        assert!(err.contains("it is not the log to recover"), "{err}");
    }
    assert_eq!(
        metric(&node, "flashsale_engine_records_total").await,
        0.0,
        "nothing was sent"
    );
    let (code, report, err) = ship(src.path(), &node.url(""), &["--expect-epoch", "7"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(report["targetAppliedSeq"], report["logEnd"], "{report}");
}

/// Like `sample_dir`, written by a primary of `epoch` (so its records are of that epoch).
async fn sample_dir_at_epoch(epoch: u64) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let e = Engine::open(EngineOptions {
        data_dir: tmp.path().to_owned(),
        initial_role: Some(Role::Standby),
        ..Default::default()
    })
    .unwrap();
    e.set_role(flashsale_core::admin::RoleAssignment {
        role: Role::Primary,
        epoch,
        primary_url: None,
    })
    .await
    .unwrap();
    e.configure(SaleConfig {
        name: "cli".into(),
        items: vec![ItemSpec {
            sku: "a".into(),
            stock: 100,
            per_customer_limit: 0,
        }],
        starts_at_ms: None,
        ends_at_ms: None,
        reservation_ttl_ms: 60_000,
        durability: Default::default(),
    })
    .await
    .unwrap();
    for i in 0..30 {
        e.purchase(PurchaseRequest {
            sku: "a".into(),
            quantity: 1,
            customer: format!("o{i}"),
            idempotency_key: format!("o{i}"),
        })
        .await
        .unwrap();
    }
    drop(e);
    tmp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ship_sends_a_snapshot_first_where_the_log_was_compacted() {
    let tmp = tempfile::tempdir().unwrap();
    let e = Engine::open(EngineOptions {
        data_dir: tmp.path().to_owned(),
        initial_role: Some(Role::Primary),
        segment_bytes_max: 512,
        snapshot_every_records: 10,
        ..Default::default()
    })
    .unwrap();
    e.configure(SaleConfig {
        name: "cli".into(),
        items: vec![ItemSpec {
            sku: "a".into(),
            stock: 1000,
            per_customer_limit: 0,
        }],
        starts_at_ms: None,
        ends_at_ms: None,
        reservation_ttl_ms: 60_000,
        durability: Default::default(),
    })
    .await
    .unwrap();
    for i in 0..80 {
        e.purchase(PurchaseRequest {
            sku: "a".into(),
            quantity: 1,
            customer: format!("c{i}"),
            idempotency_key: format!("k{i}"),
        })
        .await
        .unwrap();
        if i % 10 == 9 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    e.shutdown().await;
    drop(e);
    let first = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with("wal-"))
        .min()
        .unwrap();
    assert_ne!(
        first, "wal-00000000000000000001.seg",
        "the log was not compacted"
    );
    let dir = tempfile::tempdir().unwrap();
    let node = common::Node::start(&dir.path().join("t"), &["--role", "standby"]);
    let (code, report, err) = ship(tmp.path(), &node.url(""), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(report["snapshotSeq"].as_u64().is_some(), "{report}");
    assert_eq!(report["targetAppliedSeq"], 81, "{report}");
    let o: serde_json::Value = reqwest::Client::new()
        .get(node.url("/v1/orders/2"))
        .bearer_auth(common::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(o["idempotencyKey"], "k0", "from the snapshot");

    // A node whose log parted from this one (another epoch's primary wrote it) is
    // refused (exit 4), not replaced by the snapshot: with the start compacted, no
    // boundary record goes for it to check.
    let parted = common::Node::start(&dir.path().join("p"), &["--role", "standby"]);
    let http = reqwest::Client::new();
    let put = async |path: &str, body: serde_json::Value| {
        let r = http
            .put(parted.url(path))
            .bearer_auth(common::ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "{path}: {}",
            r.text().await.unwrap()
        );
    };
    put(
        "/admin/v1/role",
        serde_json::json!({"role": "primary", "epoch": 2}),
    )
    .await;
    put(
        "/admin/v1/config",
        serde_json::json!({"name": "cli", "items": [{"sku": "a", "stock": 5}], "reservationTtlMs": 60_000}),
    )
    .await;
    put(
        "/admin/v1/role",
        serde_json::json!({"role": "standby", "epoch": 3}),
    )
    .await;
    let (code, _, err) = ship(tmp.path(), &parted.url(""), &[]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("parted"), "{err}");
    let st: serde_json::Value = http
        .get(parted.url("/admin/v1/status"))
        .bearer_auth(common::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["appliedSeq"], 2, "unchanged: {st}");
}
