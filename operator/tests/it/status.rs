//! Status: tells the truth, and an unchanged sale yields an identical status (no write).

use flashsale_core::ItemView;
use flashsale_operator::crd::{FlashSaleStatus, Phase, PrimaryStatus};
use flashsale_operator::status::{Facts, Problem, condition_is, next_status};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

fn at(s: &str) -> Time {
    Time(s.parse().unwrap())
}

fn item(sku: &str, stock: u64, sold: u64, held: u64) -> ItemView {
    ItemView {
        sku: sku.into(),
        stock,
        sold,
        held,
        remaining: stock - sold - held,
        per_customer_limit: 0,
    }
}

fn selling() -> Facts {
    Facts {
        generation: Some(2),
        selector: "app.kubernetes.io/instance=spring,app.kubernetes.io/name=stock-node".into(),
        desired_replicas: 3,
        replicas: 3,
        ready_replicas: 3,
        primary: Some(PrimaryStatus {
            pod: "spring-0".into(),
            endpoint: Some("http://10.0.0.10:8080".into()),
        }),
        epoch: 1,
        primary_selling: true,
        primary_config_current: true,
        items: Some(vec![item("a", 100, 30, 5), item("b", 10, 10, 0)]),
        rolled_out: true,
        outdated: vec![],
        rollout_waits: None,
        problems: vec![],
        invalid: None,
        replication: None,
        primary_problem: None,
        failover: None,
        last_failover: None,
    }
}

#[test]
fn a_selling_sale_is_running_with_figures_from_the_primary() {
    let s = next_status(
        &FlashSaleStatus::default(),
        &selling(),
        &at("2026-11-21T08:00:00Z"),
    );
    assert_eq!(s.phase, Some(Phase::Running));
    assert_eq!((s.stock, s.sold, s.held, s.remaining), (110, 40, 5, 65));
    assert_eq!(s.ready.as_deref(), Some("3/3"));
    assert_eq!(s.observed_generation, Some(2));
    assert_eq!(s.primary.as_ref().unwrap().pod, "spring-0");
    assert!(condition_is(&s, "Ready", "True"));
    assert!(condition_is(&s, "Progressing", "False"));
    assert!(condition_is(&s, "Degraded", "False"));
}

/// Pods on an older pod template keep the sale Progressing (`RollingOut`, naming
/// them and why the rollout waits) while it goes on selling.
#[test]
fn pods_on_an_old_template_are_a_rollout_in_progress() {
    let mut f = selling();
    f.rolled_out = false;
    f.outdated = vec!["spring-0".into(), "spring-2".into()];
    f.rollout_waits = Some("the pod template rollout waits: spring-1 is not ready".into());
    let s = next_status(&FlashSaleStatus::default(), &f, &at("2026-11-21T08:00:00Z"));
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "RollingOut")
    );
    assert!(
        c.message
            .contains("spring-0, spring-2 on an older pod template")
            && c.message.contains("spring-1 is not ready"),
        "{}",
        c.message
    );
    assert!(condition_is(&s, "Ready", "True"));
}

#[test]
fn nothing_changed_means_the_same_status_later_so_no_write() {
    let first = next_status(
        &FlashSaleStatus::default(),
        &selling(),
        &at("2026-11-21T08:00:00Z"),
    );
    let again = next_status(&first, &selling(), &at("2026-11-21T08:05:00Z"));
    assert_eq!(first, again, "no timestamp moved");
}

#[test]
fn transition_time_moves_only_when_a_condition_flips() {
    let t0 = at("2026-11-21T08:00:00Z");
    let t1 = at("2026-11-21T08:01:00Z");
    let first = next_status(&FlashSaleStatus::default(), &selling(), &t0);
    let mut down = selling();
    down.problems = vec![Problem {
        reason: "PrimaryUnavailable",
        message: "primary pod spring-0 is not running".into(),
    }];
    down.primary_selling = false;
    let second = next_status(&first, &down, &t1);
    let get =
        |s: &FlashSaleStatus, t: &str| s.conditions.iter().find(|c| c.type_ == t).unwrap().clone();
    assert_eq!(get(&second, "Degraded").last_transition_time, t1);
    assert_eq!(get(&second, "Degraded").reason, "PrimaryUnavailable");
    assert_eq!(
        get(&second, "Progressing").last_transition_time,
        t0,
        "did not flip"
    );
    assert_eq!(second.phase, Some(Phase::Degraded));
}

#[test]
fn figures_stay_when_the_primary_cannot_be_read() {
    let first = next_status(
        &FlashSaleStatus::default(),
        &selling(),
        &at("2026-11-21T08:00:00Z"),
    );
    let mut unread = selling();
    unread.items = None;
    let s = next_status(&first, &unread, &at("2026-11-21T08:00:05Z"));
    assert_eq!(s.sold, 40, "last figures the primary gave");
}

#[test]
fn a_sale_starting_up_is_pending_and_progressing() {
    let facts = Facts {
        desired_replicas: 3,
        replicas: 1,
        selector: "x=y".into(),
        ..Facts::default()
    };
    let s = next_status(
        &FlashSaleStatus::default(),
        &facts,
        &at("2026-11-21T08:00:00Z"),
    );
    assert_eq!(s.phase, Some(Phase::Pending));
    assert_eq!(s.ready.as_deref(), Some("0/3"));
    let progressing = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_str()),
        ("True", "ScalingUp")
    );
    let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason, "NoPrimary");
}

#[test]
fn an_invalid_spec_says_which_field_and_keeps_the_last_figures() {
    let first = next_status(
        &FlashSaleStatus::default(),
        &selling(),
        &at("2026-11-21T08:00:00Z"),
    );
    let facts = Facts {
        invalid: Some("spec.window.endsAt: must be after startsAt".into()),
        ..selling()
    };
    let s = next_status(&first, &facts, &at("2026-11-21T08:01:00Z"));
    assert_eq!(s.phase, Some(Phase::Invalid));
    let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(ready.message.contains("spec.window.endsAt"));
    assert_eq!(s.sold, 40);
}
