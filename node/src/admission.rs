//! Admission control: what the node lets in before any work is done — a token bucket
//! on the rate of `/v1` requests and a bound on requests waiting for the engine (open
//! connections are bounded by `http::server`).

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
}

/// The admission's load figures at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdmissionLoad {
    pub inflight: u64,
    pub inflight_max: u64,
    pub refused_rate: u64,
    pub refused_busy: u64,
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
        }
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
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_after_s(Duration::ZERO), 1);
        assert_eq!(retry_after_s(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_s(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_s(Duration::from_millis(1001)), 2);
    }
}
