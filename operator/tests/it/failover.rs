//! The failover's pure decisions (FAILOVER.md, "Tests"): the ranking, detection with
//! `unhealthyAfter`, the fence's timing and proofs, and the step function as a table —
//! every step against an old pod that answers, is gone, or is silent, a Job running,
//! done or failed — including that a resumed decision is the same one and that a new
//! epoch is written before any node hears of it.

use std::time::Duration;

use flashsale_core::admin::{LeaseMode, LeaseStatus, NodeStatus, Role};
use flashsale_core::replication::EpochStart;
use flashsale_operator::crd::{
    FailoverKind, FailoverState, FailoverStep, FlashSaleStatus, PrimaryStatus, TailPolicy,
};
use flashsale_operator::failover::keeper::LeaseView;
use flashsale_operator::failover::rank::rank;
use flashsale_operator::failover::step::{Action, Decision, JobState, World, decide};
use flashsale_operator::observe::PodView;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

const T0: &str = "2026-11-30T10:00:00Z";

fn at(offset_ms: i64) -> Time {
    let t0: jiff::Timestamp = T0.parse().unwrap();
    Time(t0 + jiff::SignedDuration::from_millis(offset_ms))
}

fn node(role: Role, epoch: u64, durable: u64, instance: &str) -> NodeStatus {
    NodeStatus {
        role,
        epoch,
        sale: Some("s".into()),
        applied_seq: durable,
        durable_seq: durable,
        items: vec![],
        purchases_per_s: 0.0,
        now_ms: 0,
        replication: None,
        lease: Some(LeaseStatus {
            mode: LeaseMode::Required,
            token: format!("{instance}:5"),
            epoch,
            remaining_ms: 0,
        }),
        // Its log: one history shared by every node, records of epoch 1 (none in an
        // empty one); a test of divergence gives a node another.
        epochs: (durable > 0)
            .then_some(EpochStart {
                epoch: 1,
                first_seq: 1,
            })
            .into_iter()
            .collect(),
        load: Default::default(),
    }
}

fn pod(ordinal: u32, node: Option<NodeStatus>) -> PodView {
    PodView {
        name: format!("s-{ordinal}"),
        uid: Some(format!("uid-{ordinal}")),
        ordinal: Some(ordinal),
        ip: Some(format!("10.0.0.{}", 10 + ordinal)),
        running: true,
        deleting: false,
        ready: node.is_some(),
        container_running: true,
        role_label: (ordinal == 0).then(|| "primary".to_string()),
        config_hash: None,
        role_assignment: None,
        revision: None,
        runs_quorum: false,
        node: Some(node.ok_or_else(|| "unreachable: connection refused".to_string())),
    }
}

/// s-0 primary at epoch 3 (durable 100), s-1 and s-2 secondaries at 98 and 95.
fn pods() -> Vec<PodView> {
    vec![
        pod(0, Some(node(Role::Primary, 3, 100, "aa"))),
        pod(1, Some(node(Role::Secondary, 3, 98, "bb"))),
        pod(2, Some(node(Role::Secondary, 3, 95, "cc"))),
    ]
}

fn status() -> FlashSaleStatus {
    FlashSaleStatus {
        primary: Some(PrimaryStatus {
            pod: "s-0".into(),
            endpoint: None,
        }),
        epoch: 3,
        conditions: vec![Condition {
            type_: "PrimaryAvailable".into(),
            status: "True".into(),
            reason: "Available".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: at(-60_000),
        }],
        ..FlashSaleStatus::default()
    }
}

/// The keeper renewing s-0 at epoch 3, the last token it sent received at `r` (ms).
fn leased(r_ms: i64) -> LeaseView {
    LeaseView {
        pod: Some("s-0".into()),
        url: Some("http://10.0.0.10:8080".into()),
        epoch: 3,
        held: true,
        failing_since: None,
        failing: None,
        lease_end: Some(at(r_ms + 6_000 + 500)),
        instance: Some("aa".into()),
        pod_uid: Some("uid-0".into()),
        granted: true,
        duration: Some(Duration::from_secs(6)),
    }
}

fn world<'a>(status: &'a FlashSaleStatus, pods: &'a [PodView], now_ms: i64) -> World<'a> {
    World {
        status,
        pods,
        lease: leased(-1_000),
        job: None,
        switchover_to: None,
        replicas: 3,
        rollout: false,
        unhealthy_after_ms: 4_000,
        lease_ms: 6_000,
        tail_policy: TailPolicy::Required,
        quorum: false,
        max_lag_records: 1_000,
        lagging: vec![],
        now: at(now_ms),
        leader_since: at(-3_600_000),
        sale: "s".into(),
    }
}

fn failover(step: FailoverStep) -> FailoverState {
    FailoverState {
        kind: FailoverKind::Failover,
        from: "s-0".into(),
        from_uid: Some("uid-0".into()),
        epoch: 4,
        step,
        reason: "test".into(),
        detected_at: at(-4_000),
        fence_started_at: at(0),
        fence_until: None,
        from_leased: true,
        fenced: None,
        fenced_at: None,
        from_durable_seq: None,
        candidate: None,
        ranking: None,
        candidate_start_seq: None,
        tail_source: None,
        tail_end: None,
        recovered_at: None,
        nodes: vec!["s-1".into(), "s-2".into()],
        nodes_durable_seq: [("s-1".to_string(), 98), ("s-2".to_string(), 95)].into(),
        blocked: None,
    }
}

fn in_failover(f: FailoverState) -> FlashSaleStatus {
    FlashSaleStatus {
        epoch: 4,
        failover: Some(f),
        ..status()
    }
}

fn next_failover(d: &Decision) -> FailoverState {
    d.next
        .as_ref()
        .and_then(|n| n.failover.clone())
        .expect("a failover state to write")
}

// --- ranking

#[test]
fn the_ranking_is_durable_then_applied_then_not_lagging_then_ordinal_then_name() {
    let mut p = vec![
        pod(0, Some(node(Role::Primary, 3, 100, "aa"))),
        pod(1, Some(node(Role::Secondary, 3, 98, "bb"))),
        pod(2, Some(node(Role::Secondary, 3, 99, "cc"))),
        pod(3, Some(node(Role::Secondary, 3, 99, "dd"))),
        pod(4, Some(node(Role::Standby, 4, 99, "ee"))),
        pod(5, Some(node(Role::Secondary, 2, 120, "ff"))),
        pod(6, None),
    ];
    if let Some(Ok(s)) = p[3].node.as_mut() {
        s.applied_seq = 99;
        s.durable_seq = 99;
    }
    if let Some(Ok(s)) = p[2].node.as_mut() {
        s.applied_seq = 99;
    }
    let names = |r: Vec<flashsale_operator::failover::rank::Candidate>| {
        r.into_iter().map(|c| c.name).collect::<Vec<_>>()
    };
    // s-0 excluded (the old primary), s-5 at an older epoch, s-6 silent.
    assert_eq!(names(rank(&p, "s-0", 3, &[])), ["s-2", "s-3", "s-4", "s-1"]);
    // Lagging breaks a tie between equals.
    assert_eq!(
        names(rank(&p, "s-0", 3, &["s-2".to_string()])),
        ["s-3", "s-4", "s-2", "s-1"]
    );
    // A node without the sale is never a candidate.
    let mut nosale = pods();
    if let Some(Ok(s)) = nosale[1].node.as_mut() {
        s.sale = None;
    }
    assert_eq!(names(rank(&nosale, "s-0", 3, &[])), ["s-2"]);
}

