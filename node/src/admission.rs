//! Admission control: what the node lets in before any work is done — a token bucket
//! on the rate of `/v1` requests, a bound on requests waiting for the engine, and a
//! memory budget for new purchases (open connections are bounded by `http::server`).

use std::num::NonZeroU32;
use std::sync::Arc;
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
    /// The memory budget for new purchases, if any (the engine checks it; here for the
    /// load figures).
    memory: Option<Arc<MemoryBudget>>,
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
            memory: None,
        }
    }

    /// With the memory budget the engine checks, for [`Self::load`].
    pub fn with_memory(mut self, memory: Option<Arc<MemoryBudget>>) -> Admission {
        self.memory = memory;
        self
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
            refused_memory: self.memory.as_ref().map_or(0, |m| m.refused()),
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

/// The process's resident memory against a budget for new purchases
/// (`--memory-max-bytes`), sampled every [`MEMORY_SAMPLE_MS`] ([`Self::sample`]).
///
/// Every order is kept for the sale's life (its key answers retries), so a crowd that
/// buys and cancels in a loop grows the node without bound; past the pod's limit the
/// kernel kills it, and it would be killed again as it loads the same orders on
/// restart. Past the budget the engine refuses a new purchase instead, after every
/// refusal of its own (not the primary, the sale window, sold out, a limit) and
/// never a retry of an order it has ([`Self::refuse`]): every order it holds stays
/// confirmable, cancellable and readable, as Redis refuses writes past its `maxmemory`
/// (`noeviction`). Resident memory is what the limit counts, but the allocator keeps
/// some of what it freed: a spike (a large forwarded batch, a catch-up answer) can
/// leave it above the orders' share for a while.
#[derive(Debug)]
pub struct MemoryBudget {
    max_bytes: u64,
    resident_bytes: AtomicU64,
    refused: AtomicU64,
    full: std::sync::atomic::AtomicBool,
}

impl MemoryBudget {
    /// A budget of `max_bytes` (at least 1), sampled once now.
    pub fn new(max_bytes: u64) -> Arc<MemoryBudget> {
        let b = Arc::new(MemoryBudget {
            max_bytes: max_bytes.max(1),
            resident_bytes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            full: std::sync::atomic::AtomicBool::new(false),
        });
        b.sample();
        b
    }

    /// Reads the process's resident memory; logs when it reaches the budget and when it
    /// is below it again.
    pub fn sample(&self) {
        let Some(bytes) = resident_bytes() else {
            return;
        };
        self.resident_bytes.store(bytes, Ordering::Relaxed);
        let full = bytes >= self.max_bytes;
        if self.full.swap(full, Ordering::Relaxed) != full {
            if full {
                tracing::warn!(
                    resident_mib = bytes >> 20,
                    budget_mib = self.max_bytes >> 20,
                    "memory budget reached: no new purchases until the pod has more memory"
                );
            } else {
                tracing::info!(resident_mib = bytes >> 20, "below the memory budget again");
            }
        }
    }

    /// The refusal of a new purchase past the budget (counted), or `None`. The client
    /// is told the node is full, not its figures (those are in the log and metrics).
    pub fn refuse(&self) -> Option<flashsale_core::SellError> {
        if self.resident_bytes.load(Ordering::Relaxed) < self.max_bytes {
            return None;
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        Some(flashsale_core::SellError::Full)
    }

    /// Purchases refused past the budget, since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
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
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    limit_files(&own)
        .into_iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|limit| cgroup_budget(&limit))
}

/// Where the memory limit of the process's cgroup may be, first first: its own
/// cgroup's file (from `/proc/self/cgroup`: `0::/path` on cgroup v2, `N:memory:/path`
/// on v1; the path is `/` inside a container's cgroup namespace, the whole path
/// without one), then the mount's root file.
fn limit_files(proc_self_cgroup: &str) -> Vec<String> {
    let mut files = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let path = path.unwrap_or_default().trim_end_matches('/');
        match controllers {
            Some("") => files.push(format!("/sys/fs/cgroup{path}/memory.max")),
            Some(c) if c.split(',').any(|c| c == "memory") => {
                files.push(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"))
            }
            _ => {}
        }
    }
    files.push("/sys/fs/cgroup/memory.max".into());
    files.push("/sys/fs/cgroup/memory/memory.limit_in_bytes".into());
    files
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
        let rss = resident_bytes().expect("this process's memory can be read");
        assert!(rss > 1 << 20, "{rss}");
        let roomy = MemoryBudget::new(1 << 40);
        assert_eq!(roomy.refuse(), None);
        let full = MemoryBudget::new(rss / 2);
        let e = full.refuse().expect("refused past the budget");
        assert_eq!(e.code(), flashsale_core::ErrorCode::Unavailable);
        assert!(e.to_string().contains("memory"), "{e}");
        assert_eq!(full.refused(), 1);
        let a = Admission::new(0, 0, 2).with_memory(Some(full));
        assert_eq!(a.load().refused_memory, 1);
    }

    #[test]
    fn the_cgroup_limit_is_read_from_the_process_s_own_cgroup_first() {
        // cgroup v2 without a cgroup namespace (a systemd service), and inside one.
        assert_eq!(
            limit_files("0::/system.slice/shop.service\n")[0],
            "/sys/fs/cgroup/system.slice/shop.service/memory.max"
        );
        assert_eq!(limit_files("0::/\n")[0], "/sys/fs/cgroup/memory.max");
        // cgroup v1 (hybrid: the v2 line is there too, for nothing).
        let v1 = limit_files("4:memory:/kubepods/pod1/c1\n1:cpu,cpuacct:/x\n0::/\n");
        assert_eq!(
            v1[0],
            "/sys/fs/cgroup/memory/kubepods/pod1/c1/memory.limit_in_bytes"
        );
        assert_eq!(
            v1.last().unwrap(),
            "/sys/fs/cgroup/memory/memory.limit_in_bytes"
        );
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
