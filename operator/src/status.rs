//! Status: the next `FlashSale.status`, computed once per pass, as a pure function of
//! what the reconcile saw and did (replication's verdict included), and the previous status (so a condition's `lastTransitionTime` moves only when
//! its status flips, and an unchanged sale produces an identical status: no write).

use flashsale_core::ItemView;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{
    CONDITION_DEGRADED, CONDITION_PRIMARY_AVAILABLE, CONDITION_PROGRESSING, CONDITION_READY,
    FailoverKind, FlashSaleStatus, ItemStatus, Phase, PrimaryStatus,
};

/// A problem worth a Degraded condition: a reason (PascalCase) and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

/// What the status is derived from.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub generation: Option<i64>,
    /// Label selector of the node pods.
    pub selector: String,
    pub desired_replicas: i32,
    /// Node pods that exist and are not being deleted.
    pub replicas: i32,
    pub ready_replicas: i32,
    pub primary: Option<PrimaryStatus>,
    pub epoch: u64,
    /// The primary's node says it is primary at `epoch`, has a sale, and is ready.
    pub primary_selling: bool,
    /// ... and runs the spec's config (not a previous one: the new one refused, or not
    /// pushed yet).
    pub primary_config_current: bool,
    /// Items as the primary reports them (None: not read this time; the last figures stay).
    pub items: Option<Vec<ItemView>>,
    /// Every node runs the current config and role, and the StatefulSet is rolled out.
    pub rolled_out: bool,
    /// Node pods on an older pod template (`crate::rollout`), and why none is replaced
    /// now, if it waits.
    pub outdated: Vec<String>,
    pub rollout_waits: Option<String>,
    pub problems: Vec<Problem>,
    /// The spec was refused (`field: message`).
    pub invalid: Option<String>,
    /// Replication's verdict (`status.nodes`, `ReplicationHealthy`), when the nodes were asked.
    pub replication: Option<crate::replication::Assessment>,
    /// Why the primary fails its checks (`PrimaryAvailable` False), if it does.
    pub primary_problem: Option<String>,
    /// The failover under way, and the last one completed.
    pub failover: Option<crate::crd::FailoverState>,
    pub last_failover: Option<crate::crd::FailoverRecord>,
}

