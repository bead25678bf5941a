//! The status and the Events one reconcile pass produces, for the main transitions of a
//! sale, without a cluster: the pass's pure steps (`roles::plan`, then
//! `conclude::conclude` on what the node calls answered) from fixtures.

use flashsale_core::admin::{NodeStatus, Role};
use flashsale_core::{ItemView, SaleConfig};
use flashsale_operator::apply::Applied;
use flashsale_operator::conclude::{Concluded, FailoverPart, Pass, conclude};
use flashsale_operator::crd::{FlashSale, FlashSaleStatus, Phase, ReclaimPolicy};
use flashsale_operator::events::{self, Kind, Note};
use flashsale_operator::execute::Outcome;
use flashsale_operator::failover::keeper::LeaseView;
use flashsale_operator::observe::{Observed, PodView};
use flashsale_operator::roles::{Known, RolePlan, Step, assignment_note, plan};
use flashsale_operator::rollout::{self, Plan as RolloutPlan};
use flashsale_operator::status::{Problem, condition_is};
use flashsale_operator::validate::{config_hash, validate};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

fn sale(replicas: i32, stock: u64) -> FlashSale {
    let text = format!(
        "apiVersion: flashsale.dev/v1alpha1\nkind: FlashSale\nmetadata: {{name: spring, namespace: shop, uid: u1, generation: 1}}\n\
         spec:\n  items: [{{sku: tee, stock: {stock}}}]\n  nodes: {{replicas: {replicas}}}\n"
    );
    serde_saphyr::from_str(&text).unwrap()
}

fn at(s: &str) -> Time {
    Time(s.parse().unwrap())
}

