//! The OpenAPI document (`GET /openapi.json`), generated from the Rust types and the
//! handlers' annotations, so it cannot drift from what the node serves.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, ops, public, replication};

#[derive(OpenApi)]
#[openapi(
    info(title = "flashsale stock node", description = "Sells a flash sale's items durably, without overselling. Every error is an RFC 9457 problem (`application/problem+json`, schema ErrorBody) with a stable `code`; every answer a later retry can cure (429, 503, and 409 `not_open`) carries `Retry-After`."),
    paths(
        public::list_items, public::get_item, public::purchase, public::confirm, public::cancel, public::get_order,
        admin::status, admin::put_config, admin::put_role, admin::put_lease, admin::delete_lease, admin::ledger, public::forwarded,
        ops::healthz, ops::readyz, ops::metrics,
        replication::wal, replication::post_wal, replication::snapshot, replication::put_snapshot,
    ),
    components(schemas(flashsale_core::ErrorBody, flashsale_core::ErrorCode, flashsale_core::OrderState)),
    modifiers(&BearerAuth, &CommonResponses),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The answers every route of a kind can give, whatever the handler does, because the
/// layers around it give them: 431 for too many or too large headers (every route); 400
/// and 413 where there is a body; 401 on the admin routes; 429 and 503 on the public
/// ones (the admission rate, a full engine queue, `not_primary`, `fenced`). A handler's
/// own description of a status wins.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        let headers_too_large = format!(
            "headers_too_large: more than {} headers or {} KiB of them",
            super::ops::HEADERS_MAX,
            super::ops::HEADER_BYTES_MAX / 1024
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                let mut add = |status: &str, description: &str| {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error(description).into());
                };
                add("431", &headers_too_large);
                if op.request_body.is_some() {
                    add(
                        "400",
                        "bad_request: the body is not what the route takes (`field` names the field)",
                    );
                    add(
                        "413",
                        "payload_too_large: the body is over the route's limit",
                    );
                }
                if path.starts_with("/admin/") {
                    add(
                        "401",
                        "unauthorized: no `Authorization: Bearer` with the node's admin token",
                    );
                }
                if path.starts_with("/v1/") {
                    add(
                        "429",
                        "rate_limited: over the admission rate (`Retry-After`)",
                    );
                    add(
                        "503",
                        "not_primary (`primary` says who is), fenced, or unavailable (queue full, not configured, shutting down)",
                    );
                }
            }
        }
    }
}

/// The document as served: the generated one, with what the generator cannot say.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    // A role assignment is one of two shapes: a secondary must name the primary it
    // follows (`RoleAssignment::check`); a JSON Schema `oneOf` says so.
    if let Some(role) = doc.pointer_mut("/components/schemas/RoleAssignment") {
        let generated = role.clone();
        let props = &generated["properties"];
        let shape = |roles: serde_json::Value, required: &[&str], url: serde_json::Value| {
            serde_json::json!({
                "type": "object",
                "required": required,
                "properties": {
                    "role": {"type": "string", "enum": roles},
                    "epoch": props["epoch"],
                    "primaryUrl": url,
                },
                "additionalProperties": false,
            })
        };
        let mut url = props["primaryUrl"].clone();
        url["pattern"] = flashsale_core::rules::URL_PATTERN.into();
        let mut url_string = url.clone();
        url_string["type"] = "string".into();
        *role = serde_json::json!({
            "description": generated["description"],
            "oneOf": [
                shape(serde_json::json!(["primary", "standby"]), &["role", "epoch"], url),
                shape(serde_json::json!(["secondary"]), &["role", "epoch", "primaryUrl"], url_string),
            ],
        });
    }
    problems_and_retry_after(&mut doc);
    public_security(&mut doc);
    doc
}

/// Calls `f(path, operation)` for every operation of the document.
fn each_operation(
    doc: &mut serde_json::Value,
    mut f: impl FnMut(&str, &mut serde_json::Map<String, serde_json::Value>),
) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for op in item.values_mut().filter_map(|op| op.as_object_mut()) {
            f(path, op);
        }
    }
}

/// The routes without a token say so (`security: []`, not silence): the probes, the
/// metrics, the shop's `/v1` routes; the order routes take the admin token as an
/// alternative to `Flashsale-Customer` (`[{}, {bearer}]`: none, or the bearer).
fn public_security(doc: &mut serde_json::Value) {
    each_operation(doc, |path, op| {
        if !op.contains_key("security") {
            let security = if path.starts_with("/v1/orders/") {
                serde_json::json!([{}, {"bearer": []}])
            } else {
                serde_json::json!([])
            };
            op.insert("security".to_string(), security);
        }
    });
}

/// Every error answer is `application/problem+json` (the handlers' annotations say
/// `body = ErrorBody`, which the generator files under `application/json`), and every
/// 429 and 503 — and the purchase's 409, which may be `not_open` — says `Retry-After`.
fn problems_and_retry_after(doc: &mut serde_json::Value) {
    let retry_after = serde_json::json!({
        "description": "seconds to wait before the same request may succeed (also `retryAfterS` in the body); on a 409 only for `not_open`",
        "schema": {"type": "integer", "minimum": 1},
    });
    each_operation(doc, |path, op| {
        let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut()) else {
            return;
        };
        for (status, response) in responses.iter_mut() {
            if !status.starts_with('4') && !status.starts_with('5') {
                continue;
            }
            if let Some(content) = response.get_mut("content").and_then(|c| c.as_object_mut())
                && let Some(json) = content.remove("application/json")
            {
                content.insert(flashsale_core::PROBLEM_JSON.to_string(), json);
            }
            let retryable = matches!(status.as_str(), "429" | "503")
                || (status == "409" && path == "/v1/purchases");
            if retryable && let Some(r) = response.as_object_mut() {
                let headers = r.entry("headers").or_insert_with(|| serde_json::json!({}));
                headers["Retry-After"] = retry_after.clone();
            }
        }
    });
}

/// `GET /openapi.json`: the document, serialised once and shared by every answer (each
/// answer a clone of the same bytes, not a copy of its ~53 KB).
pub async fn openapi_json() -> impl axum::response::IntoResponse {
    static DOC: std::sync::OnceLock<axum::body::Bytes> = std::sync::OnceLock::new();
    let body = DOC.get_or_init(|| serde_json::to_vec(&document()).unwrap_or_default().into());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body.clone(),
    )
}
