//! Replication's part of the node's HTTP surface: the catch-up route
//! (`GET /admin/v1/wal`, behind the admin token like every admin route), the
//! applied-sequence header on every answer, and the quorum hold on writes.
//!
//! Secondaries serve reads from their own copy. Every answer carries
//! `x-flashsale-applied-seq` (the highest record the answering node has applied) and
//! `x-flashsale-epoch`, so a client can tell how fresh a read is and compare nodes.
//! Purchases on a secondary: sold out → 409 `sold_out` from the local copy (stock
//! never comes back on a secondary faster than on the primary, except by expiry or
//! cancel, so this is at worst briefly pessimistic); anything else → 503
//! `not_primary` with `primary` set to the primary's URL. We answer rather than
//! forward: a forwarded purchase would hold a secondary's connection for the
//! primary's fsync, and the client (or the Service that reaches only the primary)
//! can send it there itself.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flashsale_core::ErrorCode;
use flashsale_core::replication::{
    CATCHUP_BYTES_MAX, HEADER_APPLIED_SEQ, HEADER_DURABLE_SEQ, HEADER_EPOCH, ReplicationMode,
};
use flashsale_core::wal::{BATCH_HEADER_BYTES, WalError, decode_batch, peek_frame};
use serde::Deserialize;

use flashsale_core::replication::HEADER_SNAPSHOT_SEQ;

use super::AppState;
use super::error::ApiError;
use crate::engine::EngineError;
use crate::wal::WalDirError;

/// `GET /admin/v1/wal` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalQuery {
    /// First sequence wanted (≥ 1).
    pub from: u64,
    /// Most bytes of records in the answer (capped at 4 MiB; at least one record is sent).
    pub max_bytes: Option<usize>,
    /// The epoch of the asker's record `from - 1`: if this node's differs, the two logs
    /// parted and the answer is 409 `diverged` (the asker must be reseeded).
    pub prev_epoch: Option<u64>,
}

/// Whether a log that holds `prev_epoch` at `seq` is a prefix of this node's
/// (`Err` says why not): the boundary check of catch-up and of `POST /admin/v1/wal`.
fn check_boundary(
    epochs: &[flashsale_core::replication::EpochStart],
    last: u64,
    seq: u64,
    prev_epoch: u64,
) -> Result<(), ApiError> {
    match flashsale_core::replication::epoch_at(epochs, last, seq) {
        Some(e) if e == prev_epoch => Ok(()),
        Some(e) => Err(ApiError::new(
            ErrorCode::Diverged,
            format!(
                "record {seq} is of epoch {e} here, of epoch {prev_epoch} there: the logs parted"
            ),
        )),
        None => Err(ApiError::new(
            ErrorCode::Diverged,
            format!("record {seq} (epoch {prev_epoch} there) is past this log's end at {last}"),
        )),
    }
}

/// Durable WAL records from `from` on, as one encoded batch (`application/octet-stream`);
/// 204 when there is none; 410 `wal_compacted` below the oldest record kept.
#[utoipa::path(get, path = "/admin/v1/wal", tag = "admin", security(("bearer" = [])),
    params(("from" = u64, Query, description = "first sequence wanted", minimum = 1, maximum = 9223372036854775807u64),
           ("max_bytes" = Option<u64>, Query, description = "most bytes of records (more than 4 MiB is read as 4 MiB; at least one record is sent)", maximum = 9223372036854775807u64),
           ("prev_epoch" = Option<u64>, Query, description = "the asker's epoch of record from-1 (boundary check)", maximum = 9007199254740991u64)),
    responses((status = 200, description = "an encoded WAL batch, records from..", content_type = "application/octet-stream"),
              (status = 204, description = "nothing durable from `from` on"),
              (status = 400, body = flashsale_core::ErrorBody), (status = 401, body = flashsale_core::ErrorBody),
              (status = 409, body = flashsale_core::ErrorBody, description = "diverged: the asker's record from-1 is of another epoch"),
              (status = 410, body = flashsale_core::ErrorBody, description = "wal_compacted: bootstrap from a snapshot")))]
