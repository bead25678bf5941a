//! Starts and steers a node's replication tasks: the publisher and the quorum ack
//! listener while the node is the primary, the follower (stream, catch-up, acks)
//! while it is a secondary of a known primary. Roles change under it (promotion,
//! a new primary): it watches the engine and restarts the follower on any change.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use std::time::Duration;

use flashsale_core::admin::Role;
use flashsale_core::replication::{
    ChannelKey, FollowState, ReplicationMode, ReplicationStatus, ack_channel, default_channel,
};
use flashsale_core::wal::Batch;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::catchup::PrimaryClient;
use super::follower::{Follower, Readiness, ReadyMark, Replica};
use super::quorum::{self, QuorumGate};
use super::stream::{self, StreamSink};
use super::{ReplError, ReplicationArgs, Stats, publisher};
use crate::engine::EngineHandle;

/// How often the supervisor looks at the engine's role.
const ROLE_POLL_MS: u64 = 100;
/// How long a re-pointed follower, aborted, is waited for before the next one starts
/// (an abort ends it at its next await; this bounds a blocking step).
const FOLLOWER_END_WAIT: Duration = Duration::from_secs(5);
/// How long a reseed a replaced follower began is waited for (it moves the log aside a
/// synced file at a time).
const RESEED_END_WAIT: Duration = Duration::from_secs(60);

impl Replica for EngineHandle {
    fn applied_seq(&self) -> u64 {
        self.positions().applied_seq
    }
    fn epoch(&self) -> u64 {
        self.positions().epoch
    }
    async fn install_snapshot(&self, bytes: Vec<u8>) -> Result<u64, ReplError> {
        EngineHandle::install_snapshot(self, bytes)
            .await
            .map_err(|e| ReplError::Apply(format!("snapshot: {e}")))
    }
    fn history(&self) -> Vec<flashsale_core::replication::EpochStart> {
        self.status().epochs
    }
    async fn reseed(&self, aside: String) -> Result<(), ReplError> {
        EngineHandle::reseed(self, aside)
            .await
            .map_err(|e| ReplError::Apply(format!("reseed: {e}")))
    }
    async fn apply(&self, batch: Batch) -> Result<u64, ReplError> {
        let (first, last) = (batch.first_seq, batch.last_seq);
        self.apply_replicated(batch).await.map_err(|e| match e {
            flashsale_core::SellError::Fenced(why) => {
                ReplError::Apply(format!("batch {first}..={last} refused: {why}"))
            }
            e => ReplError::Apply(format!("batch {first}..={last}: {e}")),
        })
    }
}

/// A node's replication, running. Cheap to clone.
#[derive(Clone)]
pub struct Replication {
    pub stats: Arc<Stats>,
    pub gate: Arc<QuorumGate>,
    engine: EngineHandle,
    /// A secondary is ready once the follower that runs now has caught up with its
    /// primary; other roles always are.
    caught_up: Readiness,
    /// Held by a follower's reseed to its end (`Follower::reseeding`).
    reseeding: Arc<tokio::sync::Mutex<()>>,
}

impl Replication {
    /// Spawns the tasks (on the current tokio runtime); they stop on `shutdown`.
    pub fn start(
        engine: EngineHandle,
        args: &ReplicationArgs,
        admin_token: Option<String>,
        shutdown: CancellationToken,
    ) -> Result<Self, ReplError> {
        let channel = args
            .redis_channel
            .clone()
            .or_else(|| engine.status().sale.map(|s| default_channel(&s)));
        let stats = Arc::new(Stats::new(
            args.replication,
            channel.clone().unwrap_or_default(),
        ));
        let (e1, e2) = (engine.clone(), engine.clone());
        let gate = Arc::new(QuorumGate::new(
            args.replication,
            args.quorum_timeout(),
            Arc::new(move || e1.positions().durable_seq),
            Arc::new(move || e2.positions().epoch),
            stats.clone(),
        ));
        let me = Replication {
            stats,
            gate,
            engine: engine.clone(),
            caught_up: Readiness::default(),
            reseeding: Arc::new(tokio::sync::Mutex::new(())),
        };
        let redis = args
            .redis_url
            .as_deref()
            .map(redis::Client::open)
            .transpose()?;
        let redis = match (redis, &channel) {
            (Some(_), None) => {
                tracing::error!(
                    "--redis-url without --redis-channel on a node with no sale yet: replicating by catch-up only"
                );
                None
            }
            (r, _) => r,
        };
        if let (Some(client), Some(channel)) = (&redis, &channel) {
            let key = ChannelKey::new(admin_token.as_deref().unwrap_or_default(), channel);
            let e = engine.clone();
            tokio::spawn(publisher::run(
                client.clone(),
                channel.clone(),
                key.clone(),
                engine.subscribe_batches(),
                move || e.positions().role == Role::Primary,
                me.stats.clone(),
                shutdown.clone(),
            ));
            tokio::spawn(quorum::listen(
                client.clone(),
                ack_channel(channel),
                key.clone(),
                me.gate.clone(),
                shutdown.clone(),
            ));
        }
        tokio::spawn(
            me.clone()
                .supervise(args.clone(), redis, channel, admin_token, shutdown),
        );
        Ok(me)
    }

