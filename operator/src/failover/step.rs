//! The failover state machine, pure: [`decide`] reads the world (the last status, the
//! pods and what their nodes answered, the lease keeper's view, the recovery Job) and
//! says what to do — the actions to take, and the failover part of the status to write
//! once they are done. The controller runs it to a fixpoint within a pass: act, look
//! again, decide again, until a status must be written or nothing is left to do.
//!
//! Invariants it keeps (FAILOVER.md):
//! - the new epoch is written to the status before any node hears of it (I5: a `Begin`
//!   has no node action; the controller writes it with the resourceVersion it read, so
//!   two operators can never both take an epoch);
//! - no node is promoted before the old primary's lease is provably over: it stepped
//!   down, its process is gone (the kubelet of the pod it ran in says so, or another run
//!   of the node answers from that pod: a lease never survives a restart), or the fence
//!   deadline passed (I2). A pod missing, or made again under the same name, proves
//!   nothing: a force deletion leaves the process running on a node cut off;
//! - the candidate holds the old primary's whole durable log before it is promoted (I4).

use flashsale_core::admin::Role;
use flashsale_core::replication::epoch_at;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::keeper::LeaseView;
use super::rank::{self, Candidate};
use super::timing::FENCE_MARGIN;
use crate::crd::{
    CONDITION_PRIMARY_AVAILABLE, FailoverKind, FailoverRecord, FailoverState, FailoverStep,
    FlashSaleStatus, NodeRole, TailPolicy,
};
use crate::observe::PodView;

/// The recovery Job of the failover under way, as Kubernetes reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    Running,
    /// Deleted, its pods still stopping (they may still hold the volume).
    Deleting,
    Succeeded,
    Failed(String),
}

/// Everything a decision is made from.
#[derive(Clone, Debug)]
pub struct World<'a> {
    /// The status as last written.
    pub status: &'a FlashSaleStatus,
    pub pods: &'a [PodView],
    /// The keeper's view of the primary's lease.
    pub lease: LeaseView,
    /// The recovery Job of `status.epoch` that ships into `status.failover.candidate`,
    /// if one exists (`build::recovery_job_name`). A Job that shipped into another
    /// node is not this one.
    pub job: Option<JobState>,
    /// A switchover asked for with the `flashsale.dev/switchover-to` annotation.
    pub switchover_to: Option<String>,
    /// `spec.nodes.replicas`: a scale-down below the primary's ordinal switches over first.
    pub replicas: i32,
    /// A pod template rollout has come to the primary: every other node that stays
    /// runs the new template and is ready (`crate::rollout::Plan::primary_turn`). The
    /// primary moves by a switchover, then is replaced as a secondary.
    pub rollout: bool,
    pub unhealthy_after_ms: u64,
    /// The longest lease any leader may have granted the primary (`status.leaseDurationMs`
    /// or the spec's `leaseDuration`, whichever is longer).
    pub lease_ms: u64,
    pub tail_policy: TailPolicy,
    pub quorum: bool,
    /// A switchover target may be at most this many records behind the primary.
    pub max_lag_records: u64,
    /// Secondaries replication judged lagging.
    pub lagging: Vec<String>,
    pub now: Time,
    /// When this operator became the leader: a lease granted by an earlier leader is over
    /// by `leader_since + leaseDuration + margin`.
    pub leader_since: Time,
    /// The sale's name (the recovery Jobs' names start with it).
    pub sale: String,
}

/// Something to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Stop renewing the lease the keeper holds for this sale: the old primary's, or a
    /// candidate's whose promotion failed.
    StopLease,
    /// Take the primary label off a pod (the primary Service stops sending it purchases).
    Unlabel { pod: String },
    /// Tell a node it is a standby at `epoch`: the old primary steps down (its lease goes
    /// with its role), a secondary stops following the old primary.
    Park { pod: String, epoch: u64 },
    /// Copy the old primary's log from `from_seq` on into the candidate, from the old pod.
    CopyTail {
        from: String,
        to: String,
        from_seq: u64,
    },
    /// Start the recovery Job: `stock-node wal ship` of `from`'s volume into `to`.
    CreateJob { from: String, to: String },
    /// Delete the running recovery Job of this epoch that ships into `to`, a candidate
    /// given up: it holds the old primary's volume, which a ReadWriteOnce claim lets
    /// only one node mount, so the next candidate's Job would wait for it (up to its
    /// 120 s deadline) before it could read the tail.
    DeleteJob { to: String },
    /// Make `pod` the primary at `epoch`, grant its lease, label it.
    Promote { pod: String, epoch: u64 },
    /// Remove the switchover annotation (done, or refused).
    ClearSwitchoverRequest,
}

/// What [`decide`] concluded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// The failover part of the status to write once the actions are done.
    pub next: Option<Next>,
    /// A switchover request refused, and why (a Warning).
    pub refused: Option<String>,
    /// Look again this soon (ms), whatever else happens.
    pub requeue_ms: Option<u64>,
    /// The primary fails its checks, not yet for `unhealthyAfter`: nothing moves yet,
    /// but the autoscaler holds the count (a scale-down now could remove the secondary
    /// the failover about to begin needs).
    pub primary_failing: bool,
    /// A scale-down that would remove the primary waits, and why: no node that stays
    /// can take over now (said in the status as a problem, not waited for in silence).
    pub scale_down_waits: Option<String>,
    /// The rollout's switchover of the primary waits, and why.
    pub rollout_waits: Option<String>,
}

