//! Replication wire types: the pub/sub message a primary publishes for each durable
//! batch, the durability ack a secondary sends back in quorum mode, the catch-up
//! route's contract, and the replication part of a node's status.
//!
//! A pub/sub message wraps one encoded WAL batch ([`crate::wal::encode_batch`], the
//! same bytes the primary made durable) with the primary's clock at publish (for lag; in
//! microseconds since the Unix epoch), a checksum over everything, and the sale's
//! signature over everything ([`ChannelKey`]):
//!
//! ```text
//! magic "FSR2" | sent_at_us i64 LE | batch_len u32 LE | crc32c u32 LE (of all before it and the batch)
//!   | batch | HMAC-SHA256 (32 bytes, of all before it)
//! ```
//!
//! An ack is its JSON followed by the same kind of signature. The checksum tells damage
//! from a forgery in the logs; the signature is what a node trusts. Whoever can reach
//! the Redis (in the sale's namespace, or an external one shared with others) can
//! publish on the channel: without the signature, a message with a right checksum was
//! applied by every secondary (a forged sale in their copy, or a record that cannot
//! apply stopping their engine), and a forged ack counted as a secondary's in quorum
//! mode (a write acknowledged that no secondary held).
//!
//! Catch-up (`GET /admin/v1/wal?from=SEQ&max_bytes=N`, admin token) answers 200 with one
//! encoded batch holding records `from..` (at most `max_bytes` of frames, at least one
//! record), 204 when the node has nothing from `from` on, and 410 `wal_compacted` when
//! `from` is older than the node's oldest retained record (the secondary then
//! bootstraps from `GET /admin/v1/snapshot`). Every answer carries
//! [`HEADER_DURABLE_SEQ`] and [`HEADER_EPOCH`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::wal::{Batch, WalError, decode_batch};

const MSG_MAGIC: &[u8; 4] = b"FSR2";
/// Bytes of a signature (HMAC-SHA256).
pub const TAG_BYTES: usize = 32;
/// Message header: magic, sent_at_us, batch_len, crc (the batch and the signature follow).
pub const MSG_HEADER_BYTES: usize = 4 + 8 + 4 + 4;
/// The part of the header the checksum covers (with the batch).
const MSG_CRC_COVERS: usize = 4 + 8 + 4;

/// The key that signs a sale's replication messages and acks, and checks them: an
/// HMAC-SHA256 key derived from the sale's admin token, which every node of the sale
/// holds (the operator gives them one Secret) and nobody else needs. A node without an
/// admin token signs with a key derived from nothing: its secondaries then trust
/// whatever the channel carries (the README says so).
#[derive(Clone)]
pub struct ChannelKey(ring::hmac::Key);

impl ChannelKey {
    /// The key of the channel `channel` of a sale whose admin token is `secret` (`""`:
    /// none).
    pub fn new(secret: &str, channel: &str) -> Self {
        // Derived rather than the token itself, so a signature made here can never stand
        // for anything signed with the token elsewhere; and per channel, so two sales
        // that share a Redis and a token (hand-run nodes; the operator gives each sale
        // its own token) cannot replay each other's batches.
        let root = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let mut label = b"flashsale replication channel v2\n".to_vec();
        label.extend_from_slice(channel.as_bytes());
        let derived = ring::hmac::sign(&root, &label);
        Self(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            derived.as_ref(),
        ))
    }

    fn sign(&self, data: &[u8]) -> ring::hmac::Tag {
        ring::hmac::sign(&self.0, data)
    }

    /// `signed` without its trailing signature, if that is this key's signature of the
    /// rest (checked in constant time).
    fn open<'a>(&self, signed: &'a [u8]) -> Option<&'a [u8]> {
        let (data, tag) = signed.split_at(signed.len().checked_sub(TAG_BYTES)?);
        ring::hmac::verify(&self.0, data, tag).ok()?;
        Some(data)
    }
}

impl fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChannelKey(..)")
    }
}
/// Largest batch a message may carry; bigger is damage (a group commit is far smaller).
pub const MSG_BATCH_BYTES_MAX: usize = 64 << 20;
/// Largest catch-up answer a secondary asks for, and a primary serves.
pub const CATCHUP_BYTES_MAX: usize = 4 << 20;

