//! Observe: what exists for a sale right now — its StatefulSet, its node pods, the admin
//! token (all from the controller's caches), and each running node's own account of
//! itself (`GET /admin/v1/status`, the one thing observe asks over the network).

use std::sync::Arc;

use flashsale_core::admin::NodeStatus;
use futures::future::join_all;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::build::Existing;
use crate::labels;
use crate::nodes::{NodeClient, NodeError, node_url};

/// The node's replication mode flag, as the pod template sets it.
pub const REPLICATION_ENV: &str = "STOCK_NODE_REPLICATION";

/// One node pod as the reconcile sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodView {
    pub name: String,
    /// `metadata.uid`: a pod of the same name made again (its predecessor deleted, or
    /// force-deleted while its process may still run on a node cut off) is another pod.
    pub uid: Option<String>,
    /// StatefulSet ordinal, from the name (`<sale>-<n>`).
    pub ordinal: Option<u32>,
    pub ip: Option<String>,
    /// Phase Running and not being deleted: a node that can be talked to.
    pub running: bool,
    /// Being deleted (`metadata.deletionTimestamp`).
    pub deleting: bool,
    /// Its readiness probe passes (role and config known to the node).
    pub ready: bool,
    /// The node's container runs (the kubelet's word, also while the pod is being
    /// deleted; `false` while it waits to be restarted): `false`, in the pod the old
    /// primary ran in (the same `uid`), is a failover's proof that its process is gone.
    pub container_running: bool,
    /// The `flashsale.dev/role` label.
    pub role_label: Option<String>,
    /// Hash of the config this node last accepted (pod annotation).
    pub config_hash: Option<String>,
    /// The role assignment this node last accepted (pod annotation, see `roles::assignment_note`).
    pub role_assignment: Option<String>,
    /// The StatefulSet revision of the template it was made from (the
    /// `controller-revision-hash` label; see `crate::rollout`).
    pub revision: Option<String>,
    /// The node container's `STOCK_NODE_REPLICATION` runs quorum mode: a node takes its
    /// mode at start, so a changed `spec.replication.mode` holds only for pods made
    /// since (the pod template rollout replaces the primary's last).
    pub runs_quorum: bool,
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
        let container_running = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == labels::NODE_APP))
            .and_then(|c| c.state.as_ref())
            .is_some_and(|st| st.running.is_some());
        Self {
            container_running,
            ordinal,
            ip: status
                .and_then(|s| s.pod_ip.clone())
                .filter(|ip| !ip.is_empty()),
            running,
            deleting,
            ready,
            role_label: pod.labels().get(labels::ROLE).cloned(),
            config_hash: pod.annotations().get(labels::CONFIG_HASH).cloned(),
            role_assignment: pod.annotations().get(labels::ROLE_ASSIGNMENT).cloned(),
            revision: pod.labels().get(labels::POD_REVISION).cloned(),
            runs_quorum: pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.iter().find(|c| c.name == labels::NODE_APP))
                .and_then(|c| c.env.as_ref())
                .and_then(|env| env.iter().find(|e| e.name == REPLICATION_ENV))
                .is_some_and(|e| e.value.as_deref() == Some("quorum")),
            node: None,
            uid: pod.metadata.uid.clone(),
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

/// The controller's caches of what the sales own (filled by the watches it runs anyway,
/// so a reconcile reads them instead of asking the API server again).
#[derive(Clone)]
pub struct Stores {
    pub statefulsets: Store<StatefulSet>,
    pub pods: Store<Pod>,
    pub secrets: Store<Secret>,
    pub deployments: Store<Deployment>,
    /// Recovery Jobs.
    pub jobs: Store<k8s_openapi::api::batch::v1::Job>,
}

impl Stores {
    /// Resolves once every cache holds its first full list. Until then a cache that
    /// has not listed yet reads as empty, and an empty pod cache looks like a sale
    /// whose primary pod is gone: a new leader's first pass would shrink the
    /// StatefulSet below the primary (its ordinal unknown) or see a failure that is
    /// not there. `false` when a cache's watch has stopped.
    pub async fn ready(&self) -> bool {
        let (a, b, c, d, e) = futures::join!(
            self.statefulsets.wait_until_ready(),
            self.pods.wait_until_ready(),
            self.secrets.wait_until_ready(),
            self.deployments.wait_until_ready(),
            self.jobs.wait_until_ready(),
        );
        a.is_ok() && b.is_ok() && c.is_ok() && d.is_ok() && e.is_ok()
    }
}

/// Everything observed for one sale.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Which of the sale's objects exist.
    pub existing: Existing,
    pub statefulset: Option<Arc<StatefulSet>>,
    /// Node pods, by ordinal then name.
    pub pods: Vec<PodView>,
    /// The admin token, when the Secret exists.
    pub admin_token: Option<String>,
}

impl Observed {
    /// A node pod by name.
    pub fn pod(&self, name: &str) -> Option<&PodView> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// The ordinal of the sale's node pod `name`: from the pod, or from its name
    /// (`<sale>-<n>`) while the pod cache misses it (just evicted, or a cache late after
    /// a restart). The StatefulSet's floor and the autoscaler's are one past the
    /// primary's ordinal, and must not fall because a pod is briefly gone: the
    /// StatefulSet would then be shrunk past the primary, removing it without a
    /// switchover.
    pub fn ordinal_of(&self, name: &str) -> Option<u32> {
        self.pod(name)
            .and_then(|p| p.ordinal)
            .or_else(|| name.rsplit('-').next()?.parse().ok())
    }

