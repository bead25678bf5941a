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
use k8s_openapi::api::batch::v1::Job;
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
use crate::conclude::{FailoverPart, Pass, conclude};
use crate::crd::{
    CONDITION_PROGRESSING, CONDITION_READY, FlashSale, FlashSaleStatus, ReplicationMode,
};
use crate::events::{Note, Notifier, Seen};
use crate::execute::{Leases, execute};
use crate::failover::act::Actor;
use crate::failover::keeper::Keeper;
use crate::failover::{self, World};
use crate::metrics::Metrics;
use crate::nodes::NodeClient;
use crate::observe::{Observed, Stores};
use crate::roles::{Known, RolePlan, plan};
use crate::status::{Facts, Problem, condition_is, next_status};
use crate::validate::{config_hash, validate};
use crate::{apply, build, events, labels, observe, rollout};

/// Longest wait between two retries of a failing sale.
const BACKOFF_MAX_MS: u64 = 60_000;
const BACKOFF_BASE_MS: u64 = 500;
/// Requeue while a sale is still converging (pods starting, readiness pending).
const CONVERGING_REQUEUE_MS: u64 = 2_000;
/// Requeue after a status write lost a race (another writer, or our cache was behind).
const CONFLICT_REQUEUE_MS: u64 = 200;
/// Sales reconciled at once (bounds API and node calls).
const CONCURRENCY_MAX: u16 = 4;
/// How long a reconcile waits for the caches' first lists before it gives up and
/// backs off (they list in well under a second on a healthy API server). Short: a pass
/// that waits holds a reconcile slot, and a failover a new leader resumes is waiting on
/// it — the retry (backoff from 1 s) finds the caches listed.
const CACHES_READY_MAX_MS: u64 = 3_000;

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
    #[error("the operator's caches have not listed the sale's objects yet")]
    CachesNotReady,
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// The sale was gone when its finalizer was to be removed: an earlier pass removed
    /// it and the apiserver deleted the sale, while this pass ran its cleanup again on
    /// the cached object. The deletion is done, not failed.
    fn is_deletion_done(&self) -> bool {
        use kube::runtime::finalizer::Error as F;
        matches!(self, Error::Finalizer(e)
            if matches!(&**e, F::RemoveFinalizer(kube::Error::Api(s)) if s.code == 404))
    }

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
    /// Whether this replica may still renew the nodes' selling leases
    /// (`failover::leadership`).
    pub leading: failover::leadership::Leading,
}

