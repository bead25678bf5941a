//! Snapshots: the whole state after some record, so a restart replays only the log
//! after it. A file is `crc32c u32 LE | JSON of State`; the newest one whose checksum
//! holds wins, and an older one is kept as a fallback.

use flashsale_core::wal::RECORD_BYTES_MAX;

use super::state::State;
use crate::wal::{WalDir, WalDirError};

/// How many snapshots to keep: the newest and one fallback.
pub const SNAPSHOTS_KEPT: usize = 2;

pub fn snapshot_name(seq: u64) -> String {
    format!("snap-{seq:020}.snap")
}

pub fn parse_snapshot_name(name: &str) -> Option<u64> {
    name.strip_prefix("snap-")?
        .strip_suffix(".snap")?
        .parse()
        .ok()
}

/// Snapshots in `dir`, newest first.
pub fn list(dir: &dyn WalDir) -> Result<Vec<u64>, WalDirError> {
    let names = dir
        .list()
        .map_err(|e| WalDirError::io(format!("list {}", dir.describe()), e))?;
    let mut seqs: Vec<u64> = names
        .iter()
        .filter_map(|n| parse_snapshot_name(n))
        .collect();
    seqs.sort_unstable_by(|a, b| b.cmp(a));
    Ok(seqs)
}

/// Writes the state as a snapshot and removes all but the newest [`SNAPSHOTS_KEPT`].
/// Returns the oldest snapshot kept (the log must be retained after it).
pub fn write(dir: &dyn WalDir, state: &State) -> Result<u64, WalDirError> {
    let json = serde_json::to_vec(state).map_err(|e| WalDirError::Rejected {
        seq: state.applied_seq,
        reason: e.to_string(),
    })?;
    let mut bytes = Vec::with_capacity(json.len() + 4);
    bytes.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
    bytes.extend_from_slice(&json);
    let name = snapshot_name(state.applied_seq);
    dir.write_atomic(&name, &bytes)
        .map_err(|e| WalDirError::io(format!("write {name}"), e))?;
    let seqs = list(dir)?;
    for old in seqs.iter().skip(SNAPSHOTS_KEPT) {
        let n = snapshot_name(*old);
        // Another writer (a snapshot install) may have removed it already.
        match dir.remove(&n) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(WalDirError::io(format!("remove {n}"), e));
            }
            _ => {}
        }
    }
    Ok(*seqs
        .iter()
        .take(SNAPSHOTS_KEPT)
        .next_back()
        .unwrap_or(&state.applied_seq))
}

/// The newest snapshot whose checksum holds, with its sequence; skipped damaged ones are named in `skipped`.
pub fn load_newest(
    dir: &dyn WalDir,
    skipped: &mut Vec<String>,
) -> Result<Option<State>, WalDirError> {
    for seq in list(dir)? {
        let name = snapshot_name(seq);
        let bytes = dir
            .read(&name)
            .map_err(|e| WalDirError::io(format!("read {name}"), e))?;
        match decode(&bytes) {
            Some(mut state) if state.applied_seq == seq => {
                state.rebuild_indexes();
                return Ok(Some(state));
            }
            _ => skipped.push(name),
        }
    }
    Ok(None)
}

fn decode(bytes: &[u8]) -> Option<State> {
    if bytes.len() < 4 || bytes.len() > RECORD_BYTES_MAX * 4096 {
        return None;
    }
    let (crc, json) = bytes.split_at(4);
    if u32::from_le_bytes(crc.try_into().ok()?) != crc32c::crc32c(json) {
        return None;
    }
    serde_json::from_slice(json).ok()
}