/// A node whose log parted from another's at an older epoch — an old primary come back
/// that wrote on past where its replacement began, its catch-up not done yet — is never
/// a candidate: promoted, it would lose the newer epoch's acknowledged sales. Before
/// (from a review), it ranked first by its longer log.
#[test]
fn a_node_whose_log_parted_at_an_older_epoch_is_never_a_candidate() {
    let history = |starts: &[(u64, u64)]| {
        starts
            .iter()
            .map(|&(epoch, first_seq)| EpochStart { epoch, first_seq })
            .collect::<Vec<_>>()
    };
    let mut p = vec![
        // The primary of epoch 4, replaced without its tail; back, told epoch 5.
        pod(0, Some(node(Role::Secondary, 5, 130, "aa"))),
        // Epoch 5's primary, failing now, and its secondary.
        pod(1, Some(node(Role::Primary, 5, 120, "bb"))),
        pod(2, Some(node(Role::Secondary, 5, 118, "cc"))),
    ];
    for (i, h) in [
        (0, [(1, 1), (4, 101)]),
        (1, [(1, 1), (5, 101)]),
        (2, [(1, 1), (5, 101)]),
    ] {
        if let Some(Ok(s)) = p[i].node.as_mut() {
            s.epochs = history(&h);
        }
    }
    let names = |r: Vec<flashsale_operator::failover::rank::Candidate>| {
        r.into_iter().map(|c| c.name).collect::<Vec<_>>()
    };
    assert_eq!(names(rank(&p, "s-1", 5, &[])), ["s-2"]);
    // The failing primary silent too: s-2's log alone shows it.
    p[1].node = Some(Err("timed out".into()));
    assert_eq!(names(rank(&p, "s-1", 5, &[])), ["s-2"]);
    // Its catch-up done (its log moved aside, started again from the primary's): a
    // candidate again.
    if let Some(Ok(s)) = p[0].node.as_mut() {
        s.epochs = history(&[(1, 1), (5, 101)]);
        (s.applied_seq, s.durable_seq) = (118, 118);
    }
    assert_eq!(names(rank(&p, "s-1", 5, &[])), ["s-0", "s-2"]);
}

// --- detection

#[test]
fn a_healthy_primary_is_left_alone() {
    let (s, p) = (status(), pods());
    assert_eq!(decide(&world(&s, &p, 0)), Decision::default());
}

#[test]
fn a_primary_back_before_unhealthy_after_is_not_failed_over() {
    let mut s = status();
    s.conditions[0].status = "False".into();
    s.conditions[0].reason = "PrimaryFailing".into();
    s.conditions[0].last_transition_time = at(-3_000);
    let mut p = pods();
    p[0].node = Some(Err("unreachable".into()));
    // Failing for 3 s of 4: look again soon, nothing else, but the autoscaler is told
    // to hold (a scale-down now could remove the secondary the failover will need).
    let d = decide(&world(&s, &p, 0));
    assert!(d.next.is_none() && d.actions.is_empty(), "{d:?}");
    assert!(d.requeue_ms.unwrap() <= 1_000);
    assert!(d.primary_failing);
    // Back (a kill -9 the pod restarted): nothing at all.
    let healthy = pods();
    let d = decide(&world(&s, &healthy, 3_500));
    assert!(d.next.is_none() && !d.primary_failing);
}

#[test]
fn failing_for_unhealthy_after_begins_a_failover_with_a_new_epoch_and_no_node_call() {
    for broken in [
        |p: &mut Vec<PodView>| p[0].node = Some(Err("unreachable".into())),
        |p: &mut Vec<PodView>| p[0].running = false,
        |p: &mut Vec<PodView>| {
            p.remove(0);
        },
        |p: &mut Vec<PodView>| {
            if let Some(Ok(s)) = p[0].node.as_mut() {
                s.role = Role::Standby;
                s.epoch = 0;
            }
        },
    ] {
        let mut s = status();
        s.conditions[0].status = "False".into();
        s.conditions[0].last_transition_time = at(-4_000);
        let mut p = pods();
        // s-0's and s-1's logs end with records of the primary's epoch (3); s-2's at
        // epoch 1.
        for i in [0, 1] {
            if let Some(Ok(n)) = p[i].node.as_mut() {
                n.epochs.push(EpochStart {
                    epoch: 3,
                    first_seq: 90,
                });
            }
        }
        broken(&mut p);
        let d = decide(&world(&s, &p, 0));
        assert_eq!(d.actions, [Action::StopLease], "only the keeper is told");
        let next = d.next.expect("begin");
        assert_eq!(next.epoch, 4, "the epoch moves first");
        let f = next.failover.unwrap();
        assert_eq!(
            (f.step, f.epoch, f.from.as_str()),
            (FailoverStep::Fencing, 4, "s-0")
        );
        assert_eq!(f.detected_at, at(-4_000));
        // What each other node holds durably of the primary's epoch as it begins
        // (quorum mode: one that comes back with less lost what it may have
        // acknowledged); s-2 holds none of it.
        assert_eq!(
            f.nodes_durable_seq,
            [("s-1".to_string(), 98), ("s-2".to_string(), 0)].into()
        );
    }
    // s-2 silent as it begins but seen answering at the pass before: it may hold what it
    // acknowledged (1: back with an empty log, it counts as silent).
    let mut s = status();
    s.conditions[0].status = "False".into();
    s.conditions[0].last_transition_time = at(-4_000);
    s.nodes = serde_json::from_value(serde_json::json!([
        {"name": "s-2", "role": "secondary", "roleEpoch": 3, "answering": true}
    ]))
    .unwrap();
    let mut p = pods();
    p[0].node = Some(Err("unreachable".into()));
    p[2].node = Some(Err("unreachable".into()));
    let f = next_failover(&decide(&world(&s, &p, 0)));
    assert_eq!(f.nodes_durable_seq.get("s-2"), Some(&1));
    // Silent for passes before (down with the primary, for the whole unhealthyAfter):
    // `status.nodes` keeps the role it last said, and it is recorded the same.
    s.nodes = serde_json::from_value(serde_json::json!([
        {"name": "s-2", "role": "secondary", "roleEpoch": 3, "answering": false}
    ]))
    .unwrap();
    let f = next_failover(&decide(&world(&s, &p, 0)));
    assert_eq!(f.nodes_durable_seq.get("s-2"), Some(&1));
    // Last seen as a secondary of an earlier primary (silent through a failover since):
    // it acknowledged nothing of this one's.
    s.nodes[0].role_epoch = Some(2);
    let f = next_failover(&decide(&world(&s, &p, 0)));
    assert_eq!(f.nodes_durable_seq.get("s-2"), None);
    // A status written before `roleEpoch` was (an operator upgrade): kept, the safe side.
    s.nodes[0].role_epoch = None;
    let f = next_failover(&decide(&world(&s, &p, 0)));
    assert_eq!(f.nodes_durable_seq.get("s-2"), Some(&1));
    // Seen answering as a standby (acknowledging nothing), or never seen answering (a
    // pod still starting): nothing to lose, not listed.
    s.nodes = serde_json::from_value(serde_json::json!([
        {"name": "s-2", "role": "standby", "answering": true}
    ]))
    .unwrap();
    let f = next_failover(&decide(&world(&s, &p, 0)));
    assert_eq!(f.nodes_durable_seq.get("s-2"), None);
    s.nodes.clear();
    let f = next_failover(&decide(&world(&s, &p, 0)));
    assert_eq!(f.nodes_durable_seq.get("s-2"), None);
}

#[test]
fn failing_lease_renewals_are_a_failure_too_counted_from_the_first() {
    let s = status();
    let p = pods();
    let mut w = world(&s, &p, 0);
    w.lease.failing = Some("s-0: operation timed out".into());
    w.lease.failing_since = Some(at(-4_200));
    let d = decide(&w);
    let f = next_failover(&d);
    assert!(f.reason.contains("lease renewals fail"), "{}", f.reason);
    assert_eq!(f.detected_at, at(-4_200));
}