/// What every reconcile shares.
pub struct Context {
    pub client: kube::Client,
    pub settings: Settings,
    pub stores: Stores,
    /// The one Event recorder (kube folds repeats into a series).
    pub notifier: Notifier,
    /// Renews the primaries' selling leases.
    pub keeper: Arc<Keeper>,
    /// When this replica became the leader: any lease an earlier leader granted is over
    /// `leaseDuration + margin` after it.
    pub leader_since: Time,
    /// Consecutive failures per sale, for backoff; an entry goes on the first success.
    failures: Mutex<HashMap<ObjectRef<FlashSale>, u32>>,
    /// The autoscaler's memory of each sale (`crate::scale`).
    pub autoscalers: crate::scale::Autoscalers,
    /// The pod each sale's rollout deleted last (name, uid): nothing else is deleted
    /// until the cache has seen it go (`rollout::Sale::last_replaced`).
    rollouts: Mutex<HashMap<String, (String, String)>>,
    /// The replication mode each sale's primary pod was last seen to run
    /// (`failover::counts_on_quorum`).
    primary_modes: Mutex<HashMap<String, failover::PrimaryMode>>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        settings: Settings,
        stores: Stores,
        keeper: Arc<Keeper>,
        leader_since: Time,
    ) -> Self {
        let notifier = Notifier::new(Recorder::new(client.clone(), settings.reporter.clone()));
        Self {
            client,
            settings,
            stores,
            notifier,
            keeper,
            leader_since,
            failures: Mutex::new(HashMap::new()),
            autoscalers: crate::scale::Autoscalers::default(),
            rollouts: Mutex::new(HashMap::new()),
            primary_modes: Mutex::new(HashMap::new()),
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
    leader_since: Time,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        labels::MANAGED_BY,
        labels::FIELD_MANAGER
    ));
    // The node pods, and the recovery Jobs' pods (a finished one ends the recovery
    // before the Job controller marks its Job complete).
    let node_pods = watcher::Config::default().labels(&format!(
        "{} in ({},{})",
        labels::NAME,
        labels::NODE_APP,
        labels::RECOVERY_APP
    ));
    let (statefulsets, sts_changes) =
        cached(api::<StatefulSet>(&client, &namespace), owned.clone());
    let (secrets, secret_changes) = cached(api::<Secret>(&client, &namespace), owned.clone());
    let (deployments, deploy_changes) =
        cached(api::<Deployment>(&client, &namespace), owned.clone());
    let (pods, pod_changes) = cached(api::<Pod>(&client, &namespace), node_pods);
    let (jobs, job_changes) = cached(api::<Job>(&client, &namespace), owned.clone());
    let stores = Stores {
        statefulsets,
        pods,
        secrets,
        deployments,
        jobs,
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

    // The lease keeper renews leases off the reconcile loop, and wakes a sale's
    // reconcile the moment its primary's renewals start failing.
    let keeper = Keeper::new(
        settings
            .nodes
            .with_timeout(failover::timing::renew_every(failover::timing::LEASE_MIN)),
        settings.metrics.clone(),
        settings.leading.clone(),
    );
    let (wake_tx, wake_rx) = tokio::sync::mpsc::channel::<String>(64);
    let (stop_keeper, keeper_stopped) = tokio::sync::oneshot::channel::<()>();
    let keeper_task = tokio::spawn(keeper.clone().run(wake_tx, async {
        let _ = keeper_stopped.await;
    }));
    let wakes = tokio_stream_from(wake_rx).filter_map(|key| async move {
        let (ns, name) = key.split_once('/')?;
        Some(ObjectRef::<FlashSale>::new(name).within(ns))
    });
    let ctx = Arc::new(Context::new(
        client.clone(),
        settings,
        stores,
        keeper,
        leader_since,
    ));
    Controller::for_stream(sale_changes, sales)
        .owns_stream(sts_changes)
        .owns_stream(secret_changes)
        .owns_stream(deploy_changes)
        .owns_stream(job_changes)
        .reconcile_on(wakes)
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
    let _ = stop_keeper.send(());
    let _ = keeper_task.await;
}