/// The failover part of the next status.
#[derive(Clone, Debug, PartialEq)]
pub struct Next {
    pub epoch: u64,
    pub primary: Option<String>,
    pub failover: Option<FailoverState>,
    pub last_failover: Option<FailoverRecord>,
}

const POLL_MS: u64 = 250;

/// The reason a failover waits for its recovery Job, deleted, to be gone.
const JOB_DELETING: &str = "RecoveryJobDeleting";
const TAIL_SHORT: &str = "TailShort";

fn ms_between(a: &Time, b: &Time) -> i64 {
    b.0.as_millisecond() - a.0.as_millisecond()
}

fn plus_ms(t: &Time, ms: u64) -> Time {
    Time(t.0 + std::time::Duration::from_millis(ms))
}

fn pod<'a>(w: &'a World, name: &str) -> Option<&'a PodView> {
    w.pods.iter().find(|p| p.name == name)
}

fn answering<'a>(w: &'a World, name: &str) -> Option<&'a flashsale_core::admin::NodeStatus> {
    pod(w, name)
        .filter(|p| p.running)
        .and_then(|p| p.node_status())
}

/// When the primary started failing its checks, if it is failing now: the earlier of
/// the keeper's last renewal before they failed and the `PrimaryAvailable` condition's
/// flip — but not before this primary was promoted. The condition goes False when its
/// predecessor fails and stays False through the failover (its time kept), so a new
/// primary whose first lease renewal failed was failed over again at once, from the
/// old outage's start, instead of after `unhealthyAfter` of its own.
pub fn failing_since(w: &World) -> Option<Time> {
    let promoted = w
        .status
        .last_failover
        .as_ref()
        .filter(|r| {
            r.epoch == w.status.epoch
                && w.status.primary.as_ref().is_some_and(|p| p.pod == r.to_pod)
        })
        .map(|r| r.promoted_at.clone());
    let condition = w
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_PRIMARY_AVAILABLE && c.status == "False")
        .map(|c| match &promoted {
            Some(p) if p.0 > c.last_transition_time.0 => p.clone(),
            _ => c.last_transition_time.clone(),
        });
    match (condition, w.lease.failing_since.clone()) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b).or_else(|| Some(w.now.clone())),
    }
}

pub fn decide(w: &World) -> Decision {
    let Some(primary) = w.status.primary.as_ref().map(|p| p.pod.clone()) else {
        // No primary yet: choosing the first is the role plan's.
        return Decision::default();
    };
    match &w.status.failover {
        None => steady(w, &primary),
        Some(f) => match f.step {
            FailoverStep::Fencing => fencing(w, f),
            FailoverStep::Recovering => recovering(w, f),
            FailoverStep::Promoting => promoting(w, f),
        },
    }
}

fn begin(
    w: &World,
    kind: FailoverKind,
    from: &str,
    reason: String,
    detected_at: Time,
    candidate: Option<String>,
) -> Decision {
    let epoch = w.status.epoch + 1;
    Decision {
        actions: vec![Action::StopLease],
        next: Some(Next {
            epoch,
            primary: Some(from.to_string()),
            failover: Some(FailoverState {
                kind,
                from: from.to_string(),
                from_uid: leased_pod_uid(w, from),
                epoch,
                step: FailoverStep::Fencing,
                reason,
                detected_at,
                fence_started_at: w.now.clone(),
                fence_until: None,
                from_leased: true,
                fenced: None,
                fenced_at: None,
                from_durable_seq: None,
                candidate,
                ranking: None,
                candidate_start_seq: None,
                tail_source: None,
                tail_end: None,
                recovered_at: None,
                nodes: {
                    let mut nodes: Vec<String> = w
                        .pods
                        .iter()
                        .filter(|p| p.name != from)
                        .map(|p| p.name.clone())
                        .collect();
                    nodes.sort();
                    nodes
                },
                nodes_durable_seq: durable_at_begin(w, from),
                blocked: None,
            }),
            last_failover: w.status.last_failover.clone(),
        }),
        requeue_ms: Some(0),
        ..Decision::default()
    }
}

