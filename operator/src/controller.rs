//! The FlashSale controller. One pass over a sale ([`reconcile_sale`]) is a pipeline:
//!
//! ```text
//! validate (pure) → observe (caches + node statuses) → desired (pure) → apply
//!   → plan roles (pure) → execute (node calls) → status (pure) → notes (pure)
//!   → write status (optimistic lock) → publish notes
//! ```
//!
//! behind a finalizer, with an `error_policy` that waits on an invalid spec and backs off
//! on a transient error. A pass is started by a spec change (generation), a deletion or
//! annotation (finalizers, switchover requests), a change to an owned object or node pod,
//! and a timed requeue that refreshes the live figures — not by its own status writes,
//! which would otherwise wake it again on every purchase a crowd makes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Predicate, WatchStreamExt, predicates, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::build::{BuildConfig, BuildError, Owner};
use crate::conclude::{Pass, conclude};
use crate::crd::{CONDITION_PROGRESSING, CONDITION_READY, FlashSale, FlashSaleStatus};
use crate::events::{Note, Notifier, Seen};
use crate::execute::execute;
use crate::metrics::Metrics;
use crate::nodes::NodeClient;
use crate::observe::Stores;
use crate::roles::plan;
use crate::status::{Facts, condition_is, next_status};
use crate::validate::{config_hash, validate};
use crate::{apply, build, events, labels, observe};

/// Longest wait between two retries of a failing sale.
const BACKOFF_MAX_MS: u64 = 60_000;
const BACKOFF_BASE_MS: u64 = 500;
/// Requeue while a sale is still converging (pods starting, readiness pending).
const CONVERGING_REQUEUE_MS: u64 = 2_000;
/// Requeue after a status write lost a race (another writer, or our cache was behind).
const CONFLICT_REQUEUE_MS: u64 = 200;
/// Sales reconciled at once (bounds API and node calls).
const CONCURRENCY_MAX: u16 = 4;

/// Why a pass failed, by the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("build: {0}")]
    Build(#[from] BuildError),
    #[error("apply: {0}")]
    Apply(#[source] kube::Error),
    #[error("write status: {0}")]
    Status(#[source] kube::Error),
    #[error("cleanup: {0}")]
    Cleanup(#[source] kube::Error),
    #[error("teardown: {0} node pods still stopping")]
    TeardownPending(usize),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    fn is_teardown_pending(&self) -> bool {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::TeardownPending(_) => true,
            Error::Finalizer(e) => matches!(**e, F::CleanupFailed(Error::TeardownPending(_))),
            _ => false,
        }
    }
}

/// The operator's settings, from its flags.
pub struct Settings {
    pub nodes: NodeClient,
    pub build: BuildConfig,
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
    /// How often a healthy sale is re-read (sold counts in status).
    pub resync_ms: u64,
}

/// What every reconcile shares.
pub struct Context {
    pub client: kube::Client,
    pub settings: Settings,
    pub stores: Stores,
    /// The one Event recorder (kube folds repeats into a series).
    pub notifier: Notifier,
    /// Consecutive failures per sale, for backoff; an entry goes on the first success.
    failures: Mutex<HashMap<ObjectRef<FlashSale>, u32>>,
}

impl Context {
    pub fn new(client: kube::Client, settings: Settings, stores: Stores) -> Self {
        let notifier = Notifier::new(Recorder::new(client.clone(), settings.reporter.clone()));
        Self {
            client,
            settings,
            stores,
            notifier,
            failures: Mutex::new(HashMap::new()),
        }
    }
}

fn api<K>(client: &kube::Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A watch of `K` reflected into a cache: the cache, and the stream of changed objects.
fn cached<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    (reader, stream)
}

/// What wakes a sale: its spec (generation), its finalizers (deletion, cleanup) and its
/// annotations (requests such as a switchover) — not its status.
pub fn sale_predicate() -> impl Predicate<FlashSale> {
    predicates::generation
        .combine(predicates::finalizers)
        .combine(predicates::annotations)
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: kube::Client,
    settings: Settings,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        labels::MANAGED_BY,
        labels::FIELD_MANAGER
    ));
    let node_pods =
        watcher::Config::default().labels(&format!("{}={}", labels::NAME, labels::NODE_APP));
    let (statefulsets, sts_changes) =
        cached(api::<StatefulSet>(&client, &namespace), owned.clone());
    let (secrets, secret_changes) = cached(api::<Secret>(&client, &namespace), owned.clone());
    let (deployments, deploy_changes) =
        cached(api::<Deployment>(&client, &namespace), owned.clone());
    let (pods, pod_changes) = cached(api::<Pod>(&client, &namespace), node_pods);
    let stores = Stores {
        statefulsets,
        pods,
        secrets,
        deployments,
    };

    let (sales, sale_writer) = reflector::store();
    let sale_changes = watcher(
        api::<FlashSale>(&client, &namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(sale_writer)
    .applied_objects()
    .predicate_filter(sale_predicate(), Default::default());

    let ctx = Arc::new(Context::new(client.clone(), settings, stores));
    Controller::for_stream(sale_changes, sales)
        .owns_stream(sts_changes)
        .owns_stream(secret_changes)
        .owns_stream(deploy_changes)
        .owns(api::<Service>(&client, &namespace), owned.clone())
        .owns(api::<PodDisruptionBudget>(&client, &namespace), owned)
        // Pods belong to the StatefulSet, not the sale: map them back by label.
        .watches_stream(pod_changes, |pod: Pod| {
            let sale = pod.labels().get(labels::INSTANCE)?.clone();
            Some(ObjectRef::new(&sale).within(&pod.namespace()?))
        })
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY_MAX))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile round");
            }
        })
        .await;
}