/// An mpsc receiver as a stream.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn reconcile(sale: Arc<FlashSale>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let ns = sale.namespace().unwrap_or_default();
    let api: Api<FlashSale> = Api::namespaced(ctx.client.clone(), &ns);
    let key = ObjectRef::from_obj(&*sale);
    // Nothing is decided from a cache that has not listed yet (see `Stores::ready`).
    let ready = tokio::time::timeout(
        Duration::from_millis(CACHES_READY_MAX_MS),
        ctx.stores.ready(),
    )
    .await;
    if !matches!(ready, Ok(true)) {
        ctx.settings
            .metrics
            .observe_reconcile(false, started.elapsed());
        return Err(Error::CachesNotReady);
    }
    let result = finalizer(&api, labels::FINALIZER, sale, |event| async {
        match event {
            Finalizer::Apply(sale) => reconcile_sale(&sale, &ctx).await,
            Finalizer::Cleanup(sale) => cleanup(&sale, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    let result = match result {
        Err(e) if e.is_deletion_done() => Ok(Action::await_change()),
        r => r,
    };
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
        observed.floor_ordinal(&prev),
    );
    let applied = apply::apply(&ctx.client, &owner.namespace, &desired, &observed.existing)
        .await
        .map_err(Error::Apply)?;
    if let Some(token) = &applied.secret_created {
        // The cache has not seen the Secret yet: the nodes can be asked with the new token.
        observed.admin_token = Some(token.clone());
        observe::ask_nodes(&ctx.settings.nodes, &mut observed).await;
    }

    // failover (pure decisions, their actions, to a fixpoint; at most one transition)
    let key = format!("{}/{}", owner.namespace, owner.name);
    // Granted: never longer than the status records; fenced with: the longest any
    // leader may have granted (`failover::timing::lease_durations`).
    let leases_now = failover::timing::lease_durations(
        sale.spec.failover.lease_duration.into(),
        prev.lease_duration_ms.map(Duration::from_millis),
        prev.failover.is_none(),
        &now,
        &ctx.leader_since,
        &ctx.keeper.view(&key),
    );
    let lease_duration = leases_now.grant;
    // The clock read after the nodes answered: a deadline is judged by when the
    // decision is made, not by when the pass began (safe: a later reading only says
    // less time is left).
    if prev.failover.is_none()
        && let Some(mode) = failover::PrimaryMode::seen(
            &prev,
            &observed.pods,
            ctx.keeper.view(&key).pod_uid.as_deref(),
        )
    {
        let mut modes = ctx.primary_modes.lock().expect("not poisoned");
        let mode = mode.after(modes.get(&key));
        modes.insert(key.clone(), mode);
    }
    let last_replaced = ctx
        .rollouts
        .lock()
        .expect("not poisoned")
        .get(&key)
        .cloned();
    let lagging = lagging_nodes(&prev);
    let rollout_sale = |primary, in_failover, primary_failing| rollout::Sale {
        primary,
        replicas: sale.spec.nodes.replicas,
        in_failover,
        primary_failing,
        lagging: &lagging,
        last_replaced: last_replaced
            .as_ref()
            .map(|(n, u)| (n.as_str(), u.as_str())),
    };
    // Has the rollout come to the primary? (The failover's steady state moves it.)
    let primary_turn = rollout::plan(
        &observed,
        &rollout_sale(
            prev.primary.as_ref().map(|p| p.pod.as_str()),
            prev.failover.is_some(),
            false,
        ),
    )
    .primary_turn;
    let fo = failover_pass(
        ctx,
        sale,
        &owner,
        &prev,
        &mut observed,
        &key,
        leases_now,
        primary_turn,
    )
    .await;
    let (epoch_now, primary_now) = match &fo.next {
        Some(n) => (n.epoch, n.primary.clone()),
        None => (prev.epoch, prev.primary.as_ref().map(|p| p.pod.clone())),
    };
    let in_failover = prev.failover.is_some() || fo.next.is_some();

    // plan roles (pure) and tell the nodes: not while a failover moves the primary
    let leases = Leases {
        keeper: &ctx.keeper,
        key: &key,
        duration: lease_duration,
    };
    let role_plan = if in_failover {
        RolePlan {
            primary: primary_now.clone(),
            epoch: epoch_now,
            ..RolePlan::default()
        }
    } else {
        let lease = ctx.keeper.view(&key);
        let primary = prev.primary.as_ref().map(|p| p.pod.as_str());
        let primary_url = primary.and_then(|p| observed.pod(p)).and_then(|p| p.url());
        // A pod the StatefulSet is about to remove (scaled away) gets no role: it would
        // be told its role as it stops, and read as unreachable.
        let replicas = desired.statefulset.spec.as_ref().and_then(|s| s.replicas);
        let staying: Vec<_> = observed
            .pods
            .iter()
            .filter(|p| match (p.ordinal, replicas) {
                (Some(o), Some(r)) => i64::from(o) < i64::from(r),
                _ => true,
            })
            .cloned()
            .collect();
        plan(
            Known {
                primary,
                epoch: prev.epoch,
                config_hash: &hash,
                lease_held: lease.renews(
                    primary,
                    primary_url.as_deref(),
                    prev.epoch.max(1),
                    lease_duration,
                ),
                first_assignment: prev.items.is_empty() && prev.last_failover.is_none(),
            },
            &staying,
        )
    };
    let outcomes = execute(
        &ctx.client,
        &ctx.settings.nodes,
        &leases,
        &owner,
        &config,
        &hash,
        &role_plan.steps,
        &mut observed,
    )
    .await;

    // the pod template rollout: one pod replaced at a time, the primary never (a
    // switchover moves it first, above). The primary's checks are made again here: the
    // failover pass skips them when it answers a switchover request or has no token.
    let primary_failing = fo.primary_failing
        || primary_now.as_deref().is_some_and(|p| {
            failover::primary_problem(p, epoch_now, &observed.pods, &ctx.keeper.view(&key))
                .is_some()
        });
    let rolling = rollout::plan(
        &observed,
        &rollout_sale(primary_now.as_deref(), in_failover, primary_failing),
    );
    let replaced = match &rolling.replace {
        // A leader that lost its Lease mid-pass deletes nothing.
        Some(r) if ctx.settings.leading.is_on() => replace_pod(ctx, &owner, &key, r).await,
        _ => Ok(None),
    };
    let mut problems = fo.problems.clone();
    if let Err(p) = &replaced {
        problems.push(p.clone());
    }

    // status and notes (pure)
    let (state, last) = match &fo.next {
        Some(n) => (n.failover.clone(), n.last_failover.clone()),
        None => (prev.failover.clone(), prev.last_failover.clone()),
    };
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
        failover: FailoverPart {
            state,
            last,
            lease: ctx.keeper.view(&key),
            refused: &fo.refused,
            problems: &problems,
        },
        rollout: &rolling,
    });
    ctx.settings.metrics.replication.record(
        &owner.namespace,
        &owner.name,
        &observed.pods,
        &done.assessment,
    );
    let (mut next, mut notes) = (done.status, done.notes);
    if let Ok(Some(note)) = replaced {
        notes.push(note);
    }
    next.lease_duration_ms = Some(leases_now.record.as_millis() as u64);

    // autoscale (leader only: only the leader reconciles)
    let primary_ordinal_now = primary_now
        .as_deref()
        .and_then(|name| observed.ordinal_of(name));
    let scaled = ctx
        .autoscalers
        .pass(
            &ctx.client,
            sale,
            &key,
            &prev,
            &observed,
            primary_now.as_deref(),
            primary_ordinal_now,
            in_failover,
            // While the primary fails its checks before a failover begins, no
            // scale-down: it could remove the secondary the failover will need; nor
            // during a rollout, which takes a node away at a time itself.
            if fo.primary_failing {
                Some("a failing primary")
            } else if rolling.busy() {
                Some("a pod template rollout")
            } else {
                None
            },
        )
        .await;
    if let Some(a) = &scaled.status {
        let labels = crate::metrics::SaleLabels {
            namespace: owner.namespace.clone(),
            sale: owner.name.clone(),
        };
        let m = &ctx.settings.metrics;
        m.autoscaler_demand
            .get_or_create(&labels)
            .set(scaled.demand_per_s);
        m.autoscaler_desired
            .get_or_create(&labels)
            .set(i64::from(a.desired_replicas));
    } else {
        // Autoscaling off: no autoscaler series for the sale.
        ctx.settings
            .metrics
            .forget_autoscaler(&owner.namespace, &owner.name);
    }
    next.autoscaler = scaled.status;
    notes.extend(scaled.notes);

    // write the status, then tell what happened
    if !finish(ctx, sale, &prev, &next, &notes).await? {
        return Ok(Action::requeue(Duration::from_millis(CONFLICT_REQUEUE_MS)));
    }
    ctx.settings.metrics.failover_transition(&prev, &next);
    let token = observed.admin_token.clone();
    for action in &fo.deferred {
        let actor = actor(ctx, sale, &owner, token.as_deref(), &key, lease_duration);
        if let Some(actor) = actor
            && let Err(e) = actor.run(action, &mut observed).await
        {
            tracing::warn!(sale = %owner.name, error = %e, "failover action after the status write failed");
        }
    }
    let converging = !condition_is(&next, CONDITION_READY, "True")
        || condition_is(&next, CONDITION_PROGRESSING, "True");
    let mut requeue_ms = if converging {
        CONVERGING_REQUEUE_MS
    } else {
        ctx.settings.resync_ms
    };
    if let Some(ms) = fo.requeue_ms {
        // Not quite at once: the cache should hold the status just written first.
        requeue_ms = requeue_ms.min(ms.max(50));
    }
    if sale.spec.autoscaling.enabled {
        // One sample and one decision about every second.
        requeue_ms = requeue_ms.min(crate::scale::AUTOSCALE_REQUEUE_MS);
    }
    Ok(Action::requeue(Duration::from_millis(requeue_ms)))
}

