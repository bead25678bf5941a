//! The sequencer: one thread that owns the state and the WAL writer. It takes every
//! command queued (up to the batch limits), decides and applies each in order,
//! writes the batch, syncs once, publishes the changes to the read view, and only
//! then answers. Blocking file I/O stays on this thread, off the async workers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale_core::wal::{Record, RecordBody, encode_batch, encode_record};
use flashsale_core::{Durability, SellError};
use parking_lot::RwLock;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::clock::Clock;
use super::metrics::EngineMetrics;
use super::snapshot;
use super::snapshotter::Snapshotter;
use super::state::{Command, Decision, State};
use super::view::ReadView;
use super::{Answer, CommittedBatch};
use crate::lease::Lease;
use crate::wal::{SegmentWriter, WalDir, WalDirError};

/// Where a job's answer goes. A purchase's reply carries its key's place in the
/// in-flight filter (`super::InflightKey`), let go once the answer is sent — after the
/// read view has the batch — or the job is dropped.
pub(crate) struct Reply {
    pub tx: oneshot::Sender<Result<Answer, SellError>>,
    /// Held for its `Drop` only.
    pub _inflight: Option<super::InflightKey>,
}

impl Reply {
    /// Sends the answer; false when the request stopped waiting for it.
    pub fn send(self, answer: Result<Answer, SellError>) -> bool {
        self.tx.send(answer).is_ok()
    }
}

pub(crate) struct Job {
    pub cmd: Command,
    pub reply: Reply,
}

pub(crate) enum Msg {
    Job(Job),
    /// Drain what is queued, sync, snapshot, stop; then signal.
    Shutdown(oneshot::Sender<()>),
}

/// Limits and settings the sequencer needs from `EngineOptions`.
pub(crate) struct Limits {
    pub durability: Durability,
    pub batch_records_max: usize,
    pub batch_bytes_max: usize,
    /// `EngineOptions::tail_window_bytes`: the most one write may hold unsynced.
    pub tail_window_bytes: usize,
    pub expiry_tick_ms: u64,
    pub snapshot_every_records: u64,
    pub commit_interval_min: Duration,
}

pub(crate) struct Sequencer {
    pub state: State,
    pub writer: SegmentWriter,
    pub dir: Arc<dyn WalDir>,
    pub limits: Limits,
    pub clock: Arc<dyn Clock>,
    pub view: Arc<RwLock<ReadView>>,
    pub metrics: EngineMetrics,
    pub batches: broadcast::Sender<Arc<CommittedBatch>>,
    pub next_seq: u64,
    pub records_since_snapshot: u64,
    /// Takes periodic snapshots off this thread (see `engine::snapshotter`).
    pub snapshotter: Snapshotter,
    /// Why the engine stopped writing, after a failed write or sync.
    pub failed: Option<String>,
    /// Frames of the batch being built.
    pub buf: Vec<u8>,
    pub batch_first_seq: u64,
    /// When the batch being built got its first record (`begin_record`;
    /// `EngineMetrics::batch_apply_us`).
    pub batch_started: Instant,
    /// Syncs were wanted when the batch being built got its first record: it is synced
    /// even if a record in it turns them off (a config to `no-sync`), since the
    /// commands before that one were decided, and are answered, as durable.
    pub batch_synced: bool,
    /// Answers held until the batch is durable: (reply, answer, carries a write,
    /// decided as a primary under its lease — checked again before it is sent).
    pub pending: Vec<(Reply, Result<Answer, SellError>, bool, bool)>,
    /// The selling lease (FAILOVER.md I1; `crate::lease`).
    pub lease: Arc<Lease>,
    /// The memory budget for new purchases, if any.
    pub memory: Option<Arc<crate::admission::MemoryBudget>>,
    /// The batch just made durable was made after the lease ended.
    pub fenced_batch: bool,
    /// When the last sync of a batch `paces_next` approved started: the next batch is
    /// taken no sooner than `commit_interval_min` after it (`pace`).
    pub paced_from: Option<Instant>,
}

/// Whether a command needs the selling lease on a primary: everything that answers a
/// client as a success (a replay of a stored order too: the order may not survive a
/// failover that fenced this node), and the sale's config.
fn needs_lease(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Purchase(_) | Command::Confirm(_) | Command::Cancel(_) | Command::Configure(_)
    )
}

