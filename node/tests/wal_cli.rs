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
