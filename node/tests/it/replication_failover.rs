//! The node side of a failover: a secondary that missed the primary's last purchases
//! (paused while they were acknowledged), the primary killed, its WAL tail exported
//! offline (`stock-node wal export`) and posted to the secondary (`POST /admin/v1/wal`),
//! then the secondary promoted with a new epoch: every acknowledged purchase is there,
//! it sells on from the next sequence, and the old epoch is fenced out.

use crate::replication_support;

use std::process::Command;

use replication_support::drop_proxy::DropProxy;
use replication_support::redis::Redis;
use replication_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_takes_the_old_primarys_tail_and_is_promoted() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let proxy = DropProxy::start(redis.port, 0.0).await;
    let http = client();
    // No idle polls: what the secondary misses on the stream stays missed.
    let extra = ["--replication-idle-poll-ms", "600000"];
    let (mut primary, mut secondaries) =
        cluster(&http, dir.path(), &redis.url(), &[proxy.url()], &extra).await;
    let s = &mut secondaries[0];
    let mut acked = Vec::new();
    let buy = |key: String| serde_json::json!({"sku": "a", "quantity": 1, "customer": key, "idempotencyKey": key});
    for i in 0..20 {
        let r = http
            .post(primary.url("/v1/purchases"))
            .json(&buy(format!("early-{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        acked.push(r.json::<serde_json::Value>().await.unwrap());
    }
    assert_converged(&http, &primary, s).await;
    // The secondary misses these (async mode: acknowledged on the primary's disk only).
    proxy.set_drop_share(1.0);
    for i in 0..20 {
        let r = http
            .post(primary.url("/v1/purchases"))
            .json(&buy(format!("late-{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        acked.push(r.json::<serde_json::Value>().await.unwrap());
    }
    primary.kill9();
    let have = status(&http, s).await["appliedSeq"].as_u64().unwrap();

    // The tail exported from the dead primary's volume, from the secondary's last record
    // on (the overlap lets it check that the tail continues its own log).
    let out = Command::new(env!("CARGO_BIN_EXE_stock-node"))
        .args(["wal", "export", "--from", &have.to_string()])
        .arg(&primary.data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = http
        .post(s.url("/admin/v1/wal"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/octet-stream")
        .body(out.stdout.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(answer["appliedRecords"], 20, "{answer}");
    assert_eq!(answer["appliedSeq"], acked[39]["id"], "{answer}");
    // Posting the same tail again changes nothing.
    let again = http
        .post(s.url("/admin/v1/wal"))
        .bearer_auth(ADMIN_TOKEN)
        .body(out.stdout)
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.json::<serde_json::Value>().await.unwrap()["appliedRecords"],
        0
    );

    set_role(&http, s, "primary", 2, None).await;
    for o in &acked {
        let r = http
            .get(s.url(&format!("/v1/orders/{}", o["id"])))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "acknowledged order {} lost in the failover",
            o["id"]
        );
        assert_eq!(
            r.json::<serde_json::Value>().await.unwrap()["idempotencyKey"],
            o["idempotencyKey"]
        );
    }
    // A retry of an acknowledged purchase gets its first answer from the new primary.
    let r = http
        .post(s.url("/v1/purchases"))
        .json(&buy("late-19".into()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["id"],
        acked[39]["id"]
    );
    // It sells on, after everything it took over.
    let r = http
        .post(s.url("/v1/purchases"))
        .json(&buy("after".into()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_u64()
        .unwrap();
    assert!(id > acked[39]["id"].as_u64().unwrap());
    // The old epoch can no longer tell it what to be.
    let body =
        serde_json::json!({"role": "secondary", "epoch": 1, "primaryUrl": "http://127.0.0.1:1"});
    let r = http
        .put(s.url("/admin/v1/role"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        409,
        "the admin contract answers an older epoch with 409 fenced"
    );
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["code"],
        "fenced"
    );
}
