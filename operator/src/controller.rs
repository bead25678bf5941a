//! The FlashSale controller: `observe → validate → build → apply → status` per sale,
//! behind a finalizer, with Events for every decision and an `error_policy` that waits
//! on an invalid spec and backs off on a transient error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flashsale_core::SaleConfig;
use flashsale_core::admin::Role;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};

use crate::build::{BuildConfig, BuildError, Owner};
use crate::crd::{
    CONDITION_DEGRADED, CONDITION_PROGRESSING, CONDITION_READY, FlashSale, FlashSaleStatus,
    PrimaryStatus,
};
use crate::metrics::Metrics;
use crate::nodes::{NodeClient, NodeError};
use crate::observe::{Observed, PodView, observe};
use crate::roles::{Step, assignment_note, plan};
use crate::status::{Facts, Problem, condition_is, next_status};
use crate::validate::{InvalidSpec, config_hash, validate};
use crate::{apply, failover, labels, replication};

/// Longest wait between two retries of a failing sale.
const BACKOFF_MAX_MS: u64 = 60_000;
const BACKOFF_BASE_MS: u64 = 500;
/// Requeue while a sale is still converging (pods starting, readiness pending).
const CONVERGING_REQUEUE_MS: u64 = 2_000;
/// Sales reconciled at once (bounds API and node calls).
const CONCURRENCY_MAX: u16 = 4;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] InvalidSpec),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
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

