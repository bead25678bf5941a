//! The order ledger against the WAL: a node sells, confirms some orders and cancels
//! others, compacts into snapshots along the way and restarts; the ledger it serves
//! (`GET /admin/v1/ledger`, JSON lines and CSV) and the one `stock-node wal ledger`
//! reads offline from its data directory are the same rows, and those rows are exactly
//! the confirmed orders of the client's own record — each once, with its sku,
//! quantity, customer and key — and agree with the WAL's records (`wal dump`): the
//! purchase's epoch, the confirm's time.

use crate::common;

use std::collections::BTreeMap;
use std::process::Command;

use common::{ADMIN_TOKEN, Node, client, purchase, sale_file};
use serde_json::Value;

async fn ledger_online(node: &Node, format: &str) -> (String, String) {
    let res = client()
        .get(node.url(&format!("/admin/v1/ledger?format={format}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ct = res.headers()["content-type"].to_str().unwrap().to_string();
    (ct, res.text().await.unwrap())
}

fn ledger_offline(dir: &std::path::Path, format: &str) -> String {
    let out = Command::new(common::node_bin())
        .args(["wal", "ledger", "--format", format])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn jsonl(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn the_ledger_is_every_confirmed_order_once_online_and_offline_as_the_wal_says() {
    let dir = tempfile::tempdir().unwrap();
    let sale = sale_file(dir.path(), &[("tee", 1_000, 0), ("cap", 1_000, 0)]);
    let data = dir.path().join("data");
    let args = [
        "--config",
        sale.to_str().unwrap(),
        // Snapshots (and the log before them removed) every 25 records: the ledger
        // must come whole from snapshot + log.
        "--snapshot-every-records",
        "25",
        "--segment-bytes-max",
        "4096",
    ];
    let mut node = Node::start(&data, &args);
    let http = client();
    // id → (sku, quantity, customer, key) of every order this client confirmed.
    let mut confirmed: BTreeMap<u64, (String, u64, String, String)> = BTreeMap::new();
    for round in 0..2 {
        for i in 0..60u32 {
            let sku = if i % 2 == 0 { "tee" } else { "cap" };
            let customer = format!("c{round}-{i}, \"the {i}th\"");
            let key = format!("r{round}-k{i}");
            let q = 1 + i % 3;
            let a: Value = http
                .post(node.url("/v1/purchases"))
                .json(&purchase(sku, q, &customer, &key))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let id = a["id"].as_u64().unwrap();
            let verb = match i % 3 {
                0 => "confirm",
                1 => "cancel",
                _ => continue, // left reserved
            };
            let r = http
                .post(node.url(&format!("/v1/orders/{id}/{verb}")))
                .header("Flashsale-Customer", &customer)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            if verb == "confirm" {
                confirmed.insert(id, (sku.into(), q.into(), customer, key));
            }
        }
        if round == 0 {
            // A restart between the rounds: the ledger survives it.
            assert!(node.stop().success());
            node = Node::start(&data, &args);
        }
    }
    let snapshots = std::fs::read_dir(&data)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("snap-")
        })
        .count();
    assert!(snapshots > 0, "the test must cover compacted records");

    let (ct, online) = ledger_online(&node, "jsonl").await;
    assert_eq!(ct, "application/jsonl");
    let rows = jsonl(&online);
    let got: BTreeMap<u64, (String, u64, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["id"].as_u64().unwrap(),
                (
                    r["sku"].as_str().unwrap().into(),
                    r["quantity"].as_u64().unwrap(),
                    r["customer"].as_str().unwrap().into(),
                    r["idempotencyKey"].as_str().unwrap().into(),
                ),
            )
        })
        .collect();
    assert_eq!(rows.len(), got.len(), "an order twice in the ledger");
    assert_eq!(got, confirmed, "the ledger is not the confirmed orders");
    let ids: Vec<u64> = rows.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ordered by id");

    // CSV: the same rows.
    let (ct, csv) = ledger_online(&node, "csv").await;
    assert!(ct.starts_with("text/csv"), "{ct}");
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let csv_ids: Vec<u64> = reader
        .records()
        .map(|r| r.unwrap()[0].parse().unwrap())
        .collect();
    assert_eq!(csv_ids, ids);

    // A bad format: 400 naming it.
    let bad = http
        .get(node.url("/admin/v1/ledger?format=xml"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let bad: Value = bad.json().await.unwrap();
    assert_eq!(bad["field"], "format");

    // Offline, from the data directory of the stopped node: the same rows.
    assert!(node.stop().success());
    assert_eq!(jsonl(&ledger_offline(&data, "jsonl")), rows);
    assert_eq!(ledger_offline(&data, "csv"), csv);

    // The confirm records still in the log (the rest were compacted) say the same time
    // and epoch as the ledger.
    let dump = Command::new(common::node_bin())
        .args(["wal", "dump"])
        .arg(&data)
        .output()
        .unwrap();
    let records = jsonl(&String::from_utf8(dump.stdout).unwrap());
    let by_id: BTreeMap<u64, &Value> = rows
        .iter()
        .map(|r| (r["id"].as_u64().unwrap(), r))
        .collect();
    let mut checked = 0;
    for rec in &records {
        if rec["body"]["type"] == "confirm" {
            let row = by_id[&rec["body"]["orderId"].as_u64().unwrap()];
            assert_eq!(row["confirmedAtMs"], rec["atMs"]);
            checked += 1;
        }
        if rec["body"]["type"] == "purchase"
            && let Some(row) = by_id.get(&rec["seq"].as_u64().unwrap())
        {
            assert_eq!(row["epoch"], rec["epoch"]);
            assert_eq!(row["createdAtMs"], rec["atMs"]);
        }
    }
    assert!(checked > 0, "some confirms must still be in the log");
}
