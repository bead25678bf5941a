//! Replication as the operator reports it, from node status fixtures (what
//! `GET /admin/v1/status` answers): who lags, the `ReplicationHealthy` condition, the
//! Events' transitions, and a status that does not move with the live figures.

use flashsale_core::admin::NodeStatus;
use flashsale_operator::crd::{FlashSale, FlashSaleStatus, NodeReplicationStatus, NodeRole};
use flashsale_operator::metrics::Metrics;
use flashsale_operator::observe::PodView;
use flashsale_operator::replication::{
    self, Assessment, LAGGING_HOLD_MS, Thresholds, apply_to_status,
};
use flashsale_operator::status::condition_is;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

const LIMITS: Thresholds = Thresholds {
    max_lag_records: 1000,
    max_lag_ms: 5000,
};

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/replication/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn status(name: &str) -> NodeStatus {
    serde_json::from_str(&fixture(name)).unwrap()
}

/// A node pod that answered with `status`.
fn pod(name: &str, status: Option<NodeStatus>) -> PodView {
    PodView {
        name: name.into(),
        uid: Some(format!("uid-{name}")),
        ordinal: name.rsplit('-').next().and_then(|n| n.parse().ok()),
        ip: Some("10.0.0.1".into()),
        running: status.is_some(),
        deleting: false,
        ready: status.is_some(),
        container_running: true,
        role_label: None,
        config_hash: None,
        role_assignment: None,
        revision: None,
        runs_quorum: false,
        node: status.map(Ok),
    }
}

/// A secondary `lag_records` / `lag_ms` behind.
fn secondary(lag_records: u64, lag_ms: u64) -> NodeStatus {
    let mut s = status("secondary-live.json");
    let r = s.replication.as_mut().unwrap();
    r.lag_records = lag_records;
    r.lag_ms = lag_ms;
    r.applied_seq = r.primary_seq - lag_records.min(r.primary_seq);
    s
}

fn sale_of_three(second: NodeStatus, third: Option<NodeStatus>) -> Vec<PodView> {
    vec![
        pod("launch-0", Some(status("primary.json"))),
        pod("launch-1", Some(second)),
        pod("launch-2", third),
    ]
}

fn at(s: &str) -> Time {
    Time(s.parse().unwrap())
}

const T0: &str = "2026-11-21T09:00:00Z";

/// The verdict at `T0 + secs`.
fn assess_at(
    pods: &[PodView],
    primary: Option<&str>,
    prev: &[NodeReplicationStatus],
    limits: Thresholds,
    secs: i64,
) -> Assessment {
    let now = Time(at(T0).0 + jiff::SignedDuration::from_secs(secs));
    replication::assess(pods, primary, prev, limits, &now)
}

/// The verdict at `T0`.
fn assess(
    pods: &[PodView],
    primary: Option<&str>,
    prev: &[NodeReplicationStatus],
    limits: Thresholds,
) -> Assessment {
    assess_at(pods, primary, prev, limits, 0)
}

fn lagging(a: &Assessment) -> Vec<&str> {
    a.nodes
        .iter()
        .filter(|n| n.lagging)
        .map(|n| n.name.as_str())
        .collect()
}

#[test]
fn three_nodes_in_sync_are_healthy_and_say_who_is_who() {
    let pods = sale_of_three(
        status("secondary-live.json"),
        Some(status("secondary-live.json")),
    );
    let a = assess(&pods, Some("launch-0"), &[], LIMITS);
    assert!(a.verdict.healthy, "{:?}", a.verdict);
    assert_eq!(a.verdict.reason, "InSync");
    assert_eq!(
        a.nodes[0],
        NodeReplicationStatus {
            name: "launch-0".into(),
            role: Some(NodeRole::Primary),
            role_epoch: Some(1),
            ready: true,
            answering: true,
            redis_connected: Some(true),
            lagging: false,
            lagging_since: None,
            reseeded: None,
        }
    );
    assert!(
        a.nodes[1..]
            .iter()
            .all(|n| n.role == Some(NodeRole::Secondary) && !n.lagging)
    );
    assert!(a.started_lagging.is_empty() && a.stopped_lagging.is_empty());
}