/// A primary just promoted whose first lease renewal failed: the `PrimaryAvailable`
/// condition has stayed False since its predecessor failed, and it is given
/// `unhealthyAfter` from its promotion, not failed over again at once.
#[test]
fn a_new_primary_is_given_unhealthy_after_from_its_promotion() {
    let mut s = status();
    s.epoch = 4;
    s.primary = Some(PrimaryStatus {
        pod: "s-1".into(),
        endpoint: None,
    });
    s.conditions[0].status = "False".into();
    s.conditions[0].reason = "PrimaryFailing".into();
    s.conditions[0].last_transition_time = at(-10_000);
    // RFC 3339 to the millisecond, as the status writes failover times.
    let ms = |t: Time| t.0.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    s.last_failover = Some(
        serde_json::from_value(serde_json::json!({
            "kind": "Failover", "fromPod": "s-0", "toPod": "s-1", "epoch": 4,
            "reason": "test", "detectedAt": ms(at(-10_000)),
            "fencedAt": ms(at(-2_000)), "fenced": "lease expired",
            "promotedAt": ms(at(-100)), "outageMs": 9_900,
        }))
        .unwrap(),
    );
    let p = vec![
        pod(0, Some(node(Role::Standby, 4, 100, "aa"))),
        pod(1, Some(node(Role::Primary, 4, 100, "bb"))),
        pod(2, Some(node(Role::Secondary, 4, 95, "cc"))),
    ];
    let mut w = world(&s, &p, 0);
    w.lease = LeaseView {
        pod: Some("s-1".into()),
        pod_uid: Some("uid-1".into()),
        epoch: 4,
        instance: Some("bb".into()),
        failing: Some("s-1: operation timed out".into()),
        failing_since: Some(at(-50)),
        ..leased(-100)
    };
    let d = decide(&w);
    assert!(
        d.next.is_none() && d.primary_failing,
        "failed over 100 ms after its promotion: {d:?}"
    );
    // Failing for unhealthyAfter since its promotion: failed over, detected then.
    w.now = at(-100 + 4_000);
    let f = next_failover(&decide(&w));
    assert_eq!((f.from.as_str(), f.detected_at), ("s-1", at(-100)));
}

// --- the fence

#[test]
fn a_silent_old_primary_is_fenced_only_once_its_lease_is_provably_over() {
    let s = in_failover(failover(FailoverStep::Fencing));
    let mut p = pods();
    p[0].node = Some(Err("timed out".into()));
    // The last token sent was received at -1000: the lease ends at most at 5500 (+margin).
    let mut w = world(&s, &p, 1_000);
    w.lease.held = false;
    let d = decide(&w);
    assert!(
        d.next.is_none() || next_failover(&d).fenced.is_none(),
        "{d:?}"
    );
    assert!(
        !d.actions
            .iter()
            .any(|a| matches!(a, Action::Park { pod, .. } if pod == "s-0"))
    );
    let w = World {
        now: at(5_499),
        ..w.clone()
    };
    let d = decide(&w);
    assert!(
        d.next
            .as_ref()
            .and_then(|n| n.failover.as_ref())
            .is_none_or(|f| f.fenced.is_none()),
        "fenced before the lease ended: {d:?}"
    );
    let w = World {
        now: at(5_500),
        ..w.clone()
    };
    // The secondaries are parked at the new epoch first …
    let d = decide(&w);
    assert!(
        d.actions
            .iter()
            .all(|a| matches!(a, Action::Park { epoch: 4, .. } | Action::Unlabel { .. }))
    );
    // … then, once they are, the fence holds and a candidate is chosen.
    let mut parked = p.clone();
    for v in parked.iter_mut().skip(1) {
        if let Some(Ok(n)) = v.node.as_mut() {
            (n.role, n.epoch) = (Role::Standby, 4);
        }
    }
    parked[0].role_label = None;
    let w = World { pods: &parked, ..w };
    let d = decide(&w);
    let f = next_failover(&d);
    assert_eq!(f.fenced.as_deref(), Some("lease expired"));
    assert_eq!(f.step, FailoverStep::Recovering);
    assert_eq!(f.candidate.as_deref(), Some("s-1"), "the most durable");
    assert_eq!(f.candidate_start_seq, Some(98));
    assert!(f.ranking.unwrap().starts_with("s-1 (durable 98"));
    // The old pod cannot be asked: its recovery Job starts with the fence's conclusion.
    assert_eq!(
        d.actions,
        [Action::CreateJob {
            from: "s-0".into(),
            to: "s-1".into()
        }]
    );
    assert!(f.tail_source.unwrap().starts_with("Job "));
}

#[test]
fn after_an_operator_restart_the_fence_waits_a_lease_from_when_it_became_leader() {
    let s = in_failover(failover(FailoverStep::Fencing));
    let mut p = pods();
    p[0].node = Some(Err("timed out".into()));
    for v in p.iter_mut().skip(1) {
        if let Some(Ok(n)) = v.node.as_mut() {
            (n.role, n.epoch) = (Role::Standby, 4);
        }
    }
    p[0].role_label = None;
    let mut w = world(&s, &p, 10_000);
    w.lease = LeaseView::default(); // a new leader's keeper knows nothing
    w.leader_since = at(5_000);
    let d = decide(&w);
    assert!(
        d.next
            .as_ref()
            .and_then(|n| n.failover.as_ref())
            .is_none_or(|f| f.fenced.is_none())
    );
    let d = decide(&World {
        now: at(5_000 + 6_500),
        ..w.clone()
    });
    assert_eq!(next_failover(&d).fenced.as_deref(), Some("lease expired"));

    // leaseDuration shortened from 60 s to 6 s just before this leader took over: the
    // primary may hold a 60 s lease its predecessor granted, which the status records.
    let longest = flashsale_operator::failover::timing::lease_durations(
        Duration::from_secs(6),
        Some(Duration::from_secs(60)),
        false,
        &w.now,
        &w.leader_since,
        &LeaseView::default(),
    )
    .longest;
    let w = World {
        lease_ms: longest.as_millis() as u64,
        ..w
    };
    let d = decide(&World {
        now: at(5_000 + 6_500),
        ..w.clone()
    });
    assert!(
        d.next
            .as_ref()
            .and_then(|n| n.failover.as_ref())
            .is_none_or(|f| f.fenced.is_none()),
        "fenced after the spec's 6 s while a 60 s lease may run"
    );
    let d = decide(&World {
        now: at(5_000 + 60_500),
        ..w
    });
    assert_eq!(next_failover(&d).fenced.as_deref(), Some("lease expired"));
}

