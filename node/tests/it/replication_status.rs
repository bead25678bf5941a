//! The replication block of `/admin/v1/status` tells the truth, as a person reading
//! `kubectl describe` during a sale needs it: a primary's `redisConnected` is true as soon
//! as it reaches Redis (not only after its first publish) and false once Redis is gone;
//! a secondary's `lagMs` grows while it stays behind, whatever the primary's clock says.

use crate::replication_support;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use flashsale_core::replication::{ChannelKey, ReplicationMode, decode_message, encode_message};
use flashsale_core::wal::{Batch, Record, RecordBody, encode_batch, encode_record};
use replication_support::node;
use replication_support::redis::Redis;
use replication_support::*;
use stock_node::replication::catchup::PrimaryClient;
use stock_node::replication::follower::{Follower, Replica};
use stock_node::replication::stream::Event;
use stock_node::replication::{ReplError, Stats};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Polls `check` on the node's replication block until it holds or `within` passes.
async fn until(
    http: &reqwest::Client,
    n: &Node,
    within: Duration,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let r = status(http, n).await["replication"].clone();
        if check(&r) || t0.elapsed() > within {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_primary_says_whether_it_reaches_redis() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start();
    let http = client();
    let sale = node::sale_file(dir.path(), &[("a", 10, 0)]);
    let args = ["--role", "primary", "--config", sale.to_str().unwrap()];
    let primary = node::start(&dir.path().join("p"), &redis.url(), &args);
    // No purchase: nothing published yet.
    let r = until(&http, &primary, Duration::from_secs(5), |r| {
        r["redisConnected"] == true
    })
    .await;
    assert_eq!(r["redisConnected"], true, "idle primary: {r}");
    redis.kill();
    let r = until(&http, &primary, Duration::from_secs(5), |r| {
        r["redisConnected"] == false
    })
    .await;
    assert_eq!(r["redisConnected"], false, "Redis gone: {r}");
    redis.restart();
    let r = until(&http, &primary, Duration::from_secs(10), |r| {
        r["redisConnected"] == true
    })
    .await;
    assert_eq!(r["redisConnected"], true, "Redis back: {r}");
}

/// A replica whose applies never finish: it hears of records it cannot make durable.
struct Stuck;

impl Replica for Stuck {
    fn applied_seq(&self) -> u64 {
        0
    }
    fn epoch(&self) -> u64 {
        1
    }
    async fn apply(&self, _batch: Batch) -> Result<u64, ReplError> {
        std::future::pending().await
    }
    async fn install_snapshot(&self, _bytes: Vec<u8>) -> Result<u64, ReplError> {
        std::future::pending().await
    }
    fn history(&self) -> Vec<flashsale_core::replication::EpochStart> {
        Vec::new()
    }
    async fn reseed(&self, _aside: String) -> Result<(), ReplError> {
        Ok(())
    }
}

/// A primary with nothing to catch up on: `GET /admin/v1/wal` answers 204 at sequence 0.
async fn empty_primary() -> String {
    let app = axum::Router::new().route(
        "/admin/v1/wal",
        axum::routing::get(|| async {
            (
                axum::http::StatusCode::NO_CONTENT,
                [("x-flashsale-durable-seq", "0"), ("x-flashsale-epoch", "1")],
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_stuck_behind_shows_its_lag_growing_whatever_the_primary_clock() {
    let stats = Arc::new(Stats::new(ReplicationMode::Async, "c".into()));
    let (tx, rx) = mpsc::channel(16);
    let (durable, _) = watch::channel(0);
    let follower = Follower {
        replica: Arc::new(Stuck),
        primary: PrimaryClient::new(&empty_primary().await, "t").unwrap(),
        stats: stats.clone(),
        durable,
        idle_poll: Duration::from_secs(60),
        ready: stock_node::replication::follower::Readiness::default().next(),
        reseeding: Default::default(),
    };
    let stop = CancellationToken::new();
    let run = tokio::spawn(follower.run(rx, Arc::new(AtomicBool::new(false)), stop.clone()));
    // Records 1..=10, published by a primary whose clock is 10 s ahead of ours.
    let mut frames = Vec::new();
    for seq in 1..=10 {
        let rec = Record {
            seq,
            epoch: 1,
            at_ms: 0,
            body: RecordBody::Confirm { order_id: seq },
        };
        encode_record(&rec, &mut frames).unwrap();
    }
    let sent_at_us = stock_node::replication::now_us() + 10_000_000;
    let key = ChannelKey::new("t", "c");
    let bytes = encode_message(&key, sent_at_us, &encode_batch(1, 1, 10, &frames));
    let msg = decode_message(&key, &bytes).unwrap();
    tx.send(Event::Message(msg, bytes.len())).await.unwrap();
    let t0 = Instant::now();
    while stats.status(0).lag_records == 0 && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats.status(0).lag_records, 10);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let st = stats.status(0);
    assert!(
        st.lag_ms >= 1000,
        "10 records behind for 1.2 s, yet lagMs is {}",
        st.lag_ms
    );
    stop.cancel();
    run.abort();
}
