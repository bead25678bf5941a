//! The engine as a user of it sees it: sell, confirm, cancel, expire, refuse, restart.

use std::sync::Arc;

use flashsale_core::admin::{Role, RoleAssignment};
use flashsale_core::{Durability, ItemSpec, OrderState, PurchaseRequest, SaleConfig, SellError};
use stock_node::engine::{Engine, EngineHandle, EngineOptions, Front, ManualClock};

const T0: i64 = 1_700_000_000_000;

fn sale(stock: u64, limit: u32) -> SaleConfig {
    SaleConfig {
        name: "launch".into(),
        items: vec![
            ItemSpec {
                sku: "shoe".into(),
                stock,
                per_customer_limit: limit,
            },
            ItemSpec {
                sku: "hat".into(),
                stock: 1000,
                per_customer_limit: 0,
            },
        ],
        starts_at_ms: Some(T0),
        ends_at_ms: Some(T0 + 3_600_000),
        reservation_ttl_ms: 60_000,
        durability: Durability::Fsync,
    }
}

fn buy(sku: &str, q: u32, customer: &str, key: &str) -> PurchaseRequest {
    PurchaseRequest {
        sku: sku.into(),
        quantity: q,
        customer: customer.into(),
        idempotency_key: key.into(),
    }
}

fn opts(dir: &std::path::Path, clock: Arc<ManualClock>) -> EngineOptions {
    EngineOptions {
        data_dir: dir.to_owned(),
        initial_role: Some(Role::Primary),
        clock,
        expiry_tick_ms: 5,
        ..Default::default()
    }
}

async fn open(dir: &std::path::Path, clock: Arc<ManualClock>) -> EngineHandle {
    Engine::open(opts(dir, clock)).expect("open")
}

#[tokio::test]
async fn sells_refuses_and_survives_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0 - 1000));
    let e = open(tmp.path(), clock.clone()).await;
    e.configure(sale(5, 2)).await.unwrap();

    assert!(matches!(
        e.purchase(buy("shoe", 1, "ann", "k0")).await,
        Err(SellError::NotOpen { .. })
    ));
    clock.set(T0);
    let o1 = e.purchase(buy("shoe", 2, "ann", "k1")).await.unwrap();
    assert_eq!(o1.state, OrderState::Reserved);
    assert_eq!(
        e.purchase(buy("shoe", 2, "ann", "k1")).await.unwrap(),
        o1,
        "idempotent retry"
    );
    assert!(matches!(
        e.purchase(buy("shoe", 1, "ann", "k1")).await,
        Err(SellError::IdempotencyConflict(_))
    ));
    assert!(matches!(
        e.purchase(buy("shoe", 1, "ann", "k2")).await,
        Err(SellError::LimitExceeded { .. })
    ));
    assert!(matches!(
        e.purchase(buy("shoe", 0, "bob", "k3")).await,
        Err(SellError::BadQuantity { .. })
    ));
    assert!(matches!(
        e.purchase(buy("shoe", 3, "bob", "k3")).await,
        Err(SellError::BadQuantity { .. })
    ));
    assert!(matches!(
        e.purchase(buy("sock", 1, "bob", "k3")).await,
        Err(SellError::UnknownItem(_))
    ));
    let o2 = e.purchase(buy("shoe", 2, "bob", "k4")).await.unwrap();
    let o3 = e.purchase(buy("shoe", 1, "cat", "k5")).await.unwrap();
    assert!(matches!(
        e.purchase(buy("shoe", 1, "dan", "k6")).await,
        Err(SellError::SoldOut { .. })
    ));
    assert_eq!(e.remaining("shoe"), Some(0));

    let first = e.confirm(o1.id).await.unwrap();
    assert_eq!(
        (first.order.state, first.replayed),
        (OrderState::Confirmed, false)
    );
    // A retried confirm is an idempotent success that says it is a replay.
    let again = e.confirm(o1.id).await.unwrap();
    assert_eq!((again.order, again.replayed), (first.order, true));
    // Cancelling a confirmed order is still refused.
    assert!(matches!(
        e.cancel(o1.id).await,
        Err(SellError::OrderState { .. })
    ));
    let cancelled = e.cancel(o2.id).await.unwrap();
    assert_eq!(cancelled.order.state, OrderState::Cancelled);
    let again = e.cancel(o2.id).await.unwrap();
    assert_eq!((again.order, again.replayed), (cancelled.order, true));
    assert_eq!(e.remaining("shoe"), Some(2));

    // o3 expires: its unit comes back, confirming it now fails.
    clock.advance(60_001);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(e.order(o3.id).unwrap().state, OrderState::Expired);
    assert!(matches!(
        e.confirm(o3.id).await,
        Err(SellError::OrderState { .. })
    ));
    assert!(matches!(
        e.cancel(o3.id).await,
        Err(SellError::OrderState { .. })
    ));
    let shoe = e.item("shoe").unwrap();
    assert_eq!((shoe.sold, shoe.held, shoe.remaining), (2, 0, 3));

    // Stock cannot drop below what is sold and held.
    let mut smaller = sale(1, 2);
    smaller.items[0].stock = 1;
    match e.configure(smaller).await {
        Err(SellError::BadRequest { field, .. }) => assert_eq!(field, "items[0].stock"),
        other => panic!("{other:?}"),
    }

    clock.set(T0 + 3_600_000);
    assert!(matches!(
        e.purchase(buy("hat", 1, "eve", "k7")).await,
        Err(SellError::Ended { .. })
    ));
    let before: Vec<_> = [o1.id, o2.id, o3.id]
        .iter()
        .map(|id| e.order(*id).unwrap())
        .collect();
    let items = e.items();
    e.shutdown().await;
    assert!(matches!(
        e.purchase(buy("hat", 1, "eve", "k8")).await,
        Err(SellError::Unavailable(_))
    ));

    let e = open(tmp.path(), clock.clone()).await;
    let after: Vec<_> = [o1.id, o2.id, o3.id]
        .iter()
        .map(|id| e.order(*id).unwrap())
        .collect();
    assert_eq!(before, after);
    assert_eq!(items, e.items());
    // The idempotent answer survives the restart (the window is over, the key still answers).
    assert_eq!(e.purchase(buy("shoe", 2, "ann", "k1")).await.unwrap(), o1);
}