/// The next status. `now` stamps only conditions whose status flips.
pub fn next_status(prev: &FlashSaleStatus, facts: &Facts, now: &Time) -> FlashSaleStatus {
    let mut next = prev.clone();
    next.observed_generation = facts.generation;
    next.selector = Some(facts.selector.clone());

    if let Some(invalid) = &facts.invalid {
        // The nodes keep running what they had; only the verdict on the spec changes.
        next.phase = Some(Phase::Invalid);
        set(
            &mut next,
            now,
            facts,
            CONDITION_READY,
            false,
            "InvalidSpec",
            invalid,
        );
        set(
            &mut next,
            now,
            facts,
            CONDITION_PROGRESSING,
            false,
            "InvalidSpec",
            "waiting for a spec change",
        );
        return next;
    }

    next.replicas = facts.replicas;
    next.ready_replicas = facts.ready_replicas;
    next.ready = Some(format!(
        "{}/{}",
        facts.ready_replicas, facts.desired_replicas
    ));
    next.primary = facts.primary.clone();
    next.epoch = facts.epoch;
    if let Some(items) = &facts.items {
        next.items = items
            .iter()
            .map(|i| ItemStatus {
                sku: i.sku.clone(),
                stock: i.stock,
                sold: i.sold,
                held: i.held,
                remaining: i.remaining,
            })
            .collect();
    }
    next.stock = next.items.iter().map(|i| i.stock).sum();
    next.sold = next.items.iter().map(|i| i.sold).sum();
    next.held = next.items.iter().map(|i| i.held).sum();
    next.remaining = next.items.iter().map(|i| i.remaining).sum();

    let (ready_reason, ready_message) = match (&facts.primary, facts.primary_selling) {
        (_, true) => (
            "Selling",
            format!(
                "primary {} sells at epoch {}{}",
                facts.primary.as_ref().map_or("", |p| p.pod.as_str()),
                facts.epoch,
                if facts.primary_config_current {
                    ""
                } else {
                    ", on its previous config (the spec's is not taken yet)"
                }
            ),
        ),
        (None, false) => (
            "NoPrimary",
            "waiting for a node to answer so it can be made primary".to_string(),
        ),
        (Some(p), false) => (
            "PrimaryNotReady",
            format!("primary {} is not selling yet", p.pod),
        ),
    };
    set(
        &mut next,
        now,
        facts,
        CONDITION_READY,
        facts.primary_selling,
        ready_reason,
        &ready_message,
    );

    // A rollout first: while a replaced pod is away, the count is short by one without
    // a scale-up.
    let (progressing_reason, progressing_message) = if !facts.outdated.is_empty() {
        (
            "RollingOut",
            format!(
                "{} on an older pod template, replaced one at a time (secondaries first, the primary after a switchover){}",
                facts.outdated.join(", "),
                facts
                    .rollout_waits
                    .as_deref()
                    .map(|w| format!("; {w}"))
                    .unwrap_or_default()
            ),
        )
    } else if facts.replicas < facts.desired_replicas {
        (
            "ScalingUp",
            format!(
                "{} of {} nodes exist",
                facts.replicas, facts.desired_replicas
            ),
        )
    } else if facts.replicas > facts.desired_replicas {
        (
            "ScalingDown",
            format!(
                "{} nodes, {} wanted",
                facts.replicas, facts.desired_replicas
            ),
        )
    } else if !facts.rolled_out {
        (
            "RollingOut",
            "nodes are being given their config and role".to_string(),
        )
    } else {
        ("RolledOut", "every node runs the current spec".to_string())
    };
    let progressing = progressing_reason != "RolledOut";
    set(
        &mut next,
        now,
        facts,
        CONDITION_PROGRESSING,
        progressing,
        progressing_reason,
        &progressing_message,
    );

    let degraded = facts.problems.first();
    match degraded {
        Some(p) => {
            let message = facts
                .problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            set(
                &mut next,
                now,
                facts,
                CONDITION_DEGRADED,
                true,
                p.reason,
                &message,
            )
        }
        None => set(
            &mut next,
            now,
            facts,
            CONDITION_DEGRADED,
            false,
            "AsExpected",
            "no known problem",
        ),
    }

    match (&facts.primary, &facts.primary_problem) {
        (None, _) => set(
            &mut next,
            now,
            facts,
            CONDITION_PRIMARY_AVAILABLE,
            false,
            "NoPrimary",
            "no primary chosen yet",
        ),
        (Some(_), Some(why)) => set(
            &mut next,
            now,
            facts,
            CONDITION_PRIMARY_AVAILABLE,
            false,
            if facts.failover.is_some() {
                "BeingReplaced"
            } else {
                "PrimaryFailing"
            },
            why,
        ),
        (Some(p), None) => set(
            &mut next,
            now,
            facts,
            CONDITION_PRIMARY_AVAILABLE,
            true,
            "Available",
            &format!("{} passes its checks at epoch {}", p.pod, facts.epoch),
        ),
    }
    next.failover = facts.failover.clone();
    next.last_failover = facts.last_failover.clone();
    next.phase = Some(match &facts.failover {
        Some(f) if f.kind == FailoverKind::Switchover => Phase::SwitchingOver,
        Some(_) => Phase::FailingOver,
        None if degraded.is_some() => Phase::Degraded,
        None if facts.primary_selling => Phase::Running,
        None => Phase::Pending,
    });
    if let Some(a) = &facts.replication {
        crate::replication::apply_to_status(&mut next, a, facts.generation, now);
    }
    next
}

/// Sets one condition, keeping its `lastTransitionTime` unless its status flips.
fn set(
    status: &mut FlashSaleStatus,
    now: &Time,
    facts: &Facts,
    type_: &str,
    value: bool,
    reason: &str,
    message: &str,
) {
    let value = if value { "True" } else { "False" };
    let old = status.conditions.iter().position(|c| c.type_ == type_);
    let last_transition_time = match old.map(|i| &status.conditions[i]) {
        Some(c) if c.status == value => c.last_transition_time.clone(),
        _ => now.clone(),
    };
    let condition = Condition {
        type_: type_.to_string(),
        status: value.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: facts.generation,
        last_transition_time,
    };
    match old {
        Some(i) => status.conditions[i] = condition,
        None => status.conditions.push(condition),
    }
}

/// The status of one condition type, if present.
pub fn condition_is(status: &FlashSaleStatus, type_: &str, value: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == value)
}
