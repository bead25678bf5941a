//! Role planning: who becomes primary, at which epoch, and what each node is told.

use flashsale_core::admin::{NodeStatus, Role};
use flashsale_operator::observe::PodView;
use flashsale_operator::roles::{Known, RolePlan, Step, assignment_note};

const HASH: &str = "cafebabe";

fn node(role: Role, epoch: u64, configured: bool) -> NodeStatus {
    NodeStatus {
        role,
        epoch,
        sale: configured.then(|| "spring".to_string()),
        applied_seq: 0,
        durable_seq: 0,
        items: vec![],
        purchases_per_s: 0.0,
        now_ms: 0,
        replication: None,
        lease: None,
        epochs: vec![],
        load: Default::default(),
    }
}

fn pod(ordinal: u32) -> PodView {
    PodView {
        name: format!("spring-{ordinal}"),
        uid: Some(format!("uid-{ordinal}")),
        ordinal: Some(ordinal),
        ip: Some(format!("10.0.0.{}", ordinal + 10)),
        running: true,
        deleting: false,
        ready: false,
        container_running: true,
        role_label: None,
        config_hash: None,
        role_assignment: None,
        revision: None,
        runs_quorum: false,
        node: Some(Ok(node(Role::Standby, 0, false))),
    }
}

/// A pod whose node already runs `role` at `epoch` with the current config.
fn settled(ordinal: u32, role: Role, epoch: u64, primary_url: Option<&str>) -> PodView {
    let mut p = pod(ordinal);
    p.ready = true;
    p.role_label = Some(
        if role == Role::Primary {
            "primary"
        } else {
            "secondary"
        }
        .to_string(),
    );
    p.config_hash = Some(HASH.to_string());
    p.role_assignment = Some(assignment_note(role, epoch, primary_url));
    p.node = Some(Ok(node(role, epoch, true)));
    p
}

/// The plan as the controller asks for it: the primary's lease held, and the primary
/// may be given its role only while the sale has none.
fn plan(primary: Option<&str>, epoch: u64, pods: &[PodView], hash: &str) -> RolePlan {
    flashsale_operator::roles::plan(
        Known {
            primary,
            epoch,
            config_hash: hash,
            lease_held: true,
            first_assignment: primary.is_none(),
        },
        pods,
    )
}

fn steps_for<'a>(steps: &'a [Step], pod: &str) -> Vec<&'a Step> {
    steps
        .iter()
        .filter(|s| match s {
            Step::PushConfig { pod: p }
            | Step::AssignRole { pod: p, .. }
            | Step::Label { pod: p, .. }
            | Step::GrantLease { pod: p, .. } => p == pod,
        })
        .collect()
}