#[test]
fn a_stepped_down_or_dead_old_primary_needs_no_lease_wait() {
    // It answers: it is told to step down, and its answer is the proof.
    let s = in_failover(failover(FailoverStep::Fencing));
    let p = pods();
    let d = decide(&world(&s, &p, 100));
    assert!(d.actions.contains(&Action::Park {
        pod: "s-0".into(),
        epoch: 4
    }));
    let mut down = p.clone();
    for v in down.iter_mut() {
        if let Some(Ok(n)) = v.node.as_mut() {
            (n.role, n.epoch) = (Role::Standby, 4);
        }
    }
    down[0].role_label = None;
    let f = next_failover(&decide(&world(&s, &down, 100)));
    assert_eq!(f.fenced.as_deref(), Some("stepped down"));
    assert_eq!(f.from_durable_seq, Some(100));
    // Its process is gone: in the pod it ran in, its container is not running (also
    // when the pod is not). (Another run of it answering is parked, below.)
    for gone in [
        |p: &mut Vec<PodView>| p[0].container_running = false,
        |p: &mut Vec<PodView>| (p[0].running, p[0].container_running) = (false, false),
    ] {
        let mut v = down.clone();
        if let Some(Ok(n)) = v[0].node.as_mut() {
            n.role = Role::Primary;
            n.epoch = 3;
        }
        gone(&mut v);
        v[0].node = Some(Err("refused".into()));
        let f = next_failover(&decide(&world(&s, &v, 100)));
        assert_eq!(f.fenced.as_deref(), Some("process gone"), "{v:?}");
    }
    // No proof: the pod missing, or a pod of the same name made since (a force deletion,
    // or its Node deleted, takes the pod out of the API while the process may still run
    // and sell on a node cut off), whatever it answers. The lease is waited out.
    let mut silent = down.clone();
    silent[0].node = Some(Err("refused".into()));
    let mut missing = silent.clone();
    missing.remove(0);
    let mut remade = silent.clone();
    remade[0].uid = Some("uid-0-again".into());
    remade[0].container_running = false; // not started yet
    let mut remade_parked = down.clone(); // answers, parked, another run
    remade_parked[0].uid = Some("uid-0-again".into());
    remade_parked[0].node = Some(Ok(node(Role::Standby, 4, 0, "ab")));
    for (what, v) in [
        ("missing", &missing),
        ("made again", &remade),
        ("made again, parked", &remade_parked),
    ] {
        let d = decide(&world(&s, v, 100));
        assert_eq!(
            d.next.and_then(|n| n.failover).and_then(|f| f.fenced),
            None,
            "the old pod {what}: fenced before its lease ended"
        );
        let f = next_failover(&decide(&world(&s, v, 5_600)));
        assert_eq!(f.fenced.as_deref(), Some("lease expired"), "{what}");
    }
    // A pod being deleted whose container still runs (draining requests it may still
    // acknowledge, or its kubelet cut off) is no proof: its lease is waited out.
    let mut deleting = down.clone();
    deleting[0].running = false;
    deleting[0].node = Some(Err("refused".into()));
    let d = decide(&world(&s, &deleting, 100));
    assert_eq!(
        d.next.and_then(|n| n.failover).and_then(|f| f.fenced),
        None,
        "fenced at once: {:?}",
        d.actions
    );
    let mut restarted = down.clone();
    restarted[0].node = Some(Ok(node(Role::Primary, 3, 100, "ab"))); // a new run
    let d = decide(&world(&s, &restarted, 100));
    assert!(d.actions.contains(&Action::Park {
        pod: "s-0".into(),
        epoch: 4
    }));
    // Parked, the new run in the same pod is proof (the old one is gone); the same
    // answer from a pod made again under the name is not (`remade_parked` above).
    restarted[0].node = Some(Ok(node(Role::Standby, 4, 100, "ab")));
    let f = next_failover(&decide(&world(&s, &restarted, 100)));
    assert_eq!(f.fenced.as_deref(), Some("stepped down"));
}

// --- the tail

fn recovering() -> FlashSaleStatus {
    let mut f = failover(FailoverStep::Recovering);
    f.candidate = Some("s-1".into());
    f.candidate_start_seq = Some(98);
    f.fenced = Some("lease expired".into());
    f.fenced_at = Some(at(6_000));
    in_failover(f)
}

fn parked(mut p: Vec<PodView>) -> Vec<PodView> {
    for v in p.iter_mut() {
        if let Some(Ok(n)) = v.node.as_mut() {
            (n.role, n.epoch) = (Role::Standby, 4);
        }
    }
    p
}

#[test]
fn the_tail_comes_from_the_old_pod_when_it_answers() {
    let s = recovering();
    let p = parked(pods());
    let d = decide(&world(&s, &p, 7_000));
    assert_eq!(
        d.actions,
        [Action::CopyTail {
            from: "s-0".into(),
            to: "s-1".into(),
            from_seq: 98
        }]
    );
    assert!(d.next.is_none(), "nothing is written before the tail is in");
    let mut copied = p.clone();
    if let Some(Ok(n)) = copied[1].node.as_mut() {
        (n.applied_seq, n.durable_seq) = (100, 100);
    }
    let f = next_failover(&decide(&world(&s, &copied, 7_000)));
    assert_eq!(f.step, FailoverStep::Promoting);
    assert_eq!(
        (f.tail_end, f.tail_source.as_deref()),
        (Some(100), Some("pod s-0"))
    );
}

#[test]
fn a_silent_old_pod_is_read_by_a_recovery_job() {
    let s = recovering();
    let mut p = parked(pods());
    p[0].node = Some(Err("timed out".into()));
    let d = decide(&world(&s, &p, 7_000));
    assert_eq!(
        d.actions,
        [Action::CreateJob {
            from: "s-0".into(),
            to: "s-1".into()
        }]
    );
    assert!(
        next_failover(&d)
            .tail_source
            .unwrap()
            .contains("PVC wal-s-0")
    );
    let mut w = world(&s, &p, 7_100);
    w.job = Some(JobState::Running);
    assert!(decide(&w).actions.is_empty());
    let mut shipped = p.clone();
    if let Some(Ok(n)) = shipped[1].node.as_mut() {
        n.applied_seq = 101;
    }
    let mut w = World {
        pods: &shipped,
        job: Some(JobState::Succeeded),
        ..w
    };
    let f = next_failover(&decide(&w));
    assert_eq!((f.step, f.tail_end), (FailoverStep::Promoting, Some(101)));
    // The old primary was seen durable up to 103 while fenced: a Job that succeeded
    // with the candidate at 101 did not bring the whole tail. Said, not promoted
    // (before, promoted, losing 102 and 103).
    let mut short = s.clone();
    if let Some(f) = short.failover.as_mut() {
        f.from_durable_seq = Some(103);
    }
    w.status = &short;
    let d = decide(&w);
    let f = next_failover(&d);
    assert_eq!(f.step, FailoverStep::Recovering);
    let why = f.blocked.clone().unwrap();
    assert!(
        why.starts_with("TailShort") && why.contains("up to 101") && why.contains("up to 103"),
        "{why}"
    );
    assert!(d.actions.is_empty(), "{d:?}");
    // That pass's status of the candidate may predate the Job's end: AllowLoss too
    // waits a pass before it goes on without the tail.
    w.tail_policy = TailPolicy::AllowLoss;
    assert_eq!(next_failover(&decide(&w)).step, FailoverStep::Recovering);
    // Still short on the next pass: an unreadable tail. Async mode waits, AllowLoss
    // goes on (the volume may hold less for good), keeping what the Job copied.
    let later = in_failover(f);
    w.status = &later;
    w.tail_policy = TailPolicy::Required;
    let f = next_failover(&decide(&w));
    let why = f.blocked.clone().unwrap();
    assert!(
        why.starts_with("TailUnavailable") && why.contains("TailShort"),
        "{why}"
    );
    w.tail_policy = TailPolicy::AllowLoss;
    let f = next_failover(&decide(&w));
    assert_eq!(
        (
            f.step,
            f.candidate.as_deref(),
            f.candidate_start_seq,
            f.tail_end
        ),
        (FailoverStep::Promoting, Some("s-1"), Some(98), Some(101))
    );
}

/// A live candidate's recovery Job deleted by someone else, its pods slow to stop, is
/// waited for in the status (`blocked`, so `describe` says why the failover stands
/// still), and once it is gone a new one starts, the wait's reason cleared.
#[test]
fn a_recovery_job_being_deleted_is_said_and_then_started_again() {
    let s = recovering();
    let mut p = parked(pods());
    p[0].node = Some(Err("timed out".into()));
    // The Job was started (its source written), then deleted.
    let source = next_failover(&decide(&world(&s, &p, 7_000))).tail_source;
    let mut started = s.clone();
    if let Some(f) = started.failover.as_mut() {
        f.tail_source = source;
    }
    let mut w = world(&started, &p, 7_100);
    w.job = Some(JobState::Deleting);
    let d = decide(&w);
    assert!(d.actions.is_empty(), "acted on a Job being deleted: {d:?}");
    let f = next_failover(&d);
    let blocked = f.blocked.clone().expect("the wait is said in the status");
    assert!(
        blocked.starts_with("RecoveryJobDeleting") && blocked.contains("s-1"),
        "{blocked}"
    );
    // Said once: the same status is not written again.
    let waiting = in_failover(f);
    let mut again = world(&waiting, &p, 7_400);
    again.job = Some(JobState::Deleting);
    assert!(decide(&again).next.is_none());
    // Gone: a new Job into the same candidate, the reason cleared.
    again.job = None;
    let d = decide(&again);
    assert_eq!(
        d.actions,
        [Action::CreateJob {
            from: "s-0".into(),
            to: "s-1".into()
        }]
    );
    assert_eq!(next_failover(&d).blocked, None);
    // The clearing lost (a conflict on the write), the new Job seen running: cleared then.
    again.job = Some(JobState::Running);
    assert_eq!(next_failover(&decide(&again)).blocked, None);
}