/// The secondaries replication judged lagging at the last pass.
fn lagging_nodes(prev: &FlashSaleStatus) -> Vec<String> {
    prev.nodes
        .iter()
        .filter(|n| n.lagging)
        .map(|n| n.name.clone())
        .collect()
}

/// Passes within one reconcile in which the failover acts and decides again.
const FIXPOINT_ROUNDS: usize = 4;

/// What the failover did in a pass.
#[derive(Default)]
struct FailoverPass {
    /// The failover part of the status to write (at most one transition per pass).
    next: Option<failover::step::Next>,
    refused: Vec<String>,
    problems: Vec<Problem>,
    /// Done once the status is written (removing the switchover annotation moves the
    /// sale's resourceVersion, which the status write is guarded by).
    deferred: Vec<failover::Action>,
    requeue_ms: Option<u64>,
    /// The primary fails its checks, not yet long enough for a failover.
    primary_failing: bool,
}

fn actor<'a>(
    ctx: &'a Context,
    sale: &'a FlashSale,
    owner: &'a Owner,
    token: Option<&'a str>,
    key: &'a str,
    lease: Duration,
) -> Option<Actor<'a>> {
    let token = token?;
    Some(Actor {
        client: &ctx.client,
        nodes: &ctx.settings.nodes,
        keeper: &ctx.keeper,
        owner,
        sale,
        build: &ctx.settings.build,
        admin_token: token,
        lease,
        key,
    })
}