/// An engine holding `sale(5, 2)`, then made a secondary of the primary it returns the
/// address of.
async fn secondary(dir: &std::path::Path) -> (EngineHandle, String) {
    let e = open(dir, Arc::new(ManualClock::new(T0))).await;
    e.configure(sale(5, 2)).await.unwrap();
    let primary = "http://10.0.0.1:8080".to_string();
    e.set_role(RoleAssignment {
        role: Role::Secondary,
        epoch: 3,
        primary_url: Some(primary.clone()),
    })
    .await
    .unwrap();
    (e, primary)
}

/// A secondary still catching up forwards what it cannot answer from its copy, but a
/// quantity of 0 it refuses itself: forwarded, it made the primary refuse the whole
/// batch it travelled in (`check_batch`), and every other buyer's operation in that
/// batch was answered 503.
#[tokio::test]
async fn a_secondary_catching_up_refuses_a_quantity_of_0_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let (e, primary) = secondary(tmp.path()).await;
    for caught_up in [false, true] {
        match e.front(&buy("shoe", 0, "a", "k"), T0, caught_up) {
            Front::Refuse(SellError::BadQuantity { quantity: 0, .. }) => {}
            other => panic!("caught up {caught_up}: {other:?}"),
        }
        match e.front(&buy("shoe", 1, "a", "k"), T0, caught_up) {
            Front::Forward(url) => assert_eq!(url, primary),
            other => panic!("caught up {caught_up}: {other:?}"),
        }
    }
    // What only the sale can say still waits for a copy that has caught up.
    assert!(matches!(
        e.front(&buy("shoe", 3, "a", "k"), T0, false),
        Front::Forward(_)
    ));
    assert!(matches!(
        e.front(&buy("shoe", 3, "a", "k"), T0, true),
        Front::Refuse(SellError::BadQuantity { quantity: 3, .. })
    ));
}

/// A caught-up secondary refuses a purchase as `ended` from its copy only away from the
/// end: near it, the key may hold an order its copy has not applied yet (bought just
/// before the end, its answer lost), which the primary replays whatever the window;
/// and the nodes' clocks differ. So there it forwards. Before the start it refuses
/// `not_open` itself (no order exists yet; a client retries it).
#[tokio::test]
async fn a_secondary_leaves_the_end_of_the_window_to_the_primary() {
    use stock_node::engine::WINDOW_EDGE_MS;
    let tmp = tempfile::tempdir().unwrap();
    let (e, _) = secondary(tmp.path()).await;
    let (starts, ends) = (T0, T0 + 3_600_000);
    let at = |now| e.front(&buy("shoe", 1, "a", "k"), now, true);
    for now in [starts, ends, ends + WINDOW_EDGE_MS - 1] {
        assert!(
            matches!(at(now), Front::Forward(_)),
            "at {}: {:?}",
            now - T0,
            at(now)
        );
    }
    assert!(matches!(
        at(starts - 1),
        Front::Refuse(SellError::NotOpen { .. })
    ));
    assert!(matches!(
        at(ends + WINDOW_EDGE_MS),
        Front::Refuse(SellError::Ended { .. })
    ));
}