/// What every reconcile shares.
pub struct Context {
    pub client: kube::Client,
    pub nodes: NodeClient,
    pub build: BuildConfig,
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
    /// How often a healthy sale is re-read (sold counts in status).
    pub resync_ms: u64,
    /// Consecutive failures per sale, for backoff; an entry goes on the first success.
    failures: Mutex<HashMap<ObjectRef<FlashSale>, u32>>,
    /// The status this replica last wrote per sale (by uid). The watch cache can lag
    /// behind our own write; reading it back would re-announce a transition (a second
    /// `Selling` Event). The operator is the only writer of status, so its own last
    /// write is the truth until it restarts. One entry per sale, removed on delete.
    written: Mutex<HashMap<ObjectRef<FlashSale>, (String, FlashSaleStatus)>>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        nodes: NodeClient,
        build: BuildConfig,
        reporter: Reporter,
        metrics: Arc<Metrics>,
        resync_ms: u64,
    ) -> Self {
        Self {
            client,
            nodes,
            build,
            reporter,
            metrics,
            resync_ms,
            failures: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
        }
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
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
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        labels::MANAGED_BY,
        labels::FIELD_MANAGER
    ));
    let pods = watcher::Config::default().labels(&format!("{}={}", labels::NAME, labels::NODE_APP));
    Controller::new(
        api::<FlashSale>(&client, &namespace),
        watcher::Config::default(),
    )
    .owns(api::<StatefulSet>(&client, &namespace), owned.clone())
    .owns(api::<Service>(&client, &namespace), owned.clone())
    .owns(api::<Secret>(&client, &namespace), owned.clone())
    .owns(
        api::<PodDisruptionBudget>(&client, &namespace),
        owned.clone(),
    )
    .owns(api::<Deployment>(&client, &namespace), owned)
    // Pods belong to the StatefulSet, not the sale: map them back by label.
    .watches(api::<Pod>(&client, &namespace), pods, |pod| {
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
    ctx.metrics.observe_reconcile(ok, started.elapsed());
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

async fn publish(ctx: &Context, sale: &FlashSale, type_: EventType, reason: &str, note: String) {
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &sale.object_ref(&())).await {
        // An Event lost is not worth failing the reconcile over.
        tracing::warn!(error = %e, reason, "could not publish event");
    }
}

async fn write_status(
    ctx: &Context,
    sale: &FlashSale,
    prev: &FlashSaleStatus,
    next: &FlashSaleStatus,
) -> Result<(), kube::Error> {
    if prev == next {
        return Ok(());
    }
    let api: Api<FlashSale> =
        Api::namespaced(ctx.client.clone(), &sale.namespace().unwrap_or_default());
    let patch = serde_json::json!({ "status": next });
    api.patch_status(
        &sale.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    if let Some(uid) = sale.uid() {
        ctx.written
            .lock()
            .expect("not poisoned")
            .insert(ObjectRef::from_obj(sale), (uid, next.clone()));
    }
    Ok(())
}

/// The sale's current status: our own last write when the watch cache has not caught
/// up with it yet, else what the API server returned.
fn last_status(ctx: &Context, sale: &FlashSale) -> FlashSaleStatus {
    let written = ctx.written.lock().expect("not poisoned");
    match (written.get(&ObjectRef::from_obj(sale)), sale.uid()) {
        (Some((uid, status)), Some(current)) if *uid == current => status.clone(),
        _ => sale.status.clone().unwrap_or_default(),
    }
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

async fn reconcile_sale(sale: &FlashSale, ctx: &Context) -> Result<Action, Error> {
    let owner = Owner::of(sale)?;
    let prev = last_status(ctx, sale);
    let selector = labels::selector_string(&labels::node_selector(&owner.name));

    // validate
    let config = match validate(sale) {
        Ok(config) => config,
        Err(invalid) => {
            let facts = Facts {
                generation: sale.metadata.generation,
                selector,
                invalid: Some(invalid.to_string()),
                ..Facts::default()
            };
            let next = next_status(&prev, &facts, &now());
            if next != prev {
                publish(
                    ctx,
                    sale,
                    EventType::Warning,
                    "InvalidSpec",
                    invalid.to_string(),
                )
                .await;
            }
            write_status(ctx, sale, &prev, &next).await?;
            // Nothing will change until the spec does.
            return Ok(Action::await_change());
        }
    };
    let hash = config_hash(&config);

    // observe, build + apply
    let mut observed = observe(&ctx.client, &ctx.nodes, &owner.namespace, &owner.name).await?;
    let applied = apply::apply_all(
        &ctx.client,
        &owner,
        sale,
        &ctx.build,
        observed.admin_token.is_some(),
        observed.statefulset.is_some(),
        observed.redis_deployment_exists,
    )
    .await?;
    if applied.statefulset_created {
        publish(
            ctx,
            sale,
            EventType::Normal,
            "Created",
            format!(
                "created StatefulSet {} ({} nodes), Services, admin Secret, PodDisruptionBudget{}",
                owner.name,
                sale.spec.nodes.replicas,
                if sale.spec.redis.managed {
                    ", managed Redis"
                } else {
                    ""
                }
            ),
        )
        .await;
    }
    if applied.redis_removed {
        publish(
            ctx,
            sale,
            EventType::Normal,
            "RedisRemoved",
            "managed Redis deleted: the sale uses an external Redis".to_string(),
        )
        .await;
    }
    if applied.secret_created || observed.admin_token.is_none() {
        observed = observe(&ctx.client, &ctx.nodes, &owner.namespace, &owner.name).await?;
    }

    // roles and config, told to the nodes
    let role_plan = plan(
        prev.primary.as_ref().map(|p| p.pod.as_str()),
        prev.epoch,
        &observed.pods,
        &hash,
    );
    if role_plan.newly_chosen
        && let Some(primary) = &role_plan.primary
    {
        publish(
            ctx,
            sale,
            EventType::Normal,
            "PrimaryChosen",
            format!(
                "{primary} is the first primary (lowest ordinal whose node answered), epoch {}",
                role_plan.epoch
            ),
        )
        .await;
    }
    let mut problems = Vec::new();
    execute_steps(
        ctx,
        sale,
        &owner,
        &config,
        &hash,
        &role_plan.steps,
        &mut observed,
        &mut problems,
    )
    .await;

    // status
    let facts = facts(
        sale, &observed, &role_plan, &config, &hash, selector, problems,
    );
    let mut next = next_status(&prev, &facts, &now());
    replication_report(ctx, sale, &owner, &observed, &role_plan, &mut next).await;
    transition_events(ctx, sale, &prev, &next).await;
    write_status(ctx, sale, &prev, &next).await?;

    let converging = !condition_is(&next, CONDITION_READY, "True")
        || condition_is(&next, CONDITION_PROGRESSING, "True");
    let requeue_ms = if converging {
        CONVERGING_REQUEUE_MS
    } else {
        ctx.resync_ms
    };
    Ok(Action::requeue(Duration::from_millis(requeue_ms)))
}

/// Tells each node what the plan says, in order; a failed step skips that pod's later steps.
#[allow(clippy::too_many_arguments)]
async fn execute_steps(
    ctx: &Context,
    sale: &FlashSale,
    owner: &Owner,
    config: &SaleConfig,
    hash: &str,
    steps: &[Step],
    observed: &mut Observed,
    problems: &mut Vec<Problem>,
) {
    let Some(token) = observed.admin_token.clone() else {
        return;
    };
    let mut failed: Vec<String> = Vec::new();
    for step in steps {
        let pod_name = match step {
            Step::PushConfig { pod } | Step::AssignRole { pod, .. } | Step::Label { pod, .. } => {
                pod
            }
        };
        if failed.contains(pod_name) {
            continue;
        }
        let Some(view) = observed.pods.iter_mut().find(|p| &p.name == pod_name) else {
            continue;
        };
        let Some(url) = view.url() else { continue };
        let outcome: Result<(), (&'static str, String)> = match step {
            Step::PushConfig { pod } => match ctx.nodes.put_config(&url, &token, config).await {
                Ok(status) => {
                    view.node = Some(Ok(status));
                    view.config_hash = Some(hash.to_string());
                    let stock: u64 = config.items.iter().map(|i| i.stock).sum();
                    publish(
                        ctx,
                        sale,
                        EventType::Normal,
                        "ConfigPushed",
                        format!(
                            "{pod} runs config {hash}: {} items, {stock} units",
                            config.items.len()
                        ),
                    )
                    .await;
                    record(ctx, owner, pod, None, &[(labels::CONFIG_HASH, hash)]).await
                }
                Err(e) => Err(node_problem("ConfigRejected", pod, &e)),
            },
            Step::AssignRole { pod, assignment } => {
                match ctx.nodes.put_role(&url, &token, assignment).await {
                    Ok(status) => {
                        view.node = Some(Ok(status));
                        let note = assignment_note(
                            assignment.role,
                            assignment.epoch,
                            assignment.primary_url.as_deref(),
                        );
                        view.role_assignment = Some(note.clone());
                        publish(
                            ctx,
                            sale,
                            EventType::Normal,
                            "RoleAssigned",
                            format!("{pod} is {note}"),
                        )
                        .await;
                        record(ctx, owner, pod, None, &[(labels::ROLE_ASSIGNMENT, &note)]).await
                    }
                    Err(e) => Err(node_problem("RoleRejected", pod, &e)),
                }
            }
            Step::Label { pod, role } => {
                let r = record(ctx, owner, pod, Some(role), &[]).await;
                if r.is_ok() {
                    view.role_label = Some(role.to_string());
                }
                r
            }
        };
        if let Err((reason, message)) = outcome {
            publish(ctx, sale, EventType::Warning, reason, message.clone()).await;
            problems.push(Problem { reason, message });
            failed.push(pod_name.clone());
        }
    }
}

async fn record(
    ctx: &Context,
    owner: &Owner,
    pod: &str,
    role: Option<&str>,
    annotations: &[(&str, &str)],
) -> Result<(), (&'static str, String)> {
    apply::patch_pod(&ctx.client, &owner.namespace, pod, role, annotations)
        .await
        .map_err(|e| ("PodPatchFailed", format!("{pod}: {e}")))
}

fn node_problem(refused_reason: &'static str, pod: &str, e: &NodeError) -> (&'static str, String) {
    let reason = match e {
        NodeError::Refused { .. } => refused_reason,
        NodeError::Unreachable(_) | NodeError::Contract(_) => "NodeUnreachable",
    };
    (reason, format!("{pod}: {e}"))
}

/// What the status says, from what was observed and done.
fn facts(
    sale: &FlashSale,
    observed: &Observed,
    role_plan: &crate::roles::RolePlan,
    config: &SaleConfig,
    hash: &str,
    selector: String,
    mut problems: Vec<Problem>,
) -> Facts {
    let desired = sale.spec.nodes.replicas;
    let pods = &observed.pods;
    let primary_view = role_plan
        .primary
        .as_ref()
        .and_then(|p| pods.iter().find(|v| &v.name == p));
    // The primary runs the config it was given (hash on its pod); a secondary runs what
    // it replicated, so its items must match the spec's.
    let node_is = |v: &PodView, role: Role| {
        let Some(s) = v.node_status() else {
            return false;
        };
        let config_current = match role {
            Role::Primary => v.config_hash.as_deref() == Some(hash),
            _ => items_match(&s.items, config),
        };
        s.role == role && s.epoch == role_plan.epoch && s.sale.is_some() && config_current
    };
    let primary_selling = primary_view.is_some_and(|v| v.ready && node_is(v, Role::Primary));
    if let Some(primary) = &role_plan.primary
        && let Some(why) = failover::primary_unavailable(primary, pods)
    {
        problems.insert(
            0,
            Problem {
                reason: "PrimaryUnavailable",
                message: why,
            },
        );
    }
    let every_node_current = pods.iter().all(|v| {
        let role = if Some(&v.name) == role_plan.primary.as_ref() {
            Role::Primary
        } else {
            Role::Secondary
        };
        node_is(v, role) && v.ready
    });
    let sts_current = observed
        .statefulset
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .is_some_and(|s| {
            s.updated_replicas.unwrap_or(0) >= desired && s.current_revision == s.update_revision
        });
    Facts {
        generation: sale.metadata.generation,
        selector,
        desired_replicas: desired,
        replicas: pods.len() as i32,
        ready_replicas: pods.iter().filter(|p| p.ready).count() as i32,
        primary: role_plan.primary.as_ref().map(|pod| PrimaryStatus {
            pod: pod.clone(),
            endpoint: primary_view.and_then(|v| v.url()),
        }),
        epoch: role_plan.epoch,
        primary_selling,
        items: primary_view
            .and_then(|v| v.node_status())
            .filter(|s| s.sale.is_some())
            .map(|s| s.items.clone()),
        rolled_out: every_node_current && sts_current && pods.len() as i32 == desired,
        problems,
        invalid: None,
    }
}

/// A node's items are the spec's: same SKUs, stock and limits.
fn items_match(items: &[flashsale_core::ItemView], config: &SaleConfig) -> bool {
    items.len() == config.items.len()
        && config.items.iter().all(|want| {
            items.iter().any(|have| {
                have.sku == want.sku
                    && have.stock == want.stock
                    && have.per_customer_limit == want.per_customer_limit
            })
        })
}

async fn transition_events(
    ctx: &Context,
    sale: &FlashSale,
    prev: &FlashSaleStatus,
    next: &FlashSaleStatus,
) {
    let flipped = |t: &str, to: &str| condition_is(next, t, to) && !condition_is(prev, t, to);
    let message = |t: &str| {
        next.conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    if flipped(CONDITION_READY, "True") {
        publish(
            ctx,
            sale,
            EventType::Normal,
            "Selling",
            message(CONDITION_READY),
        )
        .await;
    }
    if flipped(CONDITION_PROGRESSING, "False") && prev.phase.is_some() {
        publish(
            ctx,
            sale,
            EventType::Normal,
            "RolledOut",
            format!(
                "every node runs generation {}",
                next.observed_generation.unwrap_or(0)
            ),
        )
        .await;
    }
    if flipped(CONDITION_DEGRADED, "True") {
        publish(
            ctx,
            sale,
            EventType::Warning,
            "Degraded",
            message(CONDITION_DEGRADED),
        )
        .await;
    }
    if flipped(CONDITION_DEGRADED, "False") && prev.phase.is_some() {
        publish(
            ctx,
            sale,
            EventType::Normal,
            "Recovered",
            "no known problem".to_string(),
        )
        .await;
    }
}

/// Replication in the status (`status.nodes`, `ReplicationHealthy`), an Event per
/// secondary that starts or stops lagging, and the live figures as metrics.
async fn replication_report(
    ctx: &Context,
    sale: &FlashSale,
    owner: &Owner,
    observed: &Observed,
    role_plan: &crate::roles::RolePlan,
    next: &mut FlashSaleStatus,
) {
    let limits = replication::Thresholds::from(&sale.spec.replication);
    let now = now();
    let a = replication::assess(
        &observed.pods,
        role_plan.primary.as_deref(),
        // `next` starts as a copy of the last status: these are the last verdicts.
        &next.nodes,
        limits,
        &now,
    );
    replication::apply_to_status(next, &a, sale.metadata.generation, &now);
    ctx.metrics
        .replication
        .record(&owner.namespace, &owner.name, &observed.pods, &a);
    for c in &a.started_lagging {
        let note = format!(
            "{} is {} records / {} ms behind the primary (limits {} records, {} ms)",
            c.node, c.lag_records, c.lag_ms, limits.max_lag_records, limits.max_lag_ms
        );
        publish(ctx, sale, EventType::Warning, "ReplicationLagging", note).await;
    }
    for c in &a.stopped_lagging {
        let note = format!(
            "{} caught up: {} records / {} ms behind",
            c.node, c.lag_records, c.lag_ms
        );
        publish(ctx, sale, EventType::Normal, "ReplicationCaughtUp", note).await;
    }
}

/// The sale is being deleted: stop the nodes first, then let garbage collection take the rest.
async fn cleanup(sale: &FlashSale, ctx: &Context) -> Result<Action, Error> {
    ctx.written
        .lock()
        .expect("not poisoned")
        .remove(&ObjectRef::from_obj(sale));
    ctx.metrics
        .replication
        .forget(&sale.namespace().unwrap_or_default(), &sale.name_any());
    let left = apply::stop_nodes(&ctx.client, sale).await?;
    if left > 0 {
        return Err(Error::TeardownPending(left));
    }
    let status = sale.status.clone().unwrap_or_default();
    let volumes = match sale.spec.nodes.storage.reclaim_policy {
        crate::crd::ReclaimPolicy::Retain => "WAL volumes retained (reclaimPolicy: Retain)",
        crate::crd::ReclaimPolicy::Delete => "WAL volumes deleted (reclaimPolicy: Delete)",
    };
    publish(
        ctx,
        sale,
        EventType::Normal,
        "Deleted",
        format!(
            "nodes stopped; final tally {} sold of {} ({} held); {volumes}",
            status.sold, status.stock, status.held
        ),
    )
    .await;
    Ok(Action::await_change())
}
