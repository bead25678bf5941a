//! The primary's publisher: PUBLISH each batch once it is durable, to the sale's
//! channel. Selling never waits on Redis: the engine hands batches over a bounded
//! broadcast queue; when the queue overflows or Redis is down, batches are dropped and
//! counted, and secondaries repair the gap from the primary's WAL.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use flashsale_core::replication::{ChannelKey, encode_message};
use redis::AsyncCommands;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{ReplError, Stats, now_us};
use crate::engine::CommittedBatch;

/// A PUBLISH (or a connect) that takes longer is a failure; the batch is dropped.
const PUBLISH_TIMEOUT_MS: u64 = 500;
/// After a failure, batches are dropped without trying Redis for this long, doubling.
const BACKOFF_FIRST_MS: u64 = 50;
const BACKOFF_MAX_MS: u64 = 2000;

/// How often an idle primary checks its Redis connection (connects, or PINGs), so
/// `redisConnected` is true from the start and turns false without waiting for a batch.
const KEEPALIVE_MS: u64 = 1000;

/// Publishes what `batches` yields (encoded WAL batches), signed with `key`, while
/// `is_primary()` holds.
pub async fn run<F>(
    client: redis::Client,
    channel: String,
    key: ChannelKey,
    mut batches: broadcast::Receiver<Arc<CommittedBatch>>,
    is_primary: F,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) where
    F: Fn() -> bool + Send,
{
    let mut link = Link {
        client,
        conn: None,
        retry_at: Instant::now(),
        backoff_ms: BACKOFF_FIRST_MS,
        stats,
    };
    let mut keepalive = tokio::time::interval(Duration::from_millis(KEEPALIVE_MS));
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let batch = tokio::select! {
            b = batches.recv() => b,
            _ = keepalive.tick() => {
                if is_primary() {
                    link.keepalive().await;
                }
                continue;
            }
            _ = shutdown.cancelled() => return,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                link.stats.publish_dropped.inc_by(n);
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if !is_primary() {
            continue;
        }
        let Some(c) = link.connection().await else {
            link.stats.publish_dropped.inc();
            continue;
        };
        let msg = encode_message(&key, now_us(), &batch.bytes);
        let sent = tokio::time::timeout(
            Duration::from_millis(PUBLISH_TIMEOUT_MS),
            c.publish::<_, _, i64>(&channel, msg),
        )
        .await;
        match sent {
            Ok(Ok(_)) => {
                link.stats.published.inc();
            }
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(%channel, "publish failed; secondaries will catch up from the WAL");
                link.stats.publish_dropped.inc();
                link.lost();
            }
        }
    }
}

/// The publisher's Redis connection, with its backoff and what it says of it in stats.
struct Link {
    client: redis::Client,
    conn: Option<redis::aio::MultiplexedConnection>,
    retry_at: Instant,
    backoff_ms: u64,
    stats: Arc<Stats>,
}

impl Link {
    /// The connection, connecting first if the backoff allows; `None` while Redis is out of reach.
    async fn connection(&mut self) -> Option<&mut redis::aio::MultiplexedConnection> {
        if self.conn.is_none() {
            if Instant::now() < self.retry_at {
                return None;
            }
            match connect(&self.client).await {
                Ok(c) => {
                    self.conn = Some(c);
                    self.backoff_ms = BACKOFF_FIRST_MS;
                    self.stats.redis_connected.store(true, Relaxed);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "publisher cannot reach Redis; dropping batches until it can");
                    self.lost();
                    return None;
                }
            }
        }
        self.conn.as_mut()
    }

    /// Connects if not connected, else PINGs: the connection's state is known without a batch.
    async fn keepalive(&mut self) {
        let fresh = self.conn.is_none();
        let Some(c) = self.connection().await else {
            return;
        };
        if fresh {
            return;
        }
        let pong = tokio::time::timeout(
            Duration::from_millis(PUBLISH_TIMEOUT_MS),
            redis::cmd("PING").query_async::<String>(c),
        )
        .await;
        if !matches!(pong, Ok(Ok(_))) {
            self.lost();
        }
    }

    fn lost(&mut self) {
        self.conn = None;
        self.stats.redis_connected.store(false, Relaxed);
        self.retry_at = Instant::now() + Duration::from_millis(self.backoff_ms);
        self.backoff_ms = (self.backoff_ms * 2).min(BACKOFF_MAX_MS);
    }
}

async fn connect(client: &redis::Client) -> Result<redis::aio::MultiplexedConnection, ReplError> {
    match tokio::time::timeout(
        Duration::from_millis(PUBLISH_TIMEOUT_MS),
        client.get_multiplexed_async_connection(),
    )
    .await
    {
        Ok(r) => Ok(r?),
        Err(_) => Err(ReplError::RedisTimeout(PUBLISH_TIMEOUT_MS)),
    }
}
