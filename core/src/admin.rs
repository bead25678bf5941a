//! The node admin API: what the operator (and a person with the admin token) says to
//! a stock node, and what the node reports back. All routes live under `/admin/v1/`
//! and need `Authorization: Bearer <admin token>`; without it the node answers 401.
//!
//! | route                     | body            | answer        |
//! |---------------------------|-----------------|---------------|
//! | `GET  /admin/v1/status`   | —               | [`NodeStatus`] |
//! | `PUT  /admin/v1/config`   | [`crate::SaleConfig`] | [`NodeStatus`] |
//! | `PUT  /admin/v1/role`     | [`RoleAssignment`] | [`NodeStatus`] |
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
/// its Secret, and no role until the operator assigns one. One list for both sides, so
/// the node's own test parses exactly what the operator sends.
pub const POD_SERVE_FLAGS: &[&str] = &[
    "--listen",
    "0.0.0.0:8080",
    "--data-dir",
    "/var/lib/flashsale/wal",
    "--role",
    "standby",
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
}
