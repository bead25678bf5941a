//! Engine benchmarks: WAL record encode/decode, and purchases per second through the
//! engine (sequencer + group commit) with `NoSync` and with `Fsync` on a temp dir
//! under the target directory (a real disk, not tmpfs), from many concurrent
//! submitters. After each engine run it prints the mean batch size and the mean
//! `fdatasync` latency from the engine's own metrics.
//!
//! `cargo bench -p stock-node --bench engine`

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flashsale_core::admin::Role;
use flashsale_core::wal::{Record, RecordBody, decode_record, encode_record};
use flashsale_core::{Durability, ItemSpec, PurchaseRequest, SaleConfig};
use stock_node::engine::{Engine, EngineHandle, EngineMetrics, EngineOptions};

/// Concurrent submitters (an HTTP server with this many requests in flight).
const SUBMITTERS: u64 = 256;

fn purchase_record() -> Record {
    Record {
        seq: 123_456,
        epoch: 3,
        at_ms: 1_700_000_000_000,
        body: RecordBody::Purchase {
            sku: "sku-0042".into(),
            quantity: 1,
            customer: "customer-00012345".into(),
            idempotency_key: "0f8e7d6c-5b4a-3928-1706-f5e4d3c2b1a0".into(),
            expires_at_ms: 1_700_000_600_000,
        },
    }
}

fn codec(c: &mut Criterion) {
    let rec = purchase_record();
    let mut buf = Vec::with_capacity(256);
    encode_record(&rec, &mut buf).unwrap();
    let mut g = c.benchmark_group("wal_record");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_purchase", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            encode_record(black_box(&rec), &mut out).unwrap();
        })
    });
    g.bench_function("decode_purchase", |b| {
        b.iter(|| decode_record(black_box(&buf)).unwrap())
    });
    g.finish();
}

fn open(dir: &std::path::Path, durability: Durability) -> EngineHandle {
    Engine::open(EngineOptions {
        data_dir: dir.to_owned(),
        durability,
        initial_role: Some(Role::Primary),
        ..Default::default()
    })
    .unwrap()
}

fn sale() -> SaleConfig {
    SaleConfig {
        name: "bench".into(),
        items: (0..16)
            .map(|i| ItemSpec {
                sku: format!("sku-{i}"),
                stock: flashsale_core::rules::STOCK_MAX,
                per_customer_limit: 0,
            })
            .collect(),
        starts_at_ms: None,
        ends_at_ms: None,
        reservation_ttl_ms: 3_600_000,
        durability: Durability::Fsync,
    }
}

/// Runs `n` purchases from [`SUBMITTERS`] concurrent tasks; returns the wall time.
async fn crowd(e: &EngineHandle, n: u64, keys: &Arc<AtomicU64>) -> Duration {
    let per = n.div_ceil(SUBMITTERS);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..SUBMITTERS)
        .map(|s| {
            let e = e.clone();
            let keys = keys.clone();
            tokio::spawn(async move {
                for _ in 0..per {
                    let k = keys.fetch_add(1, Ordering::Relaxed);
                    let req = PurchaseRequest {
                        sku: format!("sku-{}", k % 16),
                        quantity: 1,
                        customer: format!("c{s}"),
                        idempotency_key: format!("k{k}"),
                    };
                    e.purchase(req).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    t0.elapsed()
}

fn report(name: &str, m: &EngineMetrics) {
    let mut reg = prometheus_client::registry::Registry::default();
    m.register(&mut reg);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    let get = |metric: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(metric).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    };
    let batches = get("engine_batch_records_count ");
    let fsyncs = get("engine_fsync_us_count ");
    println!(
        "{name}: {} records in {} batches, mean batch {:.1} records; {} fsyncs, mean fsync {:.0} us",
        get("engine_batch_records_sum "),
        batches,
        get("engine_batch_records_sum ") / batches.max(1.0),
        fsyncs,
        get("engine_fsync_us_sum ") / fsyncs.max(1.0),
    );
}

fn purchases(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    std::fs::create_dir_all(&target).unwrap();
    let mut g = c.benchmark_group("engine_purchase");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for (name, durability) in [("nosync", Durability::NoSync), ("fsync", Durability::Fsync)] {
        let tmp = tempfile::tempdir_in(&target).unwrap();
        let e = open(tmp.path(), durability);
        rt.block_on(e.configure(sale())).unwrap();
        let keys = Arc::new(AtomicU64::new(0));
        g.bench_function(format!("{name}_{SUBMITTERS}_submitters"), |b| {
            b.iter_custom(|iters| rt.block_on(crowd(&e, iters, &keys)))
        });
        report(name, e.metrics());
        rt.block_on(e.shutdown());
    }
    g.finish();
}

criterion_group!(benches, codec, purchases);
criterion_main!(benches);