/// What each other node holds of the old primary's epoch as a failover begins
/// (`FailoverState::nodes_durable_seq`): quorum acks are only for records of it. A
/// node whose log ends at an older epoch (lagging, parted, being reseeded) held none
/// it acknowledged: 0. A node that does not answer now is left out, unless it was a
/// secondary at the sale's epoch the last time it answered (`status.nodes` keeps that
/// role and epoch while it is silent, as it is for the whole `unhealthyAfter` when it
/// went down with the primary; a standby, or a secondary of an earlier primary,
/// acknowledged nothing of this one), when it may hold what it acknowledged: 1,
/// so that it counts as silent if it comes back with an empty log (a new volume). A
/// pod never seen answering (one still starting) is left out: it has nothing to lose.
fn durable_at_begin(w: &World, from: &str) -> std::collections::BTreeMap<String, u64> {
    // The epoch of the old primary's records: its own log's last, if it answers.
    let epoch = answering(w, from)
        .and_then(|s| epoch_at(&s.epochs, s.durable_seq, s.durable_seq))
        .unwrap_or(w.status.epoch);
    w.pods
        .iter()
        .filter(|p| p.name != from)
        .filter_map(|p| match p.node_status().filter(|_| p.running) {
            Some(s) => {
                let last = epoch_at(&s.epochs, s.durable_seq, s.durable_seq);
                let held = if last == Some(epoch) {
                    s.durable_seq
                } else {
                    0
                };
                Some((p.name.clone(), held))
            }
            None => w
                .status
                .nodes
                .iter()
                .any(|n| {
                    n.name == p.name
                        && n.role == Some(NodeRole::Secondary)
                        // None: written before `roleEpoch` was (an upgrade); kept.
                        && n.role_epoch.is_none_or(|e| e == w.status.epoch)
                })
                .then(|| (p.name.clone(), 1)),
        })
        .collect()
}

fn steady(w: &World, primary: &str) -> Decision {
    let p_status = answering(w, primary);
    if let Some(target) = &w.switchover_to {
        return match switchover_refusal(w, primary, target) {
            Some(why) => Decision {
                actions: vec![Action::ClearSwitchoverRequest],
                refused: Some(why),
                ..Decision::default()
            },
            None => begin(
                w,
                FailoverKind::Switchover,
                primary,
                format!("switchover to {target} asked (flashsale.dev/switchover-to)"),
                w.now.clone(),
                Some(target.clone()),
            ),
        };
    }
    let problem = super::primary_problem(primary, w.status.epoch, w.pods, &w.lease);
    if let Some(problem) = problem {
        let since = failing_since(w).unwrap_or_else(|| w.now.clone());
        let failing_ms = ms_between(&since, &w.now).max(0) as u64;
        if failing_ms >= w.unhealthy_after_ms {
            return begin(w, FailoverKind::Failover, primary, problem, since, None);
        }
        return Decision {
            requeue_ms: Some((w.unhealthy_after_ms - failing_ms).min(POLL_MS)),
            primary_failing: true,
            ..Decision::default()
        };
    }
    // A scale-down that would remove the primary's pod moves the primary first.
    let ordinal = pod(w, primary).and_then(|p| p.ordinal);
    if let (Some(o), Some(_)) = (ordinal, p_status)
        && w.replicas <= o as i32
    {
        let reason = format!(
            "scale-down to {} nodes would remove the primary {primary} (ordinal {o})",
            w.replicas
        );
        return switch_to_one_that_stays(w, primary, reason).unwrap_or_else(|why| Decision {
            scale_down_waits: Some(format!(
                "the scale-down to {} nodes waits: the primary {primary} (ordinal {o}) cannot switch over to a node that stays ({why})",
                w.replicas
            )),
            requeue_ms: Some(1_000),
            ..Decision::default()
        });
    }
    // A pod template rollout that has come to the primary moves it before its pod is
    // replaced.
    if w.rollout && p_status.is_some() {
        let reason = format!(
            "pod template rollout: every other node runs the new template, the primary {primary} moves before its pod is replaced"
        );
        return switch_to_one_that_stays(w, primary, reason).unwrap_or_else(|why| Decision {
            rollout_waits: Some(format!(
                "the pod template rollout waits: the primary {primary} cannot switch over ({why})"
            )),
            requeue_ms: Some(1_000),
            ..Decision::default()
        });
    }
    Decision::default()
}

/// A switchover to the best-ranked node below `spec.nodes.replicas`, or why there is
/// none that can take over now.
fn switch_to_one_that_stays(w: &World, primary: &str, reason: String) -> Result<Decision, String> {
    let best = rank::rank(w.pods, primary, w.status.epoch, &w.lagging)
        .into_iter()
        .find(|c| c.ordinal.is_some_and(|co| (co as i32) < w.replicas));
    let Some(c) = best else {
        return Err("no node that stays answers as a secondary with the sale".to_string());
    };
    match switchover_refusal(w, primary, &c.name) {
        None => Ok(begin(
            w,
            FailoverKind::Switchover,
            primary,
            reason,
            w.now.clone(),
            Some(c.name),
        )),
        Some(why) => Err(why),
    }
}

/// Why `target` cannot take over from `primary` now, if it cannot.
pub fn switchover_refusal(w: &World, primary: &str, target: &str) -> Option<String> {
    if target == primary {
        return Some(format!("{target} is the primary already"));
    }
    let Some(p) = pod(w, target) else {
        return Some(format!("no node pod {target} in this sale"));
    };
    if let Some(o) = p.ordinal.filter(|&o| o as i32 >= w.replicas) {
        return Some(format!(
            "{target} (ordinal {o}) is to be removed: the sale is scaling to {} nodes",
            w.replicas
        ));
    }
    let Some(s) = p.node_status().filter(|_| p.running) else {
        return Some(format!("{target} does not answer"));
    };
    if s.role != Role::Secondary || s.epoch != w.status.epoch || !p.ready {
        return Some(format!(
            "{target} is not a ready secondary at epoch {} (it is {}@{}, ready: {})",
            w.status.epoch,
            s.role.as_str(),
            s.epoch,
            p.ready
        ));
    }
    let primary_seq = answering(w, primary).map_or(0, |ps| ps.durable_seq);
    let behind = primary_seq.saturating_sub(s.durable_seq);
    if behind > w.max_lag_records {
        return Some(format!(
            "{target} lags {behind} records behind the primary (the limit is spec.replication.maxLagRecords = {})",
            w.max_lag_records
        ));
    }
    None
}

