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

mod installed {
    //! The check the operator makes at start (`crd::installed`, `main.rs`): it refuses an
    //! installed CRD that lacks a field it writes.

    use flashsale_operator::crd::FlashSale;
    use flashsale_operator::crd::installed::missing_fields;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::CustomResourceExt;
    use serde_json::{Value, json};

    fn fixture(name: &str) -> CustomResourceDefinition {
        let path = format!("{}/tests/fixtures/crd/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    /// The CRD this operator was built with, edited as JSON.
    fn edited(edit: impl FnOnce(&mut Value)) -> CustomResourceDefinition {
        let mut v = serde_json::to_value(FlashSale::crd()).unwrap();
        edit(&mut v["spec"]["versions"][0]);
        serde_json::from_value(v).unwrap()
    }

    fn status(version: &mut Value) -> &mut Value {
        &mut version["schema"]["openAPIV3Schema"]["properties"]["status"]
    }

    #[test]
    fn the_crd_of_this_release_has_every_field() {
        let crd = FlashSale::crd();
        assert_eq!(missing_fields(&crd, &crd), Vec::<String>::new());
        let checked_in: CustomResourceDefinition = serde_saphyr::from_str(
            &std::fs::read_to_string(format!(
                "{}/../charts/flashsale-operator/crds/flashsale.dev_flashsales.yaml",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(missing_fields(&checked_in, &crd), Vec::<String>::new());
    }

    /// The CRD as shipped before the quorum failover recorded what each node held: an
    /// operator upgraded without its CRD would have had both fields dropped from every
    /// status write.
    #[test]
    fn an_older_crd_is_refused_with_the_fields_it_lacks() {
        let missing = missing_fields(&fixture("before-nodes-durable-seq.yaml"), &FlashSale::crd());
        assert_eq!(
            missing,
            [
                "v1alpha1 .status.failover.fromUid",
                "v1alpha1 .status.failover.nodesDurableSeq",
                "v1alpha1 .status.nodes[].roleEpoch",
            ]
        );
    }

    #[test]
    fn a_newer_crd_with_more_fields_passes() {
        let newer = edited(|v| {
            status(v)["properties"]["later"] = json!({"type": "string"});
            status(v)["properties"]["nodes"]["items"]["properties"]["later"] =
                json!({"type": "integer"});
        });
        assert_eq!(
            missing_fields(&newer, &FlashSale::crd()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_version_not_served_and_a_missing_map_or_list_are_named() {
        let unserved = edited(|v| v["served"] = json!(false));
        assert_eq!(
            missing_fields(&unserved, &FlashSale::crd()),
            ["version v1alpha1 (not served)"]
        );
        let no_items = edited(|v| {
            let nodes = &mut status(v)["properties"]["nodes"];
            nodes.as_object_mut().unwrap().remove("items");
        });
        assert_eq!(
            missing_fields(&no_items, &FlashSale::crd()),
            ["v1alpha1 .status.nodes[]"]
        );
        let no_map = edited(|v| {
            let seq = &mut status(v)["properties"]["failover"]["properties"]["nodesDurableSeq"];
            seq.as_object_mut().unwrap().remove("additionalProperties");
        });
        assert_eq!(
            missing_fields(&no_map, &FlashSale::crd()),
            ["v1alpha1 .status.failover.nodesDurableSeq{}"]
        );
    }

    #[test]
    fn a_level_that_keeps_unknown_fields_holds_what_it_does_not_name() {
        let open = edited(|v| {
            *status(v) = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
        });
        assert_eq!(
            missing_fields(&open, &FlashSale::crd()),
            Vec::<String>::new()
        );
        // Below a property it names, the API server prunes by that property's schema.
        let open_naming_nodes = edited(|v| {
            let mut nodes = status(v)["properties"]["nodes"].clone();
            let item = nodes["items"]["properties"].as_object_mut().unwrap();
            item.remove("roleEpoch");
            *status(v) = json!({
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "properties": {"nodes": nodes},
            });
        });
        assert_eq!(
            missing_fields(&open_naming_nodes, &FlashSale::crd()),
            ["v1alpha1 .status.nodes[].roleEpoch"]
        );
    }
}
