//! Catch-up client: reads the primary's WAL over HTTP (`GET /admin/v1/wal`, admin
//! token) from the first sequence this node lacks. The answer is one encoded WAL batch
//! (see `flashsale_core::replication` for the contract), checked record by record.

use std::time::Duration;

use flashsale_core::admin::{LeaseMode, NodeStatus, Role};
use flashsale_core::replication::{
    CATCHUP_BYTES_MAX, HEADER_DURABLE_SEQ, HEADER_EPOCH, SNAPSHOT_ROUTE, WAL_ROUTE,
};
use flashsale_core::wal::{Batch, decode_batch};

use super::ReplError;
use crate::engine::replica::SNAPSHOT_BYTES_MAX;

/// One request to the primary may take this long.
const REQUEST_TIMEOUT_MS: u64 = 5000;
/// A snapshot (the whole sale) may take this long to download.
const SNAPSHOT_TIMEOUT_MS: u64 = 120_000;
const CONNECT_TIMEOUT_MS: u64 = 1000;

/// What the primary had from the asked sequence on.
#[derive(Debug)]
pub enum Fetched {
    /// Records from the asked sequence, and the primary's durable sequence.
    Records { batch: Batch, primary_seq: u64 },
    /// Nothing newer than what was asked; the primary's durable sequence.
    UpToDate { primary_seq: u64 },
    /// The primary no longer has the asked sequence (compacted into a snapshot).
    Compacted,
}

/// The primary as a catch-up source.
#[derive(Clone)]
pub struct PrimaryClient {
    http: reqwest::Client,
    base_url: String,
    admin_token: String,
    /// The epoch this node follows the primary at: a node at `base_url` that answers
    /// at a later one has stepped down (a standby, a secondary of the next primary, a
    /// demoted primary restarted without a lease), and what it serves is not read,
    /// unless it is the primary of that epoch holding its lease (or with leases off):
    /// then this node's assignment is behind, as after a restart before it copied that
    /// primary's promotion, and the crossing is checked by `prev_epoch`.
    epoch: Option<u64>,
}

impl PrimaryClient {
    pub fn new(base_url: &str, admin_token: &str) -> Result<Self, ReplError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .build()
            .map_err(|e| ReplError::Primary {
                url: base_url.into(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            admin_token: admin_token.to_owned(),
            epoch: None,
        })
    }

    /// Reads only from a node at `epoch` or before (see the field).
    pub fn at_epoch(self, epoch: u64) -> Self {
        Self {
            epoch: Some(epoch),
            ..self
        }
    }

