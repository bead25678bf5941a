//! A load run of the engine alone (a measurement, not a test): purchases from many
//! concurrent submitters for a few seconds each, with and without fsync, printing
//! purchases/s, latency percentiles, batch sizes and fsync latency.
//!
//! `cargo run --release -p stock-node --example engine_load`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flashsale_core::admin::Role;
use flashsale_core::{Durability, ItemSpec, PurchaseRequest, SaleConfig};
use stock_node::engine::{Engine, EngineMetrics, EngineOptions};

const RUN_S: u64 = 3;

fn histogram_mean(m: &EngineMetrics, metric: &str) -> (f64, f64) {
    let mut reg = prometheus_client::registry::Registry::default();
    m.register(&mut reg);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    let get = |suffix: &str| -> f64 {
        let name = format!("{metric}_{suffix} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    };
    let (sum, count) = (get("sum"), get("count"));
    (count, sum / count.max(1.0))
}

async fn run(durability: Durability, submitters: u64) {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    std::fs::create_dir_all(&target).unwrap();
    let tmp = tempfile::tempdir_in(&target).unwrap();
    let e = Engine::open(EngineOptions {
        data_dir: tmp.path().to_owned(),
        durability,
        initial_role: Some(Role::Primary),
        ..Default::default()
    })
    .unwrap();
    let cfg = SaleConfig {
        name: "load".into(),
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
    };
    e.configure(cfg).await.unwrap();
    let keys = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(RUN_S);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..submitters)
        .map(|s| {
            let (e, keys) = (e.clone(), keys.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(1 << 16);
                while Instant::now() < deadline {
                    let k = keys.fetch_add(1, Ordering::Relaxed);
                    let req = PurchaseRequest {
                        sku: format!("sku-{}", k % 16),
                        quantity: 1,
                        customer: format!("c{s}"),
                        idempotency_key: format!("k{k}"),
                    };
                    let a = Instant::now();
                    e.purchase(req).await.unwrap();
                    lat.push(a.elapsed().as_micros() as u32);
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let secs = t0.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let (batches, batch_mean) = histogram_mean(e.metrics(), "engine_batch_records");
    let (fsyncs, fsync_mean) = histogram_mean(e.metrics(), "engine_fsync_us");
    println!(
        "{durability:?} {submitters:>4} submitters: {:>8.0} purchases/s  p50 {:>5} us  p99 {:>6} us  max {:>6} us | {batches} batches, mean {batch_mean:.0} records | {fsyncs} fsyncs, mean {fsync_mean:.0} us",
        lat.len() as f64 / secs,
        pct(0.50),
        pct(0.99),
        lat[lat.len() - 1],
    );
    e.shutdown().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    for durability in [Durability::NoSync, Durability::Fsync] {
        for submitters in [16, 64, 256] {
            run(durability, submitters).await;
        }
    }
}
