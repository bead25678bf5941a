//! Failover and switchover: replace a primary that cannot sell without selling an item
//! twice or losing a sale it acknowledged (FAILOVER.md; the README, "Failover").
//!
//! ```text
//! steady ─primary failing ≥ unhealthyAfter, or a switchover asked─▶ Fencing(epoch N+1)
//!   ─old lease provably over─▶ Recovering(candidate) ─candidate holds the tail─▶
//!   Promoting ─candidate is primary at N+1, leased, labelled─▶ steady
//! ```
//!
//! - [`detect`]: is the primary failing, and why (pure).
//! - [`rank`]: the candidates, best first (pure, a sort).
//! - [`step`]: the state machine, `decide(world) -> Decision` (pure): what to do next
//!   and which status to write; every step idempotent, state kept in `status.failover`.
//! - [`keeper`]: renews each primary's selling lease (the operator's leader only) and
//!   says when renewals started failing and when the last lease it could have extended
//!   ends.
//! - [`recover`]: the I/O of a tail recovery (from the old pod, or its Job's result).
//! - [`timing`]: the lease, renewal and hand-over timings, and the check that the
//!   operator's own leader election hands over faster than a node's lease runs out.

pub mod act;
pub mod detect;
pub mod keeper;
pub mod leadership;
pub mod rank;
pub mod recover;
pub mod step;
pub mod timing;

pub use detect::primary_problem;
pub use rank::rank;
pub use step::{Action, Decision, World, decide};

use crate::crd::FlashSaleStatus;
use crate::observe::PodView;

/// Why the current primary cannot sell, from the pods alone (no lease knowledge): for
/// the Degraded condition.
pub fn primary_unavailable(primary: &str, pods: &[PodView]) -> Option<String> {
    match pods.iter().find(|p| p.name == primary) {
        None => Some(format!("primary pod {primary} does not exist")),
        Some(p) if !p.running => Some(format!("primary pod {primary} is not running")),
        Some(p) => match &p.node {
            Some(Err(e)) => Some(format!("primary node {primary}: {e}")),
            _ => None,
        },
    }
}

/// Whether a failover may count on quorum mode: the spec says so, and so does the pod
/// the primary being replaced runs in (a node takes its mode at start; after a change
/// of `spec.replication.mode` the primary's pod is replaced last, so until then it
/// still acknowledges as before, and an unreadable tail must not be taken as held by a
/// secondary). Its pod not seen: the spec.
pub fn counts_on_quorum(spec_quorum: bool, prev: &FlashSaleStatus, pods: &[PodView]) -> bool {
    let from = match &prev.failover {
        Some(f) => Some(f.from.as_str()),
        None => prev.primary.as_ref().map(|p| p.pod.as_str()),
    };
    spec_quorum
        && from
            .and_then(|name| pods.iter().find(|p| p.name == name))
            .is_none_or(|p| p.runs_quorum)
}
