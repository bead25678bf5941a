//! WAL damage, property-tested: write records over several segments (the last one
//! with zeros after its records or not, as a preallocated one has), then truncate or
//! flip a byte anywhere. Recovery must never hand back a damaged record, never
//! lose a record that ended before the damage, and refuse (naming the file) damage
//! that good records follow beyond the torn-tail window.

use std::sync::Arc;

use flashsale_core::wal::{Record, RecordBody, encode_record};
use proptest::prelude::*;
use stock_node::wal::{
    MemDir, ScanOptions, SegmentWriter, WalDir, WalDirError, list_segments, scan,
};

const WINDOW_BYTES: u64 = 96;

fn record(seq: u64, n: u8) -> Record {
    let body = match n % 3 {
        0 => RecordBody::Purchase {
            sku: format!("sku{}", n % 5),
            quantity: 1 + n as u32 % 3,
            customer: format!("customer-{n}"),
            idempotency_key: format!("key-{seq}"),
            expires_at_ms: 1000 + seq as i64,
        },
        1 => RecordBody::Confirm { order_id: seq - 1 },
        _ => RecordBody::Expire { order_id: seq / 2 },
    };
    Record {
        seq,
        epoch: 1 + seq / 10,
        at_ms: seq as i64,
        body,
    }
}