#[test]
fn first_primary_is_the_lowest_ordinal_node_that_answers_at_epoch_one() {
    let mut pods = vec![pod(0), pod(1), pod(2)];
    pods[0].node = Some(Err("connection refused".into()));
    let plan = plan(None, 0, &pods, HASH);
    assert_eq!(plan.primary.as_deref(), Some("spring-1"));
    assert!(plan.newly_chosen);
    assert_eq!(plan.epoch, 1);
    // The primary is told its role, then configured (a node takes the sale's config
    // only as the primary), then labelled — before anyone else.
    let first: Vec<_> = plan.steps.iter().take(3).cloned().collect();
    assert_eq!(
        first[1],
        Step::PushConfig {
            pod: "spring-1".into()
        }
    );
    match &first[0] {
        Step::AssignRole { pod, assignment } => {
            assert_eq!(pod, "spring-1");
            assert_eq!(
                (
                    assignment.role,
                    assignment.epoch,
                    assignment.primary_url.as_deref()
                ),
                (Role::Primary, 1, None)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        first[2],
        Step::Label {
            pod: "spring-1".into(),
            role: "primary"
        }
    );
    // The other answering node follows the primary's address, and is not configured
    // directly: its WAL must stay a copy of the primary's.
    let secondary = steps_for(&plan.steps, "spring-2");
    assert!(
        !secondary
            .iter()
            .any(|s| matches!(s, Step::PushConfig { .. })),
        "{secondary:?}"
    );
    assert!(secondary.iter().any(|s| matches!(s, Step::AssignRole { assignment, .. }
        if assignment.role == Role::Secondary && assignment.primary_url.as_deref() == Some("http://10.0.0.11:8080"))));
    assert!(secondary.contains(&&Step::Label {
        pod: "spring-2".into(),
        role: "secondary"
    }));
    assert!(
        steps_for(&plan.steps, "spring-0").is_empty(),
        "a node that does not answer is told nothing"
    );
}

#[test]
fn nothing_is_chosen_while_no_node_answers() {
    let mut pods = vec![pod(0), pod(1)];
    pods[0].running = false;
    pods[1].node = None;
    let plan = plan(None, 0, &pods, HASH);
    assert_eq!(plan.primary, None);
    assert!(plan.steps.is_empty());
}

#[test]
fn a_settled_sale_needs_no_calls() {
    let url = "http://10.0.0.10:8080";
    let pods = vec![
        settled(0, Role::Primary, 1, None),
        settled(1, Role::Secondary, 1, Some(url)),
        settled(2, Role::Secondary, 1, Some(url)),
    ];
    let plan = plan(Some("spring-0"), 1, &pods, HASH);
    assert_eq!(plan.primary.as_deref(), Some("spring-0"));
    assert!(!plan.newly_chosen);
    assert!(plan.steps.is_empty(), "{:?}", plan.steps);
}

#[test]
fn the_role_label_not_the_ordinal_says_who_is_primary() {
    let url = "http://10.0.0.12:8080";
    let pods = vec![
        settled(0, Role::Secondary, 1, Some(url)),
        settled(1, Role::Secondary, 1, Some(url)),
        settled(2, Role::Primary, 1, None),
    ];
    // Operator restarted and lost nothing but its memory: status empty, labels intact.
    let plan = plan(None, 1, &pods, HASH);
    assert_eq!(plan.primary.as_deref(), Some("spring-2"));
    assert!(!plan.newly_chosen);
    assert!(plan.steps.is_empty(), "{:?}", plan.steps);
}

#[test]
fn a_recreated_primary_pod_is_given_back_its_label() {
    let url = "http://10.0.0.11:8080";
    // spring-1 was primary; its pod was re-created (no label); its node replayed its WAL
    // and is the primary of epoch 1 again.
    let mut recreated = settled(1, Role::Primary, 1, None);
    recreated.role_label = None;
    let pods = vec![
        settled(0, Role::Secondary, 1, Some(url)),
        recreated,
        settled(2, Role::Secondary, 1, Some(url)),
    ];
    let plan = plan(Some("spring-1"), 1, &pods, HASH);
    assert_eq!(plan.primary.as_deref(), Some("spring-1"));
    assert!(
        !plan.newly_chosen,
        "no new primary is chosen: that would be failover"
    );
    assert_eq!(
        steps_for(&plan.steps, "spring-1"),
        [&Step::Label {
            pod: "spring-1".into(),
            role: "primary"
        }]
    );
    assert!(steps_for(&plan.steps, "spring-0").is_empty());
}

#[test]
fn a_primary_that_lost_its_role_is_never_re_asserted() {
    let url = "http://10.0.0.11:8080";
    // spring-1 was primary and has sold; it now says standby (a new, empty volume): giving
    // it the role back would start the sale again from an empty log. Replacing it is the
    // failover's job.
    let mut lost = pod(1);
    lost.node = Some(Ok(node(Role::Standby, 0, false)));
    let pods = vec![
        settled(0, Role::Secondary, 1, Some(url)),
        lost,
        settled(2, Role::Secondary, 1, Some(url)),
    ];
    let plan = plan(Some("spring-1"), 1, &pods, HASH);
    assert!(
        steps_for(&plan.steps, "spring-1").is_empty(),
        "{:?}",
        plan.steps
    );
}

#[test]
fn the_primary_gets_its_lease_before_its_config() {
    let pods = vec![pod(0), pod(1)];
    let plan = flashsale_operator::roles::plan(
        Known {
            primary: None,
            epoch: 0,
            config_hash: HASH,
            lease_held: false,
            first_assignment: true,
        },
        &pods,
    );
    let kinds: Vec<&str> = steps_for(&plan.steps, "spring-0")
        .iter()
        .map(|s| match s {
            Step::AssignRole { .. } => "role",
            Step::GrantLease { .. } => "lease",
            Step::PushConfig { .. } => "config",
            Step::Label { .. } => "label",
        })
        .collect();
    assert_eq!(kinds, ["role", "lease", "config", "label"]);
}

#[test]
fn the_epoch_never_goes_back() {
    let mut pods = vec![pod(0)];
    pods[0].node = Some(Ok(node(Role::Standby, 7, false)));
    let plan = plan(None, 2, &pods, HASH);
    assert_eq!(
        plan.epoch, 7,
        "a node that knows epoch 7 would refuse (fenced) anything older"
    );
}

#[test]
fn a_config_change_is_pushed_to_the_primary_only_without_touching_roles() {
    let url = "http://10.0.0.10:8080";
    let pods = vec![
        settled(0, Role::Primary, 1, None),
        settled(1, Role::Secondary, 1, Some(url)),
    ];
    let plan = plan(Some("spring-0"), 1, &pods, "deadbeef");
    assert_eq!(
        plan.steps,
        vec![Step::PushConfig {
            pod: "spring-0".into()
        }],
        "secondaries replicate it"
    );
}

#[test]
fn secondaries_follow_a_primary_that_moved() {
    let old_url = "http://10.0.0.99:8080";
    let pods = vec![
        settled(0, Role::Primary, 1, None),
        settled(1, Role::Secondary, 1, Some(old_url)),
    ];
    let plan = plan(Some("spring-0"), 1, &pods, HASH);
    assert!(
        matches!(&plan.steps[..], [Step::AssignRole { pod, assignment }]
        if pod == "spring-1" && assignment.primary_url.as_deref() == Some("http://10.0.0.10:8080"))
    );
}

#[test]
fn secondaries_wait_in_standby_while_the_primary_is_down() {
    let mut primary = pod(0);
    primary.running = false;
    primary.node = None;
    let pods = vec![primary, pod(1)];
    let plan = plan(Some("spring-0"), 1, &pods, HASH);
    assert_eq!(plan.primary.as_deref(), Some("spring-0"));
    assert!(plan.steps.is_empty(), "{:?}", plan.steps);
}

/// A sale made again under the name of a deleted one whose volumes were kept: its nodes
/// answer with the old logs. The one with the most advanced log becomes primary (not
/// the lowest ordinal), at a new epoch, so a node answering later with a longer log of
/// the old epoch is seen to have parted from it. A new sale (empty logs) is unchanged:
/// the lowest ordinal, epoch 1.
#[test]
fn a_sale_made_again_on_kept_volumes_starts_from_its_most_advanced_log() {
    let logged = |ordinal: u32, epoch: u64, durable: u64| {
        let mut p = pod(ordinal);
        let mut n = node(Role::Secondary, epoch, true);
        n.durable_seq = durable;
        n.applied_seq = durable;
        n.epochs = vec![flashsale_core::replication::EpochStart {
            epoch,
            first_seq: 1,
        }];
        p.node = Some(Ok(n));
        p
    };
    let pods = vec![logged(0, 5, 120), logged(1, 5, 180), logged(2, 4, 300)];
    let p = plan(None, 0, &pods, HASH);
    assert_eq!(
        (p.primary.as_deref(), p.epoch),
        (Some("spring-1"), 6),
        "the longest log of the newest epoch, at a new epoch"
    );
    let fresh = vec![pod(0), pod(1), pod(2)];
    let p = plan(None, 0, &fresh, HASH);
    assert_eq!((p.primary.as_deref(), p.epoch), (Some("spring-0"), 1));
}
