//! Quorum mode: the primary answers a purchase only once a secondary has it on disk.
//! Kill the primary right after an acknowledged purchase: the purchase is in the
//! secondary's WAL, read offline. Without a secondary, purchases answer 503, whatever
//! acks a forger publishes.

use crate::replication_support;

use std::process::Command;
use std::time::{Duration, Instant};

use flashsale_core::replication::{Ack, ChannelKey, ack_channel};
use replication_support::redis::{Redis, publish};
use replication_support::*;

fn purchase(key: &str) -> serde_json::Value {
    serde_json::json!({"sku": "a", "quantity": 1, "customer": key, "idempotencyKey": key})
}

/// `stock-node wal dump DIR` (offline), one JSON record per line.
fn dump(dir: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_stock-node"))
        .args(["wal", "dump"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wal dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_purchase_is_on_a_secondary_disk_when_the_primary_dies() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let http = client();
    let quorum = ["--replication", "quorum", "--quorum-timeout-ms", "3000"];
    let (mut primary, mut secondaries) =
        cluster(&http, dir.path(), &redis.url(), &[redis.url()], &quorum).await;
    // Wait until the secondary follows (its acks are what quorum waits for).
    let deadline = Instant::now() + Duration::from_secs(20);
    while http
        .get(secondaries[0].url("/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(Instant::now() < deadline, "secondary never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut acked = Vec::new();
    for i in 0..20 {
        let key = format!("q-{i}");
        let t0 = Instant::now();
        let r = http
            .post(primary.url("/v1/purchases"))
            .json(&purchase(&key))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        acked.push((key, t0.elapsed()));
    }
    // A secondary that cannot ack (paused) means no acknowledgement at all: the
    // primary answers 503 rather than 201 with one disk holding the sale.
    secondaries[0].signal("-STOP");
    let r = http
        .post(primary.url("/v1/purchases"))
        .json(&purchase("while-paused"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "acknowledged without a secondary's ack");
    secondaries[0].signal("-CONT");
    // Killed right after the last acknowledgement; the secondary too, before it could
    // fetch anything more.
    primary.kill9();
    secondaries[0].kill9();
    let wal = dump(&secondaries[0].data_dir);
    for (key, _) in &acked {
        assert!(
            wal.contains(&format!("\"idempotencyKey\":\"{key}\"")),
            "acknowledged {key} not on the secondary's disk"
        );
    }
    let worst = acked.iter().map(|(_, d)| *d).max().unwrap();
    println!("20 quorum purchases, slowest answer {worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secondary_quorum_purchases_fail_with_503() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let http = client();
    let quorum = ["--replication", "quorum", "--quorum-timeout-ms", "500"];
    let (primary, _) = cluster(&http, dir.path(), &redis.url(), &[], &quorum).await;
    // Meanwhile a forger who can reach the Redis acks everything for a secondary that
    // does not exist: the ack alone (JSON, as it was unsigned before), and one signed
    // with a key other than the sale's. Neither counts.
    let epoch = status(&http, &primary).await["epoch"].as_u64().unwrap();
    let ack = Ack {
        node: "ghost-1".into(),
        epoch,
        durable_seq: 1_000_000,
    };
    let forgeries = [
        serde_json::to_vec(&ack).unwrap(),
        ack.encode(&ChannelKey::new(
            "a guess",
            replication_support::node::CHANNEL,
        )),
    ];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let forger = std::thread::spawn({
        let (stop, port) = (stop.clone(), redis.port);
        move || {
            let channel = ack_channel(replication_support::node::CHANNEL);
            let mut heard = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for f in &forgeries {
                    heard += publish(port, &channel, f);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            heard
        }
    });
    let t0 = Instant::now();
    let r = http
        .post(primary.url("/v1/purchases"))
        .json(&purchase("lonely"))
        .send()
        .await
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        forger.join().unwrap() > 0,
        "the primary heard no forged ack"
    );
    assert_eq!(r.status(), 503, "acknowledged on a forged ack");
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["code"], "unavailable", "{e}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "the timeout did not bound the wait"
    );
    // Async mode on the same data answers at once: the difference is only the ack.
    let st = status(&http, &primary).await;
    assert_eq!(st["replication"]["mode"], "quorum");
}

/// The quorum hold follows who answered, not the node's role when the request
/// arrived: a standby promoted while a purchase's body is still on its way sells it
/// from its own engine, and that answer waits for a secondary's ack like any other
/// (here there is none: 503, "retry with the same key"). Before,
/// the hold was decided from the headers, where a standby's public request counted as
/// one to forward, and the purchase was acknowledged with no secondary holding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_answered_after_a_promotion_waits_for_the_quorum() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let http = client();
    let quorum = ["--replication", "quorum", "--quorum-timeout-ms", "500"];
    let (node, _) = cluster(&http, dir.path(), &redis.url(), &[], &quorum).await;
    set_role(&http, &node, "standby", 2, None).await;
    // The headers and a part of the body, then the promotion, then the rest.
    let body = serde_json::to_vec(&purchase("late")).unwrap();
    let mut tcp = tokio::net::TcpStream::connect(&node.addr).await.unwrap();
    let head = format!(
        "POST /v1/purchases HTTP/1.1\r\nhost: node\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_role(&http, &node, "primary", 3, None).await;
    tcp.write_all(&body[10..]).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut answer))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "acknowledged without a secondary: {answer}"
    );
    assert!(answer.contains(r#""code":"unavailable""#), "{answer}");
}

/// A secondary that restarts caught up has nothing new to apply, yet it acks what it
/// holds from the start: after the primary restarts too (its count of acks starts
/// empty), a retried purchase is answered on a quiet sale. Before, the secondary's
/// acks began only with the next batch it applied, and the retry answered 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_secondary_acks_what_it_holds_without_a_new_batch() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let http = client();
    let quorum = ["--replication", "quorum", "--quorum-timeout-ms", "3000"];
    let (mut primary, mut secondaries) =
        cluster(&http, dir.path(), &redis.url(), &[redis.url()], &quorum).await;
    let ready = async |node: &Node| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while http
            .get(node.url("/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok()
            != Some(200)
        {
            assert!(Instant::now() < deadline, "{} never ready", node.url(""));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    ready(&secondaries[0]).await;
    let buy = async |node: &Node| {
        let r = http
            .post(node.url("/v1/purchases"))
            .json(&purchase("quiet"))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    };
    let (status, first) = buy(&primary).await;
    assert_eq!(status, 201, "{first}");
    primary.restart();
    secondaries[0].restart();
    set_role(
        &http,
        &secondaries[0],
        "secondary",
        1,
        Some(&primary.url("")),
    )
    .await;
    ready(&secondaries[0]).await;
    let (status, again) = buy(&primary).await;
    assert!(status == 201 || status == 200, "{status}: {again}");
    let id = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap()["id"].clone();
    assert_eq!(id(&again), id(&first), "the same order");
}