/// Route a secondary catches up from.
pub const WAL_ROUTE: &str = "/admin/v1/wal";
/// Route a fresh secondary bootstraps from when the tail it needs was compacted away.
pub const SNAPSHOT_ROUTE: &str = "/admin/v1/snapshot";
/// `GET /admin/v1/snapshot`'s header: the sequence the snapshot covers.
pub const HEADER_SNAPSHOT_SEQ: &str = "x-flashsale-snapshot-seq";
/// Highest sequence durable on the answering node (catch-up answers, secondaries' reads).
pub const HEADER_DURABLE_SEQ: &str = "x-flashsale-durable-seq";
/// Highest sequence applied on the answering node: on a secondary's reads, how fresh
/// the answer is.
pub const HEADER_APPLIED_SEQ: &str = "x-flashsale-applied-seq";
/// The answering node's fencing epoch.
pub const HEADER_EPOCH: &str = "x-flashsale-epoch";

/// The channel a sale's batches go to unless configured otherwise.
pub fn default_channel(sale: &str) -> String {
    format!("flashsale:{sale}:wal")
}

/// The channel secondaries publish durability acks to (quorum mode).
pub fn ack_channel(wal_channel: &str) -> String {
    format!("{wal_channel}:ack")
}

/// When the primary answers a purchase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum ReplicationMode {
    /// After its own fsync; secondaries follow within the lag. Losing the primary's
    /// volume loses what they had not received yet (the default: fastest).
    #[default]
    Async,
    /// After its own fsync and one secondary's durability ack; without an ack within
    /// the timeout the purchase answers 503 (it may still apply later; a retry with
    /// the same idempotency key returns its outcome).
    Quorum,
}

impl FromStr for ReplicationMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "async" => Ok(Self::Async),
            "quorum" => Ok(Self::Quorum),
            other => Err(format!(
                "replication mode `{other}`: expected `async` or `quorum`"
            )),
        }
    }
}

impl fmt::Display for ReplicationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Async => "async",
            Self::Quorum => "quorum",
        })
    }
}

/// Why bytes are not a replication message or ack.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationError {
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("not a replication message (bad magic)")]
    BadMagic,
    #[error("batch length {0} out of range")]
    BadLength(usize),
    #[error("message checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("not signed with this sale's key (a forgery, or another sale's admin token)")]
    Unsigned,
    #[error("batch: {0}")]
    Batch(#[from] WalError),
    #[error("ack: {0}")]
    BadAck(String),
}

/// A decoded message: the batch and when the primary sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Primary's clock when it published, microseconds since the Unix epoch.
    pub sent_at_us: i64,
    pub batch: Batch,
}

/// Wraps an encoded batch for PUBLISH, signed with `key`.
pub fn encode_message(key: &ChannelKey, sent_at_us: i64, batch: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MSG_HEADER_BYTES + batch.len());
    out.extend_from_slice(MSG_MAGIC);
    out.extend_from_slice(&sent_at_us.to_le_bytes());
    out.extend_from_slice(&(batch.len() as u32).to_le_bytes());
    let mut crc = crc32c::crc32c(&out);
    crc = crc32c::crc32c_append(crc, batch);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(batch);
    let tag = key.sign(&out);
    out.extend_from_slice(tag.as_ref());
    out
}

/// Decodes a message: checks its checksum, its signature with `key` and every record
/// of its batch. Damaged or unsigned bytes are an error, never a panic and never a
/// partial batch.
pub fn decode_message(key: &ChannelKey, buf: &[u8]) -> Result<Message, ReplicationError> {
    if buf.len() < MSG_HEADER_BYTES {
        return Err(ReplicationError::Truncated {
            need: MSG_HEADER_BYTES,
            have: buf.len(),
        });
    }
    if &buf[..4] != MSG_MAGIC {
        return Err(ReplicationError::BadMagic);
    }
    let sent_at_us = i64::from_le_bytes(buf[4..12].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(buf[12..16].try_into().expect("4 bytes")) as usize;
    if len > MSG_BATCH_BYTES_MAX {
        return Err(ReplicationError::BadLength(len));
    }
    let need = MSG_HEADER_BYTES + len + TAG_BYTES;
    if buf.len() != need {
        return Err(ReplicationError::Truncated {
            need,
            have: buf.len(),
        });
    }
    let stored = u32::from_le_bytes(
        buf[MSG_CRC_COVERS..MSG_HEADER_BYTES]
            .try_into()
            .expect("4 bytes"),
    );
    let batch = &buf[MSG_HEADER_BYTES..need - TAG_BYTES];
    let computed = crc32c::crc32c_append(crc32c::crc32c(&buf[..MSG_CRC_COVERS]), batch);
    if stored != computed {
        return Err(ReplicationError::Checksum { stored, computed });
    }
    if key.open(buf).is_none() {
        return Err(ReplicationError::Unsigned);
    }
    Ok(Message {
        sent_at_us,
        batch: decode_batch(batch)?,
    })
}

/// A secondary's word that it holds records up to `durable_seq` on its own disk.
/// Cumulative, so a lost ack is made good by the next one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    pub node: String,
    pub epoch: u64,
    pub durable_seq: u64,
}

