//! Reading committed records back out of a live or offline WAL directory by sequence:
//! the seam replication catch-up and `wal export` use.

use flashsale_core::wal::{WalError, peek_frame};

use super::{WalDir, WalDirError, list_segments};

/// Encoded frames for records `first_seq..=last_seq`, contiguous.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frames {
    pub first_seq: u64,
    pub last_seq: u64,
    pub bytes: Vec<u8>,
}

impl Frames {
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Frames of records `from_seq..=to_seq`, stopping early once `bytes_max` is reached
/// (at least one record is returned if any is due). Records before the oldest
/// segment were compacted away: that is an error, the caller needs a snapshot.
pub fn read_frames(
    dir: &dyn WalDir,
    from_seq: u64,
    to_seq: u64,
    bytes_max: usize,
) -> Result<Frames, WalDirError> {
    read_frames_in_chunks(dir, from_seq, to_seq, bytes_max, READ_CHUNK_BYTES)
}

/// How much of a segment [`read_frames`] reads at a time.
const READ_CHUNK_BYTES: usize = 1 << 20;

fn read_frames_in_chunks(
    dir: &dyn WalDir,
    from_seq: u64,
    to_seq: u64,
    bytes_max: usize,
    read_chunk: usize,
) -> Result<Frames, WalDirError> {
    // A segment listed may be gone when it is read: compaction removed it meanwhile.
    // Then the listing as it is now decides (`Gap` if the records asked for went with
    // it), once; a segment that vanishes again is an error.
    for _ in 0..2 {
        if let Some(frames) = read_listed(dir, from_seq, to_seq, bytes_max, read_chunk)? {
            return Ok(frames);
        }
    }
    Err(WalDirError::io(
        format!("read from record {from_seq}"),
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "segments were removed while they were read, twice",
        ),
    ))
}

