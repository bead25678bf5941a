//! The node's Prometheus metrics (`GET /metrics`, text format) and the purchase rate
//! the operator's scaler reads from `/admin/v1/status`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use flashsale_core::ItemView;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::engine::EngineMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    /// `ok` (an idempotent replay counts as `ok` again), else the error's stable code.
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: &'static str,
    status: u16,
}

/// [`RouteLabels`] with the route borrowed from the request, to look a request's series
/// up without resolving its route to a `&'static str` first. The fields are the same, in
/// the same order, so both hash alike.
#[derive(Hash)]
struct RouteQuery<'a> {
    method: &'static str,
    route: &'a str,
    status: u16,
}

impl hashbrown::Equivalent<RouteLabels> for RouteQuery<'_> {
    fn equivalent(&self, key: &RouteLabels) -> bool {
        self.method == key.method && self.route == key.route && self.status == key.status
    }
}

/// Records into the series `cache` holds for `query`, resolving it with `resolve` (a
/// `Family` lookup) and keeping it the first time. The read guard is let go before the
/// write lock is taken.
fn record_cached<K, V, Q>(
    cache: &parking_lot::RwLock<hashbrown::HashMap<K, V>>,
    query: &Q,
    resolve: impl FnOnce() -> (K, V),
    record: impl Fn(&V),
) where
    K: std::hash::Hash + Eq,
    Q: std::hash::Hash + hashbrown::Equivalent<K> + ?Sized,
{
    if let Some(series) = cache.read().get(query) {
        record(series);
        return;
    }
    let (key, series) = resolve();
    record(&series);
    cache.write().insert(key, series);
}

/// The series one kind of answered request records into.
struct RequestSeries {
    latency: Histogram,
    answered: Counter,
}

