//! The selling engine: opens a data directory (snapshot + WAL replay, torn tail cut),
//! then runs one sequencer thread that applies commands in order and group-commits
//! them (one `fdatasync` per batch) before answering. Reads come from a view the
//! sequencer refreshes after each durable batch, never through its queue.
//!
//! Roles: a node sells only as [`Role::Primary`]. A fresh directory has no role
//! record; [`EngineOptions::initial_role`] then says what it starts as (the binary
//! passes `Primary` for a lone node, `None` under the operator, which leaves it
//! `Standby` until `set_role`). This default is not logged. A primary assignment
//! through [`EngineHandle::set_role`] is logged, and from then on the log decides; a
//! secondary or standby assignment is held in memory only (see `engine::replica`).
//! Neither is in the log, but a snapshot records the role the node has when it is
//! taken, so a restart from that snapshot starts with it (`engine::snapshotter`).
//!
//! Durability: a batch is synced unless `EngineOptions::durability` or the sale's
//! config says `NoSync` (either one suffices).
//!
//! Threads: the sequencer (state, WAL appends and syncs, answers) and a snapshot
//! thread (`engine::snapshotter`) that serializes and writes a copy the sequencer hands
//! it (the orders shared, not copied), so selling pauses only to copy a pointer per
//! order. Applying batch N+1 while batch N syncs is not
//! done: requests arriving during a sync queue up and form the next batch.
//!
//! Retention: segments are removed once both kept snapshots cover them; the open
//! segment is never removed. `read_from` below the oldest kept record is a gap
//! error (a secondary then needs a snapshot).
//!
//! Memory: every order ever taken stays in memory, held once and compactly (one
//! allocation of ~80 bytes, `orders::StoredOrder`, shared by the state, the read view
//! and a snapshot being written; found by id in a vector, `orders::OrderTable`); the
//! indexes point at it by id rather than copy its strings. A flash sale's orders are
//! bounded by its stock plus re-sold cancellations.

/// Orders copied per read-lock hold by [`Engine::ledger`].
const LEDGER_CHUNK: usize = 4096;

mod clock;
pub mod metrics;
pub mod orders;
pub mod replica;
mod sequencer;
pub mod snapshot;
mod snapshotter;
pub mod state;
mod view;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use flashsale_core::admin::{Role, RoleAssignment};
use flashsale_core::wal::encode_batch;
use flashsale_core::{Durability, ItemView, Order, PurchaseRequest, SaleConfig, SellError};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{broadcast, mpsc, oneshot};

pub use clock::{Clock, ManualClock, SystemClock};
pub use metrics::EngineMetrics;
pub use state::{ApplyError, Command};
pub use view::EngineStatus;

use crate::lease::Lease;
use crate::wal::{
    Frames, FsDir, ScanOptions, ScanReport, SegmentWriter, WalDir, WalDirError, list_segments,
};
use sequencer::{Job, Limits, Msg, Reply, Sequencer};
use snapshotter::Snapshotter;
use view::{ReadView, key_hash};

/// How to open an engine. Every limit has a default suited to one node on a small machine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Where segments and snapshots live (created if missing).
    pub data_dir: PathBuf,
    /// `NoSync` skips the per-batch `fdatasync` (benchmarks only: a power loss loses acknowledged sales).
    pub durability: Durability,
    /// Commands waiting for the sequencer; a full queue answers `Unavailable` at once.
    pub queue_len_max: usize,
    /// Most records in one group commit.
    pub batch_records_max: usize,
    /// Most bytes in one group commit (also how far from the end damage counts as a torn tail).
    pub batch_bytes_max: usize,
    /// A segment past this size is closed and a new one started.
    pub segment_bytes_max: u64,
    /// Records between snapshots, at least (bounds replay time). Snapshots are taken off the
    /// sequencer, and no more often than every half as many records as there are orders.
    pub snapshot_every_records: u64,
    /// How often idle holds are checked for expiry (busy batches check on every batch).
    pub expiry_tick_ms: u64,
    /// After a primary's group commit of more than one client's command, the next batch
    /// is taken no sooner than this after its sync started, so a crowd shares fewer
    /// `fdatasync`s (`Duration::ZERO`: at once; see `Sequencer::pace`).
    pub commit_interval_min: std::time::Duration,
    /// The role before any role is logged (see the module doc).
    pub initial_role: Option<Role>,
    /// Committed batches kept for slow `subscribe_batches` receivers before they lag.
    pub batch_channel_len: usize,
    /// The wall clock (tests inject a `ManualClock`).
    pub clock: Arc<dyn Clock>,
    /// Overrides `data_dir` with another directory implementation (tests: `MemDir`).
    pub dir: Option<Arc<dyn WalDir>>,
    /// The selling lease a primary needs to acknowledge a write (`crate::lease`); off
    /// by default (a lone node).
    pub lease: Arc<Lease>,
    /// Past it, a new purchase is refused (`crate::admission::MemoryBudget`); none by
    /// default.
    pub memory: Option<Arc<crate::admission::MemoryBudget>>,
}

