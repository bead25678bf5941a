//! Replication flags of `stock-node serve` (flattened into the node's own flags).

use std::time::Duration;

use clap::Args;
use flashsale_core::replication::{ReplicationMode, default_channel};

/// `--redis-url`, `--redis-channel`, `--replication`: where batches go and when a
/// write is acknowledged. Without `--redis-url` the node does not replicate over
/// pub/sub (a secondary then follows by polling the primary's WAL alone).
#[derive(Args, Clone, Debug)]
pub struct ReplicationArgs {
    /// Redis the sale's batches go through, e.g. `redis://redis:6379/`.
    #[arg(long, env = "STOCK_NODE_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Pub/sub channel of the sale's batches; default `flashsale:<sale>:wal`.
    #[arg(long, env = "STOCK_NODE_REDIS_CHANNEL")]
    pub redis_channel: Option<String>,
    /// `async`: answer after the local fsync (default). `quorum`: also wait for one
    /// secondary's durability ack, else answer 503.
    #[arg(long, env = "STOCK_NODE_REPLICATION", default_value = "async")]
    pub replication: ReplicationMode,
    /// How long a quorum write waits for a secondary's ack before answering 503.
    #[arg(long, env = "STOCK_NODE_QUORUM_TIMEOUT_MS", default_value_t = 2000)]
    pub quorum_timeout_ms: u64,
    /// This node's name in acks and status (the pod name on Kubernetes).
    #[arg(long, env = "STOCK_NODE_NAME", default_value = "stock-node")]
    pub node_name: String,
    /// Batches waiting to be applied while catching up; more is a gap, repaired by catch-up.
    #[arg(
        long = "replication-buffer-batches",
        env = "STOCK_NODE_REPLICATION_BUFFER_BATCHES",
        default_value_t = 4096
    )]
    pub buffer_batches_max: usize,
    /// A secondary with no live batch for this long asks the primary whether it missed one.
    #[arg(
        long = "replication-idle-poll-ms",
        env = "STOCK_NODE_REPLICATION_IDLE_POLL_MS",
        default_value_t = 1000
    )]
    pub idle_poll_ms: u64,
}

impl ReplicationArgs {
    /// The channel for `sale`.
    pub fn channel(&self, sale: &str) -> String {
        self.redis_channel
            .clone()
            .unwrap_or_else(|| default_channel(sale))
    }
    pub fn quorum_timeout(&self) -> Duration {
        Duration::from_millis(self.quorum_timeout_ms)
    }
}

impl Default for ReplicationArgs {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_channel: None,
            replication: ReplicationMode::Async,
            quorum_timeout_ms: 2000,
            node_name: "stock-node".into(),
            buffer_batches_max: 4096,
            idle_poll_ms: 1000,
        }
    }
}
