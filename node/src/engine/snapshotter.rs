//! Snapshots off the sequencer's path. When one is due — every N records, or every as
//! many records as the state holds orders if that is more — the sequencer, right after
//! a durable batch, takes a copy of what a snapshot holds ([`State::snapshot_copy`]):
//! the orders are shared (`Arc`), so the copy is a pointer per order, not a copy of
//! each. This thread serializes and writes it; the sequencer goes on selling. An order
//! changed meanwhile is copied on its change (`Arc::make_mut`), so the snapshot stays
//! exactly the orders and items after its record, which is what replaying the log
//! gives. Its role, epoch and primary URL are the node's at that moment, as in the
//! snapshot written at shutdown — including a role held only in memory (the initial
//! role, a secondary's assignment), which a restart from it then starts with.
//!
//! The thread runs under `SCHED_IDLE`: a snapshot takes only CPU time the sale leaves
//! idle, so on a busy core it waits rather than delays answers (its serialization is
//! linear in the orders held). A snapshot that waits keeps the log longer; selling
//! does not wait for it, but a shutdown or a reseed lets one being written finish
//! first (`Snapshotter::stop`).
//!
//! At most one snapshot is in the works: a due one waits for the next batch after it.
//! Once a snapshot is durable, the oldest snapshot kept is published in `compact_to`;
//! the sequencer (which owns the segments) removes the segments it covers.

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
    /// The record the last snapshot handed over was taken after.
    last_seq: u64,
    every_records: u64,
    /// The oldest snapshot kept once the last one is durable (0: none yet).
    pub compact_to: Arc<AtomicU64>,
}

impl Snapshotter {
    /// Starts the thread; `applied_seq` is where the state stands (nothing is due
    /// before `every_records` more).
    pub fn start(
        dir: Arc<dyn WalDir>,
        applied_seq: u64,
        every_records: u64,
        metrics: EngineMetrics,
    ) -> Self {
        let (tx, rx) = mpsc::sync_channel(1);
        let compact_to = Arc::new(AtomicU64::new(0));
        let busy = Arc::new(AtomicBool::new(false));
        let (published, done) = (compact_to.clone(), busy.clone());
        let thread = std::thread::Builder::new()
            .name("snapshotter".into())
            .spawn(move || run(rx, dir, metrics, published, done))
            .map_err(
                |e| tracing::warn!(error = %e, "no snapshot thread: snapshots only at shutdown"),
            )
            .ok();
        Self {
            tx: thread.is_some().then_some(tx),
            thread,
            busy,
            last_seq: applied_seq,
            every_records: every_records.max(1),
            compact_to,
        }
    }

    /// After a durable batch: hands a copy of `state` over when a snapshot is due and
    /// none is being written.
    pub fn committed(&mut self, state: &State) {
        let Some(tx) = &self.tx else { return };
        let due = self.every_records.max(state.orders.len() as u64);
        if state.applied_seq < self.last_seq + due || self.busy.load(Ordering::Acquire) {
            return;
        }
        self.busy.store(true, Ordering::Release);
        match tx.try_send(Box::new(state.snapshot_copy())) {
            Ok(()) => self.last_seq = state.applied_seq,
            Err(mpsc::TrySendError::Full(_)) => self.busy.store(false, Ordering::Release),
            Err(mpsc::TrySendError::Disconnected(_)) => self.tx = None,
        }
    }

    /// Lets the snapshot being written finish, then stops the thread.
    pub fn stop(&mut self) {
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

fn run(
    rx: mpsc::Receiver<Box<State>>,
    dir: Arc<dyn WalDir>,
    metrics: EngineMetrics,
    compact_to: Arc<AtomicU64>,
    busy: Arc<AtomicBool>,
) {
    super::sequencer::thread_policy("snapshotter", super::sequencer::Policy::Idle);
    while let Ok(state) = rx.recv() {
        match snapshot::write(&*dir, &state) {
            Ok(oldest_kept) => {
                metrics.snapshots.inc();
                compact_to.fetch_max(oldest_kept, Ordering::SeqCst);
            }
            Err(e) => tracing::warn!(error = %e, "snapshot failed; the log keeps everything"),
        }
        // The copy's orders are let go here, off the sequencer.
        drop(state);
        busy.store(false, Ordering::Release);
    }
}
