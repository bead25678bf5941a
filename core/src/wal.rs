//! The WAL record format: what the stock node writes to its segment files and what
//! replication ships over Redis. One format for both, so a replicated batch is the
//! same bytes the primary made durable.
//!
//! A record on disk is a frame:
//!
//! ```text
//! len: u32 LE   (payload bytes, 1..=RECORD_BYTES_MAX)
//! crc: u32 LE   (crc32c of the payload)
//! payload:      seq u64 LE | epoch u64 LE | at_ms i64 LE | kind u8 | body
//! ```
//!
//! Bodies are a compact binary form for the hot records (purchase, confirm, cancel,
//! expire) and JSON for the rare ones (sale config, role), so the config can grow
//! fields without a format change. Strings are `u32 LE length | UTF-8 bytes`.
//!
//! A batch (one group commit, the replication unit) is:
//!
//! ```text
//! magic "FSB1" | epoch u64 | first_seq u64 | last_seq u64 | count u32 | header crc32c u32 | frames…
//! ```
//!
//! Decoding never panics and never returns a record whose checksum failed: damaged
//! bytes are a [`WalError`].

use serde::{Deserialize, Serialize};

use crate::role::RoleAssignment;
use crate::{SaleConfig, UnixMs};

/// Largest payload one record may have; bigger lengths are damage, not data.
pub const RECORD_BYTES_MAX: usize = 1 << 20;
/// Frame header: length + checksum.
pub const FRAME_HEADER_BYTES: usize = 8;
/// Fixed part of a payload: seq, epoch, at_ms, kind.
const PAYLOAD_FIXED_BYTES: usize = 8 + 8 + 8 + 1;
const BATCH_MAGIC: &[u8; 4] = b"FSB1";
/// Batch header: magic, epoch, first, last, count, crc.
pub const BATCH_HEADER_BYTES: usize = 4 + 8 + 8 + 8 + 4 + 4;

/// One change to a sale's state. Every change the node makes is one of these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Position in the sale's log, from 1, without gaps.
    pub seq: u64,
    /// The writer's fencing epoch when it wrote the record.
    pub epoch: u64,
    /// The writer's wall clock when it applied the record (replay never reads a clock).
    pub at_ms: UnixMs,
    pub body: RecordBody,
}

/// What changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum RecordBody {
    /// The sale's whole configuration (first config or a change).
    Configure { config: SaleConfig },
    /// The node's role and epoch.
    Role { assignment: RoleAssignment },
    /// A hold of `quantity` units; the order's id is the record's `seq`.
    #[serde(rename_all = "camelCase")]
    Purchase {
        sku: String,
        quantity: u32,
        customer: String,
        idempotency_key: String,
        expires_at_ms: UnixMs,
    },
    #[serde(rename_all = "camelCase")]
    Confirm { order_id: u64 },
    #[serde(rename_all = "camelCase")]
    Cancel { order_id: u64 },
    /// An unconfirmed hold ran out; its units return to stock.
    #[serde(rename_all = "camelCase")]
    Expire { order_id: u64 },
}

const KIND_CONFIGURE: u8 = 1;
const KIND_ROLE: u8 = 2;
const KIND_PURCHASE: u8 = 3;
const KIND_CONFIRM: u8 = 4;
const KIND_CANCEL: u8 = 5;
const KIND_EXPIRE: u8 = 6;

/// Why bytes are not a valid record or batch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WalError {
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("record length {0} out of range")]
    BadLength(usize),
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("unknown record kind {0}")]
    BadKind(u8),
    #[error("invalid UTF-8 in a string field")]
    BadUtf8,
    #[error("invalid JSON body: {0}")]
    BadJson(String),
    #[error("{0} unexpected bytes after the body")]
    TrailingBytes(usize),
    #[error("not a batch (bad magic)")]
    BadMagic,
    #[error("batch damaged: {0}")]
    BadBatch(String),
    #[error("record too large: {0} bytes")]
    TooLarge(usize),
}

