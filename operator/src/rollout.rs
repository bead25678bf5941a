//! Rollout of a new pod template, pure: which node pod to replace next.
//!
//! The StatefulSet's `updateStrategy` is `OnDelete`, so a changed pod template (a new
//! node image after an operator upgrade, other resources) replaces no pod by itself:
//! the StatefulSet controller's own rolling update deletes pods by ordinal, the
//! primary's among them, and every deleted primary is a failover that waits out its
//! lease. The operator replaces the pods itself, the way CloudNativePG does: the
//! secondaries first, one at a time (highest ordinal first), each only once every node
//! that stays is back and ready (a secondary is ready once caught up with the
//! primary); then the primary moves to an updated secondary by a switchover (the
//! failover state machine starts it: [`Plan::primary_turn`]), and is replaced as a
//! secondary. A sale of one node has no secondary to switch to: its pod is replaced in
//! place, a restart on its volume (an outage of a few seconds, as any template change
//! of a one-node StatefulSet).
//!
//! Nothing is replaced while a failover or switchover is under way, while the primary
//! fails its checks, while a node that stays is missing, stopping, not ready or
//! lagging (but for one that is itself a secondary on the old template: it is replaced,
//! as that takes no other node away), or while a scale-down removes a node; and the
//! autoscaler scales nothing down while a rollout is under way ([`Plan::busy`]). One
//! node away at a time, so a quorum sale of three nodes keeps a secondary.

use crate::observe::{Observed, PodView};

/// A pod to delete: the StatefulSet makes it again from the current template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replace {
    pub pod: String,
    /// The delete's precondition: a pod made again under the same name is not deleted.
    pub uid: String,
    /// The revision it runs, and the one it will run.
    pub from_revision: String,
    pub to_revision: String,
    /// It is the sale's primary (a sale of one node).
    pub primary: bool,
}

impl Plan {
    /// A rollout is under way: no scale-down meanwhile (it could take the one other
    /// node away while a replaced one is still coming back).
    pub fn busy(&self) -> bool {
        !self.outdated.is_empty() || self.replace.is_some()
    }
}

/// What the rollout wants this pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The node pods that stay and run an older pod template, by ordinal.
    pub outdated: Vec<String>,
    /// Delete this pod now.
    pub replace: Option<Replace>,
    /// Only the primary is left on the old template, every other node that stays is
    /// updated and ready: the primary moves by a switchover (`failover::step`).
    pub primary_turn: bool,
    /// Why nothing is replaced now, while pods are outdated (said in the status).
    pub waits: Option<String>,
}

/// Where the sale stands, besides its pods.
pub struct Sale<'a> {
    /// `status.primary.pod`.
    pub primary: Option<&'a str>,
    /// `spec.nodes.replicas`: pods at or above this ordinal are being removed.
    pub replicas: i32,
    /// A failover or switchover is under way (or begins this pass).
    pub in_failover: bool,
    /// The primary fails its checks.
    pub primary_failing: bool,
    /// Secondaries replication judged lagging: ready (a node says so once it has first
    /// caught up), but not up to date now.
    pub lagging: &'a [String],
    /// The pod this operator deleted last for the rollout, while the cache may not
    /// have seen it go: nothing else is deleted until it has.
    pub last_replaced: Option<(&'a str, &'a str)>,
}

/// The StatefulSet's update revision, once its controller has seen the current spec.
pub fn update_revision(observed: &Observed) -> Option<&str> {
    let sts = observed.statefulset.as_deref()?;
    let status = sts.status.as_ref()?;
    (status.observed_generation >= sts.metadata.generation)
        .then_some(status.update_revision.as_deref())
        .flatten()
}

