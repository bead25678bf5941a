//! The operator's own HTTP port: `/metrics`, `/healthz` (the process serves), `/readyz`
//! (the Kubernetes client works; a standby replica waiting for the Lease is ready too, so
//! a rollout of two replicas can proceed), and two read-only views of a sale for the
//! `kubectl flashsale` plugin, reached through the API server's service proxy so that no
//! user's machine ever holds a node's admin token:
//!
//! - `GET /v1/sales/{namespace}/{name}/nodes`: each node pod's own admin status (role,
//!   epoch, applied and durable sequence, purchases/s, lease), or why it did not answer;
//! - `GET /v1/sales/{namespace}/{name}/ledger?format=jsonl|csv`: the primary's order
//!   ledger (the node's `GET /admin/v1/ledger`), passed through.
//!
//! Every call must carry `Flashsale-Viewer-Token`: a token of the viewer ServiceAccount
//! (`--viewer-service-account`) minted for the audience [`VIEWER_AUDIENCE`], which the
//! operator checks with a TokenReview. The port is reachable from inside the cluster
//! (it serves `/metrics`), so the token — not the network — is the guard; the right to
//! read a ledger is the RBAC right to mint that token. Any replica answers (they read).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::ListParams;

use crate::crd::FlashSale;
use crate::labels;
use crate::metrics::Metrics;
use crate::nodes::{NodeClient, node_url};
use crate::observe::PodView;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    /// What the sale views need; `None`: they answer 503.
    pub sales: Option<SalesAccess>,
}

/// The API and node clients the sale views read with.
#[derive(Clone)]
pub struct SalesAccess {
    pub client: kube::Client,
    pub nodes: NodeClient,
    /// The username a viewer token must authenticate as
    /// (`system:serviceaccount:NS:NAME`); `None`: the views are closed.
    pub viewer: Option<String>,
}

/// The audience a viewer token must be minted for.
pub const VIEWER_AUDIENCE: &str = "flashsale-operator";
/// The header that carries it (the API server's proxy strips `Authorization`).
pub const VIEWER_HEADER: &str = "flashsale-viewer-token";

/// `NAMESPACE/NAME` → the ServiceAccount's username.
pub fn viewer_username(sa: &str) -> Result<String, String> {
    match sa.split_once('/') {
        Some((ns, name)) if is_dns_label(ns) && is_dns_subdomain(name) => {
            Ok(format!("system:serviceaccount:{ns}:{name}"))
        }
        _ => Err(format!("`{sa}` is not NAMESPACE/NAME")),
    }
}

/// An RFC 1123 label (a namespace's name).
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An RFC 1123 subdomain (an object's name).
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Lets a call in if it carries a viewer token the API server vouches for.
async fn authorize(access: &SalesAccess, headers: &HeaderMap) -> Result<(), Response> {
    use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
    let Some(viewer) = &access.viewer else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "views_closed",
            "the sale views are closed: the operator runs without --viewer-service-account",
        ));
    };
    let Some(token) = headers.get(VIEWER_HEADER).and_then(|v| v.to_str().ok()) else {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "no_token",
            format!(
                "send a token of {viewer} for the audience {VIEWER_AUDIENCE} in Flashsale-Viewer-Token"
            ),
        ));
    };
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            audiences: Some(vec![VIEWER_AUDIENCE.to_string()]),
        },
        ..TokenReview::default()
    };
    let answer = Api::<TokenReview>::all(access.client.clone())
        .create(&kube::api::PostParams::default(), &review)
        .await
        .map_err(|e| {
            refuse(
                StatusCode::BAD_GATEWAY,
                "api_error",
                format!("TokenReview: {e}"),
            )
        })?;
    let status = answer.status.unwrap_or_default();
    let who = status.user.and_then(|u| u.username);
    let audience_ok = status
        .audiences
        .is_some_and(|a| a.iter().any(|x| x == VIEWER_AUDIENCE));
    if status.authenticated == Some(true) && audience_ok && who.as_deref() == Some(viewer.as_str())
    {
        Ok(())
    } else {
        Err(refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "the token is not {viewer}'s for the audience {VIEWER_AUDIENCE} ({})",
                who.or(status.error)
                    .unwrap_or_else(|| "not authenticated".into())
            ),
        ))
    }
}