impl std::fmt::Debug for dyn WalDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl EngineOptions {
    /// How far from a log's end damage counts as a torn tail: the unsynced end is at
    /// most one batch — its byte limit, plus the one record that may cross it and the
    /// expiries a batch starts with. The offline tools use the defaults' window.
    pub fn tail_window_bytes(&self) -> u64 {
        (self.batch_bytes_max + flashsale_core::wal::RECORD_BYTES_MAX + self.batch_records_max * 64)
            as u64
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            durability: Durability::Fsync,
            queue_len_max: 8192,
            batch_records_max: 4096,
            batch_bytes_max: 1 << 20,
            segment_bytes_max: 16 << 20,
            snapshot_every_records: 200_000,
            expiry_tick_ms: 100,
            commit_interval_min: std::time::Duration::from_millis(1),
            initial_role: None,
            batch_channel_len: 1024,
            clock: Arc::new(SystemClock),
            dir: None,
            lease: Arc::new(Lease::off()),
            memory: None,
        }
    }
}

/// Why the engine could not open or read its directory.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("WAL: {0}")]
    Wal(#[from] WalDirError),
    #[error("replay: {0}")]
    Replay(#[from] ApplyError),
    #[error("starting the sequencer thread: {0}")]
    Spawn(std::io::Error),
    #[error("the engine has stopped")]
    Stopped,
    /// Another process (or engine) has the directory open: two writers would interleave the log.
    #[error("{0} is in use by another stock node (LOCK is held)")]
    Locked(String),
}

/// How long [`lock_dir`] waits for a `LOCK` held by someone else before it refuses.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Takes the data directory's `LOCK` file (an advisory `flock`, released by the kernel
/// when the process dies, so a `kill -9` never leaves it stuck).
///
/// A lock held by someone else is waited for up to [`LOCK_WAIT`] before the open is
/// refused with [`EngineError::Locked`]: the lock belongs to the open file, so it
/// outlives its engine for a moment wherever a copy of the descriptor does — in a
/// process forked meanwhile by another thread that has not yet exec'd, or in a node
/// still exiting. A second writer holds it for good and is still refused.
fn lock_dir(path: &std::path::Path) -> Result<std::fs::File, EngineError> {
    let name = path.join("LOCK");
    let io = |e| EngineError::Wal(WalDirError::io(format!("lock {}", name.display()), e));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&name)
        .map_err(io)?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(EngineError::Locked(path.display().to_string()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
    }
}

/// A successful command's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Order(Order),
    /// The answer to a retry of something already done: a purchase's first answer (the
    /// order as created), or the order a repeated confirm or cancel already made so.
    Replayed(Order),
    Done,
}

/// An order as a command answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderAnswer {
    pub order: Order,
    /// A retry of what was already done (see [`Answer::Replayed`]).
    pub replayed: bool,
}

/// What [`EngineHandle::look_up`] found.
#[derive(Debug)]
pub enum Lookup {
    Found(Order),
    /// Not in this copy, which has applied records only up to `applied_seq`: the
    /// order may exist where the sale's state is.
    NotSeenYet {
        applied_seq: u64,
    },
    Unknown,
}

/// Where [`EngineHandle::front`] sends a purchase.
#[derive(Debug)]
pub enum Front {
    /// Answer this refusal at once.
    Refuse(SellError),
    /// Answer this stored order (an idempotent replay) at once.
    Replay(Order),
    /// Forward it to the primary at this base URL.
    Forward(String),
    /// Queue it in this node's engine.
    Engine,
}

/// One durable group commit, as replication will publish it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedBatch {
    pub epoch: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// `flashsale_core::wal::encode_batch` bytes (decode with `decode_batch`).
    pub bytes: Vec<u8>,
}

/// What opening found, for the logs.
#[derive(Clone, Debug, Default)]
pub struct OpenReport {
    pub snapshot_seq: Option<u64>,
    pub skipped_snapshots: Vec<String>,
    pub scan: ScanReport,
    pub replayed: u64,
}