fn node(role: Role, epoch: u64, config: Option<&SaleConfig>, sold: u64) -> NodeStatus {
    NodeStatus {
        role,
        epoch,
        sale: config.map(|c| c.name.clone()),
        applied_seq: 0,
        durable_seq: 0,
        items: config
            .map(|c| {
                c.items
                    .iter()
                    .map(|i| ItemView {
                        sku: i.sku.clone(),
                        stock: i.stock,
                        sold,
                        held: 0,
                        remaining: i.stock - sold,
                        per_customer_limit: i.per_customer_limit,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        purchases_per_s: 0.0,
        now_ms: 0,
        replication: None,
        lease: None,
        epochs: vec![],
        load: Default::default(),
    }
}

fn pod(ordinal: u32, node: Option<Result<NodeStatus, String>>, ready: bool) -> PodView {
    PodView {
        name: format!("spring-{ordinal}"),
        uid: Some(format!("uid-{ordinal}")),
        ordinal: Some(ordinal),
        ip: Some(format!("10.0.0.{}", ordinal + 10)),
        running: true,
        deleting: false,
        ready,
        container_running: true,
        role_label: None,
        config_hash: None,
        role_assignment: None,
        revision: None,
        runs_quorum: false,
        node,
    }
}

/// A pod whose node runs `role` at `epoch` with `config`, as the operator left it.
fn settled(ordinal: u32, role: Role, config: &SaleConfig, sold: u64) -> PodView {
    let primary_url = (role == Role::Secondary).then_some("http://10.0.0.10:8080");
    let mut p = pod(ordinal, Some(Ok(node(role, 1, Some(config), sold))), true);
    p.role_label = Some(role.as_str().to_string());
    p.config_hash = (role == Role::Primary).then(|| config_hash(config));
    p.role_assignment = Some(assignment_note(role, 1, primary_url));
    p
}

/// What the caches hold: these pods, and a StatefulSet that has rolled out as many.
fn observed(pods: Vec<PodView>) -> Observed {
    let statefulset = StatefulSet {
        status: Some(StatefulSetStatus {
            replicas: pods.len() as i32,
            updated_replicas: Some(pods.len() as i32),
            current_revision: Some("r1".into()),
            update_revision: Some("r1".into()),
            ..StatefulSetStatus::default()
        }),
        ..StatefulSet::default()
    };
    Observed {
        pods,
        statefulset: Some(std::sync::Arc::new(statefulset)),
        admin_token: Some("t".into()),
        ..Observed::default()
    }
}

/// The keeper renews the plan's primary's lease at its epoch (granted).
fn held_lease(role_plan: &RolePlan) -> LeaseView {
    LeaseView {
        pod: role_plan.primary.clone(),
        epoch: role_plan.epoch,
        held: true,
        granted: true,
        ..LeaseView::default()
    }
}

/// Plans, "executes" every step as the nodes would accept it (the views then show what
/// the nodes answered), and concludes.
fn pass(
    sale: &FlashSale,
    prev: &FlashSaleStatus,
    mut seen: Observed,
    now: &str,
) -> (RolePlan, Concluded) {
    let config = validate(sale).unwrap();
    let hash = config_hash(&config);
    let role_plan = plan(
        Known {
            primary: prev.primary.as_ref().map(|p| p.pod.as_str()),
            epoch: prev.epoch,
            config_hash: &hash,
            lease_held: true,
            first_assignment: prev.items.is_empty(),
        },
        &seen.pods,
    );
    let mut outcomes = Vec::new();
    for step in &role_plan.steps {
        let view = seen.pods.iter_mut().find(|p| p.name == step.pod()).unwrap();
        let done = match step {
            Step::PushConfig { .. } => {
                view.config_hash = Some(hash.clone());
                let role = view.node_status().unwrap().role;
                view.node = Some(Ok(node(role, role_plan.epoch, Some(&config), 0)));
                format!("runs config {hash}")
            }
            Step::AssignRole { assignment, .. } => {
                let note = assignment_note(
                    assignment.role,
                    assignment.epoch,
                    assignment.primary_url.as_deref(),
                );
                view.role_assignment = Some(note.clone());
                view.node = Some(Ok(node(
                    assignment.role,
                    assignment.epoch,
                    Some(&config),
                    0,
                )));
                note
            }
            Step::Label { role, .. } => {
                view.role_label = Some(role.to_string());
                format!("labelled {role}")
            }
            Step::GrantLease { epoch, .. } => format!("holds the selling lease for epoch {epoch}"),
        };
        outcomes.push(Outcome {
            step: step.clone(),
            result: Ok(done),
        });
    }
    let done = conclude_with(
        sale,
        prev,
        &seen,
        &role_plan,
        &outcomes,
        now,
        held_lease(&role_plan),
    );
    (role_plan, done)
}

/// Concludes a pass over `seen` whose node calls came out as `outcomes`, the keeper
/// holding `lease`, the rollout planned from the pods.
fn conclude_with(
    sale: &FlashSale,
    prev: &FlashSaleStatus,
    seen: &Observed,
    role_plan: &RolePlan,
    outcomes: &[Outcome],
    now: &str,
    lease: LeaseView,
) -> Concluded {
    let config = validate(sale).unwrap();
    let hash = config_hash(&config);
    let now = at(now);
    conclude(&Pass {
        sale,
        prev,
        observed: seen,
        role_plan,
        config: &config,
        hash: &hash,
        selector: "x=y".into(),
        applied: Applied::default(),
        outcomes,
        now: &now,
        failover: FailoverPart {
            lease,
            ..FailoverPart::default()
        },
        rollout: &rollout::plan(
            seen,
            &rollout::Sale {
                primary: role_plan.primary.as_deref(),
                replicas: sale.spec.nodes.replicas,
                in_failover: false,
                primary_failing: false,
                lagging: &[],
                last_replaced: None,
            },
        ),
    })
}

/// The plan for pods whose primary, spring-0, sells at epoch 1 with its lease held.
fn steady_plan(seen: &Observed, config_hash: &str) -> RolePlan {
    plan(
        Known {
            primary: Some("spring-0"),
            epoch: 1,
            config_hash,
            lease_held: true,
            first_assignment: false,
        },
        &seen.pods,
    )
}

/// The status of a sale whose first primary, spring-0, was chosen at epoch 1.
fn with_primary() -> FlashSaleStatus {
    FlashSaleStatus {
        primary: Some(flashsale_operator::crd::PrimaryStatus {
            pod: "spring-0".into(),
            endpoint: None,
        }),
        epoch: 1,
        ..FlashSaleStatus::default()
    }
}

fn reasons(notes: &[Note]) -> Vec<&'static str> {
    notes.iter().map(|n| n.reason).collect()
}

fn note<'a>(notes: &'a [Note], reason: &str) -> &'a Note {
    notes
        .iter()
        .find(|n| n.reason == reason)
        .unwrap_or_else(|| panic!("no {reason} in {:?}", reasons(notes)))
}

#[test]
fn first_primary_chosen_configured_and_told_with_one_event_each() {
    let sale = sale(2, 100);
    let standby = |o| pod(o, Some(Ok(node(Role::Standby, 0, None, 0))), false);
    let (plan, done) = pass(
        &sale,
        &FlashSaleStatus::default(),
        observed(vec![standby(0), standby(1)]),
        "2026-11-30T10:00:00Z",
    );
    assert_eq!(plan.primary.as_deref(), Some("spring-0"));
    let s = &done.status;
    assert_eq!(s.primary.as_ref().unwrap().pod, "spring-0");
    assert_eq!(s.epoch, 1);
    let chosen = note(&done.notes, "PrimaryChosen");
    assert!(chosen.message.contains("spring-0") && chosen.message.contains("epoch 1"));
    assert_eq!(chosen.kind, Kind::Transition);
    let config = note(&done.notes, "ConfigPushed");
    assert_eq!(config.pod.as_deref(), Some("spring-0"));
    assert!(config.message.contains("runs config"), "{}", config.message);
    let roles: Vec<_> = done
        .notes
        .iter()
        .filter(|n| n.reason == "RoleAssigned")
        .map(|n| n.message.as_str())
        .collect();
    assert_eq!(
        roles,
        [
            "spring-0 is primary@1",
            "spring-1 is secondary@1 http://10.0.0.10:8080"
        ]
    );
    assert!(done.notes.iter().all(|n| !n.warning), "{:?}", done.notes);
    // Not ready yet (readiness follows on the next pass): pending, not "Selling".
    assert_eq!(s.phase, Some(Phase::Pending));
    assert!(!reasons(&done.notes).contains(&"Selling"));
}

#[test]
fn a_settled_sale_starts_selling_once_then_says_nothing_more() {
    let sale = sale(2, 100);
    let config = validate(&sale).unwrap();
    let prev = with_primary();
    let nodes = || {
        observed(vec![
            settled(0, Role::Primary, &config, 5),
            settled(1, Role::Secondary, &config, 5),
        ])
    };
    let (plan, first) = pass(&sale, &prev, nodes(), "2026-11-30T10:00:00Z");
    assert!(plan.steps.is_empty(), "{:?}", plan.steps);
    assert_eq!(first.status.phase, Some(Phase::Running));
    assert_eq!(first.status.sold, 5);
    assert!(reasons(&first.notes).contains(&"Selling"));
    let (_, again) = pass(&sale, &first.status, nodes(), "2026-11-30T10:00:05Z");
    assert_eq!(again.status, first.status, "nothing moved: no status write");
    assert!(again.notes.is_empty(), "{:?}", again.notes);
}

#[test]
fn an_unreachable_primary_degrades_the_sale_with_one_warning_naming_it() {
    let sale = sale(2, 100);
    let config = validate(&sale).unwrap();
    let healthy = observed(vec![
        settled(0, Role::Primary, &config, 5),
        settled(1, Role::Secondary, &config, 5),
    ]);
    let prev = pass(
        &sale,
        &with_primary(),
        healthy.clone(),
        "2026-11-30T10:00:00Z",
    )
    .1
    .status;
    let mut down = healthy;
    down.pods[0].node = Some(Err("unreachable: connection refused".into()));
    down.pods[0].ready = false;
    let (_, done) = pass(&sale, &prev, down, "2026-11-30T10:00:10Z");
    let s = &done.status;
    assert_eq!(s.phase, Some(Phase::Degraded));
    assert!(condition_is(s, "Degraded", "True"));
    assert!(condition_is(s, "Ready", "False"));
    assert_eq!(s.sold, 5, "the last figures the primary gave stay");
    let warning = note(&done.notes, "Degraded");
    assert!(warning.warning);
    assert!(
        warning.message.contains("spring-0") && warning.message.contains("connection refused"),
        "{}",
        warning.message
    );
    assert_eq!(
        done.notes.iter().filter(|n| n.reason == "Degraded").count(),
        1
    );
}

#[test]
fn a_stock_change_is_pushed_to_the_primary_and_rolls_out() {
    let before = sale(2, 100);
    let old = validate(&before).unwrap();
    let prev = with_primary();
    let (_, running) = pass(
        &before,
        &prev,
        observed(vec![
            settled(0, Role::Primary, &old, 0),
            settled(1, Role::Secondary, &old, 0),
        ]),
        "2026-11-30T10:00:00Z",
    );
    let mut after = sale(2, 150);
    after.metadata.generation = Some(2);
    let (plan, done) = pass(
        &after,
        &running.status,
        observed(vec![
            settled(0, Role::Primary, &old, 0),
            settled(1, Role::Secondary, &old, 0),
        ]),
        "2026-11-30T10:01:00Z",
    );
    assert_eq!(
        plan.steps,
        [Step::PushConfig {
            pod: "spring-0".into()
        }]
    );
    assert_eq!(reasons(&done.notes), ["ConfigPushed"]);
    assert_eq!(done.status.stock, 150);
    // The secondary has not replicated the change yet: the rollout is in progress.
    assert!(condition_is(&done.status, "Progressing", "True"));
    let new = validate(&after).unwrap();
    let (_, rolled) = pass(
        &after,
        &done.status,
        observed(vec![
            settled(0, Role::Primary, &new, 0),
            settled(1, Role::Secondary, &new, 0),
        ]),
        "2026-11-30T10:01:05Z",
    );
    assert_eq!(reasons(&rolled.notes), ["RolledOut"]);
    assert_eq!(rolled.status.observed_generation, Some(2));
}

/// With `OnDelete` the StatefulSet's current revision stays the first one for good
/// (only its own rolling update moves it): a sale whose every pod runs the update
/// revision is rolled out; one with a pod on an older template is `RollingOut`, naming it.
#[test]
fn every_pod_on_the_update_revision_is_rolled_out_whatever_the_current_revision() {
    let sale = sale(2, 100);
    let config = validate(&sale).unwrap();
    let on = |revisions: [&str; 2]| {
        let mut seen = observed(vec![
            settled(0, Role::Primary, &config, 0),
            settled(1, Role::Secondary, &config, 0),
        ]);
        for (p, r) in seen.pods.iter_mut().zip(revisions) {
            p.revision = Some(r.to_string());
        }
        let mut sts = (*seen.statefulset.take().unwrap()).clone();
        let status = sts.status.as_mut().unwrap();
        status.current_revision = Some("r1".into());
        status.update_revision = Some("r2".into());
        status.updated_replicas = Some(revisions.iter().filter(|r| **r == "r2").count() as i32);
        seen.statefulset = Some(std::sync::Arc::new(sts));
        seen
    };
    let progressing = |c: &Concluded| {
        let p = c
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Progressing")
            .unwrap()
            .clone();
        (p.status, p.reason, p.message)
    };
    let (_, done) = pass(
        &sale,
        &with_primary(),
        on(["r2", "r2"]),
        "2026-11-30T10:00:00Z",
    );
    let (status, reason, _) = progressing(&done);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "RolledOut"));
    let (_, rolling) = pass(
        &sale,
        &with_primary(),
        on(["r1", "r2"]),
        "2026-11-30T10:00:00Z",
    );
    let (status, reason, message) = progressing(&rolling);
    assert_eq!((status.as_str(), reason.as_str()), ("True", "RollingOut"));
    assert!(
        message.starts_with("spring-0 on an older pod template"),
        "{message}"
    );
}