pub async fn wal(
    State(s): State<AppState>,
    q: Result<Query<WalQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("query: {e}")))?;
    if q.from == 0 || q.from > i64::MAX as u64 {
        return Err(ApiError::field(
            "from",
            "field `from`: a sequence, 1 to 2^63-1",
        ));
    }
    if q.prev_epoch
        .is_some_and(|e| e > flashsale_core::rules::EPOCH_MAX)
    {
        return Err(ApiError::field(
            "prev_epoch",
            "field `prev_epoch`: an epoch, 0 to 2^53-1",
        ));
    }
    if q.max_bytes.is_some_and(|m| m as u64 > i64::MAX as u64) {
        return Err(ApiError::field(
            "max_bytes",
            "field `max_bytes`: 0 to 2^63-1 (more than 4 MiB is read as 4 MiB)",
        ));
    }
    let bytes_max = q
        .max_bytes
        .unwrap_or(CATCHUP_BYTES_MAX)
        .clamp(1, CATCHUP_BYTES_MAX);
    let st = s.engine.status();
    let position = |epoch: u64| {
        [
            (HEADER_DURABLE_SEQ, st.durable_seq.to_string()),
            (HEADER_EPOCH, epoch.to_string()),
        ]
    };
    let headers = position(st.epoch);
    if let Some(prev) = q.prev_epoch
        && q.from > 1
        && let Err(e) = check_boundary(&st.epochs, st.durable_seq, q.from - 1, prev)
    {
        return Ok((headers, e).into_response());
    }
    if q.from > st.durable_seq {
        return Ok((StatusCode::NO_CONTENT, headers).into_response());
    }
    if q.from < st.oldest_seq {
        let msg = format!(
            "records before {} were compacted into a snapshot; {} was asked",
            st.oldest_seq, q.from
        );
        return Ok((headers, ApiError::new(ErrorCode::WalCompacted, msg)).into_response());
    }
    match s.engine.read_batch_from(q.from, bytes_max).await {
        Ok(Some(b)) => {
            // The epoch as of after the read (the batch's): a node that stepped down or
            // was promoted while the records were read says so, and the asker checks.
            let headers = position(b.epoch);
            let ct = [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )];
            Ok((headers, ct, b.bytes).into_response())
        }
        Ok(None) => Ok((StatusCode::NO_CONTENT, headers).into_response()),
        Err(EngineError::Wal(WalDirError::Gap {
            expected, found, ..
        })) if found > expected => {
            let msg = format!(
                "records before {found} were compacted into a snapshot; {expected} was asked"
            );
            Ok((headers, ApiError::new(ErrorCode::WalCompacted, msg)).into_response())
        }
        Err(e) => Err(ApiError::new(
            ErrorCode::Internal,
            format!("reading the WAL: {e}"),
        )),
    }
}

/// The newest snapshot (`crc32c u32 LE | JSON of the state`), for a secondary whose
/// catch-up point was compacted away; `x-flashsale-snapshot-seq` names the sequence it
/// covers, and `x-flashsale-epoch` the node's epoch once it was read (a secondary
/// refuses a snapshot from a node that stepped down meanwhile). 404 when the node has
/// none yet.
#[utoipa::path(get, path = "/admin/v1/snapshot", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "the snapshot file", content_type = "application/octet-stream"),
              (status = 401, body = flashsale_core::ErrorBody), (status = 404, body = flashsale_core::ErrorBody)))]
pub async fn snapshot(State(s): State<AppState>) -> Result<Response, ApiError> {
    match s.engine.newest_snapshot().await? {
        Some((seq, bytes)) => {
            let headers = [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                ),
                (
                    HeaderName::from_static(HEADER_SNAPSHOT_SEQ),
                    HeaderValue::from(seq),
                ),
                (
                    HeaderName::from_static(HEADER_EPOCH),
                    HeaderValue::from(s.engine.positions().epoch),
                ),
            ];
            Ok((headers, bytes).into_response())
        }
        None => Err(ApiError::new(ErrorCode::NotFound, "no snapshot yet")),
    }
}

/// Installs a snapshot (`crc32c u32 LE | JSON`, as `GET /admin/v1/snapshot` serves it)
/// on a node that is not the primary and whose log ends before it: the start of a tail
/// that `stock-node wal ship` found compacted in the source log, or the operator's tail
/// copy from an old primary that answers (`failover::recover`). Both first check that
/// this node's log is a prefix of the source's: this replaces it.
#[utoipa::path(put, path = "/admin/v1/snapshot", tag = "admin", security(("bearer" = [])),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "a snapshot file"),
    responses((status = 200, body = flashsale_core::admin::NodeStatus),
              (status = 400, body = flashsale_core::ErrorBody, description = "bad_request (`field` = body): not a snapshot, or a damaged one"),
              (status = 401, body = flashsale_core::ErrorBody),
              (status = 409, body = flashsale_core::ErrorBody, description = "is_primary: the node is the primary"),
              (status = 413, body = flashsale_core::ErrorBody, description = "payload_too_large: over SNAPSHOT_BYTES_MAX"),
              (status = 503, body = flashsale_core::ErrorBody, description = "unavailable: not newer than this node's log, a batch being written, or a failed WAL")))]
