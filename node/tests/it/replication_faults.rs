//! Replication survives what pub/sub does not promise: Redis killed and restarted
//! mid-sale, a share of the live messages dropped on the way, a secondary paused past
//! Redis's pub/sub output buffer limit (so Redis cuts it off), and a secondary
//! `kill -9`ed and restarted. Each ends with the full-state comparison.

use crate::replication_support;

use std::time::{Duration, Instant};

use replication_support::drop_proxy::DropProxy;
use replication_support::node;
use replication_support::redis::Redis;
use replication_support::*;

/// Starts the purchase load on `primary`; returns the stop switch and the task.
fn load(
    http: &reqwest::Client,
    primary: &Node,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<LoadReport>,
) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(purchase_load(
        http.clone(),
        primary.url(""),
        6,
        &["a", "b", "c"],
        rx,
    ));
    (tx, task)
}

async fn repl(http: &reqwest::Client, node: &Node) -> serde_json::Value {
    status(http, node).await["replication"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_mid_sale() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start();
    let http = client();
    let (primary, secondaries) = cluster(
        &http,
        dir.path(),
        &redis.url(),
        &[redis.url(), redis.url()],
        &[],
    )
    .await;
    let (stop, task) = load(&http, &primary);
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.kill();
    // The primary keeps selling without Redis…
    let before = status(&http, &primary).await["durableSeq"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = status(&http, &primary).await["durableSeq"]
        .as_u64()
        .unwrap();
    assert!(
        during > before + 50,
        "the primary stopped selling without Redis ({before} → {during})"
    );
    redis.restart();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send(true).unwrap();
    let report = task.await.unwrap();
    assert!(report.acked.len() > 200, "{report:?}");
    for s in &secondaries {
        let state = assert_converged(&http, &primary, s).await;
        for (id, key) in &report.acked {
            assert_eq!(state.orders[id]["idempotencyKey"], key.as_str());
        }
        // …and the secondaries reconnect to the restarted Redis and go back to live,
        // having counted what the stream missed meanwhile as repaired gaps. (Converged
        // is not yet live: the catch-up a resubscribe starts may still be finishing.)
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut r = repl(&http, s).await;
        while r["state"] != "live" && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            r = repl(&http, s).await;
        }
        assert_eq!(r["redisConnected"], true, "{r}");
        assert_eq!(r["state"], "live", "{r}");
        assert!(
            r["gaps"].as_u64().unwrap() >= 1,
            "Redis outage not counted: {r}"
        );
    }
    let p = repl(&http, &primary).await;
    assert!(
        p["publishDropped"].as_u64().unwrap() > 0,
        "nothing was dropped while Redis was down? {p}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_messages_are_repaired() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let proxy = DropProxy::start(redis.port, 0.3).await;
    let http = client();
    let (primary, secondaries) =
        cluster(&http, dir.path(), &redis.url(), &[proxy.url()], &[]).await;
    let (stop, task) = load(&http, &primary);
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.send(true).unwrap();
    let report = task.await.unwrap();
    assert_converged(&http, &primary, &secondaries[0]).await;
    let dropped = proxy
        .counts
        .dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    let r = repl(&http, &secondaries[0]).await;
    assert!(dropped > 10, "the proxy dropped only {dropped} messages");
    assert!(
        r["gaps"].as_u64().unwrap() > 0,
        "no gap was seen although {dropped} messages were dropped: {r}"
    );
    println!(
        "{} purchases, {dropped} messages dropped, secondary: {r}",
        report.acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_paused_past_the_pubsub_buffer_limit_catches_up() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    // Redis disconnects a subscriber at once when 64 KiB of messages wait for it.
    assert_eq!(
        redis
            .command(&[
                "CONFIG",
                "SET",
                "client-output-buffer-limit",
                "pubsub 65536 0 0"
            ])
            .as_deref(),
        Some("+OK\r\n")
    );
    let http = client();
    let (primary, secondaries) =
        cluster(&http, dir.path(), &redis.url(), &[redis.url()], &[]).await;
    let s = &secondaries[0];
    let (stop, task) = load(&http, &primary);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = metric(&http, s, "flashsale_replication_catchup_records_total").await;
    s.signal("-STOP");
    // Past the kernel's socket buffers too: a few MiB on the channel (junk, which a
    // secondary that received it would count as damaged and repair the same way).
    let junk = "x".repeat(1 << 20);
    for _ in 0..16 {
        redis.command(&["PUBLISH", node::CHANNEL, &junk]);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.signal("-CONT");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_converged(&http, &primary, s).await;
    let r = repl(&http, s).await;
    assert_eq!(r["state"], "live", "{r}");
    assert!(
        redis.log().contains("output buffer limits"),
        "Redis did not disconnect the paused secondary"
    );
    // Redis cut it off: what it missed came from the primary's WAL, not the stream.
    let after = metric(&http, s, "flashsale_replication_catchup_records_total").await;
    assert!(after > before, "nothing caught up after the pause: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_killed_and_restarted_resumes_from_its_own_wal() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let http = client();
    let (primary, mut secondaries) =
        cluster(&http, dir.path(), &redis.url(), &[redis.url()], &[]).await;
    let (stop, task) = load(&http, &primary);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = &mut secondaries[0];
    s.kill9();
    let at_kill = status(&http, &primary).await["durableSeq"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Restarted with no role assignment: its WAL says whom it follows.
    s.restart();
    let after = status(&http, s).await;
    assert_eq!(after["role"], "secondary", "{after}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.send(true).unwrap();
    let report = task.await.unwrap();
    let state = assert_converged(&http, &primary, s).await;
    for (id, key) in &report.acked {
        assert_eq!(state.orders[id]["idempotencyKey"], key.as_str());
    }
    // It fetched the tail it missed, not the whole log again.
    let fetched = metric(&http, s, "flashsale_replication_catchup_records_total").await as u64;
    assert!(
        fetched < state.applied_seq,
        "fetched {fetched} of {} records",
        state.applied_seq
    );
    assert!(
        fetched > 0 && at_kill > 100,
        "fetched {fetched}, {at_kill} records before the kill"
    );
    let ready = http.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_secondary_bootstraps_from_a_snapshot_when_the_log_was_compacted() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let http = client();
    // Small segments and frequent snapshots: the primary drops its oldest records fast.
    let compact = [
        "--snapshot-every-records",
        "300",
        "--segment-bytes-max",
        "16384",
    ];
    let (primary, _) = cluster(&http, dir.path(), &redis.url(), &[], &compact).await;
    let (stop, task) = load(&http, &primary);
    // Joins mid-sale, once record 1 was compacted away.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let wal = http
            .get(primary.url("/admin/v1/wal?from=1"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        if wal.status() == 410 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the primary never compacted record 1"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The snapshot says the epoch of the node that served it (a secondary refuses one
    // from a node that stepped down).
    let snap = http
        .get(primary.url("/admin/v1/snapshot"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(snap.status(), 200);
    assert_eq!(snap.headers()["x-flashsale-epoch"], "1");
    let s = node::start(
        &dir.path().join("late"),
        &redis.url(),
        &["--role", "standby", "--node-name", "late"],
    );
    set_role(&http, &s, "secondary", 1, Some(&primary.url(""))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send(true).unwrap();
    let report = task.await.unwrap();
    let state = assert_converged(&http, &primary, &s).await;
    for (id, key) in &report.acked {
        assert_eq!(state.orders[id]["idempotencyKey"], key.as_str());
    }
    assert_eq!(
        metric(&http, &s, "flashsale_replication_snapshots_installed_total").await,
        1.0
    );
    assert_eq!(
        http.get(s.url("/readyz")).send().await.unwrap().status(),
        200
    );
    // Its own WAL now starts after the snapshot, and it restarts from it.
    let mut s = s;
    s.restart();
    assert_converged(&http, &primary, &s).await;
}