/// The fence deadline: any lease the old primary could hold is over by then.
fn fence_deadline(w: &World, f: &FailoverState) -> Time {
    let by_leader = plus_ms(
        &w.leader_since,
        w.lease_ms + FENCE_MARGIN.as_millis() as u64,
    );
    let mut end = by_leader;
    for t in [w.lease.lease_end.clone(), f.fence_until.clone()]
        .into_iter()
        .flatten()
    {
        if t.0 > end.0 {
            end = t;
        }
    }
    end
}

fn fencing(w: &World, f: &FailoverState) -> Decision {
    let mut d = Decision {
        requeue_ms: Some(POLL_MS),
        ..Decision::default()
    };
    if f.kind == FailoverKind::Switchover && w.switchover_to.is_some() {
        d.actions.push(Action::ClearSwitchoverRequest);
    }
    if pod(w, &f.from).is_some_and(|p| p.role_label.as_deref() == Some(crate::labels::ROLE_PRIMARY))
    {
        d.actions.push(Action::Unlabel {
            pod: f.from.clone(),
        });
    }
    let from = answering(w, &f.from);
    if let Some(s) = from
        && (s.role == Role::Primary || s.epoch < f.epoch)
    {
        d.actions.push(Action::Park {
            pod: f.from.clone(),
            epoch: f.epoch,
        });
    }
    for p in w.pods.iter().filter(|p| p.name != f.from && p.running) {
        if let Some(s) = p.node_status()
            && s.epoch < f.epoch
            && s.role != Role::Primary
        {
            d.actions.push(Action::Park {
                pod: p.name.clone(),
                epoch: f.epoch,
            });
        }
    }
    let deadline = fence_deadline(w, f);
    let proof = if old_run(w, f).is_some_and(|s| s.role != Role::Primary && s.epoch >= f.epoch) {
        Some("stepped down")
    } else if !f.from_leased {
        Some("never leased at this epoch")
    } else if process_gone(w, f) {
        Some("process gone")
    } else if w.now.0 >= deadline.0 {
        Some("lease expired")
    } else {
        None
    };
    let Some(proof) = proof else {
        // Write the deadline once it is known, for a person and a resuming leader.
        if f.fence_until.as_ref() != Some(&deadline) && d.actions.is_empty() {
            let mut next = f.clone();
            next.fence_until = Some(deadline.clone());
            d.next = Some(same(w, next));
        }
        let left = ms_between(&w.now, &deadline).max(0) as u64;
        d.requeue_ms = Some(left.clamp(50, POLL_MS));
        return d;
    };
    if !d.actions.is_empty() {
        // Act first (the step-down's answer may be the proof); then decide again.
        return d;
    }
    let ranked = rank::rank(w.pods, &f.from, f.epoch.saturating_sub(1), &w.lagging);
    let best = || preferred(w, &ranked);
    // A switchover's target, while it is eligible. Gone for good — its pod deleted or
    // stopping, or to be removed by a scale-down that raced the request — the best
    // node is chosen instead: the primary has already stepped down, and waiting for a
    // target that will not come back would stop the sale for good. (A target that
    // only missed a status answer is waited for: `NoCandidate`, asked again.)
    let chosen = match &f.candidate {
        Some(c) => {
            let target = pod(w, c);
            let gone = target
                .is_none_or(|p| !p.running || p.ordinal.is_some_and(|o| o as i32 >= w.replicas));
            if gone {
                best()
            } else {
                ranked.iter().find(|r| &r.name == c).cloned()
            }
        }
        None => best(),
    };
    let mut next = f.clone();
    next.fenced = Some(proof.to_string());
    next.fenced_at = Some(w.now.clone());
    next.fence_until = Some(deadline);
    // The most the old primary was ever seen to have durable: a later fence (the
    // candidate lost, fencing again) must not lower it, nor forget it when the old pod
    // is silent or back on an empty volume.
    next.from_durable_seq = match (f.from_durable_seq, from.map(|s| s.durable_seq)) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    match chosen {
        None => {
            next.blocked = Some(match &f.candidate {
                Some(c) => format!(
                    "NoCandidate: the switchover target {c} does not answer as a secondary with the sale (waited for while its pod runs; once it is gone another is chosen)"
                ),
                None => "NoCandidate: no node answers as a secondary with the sale".to_string(),
            });
            if next.blocked == f.blocked && next.fenced == f.fenced {
                return Decision {
                    requeue_ms: Some(1_000),
                    ..Decision::default()
                };
            }
        }
        Some(c) => {
            next.step = FailoverStep::Recovering;
            next.ranking = Some(rank::describe(&ranked));
            next.candidate_start_seq = Some(c.applied_seq);
            next.blocked = None;
            let its_job = f.candidate.as_deref() == Some(c.name.as_str()) && w.job.is_some();
            if from.is_none() && !its_job {
                // The old pod cannot be asked: start the recovery Job into this
                // candidate now (the fence holds), not a pass later.
                d.actions.push(Action::CreateJob {
                    from: f.from.clone(),
                    to: c.name.clone(),
                });
                next.tail_source = Some(job_source(w, &f.from, &c.name));
            }
            next.candidate = Some(c.name);
        }
    }
    d.next = Some(same(w, next));
    d.requeue_ms = Some(0);
    d
}