/// The refusal of a URL whose namespace or name is not one, checked before any API call.
fn bad_sale_ref(namespace: &str, name: &str) -> Option<Response> {
    (!(is_dns_label(namespace) && is_dns_subdomain(name))).then(|| {
        refuse(
            StatusCode::BAD_REQUEST,
            "bad_name",
            format!("`{namespace}/{name}` is not a namespace and a FlashSale name"),
        )
    })
}

pub fn app(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/v1/sales/{namespace}/{name}/nodes", get(sale_nodes))
        .route("/v1/sales/{namespace}/{name}/ledger", get(sale_ledger))
        .with_state(state)
}

/// A refusal of a sale view: its status and a JSON `{"code","detail"}`.
fn refuse(status: StatusCode, code: &str, detail: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"code": code, "detail": detail.into()})),
    )
        .into_response()
}

/// A sale view's way in: the views open, the names checked, the caller's viewer token
/// vouched for, then the sale, its node pods and its admin token.
async fn open_sale<'a>(
    state: &'a HttpState,
    namespace: &str,
    name: &str,
    headers: &HeaderMap,
) -> Result<(&'a SalesAccess, FlashSale, Vec<Pod>, String), Response> {
    let Some(access) = &state.sales else {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting",
            "not ready",
        ));
    };
    if let Some(refusal) = bad_sale_ref(namespace, name) {
        return Err(refusal);
    }
    authorize(access, headers).await?;
    let (sale, pods, token) = sale_parts(access, namespace, name).await?;
    Ok((access, sale, pods, token))
}

/// The sale, its node pods (by name) and its admin token.
async fn sale_parts(
    access: &SalesAccess,
    namespace: &str,
    name: &str,
) -> Result<(FlashSale, Vec<Pod>, String), Response> {
    let api_err = |what: &str, e: kube::Error| {
        refuse(
            StatusCode::BAD_GATEWAY,
            "api_error",
            format!("reading {what}: {e}"),
        )
    };
    let sale = Api::<FlashSale>::namespaced(access.client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|e| api_err("the FlashSale", e))?
        .ok_or_else(|| {
            refuse(
                StatusCode::NOT_FOUND,
                "no_sale",
                format!("no FlashSale {name} in namespace {namespace}"),
            )
        })?;
    let token = Api::<Secret>::namespaced(access.client.clone(), namespace)
        .get_opt(&labels::admin_secret_name(name))
        .await
        .map_err(|e| api_err("the admin Secret", e))?
        .and_then(|s| s.data)
        .and_then(|d| d.get(labels::ADMIN_TOKEN_KEY).cloned())
        .and_then(|b| String::from_utf8(b.0).ok())
        .map(|t| t.trim().to_string())
        .ok_or_else(|| {
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_token",
                format!("the sale {namespace}/{name} has no admin Secret yet"),
            )
        })?;
    let selector = labels::selector_string(&labels::node_selector(name));
    let mut pods = Api::<Pod>::namespaced(access.client.clone(), namespace)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| api_err("the node pods", e))?
        .items;
    pods.sort_by_key(|p| p.metadata.name.clone());
    Ok((sale, pods, token))
}

