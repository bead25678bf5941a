//! The stock nodes' admin API (`core::admin`), spoken over HTTP with the sale's admin
//! token. The only way the operator talks to a node.

use std::time::Duration;

use flashsale_core::SaleConfig;
use flashsale_core::admin::{NodeStatus, RoleAssignment};
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
}

impl NodeClient {
    pub fn new(timeout_ms: u64) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(timeout_ms))
            .connect_timeout(Duration::from_millis(timeout_ms))
            .pool_max_idle_per_host(2)
            .build()?;
        Ok(Self { http })
    }

    pub async fn status(&self, base: &str, token: &str) -> Result<NodeStatus, NodeError> {
        let req = self.http.get(format!("{base}/admin/v1/status"));
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
