//! Whether the FlashSale CRD installed in the cluster has every field this operator
//! writes.
//!
//! Helm installs the CRD from the chart's `crds/` directory and never upgrades it
//! (README, "CRD install and upgrade"). An operator upgraded without its CRD would run
//! against the older schema, and the API server drops, without an error, every field
//! that schema does not have — in the status too. Some of those fields carry the
//! failover's safety: `status.failover.nodesDurableSeq` (what each node held when a
//! quorum failover began) and `status.nodes[].roleEpoch`. Lost on every write, the
//! failover would go on as if nothing had been recorded. So the operator compares the
//! installed schema with its own before it leads, and refuses to start on one that
//! lacks a field (`main.rs`). A newer CRD (applied first, as the README says, while the
//! old operator still runs) has more fields, not fewer, and passes. Only the fields are
//! compared, not their types or enum values: a status value an older schema refuses is
//! a write the API server rejects (422), loudly, not a field dropped.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};

/// The fields of `wanted` (the CRD this operator was built with) that `installed` does
/// not have, each as a path (`v1alpha1 .status.nodes[].roleEpoch`; `{}` stands for a
/// map's values), or the version itself when `installed` does not serve it. Empty when
/// the installed CRD can hold everything the operator writes. A level of the installed
/// schema that keeps unknown fields (`x-kubernetes-preserve-unknown-fields`) holds
/// whatever it does not name; what it names is compared below it.
pub fn missing_fields(
    installed: &CustomResourceDefinition,
    wanted: &CustomResourceDefinition,
) -> Vec<String> {
    let mut missing = Vec::new();
    for version in &wanted.spec.versions {
        let Some(want) = schema_of(version) else {
            continue;
        };
        let have = installed
            .spec
            .versions
            .iter()
            .find(|v| v.name == version.name && v.served);
        match have.and_then(schema_of) {
            None => missing.push(format!("version {} (not served)", version.name)),
            Some(have) => walk(have, want, &mut format!("{} ", version.name), &mut missing),
        }
    }
    missing
}

fn schema_of(
    v: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionVersion,
) -> Option<&JSONSchemaProps> {
    v.schema.as_ref()?.open_api_v3_schema.as_ref()
}

/// The named properties of a schema level, with those of its `allOf`/`anyOf`/`oneOf`
/// branches (an enum's variants).
fn properties(s: &JSONSchemaProps) -> BTreeMap<&str, &JSONSchemaProps> {
    let mut out = BTreeMap::new();
    let branches = [&s.all_of, &s.any_of, &s.one_of];
    let levels = std::iter::once(s).chain(branches.into_iter().flatten().flatten());
    for level in levels {
        for (name, p) in level.properties.iter().flatten() {
            out.entry(name.as_str()).or_insert(p);
        }
    }
    out
}

fn keeps_unknown(s: &JSONSchemaProps) -> bool {
    s.x_kubernetes_preserve_unknown_fields == Some(true)
}

fn walk(have: &JSONSchemaProps, want: &JSONSchemaProps, path: &mut String, out: &mut Vec<String>) {
    // A level that keeps unknown fields keeps a field it does not name; below the
    // properties it does name, the API server prunes by their schemas again.
    let open = keeps_unknown(have);
    let have_props = properties(have);
    for (name, w) in properties(want) {
        let h = have_props.get(name).copied();
        if h.is_some() || !open {
            below(h, w, &format!(".{name}"), path, out);
        }
    }
    if open {
        return;
    }
    if let Some(w) = items(want) {
        below(items(have), w, "[]", path, out);
    }
    if let Some(w) = values(want)
        && !matches!(
            have.additional_properties,
            Some(JSONSchemaPropsOrBool::Bool(true))
        )
    {
        below(values(have), w, "{}", path, out);
    }
}

/// The schema of a list's items.
fn items(s: &JSONSchemaProps) -> Option<&JSONSchemaProps> {
    match &s.items {
        Some(JSONSchemaPropsOrArray::Schema(x)) => Some(x),
        _ => None,
    }
}

/// The schema of a map's values.
fn values(s: &JSONSchemaProps) -> Option<&JSONSchemaProps> {
    match &s.additional_properties {
        Some(JSONSchemaPropsOrBool::Schema(x)) => Some(x),
        _ => None,
    }
}

/// `want`, at `path` + `step`, against what the installed schema has there: missing
/// (`None`), or compared level by level.
fn below(
    have: Option<&JSONSchemaProps>,
    want: &JSONSchemaProps,
    step: &str,
    path: &mut String,
    out: &mut Vec<String>,
) {
    let len = path.len();
    path.push_str(step);
    match have {
        Some(h) => walk(h, want, path, out),
        None => out.push(path.clone()),
    }
    path.truncate(len);
}