#[test]
fn scaling_down_is_progress_until_the_extra_node_is_gone() {
    let sale3 = sale(3, 100);
    let config = validate(&sale3).unwrap();
    let three = || {
        observed(vec![
            settled(0, Role::Primary, &config, 0),
            settled(1, Role::Secondary, &config, 0),
            settled(2, Role::Secondary, &config, 0),
        ])
    };
    let prev = with_primary();
    let (_, running) = pass(&sale3, &prev, three(), "2026-11-30T10:00:00Z");
    let mut sale2 = sale(2, 100);
    sale2.metadata.generation = Some(2);
    let (_, scaling) = pass(&sale2, &running.status, three(), "2026-11-30T10:00:10Z");
    let progressing = scaling
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_str()),
        ("True", "ScalingDown")
    );
    assert_eq!(scaling.status.ready.as_deref(), Some("3/2"));
    let mut two = three();
    two.pods.pop();
    let (_, done) = pass(&sale2, &scaling.status, two, "2026-11-30T10:00:20Z");
    assert_eq!(done.status.ready.as_deref(), Some("2/2"));
    assert_eq!(reasons(&done.notes), ["RolledOut"]);
}

#[test]
fn a_failed_node_call_is_a_warning_and_a_problem() {
    let sale = sale(1, 10);
    let config = validate(&sale).unwrap();
    let seen = observed(vec![pod(
        0,
        Some(Ok(node(Role::Standby, 0, None, 0))),
        false,
    )]);
    let role_plan = plan(
        Known {
            primary: None,
            epoch: 0,
            config_hash: &config_hash(&config),
            lease_held: true,
            first_assignment: true,
        },
        &seen.pods,
    );
    let outcomes = vec![Outcome {
        step: role_plan.steps[0].clone(),
        result: Err(Problem {
            reason: "ConfigRejected",
            message: "spring-0: answered 400: field `items[0].stock`".into(),
        }),
    }];
    let now = at("2026-11-30T10:00:00Z");
    let done = conclude(&Pass {
        sale: &sale,
        prev: &FlashSaleStatus::default(),
        observed: &seen,
        role_plan: &role_plan,
        config: &config,
        hash: &config_hash(&config),
        selector: "x=y".into(),
        applied: Applied {
            statefulset_created: true,
            ..Applied::default()
        },
        outcomes: &outcomes,
        now: &now,
        failover: FailoverPart::default(),
        rollout: &RolloutPlan::default(),
    });
    assert_eq!(reasons(&done.notes)[..2], ["Created", "ConfigRejected"]);
    assert!(note(&done.notes, "ConfigRejected").warning);
    assert_eq!(done.status.phase, Some(Phase::Degraded));
    let degraded = done
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(degraded.reason, "ConfigRejected");
}