/// Longest ack accepted, signature included (a node name is a pod name: short).
pub const ACK_BYTES_MAX: usize = 1024;

impl Ack {
    /// The ack's JSON followed by its signature with `key`.
    pub fn encode(&self, key: &ChannelKey) -> Vec<u8> {
        // Serializing a plain struct to a Vec cannot fail.
        let mut out = serde_json::to_vec(self).unwrap_or_default();
        let tag = key.sign(&out);
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// An ack signed with `key`; anything else (an unsigned or forged one) is refused.
    pub fn decode(key: &ChannelKey, buf: &[u8]) -> Result<Self, ReplicationError> {
        if buf.len() > ACK_BYTES_MAX {
            return Err(ReplicationError::BadAck(format!("{} bytes", buf.len())));
        }
        let json = key.open(buf).ok_or(ReplicationError::Unsigned)?;
        serde_json::from_slice(json).map_err(|e| ReplicationError::BadAck(e.to_string()))
    }
}

/// Where one epoch's records start in a log. A log's epochs never go down, so each
/// epoch is one run of records; the list of runs (oldest first) is the log's epoch
/// history, like PostgreSQL's timeline history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EpochStart {
    pub epoch: u64,
    pub first_seq: u64,
}

/// The epoch of record `seq` in a log with this history whose last record is `last`;
/// `None` for a sequence the log does not hold (0, or past its end).
pub fn epoch_at(history: &[EpochStart], last: u64, seq: u64) -> Option<u64> {
    if seq == 0 || seq > last {
        return None;
    }
    history
        .iter()
        .rev()
        .find(|e| e.first_seq <= seq)
        .map(|e| e.epoch)
}

/// The last sequence two logs share: the highest `s` that both hold at the same epoch.
/// Records at one (seq, epoch) were written by that epoch's one primary, so two logs
/// that agree there agree on everything before it; from `s + 1` on, they differ.
pub fn common_prefix(
    mine: &[EpochStart],
    my_last: u64,
    theirs: &[EpochStart],
    their_last: u64,
) -> u64 {
    // The runs of a history: (epoch, first, last).
    fn runs(h: &[EpochStart], last: u64) -> Vec<(u64, u64, u64)> {
        h.iter()
            .enumerate()
            .filter(|(_, e)| e.first_seq <= last)
            .map(|(i, e)| {
                let end = h
                    .get(i + 1)
                    .map_or(last, |n| n.first_seq.saturating_sub(1).min(last));
                (e.epoch, e.first_seq, end)
            })
            .filter(|(_, a, b)| a <= b)
            .collect()
    }
    let theirs = runs(theirs, their_last);
    runs(mine, my_last)
        .into_iter()
        .filter_map(|(e, a1, b1)| {
            theirs
                .iter()
                .find(|(e2, a2, b2)| *e2 == e && a1.max(*a2) <= b1.min(*b2))
                .map(|(_, _, b2)| b1.min(*b2))
        })
        .max()
        .unwrap_or(0)
}

/// A node whose log parted from its primary's: its old log was moved aside and it
/// started again from the primary's. The dropped records were never acknowledged (a
/// primary acknowledges only what its fence could not cut off).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Reseed {
    /// Unix ms.
    pub at_ms: i64,
    /// The last record the two logs shared.
    pub common_seq: u64,
    /// The records this node had after it, now dropped (`from..=to`, of these epochs).
    pub dropped_from: u64,
    pub dropped_to: u64,
    pub dropped_epochs: Vec<u64>,
    /// Where the old log was kept, inside the data directory.
    pub kept_aside: String,
}

