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
/// The primary passes its checks (its `lastTransitionTime` to False is when it started failing).
pub const CONDITION_PRIMARY_AVAILABLE: &str = "PrimaryAvailable";

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
    /// The longest selling lease (ms) an operator leader may have granted this sale's
    /// primary: `spec.failover.leaseDuration`, or the longer one it was until every
    /// lease that long is over (a lengthened duration is recorded here before it is
    /// granted). A new operator leader fences with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>")]
    pub lease_duration_ms: Option<u64>,
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
    /// A failover or switchover under way: its state machine (a new leader resumes it
    /// from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverState>,
    /// The last completed failover or switchover, with its times and what it recovered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<FailoverRecord>,
    /// Each node pod's part in replication: stable facts only (live lag figures are
    /// operator metrics; see `crd::replication`).
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub nodes: Vec<super::NodeReplicationStatus>,
    /// The operator's autoscaler (absent while `spec.autoscaling.enabled` is false):
    /// stable facts only; the live demand is an operator metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerStatus>,
}

/// What the autoscaler is doing and the last change it made.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerStatus {
    /// `Stable`, `Panic` (demand past the panic threshold or the primary refusing for
    /// load: no scale-down), `PreScale` (before the window opens), `Ended` (after it:
    /// back to the minimum), `Blind` (too few nodes answered: holding), `External` (an
    /// HPA targets the sale: the operator stands down), `Holding` (a failover runs).
    pub mode: String,
    /// The node count the autoscaler wants now.
    #[serde(default)]
    pub desired_replicas: i32,
    /// When it last changed `spec.nodes.replicas`, and why (the numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
    /// Why a scale-down the load asks for is held back now (as an HPA's
    /// `ScaleDownStabilized`): `panic`, `pre-scale`, `a new leader's first window`,
    /// `the window after a failover`, `stabilisation window`, `a failing primary` or
    /// `floor`. Absent when none is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_held_by: Option<String>,
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
    /// The primary failed; a secondary is being made primary.
    FailingOver,
    /// A switchover (asked for, or before a scale-down) is moving the primary.
    SwitchingOver,
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

/// Why a failover runs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailoverKind {
    /// The primary failed.
    Failover,
    /// A person (or a scale-down) asked for another primary.
    Switchover,
}

/// Where a failover stands (`status.failover.step`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailoverStep {
    /// The new epoch is written; the old primary's lease must provably be over.
    Fencing,
    /// The candidate is chosen; the old primary's WAL tail goes into it.
    Recovering,
    /// The candidate holds the whole tail and is made primary.
    Promoting,
}

