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
    /// Start renewing the primary's selling lease (and renew it once, now): without it
    /// the primary sells nothing and is not ready.
    GrantLease { pod: String, epoch: u64 },
}

impl Step {
    /// The pod the step is about.
    pub fn pod(&self) -> &str {
        match self {
            Step::PushConfig { pod }
            | Step::AssignRole { pod, .. }
            | Step::Label { pod, .. }
            | Step::GrantLease { pod, .. } => pod,
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

/// What the plan needs besides the pods.
#[derive(Clone, Copy, Debug, Default)]
pub struct Known<'a> {
    /// What the last status recorded.
    pub primary: Option<&'a str>,
    pub epoch: u64,
    /// Hash of the config the primary must run.
    pub config_hash: &'a str,
    /// The lease keeper renews the primary's lease at this epoch.
    pub lease_held: bool,
    /// The sale has never had a primary that sold (no figures yet, no failover): the
    /// primary may still be *given* its role. Once it has sold, a primary that is not
    /// primary any more (a new, empty volume) is the failover's to replace, never to
    /// re-assert — that would start the sale again from an empty log.
    pub first_assignment: bool,
}

/// Plans roles for a sale: `pods` by ordinal, with their nodes' answers.
pub fn plan(known: Known, pods: &[PodView]) -> RolePlan {
    let (status_primary, status_epoch, config_hash) =
        (known.primary, known.epoch, known.config_hash);
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
        // The most advanced log first, then the lowest ordinal. A new sale's nodes hold
        // nothing; a sale made again under the name of a deleted one whose volumes were
        // kept (`reclaimPolicy: Retain`) finds its logs on them, and the lowest ordinal
        // answering may hold the shortest.
        (None, []) => (
            pods.iter()
                .filter(answering)
                .min_by_key(|p| {
                    let s = p.node_status().expect("answering");
                    let logged = s.epochs.last().map_or(0, |e| e.epoch);
                    (
                        std::cmp::Reverse((logged, s.durable_seq)),
                        p.ordinal,
                        p.name.clone(),
                    )
                })
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
    // A primary chosen over logs that already hold records (the sale made again on
    // kept volumes) starts a new epoch: a node that answers later with a longer log of
    // the old one then shows as parted from it (its records past the new primary's
    // start are of an older epoch) and is reseeded, with an Event naming what it
    // dropped, instead of following a log that rewrites its sequence numbers at the
    // same epoch.
    let over_logs = newly_chosen
        && pods
            .iter()
            .filter(answering)
            .any(|p| p.node_status().is_some_and(|s| s.durable_seq > 0));
    let epoch = status_epoch.max(node_epoch).max(1) + u64::from(over_logs);
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
        let (role, label, url) = if is_primary {
            (Role::Primary, labels::ROLE_PRIMARY, None)
        } else {
            (Role::Secondary, labels::ROLE_SECONDARY, primary_url.clone())
        };
        let is_role = node.role == role && node.epoch == epoch;
        if is_primary && !is_role && !(newly_chosen || known.first_assignment) {
            // A primary that is not the primary any more is replaced by the failover
            // (crate::failover), never re-asserted here.
            continue;
        }
        let wanted = assignment_note(role, epoch, url.as_deref());
        // The role first: a node takes the sale's config only as the primary.
        if !is_role || pod.role_assignment.as_deref() != Some(&*wanted) {
            plan.steps.push(Step::AssignRole {
                pod: pod.name.clone(),
                assignment: RoleAssignment {
                    role,
                    epoch,
                    primary_url: url,
                },
            });
        }
        if is_primary {
            if !known.lease_held {
                plan.steps.push(Step::GrantLease {
                    pod: pod.name.clone(),
                    epoch,
                });
            }
            // Only the primary is configured: a secondary's WAL must stay a copy of the
            // primary's, so it gets the sale (and every change to it) through replication.
            if node.sale.is_none() || pod.config_hash.as_deref() != Some(config_hash) {
                plan.steps.push(Step::PushConfig {
                    pod: pod.name.clone(),
                });
            }
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
