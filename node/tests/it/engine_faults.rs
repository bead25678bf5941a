//! A disk that fails under the engine: a failed `fdatasync` acknowledges nothing,
//! the engine stops taking writes instead of carrying on with a state the disk may
//! not have, reads keep showing only what was durable, and a restart comes back with
//! every order that was acknowledged.

use std::sync::Arc;

use flashsale_core::admin::Role;
use flashsale_core::{ItemSpec, PurchaseRequest, SaleConfig, SellError};
use stock_node::engine::{Engine, EngineHandle, EngineOptions};
use stock_node::wal::MemDir;

fn open(dir: &MemDir) -> EngineHandle {
    Engine::open(EngineOptions {
        dir: Some(Arc::new(dir.clone())),
        initial_role: Some(Role::Primary),
        ..Default::default()
    })
    .unwrap()
}

/// A sale of one item, `a`.
fn sale(name: &str, stock: u64, reservation_ttl_ms: u64) -> SaleConfig {
    SaleConfig {
        name: name.into(),
        items: vec![ItemSpec {
            sku: "a".into(),
            stock,
            per_customer_limit: 0,
        }],
        starts_at_ms: None,
        ends_at_ms: None,
        reservation_ttl_ms,
        durability: Default::default(),
    }
}

fn buy(key: &str) -> PurchaseRequest {
    PurchaseRequest {
        sku: "a".into(),
        quantity: 1,
        customer: key.into(),
        idempotency_key: key.into(),
    }
}

#[tokio::test]
async fn a_failed_sync_acknowledges_nothing_and_stops_writes() {
    let dir = MemDir::new();
    let e = open(&dir);
    e.configure(sale("faults", 10, 60_000)).await.unwrap();
    let ok = e.purchase(buy("k1")).await.unwrap();

    dir.set_fail_sync(true);
    assert!(
        matches!(e.purchase(buy("k2")).await, Err(SellError::Internal(_))),
        "not durable, not acknowledged"
    );
    assert!(
        matches!(e.purchase(buy("k3")).await, Err(SellError::Unavailable(_))),
        "no writes after a failed sync"
    );
    assert!(e.status().failed.is_some());
    assert_eq!(
        e.item("a").unwrap().held,
        1,
        "reads show only durable changes"
    );
    assert_eq!(e.status().durable_seq, ok.id);

    drop(e);
    dir.crash(|_, _| 0);
    dir.set_fail_sync(false);
    let e = open(&dir);
    assert_eq!(e.order(ok.id), Some(ok.clone()));
    assert_eq!(e.item("a").unwrap().held, 1);
    // The unacknowledged purchase may be retried with its key and sells once.
    let retry = e.purchase(buy("k2")).await.unwrap();
    assert_eq!(e.purchase(buy("k2")).await.unwrap(), retry);
    assert_eq!(e.item("a").unwrap().held, 2);
    e.shutdown().await;
}

/// A node killed (`kill -9`) after writing a batch and before its `fdatasync` leaves
/// the batch in the page cache: the next start reads it back and answers a retry of
/// its purchase from it (a replay, with no sync of its own). A power failure after
/// that must not lose the order that retry acknowledged: the start made what it read
/// durable.
#[tokio::test]
async fn what_a_restart_reads_back_is_durable_before_it_is_answered_from() {
    let dir = MemDir::new();
    let e = open(&dir);
    e.configure(sale("cache", 10, 60_000)).await.unwrap();
    e.purchase(buy("k1")).await.unwrap();
    // The batch is written, its sync never succeeds: the process dies there.
    dir.set_fail_sync(true);
    assert!(e.purchase(buy("k2")).await.is_err(), "never acknowledged");
    drop(e);
    dir.set_fail_sync(false);

    // The restart, on the same page cache (no `MemDir::crash`): k2's record is read back.
    let e = open(&dir);
    let retried = e.purchase(buy("k2")).await.unwrap();
    // The disk as it is at this acknowledgement, then a power failure.
    let disk = dir.copy();
    disk.crash(|_, _| 0);
    let after = open(&disk);
    assert_eq!(
        after.order(retried.id),
        Some(retried.clone()),
        "the order acknowledged to k2's retry is lost to a power failure"
    );
    after.shutdown().await;
    e.shutdown().await;
}

