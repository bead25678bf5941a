//! The secondary's side of the sequencer: apply a replicated batch, and take a role
//! assignment that is not "primary".
//!
//! A secondary's WAL is a copy of its primary's: the same records at the same
//! sequences and epochs, so that it can be promoted and serve catch-up itself. Two
//! things keep it so:
//! - a replicated batch goes through the same group commit as local writes (one
//!   write, one `fdatasync`, then the answer; not paced, see `Sequencer::paces_next`),
//!   strictly in order, never from an older epoch than the node's own;
//! - nothing local is logged on a secondary: a role assignment other than primary is
//!   held in memory (the operator re-sends it), and the primary's own `Role` records
//!   are logged here as "secondary of this epoch, following this primary", so a
//!   restarted secondary replays itself back into a secondary, not a second primary.
//! - demoting a primary is held in memory too (FAILOVER.md I3): only epoch E's primary
//!   writes epoch-E records, so a step-down leaves the log byte for byte as it was. A
//!   demoted node that restarts replays itself into "primary of its old epoch", which
//!   sells nothing: it has no lease, and the operator tells it its role again.
//!
//! A node whose log parted from its primary's (found by comparing epoch histories,
//! `flashsale_core::replication::common_prefix`) is *reseeded*: its whole log and
//! snapshots are moved aside into a subdirectory of the data directory, kept for audit,
//! and it starts again empty, to catch up from the primary.
//!
//! Hold expiries are the primary's to log (they arrive here as records); the sequencer
//! skips its own expiry check on any node that is not the primary.

use flashsale_core::SellError;
use flashsale_core::admin::{Role, RoleAssignment};
use flashsale_core::wal::{Batch, Record, RecordBody, encode_record};

use super::sequencer::{Job, Reply, Sequencer};
use super::snapshot;
use super::state::{Command, State};
use super::view::ReadView;
use super::{Answer, EngineHandle};

/// Largest snapshot served or installed (the whole sale as JSON: items and orders).
pub const SNAPSHOT_BYTES_MAX: usize = 1 << 30;

/// Where a node stands, read without copying the status (hot paths: every request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Positions {
    pub role: Role,
    pub epoch: u64,
    pub applied_seq: u64,
    pub durable_seq: u64,
}

impl EngineHandle {
    /// Applies a batch replicated from the primary (records from `applied_seq + 1`,
    /// contiguous) and answers once it is durable here, with the durable sequence.
    /// Refused: on the primary (`NotPrimary` is not the point: a primary must never
    /// take another node's log, so `Fenced`), from an older epoch (`Fenced`), or out of
    /// order (`Unavailable`, naming the gap; catch up and retry).
    pub async fn apply_replicated(&self, batch: Batch) -> Result<u64, SellError> {
        self.submit(Command::Replicate(batch)).await?;
        Ok(self.positions().durable_seq)
    }

    /// Role, epoch and sequences, cheaply.
    pub fn positions(&self) -> Positions {
        let v = self.inner.view.read();
        let s = &v.status;
        Positions {
            role: s.role,
            epoch: s.epoch,
            applied_seq: s.applied_seq,
            durable_seq: s.durable_seq,
        }
    }

    /// The epoch of this node's durable record `seq` (`None` past its durable end or
    /// at 0), without copying the status: a secondary's ack asks it per batch.
    pub fn durable_epoch_at(&self, seq: u64) -> Option<u64> {
        let v = self.inner.view.read();
        flashsale_core::replication::epoch_at(&v.status.epochs, v.status.durable_seq, seq)
    }