/// Writes `batches` (sizes) of records, syncing after each, into small segments.
/// Returns every record with (file, end offset) of its frame.
fn write_log(
    dir: &MemDir,
    batches: &[Vec<u8>],
    segment_bytes_max: u64,
) -> Vec<(Record, String, u64)> {
    let shared: Arc<dyn WalDir> = Arc::new(dir.clone());
    let mut w = SegmentWriter::open(shared, Vec::new(), None, 1, segment_bytes_max).unwrap();
    let mut out = Vec::new();
    let mut seq = 1;
    let mut file_len = 0u64;
    for batch in batches {
        let mut buf = Vec::new();
        for n in batch {
            let r = record(seq, *n);
            let before = buf.len() as u64;
            encode_record(&r, &mut buf).unwrap();
            let end = file_len + buf.len() as u64;
            let _ = before;
            out.push((r, w.current().to_owned(), end));
            seq += 1;
        }
        w.append(&buf).unwrap();
        w.sync().unwrap();
        file_len += buf.len() as u64;
        if w.roll_if_full(seq).unwrap() {
            file_len = 0;
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Damage {
    Truncate,
    Flip(u8),
}

fn damage_strategy() -> impl Strategy<Value = Damage> {
    prop_oneof![Just(Damage::Truncate), (1u8..=255).prop_map(Damage::Flip)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn recovery_never_misreads_or_loses_earlier_records(
        batches in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..6), 1..12),
        segment_bytes_max in 150u64..600,
        file_pick in any::<prop::sample::Index>(),
        offset_pick in any::<prop::sample::Index>(),
        damage in damage_strategy(),
        prealloc in prop_oneof![Just(0usize), 1usize..400],
    ) {
        let dir = MemDir::new();
        let written = write_log(&dir, &batches, segment_bytes_max);
        let segs = list_segments(&dir).unwrap();
        // A preallocated last segment: zeros after its records (`wal::writer`).
        let last_name = segs.last().unwrap().1.clone();
        dir.with_files(|files| {
            files.get_mut(&last_name).unwrap().data.extend(std::iter::repeat_n(0, prealloc));
        });
        let (_, file) = file_pick.get(&segs).clone();
        let file_len = dir.read(&file).unwrap().len();
        prop_assume!(file_len > 0);
        let offset = offset_pick.index(file_len);
        dir.with_files(|files| {
            let f = files.get_mut(&file).unwrap();
            match damage {
                Damage::Truncate => f.data.truncate(offset),
                Damage::Flip(x) => f.data[offset] ^= x,
            }
        });
        let file_rank = segs.iter().position(|(_, n)| *n == file).unwrap();
        // Records wholly before the damage point.
        let intact: Vec<&Record> = written
            .iter()
            .filter(|(_, f, end)| {
                let rank = segs.iter().position(|(_, n)| n == f).unwrap();
                rank < file_rank || (rank == file_rank && *end <= offset as u64)
            })
            .map(|(r, _, _)| r)
            .collect();

        let opts = ScanOptions { repair: true, tail_window_bytes: WINDOW_BYTES, from_seq: 0 };
        let mut got = Vec::new();
        match scan(&dir, &opts, |r| { got.push(r); Ok(()) }) {
            Ok(report) => {
                // What came back is exactly the log's prefix: no damaged record, nothing invented.
                let expected: Vec<&Record> = written.iter().map(|(r, _, _)| r).take(got.len()).collect();
                prop_assert_eq!(got.iter().collect::<Vec<_>>(), expected);
                prop_assert!(got.len() >= intact.len(), "lost records before the damage: {} < {}", got.len(), intact.len());
                // The cut is durable and clean: a second scan finds no damage and the same records.
                let mut again = 0;
                let second = scan(&dir, &opts, |_| { again += 1; Ok(()) }).unwrap();
                prop_assert!(second.torn.is_none());
                prop_assert_eq!(again, got.len());
                prop_assert_eq!(second.next_seq, report.next_seq);
            }
            Err(WalDirError::Corrupt { file: f, .. }) | Err(WalDirError::Gap { file: f, .. }) => {
                // Refusing is only right when the damage is not a torn end of the log.
                prop_assert!(got.len() >= intact.len() || got.len() == intact.len());
                let last = segs.last().unwrap().1.clone();
                // The window counts from the start of the damaged record.
                let record_start = written
                    .iter()
                    .filter(|(_, f, end)| *f == file && *end <= offset as u64)
                    .map(|(_, _, end)| *end)
                    .max()
                    .unwrap_or(0);
                // Up to the last byte that is not zero: what follows is the clean end.
                let data = dir.read(&file).unwrap();
                let end = data.len() - data.iter().rev().take_while(|b| **b == 0).count();
                let is_tail = file == last && (end as u64).saturating_sub(record_start) <= WINDOW_BYTES;
                prop_assert!(!is_tail, "refused a torn tail in {}", file);
                prop_assert!(f == file || segs.iter().any(|(_, n)| *n == f));
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}

#[test]
fn torn_write_in_the_last_segment_is_cut_and_the_log_continues() {
    let dir = MemDir::new();
    let written = write_log(&dir, &[vec![1, 2, 3], vec![4, 5]], 1 << 20);
    let segs = list_segments(&dir).unwrap();
    let name = segs[0].1.clone();
    // Half of the last record reached the disk.
    dir.with_files(|f| {
        let d = &mut f.get_mut(&name).unwrap().data;
        let cut = d.len() - 7;
        d.truncate(cut);
    });
    let opts = ScanOptions {
        repair: true,
        tail_window_bytes: 1 << 20,
        from_seq: 0,
    };
    let mut got = Vec::new();
    let report = scan(&dir, &opts, |r| {
        got.push(r);
        Ok(())
    })
    .unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!(got[3], written[3].0);
    assert_eq!(report.next_seq, 5);
    assert!(report.torn.is_some());
}

#[test]
fn damage_in_the_middle_is_refused_with_file_and_offset() {
    let dir = MemDir::new();
    write_log(&dir, &[vec![1; 40]], 1 << 20);
    let name = list_segments(&dir).unwrap()[0].1.clone();
    dir.with_files(|f| f.get_mut(&name).unwrap().data[100] ^= 0xff);
    let opts = ScanOptions {
        repair: true,
        tail_window_bytes: 64,
        from_seq: 0,
    };
    match scan(&dir, &opts, |_| Ok(())) {
        Err(WalDirError::Corrupt { file, offset, .. }) => {
            assert_eq!(file, name);
            assert!(offset <= 100);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Refusing changed nothing on disk: the damaged byte is still there to inspect.
    let fresh = MemDir::new();
    write_log(&fresh, &[vec![1; 40]], 1 << 20);
    assert_eq!(
        dir.read(&name).unwrap().len(),
        fresh.read(&name).unwrap().len()
    );
    assert_eq!(
        dir.read(&name).unwrap()[100],
        fresh.read(&name).unwrap()[100] ^ 0xff
    );
}

/// A segment whose reads fail (a medium error), over a `MemDir`.
struct Unreadable {
    dir: MemDir,
    name: String,
}

impl WalDir for Unreadable {
    fn list(&self) -> std::io::Result<Vec<String>> {
        self.dir.list()
    }
    fn read(&self, name: &str) -> std::io::Result<Vec<u8>> {
        if name == self.name {
            return Err(std::io::Error::from_raw_os_error(5)); // EIO
        }
        self.dir.read(name)
    }
    fn open_segment(
        &self,
        name: &str,
        at: u64,
    ) -> std::io::Result<Box<dyn stock_node::wal::WalFile>> {
        self.dir.open_segment(name, at)
    }
    fn truncate(&self, name: &str, len: u64) -> std::io::Result<()> {
        self.dir.truncate(name, len)
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.dir.remove(name)
    }
    fn write_atomic(
        &self,
        name: &str,
        fill: &mut stock_node::wal::store::Fill<'_>,
    ) -> std::io::Result<()> {
        self.dir.write_atomic(name, fill)
    }
    fn describe(&self) -> String {
        self.dir.describe()
    }
    fn move_aside(&self, names: &[String], into: &str) -> std::io::Result<()> {
        self.dir.move_aside(names, into)
    }
    fn sync_all(&self) -> std::io::Result<()> {
        self.dir.sync_all()
    }
}

/// A torn end in one segment is only a torn tail if no segment after it holds records.
/// One that cannot be read is not taken for empty: recovery stops with the read error,
/// naming the file, and removes nothing (repair would have removed it, records and all).
#[test]
fn a_later_segment_that_cannot_be_read_stops_recovery_and_is_kept() {
    let dir = MemDir::new();
    write_log(&dir, &[vec![1, 2, 3], vec![4, 5, 6]], 100);
    let segs = list_segments(&dir).unwrap();
    assert!(segs.len() >= 2, "a segment per batch: {segs:?}");
    let (first, second) = (segs[0].1.clone(), segs[1].1.clone());
    dir.with_files(|f| {
        let d = &mut f.get_mut(&first).unwrap().data;
        let cut = d.len() - 7;
        d.truncate(cut);
    });
    let first_len = dir.read(&first).unwrap().len();
    let unreadable = Unreadable {
        dir: dir.clone(),
        name: second.clone(),
    };
    let opts = ScanOptions {
        repair: true,
        tail_window_bytes: 1 << 20,
        from_seq: 0,
    };
    match scan(&unreadable, &opts, |_| Ok(())) {
        Err(WalDirError::Io { what, .. }) => assert!(what.contains(&second), "{what}"),
        other => panic!("expected the read error of {second}, got {other:?}"),
    }
    assert_eq!(list_segments(&dir).unwrap(), segs, "a segment was removed");
    assert_eq!(
        dir.read(&first).unwrap().len(),
        first_len,
        "a segment was cut"
    );
}