pub struct Engine;

impl Engine {
    /// Opens (or creates) the data dir, replays snapshot + WAL (cutting a torn tail),
    /// starts the sequencer.
    pub fn open(opts: EngineOptions) -> Result<EngineHandle, EngineError> {
        Self::open_with_report(opts).map(|(h, _)| h)
    }

    /// [`Engine::open`], also saying what recovery found.
    pub fn open_with_report(
        opts: EngineOptions,
    ) -> Result<(EngineHandle, OpenReport), EngineError> {
        let dir: Arc<dyn WalDir> =
            match &opts.dir {
                Some(d) => d.clone(),
                None => Arc::new(FsDir::create(&opts.data_dir).map_err(|e| {
                    WalDirError::io(format!("create {}", opts.data_dir.display()), e)
                })?),
            };
        let lock = match &opts.dir {
            Some(_) => None,
            None => Some(lock_dir(&opts.data_dir)?),
        };
        let mut report = OpenReport::default();
        // Only space is at stake: a file that cannot be removed is named, not fatal.
        match snapshot::remove_unfinished(&*dir) {
            Ok(0) => {}
            Ok(n) => tracing::warn!(files = n, "removed snapshots a crash left half-written"),
            Err(e) => tracing::warn!(error = %e, "a snapshot a crash left half-written stays"),
        }
        let mut state =
            snapshot::load_newest(&*dir, &mut report.skipped_snapshots)?.unwrap_or_default();
        report.snapshot_seq = (state.applied_seq > 0).then_some(state.applied_seq);
        let scan_opts = ScanOptions {
            repair: true,
            // The unsynced end is at most one batch: its byte limit, plus the one record
            // that may cross it and the expiries a batch starts with.
            tail_window_bytes: opts.tail_window_bytes(),
            from_seq: state.applied_seq + 1,
        };
        let metrics = EngineMetrics::default();
        let mut replay_err = None;
        report.scan = crate::wal::scan(&*dir, &scan_opts, |rec| {
            if replay_err.is_none()
                && let Err(e) = state.apply(&rec)
            {
                replay_err = Some(e);
            }
            report.replayed += 1;
            Ok(())
        })?;
        if let Some(e) = replay_err {
            return Err(e.into());
        }
        let mut segments = list_segments(&*dir)?;
        let next_seq = state.applied_seq + 1;
        if report.scan.next_seq != next_seq {
            // The snapshot is ahead of the log (a NoSync tail lost): every segment is covered.
            for (_, name) in segments.drain(..) {
                dir.remove(&name)
                    .map_err(|e| WalDirError::io(format!("remove {name}"), e))?;
            }
        }
        // What was read back may be in the page cache only (a batch written and not
        // synced when the last run was killed): durable before anything is answered
        // from it or built on it.
        dir.sync_all()
            .map_err(|e| WalDirError::io(format!("sync {}", dir.describe()), e))?;
        // Where the last segment's records end (a preallocated one has zeros after them).
        let last_valid_bytes = segments.last().and_then(|(_, name)| {
            let found = report.scan.segments.iter().find(|s| s.name == *name);
            found.map(|s| s.valid_bytes)
        });
        let writer = SegmentWriter::open(
            dir.clone(),
            segments,
            last_valid_bytes,
            next_seq,
            opts.segment_bytes_max,
        )?;
        let snapshotter = Snapshotter::start(
            dir.clone(),
            report.snapshot_seq,
            state.applied_seq,
            opts.snapshot_every_records,
            metrics.clone(),
        );
        if state.role == Role::Standby
            && state.epoch == 0
            && let Some(r) = opts.initial_role
        {
            state.role = r;
        }
        state.rebuild_indexes();
        state.take_touched();
        metrics.oversold.set(state.oversold_items() as i64);
        let mut rv = ReadView::from_state(&state);
        rv.status.oldest_seq = writer.oldest_seq();
        let view = Arc::new(RwLock::new(rv));
        let (batches, _) = broadcast::channel(opts.batch_channel_len.max(1));
        let (tx, rx) = mpsc::channel(opts.queue_len_max.max(1));
        let seq = Sequencer {
            state,
            writer,
            dir: dir.clone(),
            limits: Limits {
                durability: opts.durability,
                batch_records_max: opts.batch_records_max.max(1),
                batch_bytes_max: opts.batch_bytes_max.max(1),
                tail_window_bytes: opts.tail_window_bytes() as usize,
                expiry_tick_ms: opts.expiry_tick_ms,
                snapshot_every_records: opts.snapshot_every_records,
                commit_interval_min: opts.commit_interval_min,
            },
            clock: opts.clock.clone(),
            view: view.clone(),
            metrics: metrics.clone(),
            batches: batches.clone(),
            next_seq,
            records_since_snapshot: 0,
            snapshotter,
            failed: None,
            buf: Vec::with_capacity(opts.batch_bytes_max.min(4 << 20)),
            batch_first_seq: next_seq,
            batch_started: std::time::Instant::now(),
            batch_synced: true,
            pending: Vec::with_capacity(opts.batch_records_max.min(65_536)),
            lease: opts.lease.clone(),
            memory: opts.memory.clone(),
            fenced_batch: false,
            paced_from: None,
        };
        let thread = std::thread::Builder::new()
            .name("sequencer".into())
            .spawn(move || seq.run(rx))
            .map_err(EngineError::Spawn)?;
        let inner = Inner {
            tx,
            lease: opts.lease.clone(),
            view,
            inflight_keys: Arc::new(InflightKeys::default()),
            metrics,
            batches,
            dir,
            thread: Mutex::new(Some(thread)),
            lock: Mutex::new(lock),
        };
        Ok((
            EngineHandle {
                inner: Arc::new(inner),
            },
            report,
        ))
    }
}