/// Runs the failover state machine: decide, act, look again, decide again — until a
/// transition is due (it is written with the status), nothing is left to do, or the
/// rounds are spent. No node hears of a new epoch before it is written: a `Begin` has
/// no node action.
#[allow(clippy::too_many_arguments)]
async fn failover_pass(
    ctx: &Context,
    sale: &FlashSale,
    owner: &Owner,
    prev: &FlashSaleStatus,
    observed: &mut Observed,
    key: &str,
    leases: failover::timing::LeaseDurations,
    rollout: bool,
) -> FailoverPass {
    let mut out = FailoverPass::default();
    let Some(token) = observed.admin_token.clone() else {
        return out;
    };
    let switchover_to = sale.annotations().get(labels::SWITCHOVER_TO).cloned();
    let lagging = lagging_nodes(prev);
    // The Job that ships into the candidate of this pass's status (`World::job`).
    let job_name = prev
        .failover
        .as_ref()
        .and_then(|f| f.candidate.as_deref())
        .map(|c| build::recovery_job_name(&owner.name, prev.epoch, c));
    for _ in 0..FIXPOINT_ROUNDS {
        let job = job_name
            .as_ref()
            .and_then(|name| {
                ctx.stores
                    .jobs
                    .get(&ObjectRef::new(name).within(&owner.namespace))
                    .map(|j| (name, j))
            })
            .map(|(job_name, j)| {
                let pods = ctx.stores.pods.state();
                let pods = pods.iter().filter(|p| {
                    p.namespace().as_deref() == Some(owner.namespace.as_str())
                        && p.labels().get(labels::JOB_NAME).map(String::as_str)
                            == Some(job_name.as_str())
                });
                failover::recover::job_state(&j, pods.map(|p| &**p))
            });
        let lease_view = ctx.keeper.view(key);
        let world_lease_uid = lease_view.pod_uid.clone();
        let world = World {
            status: prev,
            pods: &observed.pods,
            lease: lease_view,
            job,
            switchover_to: switchover_to.clone(),
            replicas: sale.spec.nodes.replicas,
            rollout,
            unhealthy_after_ms: Duration::from(sale.spec.failover.unhealthy_after).as_millis()
                as u64,
            lease_ms: leases.longest.as_millis() as u64,
            tail_policy: sale.spec.failover.tail_policy,
            quorum: failover::counts_on_quorum(
                sale.spec.replication.mode == ReplicationMode::Quorum,
                prev,
                world_lease_uid.as_deref(),
                &observed.pods,
                ctx.primary_modes.lock().expect("not poisoned").get(key),
            ),
            max_lag_records: sale.spec.replication.max_lag_records.max(0) as u64,
            lagging: lagging.clone(),
            now: now(),
            leader_since: ctx.leader_since.clone(),
            sale: owner.name.clone(),
        };
        let d = failover::decide(&world);
        out.refused.extend(d.refused);
        out.primary_failing |= d.primary_failing;
        if let Some(why) = d.scale_down_waits {
            out.problems.push(Problem {
                reason: "ScaleDownWaits",
                message: why,
            });
        }
        if let Some(why) = d.rollout_waits {
            out.problems.push(Problem {
                reason: "RolloutWaits",
                message: why,
            });
        }
        if let Some(ms) = d.requeue_ms {
            out.requeue_ms = Some(out.requeue_ms.map_or(ms, |m: u64| m.min(ms)));
        }
        let (later, now_actions): (Vec<_>, Vec<_>) = d
            .actions
            .into_iter()
            .partition(|a| *a == failover::Action::ClearSwitchoverRequest);
        for a in later {
            if !out.deferred.contains(&a) {
                out.deferred.push(a);
            }
        }
        let Some(actor) = actor(ctx, sale, owner, Some(token.as_str()), key, leases.grant) else {
            return out;
        };
        let mut failed = false;
        for a in &now_actions {
            if let Err(e) = actor.run(a, observed).await {
                tracing::info!(sale = %owner.name, action = ?a, error = %e, "failover action failed; retried next pass");
                out.problems.push(Problem {
                    reason: "FailoverActionFailed",
                    message: e,
                });
                failed = true;
                break;
            }
        }
        if let Some(next) = d.next {
            out.next = Some(next);
            return out;
        }
        if now_actions.is_empty() || failed {
            return out;
        }
    }
    out
}