    /// The newest snapshot file on disk (`crc32c | JSON`) and the sequence it covers,
    /// for a secondary whose catch-up point was compacted away.
    pub async fn newest_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, SellError> {
        let dir = self.inner.dir.clone();
        let read = tokio::task::spawn_blocking(move || {
            let io = |e: crate::wal::WalDirError| SellError::Internal(e.to_string());
            for seq in snapshot::list(&*dir).map_err(io)? {
                let name = snapshot::snapshot_name(seq);
                let Ok(bytes) = dir.read(&name) else { continue };
                if bytes.len() <= SNAPSHOT_BYTES_MAX
                    && decode_snapshot(&bytes).is_some_and(|s| s.applied_seq == seq)
                {
                    return Ok(Some((seq, bytes)));
                }
            }
            Ok(None)
        });
        read.await.map_err(|e| SellError::Internal(e.to_string()))?
    }

    /// Replaces this secondary's whole state and log with a primary's snapshot newer
    /// than everything it has; the WAL then goes on from the snapshot's sequence.
    /// Returns the new applied sequence.
    pub async fn install_snapshot(&self, bytes: Vec<u8>) -> Result<u64, SellError> {
        let state = tokio::task::spawn_blocking(move || decode_snapshot(&bytes))
            .await
            .map_err(|e| SellError::Internal(e.to_string()))?
            .ok_or_else(|| SellError::BadRequest {
                field: "body".into(),
                reason: "not a snapshot as GET /admin/v1/snapshot serves it (crc32c u32 LE | JSON), or a damaged one".into(),
            })?;
        self.submit(Command::InstallSnapshot(Box::new(state)))
            .await?;
        Ok(self.positions().applied_seq)
    }
}

/// `crc32c u32 LE | JSON of State` (see `engine::snapshot`), indexes rebuilt.
fn decode_snapshot(bytes: &[u8]) -> Option<State> {
    if bytes.len() < 4 || bytes.len() > SNAPSHOT_BYTES_MAX {
        return None;
    }
    let (crc, json) = bytes.split_at(4);
    if u32::from_le_bytes(crc.try_into().ok()?) != crc32c::crc32c(json) {
        return None;
    }
    let mut state: State = serde_json::from_slice(json).ok()?;
    state.rebuild_indexes();
    Some(state)
}

impl Sequencer {
    /// Takes the jobs that are the replica's business; hands back any other.
    pub(crate) fn replica_intercept(&mut self, job: Job) -> Option<Job> {
        match job.cmd {
            Command::Replicate(batch) => {
                self.replicate(batch, job.reply);
                None
            }
            Command::InstallSnapshot(state) => {
                self.install(*state, job.reply);
                None
            }
            // Demotion is never logged (FAILOVER.md I3): a primary told to step down
            // stops selling at once and keeps its log exactly as it was.
            Command::SetRole(a) if a.role != Role::Primary => {
                self.assign_in_memory(a, job.reply);
                None
            }
            Command::Reseed(aside) => {
                self.reseed(aside, job.reply);
                None
            }
            cmd => Some(Job {
                cmd,
                reply: job.reply,
            }),
        }
    }

    fn replicate(&mut self, batch: Batch, reply: Reply) {
        let refused = if let Some(why) = &self.failed {
            Some(SellError::Unavailable(format!(
                "the WAL failed earlier: {why}"
            )))
        } else if self.state.role == Role::Primary {
            Some(SellError::Fenced(
                "this node is the primary; it takes no replicated batches".into(),
            ))
        } else if batch.epoch < self.state.epoch {
            Some(SellError::Fenced(format!(
                "batch epoch {} is older than this node's {}",
                batch.epoch, self.state.epoch
            )))
        } else if batch.first_seq != self.next_seq
            || batch.records.first().map(|r| r.seq) != Some(self.next_seq)
        {
            Some(SellError::Unavailable(format!(
                "replication gap: batch starts at {}, this node needs {}",
                batch.first_seq, self.next_seq
            )))
        } else {
            None
        };
        if let Some(e) = refused {
            self.pending.push((reply, Err(e), false, false));
            return;
        }
        let (role, epoch, primary_url) = (
            self.state.role,
            self.state.epoch,
            self.state.primary_url.clone(),
        );
        for rec in batch.records {
            let rec = match rec.body {
                // The primary's role is its own: here it reads "secondary of that epoch".
                RecordBody::Role { assignment } => Record {
                    body: RecordBody::Role {
                        assignment: RoleAssignment {
                            role: Role::Secondary,
                            epoch: assignment.epoch,
                            primary_url: primary_url.clone(),
                        },
                    },
                    ..rec
                },
                _ => rec,
            };
            self.begin_record(rec.seq);
            if let Err(e) = encode_record(&rec, &mut self.buf) {
                self.stop_writing(format!("replicated record {}: {e}", rec.seq));
                break;
            }
            let seq = rec.seq;
            if let Err(e) = self.state.apply(&rec) {
                // The primary's log does not apply to ours: stop rather than diverge.
                self.stop_writing(format!("replicated {e}"));
                break;
            }
            self.next_seq = seq + 1;
        }
        // A `Role` record from the primary must not change who this node is.
        self.state.role = role;
        self.state.epoch = self.state.epoch.max(epoch);
        self.state.primary_url = primary_url;
        self.pending.push((reply, Ok(Answer::Done), true, false));
    }