#[test]
fn a_secondary_far_behind_lags_with_one_warning_and_a_condition_naming_it() {
    let pods = sale_of_three(
        status("secondary-live.json"),
        Some(status("secondary-behind.json")),
    );
    let a = assess(&pods, Some("launch-0"), &[], LIMITS);
    assert_eq!(lagging(&a), ["launch-2"]);
    assert!(!a.verdict.healthy);
    assert_eq!(a.verdict.reason, "ReplicationLagging");
    assert!(
        a.verdict.message.contains("launch-2"),
        "{}",
        a.verdict.message
    );
    assert_eq!(a.started_lagging.len(), 1);
    assert_eq!(
        (
            a.started_lagging[0].node.as_str(),
            a.started_lagging[0].lag_records,
            a.started_lagging[0].lag_ms
        ),
        ("launch-2", 2184, 7400)
    );
    assert_eq!(a.nodes[2].redis_connected, Some(false));
    assert_eq!(a.nodes[2].lagging_since, Some(at(T0)));

    // Still behind next time: no second Event.
    let again = assess(&pods, Some("launch-0"), &a.nodes, LIMITS);
    assert_eq!(lagging(&again), ["launch-2"]);
    assert!(again.started_lagging.is_empty());
}

#[test]
fn either_threshold_alone_makes_a_secondary_lag() {
    for (records, ms) in [(1001, 0), (0, 5001)] {
        let pods = sale_of_three(secondary(records, ms), Some(secondary(0, 0)));
        let a = assess(&pods, Some("launch-0"), &[], LIMITS);
        assert_eq!(lagging(&a), ["launch-1"], "{records} records, {ms} ms");
    }
    let pods = sale_of_three(secondary(1000, 5000), Some(secondary(0, 0)));
    let a = assess(&pods, Some("launch-0"), &[], LIMITS);
    assert!(lagging(&a).is_empty(), "at the limit is not over it");
}

#[test]
fn a_lagging_secondary_is_caught_up_only_below_half_of_both_limits() {
    let first = assess(
        &sale_of_three(secondary(5000, 9000), Some(secondary(0, 0))),
        Some("launch-0"),
        &[],
        LIMITS,
    );
    assert_eq!(lagging(&first), ["launch-1"]);

    // Under the limit but above half: still lagging, no Event, no flapping.
    let between = assess(
        &sale_of_three(secondary(800, 100), Some(secondary(0, 0))),
        Some("launch-0"),
        &first.nodes,
        LIMITS,
    );
    assert_eq!(lagging(&between), ["launch-1"]);
    assert!(between.started_lagging.is_empty() && between.stopped_lagging.is_empty());

    // Below half of both, after the hold: caught up, one Event with the figures.
    let back = assess_at(
        &sale_of_three(secondary(3, 40), Some(secondary(0, 0))),
        Some("launch-0"),
        &between.nodes,
        LIMITS,
        LAGGING_HOLD_MS / 1000,
    );
    assert!(lagging(&back).is_empty());
    assert_eq!(back.nodes[1].lagging_since, None);
    assert_eq!(back.stopped_lagging.len(), 1);
    assert_eq!(back.stopped_lagging[0].lag_records, 3);
    assert!(back.verdict.healthy);

    // A fresh node between half and the limit is not lagging.
    let fresh = assess(
        &sale_of_three(secondary(800, 100), Some(secondary(0, 0))),
        Some("launch-0"),
        &[],
        LIMITS,
    );
    assert!(lagging(&fresh).is_empty());
}