    /// The `replication` block of `/admin/v1/status`.
    pub fn status(&self, applied_seq: u64) -> ReplicationStatus {
        let mut s = self.stats.status(applied_seq);
        if self.engine.positions().role == Role::Primary {
            s.primary_seq = applied_seq;
            s.lag_records = 0;
            s.lag_ms = 0;
        } else {
            // Every node hears the acks (it may be promoted); only a primary's count.
            s.peers.clear();
        }
        s
    }

    /// Why `/readyz` should say no, if it should.
    /// The follower has caught up with its primary (meaningful on a secondary).
    pub fn caught_up(&self) -> bool {
        self.caught_up.get()
    }

    pub fn not_ready(&self) -> Option<String> {
        let st = self.engine.status();
        (st.role == Role::Secondary && !self.caught_up.get())
            .then(|| format!("catching up with the primary ({:?})", st.primary_url))
    }

    /// Runs the follower while the node is a secondary with a primary to follow.
    async fn supervise(
        self,
        args: ReplicationArgs,
        redis: Option<redis::Client>,
        channel: Option<String>,
        admin_token: Option<String>,
        shutdown: CancellationToken,
    ) {
        // What is followed: epoch, primary URL, the token that stops it, the follower's
        // task (none if it could not start) and when it started.
        let mut current: Option<Following> = None;
        loop {
            // A follower that ended on its own (a panic, its stream closed) or never
            // started is started again, at most every FOLLOW_RETRY: a secondary must
            // not stop following while everything reads as live.
            if let Some(f) = &current
                && !f.stop.is_cancelled()
                && f.task.as_ref().is_none_or(|t| t.is_finished())
                && f.started.elapsed() >= FOLLOW_RETRY
            {
                tracing::error!(primary = %f.url, "the follower stopped; following again");
                if let Some(f) = current.take() {
                    f.stop.cancel();
                }
            }
            let st = self.engine.status();
            // Keeps the applied-sequence and lag gauges of `/metrics` fresh.
            let _ = self.stats.status(st.applied_seq);
            let want = match (st.role, st.primary_url) {
                (Role::Secondary, Some(url)) => Some((st.epoch, url)),
                _ => None,
            };
            let same = match (&current, &want) {
                (Some(f), Some((we, wu))) => f.epoch == *we && f.url == *wu,
                (None, None) => true,
                _ => false,
            };
            if !same {
                // Not ready from the moment it is re-pointed (a reseed may be emptying
                // the log while the old follower ends), and only the next follower's
                // mark counts from now: the old one may still mark itself caught up
                // on another worker thread before its abort takes.
                let ready = self.caught_up.next();
                if let Some(f) = current.take() {
                    f.stop.cancel();
                    // Ended before the next one starts: a round it was in (a fetch, an
                    // apply) must not go on to mark the new one ready or raise what the
                    // new primary is seen to hold. Its engine commands already sent
                    // still complete (the engine orders them); a reseed, below.
                    if let Some(task) = f.task {
                        task.abort();
                        if tokio::time::timeout(FOLLOWER_END_WAIT, task).await.is_err() {
                            tracing::warn!(primary = %f.url, wait_ms = FOLLOWER_END_WAIT.as_millis() as u64,
                                "the follower being replaced did not end in time: the next one starts beside it");
                        }
                    }
                    // A reseed it began runs on to its end (`Follower::reseeding`): the
                    // next follower reads this node's positions only after it.
                    if tokio::time::timeout(RESEED_END_WAIT, self.reseeding.lock())
                        .await
                        .is_err()
                    {
                        tracing::warn!(
                            wait_ms = RESEED_END_WAIT.as_millis() as u64,
                            "a reseed of this node's log is still running: the next follower starts anyway (the engine refuses a batch that does not follow its log)"
                        );
                    }
                }
                self.stats.set_state(FollowState::Idle);
                self.stats.forget_primary();
                if let Some((epoch, url)) = want {
                    let stop = shutdown.child_token();
                    let task = match self.follow(
                        ready,
                        &args,
                        redis.clone(),
                        channel.clone(),
                        (epoch, &url),
                        admin_token.as_deref(),
                        stop.clone(),
                    ) {
                        Ok(task) => {
                            tracing::info!(primary = %url, epoch, "following the primary");
                            Some(task)
                        }
                        Err(e) => {
                            tracing::error!(primary = %url, error = %e, "cannot follow the primary");
                            None
                        }
                    };
                    current = Some(Following {
                        epoch,
                        url,
                        stop,
                        task,
                        started: std::time::Instant::now(),
                    });
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ROLE_POLL_MS)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn follow(
        &self,
        ready: ReadyMark,
        args: &ReplicationArgs,
        redis: Option<redis::Client>,
        channel: Option<String>,
        (epoch, primary_url): (u64, &str),
        admin_token: Option<&str>,
        stop: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, ReplError> {
        let key = ChannelKey::new(
            admin_token.unwrap_or_default(),
            channel.as_deref().unwrap_or_default(),
        );
        let primary =
            PrimaryClient::new(primary_url, admin_token.unwrap_or_default())?.at_epoch(epoch);
        let (tx, rx) = mpsc::channel(args.buffer_batches_max.max(1));
        let lost = Arc::new(AtomicBool::new(true));
        let (durable_tx, durable_rx) = watch::channel(0u64);
        if let (Some(client), Some(channel)) = (redis, channel) {
            let sink = StreamSink {
                key: key.clone(),
                events: tx,
                lost: lost.clone(),
                stats: self.stats.clone(),
            };
            tokio::spawn(stream::run(
                client.clone(),
                channel.clone(),
                sink,
                stop.clone(),
            ));
            let e = self.engine.clone();
            let to = quorum::AckTarget {
                client,
                ack_channel: ack_channel(&channel),
                node: args.node_name.clone(),
                key: key.clone(),
                epoch_at: Arc::new(move |seq| e.durable_epoch_at(seq)),
                eager: args.replication == ReplicationMode::Quorum,
            };
            tokio::spawn(quorum::send_acks(
                to,
                durable_rx,
                self.stats.clone(),
                stop.clone(),
            ));
        } else {
            // No Redis: the follower lives on catch-up alone (idle polls). Keep the
            // sender alive so the queue reads as quiet, not closed.
            tokio::spawn(async move {
                stop_hold(tx, durable_rx).await;
            });
        }
        let follower = Follower {
            replica: Arc::new(self.engine.clone()),
            primary,
            stats: self.stats.clone(),
            durable: durable_tx,
            idle_poll: Duration::from_millis(args.idle_poll_ms.max(10)),
            ready,
            reseeding: self.reseeding.clone(),
        };
        Ok(tokio::spawn(follower.run(rx, lost, stop)))
    }
}

/// The follower the supervisor runs (`Replication::supervise`).
struct Following {
    epoch: u64,
    url: String,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    started: std::time::Instant,
}

/// A follower that stopped on its own is started again no sooner than this after the
/// last start.
const FOLLOW_RETRY: Duration = Duration::from_secs(1);

async fn stop_hold(tx: mpsc::Sender<stream::Event>, _durable: watch::Receiver<u64>) {
    tx.closed().await;
}
