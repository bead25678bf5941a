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

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Renewals per lease duration.
pub const RENEWALS_PER_LEASE: u32 = 8;
/// Added to every fence deadline.
pub const FENCE_MARGIN: Duration = Duration::from_millis(500);
/// The CRD's shortest `spec.failover.leaseDuration` (its CEL rule says 6s).
pub const LEASE_MIN: Duration = Duration::from_secs(6);
/// The CRD's longest `spec.failover.leaseDuration` (its CEL rule says 10m).
pub const LEASE_MAX: Duration = Duration::from_secs(600);
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

/// The lease durations of a pass, given the spec's `leaseDuration` and the longest one
/// the status says a leader may have granted (`status.leaseDurationMs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseDurations {
    /// What the keeper grants with this pass: never longer than the status records,
    /// so a lease longer than any recorded one is granted only once the status that
    /// records it is written (a leader that dies between the two leaves its successor
    /// knowing the longer lease).
    pub grant: Duration,
    /// The longest lease any leader may have granted: what a fence waits for when it
    /// cannot know better (a new leader), at least the spec's.
    pub longest: Duration,
    /// What this pass writes as `status.leaseDurationMs`.
    pub record: Duration,
}

/// What a pass grants, fences with and records (see [`LeaseDurations`]). A lengthened
/// spec is recorded in this pass and granted from the next; a shortened one is granted
/// at once, and recorded once no longer lease can be left: every earlier leader's over
/// (`leader_since` + the recorded duration + the margin has passed) and every one this
/// leader's keeper granted (`keeper.lease_end`, the end of the longest, if any) ending
/// within the new duration, and the keeper renewing with it (`keeper.duration`: it
/// takes a new duration when the lease is held anew, `crate::roles`). Not while a
/// failover runs (`settled` false): its fence may still need the longer figure. Without
/// a record (a sale from before the field) the spec is taken, as before it. A record
/// outside the CRD's bounds (edited by hand) is read as the nearest bound.
pub fn lease_durations(
    spec: Duration,
    recorded: Option<Duration>,
    settled: bool,
    now: &Time,
    leader_since: &Time,
    keeper: &super::keeper::LeaseView,
) -> LeaseDurations {
    let Some(recorded) = recorded.map(|r| r.clamp(LEASE_MIN, LEASE_MAX)) else {
        return LeaseDurations {
            grant: spec,
            longest: spec,
            record: spec,
        };
    };
    let others_over = now.0 >= leader_since.0 + recorded + FENCE_MARGIN;
    let mine_short = keeper
        .lease_end
        .as_ref()
        .is_none_or(|end| end.0 <= now.0 + spec + FENCE_MARGIN)
        && keeper.duration.is_none_or(|d| d <= spec);
    let record = if spec >= recorded || (settled && others_over && mine_short) {
        spec
    } else {
        recorded
    };
    LeaseDurations {
        grant: spec.min(recorded),
        longest: spec.max(recorded),
        record,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_longer_lease_is_recorded_before_it_is_granted_and_a_shorter_one_after_the_longer_ended() {
        let s = Duration::from_secs;
        let at = |secs: i64| Time(jiff::Timestamp::from_second(1_000_000 + secs).unwrap());
        let t0 = &at(0);
        // The keeper renewing with `secs`, its longest grant ending at `end`.
        let keeper = |secs: u64, end: i64| super::super::keeper::LeaseView {
            duration: Some(s(secs)),
            lease_end: Some(at(end)),
            ..Default::default()
        };
        let none = super::super::keeper::LeaseView::default();
        // Lengthened 6 s → 60 s: recorded in this pass, granted from the next.
        let d = lease_durations(s(60), Some(s(6)), true, t0, &at(-3600), &none);
        assert_eq!((d.grant, d.longest, d.record), (s(6), s(60), s(60)));
        let d = lease_durations(s(60), Some(s(60)), true, t0, &at(-3600), &none);
        assert_eq!((d.grant, d.longest, d.record), (s(60), s(60), s(60)));
        // Shortened 60 s → 6 s: granted at once, the fence still waits 60 s, and the
        // record stays while a 60 s lease this leader granted may run ...
        let d = lease_durations(s(6), Some(s(60)), true, t0, &at(-3600), &keeper(6, 50));
        assert_eq!((d.grant, d.longest, d.record), (s(6), s(60), s(60)));
        // ... or the keeper still renews with 60 s (not held anew yet) ...
        let d = lease_durations(s(6), Some(s(60)), true, t0, &at(-3600), &keeper(60, 5));
        assert_eq!(d.record, s(60));
        // ... or one an earlier leader granted (this one leads for 10 s only) ...
        let d = lease_durations(s(6), Some(s(60)), true, t0, &at(-10), &keeper(6, 5));
        assert_eq!(d.record, s(60));
        // ... or a failover runs.
        let d = lease_durations(s(6), Some(s(60)), false, t0, &at(-3600), &keeper(6, 5));
        assert_eq!(d.record, s(60));
        // Every longer lease over: the shorter one is recorded.
        let d = lease_durations(s(6), Some(s(60)), true, t0, &at(-3600), &keeper(6, 5));
        assert_eq!((d.grant, d.longest, d.record), (s(6), s(60), s(6)));
        // A sale from before the record: the spec, as before.
        let d = lease_durations(s(6), None, true, t0, t0, &none);
        assert_eq!((d.grant, d.longest, d.record), (s(6), s(6), s(6)));
        // A record edited out of bounds reads as the nearest bound.
        let d = lease_durations(s(6), Some(Duration::MAX), true, t0, t0, &none);
        assert_eq!(d.longest, LEASE_MAX);
        let d = lease_durations(s(60), Some(Duration::ZERO), true, t0, t0, &none);
        assert_eq!(d.grant, LEASE_MIN);
    }

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
