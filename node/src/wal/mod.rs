//! The stock node's write-ahead log on disk: segment files of crc32c-framed records
//! (format in `flashsale_core::wal`), recovery that cuts a torn tail and refuses
//! damage in the middle, an appending writer, and read-only access for catch-up and
//! the offline `stock-node wal` tools.
//!
//! Files in a data directory:
//! - `wal-<first seq, 20 digits>.seg`: records `first seq..`, contiguous across segments;
//! - `snap-<seq, 20 digits>.snap`: the whole state after record `seq` (see `engine::snapshot`).

pub mod read;
pub mod scan;
pub mod store;
pub mod writer;

use std::io;

pub use read::{Frames, read_frames};
pub use scan::{ScanOptions, ScanReport, SegmentInfo, TornTail, scan};
pub use store::{FsDir, MemDir, MemFile, WalDir, WalFile};
pub use writer::SegmentWriter;

/// Why a WAL directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WalDirError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    /// Damage that is not a torn tail: good records follow it, so cutting would drop
    /// acknowledged sales. A person must look (or restore from a replica).
    #[error("{file} at byte {offset}: {reason} (valid records follow, refusing to cut)")]
    Corrupt {
        file: String,
        offset: u64,
        reason: String,
    },
    #[error("{file}: expected record {expected}, found {found}")]
    Gap {
        file: String,
        expected: u64,
        found: u64,
    },
    #[error("record {seq}: {reason}")]
    Rejected { seq: u64, reason: String },
}

impl WalDirError {
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// The file name of the segment whose first record is `first_seq`.
pub fn segment_name(first_seq: u64) -> String {
    format!("wal-{first_seq:020}.seg")
}

/// The first sequence of a segment file name, or `None` if it is not a segment.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("wal-")?
        .strip_suffix(".seg")?
        .parse()
        .ok()
}

/// The segments in `dir`, oldest first, as (first seq, name).
pub fn list_segments(dir: &dyn WalDir) -> Result<Vec<(u64, String)>, WalDirError> {
    let names = dir
        .list()
        .map_err(|e| WalDirError::io(format!("list {}", dir.describe()), e))?;
    let mut segs: Vec<(u64, String)> = names
        .into_iter()
        .filter_map(|n| parse_segment_name(&n).map(|s| (s, n)))
        .collect();
    segs.sort();
    Ok(segs)
}