#[tokio::test]
async fn roles_and_fencing() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = Engine::open(EngineOptions {
        data_dir: tmp.path().into(),
        clock,
        ..Default::default()
    })
    .unwrap();
    // Only the primary logs the sale's config (FAILOVER.md I3).
    assert!(matches!(
        e.configure(sale(5, 0)).await,
        Err(SellError::NotPrimary { primary: None })
    ));
    assert_eq!(e.status().durable_seq, 0, "nothing logged");
    assert!(matches!(
        e.purchase(buy("shoe", 1, "a", "k")).await,
        Err(SellError::NotPrimary { primary: None })
    ));
    let url = Some("http://10.0.0.1:8080".to_string());
    e.set_role(RoleAssignment {
        role: Role::Secondary,
        epoch: 3,
        primary_url: url.clone(),
    })
    .await
    .unwrap();
    match e.purchase(buy("shoe", 1, "a", "k")).await {
        Err(SellError::NotPrimary { primary }) => assert_eq!(primary, url),
        other => panic!("{other:?}"),
    }
    let stale = RoleAssignment {
        role: Role::Primary,
        epoch: 2,
        primary_url: None,
    };
    assert!(matches!(e.set_role(stale).await, Err(SellError::Fenced(_))));
    e.set_role(RoleAssignment {
        role: Role::Primary,
        epoch: 4,
        primary_url: None,
    })
    .await
    .unwrap();
    e.configure(sale(5, 0)).await.unwrap();
    e.purchase(buy("shoe", 1, "a", "k")).await.unwrap();
    let st = e.status();
    // Logged: the primary assignment, config, the purchase. A secondary assignment
    // is held in memory only (engine::replica), the stale one is refused.
    assert_eq!(
        (st.role, st.epoch, st.applied_seq, st.durable_seq),
        (Role::Primary, 4, 3, 3)
    );
    e.shutdown().await;
}

#[tokio::test]
async fn sold_out_costs_no_write_and_committed_batches_are_published() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(tmp.path(), clock).await;
    let mut batches = e.subscribe_batches();
    e.configure(sale(2, 0)).await.unwrap();
    e.purchase(buy("shoe", 2, "ann", "k1")).await.unwrap();
    let records = e.metrics().records.get();
    let durable = e.status().durable_seq;
    for i in 0..20 {
        let r = e.purchase(buy("shoe", 1, "bob", &format!("x{i}"))).await;
        assert!(matches!(r, Err(SellError::SoldOut { .. })));
    }
    assert_eq!(
        e.metrics().records.get(),
        records,
        "a sold-out answer wrote to the WAL"
    );
    assert_eq!(e.status().durable_seq, durable);
    assert_eq!(e.metrics().oversold.get(), 0);

    // What subscribers got is what the WAL holds, batch by batch, in order.
    let mut seen = Vec::new();
    while let Ok(b) = batches.try_recv() {
        let decoded = flashsale_core::wal::decode_batch(&b.bytes).unwrap();
        assert_eq!(
            (decoded.first_seq, decoded.last_seq),
            (b.first_seq, b.last_seq)
        );
        seen.extend(decoded.records);
    }
    assert_eq!(seen.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
    let frames = e.read_from(1, 1 << 20).await.unwrap();
    let mut rest = &frames.bytes[..];
    let mut from_disk = Vec::new();
    while !rest.is_empty() {
        let (r, used) = flashsale_core::wal::decode_record(rest).unwrap();
        from_disk.push(r);
        rest = &rest[used..];
    }
    assert_eq!(from_disk, seen);
    e.shutdown().await;
}

