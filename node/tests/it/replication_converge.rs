//! Under continuous purchases (with confirms and cancels), every secondary converges to
//! exactly the primary's sale: every item's counters and every order, compared whole.

use crate::replication_support;

use std::time::Duration;

use replication_support::redis::Redis;
use replication_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondaries_converge_to_the_primary_under_load() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let http = client();
    let (primary, secondaries) = cluster(
        &http,
        dir.path(),
        &redis.url(),
        &[redis.url(), redis.url()],
        &[],
    )
    .await;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // The one unit of `d` goes first: a secondary must then refuse `d` by itself.
    let body = serde_json::json!({"sku": "d", "quantity": 1, "customer": "first", "idempotencyKey": "d-1"});
    let r = http
        .post(primary.url("/v1/purchases"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let load = tokio::spawn(purchase_load(
        http.clone(),
        primary.url(""),
        8,
        &["a", "b", "c"],
        stop_rx,
    ));
    // Mid-load, the secondaries follow the live stream (not only catch-up polls).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for s in &secondaries {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let st = status(&http, s).await;
            assert_eq!(st["role"], "secondary");
            if st["replication"]["state"] == "live" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "secondary never live mid-load: {st}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_tx.send(true).unwrap();
    let report = load.await.unwrap();
    assert!(
        report.acked.len() > 200,
        "too little load to mean anything: {report:?}"
    );

    for s in &secondaries {
        let state = assert_converged(&http, &primary, s).await;
        // Every acknowledged purchase is on the secondary, under its id.
        for (id, key) in &report.acked {
            assert_eq!(state.orders[id]["idempotencyKey"], key.as_str());
        }
        // A secondary answers reads with the sequence it has applied…
        let r = http.get(s.url("/v1/items/a")).send().await.unwrap();
        let seq: u64 = r.headers()["x-flashsale-applied-seq"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(seq, state.applied_seq);
        // …refuses a sold-out item locally (409), and forwards other purchases to the primary.
        let body = serde_json::json!({"sku": "d", "quantity": 1, "customer": "y", "idempotencyKey": "d-2"});
        let r = http
            .post(s.url("/v1/purchases"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["code"], "sold_out");
        let body = serde_json::json!({"sku": "a", "quantity": 1, "customer": "x", "idempotencyKey": "on-secondary"});
        let r = http
            .post(s.url("/v1/purchases"))
            .json(&body)
            .send()
            .await
            .unwrap();
        // Forwarded (`stock_node::forward`): the primary's order, durable there.
        assert_eq!(r.status(), 201);
        let o: serde_json::Value = r.json().await.unwrap();
        let id = o["id"].as_u64().unwrap();
        let there = http
            .get(primary.url(&format!("/v1/orders/{id}")))
            .header("Flashsale-Customer", "x")
            .send()
            .await
            .unwrap();
        assert_eq!(there.status(), 200);
        assert_eq!(
            there.json::<serde_json::Value>().await.unwrap()["idempotencyKey"],
            "on-secondary"
        );
    }
    // Catch-up is an admin route: no token, no WAL.
    let r = http
        .get(primary.url("/admin/v1/wal?from=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(primary.url("/admin/v1/snapshot"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let st = status(&http, &secondaries[0]).await;
    println!("secondary status after the run: {}", st["replication"]);
    println!(
        "load: {} acked, {} confirmed, {} cancelled, {} refused",
        report.acked.len(),
        report.confirmed,
        report.cancelled,
        report.refused
    );
}

/// A secondary that joins far behind a primary under steady load becomes ready: catch-up
/// ends once it holds what the primary had durable when it answered (the live stream
/// brings the rest), not only when the primary has nothing newer at all — under a
/// crowd that moment never comes, and the secondary stayed "catching up" for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_joining_behind_a_busy_primary_becomes_ready_under_load() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let http = client();
    let (primary, _) = cluster(&http, dir.path(), &redis.url(), &[], &[]).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(purchase_load(
        http.clone(),
        primary.url(""),
        16,
        &["a", "b"],
        stop_rx,
    ));
    // A backlog first, then a secondary joins while the crowd goes on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = node::start(
        &dir.path().join("late"),
        &redis.url(),
        &["--role", "standby", "--node-name", "late"],
    );
    set_role(&http, &s, "secondary", 1, Some(&primary.url(""))).await;
    let joined = std::time::Instant::now();
    let deadline = joined + Duration::from_secs(20);
    loop {
        let r = http.get(s.url("/readyz")).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        let why = r.text().await.unwrap_or_default();
        if std::time::Instant::now() > deadline {
            stop_tx.send(true).unwrap();
            let st = status(&http, &s).await;
            panic!(
                "the late secondary is not ready 20 s after joining, under load: {why}; {}",
                st["replication"]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("ready {:?} after joining, under load", joined.elapsed());
    stop_tx.send(true).unwrap();
    let report = load.await.unwrap();
    assert!(
        report.acked.len() > 1000,
        "too little load: {}",
        report.acked.len()
    );
    let state = assert_converged(&http, &primary, &s).await;
    for (id, key) in &report.acked {
        assert_eq!(state.orders[id]["idempotencyKey"], key.as_str());
    }
}

/// A batch from an older epoch (a deposed primary still publishing) is refused and
/// counted; damaged bytes on the channel, and a batch not signed with the sale's key,
/// are dropped and counted; none changes the secondary's sale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epochs_and_damaged_messages_are_refused() {
    use flashsale_core::replication::{ChannelKey, encode_message};
    use flashsale_core::wal::{Record, RecordBody, encode_batch, encode_record};

    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let http = client();
    let (primary, secondaries) =
        cluster(&http, dir.path(), &redis.url(), &[redis.url()], &[]).await;
    let s = &secondaries[0];
    let before = assert_converged(&http, &primary, s).await;

    // One purchase at `seq` of `epoch`, as a message signed with `key`.
    let purchase_message = |key: &ChannelKey,
                            epoch: u64,
                            seq: u64,
                            at_ms: i64,
                            idempotency_key: &str,
                            expires_at_ms: i64| {
        let mut frames = Vec::new();
        let body = RecordBody::Purchase {
            sku: "a".into(),
            quantity: 1,
            customer: "ghost".into(),
            idempotency_key: idempotency_key.into(),
            expires_at_ms,
        };
        encode_record(
            &Record {
                seq,
                epoch,
                at_ms,
                body,
            },
            &mut frames,
        )
        .unwrap();
        encode_message(key, 0, &encode_batch(epoch, seq, seq, &frames))
    };
    let key = ChannelKey::new(
        replication_support::ADMIN_TOKEN,
        replication_support::node::CHANNEL,
    );
    // What an old primary of epoch 0 would publish next: a purchase at the next sequence.
    let seq = before.applied_seq + 1;
    let stale = purchase_message(&key, 0, seq, 1, "from-the-past", i64::MAX);
    assert_eq!(redis.publish(replication_support::node::CHANNEL, &stale), 1);
    let mut damaged = stale.clone();
    // A byte of the batch (the signature is the last 32): a checksum mismatch.
    let last = damaged.len() - flashsale_core::replication::TAG_BYTES - 1;
    damaged[last] ^= 0xff;
    assert_eq!(
        redis.publish(replication_support::node::CHANNEL, &damaged),
        1
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = status(&http, s).await["replication"].clone();
        if r["staleEpochs"].as_u64() >= Some(1) && r["damaged"].as_u64() >= Some(1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not refused and counted: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = assert_converged(&http, &primary, s).await;
    assert_eq!(after, before, "a refused batch changed the secondary");

    // What anyone who can reach the Redis could publish: the very batch the primary
    // would send next (its epoch, the next sequence, a purchase that applies), with a
    // right checksum, signed with a key other than the sale's. Dropped as damaged.
    let epoch = status(&http, &primary).await["epoch"].as_u64().unwrap();
    let forged = purchase_message(
        &ChannelKey::new("a guess", replication_support::node::CHANNEL),
        epoch,
        seq,
        1_800_000_000_000,
        "forged",
        1_800_000_060_000,
    );
    assert_eq!(
        redis.publish(replication_support::node::CHANNEL, &forged),
        1
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = status(&http, s).await;
        if st["replication"]["damaged"].as_u64() >= Some(2)
            || st["appliedSeq"].as_u64() > Some(before.applied_seq)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the forged message was neither counted nor applied: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = assert_converged(&http, &primary, s).await;
    assert_eq!(after, before, "a forged batch was applied");

    // What a primary of a newer epoch would publish (one that took over where this
    // node's log may not be a prefix of its own): not applied from the stream; catching
    // up asks the node's primary, which has no such record.
    let newer = purchase_message(
        &key,
        99,
        seq,
        1_800_000_000_000,
        "from-elsewhere",
        1_800_000_060_000,
    );
    assert_eq!(redis.publish(replication_support::node::CHANNEL, &newer), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = assert_converged(&http, &primary, s).await;
    assert_eq!(
        after, before,
        "a newer epoch's batch was applied from the stream"
    );
}

/// A secondary that hears only messages it cannot use (damaged, or signed with another
/// key: a primary of another version during an upgrade, or a forger flooding the
/// channel) while its primary sells still catches up: it asks the primary once per idle
/// poll instead of waiting for a quiet stream that never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_hearing_only_bad_messages_still_catches_up() {
    use flashsale_core::replication::{ChannelKey, encode_message};
    use flashsale_core::wal::encode_batch;
    use replication_support::redis::publish;

    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let http = client();
    // The primary publishes nowhere (no Redis on that port); the secondary hears the
    // Redis, where only the forger publishes, every 50 ms (the idle poll is 1 s).
    let nowhere = format!(
        "redis://127.0.0.1:{}",
        replication_support::redis::free_port()
    );
    let (primary, secondaries) = cluster(&http, dir.path(), &nowhere, &[redis.url()], &[]).await;
    let s = &secondaries[0];
    assert_converged(&http, &primary, s).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let forger = std::thread::spawn({
        let (stop, port) = (stop.clone(), redis.port);
        let junk = encode_message(
            &ChannelKey::new("a guess", replication_support::node::CHANNEL),
            0,
            &encode_batch(1, 1, 0, &[]),
        );
        move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                publish(port, replication_support::node::CHANNEL, &junk);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..20 {
        let r = http
            .post(primary.url("/v1/purchases"))
            .json(&serde_json::json!({"sku": "a", "quantity": 1, "customer": format!("c{i}"), "idempotencyKey": format!("k{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let target = status(&http, &primary).await["durableSeq"].as_u64();
    let sold = std::time::Instant::now();
    let deadline = sold + Duration::from_secs(10);
    let caught_up = loop {
        let st = status(&http, s).await;
        if st["appliedSeq"].as_u64() >= target {
            break st;
        }
        if std::time::Instant::now() > deadline {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            panic!("the secondary did not catch up in 10 s while hearing only bad messages: {st}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    forger.join().unwrap();
    println!("caught up {:?} after the last purchase", sold.elapsed());
    assert!(caught_up["replication"]["damaged"].as_u64() >= Some(1));
    assert_converged(&http, &primary, s).await;
}