/// [`read_frames_in_chunks`] over one listing of the segments; `None` when a segment
/// listed was removed before anything was served.
fn read_listed(
    dir: &dyn WalDir,
    from_seq: u64,
    to_seq: u64,
    bytes_max: usize,
    read_chunk: usize,
) -> Result<Option<Frames>, WalDirError> {
    let segs = list_segments(dir)?;
    let mut out = Frames {
        first_seq: from_seq,
        last_seq: from_seq.saturating_sub(1),
        bytes: Vec::new(),
    };
    if from_seq > to_seq {
        return Ok(Some(out));
    }
    match segs.first() {
        Some((first, name)) if *first > from_seq => {
            return Err(WalDirError::Gap {
                file: name.clone(),
                expected: from_seq,
                found: *first,
            });
        }
        None => return Ok(Some(out)),
        _ => {}
    }
    // Start from the last segment that begins at or before from_seq.
    let start = segs
        .iter()
        .rposition(|(first, _)| *first <= from_seq)
        .unwrap_or(0);
    for (_, name) in &segs[start..] {
        // A segment is read in chunks as its frames are used, so a call that stops early
        // (at `bytes_max`, at `to_seq`, where the records end before a preallocated
        // segment's zeros) reads little more than it serves.
        let mut data: Vec<u8> = Vec::new();
        let mut off = 0; // into `data`
        let mut read_to = 0u64; // of the file
        let mut at_end = false;
        loop {
            let (seq, used) = match peek_frame(&data[off..]) {
                Ok(frame) => frame,
                Err(WalError::Truncated { need, have }) if !at_end => {
                    data.drain(..off);
                    off = 0;
                    let more = read_chunk.max(need - have);
                    let chunk = match dir.read_range(name, read_to, more) {
                        Ok(chunk) => chunk,
                        // Compacted away since it was listed: serve what was read (the
                        // next call starts after it), or list again.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            return Ok((!out.bytes.is_empty()).then_some(out));
                        }
                        Err(e) => return Err(WalDirError::io(format!("read {name}"), e)),
                    };
                    at_end = chunk.len() < more;
                    read_to += chunk.len() as u64;
                    data.extend_from_slice(&chunk);
                    continue;
                }
                // The segment's end.
                Err(WalError::Truncated { have: 0, .. }) => break,
                // A frame that fails here is past the durable end (being written), the
                // zeros after a preallocated segment's records, or damage; either way
                // nothing after it is served.
                Err(_) => return Ok(Some(out)),
            };
            if seq > to_seq || (!out.bytes.is_empty() && out.bytes.len() + used > bytes_max) {
                return Ok(Some(out));
            }
            if seq >= from_seq {
                if seq != out.last_seq + 1 {
                    return Err(WalDirError::Gap {
                        file: name.clone(),
                        expected: out.last_seq + 1,
                        found: seq,
                    });
                }
                out.bytes.extend_from_slice(&data[off..off + used]);
                out.last_seq = seq;
            }
            off += used;
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use flashsale_core::wal::{Record, RecordBody, encode_record};

    use super::*;
    use crate::wal::{MemDir, segment_name};

    fn frame(seq: u64, customer_len: usize) -> Vec<u8> {
        let rec = Record {
            seq,
            epoch: 1,
            at_ms: 1,
            body: RecordBody::Purchase {
                sku: "sku".into(),
                quantity: 1,
                customer: "c".repeat(customer_len),
                idempotency_key: format!("k{seq}"),
                expires_at_ms: 2,
            },
        };
        let mut out = Vec::new();
        encode_record(&rec, &mut out).unwrap();
        out
    }

    /// Segments of records 1..=30 (sizes varied), the last one followed by `zeros`
    /// zero bytes as a preallocated segment is.
    fn log(zeros: usize) -> MemDir {
        let dir = MemDir::new();
        for (first, last) in [(1, 10), (11, 25), (26, 30)] {
            let mut f = dir.open_segment(&segment_name(first), 0).unwrap();
            for seq in first..=last {
                f.append(&frame(seq, (seq as usize * 37) % 300)).unwrap();
            }
            if last == 30 {
                f.append(&vec![0; zeros]).unwrap();
            }
            f.sync().unwrap();
        }
        dir
    }

    /// Counts the bytes read through it; its hooks remove segments as a compaction
    /// would between a reader's listing and its reads.
    struct Counting(MemDir, AtomicU64, parking_lot::Mutex<Vec<Hook>>);

    /// When segment `on` is read after `reads_first` reads of it, `remove` goes; with
    /// nothing to remove, every read of `on` fails as a missing file.
    struct Hook {
        on: String,
        reads_first: u32,
        remove: Vec<String>,
    }

    fn hook(on: u64, reads_first: u32, remove: &[u64]) -> Hook {
        Hook {
            on: segment_name(on),
            reads_first,
            remove: remove.iter().map(|&s| segment_name(s)).collect(),
        }
    }

    fn counting(dir: MemDir) -> Counting {
        Counting(dir, AtomicU64::new(0), parking_lot::Mutex::new(Vec::new()))
    }

    impl WalDir for Counting {
        fn list(&self) -> std::io::Result<Vec<String>> {
            self.0.list()
        }
        fn read(&self, name: &str) -> std::io::Result<Vec<u8>> {
            let data = self.0.read(name)?;
            self.1.fetch_add(data.len() as u64, Ordering::Relaxed);
            Ok(data)
        }
        fn read_range(&self, name: &str, at: u64, len: usize) -> std::io::Result<Vec<u8>> {
            let mut hooks = self.2.lock();
            if let Some(i) = hooks.iter().position(|h| h.on == name) {
                let h = &mut hooks[i];
                if h.reads_first > 0 {
                    h.reads_first -= 1;
                } else if h.remove.is_empty() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "listed, not found",
                    ));
                } else {
                    for n in hooks.remove(i).remove {
                        self.0.remove(&n)?;
                    }
                }
            }
            let data = self.0.read_range(name, at, len)?;
            self.1.fetch_add(data.len() as u64, Ordering::Relaxed);
            Ok(data)
        }
        fn open_segment(
            &self,
            name: &str,
            at: u64,
        ) -> std::io::Result<Box<dyn crate::wal::WalFile>> {
            self.0.open_segment(name, at)
        }
        fn truncate(&self, name: &str, len: u64) -> std::io::Result<()> {
            self.0.truncate(name, len)
        }
        fn sync_all(&self) -> std::io::Result<()> {
            self.0.sync_all()
        }
        fn remove(&self, name: &str) -> std::io::Result<()> {
            self.0.remove(name)
        }
        fn write_atomic(
            &self,
            name: &str,
            fill: &mut crate::wal::store::Fill<'_>,
        ) -> std::io::Result<()> {
            self.0.write_atomic(name, fill)
        }
        fn describe(&self) -> String {
            self.0.describe()
        }
        fn move_aside(&self, names: &[String], into: &str) -> std::io::Result<()> {
            self.0.move_aside(names, into)
        }
    }

    #[test]
    fn reading_in_chunks_of_any_size_serves_what_whole_segments_do() {
        let dir = log(5000);
        let whole: Vec<u8> = [1, 11, 26]
            .iter()
            .flat_map(|&first| dir.read(&segment_name(first)).unwrap())
            .collect();
        for chunk in [1, 7, 64, 300, 1 << 20] {
            for from in 1..=31 {
                for (to, max) in [(30, usize::MAX), (17, usize::MAX), (30, 700), (30, 1)] {
                    let got = read_frames_in_chunks(&dir, from, to, max, chunk).unwrap();
                    // What the frames from..=to, cut at `max` (at least one), are.
                    let mut want = Frames {
                        first_seq: from,
                        last_seq: from - 1,
                        bytes: Vec::new(),
                    };
                    let mut off = 0;
                    while let Ok((seq, used)) = peek_frame(&whole[off..]) {
                        if seq > to || (!want.bytes.is_empty() && want.bytes.len() + used > max) {
                            break;
                        }
                        if seq >= from {
                            want.bytes.extend_from_slice(&whole[off..off + used]);
                            want.last_seq = seq;
                        }
                        off += used;
                    }
                    assert_eq!(got, want, "chunk {chunk}, from {from}, to {to}, max {max}");
                }
            }
        }
    }

    #[test]
    fn a_torn_frame_at_a_segment_end_ends_what_is_served() {
        let dir = log(0);
        let name = segment_name(11);
        let len = dir.read(&name).unwrap().len() as u64;
        dir.truncate(&name, len - 3).unwrap();
        for chunk in [5, 1 << 20] {
            let got = read_frames_in_chunks(&dir, 3, 30, usize::MAX, chunk).unwrap();
            assert_eq!((got.first_seq, got.last_seq), (3, 24), "chunk {chunk}");
        }
    }

    #[test]
    fn catch_up_reads_up_to_where_the_records_end_not_the_zeros_after_them() {
        let dir = counting(log(16 << 20));
        let got = read_frames(&dir, 27, 30, usize::MAX).unwrap();
        assert_eq!((got.first_seq, got.last_seq), (27, 30));
        let read = dir.1.load(Ordering::Relaxed);
        assert!(
            read <= 2 << 20,
            "read {read} bytes of a 16 MiB segment to serve 4 records"
        );
    }

    fn is_gap(got: &Result<Frames, WalDirError>, want_expected: u64, want_found: u64) -> bool {
        matches!(got, Err(WalDirError::Gap { expected, found, .. }) if (*expected, *found) == (want_expected, want_found))
    }

    /// Compaction (oldest segments first) removes a segment after the reader listed it:
    /// the reader serves what it read before, contiguous, and answers `Gap` (take a
    /// snapshot) when the records asked for went, never an I/O error.
    #[test]
    fn a_segment_compacted_while_it_is_read_is_a_gap_not_an_error() {
        // The first segment goes before anything is read: listed again, a gap.
        let dir = counting(log(0));
        dir.2.lock().push(hook(1, 0, &[1]));
        let got = read_frames_in_chunks(&dir, 3, 30, usize::MAX, 64);
        assert!(is_gap(&got, 3, 11), "{got:?}");

        // The first two go when the reader reaches the second: what it read of the
        // first is served, and the next call is told of the gap.
        let dir = counting(log(0));
        dir.2.lock().push(hook(11, 0, &[1, 11]));
        let got = read_frames_in_chunks(&dir, 5, 30, usize::MAX, 64).unwrap();
        assert_eq!(
            (got.first_seq, got.last_seq),
            (5, 10),
            "what was read first"
        );
        let next = read_frames_in_chunks(&dir, 11, 30, usize::MAX, 64);
        assert!(is_gap(&next, 11, 26), "{next:?}");

        // The first goes in the middle of reading it, after some of its chunks.
        let dir = counting(log(0));
        dir.2.lock().push(hook(1, 4, &[1]));
        let got = read_frames_in_chunks(&dir, 1, 30, usize::MAX, 64).unwrap();
        assert!(
            (1..10).contains(&got.last_seq) && got.first_seq == 1,
            "{got:?}"
        );
        let mut rest = &got.bytes[..];
        for seq in 1..=got.last_seq {
            let (at, used) = peek_frame(rest).unwrap();
            assert_eq!(at, seq, "served in order, none skipped");
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        let next = read_frames_in_chunks(&dir, got.last_seq + 1, 30, usize::MAX, 64);
        assert!(is_gap(&next, got.last_seq + 1, 11), "{next:?}");

        // A segment listed that can never be read: an error after listing twice, not
        // a loop.
        let dir = counting(log(0));
        dir.2.lock().push(hook(1, 0, &[]));
        let got = read_frames_in_chunks(&dir, 3, 30, usize::MAX, 64);
        assert!(
            matches!(&got, Err(WalDirError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound),
            "{got:?}"
        );
    }

    #[test]
    fn real_files_read_ranges_as_memory_does() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = crate::wal::FsDir::create(tmp.path()).unwrap();
        let mem = log(100);
        let name = segment_name(26);
        let data = mem.read(&name).unwrap();
        let mut f = fs.open_segment(&name, 0).unwrap();
        f.append(&data).unwrap();
        f.sync().unwrap();
        let len = data.len() as u64;
        for (at, n) in [
            (0, 0),
            (0, 10),
            (5, 1 << 20),
            (len - 1, 10),
            (len, 10),
            (len + 7, 10),
        ] {
            assert_eq!(
                fs.read_range(&name, at, n).unwrap(),
                mem.read_range(&name, at, n).unwrap(),
                "at {at}, {n} bytes"
            );
        }
        assert!(fs.read_range("missing", 0, 1).is_err());
    }
}
