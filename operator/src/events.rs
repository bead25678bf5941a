//! Events: what a person reads in `kubectl describe flashsale`, as data. [`notes`] is a
//! pure function of the previous and next status, what apply changed and what the nodes
//! answered; [`Notifier::publish`] is the one place they are published, through the one
//! kube [`Recorder`] the controller holds.
//!
//! A note is an *action* (something the operator did: a node was given its config) or a
//! *transition* (the status moved: the sale started selling). Transitions are published
//! only once the status that carries them is written; if the write lost a race, the next
//! pass sees the same transition again and tells it then, so it is told once.
//!
//! Series: kube's recorder folds an Event that repeats (same reason, action, object and
//! related object) into one Event with a count. The sale is referred to at its
//! `resourceVersion`, so a warning repeated on every pass while nothing changes is one
//! Event with a growing count, and a note about a sale that moved is a new Event.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};

use crate::apply::Applied;
use crate::crd::{
    CONDITION_DEGRADED, CONDITION_PRIMARY_AVAILABLE, CONDITION_PROGRESSING, CONDITION_READY,
    FailoverKind, FlashSale, FlashSaleStatus, Phase, ReclaimPolicy,
};
use crate::execute::Outcome;
use crate::replication::LagChange;
use crate::roles::Step;
use crate::status::condition_is;

/// Whether a note reports something done or a status that moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Action,
    Transition,
}

/// One Event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    /// PascalCase, stable: what alerts and tests match on.
    pub reason: &'static str,
    pub message: String,
    pub kind: Kind,
    /// The node pod the note is about, if it is about one.
    pub pod: Option<String>,
}

impl Note {
    pub fn normal(reason: &'static str, message: impl Into<String>, kind: Kind) -> Self {
        Self {
            warning: false,
            reason,
            message: message.into(),
            kind,
            pod: None,
        }
    }

    pub fn warning(reason: &'static str, message: impl Into<String>, kind: Kind) -> Self {
        Self {
            warning: true,
            ..Self::normal(reason, message, kind)
        }
    }

    fn about(mut self, pod: &str) -> Self {
        self.pod = Some(pod.to_string());
        self
    }
}

/// A pod the pod template rollout deleted, to be made again from the new template.
pub fn pod_replaced(r: &crate::rollout::Replace) -> Note {
    let what = if r.primary {
        "the only node, restarted in place"
    } else {
        "a secondary"
    };
    Note::normal(
        "PodReplaced",
        format!(
            "deleted {} ({what}) to make it again from the new pod template (revision {} → {})",
            r.pod, r.from_revision, r.to_revision
        ),
        Kind::Action,
    )
    .about(&r.pod)
}

/// What a reconcile pass did and saw, besides the two statuses.
#[derive(Clone, Debug, Default)]
pub struct Seen<'a> {
    pub applied: Applied,
    pub outcomes: &'a [Outcome],
    /// Secondaries that started or stopped lagging, with their figures.
    pub started_lagging: &'a [LagChange],
    pub stopped_lagging: &'a [LagChange],
    /// The sale's name, replicas and whether it runs its own Redis (the `Created` note).
    pub sale: String,
    pub replicas: i32,
    pub managed_redis: bool,
    /// Switchover requests refused this pass, and why.
    pub refused: &'a [String],
    /// `spec.failover.unhealthyAfter` (for "failover in N s").
    pub unhealthy_after_ms: u64,
}

/// Every note of one pass: actions in the order they happened, then transitions.
pub fn notes(prev: &FlashSaleStatus, next: &FlashSaleStatus, seen: &Seen) -> Vec<Note> {
    let mut out = Vec::new();
    if seen.applied.statefulset_created {
        out.push(Note::normal(
            "Created",
            format!(
                "created StatefulSet {} ({} nodes), Services, admin Secret, PodDisruptionBudget{}",
                seen.sale,
                seen.replicas,
                if seen.managed_redis {
                    ", managed Redis"
                } else {
                    ""
                }
            ),
            Kind::Action,
        ));
    }
    if seen.applied.redis_removed {
        out.push(Note::normal(
            "RedisRemoved",
            "managed Redis deleted: the sale uses an external Redis",
            Kind::Action,
        ));
    }
    for o in seen.outcomes {
        let pod = o.step.pod();
        let note = match (&o.step, &o.result) {
            (_, Err(p)) => Note::warning(p.reason, p.message.clone(), Kind::Action),
            (Step::PushConfig { .. }, Ok(done)) => {
                Note::normal("ConfigPushed", format!("{pod} {done}"), Kind::Action)
            }
            (Step::AssignRole { .. }, Ok(done)) => {
                Note::normal("RoleAssigned", format!("{pod} is {done}"), Kind::Action)
            }
            (Step::GrantLease { .. }, Ok(done)) => {
                Note::normal("LeaseGranted", format!("{pod} {done}"), Kind::Action)
            }
            (Step::Label { .. }, Ok(_)) => continue,
        };
        out.push(note.about(pod));
    }
    for why in seen.refused {
        out.push(Note::warning(
            "SwitchoverRefused",
            why.clone(),
            Kind::Action,
        ));
    }
    transitions(prev, next, seen, &mut out);
    failover_transitions(prev, next, seen, &mut out);
    out
}

