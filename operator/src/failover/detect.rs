//! Detection: whether the primary is failing, and why. Pure.
//!
//! A primary fails its checks when its pod is missing, not running or being deleted,
//! when its node does not answer, answers as something other than the primary of the
//! sale's epoch, or when its lease renewals fail. It is replaced once it has failed
//! them for `spec.failover.unhealthyAfter` without a break; a primary that comes back
//! before (a crash the pod restarts, its WAL intact) is only given its lease again.

use flashsale_core::admin::Role;

use super::keeper::LeaseView;
use crate::observe::PodView;

/// Why `primary` (at `epoch`) cannot sell, if it cannot.
pub fn primary_problem(
    primary: &str,
    epoch: u64,
    pods: &[PodView],
    lease: &LeaseView,
) -> Option<String> {
    let Some(p) = pods.iter().find(|p| p.name == primary) else {
        return Some(format!("primary pod {primary} does not exist"));
    };
    if !p.running {
        return Some(format!("primary pod {primary} is not running"));
    }
    match &p.node {
        None => return Some(format!("primary node {primary} was not asked (no address)")),
        Some(Err(e)) => return Some(format!("primary node {primary} does not answer: {e}")),
        Some(Ok(s)) if s.role != Role::Primary || s.epoch != epoch => {
            return Some(format!(
                "primary node {primary} says it is {}@{}, not primary@{epoch}",
                s.role.as_str(),
                s.epoch
            ));
        }
        Some(Ok(_)) => {}
    }
    let ours = lease.pod.as_deref() == Some(primary) && lease.epoch == epoch;
    match (&lease.failing, ours) {
        (Some(why), true) => Some(format!("lease renewals fail: {why}")),
        _ => None,
    }
}
