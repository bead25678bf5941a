//! Appending to the log: one open segment at a time, rolled to a new file when full,
//! and old segments removed once a snapshot covers them.

use std::collections::VecDeque;

use super::{WalDir, WalDirError, WalFile, segment_name};
use std::sync::Arc;

/// The appending end of the log. Owned by the sequencer thread alone.
pub struct SegmentWriter {
    dir: Arc<dyn WalDir>,
    file: Box<dyn WalFile>,
    /// All segments on disk, oldest first, as (first seq, name); the last is `file`.
    segments: VecDeque<(u64, String)>,
    segment_bytes_max: u64,
}

impl SegmentWriter {
    /// Continues the last of `segments` (all on disk, oldest first), or starts a
    /// segment at `next_seq` when there is none.
    pub fn open(
        dir: Arc<dyn WalDir>,
        mut segments: Vec<(u64, String)>,
        next_seq: u64,
        segment_bytes_max: u64,
    ) -> Result<Self, WalDirError> {
        if segments.is_empty() {
            segments.push((next_seq, segment_name(next_seq)));
        }
        let name = &segments.last().expect("not empty").1;
        let file = dir
            .open_append(name)
            .map_err(|e| WalDirError::io(format!("open {name}"), e))?;
        Ok(Self {
            dir,
            file,
            segments: segments.into(),
            segment_bytes_max,
        })
    }

    /// Appends encoded frames (not durable until [`SegmentWriter::sync`]).
    pub fn append(&mut self, frames: &[u8]) -> Result<(), WalDirError> {
        self.file
            .append(frames)
            .map_err(|e| WalDirError::io(format!("append to {}", self.current()), e))
    }

    /// One `fdatasync` of the open segment.
    pub fn sync(&mut self) -> Result<(), WalDirError> {
        self.file
            .sync()
            .map_err(|e| WalDirError::io(format!("sync {}", self.current()), e))
    }

    /// Starts a new segment at `next_seq` if the open one is full. Call only after a sync,
    /// so an older segment is always complete on disk.
    pub fn roll_if_full(&mut self, next_seq: u64) -> Result<bool, WalDirError> {
        if self.file.len() < self.segment_bytes_max {
            return Ok(false);
        }
        let name = segment_name(next_seq);
        self.file = self
            .dir
            .open_append(&name)
            .map_err(|e| WalDirError::io(format!("create {name}"), e))?;
        self.segments.push_back((next_seq, name));
        Ok(true)
    }

    /// Removes segments whose records all have `seq <= covered_seq`, never the open one.
    pub fn remove_covered(&mut self, covered_seq: u64) -> Result<usize, WalDirError> {
        let mut removed = 0;
        // Segment i is wholly covered when segment i+1 starts at or before covered_seq + 1.
        while self.segments.len() > 1 && self.segments[1].0 <= covered_seq + 1 {
            let (_, name) = self.segments.pop_front().expect("len > 1");
            self.dir
                .remove(&name)
                .map_err(|e| WalDirError::io(format!("remove {name}"), e))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Removes every segment and starts an empty one at `next_seq`: a secondary that
    /// installed a snapshot newer than its whole log (see `engine::replica`).
    pub fn reset(&mut self, next_seq: u64) -> Result<(), WalDirError> {
        let name = segment_name(next_seq);
        self.file = self
            .dir
            .open_append(&name)
            .map_err(|e| WalDirError::io(format!("create {name}"), e))?;
        for (_, old) in std::mem::take(&mut self.segments) {
            if old != name {
                self.dir
                    .remove(&old)
                    .map_err(|e| WalDirError::io(format!("remove {old}"), e))?;
            }
        }
        self.segments.push_back((next_seq, name));
        Ok(())
    }

    /// The open segment's name.
    pub fn current(&self) -> &str {
        &self.segments.back().expect("never empty").1
    }

    /// The first sequence still on disk.
    pub fn oldest_seq(&self) -> u64 {
        self.segments.front().expect("never empty").0
    }
}