/// Where a secondary stands in following its primary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum FollowState {
    /// Not following (a primary, or a standby without a primary to follow).
    #[default]
    Idle,
    /// Loading a snapshot from the primary.
    Bootstrapping,
    /// Reading the primary's WAL over HTTP (fresh start, reconnect, or a gap).
    CatchingUp,
    /// Applying the live pub/sub stream.
    Live,
}

/// A secondary that acked durability to this primary (quorum bookkeeping).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerAck {
    pub node: String,
    pub durable_seq: u64,
    /// How long ago its last ack arrived.
    pub age_ms: u64,
}

/// The replication part of `GET /admin/v1/status` (`NodeStatus.replication`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationStatus {
    pub mode: ReplicationMode,
    pub channel: String,
    /// Whether the node's Redis connection is up right now.
    pub redis_connected: bool,
    pub state: FollowState,
    /// Highest sequence applied here (same as `NodeStatus.appliedSeq`).
    pub applied_seq: u64,
    /// Highest sequence this node knows the primary has durable.
    pub primary_seq: u64,
    /// `primary_seq - applied_seq`.
    pub lag_records: u64,
    /// How long, on this node's own clock, the oldest record it has heard of but not
    /// applied has been waiting; 0 when caught up. (No two clocks are compared.)
    pub lag_ms: u64,
    /// Times records missing from the live stream (a gap between batches, batches
    /// published while this node was unsubscribed, a lost last batch) were repaired by
    /// catch-up.
    pub gaps: u64,
    /// Batches already applied that arrived again (ignored).
    pub duplicates: u64,
    /// Batches from an older epoch, refused.
    pub stale_epochs: u64,
    /// Messages that failed their checksum or decode, dropped.
    pub damaged: u64,
    /// Primary: batches not published (queue full or Redis down); catch-up repairs them.
    pub publish_dropped: u64,
    /// Primary: the secondaries' latest durability acks.
    #[serde(default)]
    pub peers: Vec<PeerAck>,
    /// The last time this node's log was found to have parted from its primary's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reseeded: Option<Reseed>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{Record, RecordBody, encode_batch, encode_record};

    fn sample() -> Vec<u8> {
        let mut frames = Vec::new();
        for seq in 5..=7 {
            let body = RecordBody::Confirm { order_id: seq };
            encode_record(
                &Record {
                    seq,
                    epoch: 2,
                    at_ms: 1,
                    body,
                },
                &mut frames,
            )
            .unwrap();
        }
        encode_message(&key(), 123, &encode_batch(2, 5, 7, &frames))
    }

    fn key() -> ChannelKey {
        ChannelKey::new("the sale's admin token", "flashsale:s:wal")
    }

    #[test]
    fn a_message_round_trips() {
        let m = decode_message(&key(), &sample()).unwrap();
        assert_eq!(
            (
                m.sent_at_us,
                m.batch.epoch,
                m.batch.first_seq,
                m.batch.last_seq
            ),
            (123, 2, 5, 7)
        );
        assert_eq!(m.batch.records.len(), 3);
    }

    #[test]
    fn every_byte_flip_and_every_truncation_is_an_error() {
        let good = sample();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(
                decode_message(&key(), &bad).is_err(),
                "flip at {i} went unnoticed"
            );
            assert!(
                decode_message(&key(), &good[..i]).is_err(),
                "truncation at {i} went unnoticed"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode_message(&key(), &longer).is_err());
    }

    /// What anyone who can publish on the channel could send: a batch with a right
    /// checksum, signed with another key (or none). Refused as unsigned, so a secondary
    /// never applies it.
    #[test]
    fn a_message_with_a_right_checksum_but_another_keys_signature_is_refused() {
        let good = sample();
        let forged = {
            let m = decode_message(&key(), &good).unwrap();
            let batch = &good[MSG_HEADER_BYTES..good.len() - TAG_BYTES];
            encode_message(
                &ChannelKey::new("a guess", "flashsale:s:wal"),
                m.sent_at_us,
                batch,
            )
        };
        assert_eq!(
            decode_message(&key(), &forged),
            Err(ReplicationError::Unsigned)
        );
        // Another sale's token, no token at all, and the same token on another sale's
        // channel are other keys too.
        for other in [
            ChannelKey::new("another sale", "flashsale:s:wal"),
            ChannelKey::new("", "flashsale:s:wal"),
            ChannelKey::new("the sale's admin token", "flashsale:t:wal"),
        ] {
            assert_eq!(
                decode_message(&other, &good),
                Err(ReplicationError::Unsigned)
            );
        }
        assert!(decode_message(&key(), &good).is_ok());
        // The batch changed and the checksum made right again: still refused.
        let mut tampered = good.clone();
        let end = tampered.len() - TAG_BYTES;
        tampered[end - 1] ^= 0x01;
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&tampered[..MSG_CRC_COVERS]),
            &tampered[MSG_HEADER_BYTES..end],
        );
        tampered[MSG_CRC_COVERS..MSG_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_message(&key(), &tampered),
            Err(ReplicationError::Unsigned)
        );
    }

    #[test]
    fn acks_round_trip_and_junk_and_unsigned_ones_are_refused() {
        let a = Ack {
            node: "n-1".into(),
            epoch: 3,
            durable_seq: 99,
        };
        assert_eq!(Ack::decode(&key(), &a.encode(&key())).unwrap(), a);
        // A forged ack: the JSON alone, or signed with another key.
        let json = serde_json::to_vec(&a).unwrap();
        assert_eq!(Ack::decode(&key(), &json), Err(ReplicationError::Unsigned));
        assert_eq!(
            Ack::decode(
                &key(),
                &a.encode(&ChannelKey::new("a guess", "flashsale:s:wal"))
            ),
            Err(ReplicationError::Unsigned)
        );
        let mut bumped = a.encode(&key());
        bumped[..json.len()].copy_from_slice(
            &serde_json::to_vec(&Ack {
                durable_seq: 98,
                ..a.clone()
            })
            .unwrap(),
        );
        assert_eq!(
            Ack::decode(&key(), &bumped),
            Err(ReplicationError::Unsigned)
        );
        assert!(Ack::decode(&key(), b"{\"node\":1}").is_err());
        assert!(Ack::decode(&key(), &vec![b' '; ACK_BYTES_MAX + 1]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode_message(&key(), &bytes);
            let mut framed = MSG_MAGIC.to_vec();
            framed.extend_from_slice(&bytes);
            let _ = decode_message(&key(), &framed);
            let _ = Ack::decode(&key(), &bytes);
        }
    }

    fn h(runs: &[(u64, u64)]) -> Vec<EpochStart> {
        runs.iter()
            .map(|&(epoch, first_seq)| EpochStart { epoch, first_seq })
            .collect()
    }

    #[test]
    fn the_common_prefix_is_the_last_record_both_hold_at_one_epoch() {
        // Same log: all of it.
        assert_eq!(common_prefix(&h(&[(1, 1)]), 50, &h(&[(1, 1)]), 50), 50);
        // A secondary behind: its end.
        assert_eq!(
            common_prefix(&h(&[(1, 1)]), 30, &h(&[(1, 1), (2, 41)]), 60),
            30
        );
        // The old primary wrote 41..=44 at epoch 1 after the fence; the new one
        // started epoch 2 at 41 (its tail ended at 40).
        let old = h(&[(1, 1)]);
        let new = h(&[(1, 1), (2, 41)]);
        assert_eq!(common_prefix(&old, 44, &new, 90), 40);
        assert_eq!(common_prefix(&new, 90, &old, 44), 40);
        // Nothing in common (different first epochs).
        assert_eq!(common_prefix(&h(&[(3, 1)]), 5, &h(&[(4, 1)]), 5), 0);
        // Empty logs.
        assert_eq!(common_prefix(&[], 0, &h(&[(1, 1)]), 9), 0);
        // Several promotions.
        let a = h(&[(1, 1), (2, 10), (5, 20)]);
        let b = h(&[(1, 1), (2, 10), (4, 18)]);
        assert_eq!(common_prefix(&a, 30, &b, 25), 17);
    }

    #[test]
    fn epoch_at_reads_the_history() {
        let x = h(&[(1, 1), (2, 41)]);
        assert_eq!(epoch_at(&x, 90, 40), Some(1));
        assert_eq!(epoch_at(&x, 90, 41), Some(2));
        assert_eq!(epoch_at(&x, 90, 91), None);
        assert_eq!(epoch_at(&x, 90, 0), None);
    }

    #[test]
    fn modes_parse() {
        assert_eq!(
            "quorum".parse::<ReplicationMode>().unwrap(),
            ReplicationMode::Quorum
        );
        assert!("sync".parse::<ReplicationMode>().is_err());
    }
}
