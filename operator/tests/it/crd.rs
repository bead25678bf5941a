//! The checked-in CRD YAML (`crds/` and the chart's copy) is exactly what the Rust types
//! generate, and the generated CRD has what `kubectl` users rely on.

use flashsale_operator::crd::{FlashSale, crd_yaml};
use kube::CustomResourceExt;

const REGENERATE: &str = "regenerate with: cargo run -p flashsale-operator --bin crdgen > crds/flashsale.dev_flashsales.yaml \
     && cp crds/flashsale.dev_flashsales.yaml charts/flashsale-operator/crds/";

#[test]
fn checked_in_crd_yaml_matches_the_types() {
    let generated = crd_yaml();
    for path in [
        "crds/flashsale.dev_flashsales.yaml",
        "charts/flashsale-operator/crds/flashsale.dev_flashsales.yaml",
    ] {
        let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
        let on_disk =
            std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{path}: {e}; {REGENERATE}"));
        assert!(
            on_disk == generated,
            "{path} differs from the Rust types; {REGENERATE}"
        );
    }
}

#[test]
fn crd_has_names_subresources_and_columns() {
    let crd = FlashSale::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("flashsales.flashsale.dev")
    );
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["fsale".to_string()][..])
    );
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    let sub = version.subresources.as_ref().unwrap();
    assert!(sub.status.is_some());
    let scale = sub.scale.as_ref().unwrap();
    assert_eq!(scale.spec_replicas_path, ".spec.nodes.replicas");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );
    let columns: Vec<_> = version
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "Phase",
            "Primary",
            "Epoch",
            "Ready",
            "Sold",
            "Remaining",
            "Stock",
            "Age"
        ]
    );
    let schema = serde_json::to_value(version.schema.as_ref().unwrap()).unwrap();
    let conditions = &schema["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"][0], "type");
}

#[test]
fn readme_reference_matches_the_crd() {
    let readme =
        std::fs::read_to_string(format!("{}/../README.md", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let begin = "<!-- reference:begin -->\n";
    let start = readme
        .find(begin)
        .expect("README has the reference markers")
        + begin.len();
    let end = readme[start..]
        .find("<!-- reference:end -->")
        .expect("end marker")
        + start;
    assert!(
        readme[start..end] == flashsale_operator::crd::reference_markdown(),
        "README's FlashSale reference differs from the CRD; regenerate with \
         cargo run -p flashsale-operator --bin crdgen -- --reference"
    );
}
