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

/// The replication mode the primary's pod was seen to run (`PodView::runs_quorum`),
/// recorded on every pass while the sale has a primary and no failover, for the pod
/// its lease was granted in only: a pod made again under the same name runs the *new*
/// template, so after a change of `spec.replication.mode` it does not say how the pod
/// it replaced acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryMode {
    pub pod: String,
    pub uid: String,
    pub quorum: bool,
}

impl PrimaryMode {
    /// What the sale's primary pod runs now, if it is seen and is the pod its lease
    /// was granted in (`leased_uid`).
    pub fn seen(
        prev: &FlashSaleStatus,
        pods: &[PodView],
        leased_uid: Option<&str>,
    ) -> Option<Self> {
        let primary = prev.primary.as_ref()?;
        let p = pods
            .iter()
            .find(|p| p.name == primary.pod && p.uid.is_some() && p.uid.as_deref() == leased_uid)?;
        Some(Self {
            pod: p.name.clone(),
            uid: p.uid.clone()?,
            quorum: p.runs_quorum,
        })
    }

    /// This record, after `earlier`: a primary keeps in its log what every pod it ran
    /// in acknowledged (a pod made again in place, same name, another uid, its lease
    /// granted again, holds what the one before acknowledged alone), so it counts on
    /// quorum only while every one of them ran it, until the primary moves (a
    /// switchover or failover) and the record starts afresh.
    pub fn after(self, earlier: Option<&PrimaryMode>) -> PrimaryMode {
        match earlier {
            Some(e) if e.pod == self.pod => PrimaryMode {
                quorum: e.quorum && self.quorum,
                ..self
            },
            _ => self,
        }
    }
}

/// Whether a failover may count on quorum mode (an unreadable tail is then held by a
/// secondary): the spec says so, and so did the primary being replaced. A node takes
/// its mode at start and the pod template rollout replaces the primary's pod last, so
/// after a change of `spec.replication.mode` the primary acknowledges as before until
/// then. Asked: the pod the old primary runs in (by uid: the failover's `fromUid`,
/// else the lease's), if still seen, and what was recorded of that primary before
/// ([`PrimaryMode`], every pod it ran in); both must say quorum. Neither known: the
/// spec. The record lives in the leader's memory: a new leader during a change of mode
/// knows only the pods it sees.
pub fn counts_on_quorum(
    spec_quorum: bool,
    prev: &FlashSaleStatus,
    leased_uid: Option<&str>,
    pods: &[PodView],
    recorded: Option<&PrimaryMode>,
) -> bool {
    let (from, uid) = match &prev.failover {
        Some(f) => (Some(f.from.as_str()), f.from_uid.as_deref()),
        None => (prev.primary.as_ref().map(|p| p.pod.as_str()), leased_uid),
    };
    let Some(from) = from else {
        return spec_quorum;
    };
    let same =
        |name: &str, pod_uid: Option<&str>| name == from && uid.is_none_or(|u| pod_uid == Some(u));
    let live = pods
        .iter()
        .find(|p| same(&p.name, p.uid.as_deref()))
        .map(|p| p.runs_quorum);
    // The record covers every pod the primary ran in under this name, whatever uid.
    let earlier = recorded.filter(|r| r.pod == from).map(|r| r.quorum);
    let ran_quorum = match (live, earlier) {
        (None, None) => spec_quorum,
        (live, earlier) => live.unwrap_or(true) && earlier.unwrap_or(true),
    };
    spec_quorum && ran_quorum
}
