//! Observe: what exists for a sale right now — its StatefulSet, its node pods, the admin
//! token, and each running node's own account of itself (`GET /admin/v1/status`).

use flashsale_core::admin::NodeStatus;
use futures::future::join_all;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use crate::labels;
use crate::nodes::{NodeClient, NodeError, node_url};

/// One node pod as the reconcile sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodView {
    pub name: String,
    /// StatefulSet ordinal, from the name (`<sale>-<n>`).
    pub ordinal: Option<u32>,
    pub ip: Option<String>,
    /// Phase Running and not being deleted: a node that can be talked to.
    pub running: bool,
    /// Its readiness probe passes (role and config known to the node).
    pub ready: bool,
    /// The `flashsale.dev/role` label.
    pub role_label: Option<String>,
    /// Hash of the config this node last accepted (pod annotation).
    pub config_hash: Option<String>,
    /// The role assignment this node last accepted (pod annotation, see `roles::assignment_note`).
    pub role_assignment: Option<String>,
    /// The node's own status, or why it could not be read (`None`: not asked, not running).
    pub node: Option<Result<NodeStatus, String>>,
}

impl PodView {
    pub fn from_pod(pod: &Pod) -> Self {
        let name = pod.name_any();
        let ordinal = name.rsplit('-').next().and_then(|n| n.parse().ok());
        let status = pod.status.as_ref();
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let running = !deleting && status.and_then(|s| s.phase.as_deref()) == Some("Running");
        let ready = running
            && status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        Self {
            ordinal,
            ip: status
                .and_then(|s| s.pod_ip.clone())
                .filter(|ip| !ip.is_empty()),
            running,
            ready,
            role_label: pod.labels().get(labels::ROLE).cloned(),
            config_hash: pod.annotations().get(labels::CONFIG_HASH).cloned(),
            role_assignment: pod.annotations().get(labels::ROLE_ASSIGNMENT).cloned(),
            node: None,
            name,
        }
    }

    /// The node's status when it answered.
    pub fn node_status(&self) -> Option<&NodeStatus> {
        self.node.as_ref().and_then(|n| n.as_ref().ok())
    }

    pub fn url(&self) -> Option<String> {
        self.ip.as_deref().map(node_url)
    }
}

/// Everything observed for one sale.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub statefulset: Option<StatefulSet>,
    /// Node pods, by ordinal then name.
    pub pods: Vec<PodView>,
    /// The admin token, when the Secret exists.
    pub admin_token: Option<String>,
    pub redis_deployment_exists: bool,
}

/// Reads the sale's objects and asks every running node for its status (concurrently,
/// each call bounded by the node client's timeout).
pub async fn observe(
    client: &kube::Client,
    nodes: &NodeClient,
    namespace: &str,
    sale: &str,
) -> Result<Observed, kube::Error> {
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);

    let statefulset = sts.get_opt(&labels::statefulset_name(sale)).await?;
    let selector = labels::selector_string(&labels::node_selector(sale));
    let pod_list = pods.list(&ListParams::default().labels(&selector)).await?;
    let admin_token = secrets
        .get_opt(&labels::admin_secret_name(sale))
        .await?
        .and_then(|s| s.data)
        .and_then(|d| d.get(labels::ADMIN_TOKEN_KEY).cloned())
        .and_then(|b| String::from_utf8(b.0).ok())
        .map(|t| t.trim().to_string());
    let redis_deployment_exists = deployments
        .get_opt(&labels::redis_name(sale))
        .await?
        .is_some();

    let mut views: Vec<PodView> = pod_list.items.iter().map(PodView::from_pod).collect();
    views.sort_by(|a, b| (a.ordinal, &a.name).cmp(&(b.ordinal, &b.name)));
    if let Some(token) = &admin_token {
        let asks = views.iter().map(|v| async move {
            match v.url() {
                Some(url) if v.running => Some(
                    nodes
                        .status(&url, token)
                        .await
                        .map_err(|e: NodeError| e.to_string()),
                ),
                _ => None,
            }
        });
        let answers = join_all(asks).await;
        for (view, answer) in views.iter_mut().zip(answers) {
            view.node = answer;
        }
    }
    Ok(Observed {
        statefulset,
        pods: views,
        admin_token,
        redis_deployment_exists,
    })
}