/// An old pod that answers from a log other than the one it wrote as the primary (it
/// came back on an empty volume: `standby@0`, or behind what it said was durable) is
/// not the tail's source: the recovery Job reads the volume (and its `--expect-epoch`
/// refuses an empty one). Promoting on its answer lost every sale only it had.
#[test]
fn an_old_pod_back_on_another_log_is_not_the_tail() {
    let mut f = failover(FailoverStep::Recovering);
    f.candidate = Some("s-1".into());
    f.candidate_start_seq = Some(98);
    f.fenced = Some("process gone".into());
    f.from_durable_seq = Some(100);
    let s = in_failover(f);
    for (epoch, durable) in [(0, 0), (4, 0), (4, 99)] {
        let mut p = parked(pods());
        p[0].node = Some(Ok(node(Role::Standby, epoch, durable, "dd")));
        let d = decide(&world(&s, &p, 7_000));
        assert_eq!(
            d.actions,
            [Action::CreateJob {
                from: "s-0".into(),
                to: "s-1".into()
            }],
            "epoch {epoch}, durable {durable}"
        );
    }
    // (4, 0): an empty one parked by the fence reports the new epoch: its log has none.
    // So too when nothing was known durable of it (it never answered while fenced).
    let mut unknown = s.failover.clone().unwrap();
    unknown.from_durable_seq = None;
    let unknown = in_failover(unknown);
    let mut p = parked(pods());
    p[0].node = Some(Ok(node(Role::Standby, 4, 0, "dd")));
    assert_eq!(
        decide(&world(&unknown, &p, 7_000)).actions,
        [Action::CreateJob {
            from: "s-0".into(),
            to: "s-1".into()
        }]
    );
    // Fencing again (the candidate lost) neither lowers nor forgets what was durable.
    let mut again = s.failover.clone().unwrap();
    again.step = FailoverStep::Fencing;
    again.candidate = None;
    let again = in_failover(again);
    let mut p = parked(pods());
    p[0].node = Some(Ok(node(Role::Standby, 4, 0, "dd")));
    p[0].role_label = None;
    let f = next_failover(&decide(&world(&again, &p, 7_000)));
    assert_eq!(f.from_durable_seq, Some(100));
    p[0].node = Some(Err("timed out".into()));
    let f = next_failover(&decide(&world(&again, &p, 7_000)));
    assert_eq!(f.from_durable_seq, Some(100));
    // Its own log, parked or restarted from it (or from an epoch it held before, when
    // a promotion to the next one was never logged): the source, as before.
    for epoch in [2, 3, 4] {
        let mut p = parked(pods());
        p[0].node = Some(Ok(node(Role::Standby, epoch, 100, "dd")));
        let d = decide(&world(&s, &p, 7_000));
        assert!(
            matches!(&d.actions[..], [Action::CopyTail { from, .. }] if from == "s-0"),
            "{:?}",
            d.actions
        );
    }
}

/// The candidate a recovery Job shipped the tail into stops answering, and another is
/// chosen: it gets a Job of its own. The first Job's success is not this candidate's
/// tail (promoting on it lost every record only the old primary had).
#[test]
fn a_candidate_chosen_again_after_its_job_gets_a_job_of_its_own() {
    let s = recovering();
    let mut p = parked(pods());
    p[0].node = Some(Err("timed out".into()));
    p[1].node = Some(Err("timed out".into()));
    let mut w = world(&s, &p, 7_000);
    w.job = Some(JobState::Succeeded); // into s-1
    assert_eq!(
        decide(&w).actions,
        vec![Action::DeleteJob { to: "s-1".into() }],
        "the lost candidate's Job, which ended, is deleted before choosing again"
    );
    w.job = Some(JobState::Deleting);
    let lost = next_failover(&decide(&w));
    assert_eq!(
        (lost.step, lost.candidate.as_deref()),
        (FailoverStep::Fencing, None)
    );
    assert!(lost.blocked.unwrap().starts_with("CandidateLost"));
    // Chosen again: s-2. A Job the world still reports is not its Job.
    let s = in_failover(FailoverState {
        blocked: None,
        ..lost
    });
    p[0].role_label = None; // unlabelled when it was fenced
    let mut w = world(&s, &p, 7_100);
    w.job = Some(JobState::Succeeded);
    let d = decide(&w);
    assert!(
        d.actions.contains(&Action::CreateJob {
            from: "s-0".into(),
            to: "s-2".into()
        }),
        "{:?}",
        d.actions
    );
    let f = next_failover(&d);
    assert_eq!(
        (f.step, f.candidate.as_deref()),
        (FailoverStep::Recovering, Some("s-2"))
    );
    assert_eq!(
        f.tail_source.as_deref(),
        Some("Job s-recover-e4-2 (PVC wal-s-0)")
    );
}

/// A candidate given up while its recovery Job still runs: the Job is deleted, pass after
/// pass until it is gone, before another candidate is chosen, since it holds the old
/// primary's ReadWriteOnce volume the next candidate's Job needs. A Job that ended is
/// deleted too: chosen again at this epoch, the candidate would find it and take its
/// success for the tail, which it may no longer hold.
#[test]
fn a_candidate_lost_while_its_job_runs_has_its_job_deleted() {
    let s = recovering();
    let mut p = parked(pods());
    p[0].node = Some(Err("timed out".into()));
    p[1].node = Some(Err("timed out".into())); // s-1, the candidate
    let mut w = world(&s, &p, 7_000);
    w.job = Some(JobState::Running); // into s-1
    let d = decide(&w);
    assert_eq!(d.actions, vec![Action::DeleteJob { to: "s-1".into() }]);
    let f = next_failover(&d);
    assert_eq!(
        (f.step, f.candidate.as_deref()),
        (FailoverStep::Recovering, Some("s-1")),
        "chose again while the Job still runs"
    );
    assert!(f.blocked.unwrap().contains("deleting its recovery Job"));
    for ended in [
        JobState::Succeeded,
        JobState::Failed("BackoffLimitExceeded".into()),
    ] {
        w.job = Some(ended);
        let d = decide(&w);
        assert_eq!(d.actions, vec![Action::DeleteJob { to: "s-1".into() }]);
        assert_eq!(next_failover(&d).step, FailoverStep::Recovering);
    }
    // Deleted (or being deleted, or never there): s-1 is given up, with nothing to
    // delete.
    for job in [None, Some(JobState::Deleting)] {
        w.job = job;
        let d = decide(&w);
        assert_eq!(d.actions, vec![]);
        assert!(
            next_failover(&d)
                .blocked
                .unwrap()
                .starts_with("CandidateLost")
        );
    }
}