fn condition<'a>(s: &'a FlashSaleStatus, t: &str) -> Option<&'a Condition> {
    s.conditions.iter().find(|c| c.type_ == t)
}

/// One Event per failover step, with its facts (FAILOVER.md, "What a user sees").
fn failover_transitions(
    prev: &FlashSaleStatus,
    next: &FlashSaleStatus,
    seen: &Seen,
    out: &mut Vec<Note>,
) {
    fn available(s: &FlashSaleStatus) -> Option<(&str, &str)> {
        condition(s, CONDITION_PRIMARY_AVAILABLE).map(|c| (c.status.as_str(), c.reason.as_str()))
    }
    match (available(prev), available(next)) {
        (Some(("True", _)), Some(("False", "PrimaryFailing"))) => {
            let why = condition(next, CONDITION_PRIMARY_AVAILABLE)
                .map(|c| c.message.clone())
                .unwrap_or_default();
            out.push(Note::warning(
                "PrimaryUnhealthy",
                format!(
                    "{why}; failover in {} s unless it recovers",
                    seen.unhealthy_after_ms.div_ceil(1000)
                ),
                Kind::Transition,
            ));
        }
        (Some(("False", "PrimaryFailing")), Some(("True", _))) if next.failover.is_none() => {
            out.push(Note::normal(
                "PrimaryRecovered",
                condition(next, CONDITION_PRIMARY_AVAILABLE)
                    .map(|c| format!("{} (no failover)", c.message))
                    .unwrap_or_default(),
                Kind::Transition,
            ));
        }
        _ => {}
    }
    let (was, is) = (prev.failover.as_ref(), next.failover.as_ref());
    if let (None, Some(f)) = (was, is) {
        let (reason, warn) = match f.kind {
            FailoverKind::Failover => ("FailingOver", true),
            FailoverKind::Switchover => ("SwitchingOver", false),
        };
        let msg = format!(
            "replacing primary {} at epoch {} with epoch {}: {}",
            f.from,
            f.epoch - 1,
            f.epoch,
            f.reason
        );
        out.push(if warn {
            Note::warning(reason, msg, Kind::Transition)
        } else {
            Note::normal(reason, msg, Kind::Transition)
        });
    }
    if let Some(f) = is {
        let fenced_now = f.fenced.is_some() && was.and_then(|w| w.fenced.as_ref()).is_none();
        if fenced_now {
            let waited = match (&f.fenced_at, Some(&f.fence_started_at)) {
                (Some(a), Some(b)) => (a.0.as_millisecond() - b.0.as_millisecond()).max(0),
                _ => 0,
            };
            out.push(
                Note::normal(
                    "Fenced",
                    format!(
                        "{} can no longer sell at epoch {}: {} ({} ms after the fence began)",
                        f.from,
                        f.epoch - 1,
                        f.fenced.as_deref().unwrap_or(""),
                        waited
                    ),
                    Kind::Transition,
                )
                .about(&f.from),
            );
        }
        let chosen = f.candidate.is_some()
            && f.step != crate::crd::FailoverStep::Fencing
            && (was.and_then(|w| w.candidate.as_ref()) != f.candidate.as_ref()
                || was.is_some_and(|w| w.step == crate::crd::FailoverStep::Fencing));
        if chosen && let Some(c) = &f.candidate {
            out.push(
                Note::normal(
                    "CandidateChosen",
                    format!(
                        "{c} will be primary at epoch {}; ranking: {}",
                        f.epoch,
                        f.ranking.as_deref().unwrap_or("-")
                    ),
                    Kind::Transition,
                )
                .about(c),
            );
        }
        let recovered = f.step == crate::crd::FailoverStep::Promoting
            && was.is_none_or(|w| w.step != crate::crd::FailoverStep::Promoting);
        if recovered {
            let start = f.candidate_start_seq.unwrap_or(0);
            let end = f.tail_end.unwrap_or(start);
            let source = f.tail_source.as_deref().unwrap_or("-");
            let msg = if end > start {
                format!(
                    "{} records {}..{} from {source}",
                    end - start,
                    start + 1,
                    end
                )
            } else {
                format!("no record missing from the candidate (tail source: {source})")
            };
            let note = if source.starts_with("none") {
                Note::warning("TailRecovered", msg, Kind::Transition)
            } else {
                Note::normal("TailRecovered", msg, Kind::Transition)
            };
            out.push(note);
        }
        if f.blocked.is_some() && was.and_then(|w| w.blocked.as_ref()) != f.blocked.as_ref() {
            out.push(Note::warning(
                "FailoverBlocked",
                f.blocked.clone().unwrap_or_default(),
                Kind::Transition,
            ));
        }
    }
    if let (Some(_), None, Some(last)) = (was, is, next.last_failover.as_ref()) {
        out.push(
            Note::normal(
                "Promoted",
                format!("{} is the primary at epoch {}", last.to_pod, last.epoch),
                Kind::Transition,
            )
            .about(&last.to_pod),
        );
        let (reason, what) = match last.kind {
            FailoverKind::Failover => ("FailoverCompleted", "failover"),
            FailoverKind::Switchover => ("SwitchoverCompleted", "switchover"),
        };
        out.push(Note::normal(
            reason,
            format!(
                "{what} {} → {} at epoch {}: {} ms from detection to promotion ({}; {}); {} records reconciled{}",
                last.from_pod,
                last.to_pod,
                last.epoch,
                last.outage_ms,
                last.fenced,
                step_times(last),
                last.reconciled_records,
                last.reconciled_from
                    .as_deref()
                    .map(|s| format!(" from {s}"))
                    .unwrap_or_default()
            ),
            Kind::Transition,
        ));
    }
    if let (Some(a), Some(b)) = (prev.last_failover.as_ref(), next.last_failover.as_ref())
        && !a.old_primary_rejoined
        && b.old_primary_rejoined
    {
        out.push(
            Note::normal(
                "OldPrimaryRejoined",
                format!(
                    "{} follows {} as a secondary at epoch {}",
                    b.from_pod, b.to_pod, b.epoch
                ),
                Kind::Transition,
            )
            .about(&b.from_pod),
        );
    }
    for n in &next.nodes {
        let before = prev.nodes.iter().find(|p| p.name == n.name);
        if n.reseeded.is_some() && before.and_then(|b| b.reseeded.as_ref()) != n.reseeded.as_ref() {
            out.push(
                Note::warning(
                    "DivergentTailDropped",
                    format!("{}: {}", n.name, n.reseeded.as_deref().unwrap_or("")),
                    Kind::Transition,
                )
                .about(&n.name),
            );
        }
    }
}