    fn install(&mut self, mut state: State, reply: Reply) {
        let refused = if let Some(why) = &self.failed {
            Some(SellError::Unavailable(format!(
                "the WAL failed earlier: {why}"
            )))
        } else if self.state.role == Role::Primary {
            Some(SellError::Fenced(
                "this node is the primary; it installs no snapshot".into(),
            ))
        } else if state.applied_seq <= self.state.applied_seq {
            Some(SellError::Unavailable(format!(
                "snapshot at {} is not newer than this node's {}",
                state.applied_seq, self.state.applied_seq
            )))
        } else if !self.buf.is_empty() {
            Some(SellError::Unavailable(
                "a batch is being written; retry".into(),
            ))
        } else {
            None
        };
        if let Some(e) = refused {
            self.pending.push((reply, Err(e), false, false));
            return;
        }
        // Who this node is stays its own (the snapshot says "primary").
        state.role = self.state.role;
        state.epoch = self.state.epoch.max(state.epoch);
        state.primary_url = self.state.primary_url.clone();
        let seq = state.applied_seq;
        // A snapshot of the state being replaced, still being written, must not land
        // after this one: it would be kept as the fallback, older than the log that
        // follows. Give it up; a new snapshot thread starts below.
        self.snapshotter.stop();
        // Snapshot first, then the log restarts after it (the old segments removed
        // before the new one is made): a crash in between leaves a snapshot ahead of
        // what is left of the log, which opening handles (those segments dropped).
        let done = snapshot::write(&*self.dir, &state).and_then(|_| self.writer.reset(seq + 1));
        if let Err(e) = done {
            self.stop_writing(format!("installing snapshot {seq}: {e}"));
            self.pending
                .push((reply, Err(SellError::Internal(e.to_string())), false, false));
            return;
        }
        state.take_touched();
        self.restart_snapshotter(seq);
        self.state = state;
        self.next_seq = seq + 1;
        self.records_since_snapshot = 0;
        let mut view = ReadView::from_state(&self.state);
        view.status.oldest_seq = self.writer.oldest_seq();
        *self.view.write() = view;
        self.pending.push((reply, Ok(Answer::Done), false, false));
    }