/// A route's label as a `&'static str`, so recording a request allocates nothing: the
/// routes are the router's patterns (and "unmatched"), a fixed set, each leaked once.
fn route_label(route: &str) -> &'static str {
    static ROUTES: std::sync::OnceLock<parking_lot::RwLock<hashbrown::HashSet<&'static str>>> =
        std::sync::OnceLock::new();
    let routes = ROUTES.get_or_init(Default::default);
    if let Some(r) = routes.read().get(route) {
        return r;
    }
    let mut w = routes.write();
    match w.get(route) {
        Some(r) => r,
        None => {
            let r: &'static str = Box::leak(route.into());
            w.insert(r);
            r
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ItemLabels {
    sku: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForwardLabels {
    what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The kinds of request `flashsale_requests_answered_total` and the status's
/// `load.answered` count.
pub const REQUEST_KINDS: [&str; 8] = [
    "purchase", "confirm", "cancel", "read", "forward", "admin", "ops", "other",
];

/// The kind of a request, from its method and matched route.
pub fn request_kind(method: &str, route: &str) -> &'static str {
    match (method, route) {
        ("POST", "/v1/purchases") => "purchase",
        ("POST", "/v1/orders/{id}/confirm") => "confirm",
        ("POST", "/v1/orders/{id}/cancel") => "cancel",
        ("GET", "/v1/items" | "/v1/items/{sku}" | "/v1/orders/{id}") => "read",
        ("POST", crate::forward::FORWARD_ROUTE) => "forward",
        (_, r) if r.starts_with("/admin/") => "admin",
        (_, "/healthz" | "/readyz" | "/metrics" | "/openapi.json") => "ops",
        _ => "other",
    }
}

/// CPU seconds this process has used (user + system), from `getrusage`.
pub fn process_cpu_seconds() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}

/// Raises a counter to `total` (a count kept elsewhere, read at scrape time).
fn raise_to(counter: &Counter, total: u64) {
    let have = counter.get();
    if total > have {
        counter.inc_by(total - have);
    }
}

/// Every metric the node exports. Per-item gauges are refreshed at scrape time from
/// the engine's state, so they cannot drift from it.
pub struct Metrics {
    registry: Registry,
    purchases: Family<OutcomeLabels, Counter>,
    requests: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Each (method, route, status)'s series in `requests` and `answered`, resolved once.
    /// A `Family` lookup hashes the labels with SipHash under its lock, and a request
    /// made two of them (over 1 000 instructions per purchase, measured with callgrind);
    /// this one lookup hashes with foldhash.
    request_series: parking_lot::RwLock<hashbrown::HashMap<RouteLabels, RequestSeries>>,
    /// Each outcome's series in `purchases`, resolved once (the same reason).
    purchase_series: parking_lot::RwLock<hashbrown::HashMap<&'static str, Counter>>,
    stock: Family<ItemLabels, Gauge>,
    sold: Family<ItemLabels, Gauge>,
    held: Family<ItemLabels, Gauge>,
    remaining: Family<ItemLabels, Gauge>,
    oversold: Gauge,
    /// Answers 503 `fenced` (no selling lease): purchases, confirms, cancels.
    fenced: Counter,
    /// Milliseconds of selling lease left (set at scrape time).
    lease_remaining_ms: Gauge,
    purchases_answered: AtomicU64,
    /// Answers to `/v1/*` requests (the requests-per-second gauge's count).
    public_answered: AtomicU64,
    /// (when, purchases answered, `/v1` requests answered), one sample a tick.
    rate: Mutex<VecDeque<(Instant, u64, u64)>>,
    answered: Family<KindLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    requests_per_s: Gauge<f64, std::sync::atomic::AtomicU64>,
    engine_inflight: Gauge,
    engine_inflight_max: Gauge,
    cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    forwarded: Family<ForwardLabels, Counter>,
}

/// Samples kept for `purchases_per_s`: the rate is averaged over this many ticks.
const RATE_SAMPLES_MAX: usize = 6;

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s: loopback answers are sub-millisecond, fsyncs a few ms.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Metrics {
    /// Lets another part of the node (replication) add its metrics at start.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The HTTP side's metrics plus the engine's (batch size, fsync latency, queue).
    pub fn new(engine: &EngineMetrics) -> Metrics {
        let mut registry = Registry::default();
        register_engine(&mut registry, engine);
        let purchases = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "flashsale_purchases",
            "Purchases answered, by outcome code",
            purchases.clone(),
        );
        let requests = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "flashsale_http_request_duration_seconds",
            "HTTP request latency, by route and status",
            requests.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Family::<ItemLabels, Gauge>::default();
            registry.register(name, help, g.clone());
            g
        };
        let stock = gauge(
            &mut registry,
            "flashsale_item_stock",
            "Units on sale in total, per item",
        );
        let sold = gauge(
            &mut registry,
            "flashsale_item_sold",
            "Units in confirmed orders, per item",
        );
        let held = gauge(
            &mut registry,
            "flashsale_item_held",
            "Units held by unconfirmed reservations, per item",
        );
        let remaining = gauge(
            &mut registry,
            "flashsale_item_remaining",
            "Units still for sale, per item",
        );
        let oversold = Gauge::default();
        registry.register(
            "flashsale_oversold",
            "Units sold or held beyond stock, summed over items: must always be 0",
            oversold.clone(),
        );
        let fenced = Counter::default();
        registry.register(
            "flashsale_fenced_answers",
            "Writes answered 503 fenced: this node held no selling lease",
            fenced.clone(),
        );
        let lease_remaining_ms = Gauge::default();
        registry.register(
            "flashsale_lease_remaining_ms",
            "Milliseconds of selling lease left on this node (0: none)",
            lease_remaining_ms.clone(),
        );
        let answered = Family::<KindLabels, Counter>::default();
        registry.register(
            "flashsale_requests_answered",
            "Requests answered, by kind: purchase, confirm, cancel, read, forward (a batch from a secondary), admin, ops, other",
            answered.clone(),
        );
        let refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "flashsale_refused_for_load",
            "Requests refused for load: rate (429, over the admission rate), busy (503, the engine queue full)",
            refused.clone(),
        );
        let requests_per_s = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "flashsale_requests_per_second",
            "Public API (/v1) requests answered per second over the last few seconds (for KEDA or prometheus-adapter)",
            requests_per_s.clone(),
        );
        let engine_inflight = Gauge::default();
        registry.register(
            "flashsale_engine_inflight",
            "Purchases, confirms and cancels holding a place in the engine queue",
            engine_inflight.clone(),
        );
        let engine_inflight_max = Gauge::default();
        registry.register(
            "flashsale_engine_inflight_max",
            "Places in the engine queue (--engine-inflight-max); past them, 503 at once",
            engine_inflight_max.clone(),
        );
        let cpu_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "process_cpu_seconds",
            "CPU seconds this process has used, user and system",
            cpu_seconds.clone(),
        );
        let forwarded = Family::<ForwardLabels, Counter>::default();
        registry.register(
            "flashsale_forwarded",
            "Forwarding to the primary (a secondary's): ops sent, batches sent, failed (ops answered 503 here: queue full, timeout, primary unreachable)",
            forwarded.clone(),
        );
        Metrics {
            forwarded,
            answered,
            refused,
            requests_per_s,
            engine_inflight,
            engine_inflight_max,
            cpu_seconds,
            public_answered: AtomicU64::new(0),
            fenced,
            lease_remaining_ms,
            registry,
            purchases,
            requests,
            request_series: Default::default(),
            purchase_series: Default::default(),
            stock,
            sold,
            held,
            remaining,
            oversold,
            purchases_answered: AtomicU64::new(0),
            rate: Mutex::new(VecDeque::with_capacity(RATE_SAMPLES_MAX + 1)),
        }
    }

    /// A write answered 503 `fenced`.
    pub fn fenced(&self) {
        self.fenced.inc();
    }

    /// The lease left, for the next scrape.
    pub fn lease_remaining_ms(&self, ms: u64) {
        self.lease_remaining_ms.set(clamp(ms));
    }

    /// One purchase answered: `code` is `ok` or the error's stable code.
    pub fn purchase(&self, code: &'static str) {
        record_cached(
            &self.purchase_series,
            code,
            || {
                let c = self.purchases.get_or_create(&OutcomeLabels { code });
                (code, c.clone())
            },
            |c| {
                c.inc();
            },
        );
        self.purchases_answered.fetch_add(1, Ordering::Relaxed);
        if code == "fenced" {
            self.fenced.inc();
        }
    }

    /// Records one answered request. `route` is the matched route or `unmatched`; a
    /// method outside the standard ones is counted as `other`, so no client can add
    /// series (and memory, and scrape time) by inventing method tokens.
    pub fn request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        const KNOWN: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"];
        let method = KNOWN
            .iter()
            .find(|m| **m == method)
            .copied()
            .unwrap_or("other");
        let query = RouteQuery {
            method,
            route,
            status,
        };
        record_cached(
            &self.request_series,
            &query,
            || {
                let labels = RouteLabels {
                    method,
                    route: route_label(route),
                    status,
                };
                let kind = KindLabels {
                    kind: request_kind(method, route),
                };
                let series = RequestSeries {
                    latency: self.requests.get_or_create(&labels).clone(),
                    answered: self.answered.get_or_create(&kind).clone(),
                };
                (labels, series)
            },
            |s| {
                s.latency.observe(seconds);
                s.answered.inc();
            },
        );
        if route.starts_with("/v1/") {
            self.public_answered.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The load figures: answered by kind, refused for load, the engine queue, CPU.
    pub fn load(
        &self,
        admission: &crate::admission::AdmissionLoad,
        forward: Option<&crate::forward::ForwardCounters>,
    ) -> flashsale_core::admin::LoadStatus {
        use std::sync::atomic::Ordering::Relaxed;
        let fwd = |f: fn(&crate::forward::ForwardCounters) -> &AtomicU64| {
            forward.map_or(0, |c| f(c).load(Relaxed))
        };
        let answered = REQUEST_KINDS
            .iter()
            .map(|k| {
                (
                    k.to_string(),
                    self.answered.get_or_create(&KindLabels { kind: k }).get(),
                )
            })
            .collect();
        flashsale_core::admin::LoadStatus {
            requests_per_s: self.requests_per_s(),
            answered,
            refused_for_load: [
                ("rate".to_string(), admission.refused_rate),
                ("busy".to_string(), admission.refused_busy),
                ("memory".to_string(), admission.refused_memory),
            ]
            .into_iter()
            .collect(),
            engine_inflight: admission.inflight,
            engine_inflight_max: admission.inflight_max,
            process_cpu_seconds: process_cpu_seconds(),
            forwarded: fwd(|c| &c.ops),
            forward_batches: fwd(|c| &c.batches),
            forward_failed: fwd(|c| &c.failed),
        }
    }

    /// Sets what is read at scrape time: the admission's figures and the CPU.
    pub fn observe_load(
        &self,
        admission: &crate::admission::AdmissionLoad,
        forward: Option<&crate::forward::ForwardCounters>,
    ) {
        if let Some(c) = forward {
            use std::sync::atomic::Ordering::Relaxed;
            for (what, n) in [
                ("ops", c.ops.load(Relaxed)),
                ("batches", c.batches.load(Relaxed)),
                ("failed", c.failed.load(Relaxed)),
            ] {
                raise_to(&self.forwarded.get_or_create(&ForwardLabels { what }), n);
            }
        }
        raise_to(
            &self.refused.get_or_create(&ReasonLabels { reason: "rate" }),
            admission.refused_rate,
        );
        raise_to(
            &self.refused.get_or_create(&ReasonLabels { reason: "busy" }),
            admission.refused_busy,
        );
        raise_to(
            &self
                .refused
                .get_or_create(&ReasonLabels { reason: "memory" }),
            admission.refused_memory,
        );
        self.engine_inflight.set(clamp(admission.inflight));
        self.engine_inflight_max.set(clamp(admission.inflight_max));
        self.requests_per_s.set(self.requests_per_s());
        let cpu = process_cpu_seconds();
        let have = self.cpu_seconds.get();
        if cpu > have {
            self.cpu_seconds.inc_by(cpu - have);
        }
    }

    /// Takes one rate sample; called about once a second.
    pub fn tick(&self) {
        let mut samples = self.rate.lock();
        samples.push_back((
            Instant::now(),
            self.purchases_answered.load(Ordering::Relaxed),
            self.public_answered.load(Ordering::Relaxed),
        ));
        while samples.len() > RATE_SAMPLES_MAX {
            samples.pop_front();
        }
    }

    /// Purchases answered per second over the last few ticks.
    pub fn purchases_per_s(&self) -> f64 {
        self.per_s(|(_, p, _)| *p)
    }

    /// Public API (`/v1`) requests answered per second over the last few ticks.
    pub fn requests_per_s(&self) -> f64 {
        self.per_s(|(_, _, r)| *r)
    }

    fn per_s(&self, count: impl Fn(&(Instant, u64, u64)) -> u64) -> f64 {
        let samples = self.rate.lock();
        match (samples.front(), samples.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => {
                count(b).saturating_sub(count(a)) as f64 / b.0.duration_since(a.0).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// The Prometheus text for a scrape, with the per-item gauges set from `items`.
    pub fn encode(&self, items: &[ItemView]) -> Result<String, std::fmt::Error> {
        let mut oversold = 0u64;
        for it in items {
            let l = ItemLabels {
                sku: it.sku.clone(),
            };
            self.stock.get_or_create(&l).set(clamp(it.stock));
            self.sold.get_or_create(&l).set(clamp(it.sold));
            self.held.get_or_create(&l).set(clamp(it.held));
            self.remaining.get_or_create(&l).set(clamp(it.remaining));
            oversold += (it.sold + it.held).saturating_sub(it.stock);
        }
        self.oversold.set(clamp(oversold));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Registered one by one rather than with `EngineMetrics::register`, so the names sit
/// under `flashsale_` and the node exports one `flashsale_oversold` (in units, below).
fn register_engine(r: &mut Registry, e: &EngineMetrics) {
    r.register(
        "flashsale_engine_batch_records",
        "Records per group commit",
        e.batch_records.clone(),
    );
    r.register(
        "flashsale_engine_batch_bytes",
        "Bytes per group commit",
        e.batch_bytes.clone(),
    );
    r.register(
        "flashsale_engine_fsync_us",
        "fdatasync latency per group commit, microseconds",
        e.fsync_us.clone(),
    );
    r.register(
        "flashsale_engine_batch_apply_us",
        "Sequencer time from a group commit's first record to its write, microseconds",
        e.batch_apply_us.clone(),
    );
    r.register(
        "flashsale_engine_batches",
        "Group commits written",
        e.batches.clone(),
    );
    r.register(
        "flashsale_engine_records",
        "WAL records written",
        e.records.clone(),
    );
    r.register(
        "flashsale_engine_snapshots",
        "Snapshots written",
        e.snapshots.clone(),
    );
    r.register(
        "flashsale_engine_queue_len",
        "Commands queued when a batch was taken",
        e.queue_len.clone(),
    );
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sku: &str, stock: u64, sold: u64, held: u64) -> ItemView {
        ItemView {
            sku: sku.into(),
            stock,
            sold,
            held,
            remaining: stock.saturating_sub(sold + held),
            per_customer_limit: 0,
        }
    }

    #[test]
    fn oversold_is_zero_for_a_sound_sale_and_counts_the_excess_otherwise() {
        let m = Metrics::new(&EngineMetrics::default());
        let text = m
            .encode(&[item("a", 10, 4, 6), item("b", 5, 0, 1)])
            .unwrap();
        assert!(text.contains("flashsale_oversold 0\n"), "{text}");
        assert!(
            text.contains("flashsale_item_remaining{sku=\"b\"} 4"),
            "{text}"
        );
        let text = m.encode(&[item("a", 10, 9, 3)]).unwrap();
        assert!(text.contains("flashsale_oversold 2\n"), "{text}");
    }

    #[test]
    fn purchases_are_counted_by_outcome() {
        let m = Metrics::new(&EngineMetrics::default());
        m.purchase("ok");
        m.purchase("ok");
        m.purchase("sold_out");
        let text = m.encode(&[]).unwrap();
        assert!(
            text.contains("flashsale_purchases_total{code=\"ok\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("flashsale_purchases_total{code=\"sold_out\"} 1"),
            "{text}"
        );
    }

    /// The first request of a kind resolves its series, the rest reuse them: every one
    /// is counted, each under its own route, status and kind.
    #[test]
    fn requests_are_counted_by_route_status_and_kind() {
        let m = Metrics::new(&EngineMetrics::default());
        for _ in 0..3 {
            m.request("POST", "/v1/purchases", 201, 0.002);
        }
        m.request("POST", "/v1/purchases", 409, 0.001);
        m.request("GET", "/v1/items/{sku}", 200, 0.001);
        m.request("BREW", "/v1/purchases", 405, 0.001);
        let text = m.encode(&[]).unwrap();
        for want in [
            "flashsale_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/purchases\",status=\"201\"} 3",
            "flashsale_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/purchases\",status=\"409\"} 1",
            "flashsale_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/items/{sku}\",status=\"200\"} 1",
            "flashsale_http_request_duration_seconds_count{method=\"other\",route=\"/v1/purchases\",status=\"405\"} 1",
            "flashsale_requests_answered_total{kind=\"purchase\"} 4",
            "flashsale_requests_answered_total{kind=\"read\"} 1",
            "flashsale_requests_answered_total{kind=\"other\"} 1",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        // One series each, found again by the borrowed query (a query that hashed
        // differently from the stored labels would miss every time, and only cost).
        let series = m.request_series.read();
        assert_eq!(series.len(), 4);
        assert!(series.contains_key(&RouteQuery {
            method: "POST",
            route: "/v1/purchases",
            status: 201,
        }));
    }
}