/// A stock change the primary refuses (below what it sold) leaves it selling on its
/// previous config: the sale stays Ready (it sells), Degraded says why the change is
/// not taken. It read Ready False, "not selling yet", while every purchase succeeded.
#[test]
fn a_refused_config_change_leaves_the_sale_ready_on_its_previous_config() {
    let before = sale(2, 100);
    let old = validate(&before).unwrap();
    let nodes = || {
        observed(vec![
            settled(0, Role::Primary, &old, 60),
            settled(1, Role::Secondary, &old, 60),
        ])
    };
    let (_, selling) = pass(&before, &with_primary(), nodes(), "2026-11-30T10:00:00Z");
    assert!(condition_is(&selling.status, "Ready", "True"));
    let mut after = sale(2, 50);
    after.metadata.generation = Some(2);
    let seen = nodes();
    let role_plan = steady_plan(&seen, &config_hash(&validate(&after).unwrap()));
    let push = role_plan
        .steps
        .iter()
        .find(|s| matches!(s, Step::PushConfig { .. }))
        .expect("the new config is pushed")
        .clone();
    let outcomes = vec![Outcome {
        step: push,
        result: Err(Problem {
            reason: "ConfigRejected",
            message: "spring-0: answered 409: stock 50 of tee is below the 60 sold or held".into(),
        }),
    }];
    let done = conclude_with(
        &after,
        &selling.status,
        &seen,
        &role_plan,
        &outcomes,
        "2026-11-30T10:00:10Z",
        held_lease(&role_plan),
    );
    let ready = done
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Selling")
    );
    assert!(
        ready.message.contains("previous config"),
        "{}",
        ready.message
    );
    assert!(condition_is(&done.status, "Degraded", "True"));
    assert!(
        !reasons(&done.notes).contains(&"Selling"),
        "no flap: {:?}",
        done.notes
    );
}

