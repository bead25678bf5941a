//! `stock-node wal ship`: a WAL directory's tail, posted to a node. The operator runs it
//! as a Job that mounts a dead primary's volume read-only, so the node about to be
//! promoted holds every record the old primary made durable before it sells.
//!
//! Every request names the epoch of the record before its first one (`prev_epoch`), so
//! the node refuses a tail that does not continue its own log (409 `diverged`) instead
//! of stacking it on a log that parted; the node skips what it already holds, so a rerun
//! is harmless. Exit codes tell a Job's pod failure policy what to do: 3 and 4 cannot be
//! cured by retrying, 5 can.

use std::path::PathBuf;
use std::time::Duration;

use flashsale_core::admin::NodeStatus;
use flashsale_core::replication::{EpochStart, epoch_at};
use flashsale_core::wal::{decode_record, encode_batch};
use serde::Serialize;

use crate::engine::snapshot;
use crate::wal::{FsDir, ScanOptions, WalDir, read_frames, scan};

/// What to ship where.
#[derive(Clone, Debug)]
pub struct ShipPlan {
    pub dir: PathBuf,
    /// First record to send; `None`: the node's last (sent again, so the node can check
    /// that this log continues its own).
    pub from: Option<u64>,
    /// The node's base URL.
    pub to: String,
    pub token: String,
    pub chunk_bytes: usize,
    pub attempts: u32,
    /// The epoch the log must reach; `None`: any log.
    pub expect_epoch: Option<u64>,
}

/// What was shipped (printed as one JSON line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShipReport {
    /// The source log's last record.
    pub log_end: u64,
    /// Records the node applied from this run (those it had are not counted).
    pub records_applied: u64,
    /// The first and last record sent (0 when the node had everything).
    pub first_sent: u64,
    pub last_sent: u64,
    /// A snapshot sent first, for records the log had compacted (its sequence).
    pub snapshot_seq: Option<u64>,
    /// The node's applied sequence at the end.
    pub target_applied_seq: u64,
}

/// Why shipping stopped; each kind is an exit code.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("{0}")]
    Usage(String),
    #[error("the log cannot be read: {0}")]
    Source(String),
    #[error("the node refused: {0}")]
    Refused(String),
    #[error("the node cannot be reached: {0}")]
    Unreachable(String),
}

impl ShipError {
    pub fn code(&self) -> i32 {
        match self {
            ShipError::Usage(_) => 2,
            ShipError::Source(_) => 3,
            ShipError::Refused(_) => 4,
            ShipError::Unreachable(_) => 5,
        }
    }

    /// Prints the error and exits with its code.
    pub fn exit(self) -> ! {
        eprintln!("stock-node wal ship: {self}");
        std::process::exit(self.code())
    }
}

/// The source log as the shipper needs it: where it ends, what it still holds, its
/// epoch history and the snapshot covering a compacted start.
struct Source {
    dir: FsDir,
    last: u64,
    oldest: u64,
    epochs: Vec<EpochStart>,
    snapshot: Option<(u64, Vec<u8>)>,
}

fn read_source(path: &std::path::Path) -> Result<Source, ShipError> {
    let src = |e: &dyn std::fmt::Display| ShipError::Source(format!("{}: {e}", path.display()));
    let dir = FsDir::existing(path).map_err(|e| src(&e))?;
    let mut skipped = Vec::new();
    let snap = snapshot::load_newest(&dir, &mut skipped).map_err(|e| src(&e))?;
    let mut epochs = snap.as_ref().map(|s| s.epochs.clone()).unwrap_or_default();
    let snap_seq = snap.as_ref().map_or(0, |s| s.applied_seq);
    let snapshot = match snap_seq {
        0 => None,
        seq => Some((
            seq,
            dir.read(&snapshot::snapshot_name(seq))
                .map_err(|e| src(&e))?,
        )),
    };
    let mut last_epoch = epochs.last().map(|e| e.epoch);
    let report = scan(
        &dir,
        &ScanOptions {
            repair: false,
            tail_window_bytes: crate::engine::EngineOptions::default().tail_window_bytes(),
            from_seq: snap_seq + 1,
        },
        |rec| {
            if last_epoch != Some(rec.epoch) {
                epochs.push(EpochStart {
                    epoch: rec.epoch,
                    first_seq: rec.seq,
                });
                last_epoch = Some(rec.epoch);
            }
            Ok(())
        },
    )
    .map_err(|e| src(&e))?;
    Ok(Source {
        dir,
        last: report.last_seq.max(snap_seq),
        oldest: report.first_seq,
        epochs,
        snapshot,
    })
}