/// A reason in the status is what blocks the failover now, not what once did: the
/// candidate lost while its Job runs answers again (the Job was asked to go, and may or
/// may not have), or a failed Job's TTL removed it and a new one starts. Before, each
/// reason stayed in the status until promotion.
#[test]
fn a_reason_that_no_longer_holds_leaves_the_status() {
    let s = recovering();
    let mut p = parked(pods());
    p[0].node = Some(Err("timed out".into()));
    let answers = p[1].node.clone();
    p[1].node = Some(Err("timed out".into())); // s-1, the candidate
    let mut w = world(&s, &p, 7_000);
    w.job = Some(JobState::Running);
    let lost = next_failover(&decide(&w));
    assert!(lost.blocked.clone().unwrap().starts_with("CandidateLost"));
    // s-1 answers again, its Job still running or already gone.
    p[1].node = answers;
    let lost = in_failover(lost);
    for job in [Some(JobState::Running), None] {
        let mut w = world(&lost, &p, 7_400);
        w.job = job.clone();
        let d = decide(&w);
        let cleared = next_failover(&d);
        assert_eq!(cleared.blocked, None, "job {job:?}");
        // Written once: the next pass has nothing to write.
        let cleared = in_failover(cleared);
        let mut w = world(&cleared, &p, 7_600);
        w.job = job.clone();
        assert_eq!(decide(&w).next, None, "job {job:?}");
    }
    // A failed Job: TailUnavailable. Removed by its TTL: a new Job, the reason gone.
    let mut w = world(&s, &p, 8_000);
    w.job = Some(JobState::Failed("the log cannot be read".into()));
    let failed = next_failover(&decide(&w));
    assert!(
        failed
            .blocked
            .clone()
            .unwrap()
            .starts_with("TailUnavailable")
    );
    let failed = in_failover(failed);
    let mut w = world(&failed, &p, 600_000);
    w.job = None;
    let d = decide(&w);
    assert_eq!(
        d.actions,
        [Action::CreateJob {
            from: "s-0".into(),
            to: "s-1".into()
        }]
    );
    assert_eq!(next_failover(&d).blocked, None);
    // The old pod answers from its log again: the tail is copied from it, the reason
    // gone with the failed Job still there.
    let p = parked(pods());
    let mut w = world(&failed, &p, 600_000);
    w.job = Some(JobState::Failed("the log cannot be read".into()));
    let d = decide(&w);
    assert!(
        matches!(&d.actions[..], [Action::CopyTail { from, .. }] if from == "s-0"),
        "{:?}",
        d.actions
    );
    assert_eq!(next_failover(&d).blocked, None);
}

#[test]
fn an_unreadable_tail_blocks_async_mode_unless_loss_is_allowed() {
    let s = recovering();
    let mut p = parked(pods());
    p[0].node = Some(Err("timed out".into()));
    let mut w = world(&s, &p, 8_000);
    w.job = Some(JobState::Failed("the log cannot be read".into()));
    let f = next_failover(&decide(&w));
    assert_eq!(f.step, FailoverStep::Recovering);
    assert!(f.blocked.unwrap().starts_with("TailUnavailable"));
    w.tail_policy = TailPolicy::AllowLoss;
    let f = next_failover(&decide(&w));
    assert_eq!(f.step, FailoverStep::Promoting);
    assert!(f.tail_source.unwrap().contains("AllowLoss"));
}

#[test]
fn quorum_mode_promotes_without_the_tail_once_every_secondary_reported() {
    let s = recovering();
    let mut p = parked(pods());
    p[0].node = Some(Err("timed out".into()));
    p[2].node = Some(Err("timed out".into()));
    let mut w = world(&s, &p, 8_000);
    w.quorum = true;
    w.job = Some(JobState::Failed("unreadable".into()));
    let f = next_failover(&decide(&w));
    assert!(
        f.blocked.unwrap().starts_with("QuorumUnsafe"),
        "s-2 is silent"
    );
    let mut all = parked(pods());
    all[0].node = Some(Err("timed out".into()));
    if let Some(Ok(n)) = all[2].node.as_mut() {
        (n.applied_seq, n.durable_seq) = (99, 99); // s-2 now holds the most
    }
    let mut w = World { pods: &all, ..w };
    let f = next_failover(&decide(&w));
    assert_eq!(f.step, FailoverStep::Promoting);
    assert_eq!(
        f.candidate.as_deref(),
        Some("s-2"),
        "the most durable of all"
    );
    assert_eq!(
        (f.candidate_start_seq, f.tail_end),
        (Some(99), Some(99)),
        "nothing copied, nothing reconciled"
    );
    // s-2's pod removed by a scale-down to 2 nodes (gone from the cache): s-2 is
    // silent, not absent — sale 99, acknowledged on s-2's ack alone, is on its volume.
    // Before, s-1 (98) was promoted and sale 99 lost.
    w.replicas = 2;
    w.pods = &all[..2];
    let f = next_failover(&decide(&w));
    assert_eq!(f.step, FailoverStep::Recovering);
    let blocked = f.blocked.unwrap();
    assert!(
        blocked.starts_with("QuorumUnsafe") && blocked.contains("(silent: s-2;"),
        "{blocked}"
    );
    // AllowLoss goes on without a silent node, and says what may be lost.
    w.tail_policy = TailPolicy::AllowLoss;
    let f = next_failover(&decide(&w));
    assert_eq!(
        (f.step, f.candidate.as_deref()),
        (FailoverStep::Promoting, Some("s-1"))
    );
    let source = f.tail_source.unwrap();
    assert!(
        source.contains("without s-2") && source.contains("may be lost"),
        "{source}"
    );
    w.tail_policy = TailPolicy::Required;
    // Both as durable: the one the scale-down keeps is chosen, lagging or not.
    let mut tied = all.clone();
    if let Some(Ok(n)) = tied[1].node.as_mut() {
        (n.applied_seq, n.durable_seq) = (99, 99);
    }
    w.pods = &tied;
    w.lagging = vec!["s-1".into()];
    let f = next_failover(&decide(&w));
    assert_eq!(
        f.candidate.as_deref(),
        Some("s-1"),
        "as durable, and it stays"
    );
}

/// Quorum mode without the old primary's tail: a node that answers with less than it
/// held when the failover began — its pod back on a new volume — lost what may have
/// been acknowledged on its ack alone, and counts as silent. Before, it counted as
/// reported and another node was promoted without those sales.
#[test]
fn quorum_mode_counts_a_node_back_on_a_new_volume_as_silent() {
    let s = recovering();
    let mut p = parked(pods());
    p[0].node = Some(Err("timed out".into()));
    let empty = |p: &mut PodView| {
        if let Some(Ok(n)) = p.node.as_mut() {
            (n.applied_seq, n.durable_seq, n.epochs) = (0, 0, vec![]);
        }
    };
    empty(&mut p[2]);
    let mut w = world(&s, &p, 8_000);
    w.quorum = true;
    w.job = Some(JobState::Failed("unreadable".into()));
    let f = next_failover(&decide(&w));
    assert_eq!(f.step, FailoverStep::Recovering);
    let blocked = f.blocked.unwrap();
    assert!(
        blocked.starts_with("QuorumUnsafe")
            && blocked.contains("s-2 (back with 0 of the 95 records it had)"),
        "{blocked}"
    );
    // One silent as the failover began but seen answering the pass before (recorded
    // as holding some), back with an empty log: the same.
    let mut was_silent = recovering();
    if let Some(f) = was_silent.failover.as_mut() {
        f.nodes_durable_seq.insert("s-2".into(), 1);
    }
    w.status = &was_silent;
    let blocked = next_failover(&decide(&w)).blocked.unwrap();
    assert!(
        blocked.contains("s-2 (back with an empty log)"),
        "{blocked}"
    );
    // A node not recorded (a pod never seen answering) or recorded at 0 (a log that
    // ended at an older epoch) had nothing of the old primary's epoch to lose.
    let mut fresh = recovering();
    if let Some(f) = fresh.failover.as_mut() {
        f.nodes_durable_seq.remove("s-2");
    }
    w.status = &fresh;
    assert_eq!(next_failover(&decide(&w)).step, FailoverStep::Promoting);
    let mut older = recovering();
    if let Some(f) = older.failover.as_mut() {
        f.nodes_durable_seq.insert("s-2".into(), 0);
    }
    w.status = &older;
    let f = next_failover(&decide(&w));
    assert_eq!(
        (f.step, f.candidate.as_deref()),
        (FailoverStep::Promoting, Some("s-1"))
    );
}

// --- promotion

