//! The pure end of a reconcile pass: from what was observed, planned and done, the
//! facts, replication's verdict, the next status (computed once) and the notes to publish.
//! No client and no clock: the pass's `now` is given. Unit tested for the main
//! transitions without a cluster (`tests/it/transitions.rs`).

use flashsale_core::SaleConfig;
use flashsale_core::admin::Role;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::apply::Applied;
use crate::crd::{FlashSale, FlashSaleStatus, PrimaryStatus};
use crate::events::{self, Note, Seen};
use crate::execute::Outcome;
use crate::failover;
use crate::observe::{Observed, PodView};
use crate::replication::{self, Assessment};
use crate::roles::RolePlan;
use crate::status::{Facts, Problem, next_status};

/// What one pass saw and did, up to the node calls.
pub struct Pass<'a> {
    pub sale: &'a FlashSale,
    pub prev: &'a FlashSaleStatus,
    pub observed: &'a Observed,
    pub role_plan: &'a RolePlan,
    pub config: &'a SaleConfig,
    pub hash: &'a str,
    /// Label selector of the node pods (`status.selector`).
    pub selector: String,
    pub applied: Applied,
    pub outcomes: &'a [Outcome],
    pub now: &'a Time,
    /// The failover part of the status as this pass leaves it (the last status's, or
    /// what the failover decided this pass).
    pub failover: FailoverPart<'a>,
    /// The pod template rollout (`crate::rollout`).
    pub rollout: &'a crate::rollout::Plan,
}

/// The failover part of a pass: the state machine's status, the lease keeper's view of
/// the primary's lease, and the switchover requests refused.
#[derive(Clone, Debug, Default)]
pub struct FailoverPart<'a> {
    pub state: Option<crate::crd::FailoverState>,
    pub last: Option<crate::crd::FailoverRecord>,
    pub lease: failover::keeper::LeaseView,
    pub refused: &'a [String],
    /// Problems of the failover's own actions this pass.
    pub problems: &'a [Problem],
}

/// What the pass concludes.
pub struct Concluded {
    pub status: FlashSaleStatus,
    pub notes: Vec<Note>,
    /// Replication's verdict (its live figures go to the operator's metrics).
    pub assessment: Assessment,
}

pub fn conclude(pass: &Pass) -> Concluded {
    let thresholds = replication::Thresholds::from(&pass.sale.spec.replication);
    let assessment = replication::assess(
        &pass.observed.pods,
        pass.role_plan.primary.as_deref(),
        &pass.prev.nodes,
        thresholds,
        pass.now,
    );
    let facts = facts(pass, assessment.clone());
    let status = next_status(pass.prev, &facts, pass.now);
    let seen = Seen {
        applied: pass.applied.clone(),
        outcomes: pass.outcomes,
        started_lagging: &assessment.started_lagging,
        stopped_lagging: &assessment.stopped_lagging,
        sale: kube::ResourceExt::name_any(pass.sale),
        replicas: pass.sale.spec.nodes.replicas,
        managed_redis: pass.sale.spec.redis.managed,
        refused: pass.failover.refused,
        unhealthy_after_ms: duration_ms(&pass.sale.spec.failover.unhealthy_after),
    };
    let notes = events::notes(pass.prev, &status, &seen);
    Concluded {
        status,
        notes,
        assessment,
    }
}