/// Ships the log's tail to the node.
pub fn ship(plan: &ShipPlan) -> Result<ShipReport, ShipError> {
    let source = read_source(&plan.dir)?;
    let reached = source.epochs.last().map_or(0, |e| e.epoch);
    if let Some(expected) = plan.expect_epoch
        && reached < expected
    {
        return Err(ShipError::Source(format!(
            "{}: the log reaches epoch {reached}, not {expected}: it is not the log to recover",
            plan.dir.display()
        )));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ShipError::Usage(format!("starting a runtime: {e}")))?;
    rt.block_on(ship_async(plan, &source))
}

async fn ship_async(plan: &ShipPlan, source: &Source) -> Result<ShipReport, ShipError> {
    let node = Node::new(plan)?;
    let status = node.status().await?;
    let mut report = ShipReport {
        log_end: source.last,
        records_applied: 0,
        first_sent: 0,
        last_sent: 0,
        snapshot_seq: None,
        target_applied_seq: status.applied_seq,
    };
    if source.last == 0 {
        return Ok(report);
    }
    // By default from the node's own last record: sending it again lets the node check
    // that this log continues its own (it skips what it holds, once checked).
    let mut next = plan
        .from
        .unwrap_or(status.applied_seq)
        .clamp(1, source.last);
    if next < source.oldest || source.oldest == 0 {
        // Compacted away here: the snapshot covers them, or the node has them already.
        // Either way no boundary record is sent for the node to check: its log must be
        // a prefix of this one by epoch history, or it is refused, never replaced.
        let shared = flashsale_core::replication::common_prefix(
            &status.epochs,
            status.applied_seq,
            &source.epochs,
            source.last,
        );
        if shared < status.applied_seq {
            return Err(ShipError::Refused(format!(
                "its log parted from this one after record {shared} (it holds {}); records from {next} were compacted here, so there is no boundary to check",
                status.applied_seq
            )));
        }
        match &source.snapshot {
            Some((seq, bytes)) if status.applied_seq < *seq && *seq + 1 >= next => {
                let applied = node.install_snapshot(bytes).await?;
                report.snapshot_seq = Some(*seq);
                report.target_applied_seq = applied;
                next = applied + 1;
            }
            Some((seq, _)) if status.applied_seq >= *seq => {
                next = source.oldest.max(status.applied_seq + 1);
            }
            _ => {
                return Err(ShipError::Source(format!(
                    "records from {next} are gone from this log (it starts at {}) and no snapshot covers them",
                    source.oldest
                )));
            }
        }
    }
    while next <= source.last {
        let frames = read_frames(&source.dir, next, source.last, plan.chunk_bytes)
            .map_err(|e| ShipError::Source(e.to_string()))?;
        if frames.is_empty() {
            return Err(ShipError::Source(format!(
                "no record {next} although the log ends at {}",
                source.last
            )));
        }
        let mut epoch = 0;
        let mut rest = &frames.bytes[..];
        while !rest.is_empty() {
            let (rec, used) = decode_record(rest).map_err(|e| ShipError::Source(e.to_string()))?;
            epoch = epoch.max(rec.epoch);
            rest = &rest[used..];
        }
        let batch = encode_batch(epoch, frames.first_seq, frames.last_seq, &frames.bytes);
        let prev_epoch = epoch_at(&source.epochs, source.last, frames.first_seq - 1);
        let answer = node.post(batch, prev_epoch).await?;
        if report.first_sent == 0 {
            report.first_sent = frames.first_seq;
        }
        report.last_sent = frames.last_seq;
        report.records_applied += answer.applied_records;
        report.target_applied_seq = answer.applied_seq;
        if answer.applied_seq < frames.last_seq {
            return Err(ShipError::Refused(format!(
                "sent records up to {}, the node holds up to {}",
                frames.last_seq, answer.applied_seq
            )));
        }
        next = answer.applied_seq + 1;
    }
    Ok(report)
}

