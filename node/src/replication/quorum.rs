//! Quorum mode: a write is acknowledged only once a secondary holds it durable.
//!
//! Secondaries publish cumulative acks (`{node, epoch, durableSeq}`) to the channel
//! `<wal channel>:ack` after each durable apply, and again every [`ACK_REPEAT_MS`] so
//! a lost ack is made good. The primary subscribes to it and keeps the highest
//! sequence acked in its own epoch; the HTTP layer holds back a successful write's answer
//! until that covers it (`crate::http::replication::hold_and_mark`), and answers 503 `unavailable` after the timeout instead of
//! acknowledging a sale only one disk has. The write itself stays in the primary's
//! WAL; a retry with the same idempotency key returns its outcome once acked.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use flashsale_core::replication::{Ack, ChannelKey, ReplicationMode};
use futures::StreamExt;
use redis::AsyncCommands;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Stats;

/// A secondary repeats its ack this often even without news.
pub const ACK_REPEAT_MS: u64 = 200;
const REDIS_TIMEOUT_MS: u64 = 1000;
const BACKOFF_MAX_MS: u64 = 2000;

type SeqFn = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The primary's view of its secondaries' acks, and the wait on it.
pub struct QuorumGate {
    pub mode: ReplicationMode,
    pub timeout: Duration,
    /// (epoch, highest durable sequence acked in that epoch).
    acked: watch::Sender<(u64, u64)>,
    /// The node's durable sequence and epoch, read when a write has been answered.
    durable_seq: SeqFn,
    epoch: SeqFn,
    stats: Arc<Stats>,
}

/// No secondary acked in time.
#[derive(Debug, thiserror::Error)]
#[error("no secondary acknowledged sequence {seq} within {timeout_ms} ms")]
pub struct QuorumTimeout {
    pub seq: u64,
    pub timeout_ms: u64,
}

impl QuorumGate {
    pub fn new(
        mode: ReplicationMode,
        timeout: Duration,
        durable_seq: SeqFn,
        epoch: SeqFn,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            mode,
            timeout,
            acked: watch::Sender::new((0, 0)),
            durable_seq,
            epoch,
            stats,
        }
    }

    /// Counts an ack (only from this node's epoch: an ack of another epoch's log says
    /// nothing about ours).
    pub fn on_ack(&self, ack: &Ack) {
        let epoch = (self.epoch)();
        if ack.epoch != epoch {
            return;
        }
        self.stats.peer_acked(&ack.node, ack.durable_seq);
        self.acked.send_if_modified(|cur| {
            let next = if cur.0 == epoch {
                (epoch, cur.1.max(ack.durable_seq))
            } else {
                (epoch, ack.durable_seq)
            };
            let changed = next != *cur;
            *cur = next;
            changed
        });
    }

    /// The node's durable sequence now (what a write answered now is covered by).
    pub fn durable_seq(&self) -> u64 {
        (self.durable_seq)()
    }

    /// Waits until a secondary acked `seq` durable in the current epoch.
    pub async fn wait(&self, seq: u64) -> Result<(), QuorumTimeout> {
        let epoch = (self.epoch)();
        let mut rx = self.acked.subscribe();
        let covered = rx.wait_for(|&(e, s)| e == epoch && s >= seq);
        match tokio::time::timeout(self.timeout, covered).await {
            Ok(Ok(_)) => Ok(()),
            _ => {
                self.stats.quorum_timeouts.inc();
                Err(QuorumTimeout {
                    seq,
                    timeout_ms: self.timeout.as_millis() as u64,
                })
            }
        }
    }
}

/// Primary: listens to the ack channel until `shutdown`, reconnecting with backoff. Only
/// acks signed with `key` count: an unsigned one (anyone who can reach the Redis could
/// send it) would let a write be acknowledged that no secondary holds.
pub async fn listen(
    client: redis::Client,
    ack_channel: String,
    key: ChannelKey,
    gate: Arc<QuorumGate>,
    shutdown: CancellationToken,
) {
    let mut backoff_ms = 50;
    while !shutdown.is_cancelled() {
        let sub = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&ack_channel).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        if let Ok(Ok(ps)) = tokio::time::timeout(Duration::from_millis(REDIS_TIMEOUT_MS), sub).await
        {
            backoff_ms = 50;
            let mut msgs = ps.into_on_message();
            loop {
                let m = tokio::select! {
                    m = msgs.next() => m,
                    _ = shutdown.cancelled() => return,
                };
                let Some(m) = m else { break };
                match Ack::decode(&key, m.get_payload_bytes()) {
                    Ok(ack) => gate.on_ack(&ack),
                    Err(e) => tracing::debug!(error = %e, "ack refused"),
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
    }
}

/// Where and as whom a secondary acks.
pub struct AckTarget {
    pub client: redis::Client,
    pub ack_channel: String,
    /// This node's name.
    pub node: String,
    /// The sale's key, which signs the acks.
    pub key: ChannelKey,
    /// The epoch of this node's record at a sequence (its own log's, not its current
    /// epoch): an ack says "I hold your log up to here" only once this node's log has
    /// a record of the primary's epoch, whose crossing the follower checked. Stamped
    /// with the node's current epoch, a node re-pointed at a new primary acked its
    /// old primary's log as the new one's, before comparing the two.
    pub epoch_at: Arc<dyn Fn(u64) -> Option<u64> + Send + Sync>,
    /// Ack each change at once (quorum), not only every [`ACK_REPEAT_MS`].
    pub eager: bool,
}

/// Secondary: publishes this node's durable sequence every [`ACK_REPEAT_MS`], and with
/// `eager` (quorum mode) also on each change, until `shutdown`. In async mode the acks
/// only feed the primary's `peers` status, so they need not cost a message per batch.
pub async fn send_acks(
    to: AckTarget,
    mut durable: watch::Receiver<u64>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    let AckTarget {
        client,
        ack_channel,
        node,
        key,
        epoch_at,
        eager,
    } = to;
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    loop {
        tokio::select! {
            changed = durable.changed(), if eager => {
                if changed.is_err() {
                    // The follower is gone (its supervisor starts another, with acks).
                    return;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(ACK_REPEAT_MS)) => {}
            _ = shutdown.cancelled() => return,
        }
        let seq = *durable.borrow_and_update();
        let Some(epoch) = epoch_at(seq) else {
            continue;
        };
        if conn.is_none() {
            let c = tokio::time::timeout(
                Duration::from_millis(REDIS_TIMEOUT_MS),
                client.get_multiplexed_async_connection(),
            )
            .await;
            conn = c.ok().and_then(Result::ok);
        }
        let Some(c) = conn.as_mut() else { continue };
        if shutdown.is_cancelled() {
            // Following another primary now: nothing more for this one.
            return;
        }
        let ack = Ack {
            node: node.clone(),
            epoch,
            durable_seq: seq,
        };
        let sent = tokio::time::timeout(
            Duration::from_millis(REDIS_TIMEOUT_MS),
            c.publish::<_, _, i64>(&ack_channel, ack.encode(&key)),
        )
        .await;
        if !matches!(sent, Ok(Ok(_))) {
            stats.redis_connected.store(false, Relaxed);
            conn = None;
        }
    }
}
