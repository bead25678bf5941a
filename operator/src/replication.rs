//! Replication as the operator reports it: a pure verdict from the nodes' own statuses
//! (`GET /admin/v1/status`) and the spec's thresholds → `status.nodes[]`, the
//! `ReplicationHealthy` condition and which secondaries started or stopped lagging; plus
//! the live figures as metrics (what the status deliberately leaves out, see
//! `crd::replication`).
//!
//! A secondary is *lagging* when it is more than `maxLagRecords` records or `maxLagMs`
//! behind; it is *caught up* again only once below half of both (hysteresis) and at
//! least [`LAGGING_HOLD_MS`] after it started lagging. Without the hold, thresholds near
//! 0 under load flip the verdict on every sample, and every flip is a status write that
//! wakes the controller again (seen on the local cluster: 65 Event pairs in 20 s). A
//! node that does not answer keeps its last verdict: not knowing is not news.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use flashsale_core::admin::{NodeStatus, Role};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::crd::{
    CONDITION_REPLICATION_HEALTHY, FlashSaleStatus, NodeReplicationStatus, NodeRole,
    ReplicationSpec,
};
use crate::observe::PodView;

/// Shortest time a lagging verdict holds: at most two flips (two status writes, two
/// Events) per secondary per hold.
pub const LAGGING_HOLD_MS: i64 = 30_000;

/// The thresholds, from the spec (negative values cannot pass the CRD's CEL rules; they
/// are read as 0 here all the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub max_lag_records: u64,
    pub max_lag_ms: u64,
}

impl From<&ReplicationSpec> for Thresholds {
    fn from(spec: &ReplicationSpec) -> Self {
        Self {
            max_lag_records: spec.max_lag_records.max(0) as u64,
            max_lag_ms: spec.max_lag_ms.max(0) as u64,
        }
    }
}

/// What the condition says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub healthy: bool,
    pub reason: &'static str,
    pub message: String,
}

/// A secondary that crossed a threshold this time, with the figures seen (for the Event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LagChange {
    pub node: String,
    pub lag_records: u64,
    pub lag_ms: u64,
    /// The thresholds it was judged against.
    pub max_lag_records: u64,
    pub max_lag_ms: u64,
}

/// Everything decided from one observation.
#[derive(Clone, Debug, PartialEq)]
pub struct Assessment {
    pub nodes: Vec<NodeReplicationStatus>,
    pub verdict: Verdict,
    pub started_lagging: Vec<LagChange>,
    pub stopped_lagging: Vec<LagChange>,
}

fn role_of(status: &NodeStatus) -> NodeRole {
    match status.role {
        Role::Primary => NodeRole::Primary,
        Role::Secondary => NodeRole::Secondary,
        Role::Standby => NodeRole::Standby,
    }
}

/// Lag of a node as (records, ms); a node without replication status reports none.
fn lag_of(status: &NodeStatus) -> (u64, u64) {
    status
        .replication
        .as_ref()
        .map_or((0, 0), |r| (r.lag_records, r.lag_ms))
}

