//! The README's "FlashSale reference": a Markdown table generated from the CRD's own
//! schema (`crdgen --reference`), so the documentation cannot drift from the types.

use kube::CustomResourceExt;
use serde_json::Value;

use super::FlashSale;

/// Fields documented by their Kubernetes type rather than field by field.
const OPAQUE: &[(&str, &str)] = &[("spec.nodes.resources", "core/v1 ResourceRequirements")];

/// The reference as Markdown: every spec field with type, default, bounds and meaning,
/// then the rules the API server enforces.
pub fn reference_markdown() -> String {
    let crd = FlashSale::crd();
    let schema = serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("derived CRD has a schema"),
    )
    .expect("schema serializes");
    let spec = &schema["properties"]["spec"];
    let mut rows = Vec::new();
    let mut rules = Vec::new();
    walk("spec", spec, &mut rows);
    walk_rules("", &schema, &mut rules);
    rules.sort();
    rules.dedup();
    let mut out = String::from("| field | type | default | meaning |\n|---|---|---|---|\n");
    for row in rows {
        out.push_str(&row);
        out.push('\n');
    }
    out.push_str("\nRefused by the API server (`kubectl apply` names the field):\n\n");
    for rule in rules {
        out.push_str(&format!("- {rule}\n"));
    }
    out
}

fn walk(path: &str, schema: &Value, rows: &mut Vec<String>) {
    let Some(props) = schema["properties"].as_object() else {
        return;
    };
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, field) in props {
        let field_path = format!("{path}.{name}");
        let (field_schema, shown_path) = if field["type"] == "array" {
            (&field["items"], format!("{field_path}[]"))
        } else {
            (field, field_path.clone())
        };
        let opaque = OPAQUE
            .iter()
            .find(|(p, _)| *p == field_path)
            .map(|(_, t)| *t);
        let ty = opaque.map(str::to_string).unwrap_or_else(|| type_of(field));
        let default = if required.contains(&name.as_str()) {
            "required".to_string()
        } else if field["default"].is_object() {
            "see fields".to_string()
        } else if field["default"].is_null() {
            "—".to_string()
        } else {
            format!("`{}`", field["default"]).replace('"', "")
        };
        let description = field["description"]
            .as_str()
            .unwrap_or("")
            .replace('\n', " ")
            .replace('|', "\\|");
        rows.push(format!(
            "| `{shown_path}` | {ty} | {default} | {description} |"
        ));
        if opaque.is_none() {
            walk(&shown_path, field_schema, rows);
        }
    }
}

fn walk_rules(path: &str, schema: &Value, rules: &mut Vec<String>) {
    if let Some(v) = schema["x-kubernetes-validations"].as_array() {
        for rule in v {
            if let Some(m) = rule["message"].as_str() {
                rules.push(format!(
                    "`{}`: {m}",
                    if path.is_empty() { "metadata" } else { path }
                ));
            }
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        for (name, field) in props {
            let p = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            if p == "status" {
                continue;
            }
            walk_rules(&p, field, rules);
            walk_rules(&p, &field["items"], rules);
        }
    }
}

fn type_of(field: &Value) -> String {
    let mut ty = match (
        field["type"].as_str(),
        field["x-kubernetes-int-or-string"].as_bool(),
    ) {
        (_, Some(true)) => "quantity".to_string(),
        (Some("array"), _) => format!("list of {}", type_of(&field["items"])),
        (Some("string"), _) if field["format"] == "date-time" => "RFC 3339 time".to_string(),
        (Some(t), _) => t.to_string(),
        (None, _) => "any".to_string(),
    };
    if let Some(values) = field["enum"].as_array() {
        let values: Vec<_> = values.iter().filter_map(Value::as_str).collect();
        ty = format!("one of `{}`", values.join("`, `"));
    }
    let bound = |k: &str| field[k].as_f64().map(|v| v as i64);
    match (bound("minimum"), bound("maximum")) {
        (Some(lo), Some(hi)) => ty.push_str(&format!(" {lo}..={hi}")),
        (Some(lo), None) => ty.push_str(&format!(" ≥ {lo}")),
        _ => {}
    }
    if let (Some(lo), Some(hi)) = (field["minItems"].as_u64(), field["maxItems"].as_u64()) {
        ty.push_str(&format!(" ({lo}..={hi} entries)"));
    }
    if let Some(p) = field["pattern"].as_str() {
        ty.push_str(&format!(" matching `{p}`"));
    }
    ty
}