/// Deletes a pod the rollout replaces (only the pod of that uid) and remembers it, so
/// no other is deleted before the cache has seen it go. `Ok(None)`: it was gone
/// already, or is another pod now.
async fn replace_pod(
    ctx: &Context,
    owner: &Owner,
    key: &str,
    r: &rollout::Replace,
) -> Result<Option<Note>, Problem> {
    match apply::delete_pod(&ctx.client, &owner.namespace, &r.pod, &r.uid).await {
        Ok(false) => Ok(None),
        Ok(true) => {
            ctx.rollouts
                .lock()
                .expect("not poisoned")
                .insert(key.to_string(), (r.pod.clone(), r.uid.clone()));
            tracing::info!(sale = %owner.name, pod = %r.pod, from = %r.from_revision, to = %r.to_revision, "pod replaced for the template rollout");
            Ok(Some(events::pod_replaced(r)))
        }
        Err(e) => Err(Problem {
            reason: "PodReplaceFailed",
            message: format!("deleting {} for the pod template rollout: {e}", r.pod),
        }),
    }
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
    let patch = status_patch(sale, prev, next);
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
/// A field `prev` had and `next` drops is written as `null` (a merge patch leaves out
/// what it does not name, so a finished failover would otherwise stay in the status).
pub fn status_patch(
    sale: &FlashSale,
    prev: &FlashSaleStatus,
    next: &FlashSaleStatus,
) -> serde_json::Value {
    let mut status = serde_json::to_value(next).unwrap_or_default();
    null_what_was_dropped(&serde_json::to_value(prev).unwrap_or_default(), &mut status);
    serde_json::json!({
        "metadata": { "resourceVersion": sale.resource_version() },
        "status": status,
    })
}

/// Marks with `null` every object key `old` has and `new` lacks, into nested objects.
fn null_what_was_dropped(old: &serde_json::Value, new: &mut serde_json::Value) {
    let (Some(old), Some(new)) = (old.as_object(), new.as_object_mut()) else {
        return;
    };
    for (key, was) in old {
        match new.get_mut(key) {
            None => {
                new.insert(key.clone(), serde_json::Value::Null);
            }
            Some(now) => null_what_was_dropped(was, now),
        }
    }
}

/// The sale is being deleted: stop the nodes first, then let garbage collection take the rest.
async fn cleanup(sale: &FlashSale, ctx: &Context) -> Result<Action, Error> {
    let owner = Owner::of(sale)?;
    ctx.settings
        .metrics
        .replication
        .forget(&owner.namespace, &owner.name);
    ctx.keeper
        .forget(&format!("{}/{}", owner.namespace, owner.name));
    ctx.autoscalers
        .forget(&format!("{}/{}", owner.namespace, owner.name));
    ctx.rollouts
        .lock()
        .expect("not poisoned")
        .remove(&format!("{}/{}", owner.namespace, owner.name));
    ctx.primary_modes
        .lock()
        .expect("not poisoned")
        .remove(&format!("{}/{}", owner.namespace, owner.name));
    ctx.settings
        .metrics
        .forget_autoscaler(&owner.namespace, &owner.name);
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

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::finalizer::Error as F;

    /// A pass whose finalizer removal found the sale already gone has finished the
    /// deletion: it is not a failed reconcile (it was logged and counted as one, and
    /// retried). Another failure to remove the finalizer still is.
    #[test]
    fn a_sale_gone_before_its_finalizer_is_removed_is_a_finished_deletion() {
        let api = |code| {
            kube::Error::Api(
                kube::core::Status::failure("flashsales \"s\" not found", "")
                    .with_code(code)
                    .boxed(),
            )
        };
        let remove = |e| Error::Finalizer(Box::new(F::RemoveFinalizer(e)));
        assert!(remove(api(404)).is_deletion_done());
        assert!(!remove(api(422)).is_deletion_done());
        assert!(!remove(api(500)).is_deletion_done());
        let cleanup = Error::Finalizer(Box::new(F::CleanupFailed(Error::CachesNotReady)));
        assert!(!cleanup.is_deletion_done());
    }
}