struct Inner {
    tx: mpsc::Sender<Msg>,
    lease: Arc<Lease>,
    view: Arc<RwLock<ReadView>>,
    /// Idempotency keys of purchases submitted and not yet answered.
    inflight_keys: Arc<InflightKeys>,
    metrics: EngineMetrics,
    batches: broadcast::Sender<Arc<CommittedBatch>>,
    dir: Arc<dyn WalDir>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Held while the sequencer may write; released once it has stopped.
    lock: Mutex<Option<std::fs::File>>,
}

impl Drop for Inner {
    /// The last handle gone: close the queue, let the sequencer answer what it holds
    /// and sync, and wait for it, so the directory is free for the next open.
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

/// The hash a purchase's key is filed and looked up by: its customer's key.
fn purchase_key_hash(req: &PurchaseRequest) -> u64 {
    key_hash(&req.customer, &req.idempotency_key)
}

/// How long after the sale window's end a secondary refuses a purchase as `ended` from
/// its copy; before, it forwards it (`EngineHandle::front`).
/// More than a caught-up copy lags its primary (~1 s at the most when idle) and than
/// the nodes' clocks differ.
pub const WINDOW_EDGE_MS: i64 = 5_000;

/// Slots of [`InflightKeys`] (4 bytes each).
const INFLIGHT_SLOTS: usize = 1 << 14;

/// The idempotency keys of purchases submitted and not yet answered, as a counting
/// filter: a counter per slot, the slot picked by bits of the key's hash. A key reads as
/// in flight while its slot counts above zero (two retries of one key may be in flight
/// at once). Another key in the same slot makes a false "in flight": the sold-out fast
/// path then leaves that purchase to the engine, which refuses it just the same — a
/// false answer is never given, only a fast one missed, for about one purchase in
/// `INFLIGHT_SLOTS / in flight`. No lock and no allocation per purchase; the mutex'd
/// hash map it replaces cost ~0.5 µs per purchase (`make bench-node` profile).
struct InflightKeys(Box<[AtomicU32]>);

impl Default for InflightKeys {
    fn default() -> Self {
        Self((0..INFLIGHT_SLOTS).map(|_| AtomicU32::new(0)).collect())
    }
}

impl InflightKeys {
    /// Bits 40–53 of the hash: apart from the key indexes' shard (bits 32–37) and
    /// tag (57–63), so keys that share a shard do not share a slot for it.
    fn slot_of(hash: u64) -> usize {
        (hash >> 40) as usize % INFLIGHT_SLOTS
    }

