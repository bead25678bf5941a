//! The secondary's loop: apply the primary's batches strictly in sequence order.
//!
//! Live batches come from the pub/sub [`stream`](super::stream); anything the stream
//! may have missed (a fresh start, a resubscribe, a full queue, a gap between two
//! batches, or a quiet stream that may have lost its last message) is fetched from the
//! primary's WAL by [`catchup`](super::catchup) before going on. Batches that arrive
//! meanwhile wait in the stream's bounded queue; those already applied are ignored.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

use flashsale_core::replication::{
    EpochStart, FollowState, Message, Reseed, common_prefix, epoch_at,
};
use flashsale_core::wal::Batch;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::catchup::{Fetched, PrimaryClient};
use super::stream::Event;
use super::{ReplError, Stats, now_us};

/// What the follower needs of the node's engine.
pub trait Replica: Send + Sync + 'static {
    /// Highest sequence applied here (and durable in this node's WAL).
    fn applied_seq(&self) -> u64;
    /// This node's fencing epoch.
    fn epoch(&self) -> u64;
    /// Applies `batch`, whose first record is `applied_seq() + 1`, to the state and to
    /// this node's WAL (same sequences and epochs), durably; returns the new durable
    /// sequence.
    fn apply(&self, batch: Batch) -> impl Future<Output = Result<u64, ReplError>> + Send;
    /// Replaces the state and the log with a primary's snapshot (bytes as served by
    /// `GET /admin/v1/snapshot`); returns the new applied sequence.
    fn install_snapshot(
        &self,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<u64, ReplError>> + Send;
    /// This node's epoch history.
    fn history(&self) -> Vec<EpochStart>;
    /// Moves the whole log aside into `aside/` and starts again empty.
    fn reseed(&self, aside: String) -> impl Future<Output = Result<(), ReplError>> + Send;
}

/// Most live messages merged into one apply (one fsync) when a backlog built up.
const MERGE_MESSAGES_MAX: usize = 256;
/// … and at most about this many bytes of them.
const MERGE_BYTES_MAX: usize = 8 << 20;
/// Catch-up rounds in one go before the live queue gets a turn (a primary under load
/// moves on while we read; the queue holds the rest).
const CATCHUP_ROUNDS_MAX: usize = 64;
/// Wait after a failed catch-up before the next attempt, doubling up to the max.
const RETRY_FIRST_MS: u64 = 50;
/// Catch-ups for what the stream lost (a full queue, a reconnect) are at least this far
/// apart.
const LOST_CATCHUP_EVERY: Duration = Duration::from_millis(100);
const RETRY_MAX_MS: u64 = 2000;

/// Whether the follower that runs now has caught up (`/readyz`, and whether a secondary
/// answers from its copy). Each follower marks its own generation: one being replaced
/// runs on another worker thread and may mark itself caught up after the supervisor
/// has moved on, and that must not count for the next (whose copy may be about to be
/// reseeded).
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    /// The generation of the follower that counts (0: none yet).
    current: Arc<AtomicU64>,
    /// The highest generation that marked itself caught up (0: none).
    ready: Arc<AtomicU64>,
}

impl Readiness {
    /// A new follower's mark: from now on only it counts, and it is not caught up.
    pub fn next(&self) -> ReadyMark {
        ReadyMark {
            generation: self.current.fetch_add(1, SeqCst) + 1,
            ready: self.ready.clone(),
        }
    }

    /// The follower that counts has caught up.
    pub fn get(&self) -> bool {
        let current = self.current.load(SeqCst);
        current != 0 && self.ready.load(SeqCst) == current
    }
}

/// One follower's side of [`Readiness`].
#[derive(Debug)]
pub struct ReadyMark {
    generation: u64,
    ready: Arc<AtomicU64>,
}