    /// An error if the node answered at an epoch later than the one followed and is
    /// not the primary of that epoch: a primary there holding its lease (or a lone
    /// one, without leases). A node that says "primary" without a live lease may be
    /// a demoted primary restarted into its old role (`engine::replica`), whose tail
    /// was never acknowledged. `status` is asked when not given (this rare path only).
    async fn check_epoch(
        &self,
        answered: Option<u64>,
        status: Option<&NodeStatus>,
    ) -> Result<(), ReplError> {
        let (Some(mine), Some(theirs)) = (self.epoch, answered) else {
            return Ok(());
        };
        if theirs <= mine {
            return Ok(());
        }
        let asked;
        let s = match status {
            Some(s) => s,
            None => {
                asked = self.status_unchecked().await?;
                &asked
            }
        };
        let leased = s
            .lease
            .as_ref()
            .is_none_or(|l| l.mode == LeaseMode::Off || (l.epoch == s.epoch && l.remaining_ms > 0));
        if s.role == Role::Primary && s.epoch == theirs && leased {
            return Ok(());
        }
        Err(self.err(format!(
            "it answers at epoch {theirs} as a {:?}{}, not the primary of that epoch (this node follows it at epoch {mine}, and waits to be pointed at the primary)",
            s.role,
            if s.role == Role::Primary && !leased {
                " without a live lease"
            } else {
                ""
            }
        )))
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn err(&self, reason: impl ToString) -> ReplError {
        ReplError::Primary {
            url: self.base_url.clone(),
            reason: reason.to_string(),
        }
    }

    /// Records from `from` on, at most about `CATCHUP_BYTES_MAX` of them; `prev_epoch`
    /// is this node's epoch of record `from - 1`, which the primary checks against its own.
    pub async fn fetch(&self, from: u64, prev_epoch: Option<u64>) -> Result<Fetched, ReplError> {
        let mut url = format!(
            "{}{WAL_ROUTE}?from={from}&max_bytes={CATCHUP_BYTES_MAX}",
            self.base_url
        );
        if let Some(e) = prev_epoch {
            url.push_str(&format!("&prev_epoch={e}"));
        }
        let resp = self
            .http
            .get(&url)
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .map_err(|e| self.err(e))?;
        let primary_seq = header_u64(&resp, HEADER_DURABLE_SEQ);
        self.check_epoch(header_u64(&resp, HEADER_EPOCH), None)
            .await?;
        match resp.status().as_u16() {
            200 => {
                let primary_seq = primary_seq
                    .ok_or_else(|| self.err(format!("no {HEADER_DURABLE_SEQ} header")))?;
                // A primary never sends more than asked (plus one record); more is damage,
                // refused as it comes, not once held.
                let body = read_capped(
                    resp,
                    2 * CATCHUP_BYTES_MAX + flashsale_core::wal::RECORD_BYTES_MAX,
                )
                .await
                .map_err(|e| self.err(e))?;
                let batch = decode_batch(&body).map_err(|e| ReplError::Damaged(e.into()))?;
                if batch.first_seq != from {
                    return Err(self.err(format!(
                        "asked from {from}, got {}..={}",
                        batch.first_seq, batch.last_seq
                    )));
                }
                Ok(Fetched::Records { batch, primary_seq })
            }
            204 => Ok(Fetched::UpToDate {
                primary_seq: primary_seq
                    .ok_or_else(|| self.err(format!("no {HEADER_DURABLE_SEQ} header")))?,
            }),
            410 => Ok(Fetched::Compacted),
            409 => {
                let text = text_start(resp).await;
                Err(ReplError::Diverged(text.chars().take(300).collect()))
            }
            s => {
                let text = text_start(resp).await;
                Err(self.err(format!(
                    "HTTP {s}: {}",
                    text.chars().take(200).collect::<String>()
                )))
            }
        }
    }

    /// The primary's own account of itself (its epoch history and durable sequence).
    pub async fn status(&self) -> Result<NodeStatus, ReplError> {
        let status = self.status_unchecked().await?;
        self.check_epoch(Some(status.epoch), Some(&status)).await?;
        Ok(status)
    }

    /// [`Self::status`] without the epoch check.
    async fn status_unchecked(&self) -> Result<NodeStatus, ReplError> {
        let resp = self
            .http
            .get(format!("{}/admin/v1/status", self.base_url))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .map_err(|e| self.err(e))?;
        if !resp.status().is_success() {
            return Err(self.err(format!("status: HTTP {}", resp.status())));
        }
        let body = read_capped(resp, STATUS_BYTES_MAX)
            .await
            .map_err(|e| self.err(format!("status: {e}")))?;
        serde_json::from_slice(&body).map_err(|e| self.err(format!("status: {e}")))
    }

    /// The primary's newest snapshot, `None` if it has none (404).
    pub async fn fetch_snapshot(&self) -> Result<Option<Vec<u8>>, ReplError> {
        let url = format!("{}{SNAPSHOT_ROUTE}", self.base_url);
        let resp = self
            .http
            .get(&url)
            .bearer_auth(&self.admin_token)
            .timeout(Duration::from_millis(SNAPSHOT_TIMEOUT_MS))
            .send()
            .await
            .map_err(|e| self.err(e))?;
        // The node's epoch once it had read the snapshot: one that stepped down before
        // is refused here, not found out later by the boundary check (at a reseed).
        self.check_epoch(header_u64(&resp, HEADER_EPOCH), None)
            .await?;
        match resp.status().as_u16() {
            200 => {
                if resp
                    .content_length()
                    .is_some_and(|n| n as usize > SNAPSHOT_BYTES_MAX)
                {
                    return Err(self.err("snapshot larger than this node accepts"));
                }
                // Without a length (chunked), the cap holds as it streams.
                let body = read_capped(resp, SNAPSHOT_BYTES_MAX)
                    .await
                    .map_err(|e| self.err(format!("snapshot: {e}")))?;
                Ok(Some(body))
            }
            404 => Ok(None),
            s => Err(self.err(format!("snapshot: HTTP {s}"))),
        }
    }
}

/// A header of `resp` read as a number (`None`: absent or not one).
fn header_u64(resp: &reqwest::Response, name: &str) -> Option<u64> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Most bytes of a primary's status answer read (a few hundred items, its epoch
/// history, its peers: far less).
const STATUS_BYTES_MAX: usize = 4 << 20;
/// Most bytes of an error answer read, for the message.
const ERROR_TEXT_BYTES_MAX: usize = 4 << 10;

/// The body of `resp`, refused as soon as it passes `max` bytes: a broken or hostile
/// primary cannot make this node hold more than that.
async fn read_capped(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > max {
            return Err(format!("answer of more than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The start of an error answer's text (at most [`ERROR_TEXT_BYTES_MAX`] bytes read).
async fn text_start(mut resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < ERROR_TEXT_BYTES_MAX {
        match resp.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(ERROR_TEXT_BYTES_MAX);
    String::from_utf8_lossy(&body).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broken or hostile primary answering without end (chunked, no length to check
    /// first): the read stops at the cap instead of holding all it is sent.
    #[tokio::test]
    async fn an_answer_past_its_cap_is_refused_as_it_comes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(|| async {
                let chunk = axum::body::Bytes::from(vec![b'x'; 64 << 10]);
                axum::body::Body::from_stream(futures::stream::repeat_with(move || {
                    Ok::<_, std::io::Error>(chunk.clone())
                }))
            }),
        );
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let endless = || reqwest::get(format!("http://{addr}/"));
        let err = read_capped(endless().await.unwrap(), 1 << 20)
            .await
            .unwrap_err();
        assert!(err.contains("more than 1048576 bytes"), "{err}");
        assert_eq!(
            text_start(endless().await.unwrap()).await.len(),
            ERROR_TEXT_BYTES_MAX
        );
        server.abort();
    }

    /// The node at the primary's address answering at a later epoch, not as a primary,
    /// has stepped down (a standby, or a secondary of the next primary): what it
    /// serves is not read (it may hold records the new primary never had).
    #[tokio::test]
    async fn a_node_that_answers_at_a_later_epoch_is_not_read_from() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A node at epoch 3: 0 a standby, 1 a primary whose lease ended (a demoted
        // primary restarted into its old role), 2 a primary holding its lease.
        use std::sync::atomic::{AtomicU8, Ordering::SeqCst};
        let state = std::sync::Arc::new(AtomicU8::new(0));
        let shown = state.clone();
        let app = axum::Router::new()
            .route(
                WAL_ROUTE,
                axum::routing::get(|| async {
                    (
                        axum::http::StatusCode::NO_CONTENT,
                        [(HEADER_DURABLE_SEQ, "7"), (HEADER_EPOCH, "3")],
                    )
                }),
            )
            .route(
                SNAPSHOT_ROUTE,
                axum::routing::get(|| async { ([(HEADER_EPOCH, "3")], vec![1u8, 2, 3]) }),
            )
            .route(
                "/admin/v1/status",
                axum::routing::get(move || {
                    let (role, remaining) = match shown.load(SeqCst) {
                        0 => ("standby", 0),
                        1 => ("primary", 0),
                        _ => ("primary", 5_000),
                    };
                    async move {
                        axum::Json(serde_json::json!({
                            "role": role, "epoch": 3, "appliedSeq": 7, "durableSeq": 7,
                            "items": [], "purchasesPerS": 0.0, "nowMs": 0,
                            "lease": {"mode": "required", "token": "t", "epoch": 3, "remainingMs": remaining},
                        }))
                    }
                }),
            );
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let client = PrimaryClient::new(&format!("http://{addr}"), "t").unwrap();
        let err = client.clone().at_epoch(2).fetch(8, None).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("answers at epoch 3 as a Standby, not the primary of that epoch"),
            "{err}"
        );
        // Nor its snapshot (a bootstrap from it).
        let err = client
            .clone()
            .at_epoch(2)
            .fetch_snapshot()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("as a Standby"), "{err}");
        state.store(1, SeqCst);
        let err = client.clone().at_epoch(2).fetch(8, None).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("as a Primary without a live lease"),
            "{err}"
        );
        // The primary of a later epoch, leased, is read: this node's assignment is what
        // is behind (a restart before it copied that primary's promotion).
        state.store(2, SeqCst);
        let fetched = client.clone().at_epoch(2).fetch(8, None).await;
        assert!(
            matches!(fetched, Ok(Fetched::UpToDate { primary_seq: 7 })),
            "{fetched:?}"
        );
        let snapshot = client.clone().at_epoch(2).fetch_snapshot().await;
        assert_eq!(snapshot.unwrap(), Some(vec![1, 2, 3]));
        for same_or_later in [3, 4] {
            let fetched = client.clone().at_epoch(same_or_later).fetch(8, None).await;
            assert!(
                matches!(fetched, Ok(Fetched::UpToDate { primary_seq: 7 })),
                "{fetched:?}"
            );
        }
        server.abort();
    }
}