    /// Moves the whole log and its snapshots aside (into `aside/` in the data dir) and
    /// starts again from an empty state, keeping role and epoch: catch-up then brings
    /// the primary's log. Refused on a primary.
    fn reseed(&mut self, aside: String, reply: Reply) {
        let refused = if self.state.role == Role::Primary {
            Some(SellError::Fenced(
                "this node is the primary; it is not reseeded".into(),
            ))
        } else if !self.buf.is_empty() {
            Some(SellError::Unavailable(
                "a batch is being written; retry".into(),
            ))
        } else {
            None
        };
        if let Some(e) = refused {
            self.pending.push((reply, Err(e), false, false));
            return;
        }
        // The snapshot thread must not write a snapshot of the old log into the
        // directory once it is emptied: stop it first, start a new one after.
        self.snapshotter.stop();
        // One file at a time, each move durable before the next: segments newest
        // first, then snapshots newest first. A crash between two moves leaves a
        // shorter log that opens (the old one's first segments on the snapshots that
        // cover their start, or a snapshot alone), which the follower compares with the
        // primary's again; never later segments without the earlier ones or the
        // snapshot they start from, which opening refuses.
        let moved = self.dir.list().and_then(|names| {
            let newest_first = |parse: fn(&str) -> Option<u64>| {
                let mut found: Vec<(u64, &String)> =
                    names.iter().filter_map(|n| Some((parse(n)?, n))).collect();
                found.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
                found
                    .into_iter()
                    .map(|(_, n)| n.clone())
                    .collect::<Vec<_>>()
            };
            let segments = newest_first(crate::wal::parse_segment_name);
            let snapshots = newest_first(snapshot::parse_snapshot_name);
            for name in segments.iter().chain(&snapshots) {
                self.dir.move_aside(std::slice::from_ref(name), &aside)?;
            }
            Ok(())
        });
        let reset = moved
            .map_err(|e| crate::wal::WalDirError::io(format!("moving the log aside to {aside}"), e))
            .and_then(|()| self.writer.reset(1));
        if let Err(e) = reset {
            self.stop_writing(format!("reseeding: {e}"));
            self.pending
                .push((reply, Err(SellError::Internal(e.to_string())), false, false));
            return;
        }
        let mut state = State::default();
        state.role = self.state.role;
        state.epoch = self.state.epoch;
        state.primary_url = self.state.primary_url.clone();
        state.rebuild_indexes();
        state.take_touched();
        self.restart_snapshotter(state.applied_seq);
        self.state = state;
        self.next_seq = 1;
        self.records_since_snapshot = 0;
        let mut view = ReadView::from_state(&self.state);
        view.status.oldest_seq = self.writer.oldest_seq();
        *self.view.write() = view;
        tracing::warn!(kept_aside = %aside, "log moved aside: starting again from the primary's");
        self.pending.push((reply, Ok(Answer::Done), false, false));
    }

    /// A new snapshot thread for a state that starts at `applied_seq` (after an install
    /// or a reseed, which stopped the last one).
    fn restart_snapshotter(&mut self, applied_seq: u64) {
        self.snapshotter = super::snapshotter::Snapshotter::start(
            self.dir.clone(),
            None,
            applied_seq,
            self.limits.snapshot_every_records,
            self.metrics.clone(),
        );
    }

    /// Like a failed write: the engine refuses every write from now on.
    fn stop_writing(&mut self, why: String) {
        tracing::error!(error = %why, "the engine stops writing");
        self.view.write().status.failed = Some(why.clone());
        self.failed = Some(why);
    }

    /// A secondary or standby assignment: checked against the epoch, held in memory
    /// and shown in the status, not logged (see the module doc).
    fn assign_in_memory(&mut self, a: RoleAssignment, reply: Reply) {
        if a.epoch < self.state.epoch {
            let e = SellError::Fenced(format!(
                "epoch {} is older than this node's {}",
                a.epoch, self.state.epoch
            ));
            self.pending.push((reply, Err(e), false, false));
            return;
        }
        if self.state.role == Role::Primary {
            // A clean step-down: the lease goes with the role, so it is over at once.
            self.lease.release();
        }
        self.state.role = a.role;
        self.state.epoch = a.epoch;
        self.state.primary_url = a.primary_url.clone();
        {
            let mut view = self.view.write();
            view.status.role = a.role;
            view.status.epoch = a.epoch;
            view.status.primary_url = a.primary_url;
        }
        self.pending.push((reply, Ok(Answer::Done), false, false));
    }
}