/// The old primary's process is gone: in the pod it ran in (the `uid` the failover
/// began with), its container is not running (the kubelet reports it), or a run of the
/// node other than the one the lease was granted to answers (the container restarted:
/// no lease survives a restart). Not proof:
/// - a pod being deleted: its container runs until it exits (a graceful deletion
///   drains requests in flight, which it may still acknowledge; a deletion whose
///   kubelet is cut off never ends);
/// - the pod missing, or a pod of the same name made since: a force deletion (`kubectl
///   delete --force`, or the Node object deleted) removes the pod from the API while
///   its process may still run, and sell, on a node cut off.
///
/// Those wait the lease out, like a silent primary's (at most `leaseDuration` after the
/// last renewal).
fn process_gone(w: &World, f: &FailoverState) -> bool {
    let Some(p) = pod(w, &f.from).filter(|p| same_pod(p, f)) else {
        return false;
    };
    if !p.container_running {
        return true;
    }
    match (p.node_status().and_then(run_of), &w.lease.instance) {
        (Some(now), Some(leased)) => now != leased,
        _ => false,
    }
}

/// The old primary's node, answering, when what answers is the run the lease was
/// granted to, or runs in the pod the failover began with (its container restarted at
/// most: the old run is gone). A node answering from a pod of the same name made
/// since says nothing of the old run, which may still run elsewhere: its step-down is
/// no proof.
fn old_run<'a>(w: &'a World, f: &FailoverState) -> Option<&'a flashsale_core::admin::NodeStatus> {
    let p = pod(w, &f.from).filter(|p| p.running)?;
    let s = p.node_status()?;
    let leased = run_of(s).is_some_and(|r| w.lease.instance.as_deref() == Some(r));
    (leased || same_pod(p, f)).then_some(s)
}

/// Whether `p` is the pod the old primary's lease was granted in.
fn same_pod(p: &PodView, f: &FailoverState) -> bool {
    p.uid.is_some() && p.uid == f.from_uid
}

/// The `metadata.uid` of the pod the lease keeper granted `pod`'s lease in, if it
/// renews (or last renewed) `pod`'s: not the uid of a pod of that name now, which may
/// have been made since, while the leased run still runs in the one force-deleted.
fn leased_pod_uid(w: &World, pod: &str) -> Option<String> {
    w.lease
        .pod_uid
        .clone()
        .filter(|_| w.lease.pod.as_deref() == Some(pod))
}

/// The run of the node (the `instance` part of its lease tokens) that answered `s`.
fn run_of(s: &flashsale_core::admin::NodeStatus) -> Option<&str> {
    s.lease
        .as_ref()
        .and_then(|l| l.token.split_once(':'))
        .map(|(i, _)| i)
}

/// `Job <name> (PVC <claim>)`: where a tail recovered by the Job into `to` comes from.
fn job_source(w: &World, from: &str, to: &str) -> String {
    let job = crate::build::recovery_job_name(&w.sale, w.status.epoch, to);
    format!("Job {job} (PVC {})", crate::build::wal_claim_name(from))
}

fn same(w: &World, failover: FailoverState) -> Next {
    Next {
        epoch: w.status.epoch.max(failover.epoch),
        primary: w.status.primary.as_ref().map(|p| p.pod.clone()),
        failover: Some(failover),
        last_failover: w.status.last_failover.clone(),
    }
}

