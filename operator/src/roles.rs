//! Roles: who is primary, at which epoch, and what each node must be told. Pure: a
//! function of the observed pods and the last status, unit tested without a cluster.
//!
//! The first primary is the lowest-ordinal pod whose node answers, chosen once; from then
//! on the role label (and `status.primary`) is the truth, never the ordinal. Replacing a
//! primary that is gone is failover's job ([`crate::failover`]), not this module's.

use flashsale_core::admin::{Role, RoleAssignment};

use crate::labels;
use crate::observe::PodView;

/// One thing to tell a node or do to its pod, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `PUT /admin/v1/config` with the sale's config, then record its hash on the pod
    /// (primary only: secondaries follow the primary's WAL, config records included).
    PushConfig { pod: String },
    /// `PUT /admin/v1/role`.
    AssignRole {
        pod: String,
        assignment: RoleAssignment,
    },
    /// Set the pod's `flashsale.dev/role` label (the primary Service selects on it).
    Label { pod: String, role: &'static str },
}

impl Step {
    /// The pod the step is about.
    pub fn pod(&self) -> &str {
        match self {
            Step::PushConfig { pod } | Step::AssignRole { pod, .. } | Step::Label { pod, .. } => {
                pod
            }
        }
    }
}

/// The outcome of planning.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RolePlan {
    /// The primary pod, once there is one.
    pub primary: Option<String>,
    /// Fencing epoch the nodes are told (0 until a primary exists).
    pub epoch: u64,
    /// The primary was chosen by this plan (first primary of the sale).
    pub newly_chosen: bool,
    pub steps: Vec<Step>,
}

/// What the pod annotation records of the last role a node accepted: a secondary whose
/// primary moved (re-created with a new IP) is told again even though role and epoch match.
pub fn assignment_note(role: Role, epoch: u64, primary_url: Option<&str>) -> String {
    let role = role.as_str();
    match primary_url {
        Some(url) => format!("{role}@{epoch} {url}"),
        None => format!("{role}@{epoch}"),
    }
}

/// Plans roles for a sale.
///
/// * `status_primary`/`status_epoch`: what the last status recorded.
/// * `pods`: node pods by ordinal, with their nodes' answers.
/// * `config_hash`: hash of the config every node must have.
pub fn plan(
    status_primary: Option<&str>,
    status_epoch: u64,
    pods: &[PodView],
    config_hash: &str,
) -> RolePlan {
    let answering = |p: &&PodView| p.running && p.ip.is_some() && p.node_status().is_some();
    // A label survives operator restarts; status survives pod re-creation (labels do not).
    let labelled = pods
        .iter()
        .filter(|p| p.role_label.as_deref() == Some(labels::ROLE_PRIMARY))
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>();
    let (primary, newly_chosen) = match (status_primary, labelled.as_slice()) {
        (Some(p), _) => (Some(p.to_string()), false),
        (None, [one, ..]) => (Some(one.to_string()), false),
        (None, []) => (
            pods.iter()
                .filter(answering)
                .min_by_key(|p| (p.ordinal, p.name.clone()))
                .map(|p| p.name.clone()),
            true,
        ),
    };
    let Some(primary) = primary else {
        return RolePlan::default();
    };
    // Never go back in epochs: a node that knows a newer one would refuse (fenced).
    let node_epoch = pods
        .iter()
        .filter_map(|p| p.node_status().map(|s| s.epoch))
        .max()
        .unwrap_or(0);
    let epoch = status_epoch.max(node_epoch).max(1);
    let mut plan = RolePlan {
        primary: Some(primary.clone()),
        epoch,
        newly_chosen,
        steps: Vec::new(),
    };
    let primary_pod = pods.iter().find(|p| p.name == primary);
    let primary_url = primary_pod.filter(|p| p.running).and_then(|p| p.url());

    // The primary first: secondaries need its address.
    let ordered = primary_pod
        .into_iter()
        .chain(pods.iter().filter(|p| p.name != primary));
    for pod in ordered.filter(|p| answering(p)) {
        let is_primary = pod.name == primary;
        if !is_primary && primary_url.is_none() {
            // No primary to follow yet: leave the node in standby.
            continue;
        }
        let node = pod.node_status().expect("answering");
        // Only the primary is configured: a secondary's WAL must stay a copy of the
        // primary's, so it gets the sale (and every change to it) through replication.
        if is_primary && (node.sale.is_none() || pod.config_hash.as_deref() != Some(config_hash)) {
            plan.steps.push(Step::PushConfig {
                pod: pod.name.clone(),
            });
        }
        let (role, label, url) = if is_primary {
            (Role::Primary, labels::ROLE_PRIMARY, None)
        } else {
            (Role::Secondary, labels::ROLE_SECONDARY, primary_url.clone())
        };
        let wanted = assignment_note(role, epoch, url.as_deref());
        if node.role != role
            || node.epoch != epoch
            || pod.role_assignment.as_deref() != Some(&*wanted)
        {
            plan.steps.push(Step::AssignRole {
                pod: pod.name.clone(),
                assignment: RoleAssignment {
                    role,
                    epoch,
                    primary_url: url,
                },
            });
        }
        if pod.role_label.as_deref() != Some(label) {
            plan.steps.push(Step::Label {
                pod: pod.name.clone(),
                role: label,
            });
        }
    }
    plan
}