#[test]
fn promotion_then_the_record() {
    let mut f = failover(FailoverStep::Promoting);
    f.candidate = Some("s-1".into());
    f.candidate_start_seq = Some(98);
    f.tail_end = Some(100);
    f.tail_source = Some("pod s-0".into());
    f.fenced = Some("stepped down".into());
    f.fenced_at = Some(at(200));
    let s = in_failover(f);
    let mut p = parked(pods());
    // s-1 holds the tail it was recovered to.
    if let Some(Ok(n)) = p[1].node.as_mut() {
        (n.applied_seq, n.durable_seq) = (100, 100);
    }
    let d = decide(&world(&s, &p, 300));
    assert_eq!(
        d.actions,
        [Action::Promote {
            pod: "s-1".into(),
            epoch: 4
        }]
    );
    // Back on a new volume before it took the role: not promoted empty. A new attempt
    // at epoch 5, from the old primary (a recovery Job of that epoch's name, not the
    // one that already succeeded into s-1), said; the lease it may hold stops.
    let mut empty = p.clone();
    empty[1].node = Some(Ok(node(Role::Standby, 0, 0, "dd")));
    let d = decide(&world(&s, &empty, 300));
    assert_eq!(d.actions, [Action::StopLease]);
    let next = d.next.clone().unwrap();
    assert_eq!(next.epoch, 5);
    let f = next_failover(&d);
    assert_eq!(
        (
            f.step,
            f.epoch,
            f.from.as_str(),
            f.candidate.as_deref(),
            f.tail_end
        ),
        (FailoverStep::Fencing, 5, "s-0", None, None)
    );
    assert!(
        f.blocked
            .as_deref()
            .is_some_and(|b| b.starts_with("CandidateLost: s-1")),
        "{:?}",
        f.blocked
    );
    let s2 = FlashSaleStatus {
        epoch: 5,
        failover: Some(f),
        ..status()
    };
    let d = decide(&world(&s2, &empty, 400));
    for pod in ["s-0", "s-1", "s-2"] {
        let park = Action::Park {
            pod: pod.into(),
            epoch: 5,
        };
        assert!(d.actions.contains(&park), "{pod}: {:?}", d.actions);
    }
    // Parked at 5: the old primary stepped down; s-2 (95 records) is chosen over the
    // empty s-1, and the tail comes from the old pod.
    let mut at5 = empty.clone();
    at5[0].role_label = None;
    for v in at5.iter_mut() {
        if let Some(Ok(n)) = v.node.as_mut() {
            (n.role, n.epoch) = (Role::Standby, 5);
        }
    }
    let again = next_failover(&decide(&world(&s2, &at5, 500)));
    assert_eq!(
        (again.step, again.candidate.as_deref()),
        (FailoverStep::Recovering, Some("s-2"))
    );
    let mut done = p.clone();
    if let Some(Ok(n)) = done[1].node.as_mut() {
        n.role = Role::Primary;
    }
    let d = decide(&world(&s, &done, 400));
    let next = d.next.unwrap();
    assert_eq!(next.primary.as_deref(), Some("s-1"));
    assert!(next.failover.is_none());
    let r = next.last_failover.unwrap();
    assert_eq!((r.reconciled_records, r.outage_ms), (2, 4_400));
    assert_eq!(
        (r.from_pod.as_str(), r.to_pod.as_str(), r.epoch),
        ("s-0", "s-1", 4)
    );
}

#[test]
fn a_candidate_lost_while_promoted_takes_the_next_epoch_from_it() {
    let mut f = failover(FailoverStep::Promoting);
    f.candidate = Some("s-1".into());
    let s = in_failover(f);
    let mut p = parked(pods());
    p[1].node = Some(Err("refused".into()));
    let d = decide(&world(&s, &p, 300));
    // The lease `Promote` began to renew for it stops: renewed again once it is back
    // (a fresh token, still a primary at epoch 4), it would sell past the fence.
    assert_eq!(d.actions, [Action::StopLease]);
    let next = d.next.unwrap();
    assert_eq!(next.epoch, 5);
    let f = next.failover.unwrap();
    assert_eq!(
        (f.from.as_str(), f.epoch, f.step),
        ("s-1", 5, FailoverStep::Fencing)
    );
}

#[test]
fn a_resumed_decision_is_the_same_decision() {
    for s in [
        in_failover(failover(FailoverStep::Fencing)),
        recovering(),
        status(),
    ] {
        let p = parked(pods());
        let w = world(&s, &p, 9_000);
        assert_eq!(decide(&w), decide(&w.clone()));
    }
}

// --- switchover and scale-down

#[test]
fn a_switchover_is_refused_with_a_reason_when_the_target_cannot_take_over() {
    let s = status();
    let mut p = pods();
    let mut w = world(&s, &p, 0);
    for (target, why) in [
        ("s-0", "is the primary already"),
        ("s-9", "no node pod s-9"),
    ] {
        w.switchover_to = Some(target.into());
        let d = decide(&w);
        assert!(d.refused.as_deref().unwrap().contains(why), "{d:?}");
        assert_eq!(d.actions, [Action::ClearSwitchoverRequest]);
        assert!(d.next.is_none());
    }
    if let Some(Ok(n)) = p[2].node.as_mut() {
        n.durable_seq = 10;
    }
    let mut w = world(&s, &p, 0);
    w.max_lag_records = 50;
    w.switchover_to = Some("s-2".into());
    let d = decide(&w);
    assert!(d.refused.unwrap().contains("lags 90 records"));
    w.switchover_to = Some("s-1".into());
    let f = next_failover(&decide(&w));
    assert_eq!(
        (f.kind, f.candidate.as_deref(), f.epoch),
        (FailoverKind::Switchover, Some("s-1"), 4)
    );
}

/// A switchover to a node a scale-down is removing is refused; and one whose target
/// went away after it began (a scale-down that raced the request deleted it) takes the
/// best node that stays. Before, it was accepted, and then waited for the target for
/// good (`NoCandidate`) with the primary already stepped down: the sale sold nothing.
#[test]
fn a_switchover_never_waits_for_a_target_being_removed() {
    let s = status();
    let p = pods();
    let mut w = world(&s, &p, 0);
    w.replicas = 2;
    w.switchover_to = Some("s-2".into());
    let d = decide(&w);
    assert!(
        d.refused.as_deref().unwrap().contains("is to be removed"),
        "{d:?}"
    );
    assert_eq!(d.actions, [Action::ClearSwitchoverRequest]);
    // Begun towards s-2, which is then deleted.
    let mut f = failover(FailoverStep::Fencing);
    f.kind = FailoverKind::Switchover;
    f.candidate = Some("s-2".into());
    let s = in_failover(f);
    let mut p = parked(pods());
    p.pop();
    p[0].role_label = None; // unlabelled when it stepped down
    let mut w = world(&s, &p, 100);
    w.replicas = 2;
    let f = next_failover(&decide(&w));
    assert_eq!(
        (f.step, f.candidate.as_deref(), f.blocked),
        (FailoverStep::Recovering, Some("s-1"), None)
    );
    // A target that only missed a status answer, its pod running, is waited for.
    let mut p = parked(pods());
    p[0].role_label = None;
    p[2].node = Some(Err("timed out".into()));
    let w = world(&s, &p, 100);
    let f = next_failover(&decide(&w));
    assert_eq!(
        (f.step, f.candidate.as_deref()),
        (FailoverStep::Fencing, Some("s-2"))
    );
    assert!(f.blocked.unwrap().starts_with("NoCandidate"));
}

#[test]
fn a_scale_down_that_would_remove_the_primary_switches_over_first() {
    let mut s = status();
    s.primary = Some(PrimaryStatus {
        pod: "s-2".into(),
        endpoint: None,
    });
    let mut p = pods();
    if let Some(Ok(n)) = p[0].node.as_mut() {
        n.role = Role::Secondary;
    }
    if let Some(Ok(n)) = p[2].node.as_mut() {
        n.role = Role::Primary;
        n.durable_seq = 100;
    }
    let mut w = world(&s, &p, 0);
    w.lease.pod = Some("s-2".into());
    w.replicas = 2;
    let f = next_failover(&decide(&w));
    assert_eq!(f.kind, FailoverKind::Switchover);
    assert_eq!(f.from, "s-2");
    assert!(f.candidate.is_some_and(|c| c == "s-0" || c == "s-1"));
    w.replicas = 3;
    assert!(decide(&w).next.is_none());
    // No node that stays can take over (neither is ready): the wait is said, with
    // why, not kept silent.
    p[0].ready = false;
    p[1].ready = false;
    let mut w = world(&s, &p, 0);
    w.lease.pod = Some("s-2".into());
    w.replicas = 2;
    let d = decide(&w);
    assert!(d.next.is_none(), "{d:?}");
    let why = d.scale_down_waits.expect("the wait is said");
    assert!(
        why.contains("scale-down to 2 nodes waits") && why.contains("not a ready secondary"),
        "{why}"
    );
}

