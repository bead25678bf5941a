//! `crowd`: a crowd of buyers for the demo and the e2e tests. Sends many more purchases
//! than there is stock, and prints what happened: sold, rejected by reason, and oversold
//! (must be 0: no item acknowledged more times than it was in stock).
//!
//! Two shapes:
//! - the default: every buyer purchases, then confirms what it got (the demo);
//! - `--retry`, for failover tests: a buyer that gets an answer a retry can cure (503,
//!   429, a timeout, a refused connection) retries **with the same idempotency key**
//!   until it gets a definitive one, as a shop must; with `--url` a Service that follows
//!   the primary, it follows the primary across a failover. `--acks FILE` writes every
//!   acknowledged order (key, id, sku, quantity, the epoch that answered, when) as JSON
//!   lines, and `--timeline FILE` the acknowledgements per second by epoch: the record
//!   the chaos tests check against the new primary.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use flashsale_core::{ErrorBody, ItemView, Order, PurchaseRequest};
use tokio::sync::Mutex;

#[derive(Parser, Debug)]
#[command(about = "Send a crowd of buyers at a stock node and report the outcome")]
struct Args {
    /// Base URL of the node (or Service) that sells, e.g. http://10.213.1.5:8080.
    #[arg(long)]
    url: String,
    /// Purchase attempts in all (each with its own key; retries of a key not counted).
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
    /// Retry a purchase with the same key on answers a retry can cure; do not confirm.
    #[arg(long)]
    retry: bool,
    /// How long one buyer keeps retrying its key (with `--retry`).
    #[arg(long, default_value_t = 60_000)]
    retry_for_ms: u64,
    /// Every acknowledged order, as JSON lines.
    #[arg(long)]
    acks: Option<std::path::PathBuf>,
    /// Acknowledgements per second by epoch, as JSON lines.
    #[arg(long)]
    timeline: Option<std::path::PathBuf>,
    /// Stop when this file appears (tests end an open-ended crowd this way).
    #[arg(long)]
    stop_file: Option<std::path::PathBuf>,
    /// Instead of buying: check every order of this acks file (`--acks` of an earlier
    /// run) on the node at `--url` — present, with the same id, key, sku and quantity.
    #[arg(long)]
    verify_acks: Option<std::path::PathBuf>,
    /// Print the outcome as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Open loop: send purchases at a rate that follows this schedule whatever the
    /// nodes do — `second:rate` points, linear in between, ending at the last point
    /// (e.g. `0:20,15:150,45:150,46:10,90:10`). A closed loop (the default) slows down
    /// as the nodes saturate and hides it; this does not. No retries, no confirms; with
    /// `--timeline`, one line per second: rate, sent, ok, codes, p99.
    #[arg(long)]
    schedule: Option<String>,
    /// A file of base URLs, one per line, re-read every second: purchases spread over
    /// them (what a Service does; the caller keeps it to the ready endpoints). `--url`
    /// still names where the sale's items are read first.
    #[arg(long)]
    urls_file: Option<std::path::PathBuf>,
    /// Open loop: requests in flight at most; a request due past it is counted as
    /// `skipped` (the crowd's own limit, never a wait).
    #[arg(long, default_value_t = 512)]
    inflight_max: u64,
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
    /// Retries sent (with `--retry`), by what they answered.
    retried: BTreeMap<String, u64>,
    /// Per second since the start: acknowledgements by the epoch that answered.
    timeline: BTreeMap<u64, BTreeMap<u64, u64>>,
}

/// One acknowledged order, as the crowd saw it.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Ack {
    key: String,
    id: u64,
    sku: String,
    quantity: u32,
    customer: String,
    epoch: u64,
    /// Unix ms when the acknowledgement came.
    t_ms: u64,
}

