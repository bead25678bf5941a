//! What wakes a sale's reconcile: a spec change, a deletion or an annotation, not the
//! operator's own status writes (each would wake it again: one pass per purchase batch
//! during a crowd). And every status write is guarded by the resourceVersion it read.

use flashsale_operator::controller::{sale_predicate, status_patch};
use flashsale_operator::crd::FlashSale;
use flashsale_operator::crd::FlashSaleStatus;
use kube::runtime::Predicate;

fn sale() -> FlashSale {
    serde_saphyr::from_str(
        "apiVersion: flashsale.dev/v1alpha1\nkind: FlashSale\n\
         metadata: {name: s, namespace: d, uid: u1, generation: 1, resourceVersion: '41'}\n\
         spec: {items: [{sku: a, stock: 1}]}\n",
    )
    .unwrap()
}

#[test]
fn status_writes_do_not_wake_the_controller_spec_deletion_and_annotations_do() {
    let p = sale_predicate();
    let base = sale();
    let h = |s: &FlashSale| p.hash_property(s);

    let mut status_only = base.clone();
    let mut st = status_only.status.clone().unwrap_or_default();
    st.sold = 42;
    st.epoch = 3;
    status_only.status = Some(st);
    status_only.metadata.resource_version = Some("42".into());
    assert_eq!(
        h(&status_only),
        h(&base),
        "a status write woke the controller"
    );

    let mut spec = base.clone();
    spec.spec.items[0].stock = 2;
    spec.metadata.generation = Some(2);
    assert_ne!(h(&spec), h(&base), "a spec change must wake it");

    let mut annotated = base.clone();
    annotated.metadata.annotations =
        Some([("flashsale.dev/switchover-to".to_string(), "s-1".to_string())].into());
    assert_ne!(h(&annotated), h(&base), "an annotation must wake it");

    let mut finalized = base.clone();
    finalized.metadata.finalizers = Some(vec!["flashsale.dev/cleanup".into()]);
    assert_ne!(h(&finalized), h(&base), "a finalizer change must wake it");
}

#[test]
fn a_status_write_names_the_resource_version_it_read() {
    let s = sale();
    let patch = status_patch(&s, &Default::default(), &Default::default());
    assert_eq!(patch["metadata"]["resourceVersion"], "41");
    assert!(patch["status"].is_object());
}

#[test]
fn a_status_write_removes_what_the_new_status_dropped() {
    let s = sale();
    let prev: FlashSaleStatus = serde_json::from_value(serde_json::json!({
        "epoch": 2,
        "failover": {"kind": "Failover", "step": "Promoting", "epoch": 3, "from": "s-0",
                     "reason": "primary node s-0 does not answer", "detectedAt": "2026-11-30T02:12:31Z",
                     "fenceStartedAt": "2026-11-30T02:12:35Z"},
        "primary": {"pod": "s-0", "epoch": 2, "since": "2026-11-30T02:00:00Z"},
    }))
    .unwrap();
    let next = FlashSaleStatus {
        epoch: 3,
        ..Default::default()
    };
    let patch = status_patch(&s, &prev, &next);
    // Without the null, a merge patch would leave the finished failover in the status.
    assert_eq!(patch["status"]["failover"], serde_json::Value::Null);
    assert!(
        patch["status"]
            .as_object()
            .unwrap()
            .contains_key("failover")
    );
    assert!(patch["status"].as_object().unwrap().contains_key("primary"));
    assert_eq!(patch["status"]["epoch"], 3);
}