/// A purchase in the same group commit as a config that turns syncs off (`no-sync`,
/// after it) was decided as durable, and answered as such: the batch is synced.
#[tokio::test]
async fn a_batch_that_turns_syncs_off_is_synced_for_the_purchases_before_it() {
    let dir = MemDir::new();
    let e = Arc::new(open(&dir));
    e.configure(sale("nosync", 10, 60_000)).await.unwrap();
    // The first purchase's sync is held, so the next purchase and the config queue
    // behind it and go into the next batch together, in that order.
    dir.hold_syncs(true);
    let first = tokio::spawn({
        let e = e.clone();
        async move { e.purchase(buy("k1")).await }
    });
    wait_until(|| dir.syncs_waiting() == 1).await;
    let second = tokio::spawn({
        let e = e.clone();
        async move { e.purchase(buy("k2")).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let mut off = sale("nosync", 10, 60_000);
    off.durability = flashsale_core::Durability::NoSync;
    let config = tokio::spawn({
        let e = e.clone();
        async move { e.configure(off).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    dir.hold_syncs(false);
    first.await.unwrap().unwrap();
    let k2 = second.await.unwrap().unwrap();
    config.await.unwrap().unwrap();
    // A power failure once k2 is acknowledged.
    let disk = dir.copy();
    disk.crash(|_, _| 0);
    let after = open(&disk);
    assert_eq!(
        after.order(k2.id),
        Some(k2.clone()),
        "k2, acknowledged in the batch that turned syncs off, is lost to a power failure"
    );
    after.shutdown().await;
}

async fn wait_until(mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("not within 5 s");
}

#[tokio::test]
async fn a_data_dir_has_one_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        data_dir: tmp.path().to_owned(),
        initial_role: Some(Role::Primary),
        ..Default::default()
    };
    let e = Engine::open(opts.clone()).unwrap();
    assert!(matches!(
        Engine::open(opts.clone()),
        Err(stock_node::engine::EngineError::Locked(_))
    ));
    e.shutdown().await;
    drop(e);
    Engine::open(opts).expect("free again once the first engine is gone");
}

/// A `LOCK` held for a moment by something else is waited for, not refused: a copy of
/// the lock outlives its engine while a process forked meanwhile has not yet exec'd
/// (the test binary spawns children in parallel), or while a node that stopped is
/// still exiting. Here a second open file description on `LOCK` plays that holder.
#[tokio::test]
async fn a_lock_held_for_a_moment_is_waited_for() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        data_dir: tmp.path().to_owned(),
        initial_role: Some(Role::Primary),
        ..Default::default()
    };
    drop(Engine::open(opts.clone()).unwrap());
    let holder = std::fs::File::open(tmp.path().join("LOCK")).unwrap();
    // Blocking: the engine's lock may itself linger a moment in a forked child.
    holder.lock().unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(holder);
    });
    let e = Engine::open(opts).expect("the lock is free within the wait");
    release.join().unwrap();
    e.shutdown().await;
}