/// The verdict on a sale's replication. `primary` is the pod the operator made primary;
/// `prev` is the last `status.nodes` (for hysteresis, the hold and transitions); `now`
/// stamps `laggingSince` when a secondary starts lagging.
pub fn assess(
    pods: &[PodView],
    primary: Option<&str>,
    prev: &[NodeReplicationStatus],
    limits: Thresholds,
    now: &Time,
) -> Assessment {
    let mut nodes = Vec::with_capacity(pods.len());
    let mut started_lagging = Vec::new();
    let mut stopped_lagging = Vec::new();
    let mut not_following = Vec::new();
    for pod in pods {
        let prev_node = prev.iter().find(|p| p.name == pod.name);
        let was_lagging = prev_node.is_some_and(|p| p.lagging);
        let held = prev_node
            .and_then(|p| p.lagging_since.as_ref())
            .is_some_and(|since| {
                now.0.as_millisecond() - since.0.as_millisecond() < LAGGING_HOLD_MS
            });
        let is_primary = primary == Some(pod.name.as_str());
        let status = pod.node_status();
        let lagging = match status {
            Some(s) if s.role == Role::Secondary && !is_primary => {
                let (records, ms) = lag_of(s);
                let over = records > limits.max_lag_records || ms > limits.max_lag_ms;
                let back = records <= limits.max_lag_records / 2 && ms <= limits.max_lag_ms / 2;
                let lagging = if was_lagging { held || !back } else { over };
                let change = LagChange {
                    node: pod.name.clone(),
                    lag_records: records,
                    lag_ms: ms,
                    max_lag_records: limits.max_lag_records,
                    max_lag_ms: limits.max_lag_ms,
                };
                if lagging && !was_lagging {
                    started_lagging.push(change);
                } else if was_lagging && !lagging {
                    stopped_lagging.push(change);
                }
                lagging
            }
            // Did not answer: keep the last verdict.
            None => was_lagging,
            // The primary, or a node that is not (yet) a secondary, is behind no one.
            Some(_) => false,
        };
        if !is_primary && status.is_none_or(|s| s.role != Role::Secondary) {
            not_following.push(pod.name.clone());
        }
        // Kept from the last pass it answered: a failover that begins while it is
        // silent knows it was a secondary, and of which epoch
        // (`failover::step::durable_at_begin`).
        let (role, role_epoch) = match status {
            Some(s) => (Some(role_of(s)), Some(s.epoch)),
            None => prev_node.map_or((None, None), |p| (p.role, p.role_epoch)),
        };
        nodes.push(NodeReplicationStatus {
            name: pod.name.clone(),
            role,
            role_epoch,
            ready: pod.ready,
            answering: status.is_some(),
            redis_connected: status
                .and_then(|s| s.replication.as_ref())
                .map(|r| r.redis_connected),
            lagging,
            reseeded: status
                .and_then(|s| s.replication.as_ref())
                .and_then(|r| r.reseeded.as_ref())
                .map(|r| {
                    format!(
                        "its log parted from the primary's after record {}: records {}..{} of epoch(s) {:?} dropped (never acknowledged), the old log kept in {}",
                        r.common_seq, r.dropped_from, r.dropped_to, r.dropped_epochs, r.kept_aside
                    )
                })
                .or_else(|| prev_node.and_then(|p| p.reseeded.clone())),
            lagging_since: match (lagging, was_lagging) {
                (true, true) => prev_node.and_then(|p| p.lagging_since.clone()),
                (true, false) => Some(now.clone()),
                (false, _) => None,
            },
        });
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));

    let lagging: Vec<&str> = nodes
        .iter()
        .filter(|n| n.lagging)
        .map(|n| n.name.as_str())
        .collect();
    let secondaries = pods
        .iter()
        .filter(|p| primary != Some(p.name.as_str()))
        .count();
    let verdict = if !lagging.is_empty() {
        Verdict {
            healthy: false,
            reason: "ReplicationLagging",
            message: format!(
                "behind the primary by more than {} records or {} ms: {}",
                limits.max_lag_records,
                limits.max_lag_ms,
                lagging.join(", ")
            ),
        }
    } else if !not_following.is_empty() {
        Verdict {
            healthy: false,
            reason: "SecondaryNotFollowing",
            message: format!("not answering as a secondary: {}", not_following.join(", ")),
        }
    } else if secondaries == 0 {
        Verdict {
            healthy: true,
            reason: "NoSecondaries",
            message: "a single node: nothing to replicate to".to_string(),
        }
    } else {
        Verdict {
            healthy: true,
            reason: "InSync",
            message: format!(
                "{secondaries} secondaries follow the primary within {} records and {} ms",
                limits.max_lag_records, limits.max_lag_ms
            ),
        }
    };
    Assessment {
        nodes,
        verdict,
        started_lagging,
        stopped_lagging,
    }
}

