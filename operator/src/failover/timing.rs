//! The timings of the selling lease and the fence, and the one rule between them and the
//! operator's own leader election (README, "Failover: timings"):
//!
//! - the leading operator renews each primary's lease every `D / 8` (`D` =
//!   `spec.failover.leaseDuration`); a renewal extends the lease to *the issue time of
//!   the token it carries* + `D`, and the token is one renewal old, so right after a
//!   renewal at least `D - D/8` is left, and `D - 2·D/8` just before the next one;
//! - if the leading operator dies, another takes over after at most
//!   `L + 1 s + 1 s` (`L` = its leader Lease duration: the dead leader may have renewed
//!   just before dying; kube-lease-manager then waits up to a second before taking the
//!   Lease; the new leader's caches and first renewal take about another);
//! - so selling never pauses for an operator hand-over when `L + 2 s < D - 2·D/8`. The
//!   operator checks this at start-up against the CRD's shortest `leaseDuration` and
//!   refuses to start otherwise.
//!
//! The fence: once renewals stop, the old lease is over at the latest at
//! `r + D + margin`, where `r` is when the operator received the newest token it sent
//! (its own monotonic clock; the margin covers clock-rate drift and transit).

use std::time::Duration;

/// Renewals per lease duration.
pub const RENEWALS_PER_LEASE: u32 = 8;
/// Added to every fence deadline.
pub const FENCE_MARGIN: Duration = Duration::from_millis(500);
/// The CRD's shortest `spec.failover.leaseDuration` (its CEL rule says 6s).
pub const LEASE_MIN: Duration = Duration::from_secs(6);
/// kube-lease-manager's longest wait before a standby takes an expired Lease.
pub const TAKEOVER_WAIT: Duration = Duration::from_secs(1);
/// A new leader's caches and its first renewal.
pub const LEADER_START: Duration = Duration::from_secs(1);

/// How often a lease of duration `lease` is renewed.
pub fn renew_every(lease: Duration) -> Duration {
    lease / RENEWALS_PER_LEASE
}

/// The longest a primary can go without a renewal while operators hand over.
pub fn handover_max(leader_lease: Duration) -> Duration {
    leader_lease + TAKEOVER_WAIT + LEADER_START
}

/// The least lease left when a renewal is due (the one before carried a token a
/// renewal old).
pub fn lease_left_at_worst(lease: Duration) -> Duration {
    lease.saturating_sub(renew_every(lease) * 2)
}

/// Whether a leader Lease of `leader_lease` hands over before any node lease of at
/// least `lease_min` can run out; the error says why not, with the figures.
pub fn check_handover(leader_lease: Duration, lease_min: Duration) -> Result<(), String> {
    let handover = handover_max(leader_lease);
    let left = lease_left_at_worst(lease_min);
    if handover < left {
        Ok(())
    } else {
        Err(format!(
            "the operator's leader Lease of {leader_lease:?} hands over in up to {handover:?}, \
             but a node lease of {lease_min:?} can have only {left:?} left: a leader crash would \
             stop every sale; use a leader Lease under {:?}",
            left.saturating_sub(TAKEOVER_WAIT + LEADER_START)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_leader_lease_hands_over_within_the_shortest_node_lease() {
        check_handover(Duration::from_secs(2), LEASE_MIN).unwrap();
        assert!(handover_max(Duration::from_secs(2)) < lease_left_at_worst(LEASE_MIN));
    }

    #[test]
    fn a_leader_lease_too_long_for_the_node_lease_is_refused_with_the_figures() {
        let e = check_handover(Duration::from_secs(15), LEASE_MIN).unwrap_err();
        assert!(e.contains("15s") && e.contains("4.5s"), "{e}");
        assert_eq!(renew_every(Duration::from_secs(8)), Duration::from_secs(1));
    }
}
