//! One home for the sale's rules: every limit of `flashsale_core::rules` is what the CRD
//! tells the API server (schema bounds, pattern, CEL) and what the operator's validation
//! refuses, so the API server refuses exactly the sales a node would refuse.

use flashsale_core::rules::{
    ITEMS_MAX, PER_CUSTOMER_LIMIT_MAX, RESERVATION_TTL_MS_MAX, RESERVATION_TTL_MS_MIN,
    SKU_BYTES_MAX, SKU_PATTERN, STOCK_MAX, sku_is_valid,
};
use flashsale_operator::crd::FlashSale;
use flashsale_operator::validate::validate;
use kube::CustomResourceExt;
use serde_json::Value;

fn spec_schema() -> Value {
    let crd = FlashSale::crd();
    let schema = serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap()).unwrap();
    schema["openAPIV3Schema"]["properties"]["spec"].clone()
}

fn sale(item: &str, ttl: &str) -> FlashSale {
    let text = format!(
        "apiVersion: flashsale.dev/v1alpha1\nkind: FlashSale\nmetadata: {{name: s, namespace: d}}\n\
         spec:\n  items: [{item}]\n  reservationTtl: {ttl}\n"
    );
    serde_saphyr::from_str(&text).unwrap()
}

#[test]
fn the_crd_schema_carries_the_node_limits() {
    let spec = spec_schema();
    let items = &spec["properties"]["items"];
    assert_eq!(items["maxItems"], ITEMS_MAX as u64);
    let item = &items["items"]["properties"];
    assert_eq!(item["sku"]["maxLength"], SKU_BYTES_MAX as u64);
    assert_eq!(item["sku"]["pattern"], SKU_PATTERN);
    assert_eq!(item["stock"]["maximum"].as_f64(), Some(STOCK_MAX as f64));
    assert_eq!(item["stock"]["minimum"].as_f64(), Some(0.0));
    assert_eq!(
        item["perCustomerLimit"]["maximum"].as_f64(),
        Some(PER_CUSTOMER_LIMIT_MAX as f64)
    );
}

/// The API server matches SKUs against the CRD's pattern; the node uses `sku_is_valid`.
#[test]
fn the_crd_pattern_and_the_node_agree_on_every_sku() {
    let spec = spec_schema();
    let pattern = spec["properties"]["items"]["items"]["properties"]["sku"]["pattern"]
        .as_str()
        .unwrap();
    let crd = regex::Regex::new(pattern).unwrap();
    let long = "a".repeat(SKU_BYTES_MAX);
    let longer = "a".repeat(SKU_BYTES_MAX + 1);
    let samples = [
        "a",
        "Z9",
        "tee-1.b_c",
        "-a",
        ".a",
        "_a",
        "a b",
        "a/b",
        "a\n",
        "",
        "é",
        "ａ",
        &long,
        &longer,
    ];
    for sku in samples {
        let by_length = sku.chars().count() <= SKU_BYTES_MAX;
        assert_eq!(
            crd.is_match(sku) && by_length,
            sku_is_valid(sku),
            "{sku:?}: the CRD and the node disagree"
        );
    }
}

/// Each bound, one inside and one past it: the operator's validation (the node's rules)
/// refuses exactly past the bound, naming the field as the spec spells it.
#[test]
fn every_limit_is_refused_one_past_it_by_the_operator_as_by_the_node() {
    let cases = [
        (
            format!("{{sku: a, stock: {STOCK_MAX}}}"),
            format!("{{sku: a, stock: {}}}", STOCK_MAX + 1),
            "spec.items[0].stock",
        ),
        (
            format!("{{sku: a, stock: 1, perCustomerLimit: {PER_CUSTOMER_LIMIT_MAX}}}"),
            format!(
                "{{sku: a, stock: 1, perCustomerLimit: {}}}",
                PER_CUSTOMER_LIMIT_MAX + 1
            ),
            "spec.items[0].perCustomerLimit",
        ),
        (
            format!("{{sku: {}, stock: 1}}", "a".repeat(SKU_BYTES_MAX)),
            format!("{{sku: {}, stock: 1}}", "a".repeat(SKU_BYTES_MAX + 1)),
            "spec.items[0].sku",
        ),
        (
            "{sku: a, stock: 0}".to_string(),
            "{sku: a, stock: -1}".to_string(),
            "spec.items[0].stock",
        ),
    ];
    for (ok, bad, field) in cases {
        validate(&sale(&ok, "5m")).unwrap_or_else(|e| panic!("{ok}: {e}"));
        let e = validate(&sale(&bad, "5m")).expect_err(&bad);
        assert_eq!(e.field, field, "{bad}: {e}");
    }
    let many = |n: usize| {
        (0..n)
            .map(|i| format!("{{sku: i{i}, stock: 1}}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    validate(&sale(&many(ITEMS_MAX), "5m")).unwrap();
    assert_eq!(
        validate(&sale(&many(ITEMS_MAX + 1), "5m"))
            .unwrap_err()
            .field,
        "spec.items"
    );
}

/// The reservation TTL is a CEL rule in the CRD: evaluated as the API server does, it
/// agrees with the node's bounds at both ends.
#[test]
fn the_ttl_rule_of_the_crd_and_the_node_agree_at_both_ends() {
    let ms = |n: u64| format!("{n}ms");
    for (ttl, ok) in [
        (ms(RESERVATION_TTL_MS_MIN - 1), false),
        (ms(RESERVATION_TTL_MS_MIN), true),
        (ms(RESERVATION_TTL_MS_MAX), true),
        (ms(RESERVATION_TTL_MS_MAX + 1), false),
    ] {
        let s = sale("{sku: a, stock: 1}", &ttl);
        let by_crd = kube::core::cel::validate_cel(&s).is_ok();
        let by_node = validate(&s);
        assert_eq!(by_crd, ok, "{ttl}: CRD");
        assert_eq!(by_node.is_ok(), ok, "{ttl}: node rules {by_node:?}");
        if let Err(e) = by_node {
            assert_eq!(e.field, "spec.reservationTtl");
        }
    }
}
