//! Snapshots off the sequencer's path: a thread keeps its own copy of the state by
//! applying every committed batch (the same frames the WAL got), and writes a
//! snapshot from that copy every N records, or every as many records as it holds
//! orders if that is more. Selling never pauses for a snapshot,
//! whose cost grows with the number of orders; the copy costs a decode and an apply
//! per record on another core. What it snapshots is exactly what replaying the log
//! gives, which is what a snapshot must be.
//!
//! Once a snapshot is durable, the oldest snapshot kept is published in
//! `compact_to`; the sequencer (which owns the segments) removes the segments it covers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use flashsale_core::wal::decode_record;

use super::metrics::EngineMetrics;
use super::snapshot;
use super::state::State;
use crate::wal::WalDir;

/// Committed batches waiting for the snapshot thread; beyond this the sequencer
/// stops feeding it and resynchronises it with a copy of the state later.
const QUEUE_LEN_MAX: usize = 4096;

enum Msg {
    /// Encoded frames of one committed batch, contiguous with the last.
    Frames(Vec<u8>),
    /// Start over from this state (after a snapshot install or a dropped batch).
    Reset(Box<State>),
}

/// The sequencer's end of the snapshot thread.
pub(crate) struct Snapshotter {
    tx: Option<mpsc::SyncSender<Msg>>,
    thread: Option<JoinHandle<()>>,
    /// The sequence the next batch sent must start at; anything else resets the copy.
    next_seq: u64,
    /// Segments wholly at or below this may go (0 = nothing yet).
    pub compact_to: Arc<AtomicU64>,
}

impl Snapshotter {
    pub fn start(
        dir: Arc<dyn WalDir>,
        state: State,
        every_records: u64,
        metrics: EngineMetrics,
    ) -> Self {
        let (tx, rx) = mpsc::sync_channel(QUEUE_LEN_MAX);
        let compact_to = Arc::new(AtomicU64::new(0));
        let next_seq = state.applied_seq + 1;
        let published = compact_to.clone();
        let thread = std::thread::Builder::new()
            .name("snapshotter".into())
            .spawn(move || run(rx, dir, state, every_records.max(1), metrics, published))
            .map_err(
                |e| tracing::warn!(error = %e, "no snapshot thread: snapshots only at shutdown"),
            )
            .ok();
        Self {
            tx: thread.is_some().then_some(tx),
            thread,
            next_seq,
            compact_to,
        }
    }

    /// Hands over a committed batch `first_seq..` ; `state` is the sequencer's state
    /// after it, copied only if the snapshot thread must be resynchronised.
    pub fn committed(&mut self, first_seq: u64, frames: &[u8], next_seq: u64, state: &State) {
        let Some(tx) = &self.tx else { return };
        let msg = if first_seq == self.next_seq {
            Msg::Frames(frames.to_vec())
        } else {
            Msg::Reset(Box::new(state.clone()))
        };
        match tx.try_send(msg) {
            Ok(()) => self.next_seq = next_seq,
            // Behind: skip this batch; the next one sees the gap and sends a copy.
            Err(mpsc::TrySendError::Full(_)) => self.next_seq = 0,
            Err(mpsc::TrySendError::Disconnected(_)) => self.tx = None,
        }
    }

    /// Stops the thread after it has applied what it was sent (no snapshot for the rest).
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
    rx: mpsc::Receiver<Msg>,
    dir: Arc<dyn WalDir>,
    state: State,
    every_records: u64,
    metrics: EngineMetrics,
    compact_to: Arc<AtomicU64>,
) {
    let mut state = state.into_lean();
    let mut last_snapshot = state.applied_seq;
    let mut in_sync = true;
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Reset(s) => {
                state = s.into_lean();
                in_sync = true;
            }
            Msg::Frames(frames) if in_sync => {
                let mut rest = &frames[..];
                while !rest.is_empty() {
                    let applied =
                        decode_record(rest)
                            .map_err(|e| e.to_string())
                            .and_then(|(rec, used)| {
                                rest = &rest[used..];
                                state.apply(&rec).map_err(|e| e.to_string())
                            });
                    if let Err(e) = applied {
                        // Cannot happen for frames the sequencer applied; wait for a reset.
                        tracing::warn!(error = %e, "snapshot copy out of step");
                        in_sync = false;
                        break;
                    }
                }
            }
            Msg::Frames(_) => continue,
        }
        // The copy's change lists are for a read view, which it has none of.
        state.take_touched();
        // A snapshot costs in proportion to the orders it holds; waiting at least as
        // many records as there are orders keeps its cost per record constant while
        // replay stays within twice the snapshot's own load time.
        let due = every_records.max(state.orders.len() as u64);
        if in_sync && state.applied_seq >= last_snapshot + due {
            match snapshot::write(&*dir, &state) {
                Ok(oldest_kept) => {
                    last_snapshot = state.applied_seq;
                    metrics.snapshots.inc();
                    compact_to.fetch_max(oldest_kept, Ordering::SeqCst);
                }
                Err(e) => tracing::warn!(error = %e, "snapshot failed; the log keeps everything"),
            }
        }
    }
}
