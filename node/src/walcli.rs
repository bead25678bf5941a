//! `stock-node wal …`: offline, read-only tools for a WAL directory — verify it, dump
//! its records as JSON lines, export records from a sequence in the WAL wire format, and
//! ship a tail to a node (what the operator's recovery Job runs against a dead
//! primary's volume, `wal ship`).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use flashsale_core::wal::{decode_record, encode_batch};

use crate::wal::{FsDir, ScanOptions, read_frames, scan};

/// Frames per exported chunk, so memory stays bounded on big logs.
const EXPORT_CHUNK_BYTES_MAX: usize = 8 << 20;

#[derive(Debug, clap::Subcommand)]
pub enum WalCommand {
    /// Check every record; report the count, last sequence and any torn tail. Exits
    /// non-zero if the log is damaged in the middle (a torn tail alone is reported, exit 0).
    Verify {
        /// The WAL directory (the node's data dir).
        dir: PathBuf,
    },
    /// Print records, one JSON object per line.
    Dump {
        dir: PathBuf,
        /// First sequence to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// JSON lines (the default; the flag is accepted for scripts that say so).
        #[arg(long)]
        json: bool,
    },
    /// Print the order ledger: every confirmed order (id, sku, quantity, customer,
    /// idempotency key, reserved and confirmed times, the epoch that sold it), by id,
    /// as JSON lines or CSV — from the newest snapshot and the log after it.
    Ledger {
        dir: PathBuf,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: crate::ledger::Format,
    },
    /// Write records from SEQ on as WAL batches (`flashsale_core::wal::encode_batch`,
    /// one or more back to back) to a file or `-` for stdout.
    Export {
        dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long, default_value = "-")]
        out: String,
    },
    /// Post the log's records from SEQ on to a node (`POST /admin/v1/wal`, with the
    /// epoch of the record before each chunk so the node checks the boundary), in
    /// bounded chunks, until the node holds the whole log; a snapshot first where the
    /// records were compacted. Idempotent: the node skips what it has, so a rerun is safe.
    /// Exit codes: 0 done; 2 bad arguments; 3 the log cannot be read (damaged, or the
    /// records are gone); 4 the node refused (a diverged log, a gap, it is a primary):
    /// retrying will not help; 5 the node could not be reached: retrying may.
    Ship {
        dir: PathBuf,
        /// First record to send; default: the node's last one (sent again so the node can
        /// check that this log continues its own; it skips what it already holds).
        #[arg(long)]
        from: Option<u64>,
        /// The node's base URL, e.g. `http://10.0.0.7:8080`.
        #[arg(long)]
        to: String,
        /// The node's admin token, from a file (a mounted Secret).
        #[arg(long, conflicts_with = "admin_token")]
        admin_token_file: Option<PathBuf>,
        #[arg(long, env = "STOCK_NODE_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Most bytes of records per request.
        #[arg(long, default_value_t = 1 << 20)]
        chunk_bytes: usize,
        /// Tries per request before giving up (exit 5).
        #[arg(long, default_value_t = 5)]
        attempts: u32,
        /// The epoch the log must reach (the old primary's): a log that never got
        /// there — an empty volume in its place, another node's log — is not the tail
        /// to recover (exit 3), even though shipping it would succeed.
        #[arg(long)]
        expect_epoch: Option<u64>,
    },
}

pub fn run(cmd: WalCommand) -> anyhow::Result<()> {
    match cmd {
        WalCommand::Verify { dir } => verify(dir),
        WalCommand::Dump { dir, from, json: _ } => dump(dir, from),
        WalCommand::Export { dir, from, out } => export(dir, from, &out),
        WalCommand::Ledger { dir, format } => ledger(dir, format),
        WalCommand::Ship {
            dir,
            from,
            to,
            admin_token_file,
            admin_token,
            chunk_bytes,
            attempts,
            expect_epoch,
        } => {
            let token = match (admin_token, admin_token_file) {
                (Some(t), _) => t,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))
                    .map_err(|e| ShipError::Usage(format!("{e:#}")))
                    .unwrap_or_else(|e| e.exit())
                    .trim()
                    .to_string(),
                (None, None) => ShipError::Usage(
                    "an admin token is needed: --admin-token-file or STOCK_NODE_ADMIN_TOKEN".into(),
                )
                .exit(),
            };
            let plan = ShipPlan {
                dir,
                from,
                to: to.trim_end_matches('/').to_string(),
                token,
                chunk_bytes: chunk_bytes.max(1),
                attempts: attempts.max(1),
                expect_epoch,
            };
            match crate::walship::ship(&plan) {
                Ok(report) => {
                    println!("{}", serde_json::to_string(&report)?);
                    Ok(())
                }
                Err(e) => e.exit(),
            }
        }
    }
}