fn recovering(w: &World, f: &FailoverState) -> Decision {
    let Some(candidate) = f.candidate.clone() else {
        let mut next = f.clone();
        next.step = FailoverStep::Fencing;
        return Decision {
            next: Some(same(w, next)),
            requeue_ms: Some(0),
            ..Decision::default()
        };
    };
    let Some(c) = answering(w, &candidate) else {
        // The candidate went away before it sold: choose again (nobody was promoted),
        // once its Job is gone. A running one is deleted first, pass after pass until
        // it is gone (a failed delete is asked again): the next candidate's Job needs
        // the volume it holds. One that ended is deleted too: chosen again at this
        // epoch, the candidate would find it and take its success for the tail, though
        // what it shipped may be gone with the candidate (a sale that does not sync, a
        // volume restored); a new Job ships from where the candidate is then.
        // (One being deleted by someone else, its pods stuck stopping, is not waited
        // for: nothing more can be done about it here.)
        if w.job.as_ref().is_some_and(|j| *j != JobState::Deleting) {
            let mut next = f.clone();
            next.blocked = Some(format!(
                "CandidateLost: {candidate} stopped answering; deleting its recovery Job before choosing again"
            ));
            return Decision {
                actions: vec![Action::DeleteJob { to: candidate }],
                // Written once (then the same); a status to write also ends the pass's
                // rounds, so the delete is asked once a pass.
                next: Some(same(w, next)),
                requeue_ms: Some(POLL_MS),
                ..Decision::default()
            };
        }
        let mut next = f.clone();
        next.step = FailoverStep::Fencing;
        next.candidate = None;
        next.tail_source = None;
        next.blocked = Some(format!(
            "CandidateLost: {candidate} stopped answering; choosing again"
        ));
        return Decision {
            next: Some(same(w, next)),
            requeue_ms: Some(0),
            ..Decision::default()
        };
    };
    let promote = |tail_end: u64, source: String, blocked: Option<String>| {
        let mut next = f.clone();
        next.step = FailoverStep::Promoting;
        next.tail_end = Some(tail_end);
        next.tail_source = Some(source);
        next.recovered_at = Some(w.now.clone());
        next.blocked = blocked;
        Decision {
            next: Some(same(w, next)),
            requeue_ms: Some(0),
            ..Decision::default()
        }
    };
    // What the pass writes, when it differs from `f`. The candidate answers, so the
    // reason in the status is what blocks it now, found again below (a Job being
    // deleted, or failed): not one an earlier pass wrote. A `CandidateLost` whose
    // candidate came back, or a `TailUnavailable` whose failed Job its TTL removed (a
    // new one starts), no longer holds; nor a Job's deletion once it is gone (its
    // clearing may have lost a conflict with the new Job's creation).
    let mut next = f.clone();
    next.blocked = None;
    if let Some(old) = answering(w, &f.from).filter(|o| holds_the_old_log(o, f)) {
        // From the old pod: its log is final (it is fenced).
        if c.applied_seq >= old.durable_seq {
            return promote(old.durable_seq, format!("pod {}", f.from), None);
        }
        return Decision {
            actions: vec![Action::CopyTail {
                from: f.from.clone(),
                to: candidate,
                from_seq: c.applied_seq,
            }],
            next: (next != *f).then(|| same(w, next)),
            requeue_ms: Some(0),
            ..Decision::default()
        };
    }
    let by_job = job_source(w, &f.from, &candidate);
    let wait = |actions: Vec<Action>, next: FailoverState| Decision {
        actions,
        next: (next != *f).then(|| same(w, next)),
        requeue_ms: Some(POLL_MS),
        ..Decision::default()
    };
    match &w.job {
        None => {
            next.tail_source = Some(by_job);
            wait(
                vec![Action::CreateJob {
                    from: f.from.clone(),
                    to: candidate,
                }],
                next,
            )
        }
        Some(JobState::Running) => wait(vec![], next),
        Some(JobState::Deleting) => {
            // Deleted by someone else while the Job object remains (a foreground
            // delete: until its pods are gone, and they may hold the old primary's
            // volume, which a new Job would wait for anyway). Said in the status (a
            // Warning once), not waited for in silence; once it is gone a new Job
            // starts (`None` above).
            next.blocked = Some(format!(
                "{JOB_DELETING}: the recovery Job into {candidate} is being deleted and its pods are still stopping; a new one starts once it is gone ({by_job})"
            ));
            wait(vec![], next)
        }
        // The Job ended well, but the candidate holds less than the old primary was
        // seen to have durable: not the whole tail (a replaced claim, an older Job's
        // success), and promoting would lose what is missing. First said and waited on
        // for a pass: the candidate's status may predate the Job's end (it is asked
        // before the Job's pod is read). Still short on a later pass, it is an
        // unreadable tail: quorum mode and AllowLoss may go on without it (the volume
        // may hold less for good, e.g. a node that lost power under a sale that does
        // not sync), async mode waits.
        Some(JobState::Succeeded) => match f.from_durable_seq.filter(|&d| c.applied_seq < d) {
            None => promote(c.applied_seq, by_job, None),
            Some(durable) => {
                let why = format!(
                    "{TAIL_SHORT}: the recovery Job succeeded, but {candidate} holds records up to {} and {} was seen durable up to {durable}",
                    c.applied_seq, f.from
                );
                if f.blocked.as_deref().is_some_and(|b| b.contains(TAIL_SHORT)) {
                    tail_unavailable(w, f, &why)
                } else {
                    next.blocked = Some(why);
                    wait(vec![], next)
                }
            }
        },
        Some(JobState::Failed(why)) => tail_unavailable(w, f, why),
    }
}

