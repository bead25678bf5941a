//! Replication over Redis pub/sub, node side: the primary publishes each durable batch
//! ([`publisher`]); a secondary follows the live stream ([`stream`], [`follower`]) and
//! repairs every gap, reconnect or fresh start from the primary's WAL over HTTP
//! ([`catchup`]); in quorum mode the primary answers a write only once a secondary
//! acked it durable ([`quorum`]). [`stats`] is what `/admin/v1/status` and `/metrics`
//! show of it. The HTTP side (catch-up, snapshot and tail routes, the quorum hold)
//! lives with the rest of the node's HTTP surface, in `crate::http::replication`.
//!
//! Pub/sub delivers at most once, so nothing here trusts it for completeness: the live
//! stream only makes a secondary fast; the primary's WAL makes it correct.

pub mod catchup;
pub mod config;
pub mod follower;
pub mod publisher;
pub mod quorum;
pub mod runtime;
pub mod stats;
pub mod stream;

pub use config::ReplicationArgs;
pub use stats::Stats;

use flashsale_core::replication::ReplicationError as WireError;

/// Why a replication step failed. Every one of them is repaired by retrying (with
/// backoff) or by catch-up; none stops the node from selling.
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis: no answer within {0} ms")]
    RedisTimeout(u64),
    #[error("primary {url}: {reason}")]
    Primary { url: String, reason: String },
    #[error(
        "primary {url}: the WAL from {from} was compacted away and bootstrap is not possible: {reason}"
    )]
    Compacted {
        url: String,
        from: u64,
        reason: String,
    },
    #[error("damaged replication data: {0}")]
    Damaged(#[from] WireError),
    #[error("batch {first}..={last} does not follow {applied}")]
    Gap { applied: u64, first: u64, last: u64 },
    #[error(
        "a live batch of epoch {epoch} after records of epoch {after}: its boundary is checked by catching up"
    )]
    NewEpoch { epoch: u64, after: u64 },
    #[error("batch of epoch {theirs} is older than this node's epoch {mine}")]
    StaleEpoch { mine: u64, theirs: u64 },
    #[error("applying a batch: {0}")]
    Apply(String),
    #[error("this node's log parted from the primary's: {0}")]
    Diverged(String),
}

/// Microseconds since the Unix epoch, the unit of `sent_at_us`.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
