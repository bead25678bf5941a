//! The live stream on a secondary: SUBSCRIBE to the sale's channel, hand each message
//! to the follower through a bounded queue, reconnect with backoff when Redis goes
//! away. It decodes each message (checksum, the sale's signature, the batch): one that
//! does not decode is dropped here and counted as damaged, so a flood of them cannot
//! fill the queue. Whatever it could not deliver (a full queue, a lost connection) it
//! reports as `lost`, and the follower repairs it by catch-up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use flashsale_core::replication::{Message, decode_message};

use super::Stats;

/// What the follower hears from the stream.
#[derive(Debug)]
pub enum Event {
    /// (Re)subscribed: anything published before now may have been missed.
    Subscribed,
    /// One message, its checksum and signature checked and its batch decoded, and how
    /// many bytes it came in.
    Message(Message, usize),
}

/// Backoff between reconnect attempts, doubling from the first to the last.
const BACKOFF_FIRST_MS: u64 = 50;
const BACKOFF_MAX_MS: u64 = 2000;
/// A connect or SUBSCRIBE that takes longer is a failure.
const CONNECT_TIMEOUT_MS: u64 = 2000;

/// Where the stream reports to.
pub struct StreamSink {
    /// The sale's key: only what it signed is queued.
    pub key: flashsale_core::replication::ChannelKey,
    pub events: mpsc::Sender<Event>,
    /// Set when something was not delivered; the follower clears it and catches up.
    pub lost: Arc<AtomicBool>,
    pub stats: Arc<Stats>,
}

/// Reads `channel` until `shutdown`, reconnecting forever (Redis may be restarted).
pub async fn run(
    client: redis::Client,
    channel: String,
    sink: StreamSink,
    shutdown: CancellationToken,
) {
    let mut backoff_ms = BACKOFF_FIRST_MS;
    while !shutdown.is_cancelled() {
        match subscribe(&client, &channel).await {
            Ok(pubsub) => {
                backoff_ms = BACKOFF_FIRST_MS;
                sink.stats.redis_connected.store(true, Relaxed);
                if sink.events.send(Event::Subscribed).await.is_err() {
                    return;
                }
                let mut messages = pubsub.into_on_message();
                loop {
                    let msg = tokio::select! {
                        m = messages.next() => m,
                        _ = shutdown.cancelled() => return,
                    };
                    let Some(msg) = msg else { break };
                    let bytes = msg.get_payload_bytes();
                    let message = match decode_message(&sink.key, bytes) {
                        Ok(m) => m,
                        Err(e) => {
                            // Maybe a batch the follower needed: the next one shows the
                            // gap, or the idle poll. Unsigned (a forgery) counts here
                            // too: either way, not the primary's batch as it sent it.
                            tracing::debug!(%channel, error = %e, "damaged replication message dropped");
                            sink.stats.damaged.inc();
                            continue;
                        }
                    };
                    match sink.events.try_send(Event::Message(message, bytes.len())) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => sink.lost.store(true, Relaxed),
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
                tracing::warn!(%channel, "replication stream lost its Redis connection; reconnecting");
            }
            Err(e) => tracing::debug!(%channel, error = %e, "replication stream cannot subscribe"),
        }
        sink.stats.redis_connected.store(false, Relaxed);
        sink.lost.store(true, Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
    }
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
) -> Result<redis::aio::PubSub, super::ReplError> {
    let attempt = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), attempt).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(super::ReplError::RedisTimeout(CONNECT_TIMEOUT_MS)),
    }
}
