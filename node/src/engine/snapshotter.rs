//! Snapshots off the sequencer's path. When one is due — every N records, or every
//! half as many records as the state holds orders if that is more ([`due`]) — the
//! sequencer, right after a durable batch, takes a copy of what a snapshot holds
//! ([`State::snapshot_copy`]): the order table's chunks are shared (reference-counted),
//! so the copy is a pointer per 4096 orders, not a copy of each. This thread
//! serializes and writes it, streamed to the file; the sequencer goes on selling. A
//! chunk the sequencer changes meanwhile is copied first (copy on write,
//! `OrderTable`), so the snapshot stays exactly the orders and items after its
//! record, which is what replaying the log gives. Its role, epoch and primary URL
//! are the node's at that moment, as in the snapshot written at shutdown — including
//! a role held only in memory (the initial role, a secondary's assignment), which a
//! restart from it then starts with.
//!
//! The thread runs under `SCHED_IDLE`: a snapshot takes only CPU time the sale leaves
//! idle, so on a busy core it waits rather than delays answers (its serialization is
//! linear in the orders held). A snapshot that waits keeps the log longer; selling
//! does not wait for it, nor does a shutdown or a reseed: `Snapshotter::stop` gives up
//! one being written (its file is never renamed into place; the one before stands).
//! `SCHED_BATCH` at nice 19 instead (a small share of a busy core, so a snapshot
//! never waits for ever) cost the answers' tail far more than its share: `make
//! bench-node`'s open loop at 80% of the peak with a snapshot every 50 000 records,
//! three runs each, p99 74–178 ms against 16–20 ms under `SCHED_IDLE`.
//!
//! At most one snapshot is in the works: a due one waits for the next batch after it.
//! Once a snapshot is durable, the oldest snapshot kept is published in `compact_to`
//! (at start, the oldest kept on disk); the sequencer (which owns the segments) removes
//! the segments it covers after its next batch or on its next idle tick.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::metrics::EngineMetrics;
use super::snapshot;
use super::state::State;
use crate::wal::WalDir;

pub(crate) struct Snapshotter {
    tx: Option<mpsc::SyncSender<Box<State>>>,
    thread: Option<JoinHandle<()>>,
    /// A snapshot is being written.
    busy: Arc<AtomicBool>,
    /// Set by [`Snapshotter::stop`]: a snapshot being written is given up.
    cancel: Arc<AtomicBool>,
    /// The record the last snapshot handed over was taken after.
    last_seq: u64,
    every_records: u64,
    /// The oldest snapshot kept once the last one is durable (0: none yet).
    pub compact_to: Arc<AtomicU64>,
}

impl Snapshotter {
    /// Starts the thread; `applied_seq` is where the state stands (nothing is due
    /// before `every_records` more), `loaded` the snapshot it was loaded from.
    pub fn start(
        dir: Arc<dyn WalDir>,
        loaded: Option<u64>,
        applied_seq: u64,
        every_records: u64,
        metrics: EngineMetrics,
    ) -> Self {
        let (tx, rx) = mpsc::sync_channel(1);
        // When the state came from a snapshot (`loaded`, whose checksum held), the log
        // before the oldest snapshot kept goes on the first commit or idle tick, as
        // after writing one — but never past the one loaded (a newer one may be
        // damaged). Without one (none, or none whose checksum held), nothing.
        let kept = loaded
            .and_then(|_| snapshot::list(&*dir).ok())
            .unwrap_or_default();
        let oldest_kept = kept.iter().take(snapshot::SNAPSHOTS_KEPT).next_back();
        let start = match (loaded, oldest_kept) {
            (Some(l), Some(&k)) => l.min(k),
            _ => 0,
        };
        let compact_to = Arc::new(AtomicU64::new(start));
        let busy = Arc::new(AtomicBool::new(false));
        let cancel = Arc::new(AtomicBool::new(false));
        let (published, done, stop) = (compact_to.clone(), busy.clone(), cancel.clone());
        let thread = std::thread::Builder::new()
            .name("snapshotter".into())
            .spawn(move || run(rx, dir, metrics, published, done, stop))
            .map_err(
                |e| tracing::warn!(error = %e, "no snapshot thread: snapshots only at shutdown"),
            )
            .ok();
        Self {
            tx: thread.is_some().then_some(tx),
            thread,
            busy,
            cancel,
            last_seq: applied_seq,
            every_records: every_records.max(1),
            compact_to,
        }
    }

