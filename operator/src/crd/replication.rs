//! `FlashSale.status.nodes[]` and the `ReplicationHealthy` condition: how each node
//! stands in replication, as *stable facts* only.
//!
//! Why no figures here: a node's applied sequence and lag move with every purchase, so a
//! status that carried them would change on every loop, and each status write wakes the
//! controller again — a reconcile storm. Like CloudNativePG (lag in `kubectl cnpg status`,
//! not in a moving status field), the live figures are operator metrics
//! (`flashsale_operator_node_applied_seq`, `…_node_lag_records`, `…_node_lag_ms`, labels
//! `namespace`, `sale`, `node`) and each node's own `GET /admin/v1/status`; the status
//! says what a person acts on: who is who, who answers, and who is behind the
//! thresholds (`spec.replication.maxLagRecords` / `maxLagMs`, with hysteresis and a
//! minimum hold so a node at the edge does not flap).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition type: every secondary follows the primary within the spec's thresholds.
pub const CONDITION_REPLICATION_HEALTHY: &str = "ReplicationHealthy";

/// One node pod as replication sees it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeReplicationStatus {
    /// Pod name.
    pub name: String,
    /// What the node says it is; with `answering` false, what it said the last time it
    /// answered (absent: never seen answering).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<NodeRole>,
    /// The epoch the node was at when it said `role` (kept with it while it is silent):
    /// a failover records a silent node as a possible holder of acknowledged sales only
    /// if it was a secondary at the epoch that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>")]
    pub role_epoch: Option<u64>,
    /// The pod's readiness probe passes (a secondary is ready once first caught up).
    #[serde(default)]
    pub ready: bool,
    /// The node answered its admin status this time.
    #[serde(default)]
    pub answering: bool,
    /// The node's Redis connection is up (absent: not known). Without it a secondary
    /// still converges, by polling the primary's WAL, only more slowly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_connected: Option<bool>,
    /// A secondary behind the primary by more than `maxLagRecords` or `maxLagMs`; it
    /// counts as caught up again below half of both.
    #[serde(default)]
    pub lagging: bool,
    /// When this secondary started lagging (absent while it is not). A lagging verdict
    /// holds at least `replication::LAGGING_HOLD_MS`, so a node at the edge flips at most
    /// twice a hold, whatever the thresholds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lagging_since: Option<Time>,
    /// The last time this node's log was found to have parted from its primary's and
    /// was started again: which records it dropped (never acknowledged) and where the
    /// old log is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reseeded: Option<String>,
}

/// A node's role, as the node reports it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum NodeRole {
    Primary,
    Secondary,
    Standby,
}
