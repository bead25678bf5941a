//! Reading committed records back out of a live or offline WAL directory by sequence:
//! the seam replication catch-up and `wal export` use.

use flashsale_core::wal::peek_frame;

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
    let segs = list_segments(dir)?;
    let mut out = Frames {
        first_seq: from_seq,
        last_seq: from_seq.saturating_sub(1),
        bytes: Vec::new(),
    };
    if from_seq > to_seq {
        return Ok(out);
    }
    match segs.first() {
        Some((first, name)) if *first > from_seq => {
            return Err(WalDirError::Gap {
                file: name.clone(),
                expected: from_seq,
                found: *first,
            });
        }
        None => return Ok(out),
        _ => {}
    }
    // Start from the last segment that begins at or before from_seq.
    let start = segs
        .iter()
        .rposition(|(first, _)| *first <= from_seq)
        .unwrap_or(0);
    for (_, name) in &segs[start..] {
        let data = dir
            .read(name)
            .map_err(|e| WalDirError::io(format!("read {name}"), e))?;
        let mut off = 0;
        while off < data.len() {
            // A frame that fails here is past the durable end (being written) or damage;
            // either way nothing after it is served.
            let Ok((seq, used)) = peek_frame(&data[off..]) else {
                return Ok(out);
            };
            if seq > to_seq || (!out.bytes.is_empty() && out.bytes.len() + used > bytes_max) {
                return Ok(out);
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
    Ok(out)
}
