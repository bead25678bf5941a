//! The node admin API: what the operator (and a person with the admin token) says to
//! a stock node, and what the node reports back. All routes live under `/admin/v1/`
//! and need `Authorization: Bearer <admin token>`; without it the node answers 401.
//!
//! | route                     | body            | answer        |
//! |---------------------------|-----------------|---------------|
//! | `GET  /admin/v1/status`   | —               | [`NodeStatus`] |
//! | `PUT  /admin/v1/config`   | [`crate::SaleConfig`] | [`NodeStatus`] |
//! | `PUT  /admin/v1/role`     | [`RoleAssignment`] | [`NodeStatus`] |
//! | `PUT  /admin/v1/lease`    | [`LeaseRenewal`] | [`LeaseStatus`] |
//! | `DELETE /admin/v1/lease`  | —               | [`LeaseStatus`] |
//!
//! `PUT config` configures a fresh node or changes a running sale (stock added,
//! window moved, items added); stock can never drop below what is sold and held
//! (400 naming `items[i].stock`). The change is a WAL record like every other.
//! `PUT role` with an epoch older than the node's own is refused with 409 `fenced`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use crate::role::{Role, RoleAssignment};
use crate::{ItemView, UnixMs};

/// The flags the operator starts every stock-node pod with (`stock-node serve <these>`):
/// API, admin and metrics on one port, the WAL on the pod's volume, the admin token from
/// its Secret, no role until the operator assigns one, and no write acknowledged
/// without the operator's selling lease. One list for both sides, so
/// the node's own test parses exactly what the operator sends.
pub const POD_SERVE_FLAGS: &[&str] = &[
    "--listen",
    "0.0.0.0:8080",
    "--data-dir",
    "/var/lib/flashsale/wal",
    "--role",
    "standby",
    "--lease",
    "required",
    "--admin-token-file",
    "/etc/flashsale/admin/token",
    "--log-format",
    "json",
];

/// A node's own account of itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub role: Role,
    pub epoch: u64,
    /// The sale's name, once configured.
    pub sale: Option<String>,
    /// Highest WAL sequence applied to the in-memory state.
    pub applied_seq: u64,
    /// Highest WAL sequence known durable on this node's disk.
    pub durable_seq: u64,
    pub items: Vec<ItemView>,
    /// Purchases answered per second, averaged over the last few seconds (the scaler's input).
    pub purchases_per_s: f64,
    pub now_ms: UnixMs,
    /// Replication: mode, applied sequence, lag, repairs (absent when not configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<crate::replication::ReplicationStatus>,
    /// The selling lease, with a fresh token to renew it with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseStatus>,
    /// The log's epoch history: where each epoch's records start (see
    /// [`crate::replication::common_prefix`]).
    #[serde(default)]
    pub epochs: Vec<crate::replication::EpochStart>,
    /// What the node is asked to do and how it copes (an autoscaler's, KEDA's or
    /// prometheus-adapter's input; the same figures are in `/metrics`).
    #[serde(default)]
    pub load: LoadStatus,
}

/// A node's load: what it answered, what it refused for load, its engine queue and its
/// CPU. Counts are since the process started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadStatus {
    /// Requests answered per second on the public API (`/v1/*`), over the last few
    /// seconds.
    pub requests_per_s: f64,
    /// Answers by kind of request: `purchase`, `confirm`, `cancel`, `read` (items and
    /// orders), `forward` (a batch from a secondary, on the primary), `admin`, `ops` (probes, metrics, the OpenAPI document), `other`.
    pub answered: std::collections::BTreeMap<String, u64>,
    /// Requests refused for load: `rate` (429, over the admission rate), `busy` (503,
    /// the engine's queue full) and `memory` (503, a purchase past the memory budget).
    pub refused_for_load: std::collections::BTreeMap<String, u64>,
    /// Purchases, confirms and cancels holding a place in the engine's queue now.
    pub engine_inflight: u64,
    /// The most that may (`--engine-inflight-max`); past it, 503 at once.
    pub engine_inflight_max: u64,
    /// CPU seconds this process has used (user + system).
    pub process_cpu_seconds: f64,
    /// Purchases, confirms and cancels this node (a secondary) forwarded to its primary.
    #[serde(default)]
    pub forwarded: u64,
    /// The batches they went in (`forwarded / forwardBatches` is the mean batch size).
    #[serde(default)]
    pub forward_batches: u64,
    /// Forwarded operations answered 503 here: the queue full, no answer in time, or
    /// the primary unreachable (a failover).
    #[serde(default)]
    pub forward_failed: u64,
}

/// `PUT /admin/v1/lease`: the operator renews the primary's selling lease.
///
/// The node issues tokens (`GET /admin/v1/status`, and every renewal's answer); a
/// renewal carries the newest token the operator holds, and extends the lease to *that
/// token's issue time* plus `durationMs`, on the node's own monotonic clock, never past
/// what it already granted less. So a renewal that arrives late — buffered while the
/// node was frozen — cannot extend the lease beyond `r + durationMs`, where `r` is when
/// the operator received the token: the operator's fence needs no other node's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseRenewal {
    /// The epoch the lease is for: the node's own (else 409 `fenced`).
    pub epoch: u64,
    /// A token this node issued (`instance:issuedMs`); one from an earlier run of the
    /// node (it restarted) is refused with a fresh token in the answer.
    pub token: String,
    /// How long the lease lasts from the token's issue time.
    pub duration_ms: u64,
}

/// The lease as the node holds it (answer of `PUT /admin/v1/lease`, and in `NodeStatus`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaseStatus {
    /// `off` for a lone node (it sells without a lease), `required` under the operator.
    pub mode: LeaseMode,
    /// A fresh token, issued now: the next renewal carries it.
    pub token: String,
    /// The epoch the current lease was granted for (0: none yet).
    pub epoch: u64,
    /// Milliseconds of lease left (0: none, or it ended).
    pub remaining_ms: u64,
}

/// Whether a node needs a lease to sell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum LeaseMode {
    /// Sells without one (a lone node).
    #[default]
    Off,
    /// Acknowledges nothing without an unexpired lease for its epoch (pods the operator runs).
    Required,
}