/// The next step of the rollout (module doc).
pub fn plan(observed: &Observed, sale: &Sale) -> Plan {
    let Some(target) = update_revision(observed) else {
        return Plan::default();
    };
    let staying: Vec<&PodView> = observed
        .pods
        .iter()
        .filter(|p| {
            p.ordinal
                .is_some_and(|o| (o as i64) < i64::from(sale.replicas))
        })
        .collect();
    let outdated: Vec<&PodView> = staying
        .iter()
        .copied()
        .filter(|p| p.revision.as_deref().is_some_and(|r| r != target))
        .collect();
    let mut plan = Plan {
        outdated: outdated.iter().map(|p| p.name.clone()).collect(),
        ..Plan::default()
    };
    if outdated.is_empty() {
        return plan;
    }
    let wait = |why: String| Some(format!("the pod template rollout waits: {why}"));
    if sale.in_failover {
        plan.waits = wait("a failover or switchover is under way".into());
        return plan;
    }
    if sale.primary_failing {
        plan.waits = wait("the primary fails its checks".into());
        return plan;
    }
    let Some(primary) = sale.primary else {
        plan.waits = wait("the sale has no primary yet".into());
        return plan;
    };
    if let Some((name, uid)) = sale.last_replaced
        && observed
            .pod(name)
            .is_some_and(|p| p.uid.as_deref() == Some(uid) && p.running)
    {
        plan.waits = wait(format!("{name}, just deleted, is not seen stopping yet"));
        return plan;
    }
    if let Some(p) = observed.pods.iter().find(|p| {
        p.ordinal
            .is_none_or(|o| (o as i64) >= i64::from(sale.replicas))
    }) {
        plan.waits = wait(format!("{} is being removed by a scale-down", p.name));
        return plan;
    }
    let missing =
        (0..sale.replicas.max(0) as u32).find(|o| !staying.iter().any(|p| p.ordinal == Some(*o)));
    if let Some(o) = missing {
        plan.waits = wait(format!("no pod of ordinal {o} yet"));
        return plan;
    }
    let replace = |p: &PodView| {
        Some(Replace {
            pod: p.name.clone(),
            uid: p.uid.clone()?,
            from_revision: p.revision.clone().unwrap_or_default(),
            to_revision: target.to_string(),
            primary: p.name == primary,
        })
    };
    let lags = |p: &PodView| sale.lagging.contains(&p.name);
    let away: Vec<&PodView> = staying
        .iter()
        .copied()
        .filter(|p| !p.ready || lags(p))
        .collect();
    match away.as_slice() {
        [] => {}
        // The one node away is a secondary on the old template (a bad image reverted,
        // a node the old resources starve): replacing it takes no other node away,
        // and waiting for it would wait for good.
        [p] if p.name != primary && !p.deleting && outdated.iter().any(|o| o.name == p.name) => {
            plan.replace = replace(p);
            return plan;
        }
        [p, ..] => {
            plan.waits = wait(if lags(p) {
                format!("{} lags behind the primary", p.name)
            } else {
                format!("{} is not ready", p.name)
            });
            return plan;
        }
    }
    // Secondaries first, the highest ordinal first (the order a scale-down removes them).
    if let Some(p) = outdated.iter().rev().find(|p| p.name != primary) {
        plan.replace = replace(p);
        return plan;
    }
    // Only the primary is left.
    if staying.len() == 1 {
        plan.replace = outdated.first().and_then(|p| replace(p));
    } else {
        plan.primary_turn = true;
    }
    plan
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod(ordinal: u32, revision: &str) -> PodView {
        PodView {
            name: format!("s-{ordinal}"),
            uid: Some(format!("uid-{ordinal}-{revision}")),
            ordinal: Some(ordinal),
            ip: Some(format!("10.0.0.{ordinal}")),
            running: true,
            deleting: false,
            ready: true,
            container_running: true,
            role_label: None,
            config_hash: None,
            role_assignment: None,
            revision: Some(revision.to_string()),
            runs_quorum: false,
            node: None,
        }
    }

    fn observed(pods: Vec<PodView>, generation: i64, seen: i64, update: &str) -> Observed {
        Observed {
            statefulset: Some(Arc::new(StatefulSet {
                metadata: ObjectMeta {
                    generation: Some(generation),
                    ..ObjectMeta::default()
                },
                status: Some(StatefulSetStatus {
                    observed_generation: Some(seen),
                    update_revision: Some(update.to_string()),
                    ..StatefulSetStatus::default()
                }),
                ..StatefulSet::default()
            })),
            pods,
            ..Observed::default()
        }
    }

    fn sale(primary: &str, replicas: i32) -> Sale<'_> {
        Sale {
            primary: Some(primary),
            replicas,
            in_failover: false,
            primary_failing: false,
            lagging: &[],
            last_replaced: None,
        }
    }

    /// Secondaries go first, highest ordinal first; the primary is left to a
    /// switchover; an updated sale replaces nothing.
    #[test]
    fn secondaries_are_replaced_first_and_the_primary_moves_by_switchover() {
        let o = observed(vec![pod(0, "a"), pod(1, "a"), pod(2, "a")], 2, 2, "b");
        let p = plan(&o, &sale("s-1", 3));
        assert_eq!(p.outdated, ["s-0", "s-1", "s-2"]);
        let r = p.replace.expect("a secondary is replaced");
        assert_eq!((r.pod.as_str(), r.primary), ("s-2", false));
        assert_eq!(
            (r.from_revision.as_str(), r.to_revision.as_str()),
            ("a", "b")
        );
        assert_eq!(r.uid, "uid-2-a");
        assert!(!p.primary_turn);

        let o = observed(vec![pod(0, "a"), pod(1, "a"), pod(2, "b")], 2, 2, "b");
        assert_eq!(plan(&o, &sale("s-1", 3)).replace.unwrap().pod, "s-0");

        let o = observed(vec![pod(0, "b"), pod(1, "a"), pod(2, "b")], 2, 2, "b");
        let p = plan(&o, &sale("s-1", 3));
        assert_eq!(
            p.replace, None,
            "the primary is never deleted while others can take over"
        );
        assert!(p.primary_turn);

        let o = observed(vec![pod(0, "b"), pod(1, "b"), pod(2, "b")], 2, 2, "b");
        assert_eq!(plan(&o, &sale("s-1", 3)), Plan::default());
    }

    /// One node away at a time: a node that stays missing, stopping or not ready (a
    /// secondary catching up) holds the rollout, and so do a failover, a failing
    /// primary, and a deletion the cache has not seen yet.
    #[test]
    fn the_rollout_waits_until_every_node_that_stays_is_ready() {
        let base = vec![pod(0, "a"), pod(1, "b"), pod(2, "a")];
        let waits = |pods: Vec<PodView>, s: Sale| {
            let p = plan(&observed(pods, 2, 2, "b"), &s);
            assert_eq!(p.replace, None);
            assert!(!p.primary_turn);
            p.waits.expect("a reason to wait")
        };
        let mut catching_up = base.clone();
        catching_up[1].ready = false;
        assert!(waits(catching_up, sale("s-0", 3)).contains("s-1 is not ready"));
        let mut stopping = base.clone();
        stopping[1].running = false;
        stopping[1].ready = false;
        assert!(waits(stopping, sale("s-0", 3)).contains("s-1 is not ready"));
        let gone = vec![pod(0, "a"), pod(2, "a")];
        assert!(waits(gone, sale("s-0", 3)).contains("no pod of ordinal 1"));
        let failing = Sale {
            primary_failing: true,
            ..sale("s-0", 3)
        };
        assert!(waits(base.clone(), failing).contains("fails its checks"));
        let failover = Sale {
            in_failover: true,
            ..sale("s-0", 3)
        };
        assert!(waits(base.clone(), failover).contains("under way"));
        let just = Sale {
            last_replaced: Some(("s-1", "uid-1-b")),
            ..sale("s-0", 3)
        };
        assert!(waits(base.clone(), just).contains("s-1, just deleted"));
        let lagging = ["s-1".to_string()];
        let behind = Sale {
            lagging: &lagging,
            ..sale("s-0", 3)
        };
        assert!(waits(base.clone(), behind).contains("s-1 lags"));
        // A pod a scale-down is removing is still away: nothing else goes meanwhile.
        let mut removing = base.clone();
        removing.push(pod(3, "b"));
        assert!(waits(removing, sale("s-0", 3)).contains("s-3 is being removed"));
        // Once the pod is seen made again (another uid), the rollout goes on.
        let again = Sale {
            last_replaced: Some(("s-1", "uid-1-a")),
            ..sale("s-0", 3)
        };
        let p = plan(&observed(base, 2, 2, "b"), &again);
        assert_eq!(p.replace.unwrap().pod, "s-2");
    }

    /// A secondary that is away and on the old template (a bad image reverted, a node
    /// the old resources starve) is replaced rather than waited for: it takes no other
    /// node away. Not while it is being deleted, nor when another node is away too.
    #[test]
    fn an_outdated_secondary_that_is_away_is_replaced_not_waited_for() {
        let mut away = vec![pod(0, "b"), pod(1, "a"), pod(2, "b")];
        away[1].ready = false;
        away[1].running = false;
        let p = plan(&observed(away.clone(), 2, 2, "b"), &sale("s-0", 3));
        assert_eq!(p.replace.expect("replaced").pod, "s-1");
        let lagging = ["s-1".to_string()];
        let mut behind = vec![pod(0, "b"), pod(1, "a"), pod(2, "b")];
        behind[1].ready = true;
        let s = Sale {
            lagging: &lagging,
            ..sale("s-0", 3)
        };
        assert_eq!(
            plan(&observed(behind, 2, 2, "b"), &s).replace.unwrap().pod,
            "s-1"
        );
        let mut deleting = away.clone();
        deleting[1].deleting = true;
        let p = plan(&observed(deleting, 2, 2, "b"), &sale("s-0", 3));
        assert!(p.replace.is_none() && p.waits.unwrap().contains("s-1 is not ready"));
        let mut two = away;
        two[2].ready = false;
        let p = plan(&observed(two, 2, 2, "b"), &sale("s-0", 3));
        assert!(p.replace.is_none(), "{p:?}");
    }

    /// The revision is trusted only once the StatefulSet controller has seen the
    /// current spec; a pod being removed by a scale-down is not replaced; a sale of one
    /// node restarts its primary in place.
    #[test]
    fn stale_revisions_and_pods_being_removed_are_left_alone() {
        let o = observed(vec![pod(0, "a"), pod(1, "a")], 3, 2, "b");
        assert_eq!(plan(&o, &sale("s-0", 2)), Plan::default());

        let o = observed(vec![pod(0, "b"), pod(1, "b"), pod(2, "a")], 2, 2, "b");
        assert_eq!(plan(&o, &sale("s-0", 2)), Plan::default());

        let o = observed(vec![pod(0, "a")], 2, 2, "b");
        let r = plan(&o, &sale("s-0", 1))
            .replace
            .expect("replaced in place");
        assert_eq!((r.pod.as_str(), r.primary), ("s-0", true));
    }
}