/// `POST /admin/v1/wal`'s answer.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Applied {
    applied_records: u64,
    applied_seq: u64,
}

/// The node, with bounded retries on what a retry can cure.
struct Node<'a> {
    http: reqwest::Client,
    plan: &'a ShipPlan,
}

impl<'a> Node<'a> {
    fn new(plan: &'a ShipPlan) -> Result<Self, ShipError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| ShipError::Usage(e.to_string()))?;
        Ok(Self { http, plan })
    }

    /// Sends the request built by `req` until it is answered or `attempts` ran out: a
    /// transport error or a 5xx other than 503 `fenced` is retried, a 4xx is a refusal.
    async fn call(
        &self,
        what: &str,
        req: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ShipError> {
        let mut wait = Duration::from_millis(200);
        let mut last = String::new();
        for attempt in 1..=self.plan.attempts {
            match req().bearer_auth(&self.plan.token).send().await {
                Ok(r) if r.status().is_success() => return Ok(r),
                Ok(r) => {
                    let status = r.status();
                    let body: String = r
                        .text()
                        .await
                        .unwrap_or_default()
                        .chars()
                        .take(400)
                        .collect();
                    let fenced = body.contains("\"fenced\"") || body.contains("\"not_primary\"");
                    if status.is_client_error() || fenced {
                        return Err(ShipError::Refused(format!("{what}: HTTP {status}: {body}")));
                    }
                    last = format!("{what}: HTTP {status}: {body}");
                }
                Err(e) => last = format!("{what}: {e}"),
            }
            if attempt < self.plan.attempts {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
        Err(ShipError::Unreachable(last))
    }

    async fn status(&self) -> Result<NodeStatus, ShipError> {
        let url = format!("{}/admin/v1/status", self.plan.to);
        let r = self
            .call("GET /admin/v1/status", || self.http.get(&url))
            .await?;
        r.json()
            .await
            .map_err(|e| ShipError::Refused(format!("status: {e}")))
    }

    async fn post(&self, batch: Vec<u8>, prev_epoch: Option<u64>) -> Result<Applied, ShipError> {
        let mut url = format!("{}{}", self.plan.to, flashsale_core::replication::WAL_ROUTE);
        if let Some(e) = prev_epoch {
            url.push_str(&format!("?prev_epoch={e}"));
        }
        let r = self
            .call("POST /admin/v1/wal", || {
                self.http
                    .post(&url)
                    .header("content-type", "application/octet-stream")
                    .body(batch.clone())
            })
            .await?;
        r.json()
            .await
            .map_err(|e| ShipError::Refused(format!("POST /admin/v1/wal answer: {e}")))
    }

    async fn install_snapshot(&self, bytes: &[u8]) -> Result<u64, ShipError> {
        let url = format!(
            "{}{}",
            self.plan.to,
            flashsale_core::replication::SNAPSHOT_ROUTE
        );
        let r = self
            .call("PUT /admin/v1/snapshot", || {
                self.http
                    .put(&url)
                    .header("content-type", "application/octet-stream")
                    .body(bytes.to_vec())
            })
            .await?;
        let status: NodeStatus = r
            .json()
            .await
            .map_err(|e| ShipError::Refused(format!("PUT /admin/v1/snapshot answer: {e}")))?;
        Ok(status.applied_seq)
    }
}