    fn may_hold(&self, hash: u64) -> bool {
        self.0[Self::slot_of(hash)].load(Ordering::SeqCst) > 0
    }
}

/// A purchase's key in [`Inner::inflight_keys`] from before it is queued until the
/// sequencer has answered it. It travels with the job's reply (`sequencer::Reply`), so a
/// request that stops waiting (cut off by the request timeout, or its client gone)
/// leaves its purchase in flight for as long as the engine may still commit it: a
/// retry meanwhile goes to the engine and gets that order, never "sold out" from the
/// fast path.
pub(crate) struct InflightKey {
    keys: Arc<InflightKeys>,
    slot: usize,
}

impl InflightKey {
    fn enter(keys: &Arc<InflightKeys>, hash: u64) -> Self {
        let slot = InflightKeys::slot_of(hash);
        keys.0[slot].fetch_add(1, Ordering::SeqCst);
        Self {
            keys: keys.clone(),
            slot,
        }
    }
}

impl Drop for InflightKey {
    fn drop(&mut self) {
        self.keys.0[self.slot].fetch_sub(1, Ordering::SeqCst);
    }
}

/// A cheap, cloneable handle to a running engine. Dropping the last clone stops the
/// sequencer (like `shutdown`, without the final snapshot) and waits for it.
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<Inner>,
}

impl EngineHandle {
    async fn submit(&self, cmd: Command) -> Result<Answer, SellError> {
        self.submit_with(cmd, None).await
    }

