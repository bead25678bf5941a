//! The stock node's HTTP service: public API, admin API, health, metrics and the
//! OpenAPI document on one port. `app` builds the router (tests drive it with
//! `oneshot`); `run` serves it on a listener until the shutdown future resolves.

pub mod admin;
pub mod deadline;
pub mod error;
pub mod json;
pub mod noop;
pub mod openapi;
pub mod ops;
pub mod public;
pub mod replication;
pub mod server;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::routing::{get, post, put};
use flashsale_core::admin::NodeStatus;

use crate::admission::Admission;
use crate::engine::EngineHandle;
use crate::metrics::Metrics;

/// Limits of the HTTP layer (the engine has its own).
#[derive(Clone, Debug)]
pub struct Limits {
    pub body_bytes_max: usize,
    pub request_timeout: Duration,
    pub connections_max: usize,
    /// A connection with no request in progress this long is closed (see `server`).
    pub idle_timeout: Duration,
    /// How long in-flight requests may take to finish once shutdown starts.
    pub shutdown_drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_bytes_max: 16 * 1024,
            request_timeout: Duration::from_secs(10),
            connections_max: 4096,
            idle_timeout: Duration::from_secs(10),
            shutdown_drain: Duration::from_secs(10),
        }
    }
}

/// The largest forwarded batch the primary reads: `forward::BATCH_ACCEPT_MAX`
/// operations of at most the public body limit's default each.
pub const FORWARD_BODY_BYTES_MAX: usize = 8 << 20;

/// What every handler shares.
pub struct Shared {
    pub engine: EngineHandle,
    pub admission: Admission,
    pub metrics: Metrics,
    pub admin_token: Option<String>,
    pub limits: Limits,
    shutting_down: AtomicBool,
    /// Replication, when the node runs it (see [`AppState::with_replication`]).
    pub replication: Option<crate::replication::runtime::Replication>,
    /// Forwarding to the primary, when this node forwards (see
    /// [`AppState::with_forwarder`]); without it a secondary answers `not_primary`.
    pub forwarder: Option<crate::forward::Forwarder>,
    /// The position headers every answer carries, made once per position.
    marks: replication::PositionHeaders,
}

/// Cheap to clone: one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(
        engine: EngineHandle,
        admission: Admission,
        metrics: Metrics,
        admin_token: Option<String>,
        limits: Limits,
    ) -> AppState {
        AppState(Arc::new(Shared {
            engine,
            admission,
            metrics,
            admin_token,
            limits,
            shutting_down: AtomicBool::new(false),
            replication: None,
            forwarder: None,
            marks: Default::default(),
        }))
    }

    /// Adds replication (status block, readiness, catch-up route, quorum hold).
    /// Call before the state is cloned.
    pub fn with_replication(mut self, r: crate::replication::runtime::Replication) -> AppState {
        match Arc::get_mut(&mut self.0) {
            Some(s) => s.replication = Some(r),
            None => tracing::error!("replication added after the state was shared; ignored"),
        }
        self
    }

    /// Adds forwarding: a secondary sends the purchases, confirms and cancels it cannot
    /// answer to its primary (`crate::forward`). Call before the state is cloned.
    pub fn with_forwarder(mut self, f: crate::forward::Forwarder) -> AppState {
        match Arc::get_mut(&mut self.0) {
            Some(s) => s.forwarder = Some(f),
            None => tracing::error!("forwarding added after the state was shared; ignored"),
        }
        self
    }

    /// Where this node forwards confirms and cancels: its primary, when it is a
    /// secondary with forwarding on.
    pub fn forward_target(&self) -> Option<(&crate::forward::Forwarder, String)> {
        let f = self.forwarder.as_ref()?;
        Some((f, self.engine.forward_target()?))
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// The node's own account of itself, as `/admin/v1/status` reports it.
    pub fn node_status(&self) -> NodeStatus {
        let st = self.engine.status();
        NodeStatus {
            role: st.role,
            epoch: st.epoch,
            sale: st.sale,
            applied_seq: st.applied_seq,
            durable_seq: st.durable_seq,
            items: self.engine.items(),
            purchases_per_s: self.metrics.purchases_per_s(),
            now_ms: now_ms(),
            replication: self.replication.as_ref().map(|r| r.status(st.applied_seq)),
            lease: Some(self.engine.lease().status()),
            epochs: st.epochs,
            load: self.metrics.load(
                &self.admission.load(),
                self.forwarder.as_ref().map(|f| f.counters()),
            ),
        }
    }

    /// Why the node must not take traffic yet (empty when ready).
    pub fn not_ready(&self) -> Vec<String> {
        let st = self.engine.status();
        let mut why = Vec::new();
        // A standby with a sale (a secondary the operator parked while it replaces the
        // primary) still answers reads and sold-out; without a sale it has nothing to say.
        if st.sale.is_none() {
            why.push("no sale configured (PUT /admin/v1/config)".to_string());
        }
        if st.role == flashsale_core::admin::Role::Primary && !self.engine.lease().holds(st.epoch) {
            why.push(format!(
                "a primary without a selling lease for epoch {} (the operator renews it)",
                st.epoch
            ));
        }
        if let Some(e) = st.failed {
            why.push(format!("the WAL failed: {e}"));
        }
        if let Some(w) = self.replication.as_ref().and_then(|r| r.not_ready()) {
            why.push(w);
        }
        if self.shutting_down() {
            why.push("shutting down".to_string());
        }
        why
    }
}

