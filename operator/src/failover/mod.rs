//! Failover — NOT IMPLEMENTED YET (its own issue). This module is the seam.
//!
//! Today, when the primary pod is gone or its node stops answering, the reconcile does
//! not promote anyone: it keeps `status.primary`, sets `Degraded=True` with reason
//! `PrimaryUnavailable`, emits a Warning Event, and re-asserts the same pod as primary
//! (same epoch) when it comes back with its WAL volume. No acknowledged sale is lost by
//! waiting; selling stops until the pod returns.
//!
//! What belongs here (DESIGN.md, Failover): detect (health checks, pod and node state,
//! `spec.failover.unhealthyAfter`), fence (raise `status.epoch`, wait out
//! `spec.failover.leaseDuration`, take the primary label away), rank secondaries by
//! (healthy, durable sequence, applied sequence, name), reconcile the old primary's WAL
//! tail (through the old pod, or a recovery Job that mounts its PVC and runs
//! `stock-node wal export`), promote, and record it in `status.lastFailover`.
//! `roles::plan` already never lowers an epoch and follows `status.primary`, so a
//! promotion only has to change those two.

use crate::observe::PodView;

/// Why the current primary cannot sell, if it cannot: the input a failover would act on.
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