/// A failover counts on quorum mode only when the primary being replaced ran it: after
/// `spec.replication.mode` changes to quorum, the primary's pod is replaced last and
/// acknowledges alone until then, so an unreadable tail is not held by a secondary. A
/// pod made again under the old primary's name runs the new template and says nothing
/// of it; what was recorded of the pod the lease was granted in does.
#[test]
fn quorum_is_counted_on_only_when_the_replaced_primary_ran_it() {
    use flashsale_operator::failover::{PrimaryMode, counts_on_quorum};
    let s = status(); // primary s-0, leased in uid-0
    let mut p = pods();
    for q in p.iter_mut() {
        q.runs_quorum = true;
    }
    let lease = Some("uid-0");
    assert!(counts_on_quorum(true, &s, lease, &p, None));
    assert!(
        !counts_on_quorum(false, &s, lease, &p, None),
        "the spec says async"
    );
    p[0].runs_quorum = false; // the primary's pod still runs the old mode
    assert!(!counts_on_quorum(true, &s, lease, &p, None));
    let seen = PrimaryMode::seen(&s, &p, lease).expect("the leased pod is seen");
    assert!(!seen.quorum);
    // During a failover: the pod being replaced (`fromUid`).
    let f = in_failover(failover(FailoverStep::Recovering));
    assert!(!counts_on_quorum(true, &f, None, &p, None));
    // Made again from the new template: its own mode is not asked, the record is.
    p[0].uid = Some("uid-0-again".into());
    p[0].runs_quorum = true;
    assert!(!counts_on_quorum(true, &f, None, &p, Some(&seen)));
    assert_eq!(
        PrimaryMode::seen(&s, &p, lease),
        None,
        "nothing is recorded of a pod the lease was not granted in"
    );
    // A primary made again in place (its lease granted again to the new pod) still
    // holds what the pod before acknowledged alone: the record stays async until the
    // primary moves.
    let again = PrimaryMode::seen(&s, &p, Some("uid-0-again")).expect("leased again");
    assert!(again.quorum);
    let merged = again.clone().after(Some(&seen));
    assert!(!merged.quorum && merged.uid == "uid-0-again");
    // ... on every pass after, not the first only.
    let next_pass = again.clone().after(Some(&merged));
    assert!(
        !next_pass.quorum,
        "the older mode is kept on the next pass too"
    );
    // And while that pod still runs (a failover from it, its fromUid the new one),
    // the record is asked too, not its own mode alone.
    let mut from_again = failover(FailoverStep::Recovering);
    from_again.from_uid = Some("uid-0-again".into());
    let f_again = in_failover(from_again);
    assert!(counts_on_quorum(true, &f_again, None, &p, None));
    assert!(!counts_on_quorum(
        true,
        &f_again,
        None,
        &p,
        Some(&next_pass)
    ));
    let moved = PrimaryMode {
        pod: "s-1".into(),
        uid: "uid-1".into(),
        quorum: true,
    };
    assert!(
        moved.after(Some(&merged)).quorum,
        "a new primary starts afresh"
    );
    // Nothing known of the old pod: the spec.
    assert!(counts_on_quorum(true, &f, None, &p, None));
    p.remove(0);
    assert!(counts_on_quorum(true, &f, None, &p, None));
}

/// A pod template rollout that has come to the primary (every other node updated and
/// ready) moves it by a switchover to the best node, before its pod is replaced; one
/// with no node able to take over waits, and says why.
#[test]
fn a_rollout_that_has_come_to_the_primary_switches_over() {
    let s = status();
    let p = pods();
    let mut w = world(&s, &p, 0);
    assert!(decide(&w).next.is_none(), "no rollout, no move");
    w.rollout = true;
    let f = next_failover(&decide(&w));
    assert_eq!(f.kind, FailoverKind::Switchover);
    assert_eq!(f.from, "s-0");
    assert!(f.reason.contains("pod template rollout"), "{}", f.reason);
    assert!(f.candidate.is_some_and(|c| c == "s-1" || c == "s-2"));
    let mut p = pods();
    p[1].ready = false;
    p[2].ready = false;
    let mut w = world(&s, &p, 0);
    w.rollout = true;
    let d = decide(&w);
    assert!(d.next.is_none(), "{d:?}");
    let why = d.rollout_waits.expect("the wait is said");
    assert!(
        why.contains("rollout waits") && why.contains("not a ready secondary"),
        "{why}"
    );
}

/// The primary's lease counts as held only with the spec's duration: a changed
/// `leaseDuration` is granted by holding the lease anew (the keeper kept renewing with
/// the old one until a promotion or a restart, while the status said otherwise).
#[test]
fn a_lease_renewed_with_another_duration_is_held_anew() {
    let l = leased(0);
    let url = Some("http://10.0.0.10:8080");
    assert!(l.renews(Some("s-0"), url, 3, Duration::from_secs(6)));
    assert!(!l.renews(Some("s-0"), url, 3, Duration::from_secs(60)));
    assert!(!l.renews(Some("s-1"), url, 3, Duration::from_secs(6)));
    assert!(!l.renews(Some("s-0"), url, 4, Duration::from_secs(6)));
    let stopped = LeaseView {
        held: false,
        ..leased(0)
    };
    assert!(!stopped.renews(Some("s-0"), url, 3, Duration::from_secs(6)));
}

/// A renewal still waiting on its target's status when the keeper is given another
/// target (`hold`: a promotion) sends nothing to the node it no longer renews.
#[tokio::test]
async fn a_renewal_in_flight_when_the_target_changes_sends_nothing_to_the_old_one() {
    use axum::routing::{get, put};
    use flashsale_operator::failover::keeper::{Keeper, Target};
    use flashsale_operator::failover::leadership::Leading;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    // A node that takes 300 ms to answer its status and counts the renewals it gets.
    async fn slow_node(instance: &'static str) -> (String, Arc<AtomicU32>) {
        let renewals = Arc::new(AtomicU32::new(0));
        let counted = renewals.clone();
        let app = axum::Router::new()
            .route(
                "/admin/v1/status",
                get(move || async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    axum::Json(node(Role::Primary, 4, 10, instance))
                }),
            )
            .route(
                "/admin/v1/lease",
                put(move || {
                    let counted = counted.clone();
                    async move {
                        counted.fetch_add(1, Ordering::SeqCst);
                        axum::Json(node(Role::Primary, 4, 10, instance).lease.unwrap())
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, renewals)
    }
    let (old_url, old_renewals) = slow_node("aa").await;
    let (new_url, _) = slow_node("bb").await;
    let target = |pod: &str, url: &str| Target {
        pod: pod.into(),
        pod_uid: None,
        url: url.into(),
        admin_token: "t".into(),
        epoch: 4,
        lease: Duration::from_secs(6),
    };
    let keeper = Keeper::new(
        flashsale_operator::nodes::NodeClient::new(2_000).unwrap(),
        Arc::new(flashsale_operator::metrics::Metrics::default()),
        Leading::default(),
    );
    keeper.hold("s", target("s-0", &old_url));
    let renewing = {
        let keeper = keeper.clone();
        tokio::spawn(async move { keeper.renew_now("s").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    keeper.hold("s", target("s-1", &new_url));
    let _ = renewing.await.unwrap();
    assert_eq!(
        old_renewals.load(Ordering::SeqCst),
        0,
        "the node no longer held was renewed"
    );
}
