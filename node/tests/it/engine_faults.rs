//! A disk that fails under the engine: a failed `fdatasync` acknowledges nothing,
//! the engine stops taking writes instead of carrying on with a state the disk may
//! not have, reads keep showing only what was durable, and a restart comes back with
//! every order that was acknowledged.

use std::sync::Arc;

use flashsale_core::admin::Role;
use flashsale_core::{ItemSpec, PurchaseRequest, SaleConfig, SellError};
use stock_node::engine::{Engine, EngineHandle, EngineOptions};
use stock_node::wal::MemDir;

fn open(dir: &MemDir) -> EngineHandle {
    Engine::open(EngineOptions {
        dir: Some(Arc::new(dir.clone())),
        initial_role: Some(Role::Primary),
        ..Default::default()
    })
    .unwrap()
}

fn buy(key: &str) -> PurchaseRequest {
    PurchaseRequest {
        sku: "a".into(),
        quantity: 1,
        customer: key.into(),
        idempotency_key: key.into(),
    }
}

#[tokio::test]
async fn a_failed_sync_acknowledges_nothing_and_stops_writes() {
    let dir = MemDir::new();
    let e = open(&dir);
    let cfg = SaleConfig {
        name: "faults".into(),
        items: vec![ItemSpec {
            sku: "a".into(),
            stock: 10,
            per_customer_limit: 0,
        }],
        starts_at_ms: None,
        ends_at_ms: None,
        reservation_ttl_ms: 60_000,
        durability: Default::default(),
    };
    e.configure(cfg).await.unwrap();
    let ok = e.purchase(buy("k1")).await.unwrap();

    dir.set_fail_sync(true);
    assert!(
        matches!(e.purchase(buy("k2")).await, Err(SellError::Internal(_))),
        "not durable, not acknowledged"
    );
    assert!(
        matches!(e.purchase(buy("k3")).await, Err(SellError::Unavailable(_))),
        "no writes after a failed sync"
    );
    assert!(e.status().failed.is_some());
    assert_eq!(
        e.item("a").unwrap().held,
        1,
        "reads show only durable changes"
    );
    assert_eq!(e.status().durable_seq, ok.id);

    drop(e);
    dir.crash(|_, _| 0);
    dir.set_fail_sync(false);
    let e = open(&dir);
    assert_eq!(e.order(ok.id), Some(ok.clone()));
    assert_eq!(e.item("a").unwrap().held, 1);
    // The unacknowledged purchase may be retried with its key and sells once.
    let retry = e.purchase(buy("k2")).await.unwrap();
    assert_eq!(e.purchase(buy("k2")).await.unwrap(), retry);
    assert_eq!(e.item("a").unwrap().held, 2);
    e.shutdown().await;
}

#[tokio::test]
async fn a_data_dir_has_one_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        data_dir: tmp.path().to_owned(),
        initial_role: Some(Role::Primary),
        ..Default::default()
    };
    let e = Engine::open(opts.clone()).unwrap();
    assert!(matches!(
        Engine::open(opts.clone()),
        Err(stock_node::engine::EngineError::Locked(_))
    ));
    e.shutdown().await;
    drop(e);
    Engine::open(opts).expect("free again once the first engine is gone");
}

#[tokio::test]
async fn a_damaged_newest_snapshot_falls_back_to_the_older_one() {
    let dir = MemDir::new();
    let e = Engine::open(EngineOptions {
        dir: Some(Arc::new(dir.clone())),
        initial_role: Some(Role::Primary),
        snapshot_every_records: 4,
        segment_bytes_max: 256,
        ..Default::default()
    })
    .unwrap();
    let cfg = SaleConfig {
        name: "snap".into(),
        items: vec![ItemSpec {
            sku: "a".into(),
            stock: 1000,
            per_customer_limit: 0,
        }],
        starts_at_ms: None,
        ends_at_ms: None,
        reservation_ttl_ms: 600_000,
        durability: Default::default(),
    };
    e.configure(cfg).await.unwrap();
    let mut orders = Vec::new();
    for i in 0..40 {
        orders.push(e.purchase(buy(&format!("k{i}"))).await.unwrap());
    }
    // The snapshot thread writes in the background; a shutdown gives up one in
    // progress and writes its own. Wait (bounded) for one of the sale's own first.
    let snapshotted = || !stock_node::engine::snapshot::list(&dir).unwrap().is_empty();
    for _ in 0..1000 {
        if snapshotted() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        snapshotted(),
        "no snapshot written in 10 s of an idle engine"
    );
    e.shutdown().await;
    drop(e);
    let snaps = dir.with_files(|f| {
        f.keys()
            .filter(|n| n.starts_with("snap-"))
            .cloned()
            .collect::<Vec<_>>()
    });
    assert_eq!(
        snaps.len(),
        2,
        "the newest snapshot and one fallback are kept: {snaps:?}"
    );
    let newest = snaps.iter().max().unwrap().clone();
    dir.with_files(|f| {
        let d = &mut f.get_mut(&newest).unwrap().data;
        let mid = d.len() / 2;
        d[mid] ^= 0x55;
    });
    let (e, report) = Engine::open_with_report(EngineOptions {
        dir: Some(Arc::new(dir.clone())),
        initial_role: Some(Role::Primary),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(report.skipped_snapshots, vec![newest]);
    assert!(
        report.replayed > 0,
        "the log after the older snapshot was replayed"
    );
    for o in &orders {
        assert_eq!(e.order(o.id).as_ref(), Some(o));
    }
    assert_eq!(e.item("a").unwrap().held, 40);
    e.shutdown().await;
}