#[tokio::test]
async fn a_damaged_newest_snapshot_falls_back_to_the_older_one() {
    let dir = MemDir::new();
    let e = Engine::open(EngineOptions {
        dir: Some(Arc::new(dir.clone())),
        initial_role: Some(Role::Primary),
        snapshot_every_records: 4,
        segment_bytes_max: 256,
        ..Default::default()
    })
    .unwrap();
    e.configure(sale("snap", 1000, 600_000)).await.unwrap();
    let mut orders = Vec::new();
    for i in 0..40 {
        orders.push(e.purchase(buy(&format!("k{i}"))).await.unwrap());
    }
    // The snapshot thread writes in the background; a shutdown gives up one in
    // progress and writes its own. Wait (bounded) for one of the sale's own first.
    let snapshotted = || !stock_node::engine::snapshot::list(&dir).unwrap().is_empty();
    for _ in 0..1000 {
        if snapshotted() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        snapshotted(),
        "no snapshot written in 10 s of an idle engine"
    );
    e.shutdown().await;
    drop(e);
    let snaps = dir.with_files(|f| {
        f.keys()
            .filter(|n| n.starts_with("snap-"))
            .cloned()
            .collect::<Vec<_>>()
    });
    assert_eq!(
        snaps.len(),
        2,
        "the newest snapshot and one fallback are kept: {snaps:?}"
    );
    let newest = snaps.iter().max().unwrap().clone();
    dir.with_files(|f| {
        let d = &mut f.get_mut(&newest).unwrap().data;
        let mid = d.len() / 2;
        d[mid] ^= 0x55;
    });
    let (e, report) = Engine::open_with_report(EngineOptions {
        dir: Some(Arc::new(dir.clone())),
        initial_role: Some(Role::Primary),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(report.skipped_snapshots, vec![newest]);
    assert!(
        report.replayed > 0,
        "the log after the older snapshot was replayed"
    );
    for o in &orders {
        assert_eq!(e.order(o.id).as_ref(), Some(o));
    }
    assert_eq!(e.item("a").unwrap().held, 40);
    e.shutdown().await;
}

/// A `MemDir` whose changes start failing at the `n`th (and every one after it fails
/// too): the disk as a crash leaves it at that point, once `MemDir::crash` drops what
/// was not synced.
#[derive(Clone)]
struct CrashAt {
    disk: MemDir,
    n: Arc<std::sync::atomic::AtomicUsize>,
    seen: Arc<std::sync::atomic::AtomicUsize>,
}

impl CrashAt {
    fn change(&self) -> std::io::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.seen.fetch_add(1, SeqCst) + 1 >= self.n.load(SeqCst) {
            return Err(std::io::Error::other("crashed here"));
        }
        Ok(())
    }
}

impl stock_node::wal::WalDir for CrashAt {
    fn list(&self) -> std::io::Result<Vec<String>> {
        self.disk.list()
    }
    fn read(&self, name: &str) -> std::io::Result<Vec<u8>> {
        self.disk.read(name)
    }
    fn open_segment(
        &self,
        name: &str,
        at: u64,
    ) -> std::io::Result<Box<dyn stock_node::wal::WalFile>> {
        self.change()?;
        self.disk.open_segment(name, at)
    }
    fn truncate(&self, name: &str, len: u64) -> std::io::Result<()> {
        self.change()?;
        self.disk.truncate(name, len)
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.change()?;
        self.disk.remove(name)
    }
    fn write_atomic(
        &self,
        name: &str,
        fill: &mut stock_node::wal::store::Fill<'_>,
    ) -> std::io::Result<()> {
        self.change()?;
        self.disk.write_atomic(name, fill)
    }
    fn describe(&self) -> String {
        self.disk.describe()
    }
    fn sync_all(&self) -> std::io::Result<()> {
        self.disk.sync_all()
    }
    /// A file at a time, as `FsDir` renames them: a crash can fall between two.
    fn move_aside(&self, names: &[String], into: &str) -> std::io::Result<()> {
        for name in names {
            self.change()?;
            self.disk.move_aside(std::slice::from_ref(name), into)?;
        }
        Ok(())
    }
}

/// A secondary installing a primary's snapshot newer than its whole log writes the
/// snapshot, then drops its old segments and starts a new one. A crash at any step of
/// that leaves a directory that opens, with either the old state or the snapshot's;
/// never a log that opening refuses (a new segment beside old ones, with a gap).
#[tokio::test]
async fn a_crash_at_any_step_of_a_snapshot_install_leaves_a_log_that_opens() {
    use flashsale_core::admin::RoleAssignment;
    use std::sync::atomic::Ordering::SeqCst;
    // The primary's snapshot, well ahead of the secondary's log.
    let primary = MemDir::new();
    let a = open(&primary);
    a.configure(sale("install", 1000, 600_000)).await.unwrap();
    for i in 0..40 {
        a.purchase(buy(&format!("a{i}"))).await.unwrap();
    }
    a.shutdown().await;
    let (snap_seq, bytes) = open(&primary).newest_snapshot().await.unwrap().unwrap();
    for n in 1.. {
        let disk = MemDir::new();
        let crash = CrashAt {
            disk: disk.clone(),
            n: Arc::new(usize::MAX.into()),
            seen: Arc::new(0.into()),
        };
        let b = Engine::open(EngineOptions {
            dir: Some(Arc::new(crash.clone())),
            initial_role: Some(Role::Primary),
            // Its log over several segments.
            segment_bytes_max: 256,
            ..Default::default()
        })
        .unwrap();
        b.configure(sale("install", 1000, 600_000)).await.unwrap();
        for i in 0..8 {
            b.purchase(buy(&format!("b{i}"))).await.unwrap();
        }
        let old_seq = b.positions().applied_seq;
        b.set_role(RoleAssignment {
            role: Role::Secondary,
            epoch: 2,
            primary_url: Some("http://primary:8080".into()),
        })
        .await
        .unwrap();
        let old_seq = b.positions().applied_seq.max(old_seq);
        crash.seen.store(0, SeqCst);
        crash.n.store(n, SeqCst);
        let installed = b.install_snapshot(bytes.clone()).await;
        drop(b);
        disk.crash(|_, _| 0);
        let (reopened, _) = Engine::open_with_report(EngineOptions {
            dir: Some(Arc::new(disk.clone())),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("crash at change {n} of the install: {e}"));
        let seq = reopened.positions().applied_seq;
        assert!(
            seq == old_seq || seq == snap_seq,
            "crash at change {n}: applied {seq}, neither the old {old_seq} nor the snapshot's {snap_seq}"
        );
        reopened.shutdown().await;
        if installed.is_ok() && crash.seen.load(SeqCst) < n {
            // The install finished before the nth change: every step was crashed at.
            assert!(n > 3, "too few steps seen: {n}");
            break;
        }
    }
}

/// A secondary writes a replicated batch far larger than its own batches (a backlog
/// merged, a catch-up read) in synced pieces: power loss while the first piece is
/// unsynced, its pages written back out of order (a hole of zeros with good records
/// after it), leaves a log that opens, the hole cut as a torn tail. Written whole,
/// the hole would lie further from the end than recovery's tail window, and the
/// node would refuse to start on a log it wrote itself.
#[tokio::test]
async fn a_large_replicated_batch_is_synced_in_pieces_a_torn_tail_recovery_cuts() {
    use flashsale_core::admin::RoleAssignment;
    // Records of about 300 bytes: customer and key of 128 characters each.
    let primary = MemDir::new();
    let p = open(&primary);
    p.configure(sale("pieces", 100_000, 600_000)).await.unwrap();
    for chunk in 0..12 {
        let buys = (0..500).map(|i| {
            let id = format!("{chunk:04}-{i:04}-{}", "x".repeat(118));
            let p = p.clone();
            async move {
                p.purchase(PurchaseRequest {
                    customer: id.clone(),
                    idempotency_key: id,
                    ..buy("")
                })
                .await
            }
        });
        for r in futures::future::join_all(buys).await {
            r.unwrap();
        }
    }
    let epoch = p.status().epoch;
    let first = p.read_batch_from(1, 1024).await.unwrap().unwrap();
    let rest = p
        .read_batch_from(first.last_seq + 1, 8 << 20)
        .await
        .unwrap()
        .unwrap();
    let last = p.positions().durable_seq;
    assert_eq!(rest.last_seq, last, "the rest of the log in one batch");
    p.shutdown().await;

    // The secondary's own batches are small, so its tail window is about 1 MiB (one
    // record's limit and one batch), and the big batch is beyond it.
    let options = |disk: &MemDir| EngineOptions {
        dir: Some(Arc::new(disk.clone())),
        batch_bytes_max: 4096,
        batch_records_max: 16,
        ..Default::default()
    };
    assert!(
        rest.bytes.len() as u64 > options(&MemDir::new()).tail_window_bytes() + 65536,
        "the batch ({} bytes) is well beyond the window",
        rest.bytes.len()
    );
    let disk = MemDir::new();
    let s = Engine::open(options(&disk)).unwrap();
    s.set_role(RoleAssignment {
        role: Role::Secondary,
        epoch,
        primary_url: Some("http://primary:8080".into()),
    })
    .await
    .unwrap();
    let decode = |b: &[u8]| flashsale_core::wal::decode_batch(b).unwrap();
    s.apply_replicated(decode(&first.bytes)).await.unwrap();
    /// Lets the held syncs go however the test ends (a failed assertion too: the
    /// engine's thread waits in one, and dropping the engine waits for the thread).
    struct Release(MemDir);
    impl Drop for Release {
        fn drop(&mut self) {
            self.0.hold_syncs(false);
        }
    }
    disk.hold_syncs(true);
    let release = Release(disk.clone());
    let applying = tokio::spawn({
        let (s, batch) = (s.clone(), decode(&rest.bytes));
        async move { s.apply_replicated(batch).await }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while disk.syncs_waiting() == 0 {
        assert!(std::time::Instant::now() < deadline, "no sync came");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let crashed = disk.copy();
    crashed.crash_out_of_order(512);
    let (reopened, report) = Engine::open_with_report(options(&crashed))
        .unwrap_or_else(|e| panic!("the log the secondary wrote does not open: {e}"));
    let torn = report.scan.torn.expect("the hole is cut as a torn tail");
    let window = options(&crashed).tail_window_bytes();
    assert!(torn.dropped_bytes <= window, "one piece dropped: {torn:?}");
    assert_eq!(
        reopened.positions().durable_seq,
        first.last_seq,
        "what was synced before the batch is kept"
    );
    reopened.shutdown().await;

    drop(release);
    assert_eq!(applying.await.unwrap().unwrap(), last);
    s.shutdown().await;
    let (reopened, report) = Engine::open_with_report(options(&disk)).unwrap();
    assert!(report.scan.torn.is_none());
    assert_eq!(reopened.positions().durable_seq, last);
    reopened.shutdown().await;
}

/// A reseed moves the log aside one file at a time, newest first: a crash at any step
/// leaves a directory that opens, on a prefix of the old log (shorter, never with a
/// gap), which the follower compares with the primary's again. Before, the snapshots
/// went first and then the segments oldest first: a crash between them left later
/// segments without the snapshot or the records they follow, and the node refused to
/// start.
#[tokio::test]
async fn a_crash_at_any_step_of_a_reseed_leaves_a_log_that_opens() {
    use flashsale_core::admin::RoleAssignment;
    use std::sync::atomic::Ordering::SeqCst;
    for n in 1.. {
        let disk = MemDir::new();
        let crash = CrashAt {
            disk: disk.clone(),
            n: Arc::new(usize::MAX.into()),
            seen: Arc::new(0.into()),
        };
        let b = Engine::open(EngineOptions {
            dir: Some(Arc::new(crash.clone())),
            initial_role: Some(Role::Primary),
            // A log over several segments, on snapshots that compacted its start.
            segment_bytes_max: 256,
            snapshot_every_records: 10,
            ..Default::default()
        })
        .unwrap();
        b.configure(sale("reseed", 1000, 600_000)).await.unwrap();
        for i in 0..40 {
            b.purchase(buy(&format!("b{i}"))).await.unwrap();
        }
        let old_seq = b.positions().applied_seq;
        b.set_role(RoleAssignment {
            role: Role::Secondary,
            epoch: 2,
            primary_url: Some("http://primary:8080".into()),
        })
        .await
        .unwrap();
        crash.seen.store(0, SeqCst);
        crash.n.store(n, SeqCst);
        let reseeded = b.reseed("diverged-1".into()).await;
        drop(b);
        disk.crash(|_, _| 0);
        let (reopened, _) = Engine::open_with_report(EngineOptions {
            dir: Some(Arc::new(disk.clone())),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("crash at change {n} of the reseed: {e}"));
        let seq = reopened.positions().applied_seq;
        assert!(
            seq <= old_seq,
            "crash at change {n}: {seq} past the old {old_seq}"
        );
        reopened.shutdown().await;
        if reseeded.is_ok() && crash.seen.load(SeqCst) < n {
            assert_eq!(seq, 0, "the whole log is aside");
            assert!(n > 4, "too few steps seen: {n}");
            break;
        }
    }
}