/// A failover under way (`status.failover`). Every step is idempotent, and each
/// transition is written with the sale's resourceVersion as a precondition, so a new
/// operator leader resumes it and two leaders can never both take an epoch.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverState {
    pub kind: FailoverKind,
    /// The primary being replaced.
    pub from: String,
    /// The `metadata.uid` of the pod its lease was granted in (the lease keeper's record
    /// as the failover began, or the attempt that replaces a candidate lost while being
    /// promoted; none when this operator never granted it). Only that pod's kubelet can
    /// say its process is gone: a pod of the same name made since is another pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_uid: Option<String>,
    /// The epoch the new primary takes (already in `status.epoch`).
    #[schemars(with = "i64")]
    pub epoch: u64,
    pub step: FailoverStep,
    /// Why it started.
    pub reason: String,
    /// When the primary started failing (or the switchover was asked for).
    #[serde(with = "super::millis")]
    #[schemars(with = "Time")]
    pub detected_at: Time,
    /// When the new epoch was written.
    #[serde(with = "super::millis")]
    #[schemars(with = "Time")]
    pub fence_started_at: Time,
    /// The old lease is over by then at the latest (the operator's clock, with margin).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::millis::opt"
    )]
    #[schemars(with = "Option<Time>")]
    pub fence_until: Option<Time>,
    /// Whether the old primary could still hold a lease for its epoch (false for a
    /// candidate that was never granted one).
    #[serde(default = "yes")]
    pub from_leased: bool,
    /// How the old lease was proven over: `stepped down`, `process gone`, `lease expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::millis::opt"
    )]
    #[schemars(with = "Option<Time>")]
    pub fenced_at: Option<Time>,
    /// The old primary's last durable record, when it answered its step-down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>")]
    pub from_durable_seq: Option<u64>,
    /// The node being made primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    /// Why it was chosen: the ranking of the eligible nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranking: Option<String>,
    /// The candidate's last record before the tail was recovered into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>")]
    pub candidate_start_seq: Option<u64>,
    /// Where the tail came from: the old pod, or a recovery Job on its volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_source: Option<String>,
    /// The last record of the recovered tail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>")]
    pub tail_end: Option<u64>,
    /// When the candidate held the whole tail (the promotion began).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::millis::opt"
    )]
    #[schemars(with = "Option<Time>")]
    pub recovered_at: Option<Time>,
    /// The sale's other node pods when it began. The StatefulSet keeps each of them
    /// until the failover ends (a scale-down waits, and a pod it had begun to remove
    /// comes back on its volume), and in quorum mode each must report before a
    /// promotion without the old primary's tail: an acknowledged sale may be on one of
    /// them alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// What each of `nodes` held of the old primary's epoch when it began (the records
    /// quorum acks are for): its durable sequence if its log then ended with a record
    /// of that epoch, 0 if with an older one; 1 for a node that did not answer then
    /// but was a secondary at that epoch the last time it answered (it may hold some);
    /// a pod never seen answering as one is not listed. In quorum mode, when the old
    /// primary's tail cannot be read, a node that later reports less — back on a new
    /// volume — lost records it may have acknowledged, and counts as silent.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(with = "std::collections::BTreeMap<String, i64>")]
    pub nodes_durable_seq: std::collections::BTreeMap<String, u64>,
    /// Why it cannot go on right now (`NoCandidate: …`, `TailUnavailable: …`,
    /// `QuorumUnsafe: …`, `CandidateLost: …`, `RecoveryJobDeleting: …`, `TailShort: …`); retried on
    /// every pass, and cleared once it no longer holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
}

fn yes() -> bool {
    true
}

/// One completed failover or switchover (`status.lastFailover`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverRecord {
    pub kind: FailoverKind,
    pub from_pod: String,
    pub to_pod: String,
    #[schemars(with = "i64")]
    pub epoch: u64,
    pub reason: String,
    #[serde(with = "super::millis")]
    #[schemars(with = "Time")]
    pub detected_at: Time,
    /// When the old lease was proven over, and how.
    #[serde(with = "super::millis")]
    #[schemars(with = "Time")]
    pub fenced_at: Time,
    pub fenced: String,
    /// When the failover began (the new epoch was written) and when the candidate held
    /// the whole tail: with the times around them, how long each step took.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::millis::opt"
    )]
    #[schemars(with = "Option<Time>")]
    pub fence_started_at: Option<Time>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::millis::opt"
    )]
    #[schemars(with = "Option<Time>")]
    pub recovered_at: Option<Time>,
    #[serde(with = "super::millis")]
    #[schemars(with = "Time")]
    pub promoted_at: Time,
    /// Detection to promotion, in milliseconds (the sale's outage, less the clients'
    /// retry delay).
    #[schemars(with = "i64")]
    pub outage_ms: u64,
    /// WAL records of the old primary recovered into the new one before it sold.
    #[serde(default)]
    #[schemars(with = "i64")]
    pub reconciled_records: u64,
    /// From where: `pod <name>`, `Job <name> (PVC <claim>)`, or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciled_from: Option<String>,
    /// The old primary came back as a secondary of the new one.
    #[serde(default)]
    pub old_primary_rejoined: bool,
}
