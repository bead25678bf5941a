//! Leading only while the leader Lease says so. The keeper renews the nodes' selling
//! leases over HTTP, without the API server; a leader cut off from the API server would
//! renew them for ever while another replica, once the leader Lease has run out, takes
//! over and fails the primary over — two primaries with a live lease. The Lease manager
//! (`kube-lease-manager`) keeps saying "leader" while its renewals fail (it logs them and
//! retries), so this watches the Lease itself: the last `renewTime` this replica wrote,
//! plus the Lease's duration, is when another may take over, and [`Leading`] turns off
//! there (the keeper then sends nothing: `Keeper::renew`) unless a later renewal shows.
//! The new leader fences a primary no sooner than a selling lease after it took over
//! (`failover::step`, `leader_since`), so a renewal sent before then ends in time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::LeaseSpec;

/// Whether this replica may act as the leader: renew the nodes' selling leases. Always
/// on without leader election.
#[derive(Clone, Debug)]
pub struct Leading(Arc<AtomicBool>);

impl Default for Leading {
    fn default() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
}

impl Leading {
    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// For good: a replica that stopped leading stops (and re-contends when restarted).
    pub fn turn_off(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Until when the leader Lease, as read, is this replica's: its `renewTime` plus its
/// duration (both written by this replica, on its own clock). `Err` when another holds
/// it; `Ok(None)` when it says nothing to go by (the last known end stands).
pub fn held_until(spec: &LeaseSpec, identity: &str) -> Result<Option<SystemTime>, String> {
    match spec.holder_identity.as_deref() {
        Some(h) if h == identity => {}
        Some(other) => return Err(format!("{other} holds the leader Lease")),
        None => return Err("nobody holds the leader Lease".into()),
    }
    let (Some(renewed), Some(secs)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return Ok(None);
    };
    let renewed = SystemTime::from(renewed.0);
    Ok(Some(renewed + Duration::from_secs(secs.max(0) as u64)))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    use super::*;

    fn spec(holder: Option<&str>, renewed_s: Option<i64>, duration_s: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            renew_time: renewed_s
                .map(|s| MicroTime(jiff::Timestamp::from_second(1_800_000_000 + s).unwrap())),
            lease_duration_seconds: duration_s,
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn the_lease_is_ours_until_its_last_renewal_plus_its_duration() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            held_until(&spec(Some("op-a"), Some(10), Some(2)), "op-a"),
            Ok(Some(t0 + Duration::from_secs(12)))
        );
        // Nothing to go by: the last known end stands.
        assert_eq!(
            held_until(&spec(Some("op-a"), None, Some(2)), "op-a"),
            Ok(None)
        );
        // Another's, or nobody's: this replica leads no more.
        assert!(
            held_until(&spec(Some("op-b"), Some(10), Some(2)), "op-a")
                .unwrap_err()
                .contains("op-b holds")
        );
        assert!(held_until(&spec(None, Some(10), Some(2)), "op-a").is_err());
    }

    #[test]
    fn leading_turned_off_stays_off_for_every_clone() {
        let leading = Leading::default();
        let keeper_copy = leading.clone();
        assert!(keeper_copy.is_on());
        leading.turn_off();
        assert!(!keeper_copy.is_on());
    }
}
