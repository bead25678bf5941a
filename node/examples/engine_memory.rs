//! Resident memory per order held by the engine alone (a measurement, not a test):
//! purchases with the benchmark's shape of customer and key (`c<t>-<n>`, `k<t>-<n>`)
//! into a no-sync engine, printing the process's resident memory per million orders
//! at each count given (default 250 000, 500 000, 1 000 000). The hash tables double,
//! so the figure moves with where they are between two doublings.
//!
//! `cargo run --release -p stock-node --example engine_memory [counts…]`

use flashsale_core::admin::Role;
use flashsale_core::{Durability, ItemSpec, PurchaseRequest, SaleConfig};
use stock_node::engine::{Engine, EngineOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut counts: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if counts.is_empty() {
        counts = vec![250_000, 500_000, 1_000_000];
    }
    counts.sort_unstable();
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    std::fs::create_dir_all(&target).unwrap();
    let tmp = tempfile::tempdir_in(&target).unwrap();
    let e = Engine::open(EngineOptions {
        data_dir: tmp.path().to_owned(),
        durability: Durability::NoSync,
        initial_role: Some(Role::Primary),
        ..Default::default()
    })
    .unwrap();
    let cfg = SaleConfig {
        name: "memory".into(),
        items: vec![ItemSpec {
            sku: "bench".into(),
            stock: flashsale_core::rules::STOCK_MAX,
            per_customer_limit: 0,
        }],
        starts_at_ms: None,
        ends_at_ms: None,
        reservation_ttl_ms: 3_600_000,
        durability: Durability::NoSync,
    };
    e.configure(cfg).await.unwrap();
    let start = rss_kb();
    const SUBMITTERS: u64 = 64;
    let mut done = 0;
    for n in counts {
        let tasks: Vec<_> = (0..SUBMITTERS)
            .map(|t| {
                let e = e.clone();
                tokio::spawn(async move {
                    for i in (done + t..n).step_by(SUBMITTERS as usize) {
                        let req = PurchaseRequest {
                            sku: "bench".into(),
                            quantity: 1,
                            customer: format!("c{t}-{i}"),
                            idempotency_key: format!("k{t}-{i}"),
                        };
                        e.purchase(req).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        done = n;
        let rss = rss_kb();
        println!(
            "{n:>9} orders: {:>4} MB resident ({} MB at start), {:.0} MB per million orders",
            rss / 1024,
            start / 1024,
            (rss - start) as f64 / 1024.0 * 1e6 / n as f64
        );
    }
    e.shutdown().await;
}
