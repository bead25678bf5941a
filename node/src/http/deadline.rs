//! Request deadlines on reused timers.
//!
//! Every request is bounded by `--request-timeout-ms` ([`super::ops::Observe`]). A new
//! tokio timer per request costs an insert into the runtime's timer wheel on its first
//! poll and a removal (under the driver's lock) when dropped: about 1 000 instructions
//! of a purchase's ~42 000 (`make bench-instructions`). Here a request's timer comes from
//! a free list on its worker thread and goes back when the request is answered, and
//! [`Sleep::reset`] moves it on: to a later deadline while it is still pending, that is
//! one atomic update (tokio re-files it in the wheel only when the old deadline comes
//! round, at most once per timeout). A timer that fired, or a fresh one, registers as
//! usual. What a client sees is unchanged: the same deadline, the same 503.
//!
//! A timer belongs to the runtime that made it, so the free list is dropped when its
//! thread serves a different runtime (tests run several runtimes in one process).
//! A timer left in the list may fire once at its old deadline; that wakes the task that
//! last waited on it, which finds nothing to do.

use std::cell::RefCell;
use std::pin::Pin;
use tokio::runtime::{Handle, Id};
use tokio::time::{Instant, Sleep};

/// Most free timers a worker thread keeps: one per request in flight is enough, and
/// beyond this they are dropped.
const FREE_MAX: usize = 4096;

#[derive(Default)]
struct Free {
    runtime: Option<Id>,
    timers: Vec<Pin<Box<Sleep>>>,
}

thread_local! {
    static FREE: RefCell<Free> = RefCell::default();
}

/// `timeout` after `start`, or a year after it if that is past what an `Instant` holds
/// (a deadline that never comes, as `tokio::time::timeout` treats one).
pub fn after(start: std::time::Instant, timeout: std::time::Duration) -> Instant {
    let start = Instant::from_std(start);
    start
        .checked_add(timeout)
        .unwrap_or_else(|| start + std::time::Duration::from_secs(365 * 24 * 3600))
}

/// A timer that fires at `deadline`: a free one of this thread's runtime, reset, or a
/// new one. Must be called within a tokio runtime with its time driver enabled.
pub fn take(deadline: Instant) -> Pin<Box<Sleep>> {
    let runtime = Handle::current().id();
    let reused = FREE.with_borrow_mut(|free| {
        if free.runtime != Some(runtime) {
            free.timers.clear();
            free.runtime = Some(runtime);
        }
        free.timers.pop()
    });
    match reused {
        Some(mut timer) => {
            timer.as_mut().reset(deadline);
            timer
        }
        None => Box::pin(tokio::time::sleep_until(deadline)),
    }
}

/// Gives `timer` back for another request (of the same runtime) to reuse.
pub fn give(timer: Pin<Box<Sleep>>) {
    let runtime = Handle::current().id();
    FREE.with_borrow_mut(|free| {
        if free.runtime == Some(runtime) && free.timers.len() < FREE_MAX {
            free.timers.push(timer);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const BOUND: Duration = Duration::from_secs(10);

    /// A reused timer fires at its new deadline, later or earlier than its old one, and
    /// one that fired is reused too.
    #[tokio::test]
    async fn a_reused_timer_fires_at_its_new_deadline_not_its_old_one() {
        let t0 = Instant::now();
        let mut timer = take(t0 + Duration::from_millis(300));
        // Registered with the driver, as a request's timer is once polled.
        assert!(futures::poll!(timer.as_mut()).is_pending());
        give(timer);
        // Later: the pending timer is moved on in place.
        let mut timer = take(t0 + Duration::from_secs(3));
        assert_eq!(timer.deadline(), t0 + Duration::from_secs(3));
        tokio::time::sleep_until(t0 + Duration::from_millis(1500)).await;
        assert!(
            futures::poll!(timer.as_mut()).is_pending(),
            "fired at its old deadline"
        );
        tokio::time::timeout(BOUND, timer.as_mut()).await.unwrap();
        assert!(t0.elapsed() >= Duration::from_secs(3));
        // Earlier than the pending deadline.
        give(timer);
        let mut timer = take(Instant::now() + Duration::from_secs(60));
        assert!(futures::poll!(timer.as_mut()).is_pending());
        give(timer);
        let t1 = Instant::now();
        let mut timer = take(t1 + Duration::from_millis(300));
        tokio::time::timeout(BOUND, timer.as_mut()).await.unwrap();
        assert!(t1.elapsed() >= Duration::from_millis(300));
        // After it fired.
        give(timer);
        let t2 = Instant::now();
        let timer = take(t2 + Duration::from_millis(300));
        tokio::time::timeout(BOUND, timer).await.unwrap();
        assert!(t2.elapsed() >= Duration::from_millis(300));
    }

    #[test]
    fn a_timer_of_another_runtime_is_never_reused() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
        };
        runtime().block_on(async {
            give(take(Instant::now() + Duration::from_secs(60)));
        });
        // A timer of the first runtime, shut down by now, would panic when polled here.
        runtime().block_on(async {
            tokio::time::timeout(BOUND, take(Instant::now() + Duration::from_millis(10)))
                .await
                .unwrap();
        });
    }
}