impl ReadyMark {
    pub fn set(&self, caught_up: bool) {
        if caught_up {
            // Never below a later follower's mark.
            self.ready.fetch_max(self.generation, SeqCst);
        } else {
            let _ = self
                .ready
                .compare_exchange(self.generation, 0, SeqCst, SeqCst);
        }
    }

    pub fn get(&self) -> bool {
        self.ready.load(SeqCst) == self.generation
    }
}

/// Everything the follower works with.
pub struct Follower<R> {
    pub replica: Arc<R>,
    pub primary: PrimaryClient,
    pub stats: Arc<Stats>,
    /// Durable sequence for the ack sender (quorum mode).
    pub durable: watch::Sender<u64>,
    pub idle_poll: Duration,
    /// Set once caught up for the first time (`/readyz`).
    pub ready: ReadyMark,
    /// Held by a reseed until it ends, past its follower's abort: the supervisor starts
    /// the next follower only once it can take it (`runtime`).
    pub reseeding: Arc<tokio::sync::Mutex<()>>,
}

impl<R: Replica> Follower<R> {
    /// Follows until `shutdown`. Never returns early: every failure is retried.
    pub async fn run(
        self,
        mut events: mpsc::Receiver<Event>,
        lost: Arc<AtomicBool>,
        shutdown: CancellationToken,
    ) {
        let mut need_catchup = true;
        // Whether this catch-up repairs what the live stream missed (a resubscribe, a
        // full queue, a quiet stream) rather than starting up; a gap between two live
        // batches is counted where it is seen.
        let mut repairing = false;
        // Records catch-up brought since it was last needed.
        let mut fetched = 0u64;
        let mut retry_ms = RETRY_FIRST_MS;
        // Before following, make sure this node's log is a prefix of the primary's.
        let mut check_history = true;
        // When the primary was last heard: a batch of its epoch or newer on the stream,
        // or a catch-up. A stream quiet for the idle poll, or carrying nothing of the
        // primary's (damaged or stale messages, a primary of another version), may have
        // lost a batch this node needs: ask the primary then, once per idle poll.
        let mut heard = Instant::now();
        let mut last_catchup = Instant::now()
            .checked_sub(LOST_CATCHUP_EVERY)
            .unwrap_or_else(Instant::now);
        loop {
            if check_history {
                match self.check_history().await {
                    Ok(()) => {
                        check_history = false;
                        // Acks say what this node holds from the start (a restarted,
                        // caught-up secondary has nothing new to apply), and after a
                        // reseed no longer what the old log held.
                        self.durable.send_replace(self.replica.applied_seq());
                    }
                    Err(e) => {
                        tracing::warn!(primary = self.primary.base_url(), error = %e, "cannot compare logs with the primary; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(retry_ms)) => {}
                            _ = shutdown.cancelled() => return,
                        }
                        retry_ms = (retry_ms * 2).min(RETRY_MAX_MS);
                        continue;
                    }
                }
            }
            // What the stream could not deliver, repaired at most every
            // LOST_CATCHUP_EVERY: a flood (replayed signed messages fill the queue too)
            // must not make every turn of this loop a request to the primary.
            if lost.load(Relaxed) && last_catchup.elapsed() >= LOST_CATCHUP_EVERY {
                last_catchup = Instant::now();
                lost.store(false, Relaxed);
                need_catchup = true;
                repairing = true;
            }
            if need_catchup {
                self.stats.set_state(FollowState::CatchingUp);
                match self.catch_up(&mut fetched, &shutdown).await {
                    Ok(true) => {
                        heard = Instant::now();
                        last_catchup = heard;
                        if repairing && fetched > 0 {
                            self.stats.gaps.inc();
                        }
                        (repairing, fetched) = (false, 0);
                        need_catchup = false;
                        retry_ms = RETRY_FIRST_MS;
                        self.ready.set(true);
                        self.stats.set_state(FollowState::Live);
                    }
                    // Not done yet: give the queue a turn, then go on reading.
                    Ok(false) => {}
                    Err(ReplError::Diverged(why)) => {
                        tracing::warn!(primary = self.primary.base_url(), %why, "the primary's log parted from this node's");
                        check_history = true;
                        // Paced like any failure: a primary whose status agrees with
                        // this log while its WAL answers say otherwise must not make
                        // this a loop of requests as fast as it can go.
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(retry_ms)) => {}
                            _ = shutdown.cancelled() => return,
                        }
                        retry_ms = (retry_ms * 2).min(RETRY_MAX_MS);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(primary = self.primary.base_url(), error = %e, "catch-up failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(retry_ms)) => {}
                            _ = shutdown.cancelled() => return,
                        }
                        retry_ms = (retry_ms * 2).min(RETRY_MAX_MS);
                        continue;
                    }
                }
            }
            let event = tokio::select! {
                e = events.recv() => e,
                // A loss to repair once the last catch-up is far enough behind.
                _ = tokio::time::sleep_until((last_catchup + LOST_CATCHUP_EVERY).into()), if lost.load(Relaxed) => continue,
                // Nothing of the primary's for an idle poll: ask it.
                _ = tokio::time::sleep_until((heard + self.idle_poll).into()) => {
                    heard = Instant::now();
                    (need_catchup, repairing) = (true, true);
                    continue
                }
                _ = shutdown.cancelled() => return,
            };
            match event {
                None => return,
                // The first subscription is part of starting up; a later one follows a
                // lost connection, whose batches catch-up now repairs.
                Some(Event::Subscribed) => {
                    repairing |= self.ready.get();
                    need_catchup = true;
                }
                Some(Event::Message(message, bytes)) => {
                    // A backlog is applied as one batch (one fsync here), like the
                    // primary's group commit.
                    let mut bytes_total = bytes;
                    let mut messages = vec![message];
                    while messages.len() < MERGE_MESSAGES_MAX && bytes_total < MERGE_BYTES_MAX {
                        match events.try_recv() {
                            Ok(Event::Message(m, bytes)) => {
                                bytes_total += bytes;
                                messages.push(m);
                            }
                            Ok(Event::Subscribed) => {
                                repairing = true;
                                need_catchup = true;
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    match self.on_messages(messages).await {
                        Ok(true) => heard = Instant::now(),
                        Ok(false) => {}
                        Err(e) => {
                            if let ReplError::Gap { .. } = e {
                                self.stats.gaps.inc();
                            }
                            tracing::debug!(error = %e, "live batch not applied; catching up");
                            need_catchup = true;
                        }
                    }
                }
            }
        }
    }

    /// Live messages in arrival order (decoded and checked by the stream): drop the
    /// stale-epoch ones (counted), skip what is applied already, merge the contiguous
    /// rest into one batch and apply it. A gap stops the merge: what came before it is
    /// applied, then `Gap` sends the follower to catch up. `Ok(true)`: one of them was
    /// new from the primary (its epoch or newer, past what this node applied).
    async fn on_messages(&self, messages: Vec<Message>) -> Result<bool, ReplError> {
        let mine = self.replica.epoch();
        let applied = self.replica.applied_seq();
        // The epoch of this node's last record: a live batch of a newer one starts where
        // another primary took over, and only the primary can say whether this log is a
        // prefix of its own there (a node that followed a fenced primary may hold records
        // the new one never had); catching up asks it (`prev_epoch`), the stream cannot.
        let last_epoch = epoch_at(&self.replica.history(), applied, applied).unwrap_or(0);
        let mut merged: Option<Batch> = None;
        let mut sent_at_us = Vec::with_capacity(messages.len());
        let mut gap = None;
        let mut heard = false;
        for msg in messages {
            let mut b = msg.batch;
            if b.epoch < mine {
                self.stats.stale_epochs.inc();
                continue;
            }
            self.stats.saw_primary_seq(b.last_seq);
            let next = merged.as_ref().map_or(applied, |m| m.last_seq) + 1;
            if b.last_seq < next {
                // (Not heard: a replayed old message must not keep the idle poll away.)
                self.stats.duplicates.inc();
                continue;
            }
            heard = true;
            if b.first_seq > next {
                gap = Some(ReplError::Gap {
                    applied: next - 1,
                    first: b.first_seq,
                    last: b.last_seq,
                });
                break;
            }
            let known = merged.as_ref().map_or(last_epoch, |m| m.epoch);
            if b.epoch > known {
                gap = Some(ReplError::NewEpoch {
                    epoch: b.epoch,
                    after: known,
                });
                break;
            }
            b.records.retain(|r| r.seq >= next);
            sent_at_us.push(msg.sent_at_us);
            match merged.as_mut() {
                None => {
                    b.first_seq = next;
                    merged = Some(b);
                }
                Some(m) => {
                    m.epoch = m.epoch.max(b.epoch);
                    m.last_seq = b.last_seq;
                    m.records.append(&mut b.records);
                }
            }
        }
        if let Some(batch) = merged {
            let durable = self.replica.apply(batch).await?;
            self.durable.send_replace(durable);
            let now = now_us();
            // Publish (primary's clock) to durable here (ours): meaningful where the two
            // clocks agree; the status's `lagMs` uses this node's clock alone.
            for sent in sent_at_us {
                let lag_us = (now - sent).max(0) as u64;
                self.stats.lag_ms.observe(lag_us as f64 / 1000.0);
            }
        }
        gap.map_or(Ok(heard), Err)
    }

    /// Applies the part of `batch` after this node's applied sequence. `Ok(false)` for
    /// a batch wholly applied already (a duplicate).
    async fn apply_new(&self, mut batch: Batch) -> Result<bool, ReplError> {
        let mine = self.replica.epoch();
        if batch.epoch < mine {
            return Err(ReplError::StaleEpoch {
                mine,
                theirs: batch.epoch,
            });
        }
        let applied = self.replica.applied_seq();
        if batch.last_seq <= applied {
            self.stats.duplicates.inc();
            return Ok(false);
        }
        if batch.first_seq > applied + 1 {
            return Err(ReplError::Gap {
                applied,
                first: batch.first_seq,
                last: batch.last_seq,
            });
        }
        if batch.first_seq <= applied {
            // Overlaps what catch-up already brought: keep only the new tail.
            batch.records.retain(|r| r.seq > applied);
            batch.first_seq = applied + 1;
        }
        let durable = self.replica.apply(batch).await?;
        self.durable.send_replace(durable);
        Ok(true)
    }

    /// Compares this node's epoch history with the primary's: if this node holds records
    /// the primary's log does not (an old primary's unacknowledged tail, or what it
    /// replicated from one), the log is moved aside and the node starts again from the
    /// primary's (FAILOVER.md I4). The dropped records are named in the status and logs.
    async fn check_history(&self) -> Result<(), ReplError> {
        // Taken before this node's log is read: a reseed still running (begun by a
        // follower replaced meanwhile, past the supervisor's wait) ends first.
        let held = self.reseeding.clone().lock_owned().await;
        let my_last = self.replica.applied_seq();
        if my_last == 0 {
            return Ok(());
        }
        let theirs = self.primary.status().await?;
        let mine = self.replica.history();
        let common = common_prefix(&mine, my_last, &theirs.epochs, theirs.durable_seq);
        if common >= my_last {
            return Ok(());
        }
        let mut dropped_epochs: Vec<u64> = (common + 1..=my_last)
            .filter_map(|seq| epoch_at(&mine, my_last, seq))
            .collect();
        dropped_epochs.dedup();
        let at_ms = now_us() / 1000;
        let kept_aside = format!("diverged-{at_ms}");
        tracing::warn!(
            common, dropped_from = common + 1, dropped_to = my_last, ?dropped_epochs, %kept_aside,
            "this node's log parted from the primary's: moving it aside and starting again from the primary's"
        );
        let report = Reseed {
            at_ms,
            common_seq: common,
            dropped_from: common + 1,
            dropped_to: my_last,
            dropped_epochs,
            kept_aside: kept_aside.clone(),
        };
        // The reseed and its report (the status and the Event naming the dropped
        // records) in a task of their own, holding `reseeding` to its end: a follower
        // re-pointed meanwhile is aborted (`runtime`), the engine finishes a reseed it
        // was sent anyway, and the report must not be lost between the two, nor the
        // next follower read this node's log before the reseed has emptied it.
        let (replica, stats) = (self.replica.clone(), self.stats.clone());
        // Empty from now: not ready (reads, the operator's view) until caught up again.
        self.ready.set(false);
        tokio::spawn(async move {
            let _held = held;
            replica.reseed(kept_aside).await?;
            stats.reseeded(report);
            Ok::<_, ReplError>(())
        })
        .await
        .map_err(|e| ReplError::Apply(format!("the reseed task ended: {e}")))??;
        Ok(())
    }

    /// Reads the primary's WAL until up to date (`Ok(true)`) or for a bounded number of
    /// rounds, or until `shutdown` (`Ok(false)`).
    async fn catch_up(
        &self,
        fetched: &mut u64,
        shutdown: &CancellationToken,
    ) -> Result<bool, ReplError> {
        for _ in 0..CATCHUP_ROUNDS_MAX {
            // Re-pointed at another primary (or stopping): not one more round of this
            // one's records.
            if shutdown.is_cancelled() {
                return Ok(false);
            }
            let applied = self.replica.applied_seq();
            let from = applied + 1;
            let prev_epoch = epoch_at(&self.replica.history(), applied, applied);
            match self.primary.fetch(from, prev_epoch).await? {
                Fetched::UpToDate { primary_seq } => {
                    self.stats.saw_primary_seq(primary_seq);
                    return Ok(true);
                }
                Fetched::Records { batch, primary_seq } => {
                    self.stats.saw_primary_seq(primary_seq);
                    let n = batch.records.len() as u64;
                    let last = batch.last_seq;
                    match self.apply_new(batch).await {
                        Ok(applied) => {
                            self.stats.catchup_records.inc_by(n);
                            if applied {
                                *fetched += n;
                            }
                            // This node now holds all the primary had durable when it
                            // answered; what came after is on the live stream, which
                            // was subscribed before catch-up began (a gap in it is
                            // repaired). Waiting for an answer with nothing newer
                            // instead never ends under a steady crowd: a rejoining
                            // node stayed "catching up" (not ready) for minutes.
                            if last >= primary_seq {
                                return Ok(true);
                            }
                        }
                        Err(ReplError::StaleEpoch { mine, theirs }) => {
                            self.stats.stale_epochs.inc();
                            return Err(ReplError::StaleEpoch { mine, theirs });
                        }
                        Err(e) => return Err(e),
                    }
                }
                Fetched::Compacted => {
                    // What we lack is only in the primary's snapshot now: bootstrap from it,
                    // then go on with the tail after it.
                    self.stats.set_state(FollowState::Bootstrapping);
                    let compacted = |reason: String| ReplError::Compacted {
                        url: self.primary.base_url().to_owned(),
                        from,
                        reason,
                    };
                    let bytes = self
                        .primary
                        .fetch_snapshot()
                        .await?
                        .ok_or_else(|| compacted("the primary has no snapshot".into()))?;
                    let seq = self
                        .replica
                        .install_snapshot(bytes)
                        .await
                        .map_err(|e| compacted(e.to_string()))?;
                    self.stats.snapshots_installed.inc();
                    self.durable.send_replace(seq);
                    tracing::info!(seq, "bootstrapped from the primary's snapshot");
                    self.stats.set_state(FollowState::CatchingUp);
                }
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashsale_core::replication::ReplicationMode;

    /// A follower being replaced that marks itself caught up after the next one began
    /// (another worker thread, its abort not yet taken) does not make the node ready,
    /// nor can it clear the next one's mark. With one flag shared by every follower,
    /// it did: the node answered from a copy about to be reseeded.
    #[test]
    fn only_the_follower_that_runs_now_makes_the_node_ready() {
        let r = Readiness::default();
        assert!(!r.get());
        let old = r.next();
        old.set(true);
        assert!(r.get());
        let new = r.next();
        assert!(
            !r.get(),
            "re-pointed: not ready until the new one catches up"
        );
        old.set(true);
        assert!(!r.get(), "the old follower's late mark does not count");
        new.set(true);
        assert!(r.get() && new.get());
        old.set(true);
        old.set(false);
        assert!(
            r.get(),
            "nor can the old one lower or clear the new one's mark"
        );
        new.set(false);
        assert!(!r.get());
    }

    /// A log of records 1..=5 of epoch 1, whose reseed takes a while (it says when
    /// it starts).
    struct SlowReseed(tokio::sync::mpsc::UnboundedSender<()>);

    impl Replica for SlowReseed {
        fn applied_seq(&self) -> u64 {
            5
        }
        fn epoch(&self) -> u64 {
            1
        }
        async fn apply(&self, _: Batch) -> Result<u64, ReplError> {
            Err(ReplError::Apply("not in this test".into()))
        }
        async fn install_snapshot(&self, _: Vec<u8>) -> Result<u64, ReplError> {
            Err(ReplError::Apply("not in this test".into()))
        }
        fn history(&self) -> Vec<EpochStart> {
            vec![EpochStart {
                epoch: 1,
                first_seq: 1,
            }]
        }
        async fn reseed(&self, _: String) -> Result<(), ReplError> {
            let _ = self.0.send(());
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(())
        }
    }

    /// A follower aborted mid-reseed (re-pointed at another primary: `runtime`) still
    /// reports the reseed the engine goes on to finish: the status and the Event name
    /// the records dropped.
    #[tokio::test]
    async fn a_reseed_cut_off_by_a_re_point_is_still_reported() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The primary's log parted from this node's after record 2 (epoch 2 from 3).
        let app = axum::Router::new().route(
            "/admin/v1/status",
            axum::routing::get(|| async {
                axum::Json(serde_json::json!({
                    "role": "primary", "epoch": 2, "appliedSeq": 4, "durableSeq": 4,
                    "items": [], "purchasesPerS": 0.0, "nowMs": 0,
                    "epochs": [{"epoch": 1, "firstSeq": 1}, {"epoch": 2, "firstSeq": 3}],
                }))
            }),
        );
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let stats = Arc::new(Stats::new(ReplicationMode::Async, "c".into()));
        let (started, mut reseed_started) = tokio::sync::mpsc::unbounded_channel();
        let reseeding = Arc::new(tokio::sync::Mutex::new(()));
        let follower = Follower {
            replica: Arc::new(SlowReseed(started)),
            primary: PrimaryClient::new(&format!("http://{addr}"), "t").unwrap(),
            stats: stats.clone(),
            durable: watch::channel(0).0,
            idle_poll: Duration::from_millis(100),
            ready: {
                let mark = Readiness::default().next();
                mark.set(true);
                mark
            },
            reseeding: reseeding.clone(),
        };
        let task = tokio::spawn(async move { follower.check_history().await });
        reseed_started.recv().await.unwrap();
        task.abort();
        let _ = task.await;
        // What the supervisor waits for before the next follower starts: the reseed's
        // end, with its report.
        let waited = tokio::time::timeout(Duration::from_secs(5), reseeding.lock()).await;
        assert!(waited.is_ok(), "the reseed holds the lock to its end");
        let r = stats.status(5).reseeded.expect("the reseed is reported");
        assert_eq!((r.common_seq, r.dropped_from, r.dropped_to), (2, 3, 5));
        assert_eq!(r.dropped_epochs, vec![1]);
        server.abort();
    }
}