/// Appends `rec` as one frame to `out`. Fails only if the record is over [`RECORD_BYTES_MAX`]
/// (then `out` is left as it was).
pub fn encode_record(rec: &Record, out: &mut Vec<u8>) -> Result<(), WalError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    out.extend_from_slice(&rec.seq.to_le_bytes());
    out.extend_from_slice(&rec.epoch.to_le_bytes());
    out.extend_from_slice(&rec.at_ms.to_le_bytes());
    match &rec.body {
        RecordBody::Configure { config } => {
            out.push(KIND_CONFIGURE);
            put_json(out, config);
        }
        RecordBody::Role { assignment } => {
            out.push(KIND_ROLE);
            put_json(out, assignment);
        }
        RecordBody::Purchase {
            sku,
            quantity,
            customer,
            idempotency_key,
            expires_at_ms,
        } => {
            out.push(KIND_PURCHASE);
            put_str(out, sku);
            out.extend_from_slice(&quantity.to_le_bytes());
            put_str(out, customer);
            put_str(out, idempotency_key);
            out.extend_from_slice(&expires_at_ms.to_le_bytes());
        }
        RecordBody::Confirm { order_id } => {
            out.push(KIND_CONFIRM);
            out.extend_from_slice(&order_id.to_le_bytes());
        }
        RecordBody::Cancel { order_id } => {
            out.push(KIND_CANCEL);
            out.extend_from_slice(&order_id.to_le_bytes());
        }
        RecordBody::Expire { order_id } => {
            out.push(KIND_EXPIRE);
            out.extend_from_slice(&order_id.to_le_bytes());
        }
    }
    let payload_len = out.len() - start - FRAME_HEADER_BYTES;
    if payload_len > RECORD_BYTES_MAX {
        out.truncate(start);
        return Err(WalError::TooLarge(payload_len));
    }
    let crc = crc32c::crc32c(&out[start + FRAME_HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Reads one frame from the start of `buf`; returns the record and the bytes it took.
pub fn decode_record(buf: &[u8]) -> Result<(Record, usize), WalError> {
    let (payload, used) = frame_payload(buf)?;
    let mut r = Reader { buf: payload };
    let seq = r.u64()?;
    let epoch = r.u64()?;
    let at_ms = r.u64()? as i64;
    let body = match r.u8()? {
        KIND_CONFIGURE => RecordBody::Configure { config: r.json()? },
        KIND_ROLE => RecordBody::Role {
            assignment: r.json()?,
        },
        KIND_PURCHASE => {
            let sku = r.string()?;
            let quantity = r.u32()?;
            let customer = r.string()?;
            let idempotency_key = r.string()?;
            let expires_at_ms = r.u64()? as i64;
            RecordBody::Purchase {
                sku,
                quantity,
                customer,
                idempotency_key,
                expires_at_ms,
            }
        }
        KIND_CONFIRM => RecordBody::Confirm { order_id: r.u64()? },
        KIND_CANCEL => RecordBody::Cancel { order_id: r.u64()? },
        KIND_EXPIRE => RecordBody::Expire { order_id: r.u64()? },
        k => return Err(WalError::BadKind(k)),
    };
    if !r.buf.is_empty() {
        return Err(WalError::TrailingBytes(r.buf.len()));
    }
    Ok((
        Record {
            seq,
            epoch,
            at_ms,
            body,
        },
        used,
    ))
}

/// Checks a frame's length and checksum without decoding the body; returns the
/// record's sequence number and the frame's size. Cheap enough for scanning.
pub fn peek_frame(buf: &[u8]) -> Result<(u64, usize), WalError> {
    let (payload, used) = frame_payload(buf)?;
    let seq = u64::from_le_bytes(payload[..8].try_into().expect("length checked"));
    Ok((seq, used))
}

fn frame_payload(buf: &[u8]) -> Result<(&[u8], usize), WalError> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Err(WalError::Truncated {
            need: FRAME_HEADER_BYTES,
            have: buf.len(),
        });
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    if !(PAYLOAD_FIXED_BYTES..=RECORD_BYTES_MAX).contains(&len) {
        return Err(WalError::BadLength(len));
    }
    let need = FRAME_HEADER_BYTES + len;
    if buf.len() < need {
        return Err(WalError::Truncated {
            need,
            have: buf.len(),
        });
    }
    let stored = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let payload = &buf[FRAME_HEADER_BYTES..need];
    let computed = crc32c::crc32c(payload);
    if stored != computed {
        return Err(WalError::Checksum { stored, computed });
    }
    Ok((payload, need))
}

/// One group commit as replication ships it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub epoch: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: Vec<Record>,
}

/// Wraps already-encoded frames (records `first_seq..=last_seq`, contiguous) as a batch.
pub fn encode_batch(epoch: u64, first_seq: u64, last_seq: u64, frames: &[u8]) -> Vec<u8> {
    let count = last_seq.saturating_sub(first_seq).saturating_add(1) as u32;
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + frames.len());
    out.extend_from_slice(BATCH_MAGIC);
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&first_seq.to_le_bytes());
    out.extend_from_slice(&last_seq.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(frames);
    out
}