fn transitions(prev: &FlashSaleStatus, next: &FlashSaleStatus, seen: &Seen, out: &mut Vec<Note>) {
    let flipped = |t: &str, to: &str| condition_is(next, t, to) && !condition_is(prev, t, to);
    let message = |t: &str| {
        next.conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    let started = prev.phase.is_some();
    if next.phase == Some(Phase::Invalid) {
        let msg = message(CONDITION_READY);
        let was = prev.phase == Some(Phase::Invalid)
            && prev
                .conditions
                .iter()
                .any(|c| c.type_ == CONDITION_READY && c.message == msg);
        if !was {
            out.push(Note::warning("InvalidSpec", msg, Kind::Transition));
        }
        return;
    }
    if let (None, Some(p)) = (&prev.primary, &next.primary) {
        out.push(Note::normal(
            "PrimaryChosen",
            format!(
                "{} is the first primary (of the nodes that answered, the most advanced log, then the lowest ordinal), epoch {}",
                p.pod, next.epoch
            ),
            Kind::Transition,
        ));
    }
    if flipped(CONDITION_READY, "True") {
        out.push(Note::normal(
            "Selling",
            message(CONDITION_READY),
            Kind::Transition,
        ));
    }
    if flipped(CONDITION_PROGRESSING, "False") && started {
        out.push(Note::normal(
            "RolledOut",
            format!(
                "every node runs generation {}",
                next.observed_generation.unwrap_or(0)
            ),
            Kind::Transition,
        ));
    }
    if flipped(CONDITION_DEGRADED, "True") {
        out.push(Note::warning(
            "Degraded",
            message(CONDITION_DEGRADED),
            Kind::Transition,
        ));
    }
    if flipped(CONDITION_DEGRADED, "False") && started {
        out.push(Note::normal(
            "Recovered",
            "no known problem",
            Kind::Transition,
        ));
    }
    for c in seen.started_lagging {
        out.push(
            Note::warning(
                "ReplicationLagging",
                format!(
                    "{} is {} records / {} ms behind the primary (limits {} records, {} ms)",
                    c.node, c.lag_records, c.lag_ms, c.max_lag_records, c.max_lag_ms
                ),
                Kind::Transition,
            )
            .about(&c.node),
        );
    }
    for c in seen.stopped_lagging {
        out.push(
            Note::normal(
                "ReplicationCaughtUp",
                format!(
                    "{} caught up: {} records / {} ms behind",
                    c.node, c.lag_records, c.lag_ms
                ),
                Kind::Transition,
            )
            .about(&c.node),
        );
    }
}

/// The note of a sale whose nodes have stopped on delete: its final tally.
pub fn deleted(last: &FlashSaleStatus, volumes: ReclaimPolicy) -> Note {
    let volumes = match volumes {
        ReclaimPolicy::Retain => "WAL volumes retained (reclaimPolicy: Retain)",
        ReclaimPolicy::Delete => "WAL volumes deleted (reclaimPolicy: Delete)",
    };
    Note::normal(
        "Deleted",
        format!(
            "nodes stopped; final tally {} sold of {} ({} held); {volumes}",
            last.sold, last.stock, last.held
        ),
        Kind::Action,
    )
}

/// Publishes notes: the controller's one kube [`Recorder`].
#[derive(Clone)]
pub struct Notifier {
    recorder: Recorder,
}

impl Notifier {
    pub fn new(recorder: Recorder) -> Self {
        Self { recorder }
    }

    /// Publishes `notes` about `sale` (at the resourceVersion `version`, see the module
    /// doc); with `status_written` false, the transitions are held back. A lost Event is
    /// logged, never a failed reconcile.
    pub async fn publish(
        &self,
        sale: &FlashSale,
        version: Option<String>,
        notes: &[Note],
        status_written: bool,
    ) {
        let mut regarding = sale.object_ref(&());
        regarding.resource_version = version;
        for note in notes {
            if note.kind == Kind::Transition && !status_written {
                continue;
            }
            let event = Event {
                type_: if note.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: note.reason.to_string(),
                note: Some(note.message.clone()),
                action: "Reconcile".to_string(),
                secondary: note.pod.as_ref().map(|pod| ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(pod.clone()),
                    namespace: sale.namespace(),
                    ..ObjectReference::default()
                }),
            };
            if let Err(e) = self.recorder.publish(&event, &regarding).await {
                tracing::warn!(error = %e, reason = note.reason, "could not publish event");
            }
        }
    }
}

/// How long each step of a finished failover took: `detect 4012 ms, fence 2104 ms,
/// recover 1302 ms, promote 231 ms` (the steps the record has times for).
pub fn step_times(r: &crate::crd::FailoverRecord) -> String {
    let ms = |a: &Time, b: &Time| (b.0.as_millisecond() - a.0.as_millisecond()).max(0);
    let mut parts = Vec::new();
    if let Some(begun) = &r.fence_started_at {
        parts.push(format!("detect {} ms", ms(&r.detected_at, begun)));
        parts.push(format!("fence {} ms", ms(begun, &r.fenced_at)));
    }
    match &r.recovered_at {
        Some(rec) => {
            parts.push(format!("recover {} ms", ms(&r.fenced_at, rec)));
            parts.push(format!("promote {} ms", ms(rec, &r.promoted_at)));
        }
        None => parts.push(format!(
            "recover and promote {} ms",
            ms(&r.fenced_at, &r.promoted_at)
        )),
    }
    parts.join(", ")
}
