//! The validate step and the CRD's CEL rules against good and bad manifests: a good sale
//! becomes the node config it describes; every bad one is refused naming its field.

use flashsale_core::Durability;
use flashsale_operator::crd::FlashSale;
use flashsale_operator::validate::{config_hash, validate};

const EXPECT_FIELD: &str = "flashsale.dev/expect-field";

fn read(path: &str) -> String {
    let path = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn invalid_fixtures() -> Vec<(String, String)> {
    let dir = format!("{}/tests/fixtures/invalid", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(names.len() >= 5, "at least five kinds of mistake");
    names
        .into_iter()
        .map(|n| {
            let text = read(&format!("invalid/{n}"));
            (n, text)
        })
        .collect()
}

fn expected_field(text: &str) -> String {
    let value: serde_json::Value = serde_saphyr::from_str(text).unwrap();
    value["metadata"]["annotations"][EXPECT_FIELD]
        .as_str()
        .expect("every invalid fixture names its field")
        .to_string()
}

#[test]
fn a_basic_sale_becomes_the_node_config_it_describes() {
    let sale: FlashSale = serde_saphyr::from_str(&read("basic.yaml")).unwrap();
    let config = validate(&sale).unwrap();
    assert_eq!(config.name, "spring");
    assert_eq!(config.items.len(), 1);
    assert_eq!(
        (
            config.items[0].sku.as_str(),
            config.items[0].stock,
            config.items[0].per_customer_limit
        ),
        ("sneaker-42", 100, 2)
    );
    assert_eq!(
        (config.starts_at_ms, config.ends_at_ms),
        (None, None),
        "open now, never closes"
    );
    assert_eq!(config.reservation_ttl_ms, 300_000, "default 5m");
    assert_eq!(config.durability, Durability::Fsync, "durable by default");
}

#[test]
fn the_full_sale_carries_window_ttl_and_durability() {
    let sale: FlashSale = serde_saphyr::from_str(&read("full.yaml")).unwrap();
    let config = validate(&sale).unwrap();
    assert_eq!(config.items.len(), 2);
    assert_eq!(config.items[1].per_customer_limit, 0, "no limit when unset");
    assert_eq!(config.starts_at_ms, Some(1_795_766_400_000));
    assert_eq!(config.ends_at_ms, Some(1_795_773_600_000));
    assert_eq!(config.reservation_ttl_ms, 90_000);
    assert_eq!(config.durability, Durability::NoSync);
}

#[test]
fn a_config_change_changes_the_hash_that_marks_it_rolled_out() {
    let mut sale: FlashSale = serde_saphyr::from_str(&read("basic.yaml")).unwrap();
    let before = config_hash(&validate(&sale).unwrap());
    assert_eq!(before, config_hash(&validate(&sale).unwrap()), "stable");
    sale.spec.items[0].stock += 50;
    assert_ne!(
        before,
        config_hash(&validate(&sale).unwrap()),
        "stock added"
    );
}

#[test]
fn every_bad_manifest_is_refused_by_the_operator_naming_its_field() {
    for (name, text) in invalid_fixtures() {
        let field = expected_field(&text);
        let refusal = match serde_saphyr::from_str::<FlashSale>(&text) {
            // A required field missing is refused by parsing (and by the API server's schema).
            Err(e) => e.to_string(),
            Ok(sale) => match validate(&sale) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{name}: accepted"),
            },
        };
        let leaf = field.rsplit('.').next().unwrap();
        let leaf = leaf.split('[').next().unwrap();
        assert!(
            refusal.contains(leaf),
            "{name}: {refusal:?} does not name {field}"
        );
    }
}

/// The CEL rules of the generated CRD, evaluated the way the API server does (kube-cel):
/// the cross-field mistakes that a schema bound cannot catch are refused.
#[test]
fn the_crd_cel_rules_refuse_the_cross_field_mistakes_and_pass_good_sales() {
    for good in ["basic.yaml", "full.yaml"] {
        let sale: FlashSale = serde_saphyr::from_str(&read(good)).unwrap();
        if let Err(e) = kube::core::cel::validate_cel(&sale) {
            panic!("{good}: {e:?}");
        }
    }
    let cel_class = [
        "end-before-start.yaml",
        "duplicate-sku.yaml",
        "autoscaling-min-over-max.yaml",
        "autoscaling-panic-window.yaml",
        "autoscaling-prescale-over-max.yaml",
        "redis-both.yaml",
        "ttl-too-long.yaml",
        "quorum-one-replica.yaml",
    ];
    for name in cel_class {
        let text = read(&format!("invalid/{name}"));
        let sale: FlashSale = serde_saphyr::from_str(&text).unwrap();
        let err = kube::core::cel::validate_cel(&sale).expect_err(name);
        let msg = format!("{err:?}");
        let field = expected_field(&text);
        let leaf = field.rsplit('.').next().unwrap();
        assert!(msg.contains(leaf), "{name}: {msg} does not name {field}");
    }
}

/// Every FlashSale under `examples/` is one the operator runs and the API server admits.
#[test]
fn every_example_sale_is_valid() {
    let dir = format!("{}/../examples", env!("CARGO_MANIFEST_DIR"));
    let mut sales = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
        for value in docs {
            if value["kind"] != "FlashSale" {
                continue;
            }
            let mut sale: FlashSale =
                serde_json::from_value(value).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            sale.metadata.namespace = Some("default".into());
            validate(&sale).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            if let Err(e) = kube::core::cel::validate_cel(&sale) {
                panic!("{path:?}: {e:?}");
            }
            sales += 1;
        }
    }
    assert!(sales >= 2, "examples/ holds the sales the README shows");
}

/// Transition rule: the WAL volumes' size and class are fixed once the sale exists.
#[test]
fn the_crd_refuses_a_storage_change_but_not_a_stock_change() {
    let old: FlashSale = serde_saphyr::from_str(&read("basic.yaml")).unwrap();
    let mut more_stock = old.clone();
    more_stock.spec.items[0].stock += 10;
    if let Err(e) = kube::core::cel::validate_cel_update(&more_stock, &old) {
        panic!("stock change refused: {e:?}");
    }
    let mut bigger = old.clone();
    bigger.spec.nodes.storage.size =
        k8s_openapi::apimachinery::pkg::api::resource::Quantity("2Gi".into());
    let err =
        kube::core::cel::validate_cel_update(&bigger, &old).expect_err("size change accepted");
    assert!(format!("{err:?}").contains("nodes.storage"), "{err:?}");
}
