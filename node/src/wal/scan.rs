//! Reading a WAL directory front to back: every frame is checked; a torn tail (the
//! unsynced end of the last write) is reported and, when repairing, cut; damage that
//! good records follow is an error naming the file and offset, never skipped. Zeros
//! after a segment's last record are its clean end (a preallocated segment).

use flashsale_core::wal::{Record, decode_record, peek_frame};

use super::{WalDir, WalDirError, list_segments};

/// How to treat what the scan finds.
#[derive(Clone, Debug)]
pub struct ScanOptions {
    /// Cut a torn tail (truncate the file, remove emptied later segments). Off for offline tools.
    pub repair: bool,
    /// Damage this close to the end of the last segment is a torn tail even if
    /// checksummed frames follow it: one unsynced batch may reach the disk out of order.
    /// Set it to the writer's batch size limit.
    pub tail_window_bytes: u64,
    /// Records below this are checked (checksum, sequence) but not decoded or handed over.
    pub from_seq: u64,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            repair: false,
            tail_window_bytes: 1 << 20,
            from_seq: 0,
        }
    }
}

/// One segment as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub name: String,
    pub first_seq: u64,
    /// Valid bytes: where the records end (the whole file unless a torn tail was found
    /// in it, or it is preallocated and zeros follow them).
    pub valid_bytes: u64,
    pub records: u64,
}

/// Where a torn tail started and what it held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub file: String,
    pub offset: u64,
    pub dropped_bytes: u64,
    pub reason: String,
}

/// What a scan found.
#[derive(Clone, Debug, Default)]
pub struct ScanReport {
    pub segments: Vec<SegmentInfo>,
    pub records: u64,
    /// First record in the directory (0 if none).
    pub first_seq: u64,
    /// Last valid record (0 if none).
    pub last_seq: u64,
    /// The sequence the next appended record must carry (0 if there is no segment at all).
    pub next_seq: u64,
    pub torn: Option<TornTail>,
}

/// Scans every segment in order, handing each valid record with `seq >= from_seq` to `on_record`.
pub fn scan(
    dir: &dyn WalDir,
    opts: &ScanOptions,
    mut on_record: impl FnMut(Record) -> Result<(), WalDirError>,
) -> Result<ScanReport, WalDirError> {
    let segs = list_segments(dir)?;
    let mut report = ScanReport::default();
    let mut expect: Option<u64> = None;
    for (i, (first_seq, name)) in segs.iter().enumerate() {
        let data = dir
            .read(name)
            .map_err(|e| WalDirError::io(format!("read {name}"), e))?;
        let mut info = SegmentInfo {
            name: name.clone(),
            first_seq: *first_seq,
            valid_bytes: 0,
            records: 0,
        };
        let mut next = expect.unwrap_or(*first_seq);
        if next != *first_seq {
            return Err(WalDirError::Gap {
                file: name.clone(),
                expected: next,
                found: *first_seq,
            });
        }
        let mut off = 0usize;
        let mut damage = None;
        // A preallocated segment's zeros after its last record are its clean end
        // (`wal::writer`): not damage, not a torn tail. (The last record may end in zero
        // bytes itself, so `end` can fall inside it; it is only ever read past.)
        let end = data.len() - data.iter().rev().take_while(|b| **b == 0).count();
        while off < end {
            let rest = &data[off..];
            let step = if next < opts.from_seq {
                peek_frame(rest).map(|(seq, used)| (seq, used, None))
            } else {
                decode_record(rest).map(|(rec, used)| (rec.seq, used, Some(rec)))
            };
            match step {
                Ok((seq, used, rec)) => {
                    if seq != next {
                        return Err(WalDirError::Gap {
                            file: name.clone(),
                            expected: next,
                            found: seq,
                        });
                    }
                    if let Some(rec) = rec {
                        on_record(rec)?;
                    }
                    off += used;
                    next += 1;
                    info.records += 1;
                }
                Err(e) => {
                    damage = Some(e.to_string());
                    break;
                }
            }
        }
        info.valid_bytes = off as u64;
        report.records += info.records;
        if report.first_seq == 0 && info.records > 0 {
            report.first_seq = *first_seq;
        }
        report.last_seq = next - 1;
        expect = Some(next);
        report.segments.push(info);
        if let Some(reason) = damage {
            let later = &segs[i + 1..];
            // A later segment that cannot be read is not taken for empty: repair
            // would remove it, records and all.
            let mut is_last = true;
            for (_, n) in later {
                let d = dir
                    .read(n)
                    .map_err(|e| WalDirError::io(format!("read {n}"), e))?;
                if starts_valid(&d) {
                    is_last = false;
                    break;
                }
            }
            let tail_len = (end - off) as u64;
            let in_window = is_last && tail_len <= opts.tail_window_bytes;
            if !in_window && (!is_last || any_valid_frame_after(&data[off..end], next)) {
                return Err(WalDirError::Corrupt {
                    file: name.clone(),
                    offset: off as u64,
                    reason,
                });
            }
            if opts.repair {
                dir.truncate(name, off as u64)
                    .map_err(|e| WalDirError::io(format!("truncate {name}"), e))?;
                for (_, n) in later {
                    dir.remove(n)
                        .map_err(|e| WalDirError::io(format!("remove {n}"), e))?;
                }
            }
            report.torn = Some(TornTail {
                file: name.clone(),
                offset: off as u64,
                dropped_bytes: tail_len,
                reason,
            });
            break;
        }
    }
    if report.records == 0 {
        report.last_seq = 0;
    }
    report.next_seq = expect.unwrap_or(0);
    Ok(report)
}

fn starts_valid(data: &[u8]) -> bool {
    peek_frame(data).is_ok()
}

/// Whether a checksummed frame with a plausible sequence starts anywhere after the
/// damaged byte: then the damage is in the middle of the log, not at its end.
fn any_valid_frame_after(data: &[u8], next_seq: u64) -> bool {
    (1..data.len()).any(|p| matches!(peek_frame(&data[p..]), Ok((seq, _)) if seq >= next_seq))
}
