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
