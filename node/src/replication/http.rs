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
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use flashsale_core::ErrorCode;
use flashsale_core::replication::{
    CATCHUP_BYTES_MAX, HEADER_APPLIED_SEQ, HEADER_DURABLE_SEQ, HEADER_EPOCH,
};
use serde::Deserialize;

use crate::engine::EngineError;

/// The sequence a served snapshot covers.
const HEADER_SNAPSHOT_SEQ: &str = "x-flashsale-snapshot-seq";
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::wal::WalDirError;

/// `GET /admin/v1/wal` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalQuery {
    /// First sequence wanted (≥ 1).
    pub from: u64,
    /// Most bytes of records in the answer (capped at 4 MiB; at least one record is sent).
    pub max_bytes: Option<usize>,
}

/// Durable WAL records from `from` on, as one encoded batch (`application/octet-stream`);
/// 204 when there is none; 410 `wal_compacted` below the oldest record kept.
#[utoipa::path(get, path = "/admin/v1/wal", tag = "admin", security(("bearer" = [])),
    params(("from" = u64, Query, description = "first sequence wanted"),
           ("max_bytes" = Option<usize>, Query, description = "most bytes of records (≤ 4 MiB)")),
    responses((status = 200, description = "an encoded WAL batch, records from..", content_type = "application/octet-stream"),
              (status = 204, description = "nothing durable from `from` on"),
              (status = 400, body = flashsale_core::ErrorBody), (status = 401, body = flashsale_core::ErrorBody),
              (status = 410, body = flashsale_core::ErrorBody, description = "wal_compacted: bootstrap from a snapshot")))]
pub async fn wal(
    State(s): State<AppState>,
    q: Result<Query<WalQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("query: {e}")))?;
    if q.from == 0 {
        return Err(ApiError::new(ErrorCode::BadRequest, "`from` starts at 1"));
    }
    let bytes_max = q
        .max_bytes
        .unwrap_or(CATCHUP_BYTES_MAX)
        .clamp(1, CATCHUP_BYTES_MAX);
    let st = s.engine.status();
    let headers = [
        (HEADER_DURABLE_SEQ, st.durable_seq.to_string()),
        (HEADER_EPOCH, st.epoch.to_string()),
    ];
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
/// covers. 404 when the node has none yet.
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
            ];
            Ok((headers, bytes).into_response())
        }
        None => Err(ApiError::new(ErrorCode::NotFound, "no snapshot yet")),
    }
}

/// Adds `x-flashsale-applied-seq` and `x-flashsale-epoch` to every answer.
pub async fn applied_seq_header(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    // Read after the handler: the answer reflects at least this much.
    let st = s.engine.positions();
    let h = resp.headers_mut();
    h.insert(HEADER_APPLIED_SEQ, HeaderValue::from(st.applied_seq));
    h.insert(HEADER_EPOCH, HeaderValue::from(st.epoch));
    resp
}

/// Quorum mode's hold on writes (see [`super::quorum::layer`]); a no-op without replication.
pub async fn quorum_hold(State(s): State<AppState>, req: Request, next: Next) -> Response {
    match s.replication.as_ref() {
        Some(r) => super::quorum::hold(&r.gate, req, next).await,
        None => next.run(req).await,
    }
}