    /// After a durable batch: hands a copy of `state` over when a snapshot is due and
    /// none is being written.
    pub fn committed(&mut self, state: &State) {
        let Some(tx) = &self.tx else { return };
        if !due(
            state.applied_seq,
            self.last_seq,
            self.every_records,
            state.orders.len(),
        ) || self.busy.load(Ordering::Acquire)
        {
            return;
        }
        self.busy.store(true, Ordering::Release);
        match tx.try_send(Box::new(state.snapshot_copy())) {
            Ok(()) => self.last_seq = state.applied_seq,
            Err(mpsc::TrySendError::Full(_)) => self.busy.store(false, Ordering::Release),
            Err(mpsc::TrySendError::Disconnected(_)) => self.tx = None,
        }
    }

    /// Gives up a snapshot being written (a shutdown writes its own; a reseed moves
    /// the log aside), then stops the thread.
    pub fn stop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a snapshot is due at record `applied`, the last taken after record `last`:
/// `every` records since, and at least half as many as the orders held. A snapshot's
/// cost is in proportion to the orders, so this keeps it to two orders written per
/// record logged, and the log a restart replays to about half the orders held (or
/// `every`). (It waited for as many records as orders: a sale of purchases alone, a
/// record and an order each, never got there again after its first snapshot, and its
/// log grew without end: one snapshot in `make bench-node`'s 320 000-purchase runs.)
fn due(applied: u64, last: u64, every: u64, orders: usize) -> bool {
    applied >= last.saturating_add(every.max(orders as u64 / 2))
}

fn run(
    rx: mpsc::Receiver<Box<State>>,
    dir: Arc<dyn WalDir>,
    metrics: EngineMetrics,
    compact_to: Arc<AtomicU64>,
    busy: Arc<AtomicBool>,
    cancel: Arc<AtomicBool>,
) {
    super::sequencer::thread_policy("snapshotter", super::sequencer::Policy::Idle);
    while let Ok(state) = rx.recv() {
        match snapshot::write_unless(&*dir, &state, &cancel) {
            Ok(oldest_kept) => {
                metrics.snapshots.inc();
                compact_to.fetch_max(oldest_kept, Ordering::SeqCst);
            }
            Err(_) if cancel.load(Ordering::Relaxed) => {
                tracing::debug!(seq = state.applied_seq, "snapshot given up: stopping")
            }
            Err(e) => tracing::warn!(error = %e, "snapshot failed; the log keeps everything"),
        }
        // The copy's orders are let go here, off the sequencer.
        drop(state);
        busy.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::MemDir;

    #[test]
    fn a_restart_compacts_no_further_than_the_snapshot_it_loaded() {
        let dir = MemDir::new();
        for seq in [100, 200] {
            let mut state = State::default();
            state.applied_seq = seq;
            snapshot::write(&dir, &state).unwrap();
        }
        // A newer snapshot left damaged (here: another's bytes under its name), as a
        // crash between a snapshot's rename and the removal of the oldest can leave
        // three; opening skips it and the next, and loads 100.
        dir.with_files(|files| {
            let copy = files[&snapshot::snapshot_name(200)].clone();
            files.insert(snapshot::snapshot_name(300), copy);
        });
        let dir: Arc<dyn WalDir> = Arc::new(dir);
        let mut s =
            Snapshotter::start(dir.clone(), Some(100), 100, 1_000, EngineMetrics::default());
        assert_eq!(
            s.compact_to.load(Ordering::SeqCst),
            100,
            "the log after 100 is needed"
        );
        s.stop();
        let mut s = Snapshotter::start(dir, None, 0, 1_000, EngineMetrics::default());
        assert_eq!(
            s.compact_to.load(Ordering::SeqCst),
            0,
            "nothing loaded, nothing covered"
        );
        s.stop();
    }

    #[test]
    fn a_sale_of_purchases_alone_is_snapshotted_again_as_it_grows() {
        // Every record a purchase: the orders are the records.
        let (mut last, mut taken) = (0u64, Vec::new());
        for applied in 1..=1_000_000u64 {
            if due(applied, last, 1000, applied as usize) {
                taken.push(applied);
                last = applied;
            }
            assert!(
                applied - last <= 1000u64.max(applied / 2),
                "the log since the last snapshot stays within half the state"
            );
        }
        assert_eq!(taken[..2], [1000, 2000]);
        assert!(
            taken
                .windows(2)
                .all(|w| w[1] > w[0] * 2 - 10 && w[1] <= w[0] * 2),
            "each when the state has doubled: {taken:?}"
        );
        assert_eq!(taken.len(), 10, "{taken:?}");
        // A purchase and a confirm per order: sooner, never more often than `every`.
        assert!(!due(1999, 1000, 1000, 600));
        assert!(due(2000, 1000, 1000, 600));
        assert!(!due(5000, 3000, 1000, 5000) && due(5500, 3000, 1000, 5000));
    }
}
