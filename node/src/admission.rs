//! Admission control: what the node lets in before any work is done — a token bucket
//! on the rate of `/v1` requests, a bound on requests waiting for the engine, and a
//! memory budget for new purchases (open connections are bounded by `http::server`).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Why a request was not let in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("over the admission rate of {rate_per_s} requests/s; retry in {retry_after_s} s")]
    Rate { rate_per_s: u32, retry_after_s: u64 },
    #[error("{inflight_max} requests already wait for the engine; try again shortly")]
    Busy { inflight_max: usize },
    #[error(
        "the node holds {} MiB of its {} MiB memory budget (--memory-max-bytes): it takes no new purchases; confirms, cancels, reads and retries of purchases it has go on. Give its pod more memory and restart it",
        resident_bytes >> 20,
        max_bytes >> 20
    )]
    Memory { resident_bytes: u64, max_bytes: u64 },
}

/// Limits of one node, shared by every request.
pub struct Admission {
    bucket: Option<(DefaultDirectRateLimiter, u32)>,
    /// Places taken in the engine's queue ([`Place`]). A count, not a semaphore: no
    /// one waits for a place, and a semaphore's release takes a lock (~350
    /// instructions of a purchase's ~40 000, `make bench-instructions`).
    inflight: AtomicUsize,
    inflight_max: usize,
    /// Requests refused over the admission rate (429), since start.
    refused_rate: AtomicU64,
    /// Requests refused for a full engine queue (503), since start.
    refused_busy: AtomicU64,
    /// The memory budget for new purchases, if any ([`Self::check_memory`]).
    memory_max_bytes: Option<u64>,
    /// The process's resident memory as last sampled ([`Self::sample_memory`]).
    resident_bytes: AtomicU64,
    /// Purchases refused over the memory budget (503), since start.
    refused_memory: AtomicU64,
}

/// The admission's load figures at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdmissionLoad {
    pub inflight: u64,
    pub inflight_max: u64,
    pub refused_rate: u64,
    pub refused_busy: u64,
    pub refused_memory: u64,
}

impl Admission {
    /// `rate_per_s == 0` admits everything; `burst == 0` means one second's worth.
    pub fn new(rate_per_s: u32, burst: u32, inflight_max: usize) -> Admission {
        let bucket = NonZeroU32::new(rate_per_s).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            (
                RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
                rate.get(),
            )
        });
        let inflight_max = inflight_max.max(1);
        Admission {
            bucket,
            inflight: AtomicUsize::new(0),
            inflight_max,
            refused_rate: AtomicU64::new(0),
            refused_busy: AtomicU64::new(0),
            memory_max_bytes: None,
            resident_bytes: AtomicU64::new(0),
            refused_memory: AtomicU64::new(0),
        }
    }

    /// With a memory budget for new purchases (`None` or 0: none). Sample the process's
    /// memory ([`Self::sample_memory`]) every [`MEMORY_SAMPLE_MS`] while it serves.
    pub fn with_memory_max(mut self, max_bytes: Option<u64>) -> Admission {
        self.memory_max_bytes = max_bytes.filter(|&m| m > 0);
        self.sample_memory();
        self
    }

    /// Reads the process's resident memory (what the pod's memory limit counts).
    pub fn sample_memory(&self) {
        if self.memory_max_bytes.is_some()
            && let Some(bytes) = resident_bytes()
        {
            self.resident_bytes.store(bytes, Ordering::Relaxed);
        }
    }

    /// Whether a new purchase may take memory: no, once the process's resident memory
    /// has reached the budget. Every order is kept for the sale's life (its key answers
    /// retries), so a crowd that buys and cancels in a loop grows the node without
    /// bound; past the pod's limit the kernel kills it, and it would be killed again as
    /// it loads the same orders on restart. Refusing new purchases instead keeps every
    /// order it holds confirmable, cancellable and readable, as Redis refuses writes
    /// past its `maxmemory` (`noeviction`). Checked where a purchase enters the engine;
    /// `is_retry` (asked only past the budget) says whether it is a retry of an order
    /// the node has, which takes no memory and gets its order.
    pub fn check_memory(&self, is_retry: impl FnOnce() -> bool) -> Result<(), Refusal> {
        let Some(max_bytes) = self.memory_max_bytes else {
            return Ok(());
        };
        let resident_bytes = self.resident_bytes.load(Ordering::Relaxed);
        if resident_bytes < max_bytes || is_retry() {
            return Ok(());
        }
        self.refused_memory.fetch_add(1, Ordering::Relaxed);
        Err(Refusal::Memory {
            resident_bytes,
            max_bytes,
        })
    }

    /// Takes one token, or says how long until one is there.
    pub fn check_rate(&self) -> Result<(), Refusal> {
        let Some((bucket, rate_per_s)) = &self.bucket else {
            return Ok(());
        };
        bucket.check().map_err(|not_until| {
            self.refused_rate.fetch_add(1, Ordering::Relaxed);
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Refusal::Rate {
                rate_per_s: *rate_per_s,
                retry_after_s: retry_after_s(wait),
            }
        })
    }

    /// A place in the engine's queue, held until the answer; none left → refuse at once
    /// rather than let waiters pile up without bound.
    pub fn enter_engine(&self) -> Result<Place<'_>, Refusal> {
        self.inflight
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |n| {
                (n < self.inflight_max).then_some(n + 1)
            })
            .map(|_| Place(&self.inflight))
            .map_err(|_| {
                self.refused_busy.fetch_add(1, Ordering::Relaxed);
                Refusal::Busy {
                    inflight_max: self.inflight_max,
                }
            })
    }

    /// Places taken in the engine's queue now, the limit, and the refusals so far.
    pub fn load(&self) -> AdmissionLoad {
        AdmissionLoad {
            inflight: self.inflight.load(Ordering::Relaxed) as u64,
            inflight_max: self.inflight_max as u64,
            refused_rate: self.refused_rate.load(Ordering::Relaxed),
            refused_busy: self.refused_busy.load(Ordering::Relaxed),
            refused_memory: self.refused_memory.load(Ordering::Relaxed),
        }
    }
}