/// What the status says, from what was observed and done.
fn facts(pass: &Pass, assessment: Assessment) -> Facts {
    let Pass {
        sale,
        observed,
        role_plan,
        config,
        hash,
        outcomes,
        ..
    } = pass;
    let selector = pass.selector.clone();
    let desired = sale.spec.nodes.replicas;
    let pods = &observed.pods;
    let primary_view = role_plan.primary.as_deref().and_then(|p| observed.pod(p));
    let mut problems: Vec<Problem> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err().cloned())
        .chain(pass.failover.problems.iter().cloned())
        .collect();
    if let Some(primary) = &role_plan.primary
        && let Some(why) = failover::primary_unavailable(primary, pods)
    {
        problems.insert(
            0,
            Problem {
                reason: "PrimaryUnavailable",
                message: why,
            },
        );
    }
    let node_is = |v: &PodView, primary: bool| {
        // The primary runs the config it was given (hash on its pod); a secondary runs
        // what it replicated, so its items must match the spec's.
        let Some(s) = v.node_status() else {
            return false;
        };
        let (role, config_current) = if primary {
            (Role::Primary, v.config_hash.as_deref() == Some(hash))
        } else {
            (Role::Secondary, items_match(&s.items, config))
        };
        s.role == role && s.epoch == role_plan.epoch && s.sale.is_some() && config_current
    };
    let is_primary = |v: &PodView| role_plan.primary.as_deref() == Some(v.name.as_str());
    // Selling: the primary at the sale's epoch with a sale, ready, and its lease
    // granted by the keeper (a node the operator runs sells nothing without one: a
    // promotion whose first renewal failed is not selling). A config it refused (stock
    // below what it sold) leaves it selling on its previous one: still Ready, and
    // Degraded says why the new one is not taken.
    let lease = &pass.failover.lease;
    let leased = lease.held
        && lease.granted
        && lease.epoch == role_plan.epoch
        && lease.pod.is_some()
        && lease.pod == role_plan.primary;
    let primary_selling = leased
        && primary_view.is_some_and(|v| {
            v.ready
                && v.node_status().is_some_and(|s| {
                    s.role == Role::Primary && s.epoch == role_plan.epoch && s.sale.is_some()
                })
        });
    let primary_config_current = primary_view.is_some_and(|v| node_is(v, true));
    let every_node_current = pods.iter().all(|v| node_is(v, is_primary(v)) && v.ready);
    // `OnDelete`: the StatefulSet's current revision never moves to its update revision
    // (only its own rolling update does that), so what counts is that every node runs
    // the update revision (`rollout::Plan::outdated`) and it has seen the current spec.
    let sts_current = crate::rollout::update_revision(observed).is_some()
        && pass.rollout.outdated.is_empty()
        && observed
            .statefulset
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some_and(|s| s.updated_replicas.unwrap_or(0) >= desired);
    Facts {
        generation: sale.metadata.generation,
        selector,
        desired_replicas: desired,
        replicas: pods.len() as i32,
        ready_replicas: pods.iter().filter(|p| p.ready).count() as i32,
        primary: role_plan.primary.as_ref().map(|pod| PrimaryStatus {
            pod: pod.clone(),
            endpoint: primary_view.and_then(|v| v.url()),
        }),
        epoch: role_plan.epoch,
        primary_selling,
        primary_config_current,
        items: primary_view
            .and_then(|v| v.node_status())
            .filter(|s| s.sale.is_some())
            .map(|s| s.items.clone()),
        rolled_out: every_node_current && sts_current && pods.len() as i32 == desired,
        outdated: pass.rollout.outdated.clone(),
        rollout_waits: pass.rollout.waits.clone(),
        problems,
        invalid: None,
        replication: Some(assessment),
        primary_problem: match (&pass.failover.state, &role_plan.primary) {
            (Some(f), _) => Some(format!("{} is being replaced: {}", f.from, f.reason)),
            (None, Some(p)) => {
                failover::primary_problem(p, role_plan.epoch, pods, &pass.failover.lease)
            }
            (None, None) => None,
        },
        failover: pass.failover.state.clone(),
        last_failover: rejoined(pass.failover.last.clone(), role_plan, pods),
    }
}

/// The last failover, marked once its old primary follows the new one.
fn rejoined(
    last: Option<crate::crd::FailoverRecord>,
    role_plan: &RolePlan,
    pods: &[PodView],
) -> Option<crate::crd::FailoverRecord> {
    let mut last = last?;
    if !last.old_primary_rejoined
        && pods.iter().any(|p| {
            p.name == last.from_pod
                && p.ready
                && p.node_status().is_some_and(|s| {
                    s.role == Role::Secondary && s.epoch == role_plan.epoch && s.epoch >= last.epoch
                })
        })
    {
        last.old_primary_rejoined = true;
    }
    Some(last)
}

fn duration_ms(d: &kube::core::Duration) -> u64 {
    let d: std::time::Duration = (*d).into();
    d.as_millis() as u64
}

/// A node's items are the spec's: same SKUs, stock and limits.
fn items_match(items: &[flashsale_core::ItemView], config: &SaleConfig) -> bool {
    items.len() == config.items.len()
        && config.items.iter().all(|want| {
            items.iter().any(|have| {
                have.sku == want.sku
                    && have.stock == want.stock
                    && have.per_customer_limit == want.per_customer_limit
            })
        })
}
