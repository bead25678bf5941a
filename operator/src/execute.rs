//! Execute: tell the nodes what the role plan says, in order, and record on each pod what
//! its node accepted (the config hash and role annotations, the role label). I/O only:
//! what happened comes back as data ([`Outcome`]) for the status and the Events.

use flashsale_core::SaleConfig;

use crate::apply;
use crate::build::Owner;
use crate::failover::keeper::{Keeper, Target};
use crate::labels;
use crate::nodes::{NodeClient, NodeError};
use crate::observe::Observed;
use crate::roles::{Step, assignment_note};
use crate::status::Problem;

/// One step and how it went: `Ok` with what the node now runs, for a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub step: Step,
    pub result: Result<String, Problem>,
}

/// Runs the steps in order; a failed step skips that pod's later steps. The observed
/// views are updated with what the nodes answered, so the status reads the new facts.
/// The lease keeper a `GrantLease` step hands the primary to: the keeper, the sale's key
/// in it, and the lease duration.
pub struct Leases<'a> {
    pub keeper: &'a Keeper,
    pub key: &'a str,
    pub duration: std::time::Duration,
}

#[allow(clippy::too_many_arguments)]
pub async fn execute(
    client: &kube::Client,
    nodes: &NodeClient,
    leases: &Leases<'_>,
    owner: &Owner,
    config: &SaleConfig,
    hash: &str,
    steps: &[Step],
    observed: &mut Observed,
) -> Vec<Outcome> {
    let Some(token) = observed.admin_token.clone() else {
        return Vec::new();
    };
    let mut outcomes = Vec::with_capacity(steps.len());
    let mut failed: Vec<String> = Vec::new();
    for step in steps {
        let pod = step.pod();
        if failed.iter().any(|f| f == pod) {
            continue;
        }
        let Some(view) = observed.pods.iter_mut().find(|p| p.name == pod) else {
            continue;
        };
        let Some(url) = view.url() else { continue };
        let result = match step {
            Step::PushConfig { .. } => match nodes.put_config(&url, &token, config).await {
                Ok(status) => {
                    view.node = Some(Ok(status));
                    view.config_hash = Some(hash.to_string());
                    let stock: u64 = config.items.iter().map(|i| i.stock).sum();
                    record(client, owner, pod, None, &[(labels::CONFIG_HASH, hash)])
                        .await
                        .map(|()| {
                            format!(
                                "runs config {hash}: {} items, {stock} units",
                                config.items.len()
                            )
                        })
                }
                Err(e) => Err(node_problem("ConfigRejected", pod, &e)),
            },
            Step::AssignRole { assignment, .. } => {
                match nodes.put_role(&url, &token, assignment).await {
                    Ok(status) => {
                        view.node = Some(Ok(status));
                        let note = assignment_note(
                            assignment.role,
                            assignment.epoch,
                            assignment.primary_url.as_deref(),
                        );
                        view.role_assignment = Some(note.clone());
                        record(
                            client,
                            owner,
                            pod,
                            None,
                            &[(labels::ROLE_ASSIGNMENT, &note)],
                        )
                        .await
                        .map(|()| note)
                    }
                    Err(e) => Err(node_problem("RoleRejected", pod, &e)),
                }
            }
            Step::GrantLease { epoch, .. } => {
                leases.keeper.hold(
                    leases.key,
                    Target {
                        pod: pod.to_string(),
                        pod_uid: view.uid.clone(),
                        url: url.clone(),
                        admin_token: token.clone(),
                        epoch: *epoch,
                        lease: leases.duration,
                    },
                );
                match leases.keeper.renew_now(leases.key).await {
                    Ok(()) => Ok(format!(
                        "holds the selling lease for epoch {epoch} ({} s, renewed every {} ms)",
                        leases.duration.as_secs(),
                        crate::failover::timing::renew_every(leases.duration).as_millis()
                    )),
                    Err(why) => Err(Problem {
                        reason: "LeaseRefused",
                        message: format!("{pod}: {why}"),
                    }),
                }
            }
            Step::Label { role, .. } => {
                let r = record(client, owner, pod, Some(role), &[]).await;
                if r.is_ok() {
                    view.role_label = Some(role.to_string());
                }
                r.map(|()| format!("labelled {role}"))
            }
        };
        if result.is_err() {
            failed.push(pod.to_string());
        }
        outcomes.push(Outcome {
            step: step.clone(),
            result,
        });
    }
    outcomes
}

async fn record(
    client: &kube::Client,
    owner: &Owner,
    pod: &str,
    role: Option<&str>,
    annotations: &[(&str, &str)],
) -> Result<(), Problem> {
    apply::patch_pod(client, &owner.namespace, pod, role, annotations)
        .await
        .map_err(|e| Problem {
            reason: "PodPatchFailed",
            message: format!("{pod}: {e}"),
        })
}

fn node_problem(refused_reason: &'static str, pod: &str, e: &NodeError) -> Problem {
    let reason = match e {
        NodeError::Refused { .. } => refused_reason,
        NodeError::Unreachable(_) | NodeError::Contract(_) => "NodeUnreachable",
    };
    Problem {
        reason,
        message: format!("{pod}: {e}"),
    }
}
