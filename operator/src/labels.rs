//! Names and labels of everything a sale owns, in one place so build, observe and the
//! Services' selectors cannot drift apart.

use std::collections::BTreeMap;

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "flashsale-operator";
/// Finalizer that lets the operator stop the nodes before the sale disappears.
pub const FINALIZER: &str = "flashsale.dev/cleanup";

pub const NAME: &str = "app.kubernetes.io/name";
pub const INSTANCE: &str = "app.kubernetes.io/instance";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const COMPONENT: &str = "app.kubernetes.io/component";
pub const SALE: &str = "flashsale.dev/sale";
/// The role label: the truth about who is primary (never an ordinal).
pub const ROLE: &str = "flashsale.dev/role";
pub const ROLE_PRIMARY: &str = "primary";
pub const ROLE_SECONDARY: &str = "secondary";
/// Pod annotation: hash of the sale config last accepted by that node.
pub const CONFIG_HASH: &str = "flashsale.dev/config-hash";
/// Label of a recovery Job: the epoch of the failover it serves.
pub const FAILOVER_EPOCH: &str = "flashsale.dev/failover-epoch";
/// Annotation on a FlashSale: a person asks for this pod to become the primary.
pub const SWITCHOVER_TO: &str = "flashsale.dev/switchover-to";
/// Pod annotation: the role assignment last accepted by that node (`secondary@1 http://…`).
pub const ROLE_ASSIGNMENT: &str = "flashsale.dev/role-assignment";

pub const NODE_APP: &str = "stock-node";
/// `app.kubernetes.io/name` of a failover's recovery Job and its pod.
pub const RECOVERY_APP: &str = "recovery";
/// The label the Job controller puts on a Job's pods.
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
/// The label the StatefulSet controller puts on its pods: the template revision.
pub const POD_REVISION: &str = "controller-revision-hash";
pub const REDIS_APP: &str = "redis";

/// Port of the node's HTTP API, admin API and metrics.
pub const NODE_PORT: i32 = 8080;
pub const NODE_PORT_NAME: &str = "http";
pub const REDIS_PORT: i32 = 6379;

/// Selects a sale's stock node pods; also the StatefulSet's (immutable) selector.
pub fn node_selector(sale: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME.to_string(), NODE_APP.to_string()),
        (INSTANCE.to_string(), sale.to_string()),
    ])
}

/// Selects only the primary: the node selector plus the role label.
pub fn primary_selector(sale: &str) -> BTreeMap<String, String> {
    let mut labels = node_selector(sale);
    labels.insert(ROLE.to_string(), ROLE_PRIMARY.to_string());
    labels
}

/// Labels of every object of one component of a sale.
pub fn component_labels(sale: &str, app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME.to_string(), app.to_string()),
        (INSTANCE.to_string(), sale.to_string()),
        (MANAGED_BY.to_string(), FIELD_MANAGER.to_string()),
        (COMPONENT.to_string(), app.to_string()),
        (SALE.to_string(), sale.to_string()),
    ])
}

/// The label selector string of the node pods (status.selector, for the scale subresource).
pub fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn statefulset_name(sale: &str) -> String {
    sale.to_string()
}
pub fn headless_service_name(sale: &str) -> String {
    format!("{sale}-nodes")
}
pub fn client_service_name(sale: &str) -> String {
    sale.to_string()
}
pub fn primary_service_name(sale: &str) -> String {
    format!("{sale}-primary")
}
pub fn redis_name(sale: &str) -> String {
    format!("{sale}-redis")
}
pub fn admin_secret_name(sale: &str) -> String {
    format!("{sale}-admin")
}
pub fn pdb_name(sale: &str) -> String {
    sale.to_string()
}
/// Key of the admin token in the admin Secret.
pub const ADMIN_TOKEN_KEY: &str = "token";