pub async fn put_snapshot(
    State(s): State<AppState>,
    body: axum::body::Bytes,
) -> Result<axum::Json<flashsale_core::admin::NodeStatus>, ApiError> {
    if s.engine.status().role == flashsale_core::admin::Role::Primary {
        return Err(ApiError::new(
            ErrorCode::IsPrimary,
            "this node is the primary: it installs no snapshot",
        ));
    }
    s.engine.install_snapshot(body.to_vec()).await?;
    Ok(axum::Json(s.node_status()))
}

/// Largest body `POST /admin/v1/wal` takes (an exported tail; send more in parts).
pub const WAL_POST_BYTES_MAX: usize = 64 << 20;

/// Applies WAL records on a node that is not the primary: the body is one or more
/// encoded batches, exactly what `stock-node wal export --from SEQ DIR` writes. This is
/// the operator's failover seam: export the tail of the old primary's volume, post it
/// to the secondary about to be promoted, then promote it. Records this node already
/// has are skipped once their epochs are checked against this node's (another epoch at
/// the same sequence is 409 `diverged`); a tail that starts right after this node's last
/// record must say that record's epoch in the sender's log (`?prev_epoch=E`); a gap is
/// 409 `order_state` naming the sequence needed. The records keep their own epochs; the
/// request itself is trusted as the operator's (admin token), so an older epoch than the
/// node's is accepted here, unlike on the live stream.
#[utoipa::path(post, path = "/admin/v1/wal", tag = "admin", security(("bearer" = [])),
    params(("prev_epoch" = Option<u64>, Query, description = "the sender's epoch of the record before the first one sent", maximum = 9007199254740991u64)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "encoded WAL batches"),
    responses((status = 200, body = AppliedAnswer),
              (status = 400, body = flashsale_core::ErrorBody, description = "bad_request: an empty body (`field` = body), a damaged batch, a boundary without `prev_epoch`"),
              (status = 401, body = flashsale_core::ErrorBody),
              (status = 409, body = flashsale_core::ErrorBody, description = "diverged: the logs disagree at the boundary; order_state: a gap after this node's log; is_primary: the node is the primary"),
              (status = 503, body = flashsale_core::ErrorBody, description = "unavailable: the engine is busy or its WAL failed"),
              (status = 413, body = flashsale_core::ErrorBody, description = "payload_too_large: over WAL_POST_BYTES_MAX (64 MiB)")))]