/// Whether the old pod, answering, still holds the log the old primary wrote: records
/// of an epoch in its log (a node back on an empty volume has none — its epoch in
/// memory says nothing, parking sets it; the recovery Job's `wal ship --expect-epoch 1`
/// refuses such a volume too) and at least as far as it was ever seen durable while
/// fenced. Otherwise its answer says nothing of the tail, and promoting on it would lose
/// every acknowledged sale only the old primary had. (Not "at epoch `f.epoch - 1`": a
/// candidate that died while being promoted, which the next failover is from, may not
/// have logged the epoch it was given.)
fn holds_the_old_log(old: &flashsale_core::admin::NodeStatus, f: &FailoverState) -> bool {
    let logged = old.epochs.last().map_or(0, |e| e.epoch);
    logged >= 1 && old.durable_seq >= f.from_durable_seq.unwrap_or(0)
}

/// The candidate of a ranking: the best node the StatefulSet keeps (an ordinal below
/// `spec.nodes.replicas`), else the best of all. A node past it is removed, with its
/// copy, before or soon after it sells.
fn preferred(w: &World, ranked: &[Candidate]) -> Option<Candidate> {
    let stays = |r: &&Candidate| r.ordinal.is_none_or(|o| (o as i32) < w.replicas);
    ranked.iter().find(stays).or(ranked.first()).cloned()
}

/// The tail cannot be read: quorum mode promotes once every other node reported (each
/// acknowledged sale is durable on one of them); async mode waits. `tailPolicy:
/// AllowLoss` goes on without what cannot be read: the old primary's tail, and in
/// quorum mode the secondaries that do not report.
fn tail_unavailable(w: &World, f: &FailoverState, why: &str) -> Decision {
    let blocked = |reason: String| {
        let mut next = f.clone();
        next.blocked = Some(reason);
        Decision {
            next: (next.blocked != f.blocked).then(|| same(w, next)),
            requeue_ms: Some(1_000),
            ..Decision::default()
        }
    };
    let ranked = rank::rank(w.pods, &f.from, f.epoch.saturating_sub(1), &w.lagging);
    // Without the tail the candidate is a node that holds the most, even one past
    // `spec.nodes.replicas` (the floor keeps every node the failover began with, until
    // it ends: `FailoverState::nodes`): a node that stays but holds less would lose
    // acknowledged sales, which in quorum mode only the most durable secondary is sure
    // to have. Among those that hold as much, one that stays.
    let most = ranked
        .iter()
        .take_while(|c| {
            ranked
                .first()
                .is_some_and(|t| (c.durable_seq, c.applied_seq) == (t.durable_seq, t.applied_seq))
        })
        .count();
    let best = preferred(w, &ranked[..most]);
    let go = |c: Candidate, source: &str| {
        let mut next = f.clone();
        next.step = FailoverStep::Promoting;
        next.ranking = Some(rank::describe(&ranked));
        // Nothing more is copied into it: a new candidate reconciles no record (the
        // same one keeps what a Job copied into it).
        if f.candidate.as_deref() != Some(c.name.as_str()) {
            next.candidate_start_seq = Some(c.applied_seq);
        }
        next.candidate = Some(c.name);
        next.tail_end = Some(c.applied_seq);
        next.tail_source = Some(source.to_string());
        next.recovered_at = Some(w.now.clone());
        next.blocked = None;
        Decision {
            next: Some(same(w, next)),
            requeue_ms: Some(0),
            ..Decision::default()
        }
    };
    if w.quorum {
        // Every node the failover began with, and any that has come since: one that
        // does not answer — its pod gone too — is silent, not absent (its volume may
        // hold the only copy of an acknowledged sale).
        let mut names: Vec<&str> = f.nodes.iter().map(String::as_str).collect();
        names.extend(w.pods.iter().map(|p| p.name.as_str()));
        names.sort_unstable();
        names.dedup();
        // A node that answers with less than it held of the old primary's epoch when
        // the failover began (back on a new volume) is silent too: what it lost may
        // have been acknowledged on its ack (`durable_at_begin`).
        let silent: Vec<String> = names
            .into_iter()
            .filter(|n| *n != f.from)
            .filter_map(|n| {
                let had = f.nodes_durable_seq.get(n).copied();
                match pod(w, n)
                    .filter(|p| p.running)
                    .and_then(|p| p.node_status())
                {
                    None => Some(n.to_string()),
                    Some(s) if had.is_some_and(|h| s.durable_seq < h) => {
                        // 1: silent as it began, a secondary when last seen answering.
                        Some(if had == Some(1) {
                            format!("{n} (back with an empty log)")
                        } else {
                            format!(
                                "{n} (back with {} of the {} records it had)",
                                s.durable_seq,
                                had.unwrap_or_default()
                            )
                        })
                    }
                    Some(_) => None,
                }
            })
            .collect();
        // `tailPolicy: AllowLoss` goes on without the silent ones, as in async mode (a
        // Kubernetes node lost for good would otherwise hold the sale stopped).
        return match (silent.is_empty(), best, w.tail_policy) {
            (true, Some(c), _) => go(
                c,
                "none: the tail is unreadable; quorum mode, every secondary reported",
            ),
            (false, Some(c), TailPolicy::AllowLoss) => go(
                c,
                &format!(
                    "none: the tail is unreadable; quorum mode without {} (silent), tailPolicy AllowLoss (sales only they had may be lost)",
                    silent.join(", ")
                ),
            ),
            (_, _, _) => blocked(format!(
                "QuorumUnsafe: the old primary's tail is unreadable ({why}); waiting for every secondary to report (silent: {}; spec.failover.tailPolicy: AllowLoss goes on without them)",
                if silent.is_empty() {
                    "none".to_string()
                } else {
                    silent.join(", ")
                }
            )),
        };
    }
    match (w.tail_policy, best) {
        (TailPolicy::AllowLoss, Some(c)) => go(
            c,
            "none: the tail is unreadable; tailPolicy AllowLoss (sales only the old primary had may be lost)",
        ),
        _ => blocked(format!(
            "TailUnavailable: the old primary's tail cannot be read ({why}); async mode keeps the sale stopped rather than lose acknowledged sales (spec.failover.tailPolicy: AllowLoss promotes anyway)"
        )),
    }
}

