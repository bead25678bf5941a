//! The operator's Prometheus metrics (`/metrics`).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailoverLabels {
    /// `failover` or `switchover`.
    pub kind: &'static str,
    /// `started`, `completed`, `blocked`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    /// `detect` (first failure to the fence), `fence` (to proof), `recover` (to the tail
    /// in the candidate), `promote` (to the new primary).
    pub step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SaleLabels {
    pub namespace: String,
    pub sale: String,
}

pub struct Metrics {
    registry: Registry,
    /// The autoscaler's input and output, per sale (`crate::scale`).
    pub autoscaler_demand: Family<SaleLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub autoscaler_desired: Family<SaleLabels, Gauge>,
    reconciles: Family<ResultLabel, Counter>,
    reconcile_seconds: Histogram,
    /// Status writes that lost a race (resourceVersion precondition failed).
    pub status_conflicts: Counter,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Per-node applied sequence and lag (`crate::replication`).
    pub replication: crate::replication::ReplicationMetrics,
    failovers: Family<FailoverLabels, Counter>,
    failover_step_seconds: Family<StepLabel, Histogram, fn() -> Histogram>,
    lease_renewals: Family<ResultLabel, Counter>,
}

fn step_histogram() -> Histogram {
    // 10 ms .. ~160 s.
    Histogram::new(exponential_buckets(0.01, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("flashsale_operator");
        let reconciles = Family::<ResultLabel, Counter>::default();
        registry.register("reconciles", "Reconciles by result", reconciles.clone());
        // 1 ms .. ~16 s.
        let reconcile_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            reconcile_seconds.clone(),
        );
        let status_conflicts = Counter::default();
        registry.register(
            "status_conflicts",
            "Status writes refused because the sale changed since it was read",
            status_conflicts.clone(),
        );
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica leads", leader.clone());
        let replication = crate::replication::ReplicationMetrics::default();
        replication.register(&mut registry);
        let failovers = Family::<FailoverLabels, Counter>::default();
        registry.register(
            "failovers",
            "Failovers and switchovers, by kind and outcome",
            failovers.clone(),
        );
        let failover_step_seconds =
            Family::<StepLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                step_histogram as fn() -> Histogram,
            );
        registry.register(
            "failover_step_seconds",
            "How long each step of a failover took",
            failover_step_seconds.clone(),
        );
        let lease_renewals = Family::<ResultLabel, Counter>::default();
        registry.register(
            "lease_renewals",
            "Selling lease renewals sent to primaries, by result",
            lease_renewals.clone(),
        );
        let autoscaler_demand =
            Family::<SaleLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "autoscaler_demand_per_second",
            "Public requests per second over a sale's nodes, as the autoscaler last sampled them",
            autoscaler_demand.clone(),
        );
        let autoscaler_desired = Family::<SaleLabels, Gauge>::default();
        registry.register(
            "autoscaler_desired_replicas",
            "The node count the autoscaler wants for a sale",
            autoscaler_desired.clone(),
        );
        Self {
            registry,
            autoscaler_demand,
            autoscaler_desired,
            reconciles,
            reconcile_seconds,
            status_conflicts,
            leader,
            replication,
            failovers,
            failover_step_seconds,
            lease_renewals,
        }
    }
}

impl Metrics {
    pub fn observe_reconcile(&self, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles.get_or_create(&ResultLabel { result }).inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
    }

    pub fn lease_renewal(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.lease_renewals
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Counts and times what a status write changed of a failover.
    pub fn failover_transition(
        &self,
        prev: &crate::crd::FlashSaleStatus,
        next: &crate::crd::FlashSaleStatus,
    ) {
        use crate::crd::{FailoverKind, FailoverStep};
        let kind_of = |k: FailoverKind| match k {
            FailoverKind::Failover => "failover",
            FailoverKind::Switchover => "switchover",
        };
        let secs = |a: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
                    b: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| {
            ((b.0.as_millisecond() - a.0.as_millisecond()).max(0) as f64) / 1000.0
        };
        let step = |name: &'static str, s: f64| {
            self.failover_step_seconds
                .get_or_create(&StepLabel { step: name })
                .observe(s)
        };
        match (&prev.failover, &next.failover) {
            (None, Some(f)) => {
                self.failovers
                    .get_or_create(&FailoverLabels {
                        kind: kind_of(f.kind),
                        outcome: "started",
                    })
                    .inc();
                step("detect", secs(&f.detected_at, &f.fence_started_at));
            }
            (Some(a), Some(b)) => {
                if a.fenced_at.is_none()
                    && let Some(at) = &b.fenced_at
                {
                    step("fence", secs(&b.fence_started_at, at));
                }
                if a.step != FailoverStep::Promoting
                    && b.step == FailoverStep::Promoting
                    && let Some(at) = &b.fenced_at
                {
                    step("recover", secs(at, &chrono_now()));
                }
                if a.blocked.is_none() && b.blocked.is_some() {
                    self.failovers
                        .get_or_create(&FailoverLabels {
                            kind: kind_of(b.kind),
                            outcome: "blocked",
                        })
                        .inc();
                }
            }
            (Some(_), None) => {
                if let Some(last) = &next.last_failover {
                    self.failovers
                        .get_or_create(&FailoverLabels {
                            kind: kind_of(last.kind),
                            outcome: "completed",
                        })
                        .inc();
                    step("promote", secs(&last.fenced_at, &last.promoted_at));
                }
            }
            (None, None) => {}
        }
    }

    /// Drops a sale's autoscaler series: the sale is deleted, or its autoscaling is
    /// off. A gauge left behind would go on saying what the autoscaler wants for a sale
    /// it no longer scales.
    pub fn forget_autoscaler(&self, namespace: &str, sale: &str) {
        let labels = SaleLabels {
            namespace: namespace.to_string(),
            sale: sale.to_string(),
        };
        self.autoscaler_demand.remove(&labels);
        self.autoscaler_desired.remove(&labels);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

fn chrono_now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deleted sale's (or one whose autoscaling is off) autoscaler series leave the
    /// exposition; another sale's stay.
    #[test]
    fn a_forgotten_sale_has_no_autoscaler_series() {
        let m = Metrics::default();
        for sale in ["gone", "kept"] {
            let labels = SaleLabels {
                namespace: "ns".into(),
                sale: sale.into(),
            };
            m.autoscaler_demand.get_or_create(&labels).set(12.5);
            m.autoscaler_desired.get_or_create(&labels).set(3);
        }
        m.forget_autoscaler("ns", "gone");
        let text = m.encode();
        let series = |sale: &str| {
            text.lines()
                .filter(|l| l.starts_with("flashsale_operator_autoscaler_"))
                .filter(|l| l.contains(&format!("sale=\"{sale}\"")))
                .count()
        };
        assert_eq!((series("gone"), series("kept")), (0, 2), "{text}");
    }
}