/// Thresholds at 0 under load: the lag is 0 one sample and a few records the next. The
/// verdict holds, so the status is written at most twice a hold, not on every sample.
#[test]
fn a_lagging_verdict_holds_so_a_node_at_the_edge_does_not_flap() {
    let zero = Thresholds {
        max_lag_records: 0,
        max_lag_ms: 0,
    };
    let mut prev: Vec<NodeReplicationStatus> = Vec::new();
    let mut flips = 0;
    // One sample every 2 s for 2 minutes, alternating 4 records behind and caught up.
    for i in 0..60 {
        let lag = if i % 2 == 0 { 4 } else { 0 };
        let a = assess_at(
            &sale_of_three(secondary(lag, lag), Some(secondary(0, 0))),
            Some("launch-0"),
            &prev,
            zero,
            2 * i,
        );
        flips += a.started_lagging.len() + a.stopped_lagging.len();
        prev = a.nodes;
    }
    let holds = 120 * 1000 / LAGGING_HOLD_MS as usize;
    assert!(
        flips <= 2 * holds,
        "{flips} flips in 120 s with a {LAGGING_HOLD_MS} ms hold"
    );
    assert!(flips >= 2, "it did lag and catch up: {flips}");

    // Within the hold, a secondary back to 0 is still lagging.
    let started = assess_at(
        &sale_of_three(secondary(4, 4), Some(secondary(0, 0))),
        Some("launch-0"),
        &[],
        zero,
        0,
    );
    let soon = assess_at(
        &sale_of_three(secondary(0, 0), Some(secondary(0, 0))),
        Some("launch-0"),
        &started.nodes,
        zero,
        LAGGING_HOLD_MS / 1000 - 1,
    );
    assert_eq!(lagging(&soon), ["launch-1"]);
    assert_eq!(soon.nodes[1].lagging_since, started.nodes[1].lagging_since);
}

#[test]
fn a_secondary_that_does_not_answer_keeps_its_verdict_and_is_not_following() {
    let behind = assess(
        &sale_of_three(secondary(0, 0), Some(status("secondary-behind.json"))),
        Some("launch-0"),
        &[],
        LIMITS,
    );
    // launch-2 killed: no answer. Not knowing is not news: still lagging, no Event.
    let gone = assess(
        &sale_of_three(secondary(0, 0), None),
        Some("launch-0"),
        &behind.nodes,
        LIMITS,
    );
    assert_eq!(lagging(&gone), ["launch-2"]);
    assert!(gone.started_lagging.is_empty() && gone.stopped_lagging.is_empty());
    // Its role is the one it last said (a failover beginning now records it).
    assert!(!gone.nodes[2].answering);
    assert_eq!(gone.nodes[2].role, Some(NodeRole::Secondary));
    assert_eq!(gone.nodes[2].role_epoch, behind.nodes[2].role_epoch);
    assert!(gone.nodes[2].role_epoch.is_some());

    // Never lagged and not answering: the condition says it is not following.
    let down = assess(
        &sale_of_three(secondary(0, 0), None),
        Some("launch-0"),
        &[],
        LIMITS,
    );
    assert!(!down.verdict.healthy);
    assert_eq!(down.verdict.reason, "SecondaryNotFollowing");
    assert!(down.verdict.message.contains("launch-2"));
}

#[test]
fn a_node_not_yet_told_it_is_a_secondary_is_not_following() {
    let pods = sale_of_three(secondary(0, 0), Some(status("standby.json")));
    let a = assess(&pods, Some("launch-0"), &[], LIMITS);
    assert_eq!(a.verdict.reason, "SecondaryNotFollowing");
    assert_eq!(a.nodes[2].role, Some(NodeRole::Standby));
    assert!(!a.nodes[2].lagging);
}

#[test]
fn a_single_node_has_nothing_to_replicate() {
    let pods = vec![pod("solo-0", Some(status("primary.json")))];
    let a = assess(&pods, Some("solo-0"), &[], LIMITS);
    assert!(a.verdict.healthy);
    assert_eq!(a.verdict.reason, "NoSecondaries");
}

/// The reconcile storm guard: live figures move on every loop (applied sequence, a few
/// records of lag, ms), the status must not.
#[test]
fn moving_lag_figures_leave_the_status_unchanged() {
    let now = at("2026-11-21T09:00:00Z");
    let mut prev = FlashSaleStatus::default();
    let a = assess(
        &sale_of_three(secondary(0, 0), Some(secondary(2, 4))),
        Some("launch-0"),
        &[],
        LIMITS,
    );
    apply_to_status(&mut prev, &a, Some(1), &now);
    assert!(condition_is(&prev, "ReplicationHealthy", "True"));

    for (i, (records, ms)) in [(0, 0), (7, 12), (1, 1), (420, 900)]
        .into_iter()
        .enumerate()
    {
        let mut primary = status("primary.json");
        primary.applied_seq += 1000 * i as u64;
        let pods = vec![
            pod("launch-0", Some(primary)),
            pod("launch-1", Some(secondary(records, ms))),
            pod("launch-2", Some(secondary(ms, records))),
        ];
        let mut next = prev.clone();
        let a = assess(&pods, Some("launch-0"), &next.nodes, LIMITS);
        apply_to_status(&mut next, &a, Some(1), &at("2026-11-21T09:05:00Z"));
        assert_eq!(
            next, prev,
            "status moved with lag {records} records / {ms} ms"
        );
    }
}