/// Group commit's pacing (`EngineOptions::commit_interval_min`): a crowd's purchases
/// share syncs, each sync of more than one purchase at least the interval after the one
/// before; a lone buyer's purchases are not held, nor a secondary's applies of the
/// crowd's batches; every purchase is sold once.
#[tokio::test]
async fn a_crowd_shares_paced_syncs_and_a_lone_buyer_is_not_held() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let interval = std::time::Duration::from_millis(300);
    let e = Engine::open(EngineOptions {
        commit_interval_min: interval,
        ..opts(tmp.path(), clock)
    })
    .expect("open");
    let mut batches = e.subscribe_batches();
    e.configure(sale(5, 0)).await.unwrap();

    // One buyer at a time: every batch holds one record, and none waits for the next.
    let started = std::time::Instant::now();
    for i in 0..10 {
        e.purchase(buy("hat", 1, "ann", &format!("lone{i}")))
            .await
            .unwrap();
    }
    let lone = started.elapsed();
    assert!(
        lone < interval * 9,
        "10 purchases one after another took {lone:?}: a batch of one was held for the interval"
    );

    // A crowd of 20 buyers, each buying 8 times in turn: they arrive together.
    let mut log = Vec::new();
    while let Ok(b) = batches.try_recv() {
        log.push(b);
    }
    let started = std::time::Instant::now();
    let crowd: Vec<_> = (0..20)
        .map(|c| {
            let e = e.clone();
            tokio::spawn(async move {
                for i in 0..8 {
                    e.purchase(buy("hat", 1, &format!("c{c}"), &format!("c{c}-{i}")))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in crowd {
        task.await.unwrap();
    }
    let took = started.elapsed();
    let mut shared = 0u32;
    let mut records = 0;
    while let Ok(b) = batches.try_recv() {
        let n = b.last_seq - b.first_seq + 1;
        records += n;
        shared += u32::from(n > 1);
        log.push(b);
    }
    assert_eq!(records, 160, "every purchase is one record");
    assert!(
        shared >= 2 && took >= interval * (shared - 1),
        "{shared} syncs of more than one record within {took:?}: they were not {interval:?} apart"
    );
    assert_eq!(
        e.item("hat").unwrap().remaining,
        1000 - 170,
        "sold once each"
    );

    // A secondary applies the same batches one after another, each waiting for the
    // one before (as its follower does): none waits for the interval.
    let tmp2 = tempfile::tempdir().unwrap();
    let s = Engine::open(EngineOptions {
        commit_interval_min: interval,
        initial_role: None,
        ..opts(tmp2.path(), Arc::new(ManualClock::new(T0)))
    })
    .expect("open the secondary");
    s.set_role(RoleAssignment {
        role: Role::Secondary,
        epoch: e.status().epoch,
        primary_url: Some("http://primary".into()),
    })
    .await
    .unwrap();
    let started = std::time::Instant::now();
    for b in &log {
        let batch = flashsale_core::wal::decode_batch(&b.bytes).unwrap();
        s.apply_replicated(batch).await.unwrap();
    }
    let applied = started.elapsed();
    assert!(
        applied < interval * (shared - 1),
        "{} batches applied in turn took {applied:?}: the secondary was paced",
        log.len()
    );
    assert_eq!(s.item("hat").unwrap().remaining, 1000 - 170);
    e.shutdown().await;
    s.shutdown().await;
}

/// The per-customer counts are kept only for items with a limit; a limit set later
/// counts what each customer already holds or bought (and so does a restart).
#[tokio::test]
async fn a_limit_set_later_counts_what_was_bought_before() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0 + 1000));
    let e = open(tmp.path(), clock.clone()).await;
    e.configure(sale(100, 0)).await.unwrap();
    let first = e.purchase(buy("shoe", 2, "ann", "a1")).await.unwrap();
    e.confirm(first.id).await.unwrap();
    e.purchase(buy("shoe", 1, "ann", "a2")).await.unwrap();
    let cancelled = e.purchase(buy("shoe", 4, "ann", "a3")).await.unwrap();
    e.cancel(cancelled.id).await.unwrap();
    e.purchase(buy("shoe", 1, "bob", "b1")).await.unwrap();
    // Ann has 3 (2 bought, 1 held; the cancelled 4 do not count): a limit of 4 leaves her 1.
    e.configure(sale(100, 4)).await.unwrap();
    let refused = e.purchase(buy("shoe", 2, "ann", "a4")).await;
    assert!(
        matches!(refused, Err(SellError::LimitExceeded { held: 3, .. })),
        "{refused:?}"
    );
    e.purchase(buy("shoe", 1, "ann", "a5")).await.unwrap();
    e.purchase(buy("shoe", 3, "bob", "b2")).await.unwrap();
    e.shutdown().await;
    drop(e);
    let e = open(tmp.path(), clock).await;
    let refused = e.purchase(buy("shoe", 1, "ann", "a6")).await;
    assert!(
        matches!(refused, Err(SellError::LimitExceeded { held: 4, .. })),
        "{refused:?}"
    );
    let refused = e.purchase(buy("shoe", 1, "bob", "b3")).await;
    assert!(
        matches!(refused, Err(SellError::LimitExceeded { held: 4, .. })),
        "{refused:?}"
    );
}
