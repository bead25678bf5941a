//! Restarts on real files: many buyers at once with fsync, the engine dropped without
//! a shutdown, reopened: every acknowledged order is there, in the state it was
//! acknowledged in, and nothing is oversold. Then a torn write at the end of the
//! segment is cut on open and selling continues, and a snapshot a crash left
//! half-written is removed.

use std::collections::HashMap;

use flashsale_core::admin::Role;
use flashsale_core::{
    Durability, ItemSpec, Order, OrderState, PurchaseRequest, SaleConfig, SellError,
};
use stock_node::engine::{Engine, EngineHandle, EngineOptions};
use stock_node::wal::list_segments;

const STOCK: u64 = 300;
const BUYERS: usize = 64;
const TRIES_PER_BUYER: usize = 8;

fn open(dir: &std::path::Path) -> EngineHandle {
    Engine::open(EngineOptions {
        data_dir: dir.to_owned(),
        initial_role: Some(Role::Primary),
        // Small segments and frequent snapshots, so restarts cross both.
        segment_bytes_max: 8 << 10,
        snapshot_every_records: 150,
        ..Default::default()
    })
    .expect("open")
}

/// How many snapshots the data dir holds.
fn snapshots(dir: &std::path::Path) -> usize {
    let dir = stock_node::wal::FsDir::existing(dir).unwrap();
    stock_node::engine::snapshot::list(&dir).unwrap().len()
}

fn sale() -> SaleConfig {
    SaleConfig {
        name: "restart".into(),
        items: vec![
            ItemSpec {
                sku: "a".into(),
                stock: STOCK,
                per_customer_limit: 4,
            },
            ItemSpec {
                sku: "b".into(),
                stock: STOCK / 3,
                per_customer_limit: 0,
            },
        ],
        starts_at_ms: None,
        ends_at_ms: None,
        reservation_ttl_ms: 3_600_000,
        durability: Durability::Fsync,
    }
}

