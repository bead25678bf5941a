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
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};

use crate::apply::Applied;
use crate::crd::{
    CONDITION_DEGRADED, CONDITION_PROGRESSING, CONDITION_READY, FlashSale, FlashSaleStatus, Phase,
    ReclaimPolicy,
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
            (Step::Label { .. }, Ok(_)) => continue,
        };
        out.push(note.about(pod));
    }
    transitions(prev, next, seen, &mut out);
    out
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
                "{} is the first primary (lowest ordinal whose node answered), epoch {}",
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
