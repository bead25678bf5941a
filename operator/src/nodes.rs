//! The stock nodes' admin API (`core::admin`), spoken over HTTP with the sale's admin
//! token. The only way the operator talks to a node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flashsale_core::SaleConfig;
use flashsale_core::admin::{LeaseRenewal, LeaseStatus, NodeStatus, RoleAssignment};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Most bytes of a node's error body kept for an Event or a condition message.
const ERROR_BODY_BYTES_MAX: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("unreachable: {0}")]
    Unreachable(#[source] reqwest::Error),
    #[error("answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("answered with a body that is not the admin contract: {0}")]
    Contract(#[source] reqwest::Error),
}

impl NodeError {
    /// The node said no (4xx): retrying the same call will not help until something changes.
    pub fn is_refusal(&self) -> bool {
        matches!(self, NodeError::Refused { status, .. } if (400..500).contains(status))
    }
}

/// Admin client shared by every reconcile (one connection pool, bounded timeouts).
#[derive(Clone, Debug)]
pub struct NodeClient {
    http: reqwest::Client,
    /// A status read: short, so a frozen node costs a pass little (it is asked on every
    /// pass while the operator replaces it).
    read_timeout: Duration,
    /// Nodes whose last status read failed, and when one was last given the whole read
    /// timeout: the others get a quarter of it, so a frozen node costs each pass little
    /// (it is asked on every pass while the operator replaces it), and one full try every
    /// [`FULL_TRY_EVERY`] lets a merely slow node be heard again.
    silent: Arc<Mutex<HashMap<String, Instant>>>,
}

/// How often a node that stopped answering is given a whole read timeout.
pub const FULL_TRY_EVERY: Duration = Duration::from_secs(2);

impl NodeClient {
    /// `timeout_ms` bounds a call that changes a node; reads take at most half of it.
    pub fn new(timeout_ms: u64) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(timeout_ms))
            .connect_timeout(Duration::from_millis(timeout_ms))
            .pool_max_idle_per_host(2)
            .build()?;
        Ok(Self {
            http,
            read_timeout: Duration::from_millis((timeout_ms / 2).max(100)),
            silent: Arc::default(),
        })
    }

    /// The HTTP client itself (tail copies stream the WAL through it).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The same client with every call bounded by `timeout` (the lease keeper's).
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            http: self.http.clone(),
            read_timeout: timeout,
            silent: Arc::default(),
        }
    }

    pub async fn status(&self, base: &str, token: &str) -> Result<NodeStatus, NodeError> {
        let timeout = self.status_timeout(base);
        let req = self
            .http
            .get(format!("{base}/admin/v1/status"))
            .timeout(timeout);
        let answer = self.call(req, token).await;
        let mut silent = self.silent.lock().expect("not poisoned");
        match &answer {
            Ok(_) => {
                silent.remove(base);
            }
            Err(NodeError::Unreachable(_)) => {
                let full = timeout == self.read_timeout;
                let last_full = silent.entry(base.to_string()).or_insert_with(Instant::now);
                if full {
                    *last_full = Instant::now();
                }
            }
            Err(_) => {}
        }
        answer
    }

    /// The read timeout for `base` now: a quarter for a node that stopped answering,
    /// unless its last whole try is [`FULL_TRY_EVERY`] old.
    fn status_timeout(&self, base: &str) -> Duration {
        match self.silent.lock().expect("not poisoned").get(base) {
            Some(full) if full.elapsed() < FULL_TRY_EVERY => {
                (self.read_timeout / 4).max(Duration::from_millis(50))
            }
            _ => self.read_timeout,
        }
    }

    /// `PUT /admin/v1/lease`, bounded by the read timeout (a renewal must not outlast
    /// its period).
    pub async fn put_lease(
        &self,
        base: &str,
        token: &str,
        renewal: &LeaseRenewal,
    ) -> Result<LeaseStatus, NodeError> {
        let req = self
            .http
            .put(format!("{base}/admin/v1/lease"))
            .json(renewal)
            .timeout(self.read_timeout);
        self.call(req, token).await
    }

    pub async fn put_config(
        &self,
        base: &str,
        token: &str,
        config: &SaleConfig,
    ) -> Result<NodeStatus, NodeError> {
        self.put(base, "config", token, config).await
    }

    pub async fn put_role(
        &self,
        base: &str,
        token: &str,
        role: &RoleAssignment,
    ) -> Result<NodeStatus, NodeError> {
        self.put(base, "role", token, role).await
    }

    async fn put<B: Serialize>(
        &self,
        base: &str,
        what: &str,
        token: &str,
        body: &B,
    ) -> Result<NodeStatus, NodeError> {
        let req = self.http.put(format!("{base}/admin/v1/{what}")).json(body);
        self.call(req, token).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        token: &str,
    ) -> Result<T, NodeError> {
        let resp = req
            .bearer_auth(token)
            .send()
            .await
            .map_err(NodeError::Unreachable)?;
        let status = resp.status();
        if !status.is_success() {
            let mut body = resp.text().await.unwrap_or_default();
            body.truncate(body.floor_char_boundary(ERROR_BODY_BYTES_MAX));
            return Err(NodeError::Refused {
                status: status.as_u16(),
                body,
            });
        }
        resp.json().await.map_err(NodeError::Contract)
    }
}

/// Base URL of a node from its pod IP.
pub fn node_url(pod_ip: &str) -> String {
    if pod_ip.contains(':') {
        format!("http://[{pod_ip}]:{}", crate::labels::NODE_PORT)
    } else {
        format!("http://{pod_ip}:{}", crate::labels::NODE_PORT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_node_that_stopped_answering_is_asked_briefly_until_it_answers() {
        // Accepts connections and never answers: a frozen node.
        let frozen = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", frozen.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((c, _)) = frozen.accept().await {
                open.push(c);
            }
        });
        let nodes = NodeClient::new(400).unwrap();
        assert_eq!(nodes.status_timeout(&url), Duration::from_millis(200));
        assert!(nodes.status(&url, "t").await.is_err());
        assert_eq!(nodes.status_timeout(&url), Duration::from_millis(50));
        // Its next whole try is due: a slow node gets the time to answer again.
        nodes
            .silent
            .lock()
            .unwrap()
            .insert("http://x".into(), Instant::now() - FULL_TRY_EVERY);
        assert_eq!(nodes.status_timeout("http://x"), Duration::from_millis(200));
        held.abort();
    }
}