async fn crowd(e: &EngineHandle, round: usize) -> Vec<Order> {
    let mut tasks = Vec::new();
    for b in 0..BUYERS {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for t in 0..TRIES_PER_BUYER {
                let req = PurchaseRequest {
                    sku: if t % 3 == 0 { "b" } else { "a" }.into(),
                    quantity: 1 + (t % 2) as u32,
                    customer: format!("buyer-{b}"),
                    idempotency_key: format!("r{round}-b{b}-t{t}"),
                };
                match e.purchase(req).await {
                    Ok(o) => {
                        // Every other order is confirmed, some cancelled: all three states survive.
                        let o = match o.id % 5 {
                            0 | 1 => e.confirm(o.id).await.unwrap().order,
                            2 => e.cancel(o.id).await.unwrap().order,
                            _ => o,
                        };
                        mine.push(o);
                    }
                    Err(SellError::SoldOut { .. } | SellError::LimitExceeded { .. }) => {}
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn assert_sound(e: &EngineHandle, acked: &HashMap<u64, Order>) {
    for (id, o) in acked {
        assert_eq!(
            e.order(*id).as_ref(),
            Some(o),
            "acknowledged order {id} differs after restart"
        );
    }
    for item in e.items() {
        assert!(item.sold + item.held <= item.stock, "oversold {item:?}");
        let live: u64 = acked
            .values()
            .filter(|o| {
                o.sku == item.sku && matches!(o.state, OrderState::Reserved | OrderState::Confirmed)
            })
            .map(|o| o.quantity as u64)
            .sum();
        assert_eq!(
            item.sold + item.held,
            live,
            "{}: counters vs acknowledged orders",
            item.sku
        );
    }
    assert_eq!(e.metrics().oversold.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_orders_survive_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut acked = HashMap::new();
    let e = open(tmp.path());
    e.configure(sale()).await.unwrap();
    drop(e);
    for round in 0..3 {
        let e = open(tmp.path());
        assert_sound(&e, &acked);
        for o in crowd(&e, round).await {
            acked.insert(o.id, o);
        }
        assert_sound(&e, &acked);
        // The snapshot thread runs on idle CPU: give it the idle engine for a moment
        // (bounded), or dropping the engine gives up a snapshot it is writing and on a
        // busy machine no round may leave one.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while snapshots(tmp.path()) == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // No shutdown: the next open replays the WAL after the last snapshot.
        drop(e);
    }
    let e = open(tmp.path());
    assert_sound(&e, &acked);
    // Snapshots were taken in the background and the segments they cover removed: by
    // the engine that wrote them, or (the snapshot thread runs on idle CPU, and the
    // crowd may leave it none before the engine is dropped) by this one on its idle tick.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while e.status().oldest_seq <= 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let dir = stock_node::wal::FsDir::existing(tmp.path()).unwrap();
    assert!(snapshots(tmp.path()) > 0, "no snapshot written");
    assert!(
        list_segments(&dir).unwrap()[0].0 > 1,
        "no segment compacted"
    );
    assert!(e.status().oldest_seq > 1);
    let a = e.item("a").unwrap();
    assert!(a.sold + a.held > 0);
    e.shutdown().await;
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_selling_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    e.configure(sale()).await.unwrap();
    let buy = |k: &str| PurchaseRequest {
        sku: "a".into(),
        quantity: 1,
        customer: k.into(),
        idempotency_key: k.into(),
    };
    let o1 = e.purchase(buy("k1")).await.unwrap();
    drop(e);
    // Half a record after the last one, as a crash in the middle of a write leaves it
    // (over the zeros of the preallocated segment).
    let dir = stock_node::wal::FsDir::existing(tmp.path()).unwrap();
    let (_, last) = list_segments(&dir).unwrap().pop().unwrap();
    let path = tmp.path().join(&last);
    let found = stock_node::wal::scan(&dir, &Default::default(), |_| Ok(())).unwrap();
    assert!(
        found.torn.is_none(),
        "the zeros after the records are no torn tail"
    );
    let len_before = found.segments.last().unwrap().valid_bytes;
    assert!(
        std::fs::metadata(&path).unwrap().len() > len_before,
        "the segment is preallocated"
    );
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new().write(true).open(&path).unwrap(),
        &[40, 0, 0, 0, 1, 2, 3, 4, 5],
        len_before,
    )
    .unwrap();

    let (e, report) = Engine::open_with_report(EngineOptions {
        data_dir: tmp.path().to_owned(),
        initial_role: Some(Role::Primary),
        ..Default::default()
    })
    .unwrap();
    let torn = report.scan.torn.expect("the torn tail is reported");
    assert_eq!(torn.offset, len_before);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        len_before,
        "the torn bytes are cut"
    );
    assert_eq!(e.order(o1.id), Some(o1.clone()));
    let o2 = e.purchase(buy("k2")).await.unwrap();
    assert_eq!(o2.id, o1.id + 1);
    e.shutdown().await;
}

#[tokio::test]
async fn a_half_written_snapshot_is_removed_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    e.configure(sale()).await.unwrap();
    let o = e
        .purchase(PurchaseRequest {
            sku: "a".into(),
            quantity: 1,
            customer: "ann".into(),
            idempotency_key: "k1".into(),
        })
        .await
        .unwrap();
    drop(e);
    // What a crash in the middle of streaming a snapshot leaves: its file under the
    // temporary name, never renamed into place (as large as the state it held).
    let unfinished = tmp.path().join(format!(
        "{}{}",
        stock_node::engine::snapshot::snapshot_name(2),
        stock_node::wal::store::UNFINISHED_SUFFIX
    ));
    std::fs::write(&unfinished, vec![7u8; 1 << 20]).unwrap();
    let e = open(tmp.path());
    assert!(
        !unfinished.exists(),
        "the half-written snapshot is still there"
    );
    assert_eq!(e.order(o.id), Some(o));
    e.shutdown().await;
}

/// Segments are preallocated (`wal::writer`): records go over zeros already on disk, a
/// restart carries on where the records end (not after the zeros, not over a record),
/// and a roll puts in place the spare segment zero-filled meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_go_over_preallocated_segments_and_restarts_carry_on_where_they_end() {
    const SEGMENT: u64 = 32 << 10;
    let tmp = tempfile::tempdir().unwrap();
    let opts = || EngineOptions {
        data_dir: tmp.path().to_owned(),
        initial_role: Some(Role::Primary),
        segment_bytes_max: SEGMENT,
        // No snapshot, so no segment is removed under the test.
        snapshot_every_records: 1 << 40,
        ..Default::default()
    };
    let sizes = || {
        let dir = stock_node::wal::FsDir::existing(tmp.path()).unwrap();
        list_segments(&dir)
            .unwrap()
            .into_iter()
            .map(|(_, n)| std::fs::metadata(tmp.path().join(n)).unwrap().len())
            .collect::<Vec<_>>()
    };
    let buy = |n: usize| PurchaseRequest {
        sku: "a".into(),
        quantity: 1,
        customer: format!("c{n}"),
        idempotency_key: format!("k{n}"),
    };
    let mut acked = Vec::new();
    let e = Engine::open(opts()).unwrap();
    let mut cfg = sale();
    cfg.items[0].stock = 100_000;
    e.configure(cfg).await.unwrap();
    assert_eq!(sizes(), [SEGMENT], "the first segment is preallocated");
    for n in 0..10 {
        acked.push(e.purchase(buy(n)).await.unwrap());
    }
    drop(e);
    let e = Engine::open(opts()).unwrap();
    for n in 10..20 {
        acked.push(e.purchase(buy(n)).await.unwrap());
    }
    assert_eq!(sizes(), [SEGMENT], "written over the zeros, not after them");
    // The spare for the next roll is zero-filled in the background.
    let spare = tmp.path().join(stock_node::wal::store::SPARE_SEGMENT);
    let t0 = std::time::Instant::now();
    while std::fs::metadata(&spare).map_or(true, |m| m.len() < SEGMENT) {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "no spare"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut n = 20;
    while sizes().len() < 2 {
        assert!(n < 5_000, "no roll after {n} purchases");
        acked.push(e.purchase(buy(n)).await.unwrap());
        n += 1;
    }
    let rolled = sizes();
    assert!(rolled[0] >= SEGMENT, "{rolled:?}");
    assert_eq!(rolled[1], SEGMENT, "the spare became the new segment");
    drop(e);
    let (e, report) = Engine::open_with_report(opts()).unwrap();
    assert!(report.scan.torn.is_none(), "{:?}", report.scan.torn);
    assert_eq!(
        report.scan.records as usize,
        acked.len() + 1,
        "the config and each order"
    );
    for o in &acked {
        assert_eq!(e.order(o.id).as_ref(), Some(o));
    }
    let next = e.purchase(buy(n)).await.unwrap();
    assert_eq!(next.id, acked.last().unwrap().id + 1);
    e.shutdown().await;
}