impl Ack {
    /// The line the acks file gets for `order`, acknowledged at `epoch` just now.
    fn line(order: Order, epoch: u64) -> Vec<u8> {
        let ack = Ack {
            key: order.idempotency_key,
            id: order.id,
            sku: order.sku,
            quantity: order.quantity,
            customer: order.customer,
            epoch,
            t_ms: unix_ms(),
        };
        let mut line = serde_json::to_vec(&ack).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// The endpoints in `--urls-file` (one base URL a line), `None` when it cannot be read
/// or lists none.
fn read_urls(file: &std::path::Path) -> Option<Vec<String>> {
    std::fs::read_to_string(file)
        .ok()
        .map(|t| {
            t.lines()
                .map(|l| l.trim().trim_end_matches('/').to_string())
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    if args.concurrency == 0 || args.concurrency > 1_024 {
        bail!("--concurrency must be between 1 and 1024");
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(args.request_timeout_ms))
        .connect_timeout(Duration::from_millis(args.request_timeout_ms.min(1_000)))
        .pool_max_idle_per_host(args.concurrency as usize)
        .build()?;
    let base = args.url.trim_end_matches('/').to_string();
    if let Some(file) = &args.verify_acks {
        return verify(&http, &base, file, args.concurrency as usize).await;
    }
    if let Some(schedule) = &args.schedule {
        let points = parse_schedule(schedule)?;
        return open_loop(&http, &base, &args, &points).await;
    }
    // Like its purchases, the crowd's first look at the sale retries through a
    // transient refusal (a Service whose endpoint is still moving), for at most 20 s.
    let before = {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match items(&http, &base).await {
                Ok(v) => break v,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("listing items: {e:#}; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e.context("listing items (20 s of retries)")),
            }
        }
    };
    if before.is_empty() {
        bail!("the node sells nothing (not configured?)");
    }
    let skus: Arc<Vec<String>> = Arc::new(before.iter().map(|i| i.sku.clone()).collect());
    let next = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let acks = match &args.acks {
        Some(p) => Some(Arc::new(Mutex::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?,
        )))),
        None => None,
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration_max_s);
    let run = format!("{:08x}", rand::random::<u32>());

    // --urls-file: the endpoints to spread over, re-read every second.
    let urls: Option<Arc<std::sync::RwLock<Vec<String>>>> = match &args.urls_file {
        Some(f) => {
            let read = {
                let f = f.clone();
                move || read_urls(&f)
            };
            let first = read().with_context(|| format!("{}: no URLs", f.display()))?;
            let shared = Arc::new(std::sync::RwLock::new(first));
            let refresh = shared.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if let Some(v) = read() {
                        *refresh.write().unwrap_or_else(|e| e.into_inner()) = v;
                    }
                }
            });
            Some(shared)
        }
        None => None,
    };
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let urls = urls.clone();
        let (http, base, skus, next, tally, run, args, acks) = (
            http.clone(),
            base.clone(),
            skus.clone(),
            next.clone(),
            tally.clone(),
            run.clone(),
            args.clone(),
            acks.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let stopped = args.stop_file.as_ref().is_some_and(|f| f.exists());
                if n >= args.buyers || Instant::now() > deadline || stopped {
                    return;
                }
                let sku = skus[(n % skus.len() as u64) as usize].clone();
                let req = PurchaseRequest {
                    sku: sku.clone(),
                    quantity: 1,
                    customer: format!("customer-{}", rand::random::<u64>() % args.customers.max(1)),
                    idempotency_key: format!("crowd-{run}-{n}"),
                };
                // With --urls-file, buyers spread over the endpoints (as a Service does).
                let base = urls
                    .as_ref()
                    .map(|u| {
                        let u = u.read().unwrap_or_else(|e| e.into_inner());
                        u[(n % u.len() as u64) as usize].clone()
                    })
                    .unwrap_or_else(|| base.clone());
                let outcome = if args.retry {
                    buy_retrying(&http, &base, &req, &args, &tally, deadline).await
                } else {
                    buy(&http, &base, &req).await
                };
                let mut t = tally.lock().await;
                t.attempts += 1;
                match outcome {
                    Outcome::Sold { order, epoch } => {
                        *t.sold_units.entry(sku).or_default() += order.quantity as u64;
                        let sec = started.elapsed().as_secs();
                        *t.timeline.entry(sec).or_default().entry(epoch).or_default() += 1;
                        drop(t);
                        if let Some(a) = &acks {
                            let line = Ack::line(order, epoch);
                            let _ = a.lock().await.write_all(&line);
                        }
                    }
                    Outcome::Unconfirmed => t.unconfirmed += 1,
                    Outcome::Rejected(code) => *t.rejected.entry(code).or_default() += 1,
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    if let Some(a) = &acks {
        a.lock().await.flush()?;
    }
    let elapsed = started.elapsed();
    let after = items(&http, &base).await.unwrap_or_default();
    let tally = tally.lock().await;
    if let Some(p) = &args.timeline {
        let mut w = std::io::BufWriter::new(std::fs::File::create(p)?);
        for (sec, by_epoch) in &tally.timeline {
            serde_json::to_writer(
                &mut w,
                &serde_json::json!({"second": sec, "acks": by_epoch}),
            )?;
            w.write_all(b"\n")?;
        }
    }
    report(&args, &tally, &after, elapsed)
}

/// Checks an acks file against a node: every acknowledged order is there, the same.
async fn verify(
    http: &reqwest::Client,
    base: &str,
    file: &std::path::Path,
    concurrency: usize,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let acks: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("acks file")?;
    let results: Vec<Result<(), String>> = futures::stream::iter(acks.iter())
        .map(|a| async move {
            let id = a["id"].as_u64().unwrap_or(0);
            let mut last = String::new();
            for _ in 0..3 {
                let customer = a["customer"].as_str().unwrap_or_default();
                let mut read = http
                    .get(format!("{base}/v1/orders/{id}"))
                    .header("Flashsale-Customer", customer);
                // With the node's admin token the reads are not the crowd's: the
                // admission rate does not apply to them.
                if let Ok(t) = std::env::var("FLASHSALE_ADMIN_TOKEN") {
                    read = read.bearer_auth(t);
                }
                match read.send().await {
                    Ok(r) if r.status().is_success() => {
                        let o: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
                        return if o["idempotencyKey"] == a["key"]
                            && o["sku"] == a["sku"]
                            && o["quantity"] == a["quantity"]
                            && o["customer"] == a["customer"]
                        {
                            Ok(())
                        } else {
                            Err(format!("order {id}: acknowledged {a}, the node has {o}"))
                        };
                    }
                    Ok(r) if r.status() == 404 => {
                        return Err(format!("order {id} ({}) acknowledged, missing", a["key"]));
                    }
                    Ok(r) => last = format!("order {id}: HTTP {}", r.status()),
                    Err(e) => last = format!("order {id}: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(last)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let bad: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    println!(
        "{}",
        serde_json::json!({"checked": acks.len(), "bad": bad.len(), "first": bad.iter().take(5).collect::<Vec<_>>()})
    );
    if !bad.is_empty() {
        bail!(
            "{} of {} acknowledged orders missing or different",
            bad.len(),
            acks.len()
        );
    }
    Ok(())
}

async fn items(http: &reqwest::Client, base: &str) -> anyhow::Result<Vec<ItemView>> {
    Ok(http
        .get(format!("{base}/v1/items"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

enum Outcome {
    Sold { order: Order, epoch: u64 },
    Unconfirmed,
    Rejected(String),
}

/// What one purchase request answered.
enum Answer {
    Ok(Order, u64),
    /// A refusal that stands (sold out, limit, bad input …).
    No(String),
    /// A retry can cure it (503, 429, a timeout, no connection); wait this long.
    Again(String, Duration),
}

async fn purchase(http: &reqwest::Client, base: &str, req: &PurchaseRequest) -> Answer {
    let sent = http
        .post(format!("{base}/v1/purchases"))
        .json(req)
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            let what = if e.is_timeout() {
                "timeout"
            } else {
                "transport"
            };
            return Answer::Again(what.into(), Duration::from_millis(100));
        }
    };
    let status = resp.status().as_u16();
    let epoch = resp
        .headers()
        .get(flashsale_core::replication::HEADER_EPOCH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|s| Duration::from_millis((s * 1000).min(1_000)));
    if (200..300).contains(&status) {
        return match resp.json::<Order>().await {
            Ok(o) => Answer::Ok(o, epoch),
            Err(_) => Answer::Again("bad_body".into(), Duration::from_millis(100)),
        };
    }
    let code = match resp.json::<ErrorBody>().await {
        Ok(body) => serde_json::to_value(body.code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("http_{status}")),
        Err(_) => format!("http_{status}"),
    };
    if status == 503 || status == 429 {
        Answer::Again(code, retry_after.unwrap_or(Duration::from_millis(100)))
    } else {
        Answer::No(code)
    }
}

/// One buyer: purchase, then confirm.
async fn buy(http: &reqwest::Client, base: &str, req: &PurchaseRequest) -> Outcome {
    match purchase(http, base, req).await {
        Answer::Ok(order, epoch) => {
            let confirmed = http
                .post(format!("{base}/v1/orders/{}/confirm", order.id))
                .header("Flashsale-Customer", &order.customer)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if confirmed {
                Outcome::Sold { order, epoch }
            } else {
                Outcome::Unconfirmed
            }
        }
        Answer::No(code) | Answer::Again(code, _) => Outcome::Rejected(code),
    }
}

/// One buyer who retries its key until a definitive answer (or `--retry-for-ms`).
async fn buy_retrying(
    http: &reqwest::Client,
    base: &str,
    req: &PurchaseRequest,
    args: &Args,
    tally: &Mutex<Tally>,
    deadline: Instant,
) -> Outcome {
    let give_up = Instant::now() + Duration::from_millis(args.retry_for_ms);
    let mut first = true;
    loop {
        let answer = purchase(http, base, req).await;
        if !first {
            let what = match &answer {
                Answer::Ok(..) => "ok".to_string(),
                Answer::No(c) | Answer::Again(c, _) => c.clone(),
            };
            *tally.lock().await.retried.entry(what).or_default() += 1;
        }
        first = false;
        match answer {
            Answer::Ok(order, epoch) => return Outcome::Sold { order, epoch },
            Answer::No(code) => return Outcome::Rejected(code),
            Answer::Again(code, wait) => {
                let now = Instant::now();
                if now + wait > give_up || now + wait > deadline + Duration::from_secs(30) {
                    return Outcome::Rejected(format!("gave_up_{code}"));
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
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
            "rejected": tally.rejected, "retried": tally.retried, "oversold": oversold,
            "items": after, "elapsedMs": elapsed.as_millis() as u64,
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
        println!(
            "  sold (acknowledged{}): {sold}",
            if args.retry { "" } else { " and confirmed" }
        );
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

/// `second:rate` points, in order of time.
fn parse_schedule(text: &str) -> anyhow::Result<Vec<(f64, f64)>> {
    let mut points = Vec::new();
    for part in text.split(',') {
        let (t, r) = part
            .split_once(':')
            .with_context(|| format!("--schedule: `{part}` is not second:rate"))?;
        let (t, r): (f64, f64) = (
            t.trim()
                .parse()
                .with_context(|| format!("--schedule: bad second `{t}`"))?,
            r.trim()
                .parse()
                .with_context(|| format!("--schedule: bad rate `{r}`"))?,
        );
        if r < 0.0 || points.last().is_some_and(|(pt, _)| *pt >= t) {
            bail!("--schedule: times must rise and rates be at least 0 (at `{part}`)");
        }
        points.push((t, r));
    }
    if points.len() < 2 {
        bail!("--schedule: at least two points");
    }
    Ok(points)
}

/// The rate at `t` seconds, and the requests due from 0 to `t` (the integral).
fn due_by(points: &[(f64, f64)], t: f64) -> f64 {
    let mut total = 0.0;
    for w in points.windows(2) {
        let ((t0, r0), (t1, r1)) = (w[0], w[1]);
        if t <= t0 {
            break;
        }
        let end = t.min(t1);
        let r_end = r0 + (r1 - r0) * (end - t0) / (t1 - t0);
        total += (r0 + r_end) / 2.0 * (end - t0);
    }
    total
}

#[derive(Default)]
struct Second {
    sent: u64,
    ok: u64,
    codes: BTreeMap<String, u64>,
    latencies_ms: Vec<f64>,
}

/// The open-loop crowd (`--schedule`).
async fn open_loop(
    http: &reqwest::Client,
    base: &str,
    args: &Args,
    points: &[(f64, f64)],
) -> anyhow::Result<()> {
    let endpoints = || -> Vec<String> {
        (args.urls_file.as_deref())
            .and_then(read_urls)
            .unwrap_or_else(|| vec![base.to_string()])
    };
    let before = items(http, &endpoints()[0]).await?;
    let skus: Vec<String> = before.iter().map(|i| i.sku.clone()).collect();
    if skus.is_empty() {
        bail!("the node sells nothing (not configured?)");
    }
    let seconds: Arc<std::sync::Mutex<BTreeMap<u64, Second>>> = Arc::default();
    let acks = match &args.acks {
        Some(p) => Some(Arc::new(std::sync::Mutex::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?,
        )))),
        None => None,
    };
    let inflight = Arc::new(AtomicU64::new(0));
    let run = format!("{:08x}", rand::random::<u32>());
    let end = points.last().map_or(0.0, |p| p.0);
    let started = Instant::now();
    let mut urls = endpoints();
    let mut urls_read = started;
    let (mut sent, mut skipped) = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tick.tick().await;
        let t = started.elapsed().as_secs_f64();
        if t >= end || args.stop_file.as_ref().is_some_and(|f| f.exists()) {
            break;
        }
        if urls_read.elapsed() >= Duration::from_secs(1) {
            urls = endpoints();
            urls_read = Instant::now();
        }
        let due = due_by(points, t).floor() as u64;
        while sent + skipped < due {
            let n = sent + skipped;
            let sec = t as u64;
            if inflight.load(Ordering::Relaxed) >= args.inflight_max {
                skipped += 1;
                continue;
            }
            sent += 1;
            inflight.fetch_add(1, Ordering::Relaxed);
            let url = urls[(n % urls.len() as u64) as usize].clone();
            let req = PurchaseRequest {
                sku: skus[(n % skus.len() as u64) as usize].clone(),
                quantity: 1,
                customer: format!("customer-{}", rand::random::<u64>() % args.customers.max(1)),
                idempotency_key: format!("open-{run}-{n}"),
            };
            let (http, seconds, inflight, acks) = (
                http.clone(),
                seconds.clone(),
                inflight.clone(),
                acks.clone(),
            );
            tasks.spawn(async move {
                let t0 = Instant::now();
                let answer = purchase(&http, &url, &req).await;
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                inflight.fetch_sub(1, Ordering::Relaxed);
                let mut all = seconds.lock().unwrap_or_else(|e| e.into_inner());
                let s = all.entry(sec).or_default();
                s.sent += 1;
                s.latencies_ms.push(ms);
                match answer {
                    Answer::Ok(order, epoch) => {
                        s.ok += 1;
                        drop(all);
                        if let Some(a) = &acks {
                            let line = Ack::line(order, epoch);
                            let _ = a.lock().unwrap_or_else(|e| e.into_inner()).write_all(&line);
                        }
                    }
                    Answer::No(code) | Answer::Again(code, _) => {
                        *s.codes.entry(code).or_default() += 1;
                    }
                }
            });
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    if let Some(a) = &acks {
        a.lock().unwrap_or_else(|e| e.into_inner()).flush()?;
    }
    let all = std::mem::take(&mut *seconds.lock().unwrap_or_else(|e| e.into_inner()));
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    let mut ok = 0;
    let mut lines = Vec::new();
    for (sec, s) in all.iter() {
        ok += s.ok;
        for (c, n) in &s.codes {
            *codes.entry(c.clone()).or_default() += n;
        }
        let mut l = s.latencies_ms.clone();
        l.sort_by(f64::total_cmp);
        let p99 = l
            .get((l.len() * 99 / 100).min(l.len().saturating_sub(1)))
            .copied();
        let rate = due_by(points, *sec as f64 + 1.0) - due_by(points, *sec as f64);
        lines.push(serde_json::json!({
            "second": sec, "rate": rate.round(), "sent": s.sent, "ok": s.ok,
            "codes": s.codes, "p99Ms": p99.map(|v| (v * 10.0).round() / 10.0),
        }));
    }
    if let Some(p) = &args.timeline {
        let mut w = std::io::BufWriter::new(std::fs::File::create(p)?);
        for l in &lines {
            serde_json::to_writer(&mut w, l)?;
            w.write_all(b"\n")?;
        }
    }
    let after = items(http, &endpoints()[0]).await.unwrap_or_default();
    let oversold: u64 = after
        .iter()
        .map(|i| (i.sold + i.held).saturating_sub(i.stock))
        .sum();
    let out = serde_json::json!({
        "sent": sent, "ok": ok, "skipped": skipped, "codes": codes,
        "oversold": oversold, "elapsedMs": started.elapsed().as_millis() as u64,
    });
    println!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_is_a_rate_integrated_over_time() {
        let p = parse_schedule("0:10,10:10,20:30").unwrap();
        assert_eq!(due_by(&p, 0.0), 0.0);
        assert_eq!(due_by(&p, 10.0), 100.0);
        assert_eq!(due_by(&p, 20.0), 300.0, "the ramp averages 20/s");
        assert_eq!(due_by(&p, 99.0), 300.0, "nothing past the end");
        assert!(parse_schedule("0:10").is_err());
        assert!(parse_schedule("5:10,2:3").is_err());
        assert!(parse_schedule("0:x,1:2").is_err());
    }
}
