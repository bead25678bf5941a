//! The primary's publisher: PUBLISH each batch once it is durable, to the sale's
//! channel. Selling never waits on Redis: the engine hands batches over a bounded
//! broadcast queue; when the queue overflows or Redis is down, batches are dropped and
//! counted, and secondaries repair the gap from the primary's WAL.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use flashsale_core::replication::encode_message;
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

/// Publishes what `batches` yields (encoded WAL batches) while `is_primary()` holds.
pub async fn run<F>(
    client: redis::Client,
    channel: String,
    mut batches: broadcast::Receiver<Arc<CommittedBatch>>,
    is_primary: F,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) where
    F: Fn() -> bool + Send,
{
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    let mut retry_at = Instant::now();
    let mut backoff_ms = BACKOFF_FIRST_MS;
    loop {
        let batch = tokio::select! {
            b = batches.recv() => b,
            _ = shutdown.cancelled() => return,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                stats.publish_dropped.inc_by(n);
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if !is_primary() {
            continue;
        }
        if conn.is_none() {
            if Instant::now() < retry_at {
                stats.publish_dropped.inc();
                continue;
            }
            match connect(&client).await {
                Ok(c) => {
                    conn = Some(c);
                    backoff_ms = BACKOFF_FIRST_MS;
                    stats.redis_connected.store(true, Relaxed);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "publisher cannot reach Redis; dropping batches until it can");
                    stats.publish_dropped.inc();
                    retry_at = Instant::now() + Duration::from_millis(backoff_ms);
                    backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let msg = encode_message(now_us(), &batch.bytes);
        let sent = tokio::time::timeout(
            Duration::from_millis(PUBLISH_TIMEOUT_MS),
            c.publish::<_, _, i64>(&channel, msg),
        )
        .await;
        match sent {
            Ok(Ok(_)) => {
                stats.published.inc();
            }
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(%channel, "publish failed; secondaries will catch up from the WAL");
                stats.publish_dropped.inc();
                stats.redis_connected.store(false, Relaxed);
                conn = None;
                retry_at = Instant::now() + Duration::from_millis(backoff_ms);
            }
        };
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