/// A primary whose lease the keeper has not granted (a promotion whose first renewal
/// failed) sells nothing (its node refuses every purchase without one): not Ready.
#[test]
fn a_primary_without_a_granted_lease_is_not_selling() {
    let sale = sale(2, 100);
    let config = validate(&sale).unwrap();
    let seen = observed(vec![
        settled(0, Role::Primary, &config, 5),
        settled(1, Role::Secondary, &config, 5),
    ]);
    let role_plan = steady_plan(&seen, &config_hash(&config));
    let status_with = |lease: LeaseView| {
        conclude_with(
            &sale,
            &with_primary(),
            &seen,
            &role_plan,
            &[],
            "2026-11-30T10:00:00Z",
            lease,
        )
        .status
    };
    assert!(condition_is(
        &status_with(held_lease(&role_plan)),
        "Ready",
        "True"
    ));
    let refused = LeaseView {
        granted: false,
        ..held_lease(&role_plan)
    };
    assert!(condition_is(&status_with(refused), "Ready", "False"));
    let other = LeaseView {
        pod: Some("spring-1".into()),
        ..held_lease(&role_plan)
    };
    assert!(condition_is(&status_with(other), "Ready", "False"));
}

#[test]
fn deleting_a_sale_tells_its_final_tally_and_what_became_of_the_volumes() {
    let mut last = FlashSaleStatus::default();
    (last.sold, last.stock, last.held) = (640, 650, 10);
    let n = events::deleted(&last, ReclaimPolicy::Retain);
    assert_eq!(n.reason, "Deleted");
    assert!(
        n.message.contains("640 sold of 650 (10 held)"),
        "{}",
        n.message
    );
    assert!(n.message.contains("retained"));
    assert!(
        events::deleted(&last, ReclaimPolicy::Delete)
            .message
            .contains("WAL volumes deleted")
    );
}