/// The whole HTTP surface of a node. Every route passes [`ops::Observe`], and the admin
/// routes `admin::require_token` inside it.
pub fn app(state: AppState) -> Router {
    let s = &state;
    let admin_routes = Router::new()
        .route("/admin/v1/status", get(admin(s, admin::status)))
        .route("/admin/v1/config", put(admin(s, admin::put_config)))
        .route("/admin/v1/role", put(admin(s, admin::put_role)))
        .route("/admin/v1/ledger", get(admin(s, admin::ledger)))
        .route(
            crate::forward::FORWARD_ROUTE,
            post(admin(s, public::forwarded)),
        )
        .route(
            "/admin/v1/lease",
            put(admin(s, admin::put_lease)).delete(admin(s, admin::delete_lease)),
        )
        .route(
            flashsale_core::replication::WAL_ROUTE,
            get(admin(s, replication::wal))
                .post(admin(s, replication::post_wal))
                // Bounded by `ops::Observe` (`ops::body_limit`), not axum's 2 MiB default.
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            flashsale_core::replication::SNAPSHOT_ROUTE,
            get(admin(s, replication::snapshot))
                .put(admin(s, replication::put_snapshot))
                .layer(DefaultBodyLimit::disable()),
        );
    Router::new()
        .route("/v1/items", get(observed(s, public::list_items)))
        .route("/v1/items/{sku}", get(observed(s, public::get_item)))
        .route("/v1/purchases", post(observed(s, public::purchase)))
        .route("/v1/orders/{id}", get(observed(s, public::get_order)))
        .route(
            "/v1/orders/{id}/confirm",
            post(observed(s, public::confirm)),
        )
        .route("/v1/orders/{id}/cancel", post(observed(s, public::cancel)))
        .route("/healthz", get(observed(s, ops::healthz)))
        .route("/readyz", get(observed(s, ops::readyz)))
        .route("/metrics", get(observed(s, ops::metrics)))
        .route("/openapi.json", get(observed(s, openapi::openapi_json)))
        .merge(admin_routes)
        .fallback(observed(s, ops::not_found))
        .method_not_allowed_fallback(observed(s, ops::method_not_allowed))
        .with_state(state)
}

/// `handler` behind [`ops::Observe`]. Layered on each handler rather than on the whole
/// router with `Router::layer`, which wraps every route's boxed service in another: a
/// second cloned boxed service, boxed future and pass of axum's answer fix-ups
/// (`Content-Length`, `Allow`) on every request.
fn observed<H, T>(s: &AppState, handler: H) -> impl Handler<T, AppState>
where
    H: Handler<T, AppState>,
    T: 'static,
{
    handler.layer(ops::ObserveLayer(s.clone()))
}

/// An admin `handler`: `admin::require_token` first, inside [`ops::Observe`] (so a
/// refused call is timed and counted like any other).
fn admin<H, T>(s: &AppState, handler: H) -> impl Handler<T, AppState>
where
    H: Handler<T, AppState>,
    T: 'static,
{
    observed(
        s,
        handler.layer(axum::middleware::from_fn_with_state(
            s.clone(),
            admin::require_token,
        )),
    )
}

/// Serves `app(state)` on `listener` until `shutdown` resolves, then stops accepting,
/// lets in-flight requests finish (at most `limits.shutdown_drain`), and returns.
/// The engine is left open: its owner syncs and closes it.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = server::ConnectionLimits::from(&state.limits);
    let ticker = tokio::spawn(tick_rate(state.clone()));
    let flag = state.clone();
    let result = server::serve(listener, app(state), limits, async move {
        shutdown.await;
        flag.shutting_down.store(true, Ordering::Relaxed);
    })
    .await;
    ticker.abort();
    result
}

fn now_ms() -> flashsale_core::UnixMs {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// Feeds the purchase-rate meter once a second.
async fn tick_rate(state: AppState) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        state.metrics.tick();
    }
}
