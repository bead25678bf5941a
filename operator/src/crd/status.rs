//! `FlashSale.status`: what the operator saw, written only when it changes (no
//! timestamps that move on every loop; a condition's `lastTransitionTime` moves only
//! when its status does).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition types.
pub const CONDITION_READY: &str = "Ready";
pub const CONDITION_PROGRESSING: &str = "Progressing";
pub const CONDITION_DEGRADED: &str = "Degraded";

/// The observed state of a sale.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FlashSaleStatus {
    /// One word for `kubectl get`: Pending, Running, Degraded or Invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Ready, Progressing and Degraded, each with a reason.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The node that sells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<PrimaryStatus>,
    /// Fencing epoch of the current primary (starts at 1; failover raises it).
    #[serde(default)]
    #[schemars(with = "i64")]
    pub epoch: u64,
    /// Per-item figures read from the primary's admin status.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["sku".into()]))]
    pub items: Vec<ItemStatus>,
    /// Units on sale, all items together.
    #[serde(default)]
    #[schemars(with = "i64")]
    pub stock: u64,
    /// Units in confirmed orders, all items together.
    #[serde(default)]
    #[schemars(with = "i64")]
    pub sold: u64,
    /// Units held by unconfirmed reservations, all items together.
    #[serde(default)]
    #[schemars(with = "i64")]
    pub held: u64,
    /// Units still for sale, all items together.
    #[serde(default)]
    #[schemars(with = "i64")]
    pub remaining: u64,
    /// Nodes that exist (the scale subresource reads this).
    #[serde(default)]
    pub replicas: i32,
    /// Nodes whose readiness probe passes.
    #[serde(default)]
    pub ready_replicas: i32,
    /// `ready/desired`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// Label selector of the node pods (the scale subresource and HPAs read this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Reserved for the failover work: the last promotion and what it reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<FailoverRecord>,
    /// Each node pod's part in replication: stable facts only (live lag figures are
    /// operator metrics; see `crd::replication`).
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub nodes: Vec<super::NodeReplicationStatus>,
}

/// One-word summary of a sale.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Objects created, waiting for a primary that sells.
    Pending,
    /// A primary sells and every node is ready.
    Running,
    /// Selling is impaired: no reachable primary, or a node refuses its config or role.
    Degraded,
    /// The spec cannot be run; the operator waits for a change.
    Invalid,
}

/// The node that sells.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PrimaryStatus {
    /// Pod name.
    pub pod: String,
    /// `http://<pod IP>:8080`, when the pod has an IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// One item's figures as the primary reports them (`sold + held + remaining == stock`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ItemStatus {
    pub sku: String,
    #[schemars(with = "i64")]
    pub stock: u64,
    #[schemars(with = "i64")]
    pub sold: u64,
    #[schemars(with = "i64")]
    pub held: u64,
    #[schemars(with = "i64")]
    pub remaining: u64,
}

/// Reserved for the failover work: one promotion.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverRecord {
    pub from_pod: String,
    pub to_pod: String,
    #[schemars(with = "i64")]
    pub epoch: u64,
    pub at: Time,
    /// WAL records recovered from the old primary before promotion.
    #[serde(default)]
    #[schemars(with = "i64")]
    pub reconciled_records: u64,
}