pub async fn post_wal(
    State(s): State<AppState>,
    q: Result<Query<PostWalQuery>, QueryRejection>,
    body: axum::body::Bytes,
) -> Result<axum::Json<AppliedAnswer>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("query: {e}")))?;
    if q.prev_epoch
        .is_some_and(|e| e > flashsale_core::rules::EPOCH_MAX)
    {
        return Err(ApiError::field(
            "prev_epoch",
            "field `prev_epoch`: an epoch, 0 to 2^53-1",
        ));
    }
    if s.engine.status().role == flashsale_core::admin::Role::Primary {
        // A primary writes its own log; nothing is appended to it from outside (an empty
        // body included: there is no "nothing to do" for a primary here).
        return Err(ApiError::new(
            ErrorCode::IsPrimary,
            "this node is the primary: it writes its own log and takes no WAL records from outside (send them to a secondary or a stopped node's directory)",
        ));
    }
    if body.is_empty() {
        return Err(ApiError::field(
            "body",
            "field `body`: no WAL batch (an encoded batch from GET /admin/v1/wal or `stock-node wal export`)",
        ));
    }
    let mut rest = &body[..];
    let mut applied_records = 0u64;
    let mut first = true;
    // The furthest record the body's batches so far reach.
    let mut reached: Option<u64> = None;
    while !rest.is_empty() {
        let len = batch_len(rest)
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("body: {e}")))?;
        let mut batch = decode_batch(&rest[..len])
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("body: {e}")))?;
        rest = &rest[len..];
        let pos = s.engine.positions();
        // The boundary: the records this node already holds must be of the same
        // epochs here, in every batch of the body (a later batch may overlap the log
        // as much as the first: `wal export` writes several); a tail that starts right
        // after them names the epoch of the record before it (`prev_epoch`) — after
        // the first batch, that record was the body's own, checked here.
        let st = s.engine.status();
        for r in batch.records.iter().filter(|r| r.seq <= pos.applied_seq) {
            check_boundary(&st.epochs, st.applied_seq, r.seq, r.epoch)?;
        }
        let starts_tail = batch.first_seq == pos.applied_seq + 1 && pos.applied_seq > 0;
        if !first && starts_tail && reached != Some(pos.applied_seq) {
            // A later batch that starts right after this node's log, whose record before
            // is not the body's: nothing said which log that record is of.
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "body: a batch starts at {} right after this node's log, but the batches before it in the body reach only {}: a body's batches must follow each other",
                    batch.first_seq,
                    reached.unwrap_or(0)
                ),
            ));
        }
        reached = Some(reached.map_or(batch.last_seq, |r| r.max(batch.last_seq)));
        if first {
            first = false;
            if starts_tail {
                let Some(prev) = q.prev_epoch else {
                    return Err(ApiError::new(
                        ErrorCode::BadRequest,
                        format!(
                            "records from {} follow this node's {}: say the epoch of record {} (`prev_epoch`), or send from {}",
                            batch.first_seq, pos.applied_seq, pos.applied_seq, pos.applied_seq
                        ),
                    ));
                };
                check_boundary(&st.epochs, st.applied_seq, pos.applied_seq, prev)?;
            }
        }
        if batch.last_seq <= pos.applied_seq {
            continue;
        }
        if batch.first_seq > pos.applied_seq + 1 {
            let msg = format!(
                "records {}..={} do not follow {}: send from {}",
                batch.first_seq,
                batch.last_seq,
                pos.applied_seq,
                pos.applied_seq + 1
            );
            return Err(ApiError::new(ErrorCode::OrderState, msg));
        }
        batch.records.retain(|r| r.seq > pos.applied_seq);
        batch.first_seq = pos.applied_seq + 1;
        batch.epoch = batch.epoch.max(pos.epoch);
        applied_records += batch.records.len() as u64;
        s.engine.apply_replicated(batch).await?;
    }
    let pos = s.engine.positions();
    Ok(axum::Json(AppliedAnswer {
        applied_records,
        applied_seq: pos.applied_seq,
        durable_seq: pos.durable_seq,
    }))
}

/// `POST /admin/v1/wal` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostWalQuery {
    /// The epoch of the record just before the body's first one, in the sender's log.
    pub prev_epoch: Option<u64>,
}

/// What `POST /admin/v1/wal` did.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedAnswer {
    /// Records applied by this request (those already here are not counted).
    pub applied_records: u64,
    pub applied_seq: u64,
    pub durable_seq: u64,
}

/// Bytes of the first batch in `buf` (header and its `count` frames).
fn batch_len(buf: &[u8]) -> Result<usize, WalError> {
    if buf.len() < BATCH_HEADER_BYTES {
        return Err(WalError::Truncated {
            need: BATCH_HEADER_BYTES,
            have: buf.len(),
        });
    }
    let count = u32::from_le_bytes(
        buf[BATCH_HEADER_BYTES - 8..BATCH_HEADER_BYTES - 4]
            .try_into()
            .expect("4 bytes"),
    );
    let mut off = BATCH_HEADER_BYTES;
    for _ in 0..count {
        let (_, used) = peek_frame(&buf[off..])?;
        off += used;
    }
    Ok(off)
}

/// What every answer passes through after its handler (called by `ops::Observe`, the
/// middleware every route passes, so a request pays for one layer rather than one per
/// concern):
///
/// - quorum mode's hold on writes (`crate::replication::quorum`): a 2xx answer to a
///   `POST` waits for a secondary's ack of everything durable when it was made (which
///   covers the write, or the original of an idempotent replay); else 503. Nothing
///   without replication or in async mode;
/// - then `x-flashsale-applied-seq` and `x-flashsale-epoch`, read after the handler and
///   the hold: the answer reflects at least this much.
///
/// `hold` is [`holds`] of the request, taken before the handler consumed it.
pub async fn hold_and_mark(s: &AppState, hold: bool, resp: Response) -> Response {
    let hold = hold && resp.extensions().get::<HeldElsewhere>().is_none();
    let mut resp = if hold {
        quorum_hold(s, resp).await
    } else {
        resp
    };
    let st = s.engine.positions();
    let (applied_seq, epoch) = s.marks.values(st.applied_seq, st.epoch);
    let h = resp.headers_mut();
    // Names made once, at compile time: a `&str` name is parsed on every insert.
    const APPLIED_SEQ: HeaderName = HeaderName::from_static(HEADER_APPLIED_SEQ);
    const EPOCH: HeaderName = HeaderName::from_static(HEADER_EPOCH);
    h.insert(APPLIED_SEQ, applied_seq);
    h.insert(EPOCH, epoch);
    resp
}