pub use crate::walship::{ShipError, ShipPlan};

fn open(dir: &Path) -> anyhow::Result<FsDir> {
    FsDir::existing(dir).with_context(|| format!("open {}", dir.display()))
}

fn ledger(dir: PathBuf, format: crate::ledger::Format) -> anyhow::Result<()> {
    let entries = crate::ledger::from_dir(&dir)?;
    let stdout = io::stdout();
    let mut w = io::BufWriter::new(stdout.lock());
    match crate::ledger::write(&entries, format, &mut w).and_then(|()| w.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn verify(dir: PathBuf) -> anyhow::Result<()> {
    let d = open(&dir)?;
    let report = scan(
        &d,
        &ScanOptions {
            repair: false,
            tail_window_bytes: crate::engine::EngineOptions::default().tail_window_bytes(),
            from_seq: u64::MAX,
        },
        |_| Ok(()),
    )
    .with_context(|| format!("{} is damaged", dir.display()))?;
    let out = serde_json::json!({
        "dir": dir.display().to_string(),
        "segments": report.segments.iter().map(|s| serde_json::json!({
            "name": s.name, "firstSeq": s.first_seq, "records": s.records, "validBytes": s.valid_bytes,
        })).collect::<Vec<_>>(),
        "records": report.records,
        "firstSeq": report.first_seq,
        "lastSeq": report.last_seq,
        "tornTail": report.torn.as_ref().map(|t| serde_json::json!({
            "file": t.file, "offset": t.offset, "droppedBytes": t.dropped_bytes, "reason": t.reason,
        })),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn dump(dir: PathBuf, from: u64) -> anyhow::Result<()> {
    let d = open(&dir)?;
    let stdout = io::stdout();
    let mut w = io::BufWriter::new(stdout.lock());
    let mut write_err = None;
    scan(
        &d,
        &ScanOptions {
            repair: false,
            tail_window_bytes: crate::engine::EngineOptions::default().tail_window_bytes(),
            from_seq: from,
        },
        |rec| {
            if write_err.is_none()
                && let Err(e) = serde_json::to_writer(&mut w, &rec)
                    .map_err(io::Error::from)
                    .and_then(|()| w.write_all(b"\n"))
            {
                write_err = Some(e);
            }
            Ok(())
        },
    )
    .with_context(|| format!("{} is damaged", dir.display()))?;
    if let Some(e) = write_err
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        return Err(e.into());
    }
    w.flush().or_else(|e| {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    Ok(())
}

fn export(dir: PathBuf, from: u64, out: &str) -> anyhow::Result<()> {
    let d = open(&dir)?;
    // Verify first: export must not ship records from a log damaged in the middle.
    let report = scan(
        &d,
        &ScanOptions {
            repair: false,
            tail_window_bytes: crate::engine::EngineOptions::default().tail_window_bytes(),
            from_seq: u64::MAX,
        },
        |_| Ok(()),
    )
    .with_context(|| format!("{} is damaged", dir.display()))?;
    let mut w: Box<dyn Write> = if out == "-" {
        Box::new(io::BufWriter::new(io::stdout().lock()))
    } else {
        Box::new(io::BufWriter::new(
            std::fs::File::create(out).with_context(|| format!("create {out}"))?,
        ))
    };
    let mut next = from.max(1);
    let mut exported = 0u64;
    while next <= report.last_seq {
        let frames = read_frames(&d, next, report.last_seq, EXPORT_CHUNK_BYTES_MAX)?;
        if frames.is_empty() {
            bail!(
                "no record {next} in {} although the log ends at {}",
                dir.display(),
                report.last_seq
            );
        }
        // The batch epoch is the highest epoch among its records.
        let mut epoch = 0;
        let mut rest = &frames.bytes[..];
        while !rest.is_empty() {
            let (rec, used) = decode_record(rest)?;
            epoch = epoch.max(rec.epoch);
            rest = &rest[used..];
        }
        w.write_all(&encode_batch(
            epoch,
            frames.first_seq,
            frames.last_seq,
            &frames.bytes,
        ))?;
        exported += frames.last_seq - frames.first_seq + 1;
        next = frames.last_seq + 1;
    }
    w.flush()?;
    eprintln!("exported {exported} records ({from}..={})", report.last_seq);
    Ok(())
}