    /// [`Self::submit`], with the key the purchase holds in flight until the sequencer
    /// has answered it.
    async fn submit_with(
        &self,
        cmd: Command,
        inflight: Option<InflightKey>,
    ) -> Result<Answer, SellError> {
        let (tx, rx) = oneshot::channel();
        let reply = Reply {
            tx,
            _inflight: inflight,
        };
        self.inner
            .tx
            .try_send(Msg::Job(Job { cmd, reply }))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    SellError::Unavailable("the engine's queue is full".into())
                }
                mpsc::error::TrySendError::Closed(_) => {
                    SellError::Unavailable("the engine is shutting down".into())
                }
            })?;
        rx.await
            .map_err(|_| SellError::Unavailable("the engine stopped before answering".into()))?
    }

    async fn answer_of(&self, cmd: Command) -> Result<OrderAnswer, SellError> {
        self.order_answer_of(cmd, None).await
    }

    async fn order_answer_of(
        &self,
        cmd: Command,
        inflight: Option<InflightKey>,
    ) -> Result<OrderAnswer, SellError> {
        match self.submit_with(cmd, inflight).await? {
            Answer::Order(order) => Ok(OrderAnswer {
                order,
                replayed: false,
            }),
            Answer::Replayed(order) => Ok(OrderAnswer {
                order,
                replayed: true,
            }),
            Answer::Done => Err(SellError::Internal("no order in the answer".into())),
        }
    }

    /// First config or a change (stock can't drop below sold+held → `BadRequest{field:"items[i].stock"}`).
    pub async fn configure(&self, cfg: SaleConfig) -> Result<(), SellError> {
        self.submit(Command::Configure(cfg)).await.map(|_| ())
    }

    /// Holds stock for the buyer; answered only once durable. A retry with the same
    /// idempotency key and body gets the first answer (the order as created); a
    /// refused purchase is not stored, so its key stays free.
    pub async fn purchase(&self, req: PurchaseRequest) -> Result<Order, SellError> {
        self.purchase_answer(req).await.map(|a| a.order)
    }

    /// [`Self::purchase`], saying whether the answer is a replay (the HTTP layer marks
    /// it `Idempotent-Replayed: true`).
    pub async fn purchase_answer(&self, req: PurchaseRequest) -> Result<OrderAnswer, SellError> {
        let inflight = InflightKey::enter(&self.inner.inflight_keys, purchase_key_hash(&req));
        self.order_answer_of(Command::Purchase(req), Some(inflight))
            .await
    }

    /// The sold-out fast path: `Some(SoldOut)` when the purchase can be refused from
    /// the read view without a place in the queue — the item has nothing left, and no
    /// order holds the key, durable or on its way (a retry of a purchase that is still
    /// waiting for its sync must get that order, not "sold out"). The crowd that comes
    /// after the last unit is answered here. `None`: ask the engine.
    ///
    /// Why the in-flight check makes this safe: a purchase counts in the in-flight
    /// filter from before it is queued until the sequencer has answered it, whether or
    /// not its request still waits ([`InflightKey`]; a false "in flight" only sends a
    /// purchase on to the engine), and the sequencer updates the read view before it
    /// answers; so a key is always in one of the two.
    pub fn sold_out_early(&self, req: &PurchaseRequest) -> Option<SellError> {
        let hash = purchase_key_hash(req);
        if self.inner.inflight_keys.may_hold(hash) {
            return None;
        }
        let view = self.inner.view.read();
        let item = view.item(&req.sku)?;
        let (remaining, held) = (item.remaining, item.held);
        if remaining > 0
            || view
                .order_with_key(hash, &req.customer, &req.idempotency_key)
                .is_some()
        {
            return None;
        }
        // Units held can come back, and this very key may have bought one where this
        // node did not see it (a retry whose first answer was lost): only the sale's
        // own state can say "sold out" then (see [`Self::authoritative`]); other nodes
        // leave it to the engine, which refuses them `not_primary` or `fenced`.
        if held > 0 && self.authority_of(&view).is_err() {
            return None;
        }
        Some(SellError::SoldOut {
            sku: req.sku.clone(),
            remaining,
            requested: req.quantity,
        })
    }

    /// Whether this node's own state is the sale's: the primary, holding its selling
    /// lease (always, with the lease off). A secondary's or a parked standby's copy may
    /// lack what the primary has, and a primary whose lease lapsed may have been replaced
    /// by one that has sold since, so from any of them "no such order", or "sold out"
    /// while units are held, could be false. `Err`: what such a node answers instead (503
    /// `not_primary` or `fenced`: retry, with the same key).
    pub fn authoritative(&self) -> Result<(), SellError> {
        self.authority_of(&self.inner.view.read())
    }

    fn authority_of(&self, view: &ReadView) -> Result<(), SellError> {
        match view.status.role {
            Role::Primary if self.inner.lease.holds(view.status.epoch) => Ok(()),
            Role::Primary => Err(SellError::Fenced(format!(
                "this primary holds no selling lease for epoch {}: another may be selling; retry",
                view.status.epoch
            ))),
            _ => Err(SellError::NotPrimary {
                primary: view.status.primary_url.clone(),
            }),
        }
    }

    /// Where a purchase that passed the HTTP checks goes (see `crate::forward`). On the
    /// primary (and a standby, which refuses it in the engine): the sold-out fast path,
    /// else the engine. On a secondary that knows its primary: what its copy answers
    /// correctly — an unknown item, a quantity over the item's limit, the sale window
    /// (`ended` only more than [`WINDOW_EDGE_MS`] after the end), sold out with nothing
    /// held, the replay of a key one of its orders holds (or a conflict with it) — else
    /// forward; a copy not `caught_up` forwards everything but a quantity of 0. A
    /// copy behind its primary can only under-count what was sold, and with nothing
    /// held no unit can come back, so a late copy's sold out is still true (short of a
    /// stock increase it has not applied yet). Its config may be late too: an item just
    /// added or a window just moved reads as the old config until it applies.
    pub fn front(
        &self,
        req: &PurchaseRequest,
        now: flashsale_core::UnixMs,
        caught_up: bool,
    ) -> Front {
        let view = self.inner.view.read();
        let (Role::Secondary, Some(primary)) = (view.status.role, &view.status.primary_url) else {
            drop(view);
            return match self.sold_out_early(req) {
                Some(e) => Front::Refuse(e),
                None => Front::Engine,
            };
        };
        if !caught_up {
            // A copy still catching up (or about to be reseeded) answers nothing itself,
            // but a quantity of 0, wrong whatever the sale says: forwarded, it would
            // make the primary refuse the whole batch it travels in
            // (`http::public::check_batch`), the other buyers' operations with it. (The
            // primary names a key conflict first when the key is taken; this copy
            // cannot know that yet.)
            if req.quantity == 0 {
                return Front::Refuse(state::bad_quantity(0, 0));
            }
            return Front::Forward(primary.clone());
        }
        let hash = purchase_key_hash(req);
        if let Some(o) = view.order_with_key(hash, &req.customer, &req.idempotency_key) {
            return if view.sku(o.item) == Some(req.sku.as_str()) && o.quantity == req.quantity {
                Front::Replay(view.first_answer(o))
            } else {
                Front::Refuse(SellError::IdempotencyConflict(req.idempotency_key.clone()))
            };
        }
        let Some(item) = view.item(&req.sku) else {
            return Front::Refuse(SellError::UnknownItem(req.sku.clone()));
        };
        let limit = item.per_customer_limit;
        if req.quantity == 0 || (limit > 0 && req.quantity > limit) {
            // The engine's refusals; forwarding them costs the primary nothing it
            // would not spend on a refusal anyway, but a crowd should not reach it.
            return Front::Refuse(state::bad_quantity(req.quantity, limit));
        }
        // `ended` only away from the end: within `WINDOW_EDGE_MS` of it, a key the copy
        // has not applied yet may hold an order on the primary (bought just before the
        // end, its answer lost: the primary replays a key before it looks at the
        // window), and this node's clock is not the primary's. Before the start no
        // order exists, and `not_open` is not a final no (a client retries it): a
        // crowd waiting for the start is refused here, not sent to the primary.
        if let Some(cfg) = &view.status.config {
            if let Some(starts) = cfg.starts_at_ms
                && now < starts
            {
                return Front::Refuse(SellError::NotOpen {
                    starts_at_ms: starts,
                });
            }
            if let Some(ends) = cfg.ends_at_ms
                && now >= ends.saturating_add(WINDOW_EDGE_MS)
            {
                return Front::Refuse(SellError::Ended { ends_at_ms: ends });
            }
        }
        // Sold out only when no unit can come back: with units held, an expiry or a
        // cancel the copy has not seen yet may have freed one — and this very key may
        // have bought it (a retry whose first answer was lost) — so ask the primary.
        if item.remaining < req.quantity as u64 && item.held == 0 {
            return Front::Refuse(SellError::SoldOut {
                sku: req.sku.clone(),
                remaining: item.remaining,
                requested: req.quantity,
            });
        }
        Front::Forward(primary.clone())
    }

    /// The primary's base URL when this node is a secondary that forwards (confirms
    /// and cancels go there without looking at the local copy, which may not have the
    /// order yet).
    pub fn forward_target(&self) -> Option<String> {
        let view = self.inner.view.read();
        match view.status.role {
            Role::Secondary => view.status.primary_url.clone(),
            _ => None,
        }
    }

    /// Turns a reservation into a sale; confirming a confirmed order is an idempotent
    /// success (`replayed`).
    pub async fn confirm(&self, order_id: u64) -> Result<OrderAnswer, SellError> {
        self.answer_of(Command::Confirm(order_id)).await
    }

    /// Gives a reservation's units back; cancelling a cancelled order is an idempotent
    /// success (`replayed`).
    pub async fn cancel(&self, order_id: u64) -> Result<OrderAnswer, SellError> {
        self.answer_of(Command::Cancel(order_id)).await
    }

    /// An older epoch than the node's → `SellError::Fenced`. A primary assignment is
    /// logged in the WAL; others are held in memory (`engine::replica`).
    pub async fn set_role(&self, a: RoleAssignment) -> Result<(), SellError> {
        self.submit(Command::SetRole(a)).await.map(|_| ())
    }

    /// Items of the sale in config order (as of the last durable batch).
    pub fn items(&self) -> Vec<ItemView> {
        self.inner.view.read().items()
    }

    pub fn item(&self, sku: &str) -> Option<ItemView> {
        self.inner.view.read().item(sku).cloned()
    }

    pub fn order(&self, id: u64) -> Option<Order> {
        self.inner.view.read().order(id)
    }

    /// Order `id` as a read should answer it, decided under one look at the view (a
    /// batch applied between two looks could make a missing order read as unknown
    /// when it was only not seen yet).
    pub fn look_up(&self, id: u64) -> Lookup {
        let view = self.inner.view.read();
        match view.order(id) {
            Some(o) => Lookup::Found(o),
            // An order's id is its purchase's record: past what this copy applied, it
            // may be an order the sale made since, unless this node is the sale's state.
            None if id > view.status.applied_seq && self.authority_of(&view).is_err() => {
                Lookup::NotSeenYet {
                    applied_seq: view.status.applied_seq,
                }
            }
            None => Lookup::Unknown,
        }
    }

    /// The order ledger of the durable state the reads show (`crate::ledger`): every
    /// confirmed order, by id. The read lock is taken once to list the confirmed ids,
    /// then per chunk of [`LEDGER_CHUNK`] orders, so a large export never holds up the
    /// sequencer's view updates for long (a confirmed order stays confirmed).
    ///
    /// A secondary's view can be replaced between two chunks (a reseed, a snapshot
    /// install: another log's history); then the export starts again, so no ledger mixes
    /// two histories.
    pub fn ledger(&self) -> Vec<crate::ledger::LedgerEntry> {
        'again: loop {
            let (mut ids, epochs, last) = {
                let v = self.inner.view.read();
                (
                    v.confirmed_ids(),
                    v.status.epochs.clone(),
                    v.status.applied_seq,
                )
            };
            ids.sort_unstable();
            let mut out = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(LEDGER_CHUNK) {
                let v = self.inner.view.read();
                // The same log grows (its history only gains epochs after `last`);
                // another log does not keep the history up to `last`.
                if v.status.applied_seq < last || !v.status.epochs.starts_with(&epochs) {
                    continue 'again;
                }
                out.extend(
                    chunk
                        .iter()
                        .filter_map(|id| v.order(*id))
                        .filter_map(|o| crate::ledger::entry(&o, &epochs, last)),
                );
            }
            return out;
        }
    }

    /// Units still for sale; the HTTP fast path answers `sold_out` on 0 without queueing.
    pub fn remaining(&self, sku: &str) -> Option<u64> {
        self.inner.view.read().item(sku).map(|i| i.remaining)
    }

    pub fn status(&self) -> EngineStatus {
        self.inner.view.read().status.clone()
    }

    /// The selling lease the engine checks (renewed through the admin API).
    pub fn lease(&self) -> &Arc<Lease> {
        &self.inner.lease
    }

    /// Moves the whole log aside into `aside/` (inside the data dir) and starts again
    /// empty: a secondary whose log parted from its primary's. Refused on a primary.
    pub async fn reseed(&self, aside: String) -> Result<(), SellError> {
        self.submit(Command::Reseed(aside)).await.map(|_| ())
    }

    /// The engine's prometheus metrics (register them with `EngineMetrics::register`).
    pub fn metrics(&self) -> &EngineMetrics {
        &self.inner.metrics
    }

    /// Every batch committed from now on, in order, after it is durable. A receiver
    /// that falls `batch_channel_len` behind gets `Lagged` and must catch up with `read_from`.
    pub fn subscribe_batches(&self) -> broadcast::Receiver<Arc<CommittedBatch>> {
        self.inner.batches.subscribe()
    }

    /// Durable records from `from_seq` on, up to about `bytes_max` bytes of frames.
    /// Fails with a gap if `from_seq` is older than the oldest segment kept.
    pub async fn read_from(&self, from_seq: u64, bytes_max: usize) -> Result<Frames, EngineError> {
        let dir = self.inner.dir.clone();
        let durable = self.status().durable_seq;
        tokio::task::spawn_blocking(move || {
            crate::wal::read_frames(&*dir, from_seq, durable, bytes_max)
        })
        .await
        .map_err(|_| EngineError::Stopped)?
        .map_err(EngineError::from)
    }

    /// [`EngineHandle::read_from`] wrapped as a batch at the node's current epoch.
    pub async fn read_batch_from(
        &self,
        from_seq: u64,
        bytes_max: usize,
    ) -> Result<Option<CommittedBatch>, EngineError> {
        let f = self.read_from(from_seq, bytes_max).await?;
        if f.is_empty() {
            return Ok(None);
        }
        let epoch = self.positions().epoch;
        let bytes = encode_batch(epoch, f.first_seq, f.last_seq, &f.bytes);
        Ok(Some(CommittedBatch {
            epoch,
            first_seq: f.first_seq,
            last_seq: f.last_seq,
            bytes,
        }))
    }

    /// Stops taking commands, answers what is queued, syncs, writes a snapshot, and
    /// waits for the sequencer thread to end. Later commands get `Unavailable`.
    pub async fn shutdown(&self) {
        let (done, rx) = oneshot::channel();
        if self.inner.tx.send(Msg::Shutdown(done)).await.is_ok() {
            let _ = rx.await;
        }
        let thread = self.inner.thread.lock().take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        // Nothing writes any more: another engine may open the directory.
        self.inner.lock.lock().take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reads_in_flight_until_its_last_purchase_is_answered() {
        let keys = Arc::new(InflightKeys::default());
        let (a, b) = (key_hash("c", "a"), key_hash("c", "b"));
        // A key sharing a's slot: it reads in flight while a is (a missed fast answer,
        // never a wrong one), and a reads so while it is.
        let twin = a ^ 1;
        assert!(!keys.may_hold(a) && !keys.may_hold(b));
        let first = InflightKey::enter(&keys, a);
        let retry = InflightKey::enter(&keys, a);
        assert!(keys.may_hold(a) && keys.may_hold(twin) && !keys.may_hold(b));
        drop(first);
        assert!(keys.may_hold(a), "a retry of it is still waiting");
        let other = InflightKey::enter(&keys, twin);
        drop(retry);
        assert!(keys.may_hold(a), "its slot is shared with a key in flight");
        drop(other);
        assert!(!keys.may_hold(a) && !keys.may_hold(twin));
    }
}
