//! `crowd`: a crowd of buyers for the demo and the e2e test. Sends many more purchases
//! than there is stock at one stock node (the primary), confirms every order it gets,
//! and prints what happened: sold, rejected by reason, and oversold (must be 0: no item
//! acknowledged more times than it was in stock).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use flashsale_core::{ErrorBody, ItemView, Order, PurchaseRequest};
use tokio::sync::Mutex;

#[derive(Parser, Debug)]
#[command(about = "Send a crowd of buyers at a stock node and report the outcome")]
struct Args {
    /// Base URL of the node that sells (the primary), e.g. http://10.213.1.5:8080.
    #[arg(long)]
    url: String,
    /// Purchase attempts in all.
    #[arg(long, default_value_t = 5_000)]
    buyers: u64,
    /// Purchases in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: u64,
    /// Distinct customers (fewer customers than buyers exercises per-customer limits).
    #[arg(long, default_value_t = 2_000)]
    customers: u64,
    /// Stop sending after this long, whatever is left.
    #[arg(long, default_value_t = 120)]
    duration_max_s: u64,
    /// Timeout of one request.
    #[arg(long, default_value_t = 5_000)]
    request_timeout_ms: u64,
    /// Print the outcome as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Default, Debug, serde::Serialize)]
struct Tally {
    attempts: u64,
    /// Orders acknowledged (201) and then confirmed, units per sku.
    sold_units: BTreeMap<String, u64>,
    /// Orders acknowledged whose confirm failed (still held until the TTL).
    unconfirmed: u64,
    /// Rejections by the node's stable error code (or a transport error).
    rejected: BTreeMap<String, u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.concurrency == 0 || args.concurrency > 1_024 {
        bail!("--concurrency must be between 1 and 1024");
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(args.request_timeout_ms))
        .pool_max_idle_per_host(args.concurrency as usize)
        .build()?;
    let base = args.url.trim_end_matches('/').to_string();
    let before: Vec<ItemView> = http
        .get(format!("{base}/v1/items"))
        .send()
        .await
        .context("listing items")?
        .error_for_status()?
        .json()
        .await?;
    if before.is_empty() {
        bail!("the node sells nothing (not configured?)");
    }
    let skus: Arc<Vec<String>> = Arc::new(before.iter().map(|i| i.sku.clone()).collect());
    let next = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let deadline = Instant::now() + Duration::from_secs(args.duration_max_s);
    let run = format!("{:08x}", rand::random::<u32>());
    let started = Instant::now();

    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (http, base, skus, next, tally, run) = (
            http.clone(),
            base.clone(),
            skus.clone(),
            next.clone(),
            tally.clone(),
            run.clone(),
        );
        let (buyers, customers) = (args.buyers, args.customers.max(1));
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= buyers || Instant::now() > deadline {
                    return;
                }
                let sku = skus[(n % skus.len() as u64) as usize].clone();
                let req = PurchaseRequest {
                    sku: sku.clone(),
                    quantity: 1,
                    customer: format!("customer-{}", rand::random::<u64>() % customers),
                    idempotency_key: format!("crowd-{run}-{n}"),
                };
                let outcome = buy(&http, &base, &req).await;
                let mut t = tally.lock().await;
                t.attempts += 1;
                match outcome {
                    Ok(true) => *t.sold_units.entry(sku).or_default() += 1,
                    Ok(false) => t.unconfirmed += 1,
                    Err(code) => *t.rejected.entry(code).or_default() += 1,
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let elapsed = started.elapsed();
    let after: Vec<ItemView> = http
        .get(format!("{base}/v1/items"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let tally = tally.lock().await;
    report(&args, &tally, &after, elapsed)
}

/// One buyer: purchase, then confirm. `Ok(true)` sold, `Ok(false)` held but unconfirmed,
/// `Err(code)` rejected.
async fn buy(http: &reqwest::Client, base: &str, req: &PurchaseRequest) -> Result<bool, String> {
    let resp = http
        .post(format!("{base}/v1/purchases"))
        .json(req)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "timeout".to_string()
            } else {
                "transport".to_string()
            }
        })?;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        return Err(match resp.json::<ErrorBody>().await {
            Ok(body) => serde_json::to_value(body.code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| format!("http_{status}")),
            Err(_) => format!("http_{status}"),
        });
    }
    let order: Order = resp.json().await.map_err(|_| "bad_body".to_string())?;
    let confirmed = http
        .post(format!("{base}/v1/orders/{}/confirm", order.id))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    Ok(confirmed)
}

fn report(args: &Args, tally: &Tally, after: &[ItemView], elapsed: Duration) -> anyhow::Result<()> {
    // Oversold: units acknowledged to buyers beyond what was ever in stock, per item, and
    // the node's own books (sold + held must never exceed stock).
    let mut oversold = 0u64;
    for item in after {
        let ours = tally.sold_units.get(&item.sku).copied().unwrap_or(0);
        oversold += ours.saturating_sub(item.stock);
        oversold += (item.sold + item.held).saturating_sub(item.stock);
    }
    let sold: u64 = tally.sold_units.values().sum();
    let rejected: u64 = tally.rejected.values().sum();
    if args.json {
        let out = serde_json::json!({
            "attempts": tally.attempts, "sold": sold, "unconfirmed": tally.unconfirmed,
            "rejected": tally.rejected, "oversold": oversold, "items": after,
            "elapsedMs": elapsed.as_millis() as u64,
        });
        println!("{out}");
    } else {
        println!(
            "crowd: {} buyers in {:.1}s ({:.0}/s) at {}",
            tally.attempts,
            elapsed.as_secs_f64(),
            tally.attempts as f64 / elapsed.as_secs_f64().max(0.001),
            args.url
        );
        println!("  sold (acknowledged and confirmed): {sold}");
        if tally.unconfirmed > 0 {
            println!("  acknowledged, confirm failed:      {}", tally.unconfirmed);
        }
        println!("  rejected:                          {rejected}");
        for (code, n) in &tally.rejected {
            println!("    {code:<31} {n}");
        }
        println!(
            "  {:<14} {:>8} {:>8} {:>8} {:>10}",
            "sku", "stock", "sold", "held", "remaining"
        );
        for i in after {
            println!(
                "  {:<14} {:>8} {:>8} {:>8} {:>10}",
                i.sku, i.stock, i.sold, i.held, i.remaining
            );
        }
        println!("  oversold: {oversold}");
    }
    if oversold > 0 {
        bail!("OVERSOLD by {oversold} units");
    }
    Ok(())
}