#[test]
fn the_condition_transition_time_moves_only_when_it_flips() {
    let mut s = FlashSaleStatus::default();
    let healthy = assess(
        &sale_of_three(secondary(0, 0), Some(secondary(0, 0))),
        Some("launch-0"),
        &[],
        LIMITS,
    );
    apply_to_status(&mut s, &healthy, Some(1), &at("2026-11-21T09:00:00Z"));
    let behind = assess(
        &sale_of_three(secondary(0, 0), Some(status("secondary-behind.json"))),
        Some("launch-0"),
        &s.nodes,
        LIMITS,
    );
    apply_to_status(&mut s, &behind, Some(1), &at("2026-11-21T09:01:00Z"));
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == "ReplicationHealthy")
        .unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "ReplicationLagging")
    );
    assert_eq!(c.last_transition_time, at("2026-11-21T09:01:00Z"));
    let still = assess(
        &sale_of_three(secondary(0, 0), Some(status("secondary-behind.json"))),
        Some("launch-0"),
        &s.nodes,
        LIMITS,
    );
    apply_to_status(&mut s, &still, Some(1), &at("2026-11-21T09:02:00Z"));
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == "ReplicationHealthy")
        .unwrap();
    assert_eq!(c.last_transition_time, at("2026-11-21T09:01:00Z"));
    assert_eq!(
        s.conditions
            .iter()
            .filter(|c| c.type_ == "ReplicationHealthy")
            .count(),
        1
    );
}

#[test]
fn thresholds_default_and_a_negative_one_is_refused_by_the_crd() {
    let sale: FlashSale = serde_saphyr::from_str(
        "apiVersion: flashsale.dev/v1alpha1\nkind: FlashSale\nmetadata: {name: ok}\nspec:\n  items: [{sku: a, stock: 5}]\n",
    )
    .unwrap();
    assert_eq!(Thresholds::from(&sale.spec.replication), LIMITS);
    let bad: FlashSale = serde_saphyr::from_str(&fixture("negative-max-lag.yaml")).unwrap();
    let err = kube::core::cel::validate_cel(&bad).expect_err("negative maxLagRecords accepted");
    assert!(format!("{err:?}").contains("maxLagRecords"), "{err:?}");
}

#[test]
fn metrics_carry_the_live_figures_and_forget_nodes_that_went_away() {
    let metrics = Metrics::default();
    let pods = sale_of_three(secondary(0, 0), Some(status("secondary-behind.json")));
    let a = assess(&pods, Some("launch-0"), &[], LIMITS);
    metrics.replication.record("shop", "launch", &pods, &a);
    let text = metrics.encode();
    for line in [
        r#"flashsale_operator_node_lag_records{namespace="shop",sale="launch",node="launch-2"} 2184"#,
        r#"flashsale_operator_node_lag_ms{namespace="shop",sale="launch",node="launch-2"} 7400"#,
        r#"flashsale_operator_node_applied_seq{namespace="shop",sale="launch",node="launch-0"} 420"#,
        r#"flashsale_operator_node_lagging{namespace="shop",sale="launch",node="launch-2"} 1"#,
        r#"flashsale_operator_node_lagging{namespace="shop",sale="launch",node="launch-1"} 0"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    // Scaled down to two nodes: launch-2 is no longer reported.
    metrics.replication.record(
        "shop",
        "launch",
        &pods[..2],
        &assess(&pods[..2], Some("launch-0"), &[], LIMITS),
    );
    assert!(!metrics.encode().contains(r#"node="launch-2""#));
    metrics.replication.forget("shop", "launch");
    assert!(!metrics.encode().contains(r#"sale="launch""#));
}