/// A Linux scheduling policy for one of the engine's threads.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Policy {
    /// `SCHED_BATCH`: a wakeup does not preempt the running thread.
    Batch,
    /// `SCHED_IDLE`: runs only on CPU time nothing else wants.
    Idle,
}

/// Puts the calling thread under `policy` on Linux; elsewhere it keeps the default, as
/// it does (logged) if the kernel refuses.
pub(crate) fn thread_policy(name: &str, policy: Policy) {
    #[cfg(target_os = "linux")]
    {
        let policy = match policy {
            Policy::Batch => libc::SCHED_BATCH,
            Policy::Idle => libc::SCHED_IDLE,
        };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler(0, …) changes only the calling thread; `param` is a
        // valid sched_param that outlives the call.
        let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
        if rc != 0 {
            tracing::warn!(thread = name, error = %std::io::Error::last_os_error(), "the thread stays under the default scheduling policy");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (name, policy);
}

/// The sequencer is a batch thread (`SCHED_BATCH`): a command queued by an HTTP worker
/// wakes it without preempting that worker, so the worker goes on reading and queueing
/// requests until it has none left, and the sequencer then takes them all in one
/// batch. Under the default policy the woken sequencer ran at once, took the one
/// command queued, and the two threads switched per request when they share a core
/// (`make bench-node`: 4–5 records per batch and twice the CPU per purchase). A thread
/// that is running is not slowed: the policy only changes who yields on a wakeup.
fn batch_scheduling() {
    thread_policy("sequencer", Policy::Batch);
}

impl Sequencer {
    /// Runs until shutdown or until every handle is gone.
    pub fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        batch_scheduling();
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "sequencer runtime failed to start");
                return;
            }
        };
        rt.block_on(async move {
            let tick = Duration::from_millis(self.limits.expiry_tick_ms.max(1));
            loop {
                self.pace();
                let first = tokio::select! {
                    m = rx.recv() => m,
                    _ = tokio::time::sleep(tick) => {
                        self.expire_due();
                        self.commit();
                        continue;
                    }
                };
                let mut stop = match first {
                    None => break,
                    Some(Msg::Shutdown(done)) => Some(done),
                    Some(Msg::Job(job)) => {
                        self.expire_due();
                        self.handle(job);
                        None
                    }
                };
                if stop.is_some() {
                    rx.close();
                }
                let mut queued = 0i64;
                while !self.batch_full() {
                    match rx.try_recv() {
                        Ok(Msg::Job(job)) => {
                            queued += 1;
                            self.handle(job);
                        }
                        Ok(Msg::Shutdown(done)) => {
                            rx.close();
                            stop = Some(done);
                        }
                        Err(_) => break,
                    }
                }
                self.metrics.queue_len.set(queued);
                self.commit();
                if let Some(done) = stop {
                    // The queue is closed: finish what is left in it, then stop.
                    while let Ok(msg) = rx.try_recv() {
                        if let Msg::Job(job) = msg {
                            self.handle(job);
                        }
                        if self.pending.len() >= self.limits.batch_records_max {
                            self.commit();
                        }
                    }
                    self.commit();
                    self.snapshotter.stop();
                    self.snapshot();
                    let _ = done.send(());
                    return;
                }
            }
            self.commit();
        });
    }

    /// Group commit's pacing. After a primary's sync whose batch carried more than one
    /// client's command — buyers arriving together — the next batch is taken no sooner
    /// than `commit_interval_min` after that sync started, so the commands that arrive
    /// meanwhile share one sync (`paces_next` says when). An `fdatasync` costs the
    /// node's core about the same whatever it carries (the kernel's block I/O and the
    /// wakeups of both threads), so without pacing a moderate crowd paid for a sync
    /// every few purchases: at 20k purchases/s open loop, 5–8 records per sync and
    /// 40–42 µs of the node's CPU per purchase, against 23–26 records and 32–36 µs with
    /// a 1 ms interval (six alternating runs each way, `node/BENCHMARKS.md`, "What changed").
    ///
    /// A batch's answers wait at most the interval more. A lone client's purchases are
    /// held only when they come within the interval of a crowd's sync: a batch of one
    /// command (hold expiries the primary logs beside it do not count) is not followed
    /// by a wait. At the peak a sync cycle already takes longer than the interval.
    /// MySQL's `binlog_group_commit_sync_delay` and PostgreSQL's `commit_delay` (which
    /// also waits only when others are committing) are the same idea.
    fn pace(&mut self) {
        let Some(started) = self.paced_from.take() else {
            return;
        };
        let wait = self
            .limits
            .commit_interval_min
            .saturating_sub(started.elapsed());
        if !wait.is_zero() {
            // This thread does nothing else meanwhile: commands queue, and the
            // worker that queues them has the core.
            std::thread::sleep(wait);
        }
    }

    /// Whether the batch being committed is followed by `pace`'s wait: a primary's,
    /// synced, with more than one client's command in it, and not cut short by a batch
    /// limit (a full batch means more is queued than pacing would gather; waiting
    /// would only cap the rate). A secondary is not paced: its follower merges what
    /// queued while an apply ran into the next one (`replication::follower`), and a
    /// quorum write's answer on the primary waits for that apply.
    fn paces_next(&self) -> bool {
        let several_clients = self.pending.iter().filter(|p| p.2).nth(1).is_some();
        self.state.role == flashsale_core::admin::Role::Primary
            && several_clients
            && !self.batch_full()
    }

    /// The batch being built is at one of its limits: no more commands go into it.
    fn batch_full(&self) -> bool {
        self.pending.len() >= self.limits.batch_records_max
            || self.buf.len() >= self.limits.batch_bytes_max
    }

    fn sync_wanted(&self) -> bool {
        let sale = self
            .state
            .config
            .as_ref()
            .map_or(Durability::Fsync, |c| c.durability);
        self.limits.durability == Durability::Fsync && sale == Durability::Fsync
    }

    /// Whether this node is a primary that holds its lease now.
    fn selling(&self) -> bool {
        self.state.role == flashsale_core::admin::Role::Primary
            && self.lease.holds(self.state.epoch)
    }

    /// Logs an expiry for every hold that has run out (bounded per batch).
    fn expire_due(&mut self) {
        // Only the primary logs expiries, under its lease (a fenced primary writes
        // nothing a new primary would not have); a secondary gets them as records.
        if self.failed.is_some() {
            return;
        }
        let now = self.clock.now_ms();
        if !self.selling() {
            self.state
                .drop_ended_expiries(now, self.limits.batch_records_max.saturating_mul(4));
            return;
        }
        if self.state.next_expiry().is_none_or(|at| at > now) {
            return;
        }
        for (at, id) in self
            .state
            .take_due_expiries(now, self.limits.batch_records_max)
        {
            if self
                .write(RecordBody::Expire { order_id: id }, now)
                .is_err()
            {
                self.state.expire_later(at, id);
            }
        }
    }

    fn handle(&mut self, job: Job) {
        if let Some(why) = &self.failed {
            let _ = job.reply.send(Err(SellError::Unavailable(format!(
                "the WAL failed earlier: {why}"
            ))));
            return;
        }
        let Some(job) = self.replica_intercept(job) else {
            return;
        };
        let guarded =
            self.state.role == flashsale_core::admin::Role::Primary && needs_lease(&job.cmd);
        if guarded && !self.lease.holds(self.state.epoch) {
            let e = SellError::Fenced(format!(
                "this primary holds no selling lease for epoch {}: nothing is acknowledged; retry with the same idempotency key",
                self.state.epoch
            ));
            let _ = job.reply.send(Err(e));
            return;
        }
        let now = self.clock.now_ms();
        let answer = match self.state.decide(job.cmd, now) {
            Err(e) => Err(e),
            Ok(Decision::Replay(order)) => Ok(Answer::Replayed(order)),
            Ok(Decision::Nothing) => Ok(Answer::Done),
            // A new order past the memory budget: refused after every refusal of the
            // state's own, and never a retry (a replay, above).
            Ok(Decision::Write(RecordBody::Purchase { .. }))
                if let Some(full) = self.memory.as_ref().and_then(|m| m.refuse()) =>
            {
                Err(full)
            }
            Ok(Decision::Write(body)) => match self.write(body, now) {
                Err(e) => Err(e),
                Ok((seq, body)) => Ok(self.written_answer(seq, body)),
            },
        };
        let wrote = answer.is_ok();
        self.pending.push((job.reply, answer, wrote, guarded));
    }

    /// The answer to the command whose record `seq` was just written: a purchase's order
    /// as created, with the SKU, customer and key moved from the record (the request's
    /// own strings, which the purchase's HTTP worker allocated and so frees again: none
    /// is copied here, nor freed across threads); a confirm's or cancel's order now.
    fn written_answer(&self, seq: u64, body: RecordBody) -> Answer {
        match body {
            RecordBody::Purchase {
                sku,
                customer,
                idempotency_key,
                ..
            } => match self.state.orders.get(seq) {
                Some(o) => Answer::Order(o.order_with(sku, customer, idempotency_key)),
                None => Answer::Done,
            },
            RecordBody::Confirm { order_id } | RecordBody::Cancel { order_id } => {
                self.order_answer(order_id)
            }
            RecordBody::Configure { .. } | RecordBody::Role { .. } | RecordBody::Expire { .. } => {
                Answer::Done
            }
        }
    }

    /// The answer for order `id`, which a record just written made or changed.
    fn order_answer(&self, id: u64) -> Answer {
        match self.state.orders.get(id) {
            Some(o) => Answer::Order(self.state.api_order(o)),
            None => Answer::Done,
        }
    }

    /// Encodes and applies one record; returns its sequence and its body.
    fn write(&mut self, body: RecordBody, now: i64) -> Result<(u64, RecordBody), SellError> {
        let epoch = match &body {
            RecordBody::Role { assignment } => assignment.epoch.max(self.state.epoch),
            _ => self.state.epoch,
        };
        let rec = Record {
            seq: self.next_seq,
            epoch,
            at_ms: now,
            body,
        };
        self.begin_record(rec.seq);
        encode_record(&rec, &mut self.buf).map_err(|e| SellError::BadRequest {
            field: "body".into(),
            reason: e.to_string(),
        })?;
        let seq = rec.seq;
        if let Err(e) = self.state.apply(&rec) {
            // decide() approved it, so this is a bug; stop writing rather than diverge.
            self.fail(e.to_string());
            return Err(SellError::Internal(e.to_string()));
        }
        self.next_seq += 1;
        Ok((seq, rec.body))
    }

    /// Before record `seq` goes into the batch being built: the first one starts it.
    /// Every path that adds to `buf` (this thread's own records, a secondary's
    /// replicated ones) calls this first.
    pub(crate) fn begin_record(&mut self, seq: u64) {
        if self.buf.is_empty() {
            self.batch_first_seq = seq;
            self.batch_started = Instant::now();
            self.batch_synced = self.sync_wanted();
        }
    }

    fn fail(&mut self, why: String) {
        tracing::error!(error = %why, "the engine stops writing");
        self.failed = Some(why.clone());
        self.view.write().status.failed = Some(why);
    }

    /// Writes and syncs the batch, publishes it, answers its commands.
    fn commit(&mut self) {
        if !self.buf.is_empty() && self.failed.is_none() {
            let applied = self.batch_started.elapsed();
            let records = self.next_seq - self.batch_first_seq;
            let paced = self.paces_next();
            let result = self.write_batch(paced);
            // Checked again now that the batch is durable: what was decided under the
            // lease but synced after it ended is not acknowledged, and not published.
            let lapsed = self.state.role == flashsale_core::admin::Role::Primary
                && !self.lease.holds(self.state.epoch);
            match result {
                Err(e) => self.fail(e.to_string()),
                Ok(()) => {
                    self.metrics.batches.inc();
                    self.metrics
                        .batch_apply_us
                        .observe(applied.as_micros() as f64);
                    self.metrics.records.inc_by(records);
                    self.metrics.batch_records.observe(records as f64);
                    self.metrics.batch_bytes.observe(self.buf.len() as f64);
                    self.publish();
                    if lapsed {
                        self.fenced_batch = true;
                    }
                    if !lapsed && self.batches.receiver_count() > 0 {
                        let last = self.next_seq - 1;
                        let bytes =
                            encode_batch(self.state.epoch, self.batch_first_seq, last, &self.buf);
                        let batch = CommittedBatch {
                            epoch: self.state.epoch,
                            first_seq: self.batch_first_seq,
                            last_seq: last,
                            bytes,
                        };
                        let _ = self.batches.send(Arc::new(batch));
                    }
                    self.records_since_snapshot += records;
                    self.snapshotter.committed(&self.state);
                }
            }
        }
        let failed = self.failed.clone();
        let fenced = std::mem::take(&mut self.fenced_batch)
            || (self.state.role == flashsale_core::admin::Role::Primary
                && !self.lease.holds(self.state.epoch));
        for (reply, answer, wrote, guarded) in self.pending.drain(..) {
            let answer = match (&failed, wrote) {
                (Some(why), true) => Err(SellError::Internal(format!("not durable: {why}"))),
                _ if guarded && fenced && answer.is_ok() => Err(SellError::Fenced(
                    "the selling lease ended before this was acknowledged: it is not; retry with the same idempotency key".into(),
                )),
                _ => answer,
            };
            let _ = reply.send(answer);
        }
        if self.buf.is_empty() || self.failed.is_some() {
            self.buf.clear();
            if self.failed.is_none() {
                // An idle engine too drops what a snapshot made durable since covers.
                self.compact();
            }
            return;
        }
        self.buf.clear();
        if let Err(e) = self.writer.roll_if_full(self.next_seq) {
            self.fail(e.to_string());
        }
        self.compact();
    }

    /// Appends the batch built in `buf` to the log and syncs it (when syncs are wanted).
    ///
    /// A batch over the tail window recovery cuts as torn
    /// (`EngineOptions::tail_window_bytes`) — a secondary's replicated batches merged
    /// after a backlog, a catch-up read (up to 8 MiB), the queue drained at shutdown,
    /// never a primary's group commit — goes in pieces of at most that (whole
    /// records), each synced before the next. What power loss leaves unsynced is then at most one piece, which may reach
    /// the disk in any order, within the window. Written whole, a hole near its start
    /// with good records after it would be further from the end than that, and the node
    /// would refuse to start on a log it wrote itself.
    fn write_batch(&mut self, paced: bool) -> Result<(), WalDirError> {
        let sync = self.batch_synced || self.sync_wanted();
        let mut rest = &self.buf[..];
        while !rest.is_empty() {
            let piece = if sync {
                piece_len(rest, self.limits.tail_window_bytes)
            } else {
                rest.len()
            };
            self.writer.append(&rest[..piece])?;
            rest = &rest[piece..];
            if sync {
                let t0 = Instant::now();
                if paced {
                    self.paced_from = Some(t0);
                }
                self.writer.sync()?;
                self.metrics
                    .fsync_us
                    .observe(t0.elapsed().as_micros() as f64);
            }
        }
        Ok(())
    }

    /// Drops the segments the snapshot thread's last snapshots cover.
    fn compact(&mut self) {
        let covered = self
            .snapshotter
            .compact_to
            .load(std::sync::atomic::Ordering::SeqCst);
        if covered == 0 {
            return;
        }
        match self.writer.remove_covered(covered) {
            Ok(0) => {}
            Ok(_) => self.view.write().status.oldest_seq = self.writer.oldest_seq(),
            Err(e) => tracing::warn!(error = %e, "removing covered segments failed"),
        }
    }

    fn publish(&mut self) {
        let (items, orders, config_changed) = self.state.take_touched();
        if config_changed || items.iter().any(|&i| self.state.items[i].oversold()) {
            self.metrics
                .oversold
                .set(self.state.oversold_items() as i64);
        }
        let mut view = self.view.write();
        view.update(
            &self.state,
            &items,
            &orders,
            config_changed,
            self.next_seq - 1,
        );
        view.status.oldest_seq = self.writer.oldest_seq();
    }

    /// Writes a snapshot of the state here, on this thread (at shutdown), and drops
    /// the segments it and the fallback snapshot cover.
    fn snapshot(&mut self) {
        if self.failed.is_some() || self.records_since_snapshot == 0 {
            return;
        }
        let done = snapshot::write(&*self.dir, &self.state)
            .and_then(|oldest_kept| self.writer.remove_covered(oldest_kept));
        match done {
            Ok(_) => {
                self.records_since_snapshot = 0;
                self.metrics.snapshots.inc();
                self.view.write().status.oldest_seq = self.writer.oldest_seq();
            }
            // A missed snapshot only makes the next replay longer; keep selling.
            Err(e) => tracing::warn!(error = %e, "snapshot failed"),
        }
    }
}

/// The length of the first piece of `frames` to write and sync on its own: whole
/// frames up to `max` bytes, at least one (a frame that does not parse ends the piece
/// with the rest; the engine encoded them, so it does not happen).
fn piece_len(frames: &[u8], max: usize) -> usize {
    if frames.len() <= max {
        return frames.len();
    }
    let mut len = 0;
    while len < frames.len() {
        let Ok((_, used)) = flashsale_core::wal::peek_frame(&frames[len..]) else {
            return frames.len();
        };
        if len > 0 && len + used > max {
            break;
        }
        len += used;
    }
    len
}