/// Puts the assessment into the next status: `nodes`, and the condition (its
/// `lastTransitionTime` moves only when its status flips, so an unchanged verdict
/// writes nothing).
pub fn apply_to_status(
    next: &mut FlashSaleStatus,
    assessment: &Assessment,
    generation: Option<i64>,
    now: &Time,
) {
    next.nodes = assessment.nodes.clone();
    let v = &assessment.verdict;
    let value = if v.healthy { "True" } else { "False" };
    let old = next
        .conditions
        .iter()
        .position(|c| c.type_ == CONDITION_REPLICATION_HEALTHY);
    let last_transition_time = match old.map(|i| &next.conditions[i]) {
        Some(c) if c.status == value => c.last_transition_time.clone(),
        _ => now.clone(),
    };
    let condition = Condition {
        type_: CONDITION_REPLICATION_HEALTHY.to_string(),
        status: value.to_string(),
        reason: v.reason.to_string(),
        message: v.message.clone(),
        observed_generation: generation,
        last_transition_time,
    };
    match old {
        Some(i) => next.conditions[i] = condition,
        None => next.conditions.push(condition),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub namespace: String,
    pub sale: String,
    pub node: String,
}

/// The live figures the status leaves out, per node, as the last reconcile read them.
#[derive(Default)]
pub struct ReplicationMetrics {
    applied_seq: Family<NodeLabels, Gauge>,
    lag_records: Family<NodeLabels, Gauge>,
    lag_ms: Family<NodeLabels, Gauge>,
    lagging: Family<NodeLabels, Gauge>,
    /// Nodes last published per sale, so a node that went away stops being reported.
    known: Mutex<HashMap<(String, String), HashSet<String>>>,
}

impl ReplicationMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "node_applied_seq",
            "Highest WAL sequence a stock node has applied",
            self.applied_seq.clone(),
        );
        registry.register(
            "node_lag_records",
            "WAL records a secondary is behind its primary",
            self.lag_records.clone(),
        );
        registry.register(
            "node_lag_ms",
            "Age on arrival of the last batch a secondary applied, in milliseconds",
            self.lag_ms.clone(),
        );
        registry.register(
            "node_lagging",
            "1 while a secondary is behind the sale's thresholds",
            self.lagging.clone(),
        );
    }

    /// Publishes what one reconcile read; nodes of the sale not in `pods` are dropped.
    pub fn record(&self, namespace: &str, sale: &str, pods: &[PodView], assessment: &Assessment) {
        let labels = |node: &str| NodeLabels {
            namespace: namespace.to_string(),
            sale: sale.to_string(),
            node: node.to_string(),
        };
        let mut seen = HashSet::new();
        for pod in pods {
            let Some(status) = pod.node_status() else {
                continue;
            };
            let l = labels(&pod.name);
            let (records, ms) = lag_of(status);
            self.applied_seq
                .get_or_create(&l)
                .set(i64::try_from(status.applied_seq).unwrap_or(i64::MAX));
            self.lag_records
                .get_or_create(&l)
                .set(i64::try_from(records).unwrap_or(i64::MAX));
            self.lag_ms
                .get_or_create(&l)
                .set(i64::try_from(ms).unwrap_or(i64::MAX));
            let lagging = assessment
                .nodes
                .iter()
                .any(|n| n.name == pod.name && n.lagging);
            self.lagging.get_or_create(&l).set(i64::from(lagging));
            seen.insert(pod.name.clone());
        }
        let mut known = self.known.lock().expect("not poisoned");
        let before = known
            .insert((namespace.to_string(), sale.to_string()), seen.clone())
            .unwrap_or_default();
        for gone in before.difference(&seen) {
            self.remove(&labels(gone));
        }
    }

    /// The sale is gone: stop reporting its nodes.
    pub fn forget(&self, namespace: &str, sale: &str) {
        let mut known = self.known.lock().expect("not poisoned");
        for node in known
            .remove(&(namespace.to_string(), sale.to_string()))
            .unwrap_or_default()
        {
            self.remove(&NodeLabels {
                namespace: namespace.to_string(),
                sale: sale.to_string(),
                node,
            });
        }
    }

    fn remove(&self, l: &NodeLabels) {
        self.applied_seq.remove(l);
        self.lag_records.remove(l);
        self.lag_ms.remove(l);
        self.lagging.remove(l);
    }
}
