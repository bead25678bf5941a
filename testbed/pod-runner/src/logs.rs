//! The kubelet's log endpoint, so `kubectl logs [-f] [--tail N]` works:
//! `GET /containerLogs/{namespace}/{pod}/{container}` over HTTPS on the node's
//! InternalIP and kubelet port (the Node's `daemonEndpoints`).
//!
//! Trust, as the API server flags in `testbed/cluster.sh` already give it:
//! - the API server authenticates with `--kubelet-client-certificate/-key`, a cert
//!   signed by the cluster CA: this endpoint requires a client cert that chains to
//!   `--ca-file` (anything else is refused in the TLS handshake);
//! - the serving cert is self-signed here at start; the API server does not verify
//!   kubelet serving certs unless `--kubelet-certificate-authority` is set, so that
//!   flag must stay unset.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::config::RunConfig;

/// A non-follow answer carries at most this much of the file's tail.
const RESPONSE_BYTES_MAX: u64 = 16 << 20;
/// `follow` polls the file this often and gives up after this long.
const FOLLOW_POLL_MS: u64 = 200;
const FOLLOW_DURATION_MAX_S: u64 = 3600;
const FOLLOW_CHUNK_BYTES_MAX: usize = 64 << 10;
/// Concurrent log connections (the API server opens one per `kubectl logs`).
const CONNECTIONS_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("generating the serving certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client CA {path}: {msg}")]
    Ca { path: PathBuf, msg: String },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LogQuery {
    follow: Option<bool>,
    tail_lines: Option<u64>,
    limit_bytes: Option<u64>,
}

fn safe(part: &str) -> bool {
    !part.is_empty() && !part.contains('/') && part != "." && part != ".."
}

/// The last `n` lines of `data`.
pub fn tail_lines(data: &[u8], n: u64) -> &[u8] {
    if n == 0 {
        return &data[data.len()..];
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &data[i + 1..];
            }
        }
    }
    data
}

async fn container_logs(
    State(dir): State<Arc<PathBuf>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    if ![&ns, &pod, &container].iter().all(|p| safe(p)) {
        return (StatusCode::BAD_REQUEST, "bad path").into_response();
    }
    let path = dir.join(format!("{ns}_{pod}_{container}.log"));
    let mut f = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => {
            return (
                StatusCode::NOT_FOUND,
                format!("no logs for {ns}/{pod}/{container}\n"),
            )
                .into_response();
        }
    };
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(RESPONSE_BYTES_MAX);
    let mut data = Vec::new();
    if f.seek(std::io::SeekFrom::Start(start)).await.is_err()
        || f.read_to_end(&mut data).await.is_err()
    {
        return (StatusCode::INTERNAL_SERVER_ERROR, "reading log").into_response();
    }
    let mut out = match q.tail_lines {
        Some(n) => tail_lines(&data, n).to_vec(),
        None => data,
    };
    if let Some(limit) = q.limit_bytes {
        out.truncate(limit as usize);
    }
    if !q.follow.unwrap_or(false) {
        return (StatusCode::OK, out).into_response();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(FOLLOW_DURATION_MAX_S);
    let first = futures::stream::once(async move { Ok::<_, std::io::Error>(out) });
    let rest = futures::stream::unfold(f, move |mut f| async move {
        loop {
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            let mut buf = vec![0u8; FOLLOW_CHUNK_BYTES_MAX];
            match f.read(&mut buf).await {
                Ok(0) => tokio::time::sleep(Duration::from_millis(FOLLOW_POLL_MS)).await,
                Ok(n) => {
                    buf.truncate(n);
                    return Some((Ok(buf), f));
                }
                Err(e) => return Some((Err(e), f)),
            }
        }
    });
    use futures::StreamExt;
    Response::new(Body::from_stream(first.chain(rest)))
}

pub fn app(logs_dir: PathBuf) -> Router {
    Router::new()
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Arc::new(logs_dir))
}

fn tls_config(ip: &str, ca_file: &Path) -> Result<rustls::ServerConfig, LogsError> {
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec![ip.to_string()])?.self_signed(&key)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let ca_err = |msg: String| LogsError::Ca {
        path: ca_file.to_path_buf(),
        msg,
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_file).map_err(|e| ca_err(e.to_string()))? {
        roots
            .add(c.map_err(|e| ca_err(e.to_string()))?)
            .map_err(|e| ca_err(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| ca_err(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert.der().clone()], key_der)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Serves until the process ends; each connection is bounded by the semaphore.
pub async fn serve(cfg: RunConfig) -> Result<(), LogsError> {
    let addr = format!("{}:{}", cfg.gateway, cfg.kubelet_port);
    let tls = tls_config(&cfg.gateway.to_string(), &cfg.ca_file)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| LogsError::Bind {
            addr: addr.clone(),
            source,
        })?;
    tracing::info!(%addr, "kubelet log endpoint listening");
    let app = app(cfg.state.logs());
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            continue;
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[test]
    fn tail_counts_lines_from_the_end() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc", 1), b"c");
        assert_eq!(tail_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail_lines(b"a\n", 0), b"");
    }

    async fn get(app: Router, uri: &str) -> (StatusCode, String) {
        let r = app
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = r.status();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn serves_a_containers_log_with_tail_and_refuses_bad_paths() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("shop_node-0_node.log"), "one\ntwo\nthree\n").unwrap();
        let app = app(d.path().to_path_buf());
        assert_eq!(
            get(app.clone(), "/containerLogs/shop/node-0/node").await,
            (StatusCode::OK, "one\ntwo\nthree\n".into())
        );
        assert_eq!(
            get(app.clone(), "/containerLogs/shop/node-0/node?tailLines=1")
                .await
                .1,
            "three\n"
        );
        assert_eq!(
            get(app.clone(), "/containerLogs/shop/node-1/node").await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(app, "/containerLogs/shop/..%2F..%2Fetc/node").await.0,
            StatusCode::BAD_REQUEST
        );
    }
}
