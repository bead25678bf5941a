//! The selling lease (FAILOVER.md, invariant I1): a node the operator runs acknowledges
//! no write without an unexpired lease for its epoch. The lease is checked when a
//! command is decided and again after its batch is durable, before the answer: a batch
//! decided under the lease and synced after it ended is answered 503 `fenced` ("not
//! acknowledged"), though it is durable, so the new primary's tail recovery carries it
//! and the client's retry with the same key finds it there.
//!
//! Renewal without trusting another clock: the node hands out tokens
//! `<instance>:<issued_ms>` (its own clock since it started: time since boot, suspended time included — `SystemMonotonic`); the operator
//! renews with the newest token it holds, and the lease becomes
//! `max(current end, token's issue time + duration)`. A renewal that arrives late —
//! buffered while the process was frozen — therefore cannot extend the lease past
//! `r + duration`, where `r` is when the operator *received* that token; the operator's
//! fence waits until `r + duration + margin` on its own clock. A restarted process is a
//! new instance: it starts with no lease and refuses its previous life's tokens.
//!
//! `off` (a lone node started by hand) sells without one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
#[cfg(not(target_os = "linux"))]
use std::time::Instant;

use flashsale_core::admin::{LeaseMode, LeaseRenewal, LeaseStatus};

/// Milliseconds on a monotonic clock; tests move a manual one.
pub trait Monotonic: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> u64;
}

/// The machine's clock for leases, from when this was made: on Linux `CLOCK_BOOTTIME`,
/// which goes on while the machine is suspended. `CLOCK_MONOTONIC` (Rust's `Instant`)
/// stops then: a primary's machine suspended past its lease would wake up still holding
/// it by that clock, long after the operator took it as over and promoted another, and
/// sell beside the new primary. (A frozen process — SIGSTOP, a long pause — is the same
/// on both clocks.) Elsewhere, `Instant`.
#[derive(Debug)]
pub struct SystemMonotonic(Duration);

impl Default for SystemMonotonic {
    fn default() -> Self {
        Self(machine_clock())
    }
}

impl Monotonic for SystemMonotonic {
    fn now_ms(&self) -> u64 {
        // Starts at 1: 0 means "no lease".
        machine_clock().saturating_sub(self.0).as_millis() as u64 + 1
    }
}

/// Time since boot, suspended time included (`CLOCK_BOOTTIME`, through the vDSO).
#[cfg(target_os = "linux")]
fn machine_clock() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .expect("CLOCK_BOOTTIME exists on every Linux since 2.6.39");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// Time since this process first asked (`Instant`).
#[cfg(not(target_os = "linux"))]
fn machine_clock() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

/// A monotonic clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualMonotonic(AtomicU64);

impl ManualMonotonic {
    pub fn new(ms: u64) -> Self {
        Self(AtomicU64::new(ms))
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Monotonic for ManualMonotonic {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Why a renewal was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseRefusal {
    #[error(
        "token `{0}` was not issued by this run of the node (it restarted?): renew with the fresh one"
    )]
    StaleToken(String),
    #[error("token `{0}` is not `<instance>:<issued ms>`")]
    BadToken(String),
    #[error("the lease asked is for epoch {asked}, this node is at epoch {node}")]
    WrongEpoch { asked: u64, node: u64 },
    #[error("token issued at {issued_ms} ms is from the future of this node ({now_ms} ms)")]
    FutureToken { issued_ms: u64, now_ms: u64 },
    #[error("the lease is off on this node (`--lease off`)")]
    Off,
}

/// The node's lease. Shared by the HTTP layer (renewals) and the engine (checks).
#[derive(Debug)]
pub struct Lease {
    mode: LeaseMode,
    instance: u64,
    clock: Arc<dyn Monotonic>,
    /// End of the lease on `clock` (0: none).
    until_ms: AtomicU64,
    /// The epoch it was granted for.
    epoch: AtomicU64,
    /// Renewals accepted, for `/metrics`.
    pub renewals: AtomicU64,
}

impl Lease {
    pub fn new(mode: LeaseMode, clock: Arc<dyn Monotonic>) -> Self {
        Self {
            mode,
            instance: random_instance(),
            clock,
            until_ms: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
        }
    }

    /// A lone node's lease: off.
    pub fn off() -> Self {
        Self::new(LeaseMode::Off, Arc::new(SystemMonotonic::default()))
    }

    pub fn mode(&self) -> LeaseMode {
        self.mode
    }

    /// Whether this node may acknowledge a write at `epoch` now.
    pub fn holds(&self, epoch: u64) -> bool {
        match self.mode {
            LeaseMode::Off => true,
            LeaseMode::Required => {
                self.epoch.load(Ordering::SeqCst) == epoch
                    && self.clock.now_ms() < self.until_ms.load(Ordering::SeqCst)
            }
        }
    }

    /// A fresh token, issued now.
    pub fn token(&self) -> String {
        format!("{:016x}:{}", self.instance, self.clock.now_ms())
    }