/// Each node pod's own admin status, or why it did not answer.
async fn sale_nodes(
    State(state): State<HttpState>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (access, sale, pods, token) = match open_sale(&state, &namespace, &name, &headers).await {
        Ok(parts) => parts,
        Err(refusal) => return refusal,
    };
    let mut nodes = Vec::with_capacity(pods.len());
    for pod in &pods {
        let view = PodView::from_pod(pod);
        let answer = match view.url() {
            Some(url) if view.running => match access.nodes.status(&url, &token).await {
                Ok(status) => serde_json::json!({"status": status}),
                Err(e) => serde_json::json!({"error": e.to_string()}),
            },
            _ => serde_json::json!({"error": "not running"}),
        };
        let mut node = serde_json::json!({
            "pod": view.name,
            "ready": view.ready,
            "roleLabel": view.role_label,
        });
        if let (Some(n), Some(a)) = (node.as_object_mut(), answer.as_object()) {
            n.extend(a.clone());
        }
        nodes.push(node);
    }
    let status = sale.status.unwrap_or_default();
    axum::Json(serde_json::json!({
        "namespace": namespace,
        "sale": name,
        "primary": status.primary.map(|p| p.pod),
        "epoch": status.epoch,
        "nodes": nodes,
    }))
    .into_response()
}

/// The primary's order ledger, passed through (`format=jsonl|csv`).
async fn sale_ledger(
    State(state): State<HttpState>,
    Path((namespace, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (access, sale, pods, token) = match open_sale(&state, &namespace, &name, &headers).await {
        Ok(parts) => parts,
        Err(refusal) => return refusal,
    };
    let status = sale.status.unwrap_or_default();
    if status.failover.is_some() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "failing_over",
            format!("{namespace}/{name} is failing over: ask again once it has a primary"),
        );
    }
    let Some(primary) = status.primary.map(|p| p.pod) else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_primary",
            format!("{namespace}/{name} has no primary yet"),
        );
    };
    let Some(url) = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(primary.as_str()))
        .and_then(|p| p.status.as_ref()?.pod_ip.clone())
        .map(|ip| node_url(&ip))
    else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_primary",
            format!("the primary {primary} has no address"),
        );
    };
    // The pod status names must be the primary at the sale's epoch now (a pod that
    // restarted on an empty volume would answer an empty ledger).
    match access.nodes.status(&url, &token).await {
        Ok(s) if s.role == flashsale_core::admin::Role::Primary && s.epoch == status.epoch => {}
        Ok(s) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_primary",
                format!(
                    "{primary} is {}@{}, not the primary at epoch {}: ask again shortly",
                    s.role.as_str(),
                    s.epoch,
                    status.epoch
                ),
            );
        }
        Err(e) => {
            return refuse(
                StatusCode::BAD_GATEWAY,
                "node_error",
                format!("{primary}: {e}"),
            );
        }
    }
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    let answer = access
        .nodes
        .http()
        .get(format!("{url}/admin/v1/ledger{query}"))
        .bearer_auth(&token)
        .timeout(LEDGER_TIMEOUT)
        .send()
        .await;
    match answer {
        Ok(res) => {
            let status = res.status().as_u16();
            let content_type = res
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream")
                .to_string();
            match res.bytes().await {
                Ok(body) => (
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                    [(header::CONTENT_TYPE, content_type)],
                    body,
                )
                    .into_response(),
                Err(e) => refuse(StatusCode::BAD_GATEWAY, "node_error", e.to_string()),
            }
        }
        Err(e) => refuse(
            StatusCode::BAD_GATEWAY,
            "node_error",
            format!("{primary}: {e}"),
        ),
    }
}

/// How long a ledger export may take (a large sale's ledger is megabytes).
const LEDGER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

async fn metrics(State(state): State<HttpState>) -> String {
    state.metrics.encode()
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

/// Serves until `shutdown` resolves.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_url_are_checked_before_any_api_call() {
        assert!(bad_sale_ref("shop", "launch").is_none());
        assert!(bad_sale_ref("shop", "launch.v2").is_none());
        for (ns, name) in [
            ("shop", "a/b"),
            ("shop", "../x"),
            ("Shop", "x"),
            ("shop", "x?y"),
            ("", "x"),
            ("shop", ""),
            ("-a", "x"),
        ] {
            assert!(bad_sale_ref(ns, name).is_some(), "{ns}/{name}");
        }
        assert_eq!(
            viewer_username("ops/flashsale-viewer").unwrap(),
            "system:serviceaccount:ops:flashsale-viewer"
        );
        assert!(viewer_username("flashsale-viewer").is_err());
    }
}
