//! What the engine measures about itself, as prometheus-client metrics the HTTP side
//! registers in its registry with [`EngineMetrics::register`]. Clones share the values.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The engine's counters and histograms. All updated by the sequencer thread only.
#[derive(Clone, Debug)]
pub struct EngineMetrics {
    /// Records per group commit.
    pub batch_records: Histogram,
    /// Bytes per group commit.
    pub batch_bytes: Histogram,
    /// `fdatasync` latency in microseconds (not observed with `NoSync`).
    pub fsync_us: Histogram,
    /// The sequencer's time on a group commit's commands, from its first record to its
    /// write, in microseconds: deciding and applying them (a secondary: the primary's
    /// records), and whatever stalled that thread meanwhile (a page fault on fresh
    /// memory, the host taking the core). Every command in the batch waits for it,
    /// before the `fdatasync`. Observed once per batch written, as `batches` counts.
    pub batch_apply_us: Histogram,
    /// Group commits written.
    pub batches: Counter,
    /// Records written.
    pub records: Counter,
    /// Snapshots written.
    pub snapshots: Counter,
    /// Items with sold + held > stock. Must stay 0; anything else is a bug.
    pub oversold: Gauge,
    /// Commands waiting in the sequencer queue when a batch was taken.
    pub queue_len: Gauge,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        Self {
            batch_records: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            batch_bytes: Histogram::new(exponential_buckets(64.0, 4.0, 10)),
            fsync_us: Histogram::new(exponential_buckets(50.0, 2.0, 14)),
            batch_apply_us: Histogram::new(exponential_buckets(10.0, 2.0, 15)),
            batches: Counter::default(),
            records: Counter::default(),
            snapshots: Counter::default(),
            oversold: Gauge::default(),
            queue_len: Gauge::default(),
        }
    }
}

impl EngineMetrics {
    /// Registers every metric under `registry` (names get the registry's prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "engine_batch_records",
            "Records per group commit",
            self.batch_records.clone(),
        );
        registry.register(
            "engine_batch_bytes",
            "Bytes per group commit",
            self.batch_bytes.clone(),
        );
        registry.register(
            "engine_fsync_us",
            "fdatasync latency in microseconds",
            self.fsync_us.clone(),
        );
        registry.register(
            "engine_batch_apply_us",
            "Sequencer time from a group commit's first record to its write, microseconds",
            self.batch_apply_us.clone(),
        );
        registry.register(
            "engine_batches",
            "Group commits written",
            self.batches.clone(),
        );
        registry.register(
            "engine_records",
            "WAL records written",
            self.records.clone(),
        );
        registry.register(
            "engine_snapshots",
            "Snapshots written",
            self.snapshots.clone(),
        );
        registry.register(
            "oversold",
            "Items with sold + held above stock (must be 0)",
            self.oversold.clone(),
        );
        registry.register(
            "engine_queue_len",
            "Commands queued when a batch was taken",
            self.queue_len.clone(),
        );
    }
}