    /// Extends the lease to the token's issue time + `duration_ms` (never shortens it),
    /// for `node_epoch`, the node's epoch now.
    pub fn renew(&self, node_epoch: u64, r: &LeaseRenewal) -> Result<LeaseStatus, LeaseRefusal> {
        if self.mode == LeaseMode::Off {
            return Err(LeaseRefusal::Off);
        }
        if r.epoch != node_epoch {
            return Err(LeaseRefusal::WrongEpoch {
                asked: r.epoch,
                node: node_epoch,
            });
        }
        let (instance, issued_ms) = r
            .token
            .split_once(':')
            .and_then(|(i, t)| Some((u64::from_str_radix(i, 16).ok()?, t.parse::<u64>().ok()?)))
            .ok_or_else(|| LeaseRefusal::BadToken(r.token.clone()))?;
        if instance != self.instance {
            return Err(LeaseRefusal::StaleToken(r.token.clone()));
        }
        let now_ms = self.clock.now_ms();
        if issued_ms > now_ms {
            return Err(LeaseRefusal::FutureToken { issued_ms, now_ms });
        }
        let end = issued_ms.saturating_add(r.duration_ms);
        if self.epoch.swap(r.epoch, Ordering::SeqCst) != r.epoch {
            // A lease for a new epoch starts afresh.
            self.until_ms.store(end, Ordering::SeqCst);
        } else {
            self.until_ms.fetch_max(end, Ordering::SeqCst);
        }
        self.renewals.fetch_add(1, Ordering::Relaxed);
        Ok(self.status())
    }

    /// Gives the lease up at once (a clean step-down).
    pub fn release(&self) -> LeaseStatus {
        self.until_ms.store(0, Ordering::SeqCst);
        self.status()
    }

    pub fn status(&self) -> LeaseStatus {
        LeaseStatus {
            mode: self.mode,
            token: self.token(),
            epoch: self.epoch.load(Ordering::SeqCst),
            remaining_ms: self.remaining_ms(),
        }
    }

    /// Milliseconds left (0: none, or over).
    pub fn remaining_ms(&self) -> u64 {
        self.until_ms
            .load(Ordering::SeqCst)
            .saturating_sub(self.clock.now_ms())
    }
}

/// A number that tells this run of the process from any other (a restart is a new one).
fn random_instance() -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    std::process::id().hash(&mut h);
    std::time::SystemTime::now().hash(&mut h);
    h.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn required() -> (Lease, Arc<ManualMonotonic>) {
        let clock = Arc::new(ManualMonotonic::new(1_000));
        (Lease::new(LeaseMode::Required, clock.clone()), clock)
    }

    fn renewal(token: String, epoch: u64, duration_ms: u64) -> LeaseRenewal {
        LeaseRenewal {
            epoch,
            token,
            duration_ms,
        }
    }

    #[test]
    fn a_lease_runs_from_the_token_issue_time_not_the_renewal_time() {
        let (lease, clock) = required();
        assert!(!lease.holds(1), "no lease before the first renewal");
        let token = lease.token(); // issued at 1000
        clock.advance(4_000); // the renewal arrives 4 s late (the node was frozen)
        lease.renew(1, &renewal(token, 1, 5_000)).unwrap();
        assert_eq!(
            lease.remaining_ms(),
            1_000,
            "ends at 1000 + 5000, not 5000 + 5000"
        );
        clock.advance(999);
        assert!(lease.holds(1));
        clock.advance(1);
        assert!(!lease.holds(1), "over at issue time + duration");
    }

    #[test]
    fn a_late_renewal_with_an_old_token_does_not_extend_and_none_shortens() {
        let (lease, clock) = required();
        let old = lease.token();
        clock.advance(1_000);
        let newer = lease.token();
        lease.renew(1, &renewal(newer, 1, 5_000)).unwrap();
        let end = lease.remaining_ms();
        lease.renew(1, &renewal(old, 1, 5_000)).unwrap();
        assert_eq!(
            lease.remaining_ms(),
            end,
            "an older token never moves the end"
        );
        assert!(!lease.holds(2), "a lease is for its epoch only");
    }

    #[test]
    fn a_restarted_node_refuses_its_former_tokens_and_wrong_epochs() {
        let (before, _) = required();
        let (after, _) = required();
        let e = after
            .renew(1, &renewal(before.token(), 1, 5_000))
            .unwrap_err();
        assert!(matches!(e, LeaseRefusal::StaleToken(_)), "{e}");
        let e = after
            .renew(2, &renewal(after.token(), 1, 5_000))
            .unwrap_err();
        assert_eq!(e, LeaseRefusal::WrongEpoch { asked: 1, node: 2 });
        assert!(matches!(
            after.renew(1, &renewal("x".into(), 1, 5)).unwrap_err(),
            LeaseRefusal::BadToken(_)
        ));
        assert!(!after.holds(1));
    }

    #[test]
    fn release_ends_it_at_once_and_off_always_holds() {
        let (lease, _) = required();
        lease.renew(3, &renewal(lease.token(), 3, 5_000)).unwrap();
        assert!(lease.holds(3));
        lease.release();
        assert!(!lease.holds(3));
        assert!(Lease::off().holds(7));
    }
}