async fn reconcile(sale: Arc<FlashSale>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let ns = sale.namespace().unwrap_or_default();
    let api: Api<FlashSale> = Api::namespaced(ctx.client.clone(), &ns);
    let key = ObjectRef::from_obj(&*sale);
    let result = finalizer(&api, labels::FINALIZER, sale, |event| async {
        match event {
            Finalizer::Apply(sale) => reconcile_sale(&sale, &ctx).await,
            Finalizer::Cleanup(sale) => cleanup(&sale, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    // Nodes still stopping on delete is progress, not a failure.
    let ok = match &result {
        Ok(_) => true,
        Err(e) => e.is_teardown_pending(),
    };
    ctx.settings
        .metrics
        .observe_reconcile(ok, started.elapsed());
    if result.is_ok() {
        ctx.failures.lock().expect("not poisoned").remove(&key);
    }
    result
}

fn error_policy(sale: Arc<FlashSale>, error: &Error, ctx: Arc<Context>) -> Action {
    if error.is_teardown_pending() {
        // Not a failure: the nodes are stopping; look again soon.
        return Action::requeue(Duration::from_millis(CONVERGING_REQUEUE_MS));
    }
    let mut failures = ctx.failures.lock().expect("not poisoned");
    let n = failures.entry(ObjectRef::from_obj(&*sale)).or_insert(0);
    *n = n.saturating_add(1);
    let delay_ms = BACKOFF_BASE_MS
        .saturating_mul(1 << (*n).min(10))
        .min(BACKOFF_MAX_MS);
    tracing::warn!(sale = %sale.name_any(), error = %error, retry_in_ms = delay_ms, "reconcile failed");
    Action::requeue(Duration::from_millis(delay_ms))
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// One pass over a sale; see the module doc for the pipeline.
async fn reconcile_sale(sale: &FlashSale, ctx: &Context) -> Result<Action, Error> {
    let owner = Owner::of(sale)?;
    let prev = sale.status.clone().unwrap_or_default();
    let selector = labels::selector_string(&labels::node_selector(&owner.name));
    let now = now();

    // validate (pure)
    let config = match validate(sale) {
        Ok(config) => config,
        Err(invalid) => {
            let facts = Facts {
                generation: sale.metadata.generation,
                selector,
                invalid: Some(invalid.to_string()),
                ..Facts::default()
            };
            let next = next_status(&prev, &facts, &now);
            let notes = events::notes(&prev, &next, &Seen::default());
            finish(ctx, sale, &prev, &next, &notes).await?;
            // Nothing will change until the spec does.
            return Ok(Action::await_change());
        }
    };
    let hash = config_hash(&config);

    // observe: the caches, then the nodes
    let mut observed = observe::from_caches(&ctx.stores, &owner.namespace, &owner.name);
    observe::ask_nodes(&ctx.settings.nodes, &mut observed).await;

    // desired (pure) and apply
    let desired = build::desired(
        &owner,
        sale,
        &ctx.settings.build,
        &observed.existing,
        &apply::new_admin_token(),
    );
    let applied = apply::apply(&ctx.client, &owner.namespace, &desired, &observed.existing)
        .await
        .map_err(Error::Apply)?;
    if let Some(token) = &applied.secret_created {
        // The cache has not seen the Secret yet: the nodes can be asked with the new token.
        observed.admin_token = Some(token.clone());
        observe::ask_nodes(&ctx.settings.nodes, &mut observed).await;
    }

    // plan roles (pure) and tell the nodes
    let role_plan = plan(
        prev.primary.as_ref().map(|p| p.pod.as_str()),
        prev.epoch,
        &observed.pods,
        &hash,
    );
    let outcomes = execute(
        &ctx.client,
        &ctx.settings.nodes,
        &owner,
        &config,
        &hash,
        &role_plan.steps,
        &mut observed,
    )
    .await;

    // status and notes (pure)
    let done = conclude(&Pass {
        sale,
        prev: &prev,
        observed: &observed,
        role_plan: &role_plan,
        config: &config,
        hash: &hash,
        selector,
        applied,
        outcomes: &outcomes,
        now: &now,
    });
    ctx.settings.metrics.replication.record(
        &owner.namespace,
        &owner.name,
        &observed.pods,
        &done.assessment,
    );
    let (next, notes) = (done.status, done.notes);

    // write the status, then tell what happened
    if !finish(ctx, sale, &prev, &next, &notes).await? {
        return Ok(Action::requeue(Duration::from_millis(CONFLICT_REQUEUE_MS)));
    }
    let converging = !condition_is(&next, CONDITION_READY, "True")
        || condition_is(&next, CONDITION_PROGRESSING, "True");
    let requeue_ms = if converging {
        CONVERGING_REQUEUE_MS
    } else {
        ctx.settings.resync_ms
    };
    Ok(Action::requeue(Duration::from_millis(requeue_ms)))
}

/// Writes the status if it changed, guarded by the resourceVersion the pass read, then
/// publishes the notes (the transitions only if the status was written). `Ok(false)`:
/// the write lost a race; the caller requeues and the next pass decides again.
async fn finish(
    ctx: &Context,
    sale: &FlashSale,
    prev: &FlashSaleStatus,
    next: &FlashSaleStatus,
    notes: &[Note],
) -> Result<bool, Error> {
    let (written, version) = match write_status(ctx, sale, prev, next).await {
        Ok(version) => (true, version),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            ctx.settings.metrics.status_conflicts.inc();
            tracing::debug!(sale = %sale.name_any(), "status write lost a race; reconciling again");
            (false, sale.resource_version())
        }
        Err(e) => return Err(Error::Status(e)),
    };
    ctx.notifier.publish(sale, version, notes, written).await;
    Ok(written)
}

/// Writes `next` as the status unless it equals `prev`, with the sale's resourceVersion
/// as a precondition (a merge patch that names `metadata.resourceVersion` fails with 409
/// when the object moved since it was read). Returns the resourceVersion now current.
async fn write_status(
    ctx: &Context,
    sale: &FlashSale,
    prev: &FlashSaleStatus,
    next: &FlashSaleStatus,
) -> Result<Option<String>, kube::Error> {
    if prev == next {
        return Ok(sale.resource_version());
    }
    let api: Api<FlashSale> =
        Api::namespaced(ctx.client.clone(), &sale.namespace().unwrap_or_default());
    let patch = status_patch(sale, next);
    let written = api
        .patch_status(
            &sale.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(written.resource_version())
}

/// The status write: a merge patch of the whole status that names the resourceVersion
/// the pass read, which makes the API server refuse it (409) if the sale moved since.
pub fn status_patch(sale: &FlashSale, next: &FlashSaleStatus) -> serde_json::Value {
    serde_json::json!({
        "metadata": { "resourceVersion": sale.resource_version() },
        "status": next,
    })
}

/// The sale is being deleted: stop the nodes first, then let garbage collection take the rest.
async fn cleanup(sale: &FlashSale, ctx: &Context) -> Result<Action, Error> {
    let owner = Owner::of(sale)?;
    ctx.settings
        .metrics
        .replication
        .forget(&owner.namespace, &owner.name);
    apply::delete_statefulset(&ctx.client, &owner.namespace, &owner.name)
        .await
        .map_err(Error::Cleanup)?;
    let left = observe::from_caches(&ctx.stores, &owner.namespace, &owner.name)
        .pods
        .len();
    if left > 0 {
        return Err(Error::TeardownPending(left));
    }
    let note = events::deleted(
        &sale.status.clone().unwrap_or_default(),
        sale.spec.nodes.storage.reclaim_policy,
    );
    ctx.notifier
        .publish(sale, sale.resource_version(), &[note], false)
        .await;
    Ok(Action::await_change())
}
