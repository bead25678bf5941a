//! Replication counters and gauges: one shared [`Stats`] that the publisher, the
//! follower and the quorum gate update, read by `/admin/v1/status` and `/metrics`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use flashsale_core::replication::{FollowState, PeerAck, ReplicationMode, ReplicationStatus};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Buckets of the lag histogram, in milliseconds (sub-millisecond is the norm on one host).
const LAG_BUCKETS_MS: [f64; 16] = [
    0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 50.0, 100.0, 500.0, 2000.0,
];

/// What this node knows of its replication, updated lock-free on the hot path.
pub struct Stats {
    pub mode: ReplicationMode,
    pub channel: String,
    pub redis_connected: AtomicBool,
    state: AtomicU8,
    /// Highest sequence the primary is known to have durable.
    pub primary_seq: AtomicU64,
    /// Sequences heard of (live stream or catch-up) with when this node first heard of
    /// them, oldest first, pruned as they are applied: `lagMs` is the age of the oldest
    /// one not applied yet, on this node's own clock (no two clocks compared).
    heard: Mutex<VecDeque<(u64, Instant)>>,
    pub gaps: Counter,
    pub duplicates: Counter,
    pub stale_epochs: Counter,
    pub damaged: Counter,
    pub published: Counter,
    pub publish_dropped: Counter,
    pub catchup_records: Counter,
    pub snapshots_installed: Counter,
    /// Publish (primary, after fsync) to applied and durable (secondary), in ms.
    pub lag_ms: Histogram,
    pub quorum_timeouts: Counter,
    pub peers: Mutex<Vec<(String, u64, std::time::Instant)>>,
    /// The last reseed of this node's log, and how many there were.
    last_reseed: Mutex<Option<flashsale_core::replication::Reseed>>,
    pub reseeds: Counter,
    applied_seq_gauge: Gauge,
    lag_records_gauge: Gauge,
}

impl Stats {
    pub fn new(mode: ReplicationMode, channel: String) -> Self {
        Self {
            mode,
            channel,
            redis_connected: AtomicBool::new(false),
            state: AtomicU8::new(0),
            primary_seq: AtomicU64::new(0),
            heard: Mutex::new(VecDeque::with_capacity(HEARD_MARKS_MAX)),
            gaps: Counter::default(),
            duplicates: Counter::default(),
            stale_epochs: Counter::default(),
            damaged: Counter::default(),
            published: Counter::default(),
            publish_dropped: Counter::default(),
            catchup_records: Counter::default(),
            snapshots_installed: Counter::default(),
            lag_ms: Histogram::new(LAG_BUCKETS_MS),
            quorum_timeouts: Counter::default(),
            peers: Mutex::new(Vec::new()),
            last_reseed: Mutex::new(None),
            reseeds: Counter::default(),
            applied_seq_gauge: Gauge::default(),
            lag_records_gauge: Gauge::default(),
        }
    }

    pub fn set_state(&self, s: FollowState) {
        let v = match s {
            FollowState::Idle => 0,
            FollowState::Bootstrapping => 1,
            FollowState::CatchingUp => 2,
            FollowState::Live => 3,
        };
        self.state.store(v, Relaxed);
    }

    pub fn state(&self) -> FollowState {
        match self.state.load(Relaxed) {
            1 => FollowState::Bootstrapping,
            2 => FollowState::CatchingUp,
            3 => FollowState::Live,
            _ => FollowState::Idle,
        }
    }

    /// Raises the primary's known sequence (never lowers it).
    pub fn saw_primary_seq(&self, seq: u64) {
        self.saw_primary_seq_at(seq, Instant::now());
    }

    /// [`Stats::saw_primary_seq`] at a given instant (tests).
    pub fn saw_primary_seq_at(&self, seq: u64, now: Instant) {
        if self.primary_seq.fetch_max(seq, Relaxed) >= seq {
            return;
        }
        let mut heard = self.heard.lock();
        if heard.len() >= HEARD_MARKS_MAX
            && let Some(last) = heard.back_mut()
        {
            // Full: the newest mark takes the new sequence and keeps its older time, so
            // the age shown can only be too high, never too low.
            last.0 = seq;
        } else {
            heard.push_back((seq, now));
        }
    }

    /// Another primary (a new epoch or address) is followed from now on: what the last
    /// one was seen to hold says nothing of this one's log, which may be shorter (a
    /// failover that promoted a node without the old primary's last records). Kept, it
    /// showed this node lagging until the new primary passed the old one's end.
    pub fn forget_primary(&self) {
        self.primary_seq.store(0, Relaxed);
        self.heard.lock().clear();
    }