    /// The highest ordinal the StatefulSet must keep: the primary's, and during a
    /// failover or switchover its candidate's and every node's it began with (a
    /// lowered `spec.nodes.replicas` must not remove the node being promoted, with the
    /// tail just shipped into it, nor one whose volume may hold the only copy of an
    /// acknowledged sale; a pod it had begun to remove comes back on its volume).
    pub fn floor_ordinal(&self, status: &crate::crd::FlashSaleStatus) -> Option<u32> {
        let primary = status.primary.as_ref().map(|p| p.pod.as_str());
        let failover = status.failover.as_ref();
        let candidate = failover.and_then(|f| f.candidate.as_deref());
        let nodes = failover
            .into_iter()
            .flat_map(|f| f.nodes.iter().map(String::as_str));
        [primary, candidate]
            .into_iter()
            .flatten()
            .chain(nodes)
            .filter_map(|name| self.ordinal_of(name))
            .max()
    }
}

/// What the caches hold of one sale: its StatefulSet, node pods, admin token and Redis.
pub fn from_caches(stores: &Stores, namespace: &str, sale: &str) -> Observed {
    fn key<K: kube::Resource<DynamicType = ()>>(name: String, ns: &str) -> ObjectRef<K> {
        ObjectRef::new(&name).within(ns)
    }
    let statefulset = stores
        .statefulsets
        .get(&key(labels::statefulset_name(sale), namespace));
    let admin_token = stores
        .secrets
        .get(&key(labels::admin_secret_name(sale), namespace))
        .and_then(|s| s.data.clone())
        .and_then(|d| d.get(labels::ADMIN_TOKEN_KEY).cloned())
        .and_then(|b| String::from_utf8(b.0).ok())
        .map(|t| t.trim().to_string());
    let redis = stores
        .deployments
        .get(&key(labels::redis_name(sale), namespace))
        .is_some();
    let mut pods: Vec<PodView> = stores
        .pods
        .state()
        .iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(namespace)
                && p.labels().get(labels::INSTANCE).map(String::as_str) == Some(sale)
                && p.labels().get(labels::NAME).map(String::as_str) == Some(labels::NODE_APP)
        })
        .map(|p| PodView::from_pod(p))
        .collect();
    pods.sort_by(|a, b| (a.ordinal, &a.name).cmp(&(b.ordinal, &b.name)));
    Observed {
        existing: Existing {
            admin_secret: admin_token.is_some(),
            statefulset: statefulset.is_some(),
            redis,
            statefulset_rolling_update: statefulset.as_ref().is_some_and(|s| {
                s.spec
                    .as_ref()
                    .and_then(|s| s.update_strategy.as_ref())
                    .and_then(|u| u.type_.as_deref())
                    != Some("OnDelete")
            }),
        },
        statefulset,
        pods,
        admin_token,
    }
}

/// Asks the named pods' nodes again (after a failover action changed them).
pub async fn ask_some(nodes: &NodeClient, observed: &mut Observed, names: &[&str]) {
    let Some(token) = observed.admin_token.clone() else {
        return;
    };
    for view in observed
        .pods
        .iter_mut()
        .filter(|p| names.contains(&p.name.as_str()))
    {
        if let Some(url) = view.url().filter(|_| view.running) {
            view.node = Some(nodes.status(&url, &token).await.map_err(|e| e.to_string()));
        }
    }
}

/// Asks every running node for its own status (`GET /admin/v1/status`), concurrently,
/// each call bounded by the node client's timeout.
pub async fn ask_nodes(nodes: &NodeClient, observed: &mut Observed) {
    let Some(token) = observed.admin_token.clone() else {
        return;
    };
    let asks = observed.pods.iter().map(|v| {
        let token = &token;
        async move {
            match v.url() {
                Some(url) if v.running => Some(
                    nodes
                        .status(&url, token)
                        .await
                        .map_err(|e: NodeError| e.to_string()),
                ),
                _ => None,
            }
        }
    });
    let answers = join_all(asks).await;
    for (view, answer) in observed.pods.iter_mut().zip(answers) {
        view.node = answer;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ordinal_outlives_its_pod_in_the_cache() {
        let observed = Observed::default();
        assert_eq!(observed.ordinal_of("my-sale-2"), Some(2));
        assert_eq!(observed.ordinal_of("nonumber"), None);
    }

    /// During a failover the floor keeps the candidate's pod as well as the
    /// primary's: before, a lowered count could remove the node being promoted.
    #[test]
    fn the_floor_keeps_the_primary_and_the_candidate_being_promoted() {
        use crate::crd::{FailoverState, FlashSaleStatus, PrimaryStatus};
        let observed = Observed::default();
        let mut status = FlashSaleStatus {
            primary: Some(PrimaryStatus {
                pod: "s-0".into(),
                endpoint: None,
            }),
            ..FlashSaleStatus::default()
        };
        assert_eq!(observed.floor_ordinal(&status), Some(0));
        let failover: FailoverState = serde_json::from_value(serde_json::json!({
            "kind": "Failover", "from": "s-0", "epoch": 2, "step": "Recovering",
            "reason": "test", "detectedAt": "2026-12-02T10:00:00Z",
            "fenceStartedAt": "2026-12-02T10:00:00Z", "fromLeased": true,
            "candidate": "s-2"
        }))
        .unwrap();
        status.failover = Some(failover.clone());
        assert_eq!(observed.floor_ordinal(&status), Some(2));
        // Every node the failover began with is kept too, the candidate or not: s-3's
        // volume may hold the only copy of an acknowledged sale (quorum mode).
        status.failover = Some(FailoverState {
            nodes: vec!["s-1".into(), "s-2".into(), "s-3".into()],
            ..failover
        });
        assert_eq!(observed.floor_ordinal(&status), Some(3));
    }
}