/// A place in the engine's queue ([`Admission::enter_engine`]), given back when dropped.
#[derive(Debug)]
#[must_use = "the place is given back when dropped"]
pub struct Place<'a>(&'a AtomicUsize);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

/// How often the process's memory is sampled against the budget. At the fastest this
/// node takes purchases (~50 000/s, a few hundred bytes each) that is a few MiB between
/// samples: within the room [`default_memory_max`] leaves under the limit.
pub const MEMORY_SAMPLE_MS: u64 = 100;

/// The process's resident memory (`VmRSS` of `/proc/self/status`), if it can be read.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// The budget when none is given: 90% of the memory limit of the process's cgroup
/// (v2 `memory.max`, or v1 `memory.limit_in_bytes`), the pod's memory limit in a
/// container; none without a limit. The 10% left is for what is not orders: the
/// allocator's slack, a snapshot being written, connections' buffers.
pub fn default_memory_max() -> Option<u64> {
    let limit = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())?;
    cgroup_budget(&limit)
}

/// 90% of a cgroup memory limit as its file holds it (`max`, or a huge number, = none).
fn cgroup_budget(limit: &str) -> Option<u64> {
    let bytes: u64 = limit.trim().parse().ok()?;
    (bytes < 1 << 60).then_some(bytes / 10 * 9)
}

/// `Retry-After` is whole seconds; never say 0, or clients retry in a tight loop.
fn retry_after_s(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_admits_its_burst_then_refuses_with_a_retry_time() {
        let a = Admission::new(2, 3, 10);
        for _ in 0..3 {
            a.check_rate().unwrap();
        }
        match a.check_rate() {
            Err(Refusal::Rate {
                rate_per_s: 2,
                retry_after_s,
            }) => assert!((1..=2).contains(&retry_after_s)),
            other => panic!("expected a rate refusal, got {other:?}"),
        }
    }

    #[test]
    fn no_rate_admits_everything_and_the_engine_queue_is_bounded() {
        let a = Admission::new(0, 0, 2);
        for _ in 0..10_000 {
            a.check_rate().unwrap();
        }
        let p1 = a.enter_engine().unwrap();
        let _p2 = a.enter_engine().unwrap();
        assert_eq!(
            a.enter_engine().unwrap_err(),
            Refusal::Busy { inflight_max: 2 }
        );
        assert_eq!(a.load().inflight, 2);
        drop(p1);
        let _p3 = a.enter_engine().unwrap();
        assert_eq!(a.load().inflight, 2);
        assert_eq!(a.load().refused_busy, 1);
    }

    #[test]
    fn past_the_memory_budget_purchases_are_refused_and_counted() {
        let a = Admission::new(0, 0, 2).with_memory_max(Some(1 << 40));
        let rss = a.resident_bytes.load(Ordering::Relaxed);
        assert!(rss > 1 << 20, "this process's memory was read: {rss}");
        a.check_memory(|| false).unwrap();
        let a = Admission::new(0, 0, 2).with_memory_max(Some(rss / 2));
        // A retry of an order the node has gets in.
        a.check_memory(|| true).unwrap();
        match a.check_memory(|| false) {
            Err(r @ Refusal::Memory { .. }) => {
                assert!(r.to_string().contains("memory budget"), "{r}")
            }
            other => panic!("expected a memory refusal, got {other:?}"),
        }
        assert_eq!(a.load().refused_memory, 1);
        // No budget (none given, or 0): never refused.
        for m in [None, Some(0)] {
            Admission::new(0, 0, 2)
                .with_memory_max(m)
                .check_memory(|| false)
                .unwrap();
        }
    }

    #[test]
    fn the_default_budget_is_90_percent_of_the_cgroup_limit() {
        assert_eq!(cgroup_budget("536870912\n"), Some(483_183_819));
        assert_eq!(cgroup_budget("max\n"), None);
        // cgroup v1 without a limit: the largest page-aligned i64.
        assert_eq!(cgroup_budget("9223372036854771712"), None);
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_after_s(Duration::ZERO), 1);
        assert_eq!(retry_after_s(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_s(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_s(Duration::from_millis(1001)), 2);
    }
}