/// The last `x-flashsale-applied-seq` and `x-flashsale-epoch` values made, given out
/// again while the positions stay the same: every answer carries them, they change
/// once per batch, and a header value made from a number is an allocation (a copy of
/// a kept one is a reference count).
#[derive(Default)]
pub struct PositionHeaders(parking_lot::RwLock<Option<(u64, u64, HeaderValue, HeaderValue)>>);

impl PositionHeaders {
    fn values(&self, applied_seq: u64, epoch: u64) -> (HeaderValue, HeaderValue) {
        {
            let kept = self.0.read();
            if let Some((s, e, sv, ev)) = &*kept
                && (*s, *e) == (applied_seq, epoch)
            {
                return (sv.clone(), ev.clone());
            }
        }
        let made = (HeaderValue::from(applied_seq), HeaderValue::from(epoch));
        *self.0.write() = Some((applied_seq, epoch, made.0.clone(), made.1.clone()));
        made
    }
}

/// Whether `req`'s answer waits for the quorum if it succeeds: a `POST` in quorum mode,
/// unless its answer says it needs no hold ([`HeldElsewhere`]). That is decided by the
/// answer, not here: the node's role when the request arrived says nothing of who
/// answered it (a standby promoted while a purchase's body was still arriving sells it
/// from its own engine, and that 201 must wait for the quorum like any other).
pub fn holds(s: &AppState, req: &Request) -> bool {
    s.replication
        .as_ref()
        .is_some_and(|r| r.gate.mode == ReplicationMode::Quorum && req.method() == Method::POST)
}

/// Marks an answer the quorum hold skips: one the primary's hold already covered (an
/// answer forwarded from the primary), or a replay a secondary answers from an order in
/// its own copy (durable on that secondary: it is a replica).
#[derive(Clone, Copy, Debug)]
pub struct HeldElsewhere;

/// The quorum hold of [`hold_and_mark`], for an answer that [`holds`].
async fn quorum_hold(s: &AppState, resp: Response) -> Response {
    let Some(gate) = s.replication.as_ref().map(|r| &r.gate) else {
        return resp;
    };
    if !resp.status().is_success() {
        return resp;
    }
    let seq = gate.durable_seq();
    match gate.wait(seq).await {
        Ok(()) => resp,
        Err(e) => super::error::ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "{e}: not acknowledged; it may still complete, retry with the same idempotency key"
            ),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use flashsale_core::wal::{Record, RecordBody, encode_batch, encode_record};

    use super::{PositionHeaders, batch_len};

    fn batch(first: u64, last: u64) -> Vec<u8> {
        let mut frames = Vec::new();
        for seq in first..=last {
            let rec = Record {
                seq,
                epoch: 1,
                at_ms: 0,
                body: RecordBody::Confirm { order_id: seq },
            };
            encode_record(&rec, &mut frames).unwrap();
        }
        encode_batch(1, first, last, &frames)
    }

    #[test]
    fn an_exported_stream_splits_into_its_batches_and_damage_is_an_error() {
        let (a, b) = (batch(1, 3), batch(4, 9));
        let stream = [a.clone(), b.clone()].concat();
        assert_eq!(batch_len(&stream).unwrap(), a.len());
        assert_eq!(batch_len(&stream[a.len()..]).unwrap(), b.len());
        for cut in 0..a.len() {
            assert!(
                batch_len(&a[..cut]).is_err(),
                "a batch cut at {cut} was taken whole"
            );
        }
    }

    #[test]
    fn position_headers_follow_the_positions() {
        let marks = PositionHeaders::default();
        let values = |seq, epoch| {
            let (s, e) = marks.values(seq, epoch);
            (
                s.to_str().unwrap().to_owned(),
                e.to_str().unwrap().to_owned(),
            )
        };
        assert_eq!(values(7, 2), ("7".into(), "2".into()));
        assert_eq!(values(7, 2), ("7".into(), "2".into()), "kept");
        assert_eq!(values(8, 2), ("8".into(), "2".into()), "a new seq");
        assert_eq!(values(8, 3), ("8".into(), "3".into()), "a new epoch");
    }
}