fn promoting(w: &World, f: &FailoverState) -> Decision {
    let candidate = f.candidate.clone().unwrap_or_default();
    match answering(w, &candidate) {
        Some(s) if s.role == Role::Primary && s.epoch == f.epoch => {
            let outage_ms = ms_between(&f.detected_at, &w.now).max(0) as u64;
            let record = FailoverRecord {
                kind: f.kind,
                from_pod: f.from.clone(),
                to_pod: candidate.clone(),
                epoch: f.epoch,
                reason: f.reason.clone(),
                detected_at: f.detected_at.clone(),
                fenced_at: f.fenced_at.clone().unwrap_or_else(|| w.now.clone()),
                fenced: f.fenced.clone().unwrap_or_default(),
                fence_started_at: Some(f.fence_started_at.clone()),
                recovered_at: f.recovered_at.clone(),
                promoted_at: w.now.clone(),
                outage_ms,
                reconciled_records: f
                    .tail_end
                    .unwrap_or(0)
                    .saturating_sub(f.candidate_start_seq.unwrap_or(0)),
                reconciled_from: f.tail_source.clone(),
                old_primary_rejoined: false,
            };
            Decision {
                next: Some(Next {
                    epoch: f.epoch,
                    primary: Some(candidate),
                    failover: None,
                    last_failover: Some(record),
                }),
                requeue_ms: Some(0),
                ..Decision::default()
            }
        }
        // It answers holding less than the tail it was recovered to (back on a new,
        // empty volume, say): promoted, it would sell without sales the old primary
        // acknowledged. A new attempt, from the same old primary, at a new epoch: a
        // candidate is chosen again (it too, if it still ranks first) and the tail
        // recovered into it, by a Job of the new epoch's name (at this epoch, the
        // Job that already succeeded into it would be found again and taken for the
        // tail). The lease `Promote` may have begun to renew for it stops.
        Some(s) if f.tail_end.is_some_and(|end| s.applied_seq < end) => {
            let mut next = new_attempt(w, f);
            // Said (a Warning), until another candidate is chosen.
            next.blocked = Some(format!(
                "CandidateLost: {candidate} answers holding record {} of the {} it was recovered to (back on another volume?); choosing again at epoch {}",
                s.applied_seq,
                f.tail_end.unwrap_or_default(),
                next.epoch
            ));
            new_attempt_decision(w, next)
        }
        Some(_) => Decision {
            actions: vec![Action::Promote {
                pod: candidate,
                epoch: f.epoch,
            }],
            requeue_ms: Some(0),
            ..Decision::default()
        },
        None => {
            // The candidate died mid-promotion: a new attempt takes a new epoch, from it
            // (it may have been promoted, and its log is the most complete). Its lease,
            // which `Promote` began to renew, is renewed no more, as `begin` stops the
            // old primary's: the fence waits it out, and a candidate back after that
            // must not have it renewed again while it is still a primary at its epoch.
            let mut next = new_attempt(w, f);
            next.reason = format!(
                "{candidate} stopped answering while being promoted at epoch {}",
                f.epoch
            );
            next.from_uid = leased_pod_uid(w, &candidate);
            next.from = candidate;
            new_attempt_decision(w, next)
        }
    }
}

/// A new attempt of failover `f` at the next epoch, fenced again from its start: no
/// candidate, no tail, nothing blocked yet.
fn new_attempt(w: &World, f: &FailoverState) -> FailoverState {
    let mut next = f.clone();
    next.epoch = f.epoch + 1;
    next.step = FailoverStep::Fencing;
    next.fence_started_at = w.now.clone();
    next.fence_until = None;
    next.fenced = None;
    next.fenced_at = None;
    next.candidate = None;
    next.candidate_start_seq = None;
    next.tail_source = None;
    next.tail_end = None;
    next.recovered_at = None;
    next.blocked = None;
    next
}

/// Writes `next` (a [`new_attempt`]) with its epoch, and stops the lease `Promote` may
/// have begun to renew for the candidate given up on.
fn new_attempt_decision(w: &World, next: FailoverState) -> Decision {
    Decision {
        actions: vec![Action::StopLease],
        next: Some(Next {
            epoch: next.epoch,
            primary: w.status.primary.as_ref().map(|p| p.pod.clone()),
            failover: Some(next),
            last_failover: w.status.last_failover.clone(),
        }),
        requeue_ms: Some(0),
        ..Decision::default()
    }
}
