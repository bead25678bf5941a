//! Snapshots: the whole state after some record, so a restart replays only the log
//! after it. A file is `crc32c u32 LE | JSON of State`; the newest one whose checksum
//! holds wins, and an older one is kept as a fallback.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Removes the snapshots a crash left half-written (never renamed into place, so never
/// read: only their space is lost — a snapshot is as large as the state). Returns how
/// many. Called by the engine that opens `dir`, which holds its lock.
pub fn remove_unfinished(dir: &dyn WalDir) -> Result<usize, WalDirError> {
    let names = dir
        .list()
        .map_err(|e| WalDirError::io(format!("list {}", dir.describe()), e))?;
    let mut removed = 0;
    for name in names.iter().filter(|n| {
        n.strip_suffix(crate::wal::store::UNFINISHED_SUFFIX)
            .and_then(parse_snapshot_name)
            .is_some()
    }) {
        dir.remove(name)
            .map_err(|e| WalDirError::io(format!("remove {name}"), e))?;
        removed += 1;
    }
    Ok(removed)
}

/// Writes the state as a snapshot and removes all but the newest [`SNAPSHOTS_KEPT`].
/// Returns the oldest snapshot kept (the log must be retained after it).
pub fn write(dir: &dyn WalDir, state: &State) -> Result<u64, WalDirError> {
    write_unless(dir, state, &AtomicBool::new(false))
}

/// [`write`], given up (an error, nothing written) as soon as `cancel` is set.
pub fn write_unless(
    dir: &dyn WalDir,
    state: &State,
    cancel: &AtomicBool,
) -> Result<u64, WalDirError> {
    let name = snapshot_name(state.applied_seq);
    // Streamed to the file (no copy of the whole JSON in memory): room for the
    // checksum, the JSON, then the checksum over the room.
    dir.write_atomic(&name, &mut |out| {
        out.write_all(&[0; 4])?;
        let mut out = Unless { out, cancel };
        let mut json = Crc32cWriter {
            out: &mut out,
            crc: 0,
        };
        serde_json::to_writer(&mut json, state).map_err(std::io::Error::other)?;
        Ok(json.crc.to_le_bytes().to_vec())
    })
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

/// Passes bytes on until `cancel` is set, then fails.
struct Unless<'a> {
    out: &'a mut dyn Write,
    cancel: &'a AtomicBool,
}

impl Write for Unless<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("cancelled"));
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Passes bytes on, keeping their CRC-32C.
struct Crc32cWriter<'a> {
    out: &'a mut dyn Write,
    crc: u32,
}

impl Write for Crc32cWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::wal::FsDir;

    #[test]
    fn a_cancelled_snapshot_leaves_nothing_and_the_last_one_stands() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = FsDir::create(tmp.path()).unwrap();
        let mut state = State::default();
        state.applied_seq = 7;
        write(&dir, &state).unwrap();
        state.applied_seq = 9;
        assert!(write_unless(&dir, &state, &AtomicBool::new(true)).is_err());
        assert_eq!(list(&dir).unwrap(), [7]);
        let names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [snapshot_name(7)], "a .tmp file was left");
        assert_eq!(
            load_newest(&dir, &mut Vec::new())
                .unwrap()
                .unwrap()
                .applied_seq,
            7
        );
    }
}