/// Decodes a batch, checking every frame, that the records are exactly
/// `first_seq..=last_seq` in order, and that none carries a newer epoch than the batch.
pub fn decode_batch(buf: &[u8]) -> Result<Batch, WalError> {
    if buf.len() < BATCH_HEADER_BYTES {
        return Err(WalError::Truncated {
            need: BATCH_HEADER_BYTES,
            have: buf.len(),
        });
    }
    if &buf[..4] != BATCH_MAGIC {
        return Err(WalError::BadMagic);
    }
    let mut r = Reader {
        buf: &buf[4..BATCH_HEADER_BYTES],
    };
    let epoch = r.u64()?;
    let first_seq = r.u64()?;
    let last_seq = r.u64()?;
    let count = r.u32()? as usize;
    let stored = r.u32()?;
    let computed = crc32c::crc32c(&buf[..BATCH_HEADER_BYTES - 4]);
    if stored != computed {
        return Err(WalError::Checksum { stored, computed });
    }
    if last_seq < first_seq || (last_seq - first_seq + 1) != count as u64 {
        return Err(WalError::BadBatch(format!(
            "{count} records cannot span {first_seq}..={last_seq}"
        )));
    }
    let mut rest = &buf[BATCH_HEADER_BYTES..];
    // Each frame is at least header + fixed payload, so the count bounds the allocation.
    let mut records =
        Vec::with_capacity(count.min(rest.len() / (FRAME_HEADER_BYTES + PAYLOAD_FIXED_BYTES)));
    let mut expect = first_seq;
    while !rest.is_empty() {
        let (rec, used) = decode_record(rest)?;
        if rec.seq != expect || rec.seq > last_seq {
            return Err(WalError::BadBatch(format!(
                "record seq {} where {expect} was due",
                rec.seq
            )));
        }
        if rec.epoch > epoch {
            return Err(WalError::BadBatch(format!(
                "record epoch {} above batch epoch {epoch}",
                rec.epoch
            )));
        }
        records.push(rec);
        rest = &rest[used..];
        expect += 1;
    }
    if records.len() != count {
        return Err(WalError::BadBatch(format!(
            "{} records, header says {count}",
            records.len()
        )));
    }
    Ok(Batch {
        epoch,
        first_seq,
        last_seq,
        records,
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_json<T: Serialize>(out: &mut Vec<u8>, v: &T) {
    // Serializing these plain structs to a Vec cannot fail.
    let json = serde_json::to_vec(v).unwrap_or_default();
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
}

/// A bounds-checked cursor: every read is `Truncated` instead of a panic.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WalError> {
        if self.buf.len() < n {
            return Err(WalError::Truncated {
                need: n,
                have: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WalError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, WalError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, WalError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self) -> Result<&'a [u8], WalError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, WalError> {
        std::str::from_utf8(self.bytes()?)
            .map(str::to_owned)
            .map_err(|_| WalError::BadUtf8)
    }
    fn json<T: for<'de> Deserialize<'de>>(&mut self) -> Result<T, WalError> {
        serde_json::from_slice(self.bytes()?).map_err(|e| WalError::BadJson(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ItemSpec;
    use crate::role::Role;

    fn samples() -> Vec<Record> {
        let config = SaleConfig {
            name: "s".into(),
            items: vec![ItemSpec {
                sku: "a".into(),
                stock: 5,
                per_customer_limit: 2,
            }],
            starts_at_ms: None,
            ends_at_ms: Some(9),
            reservation_ttl_ms: 1000,
            durability: Default::default(),
        };
        let bodies = vec![
            RecordBody::Configure { config },
            RecordBody::Role {
                assignment: RoleAssignment {
                    role: Role::Primary,
                    epoch: 3,
                    primary_url: None,
                },
            },
            RecordBody::Purchase {
                sku: "a".into(),
                quantity: 2,
                customer: "c".into(),
                idempotency_key: "k".into(),
                expires_at_ms: 77,
            },
            RecordBody::Confirm { order_id: 3 },
            RecordBody::Cancel { order_id: 3 },
            RecordBody::Expire { order_id: 3 },
        ];
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Record {
                seq: i as u64 + 1,
                epoch: 3,
                at_ms: 5,
                body,
            })
            .collect()
    }

    #[test]
    fn records_and_batches_round_trip() {
        let mut frames = Vec::new();
        for r in samples() {
            encode_record(&r, &mut frames).unwrap();
        }
        let batch = decode_batch(&encode_batch(3, 1, 6, &frames)).unwrap();
        assert_eq!(batch.records, samples());
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let mut frames = Vec::new();
        for r in samples() {
            encode_record(&r, &mut frames).unwrap();
        }
        for i in 0..frames.len() {
            let mut bad = frames.clone();
            bad[i] ^= 0x40;
            let mut rest = &bad[..];
            let mut ok = Vec::new();
            while let Ok((r, used)) = decode_record(rest) {
                ok.push(r);
                rest = &rest[used..];
            }
            assert!(ok.len() < samples().len(), "flip at {i} went unnoticed");
            assert_eq!(ok[..], samples()[..ok.len()]);
        }
    }
}