    /// Records that this node's log was moved aside and started again.
    pub fn reseeded(&self, r: flashsale_core::replication::Reseed) {
        self.reseeds.inc();
        *self.last_reseed.lock() = Some(r);
    }

    /// Records a secondary's durability ack (primary side).
    pub fn peer_acked(&self, node: &str, durable_seq: u64) {
        let mut peers = self.peers.lock();
        let now = std::time::Instant::now();
        if let Some(p) = peers.iter_mut().find(|p| p.0 == node) {
            p.1 = p.1.max(durable_seq);
            p.2 = now;
        } else if peers.len() < PEERS_MAX {
            // Bounded: a sale has a handful of secondaries; a flood of names is not kept.
            peers.push((node.to_owned(), durable_seq, now));
        }
    }

    /// The status block, given the node's applied sequence.
    pub fn status(&self, applied_seq: u64) -> ReplicationStatus {
        self.status_at(applied_seq, Instant::now())
    }

    /// [`Stats::status`] at a given instant (tests).
    pub fn status_at(&self, applied_seq: u64, now: Instant) -> ReplicationStatus {
        let primary_seq = self.primary_seq.load(Relaxed).max(applied_seq);
        let lag_records = primary_seq - applied_seq;
        self.applied_seq_gauge.set(applied_seq as i64);
        self.lag_records_gauge.set(lag_records as i64);
        let lag_ms = {
            let mut heard = self.heard.lock();
            while heard.front().is_some_and(|(seq, _)| *seq <= applied_seq) {
                heard.pop_front();
            }
            match heard.front() {
                Some((_, since)) if lag_records > 0 => {
                    now.saturating_duration_since(*since).as_millis() as u64
                }
                _ => 0,
            }
        };
        ReplicationStatus {
            mode: self.mode,
            channel: self.channel.clone(),
            redis_connected: self.redis_connected.load(Relaxed),
            state: self.state(),
            applied_seq,
            primary_seq,
            lag_records,
            lag_ms,
            gaps: self.gaps.get(),
            duplicates: self.duplicates.get(),
            stale_epochs: self.stale_epochs.get(),
            damaged: self.damaged.get(),
            publish_dropped: self.publish_dropped.get(),
            peers: self
                .peers
                .lock()
                .iter()
                .map(|(node, durable_seq, at)| PeerAck {
                    node: node.clone(),
                    durable_seq: *durable_seq,
                    age_ms: at.elapsed().as_millis() as u64,
                })
                .collect(),
            reseeded: self.last_reseed.lock().clone(),
        }
    }

    /// Adds the replication metrics to the node's registry (`flashsale_replication_*`).
    /// The applied-sequence and lag gauges are refreshed by [`Stats::status`], which
    /// the `/metrics` handler calls before encoding.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("flashsale_replication");
        r.register(
            "applied_seq",
            "Highest WAL sequence applied on this node",
            self.applied_seq_gauge.clone(),
        );
        r.register(
            "lag_records",
            "Records the primary has durable that this node has not applied",
            self.lag_records_gauge.clone(),
        );
        r.register(
            "lag_ms",
            "Publish on the primary to applied and durable here, milliseconds",
            self.lag_ms.clone(),
        );
        r.register(
            "gaps",
            "Gaps in the live stream repaired by catch-up",
            self.gaps.clone(),
        );
        r.register(
            "duplicates",
            "Batches received again and ignored",
            self.duplicates.clone(),
        );
        r.register(
            "stale_epochs",
            "Batches from an older epoch, refused",
            self.stale_epochs.clone(),
        );
        r.register(
            "damaged",
            "Messages that failed their checksum, dropped",
            self.damaged.clone(),
        );
        r.register(
            "published",
            "Batches published (primary)",
            self.published.clone(),
        );
        r.register(
            "publish_dropped",
            "Batches not published, repaired by catch-up (primary)",
            self.publish_dropped.clone(),
        );
        r.register(
            "catchup_records",
            "Records fetched from the primary's WAL over HTTP",
            self.catchup_records.clone(),
        );
        r.register(
            "snapshots_installed",
            "Primary snapshots installed because catch-up needed compacted records",
            self.snapshots_installed.clone(),
        );
        r.register(
            "reseeds",
            "Times this node's log parted from its primary's and was moved aside",
            self.reseeds.clone(),
        );
        r.register(
            "quorum_timeouts",
            "Writes answered 503 for want of a secondary's ack",
            self.quorum_timeouts.clone(),
        );
    }
}

/// Most secondaries the primary keeps acks of.
const PEERS_MAX: usize = 64;
/// Most "heard of" marks kept for `lagMs` (one per live batch or catch-up answer until applied).
const HEARD_MARKS_MAX: usize = 1024;
