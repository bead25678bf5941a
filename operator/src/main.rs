//! `flashsale-operator`: the controller binary. Connects in-cluster or through a
//! kubeconfig, serves metrics and health, takes the leader Lease, then reconciles
//! FlashSales until SIGTERM (or until it loses the Lease: it exits and is restarted).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use flashsale_operator::build::BuildConfig;
use flashsale_operator::controller::{self, Settings};
use flashsale_operator::failover::leadership::{self, Leading};
use flashsale_operator::http::{self, HttpState};
use flashsale_operator::metrics::Metrics;
use flashsale_operator::nodes::NodeClient;
use kube::runtime::events::Reporter;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Human,
}

#[derive(Parser, Debug)]
#[command(
    version,
    about = "The flashsale operator: FlashSale resources become running sales"
)]
struct Args {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "FLASHSALE_OPERATOR_LISTEN",
        default_value = "0.0.0.0:8081"
    )]
    listen: String,
    #[arg(
        long,
        env = "FLASHSALE_OPERATOR_LOG_FORMAT",
        value_enum,
        default_value = "human"
    )]
    log_format: LogFormat,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "FLASHSALE_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Stock node image for sales that name none.
    #[arg(long, env = "FLASHSALE_NODE_IMAGE")]
    node_image: Option<String>,
    /// Image of the managed Redis for sales that name none.
    #[arg(long, env = "FLASHSALE_REDIS_IMAGE", default_value = "redis:7.2")]
    redis_image: String,
    /// Timeout of one admin call that changes a node (a status read gets half of it).
    #[arg(long, default_value_t = 1_000)]
    node_timeout_ms: u64,
    /// How often a healthy sale is re-read (status figures).
    #[arg(long, default_value_t = 5_000)]
    resync_ms: u64,
    /// Take a Lease before reconciling, so several replicas are safe.
    #[arg(long, env = "FLASHSALE_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    #[arg(long, default_value = "flashsale-operator")]
    lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// The leader Lease's duration: a hand-over takes up to this plus about 2 s, which
    /// must be shorter than what a node's selling lease can have left (checked at start).
    #[arg(long, env = "FLASHSALE_LEADER_LEASE_DURATION_S", default_value_t = 2,
        value_parser = clap::value_parser!(u64).range(2..=60))]
    lease_duration_s: u64,
    /// This replica's name in the Lease and in Events.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// `NAMESPACE/NAME` of the ServiceAccount whose tokens (audience
    /// `flashsale-operator`) open the read-only sale views; without it they are closed.
    #[arg(long)]
    viewer_service_account: Option<String>,
    /// Refuse to start on an installed FlashSale CRD that lacks a field this operator
    /// writes (`crd::installed`); needs `get` on that CRD. Off only where the operator
    /// may not read CRDs: an older CRD then loses those fields on every write.
    #[arg(long, env = "FLASHSALE_CRD_CHECK", default_value_t = true, action = clap::ArgAction::Set)]
    crd_check: bool,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn,kube_lease_manager=info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

/// Reads the leader Lease every quarter of its duration and calls `lost` once it is
/// another's, or once its last `renewTime` plus its duration has passed without a later
/// one seen (the Lease manager's renewals failing, or the API server out of reach):
/// from then on another replica may lead (`failover::leadership`). A read may take up
/// to the Lease's duration (a slow API server is not a lost Lease); the deadline is
/// watched meanwhile.
async fn lead_while_leased(
    api: kube::Api<k8s_openapi::api::coordination::v1::Lease>,
    name: String,
    identity: String,
    duration: std::time::Duration,
    lost: impl FnOnce(String),
) {
    use std::time::{Duration, SystemTime};
    let every = (duration / 4).max(Duration::from_millis(250));
    // Just acquired: its renewTime is at most moments old; half a duration is sure.
    let mut until = SystemTime::now() + duration / 2;
    let left = |until: SystemTime| until.duration_since(SystemTime::now()).unwrap_or_default();
    loop {
        tokio::select! {
            read = tokio::time::timeout(duration, api.get(&name)) => match read {
                Ok(Ok(l)) => match leadership::held_until(&l.spec.unwrap_or_default(), &identity) {
                    Ok(Some(t)) => until = until.max(t),
                    Ok(None) => {}
                    Err(why) => return lost(why),
                },
                Ok(Err(e)) => tracing::warn!(error = %e, "reading the leader Lease"),
                Err(_) => tracing::warn!("reading the leader Lease timed out"),
            },
            _ = tokio::time::sleep(left(until)) => {}
        }
        if left(until).is_zero() {
            return lost(format!(
                "not renewed for its duration ({} s): another replica may lead",
                duration.as_secs()
            ));
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::time::sleep(left(until)) => {}
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Refuses to run against a FlashSale CRD that lacks a field this operator writes: the
/// API server would drop it from every write without an error, and some of them carry
/// the failover's safety (`flashsale_operator::crd::installed`). Before the leader
/// Lease, so an operator upgraded without its CRD never leads: the Deployment's rollout
/// stops on it while the old replica goes on. Checked once, at start (a CRD replaced by
/// an older one later is not seen until the next start). Without the right to read the
/// CRD it refuses too, naming the rule (`--crd-check=false` turns the check off).
async fn check_installed_crd(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::CustomResourceExt;
    const APPLY: &str = "kubectl apply --server-side --force-conflicts -f charts/flashsale-operator/crds/flashsale.dev_flashsales.yaml";
    let wanted = flashsale_operator::crd::FlashSale::crd();
    let name = wanted.metadata.name.clone().unwrap_or_default();
    let api: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    let installed = match api.get_opt(&name).await {
        Ok(Some(crd)) => crd,
        Ok(None) => anyhow::bail!(
            "the CustomResourceDefinition {name} is not installed: install the chart, or {APPLY}"
        ),
        Err(kube::Error::Api(e)) if e.code == 403 => anyhow::bail!(
            "cannot read the CustomResourceDefinition {name} to check it has every field this operator writes ({}): grant get on customresourcedefinitions/{name} (the chart's RBAC does), or start with --crd-check=false",
            e.message
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("reading the CustomResourceDefinition {name}"));
        }
    };
    let missing = flashsale_operator::crd::installed::missing_fields(&installed, &wanted);
    if !missing.is_empty() {
        anyhow::bail!(
            "the installed CustomResourceDefinition {name} is older than this operator: it lacks {}, which the API server would drop from every write. Apply this release's CRD first (helm upgrade does not): {APPLY}",
            missing.join(", ")
        );
    }
    tracing::info!(crd = %name, "the installed CRD has every field this operator writes");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    // A leader crash must not let a primary's lease run out (README, "Failover: timings").
    flashsale_operator::failover::timing::check_handover(
        std::time::Duration::from_secs(args.lease_duration_s),
        flashsale_operator::failover::timing::LEASE_MIN,
    )
    .map_err(|e| anyhow::anyhow!("--lease-duration-s: {e}"))?;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes client: neither in-cluster nor a kubeconfig")?;
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("flashsale-operator-{}", std::process::id()));
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));

    // One signal for everything that must stop: SIGTERM or a lost Lease.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            terminated().await;
            tracing::info!("SIGTERM: shutting down");
            let _ = stop_tx.send(true);
        });
    }

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, "serving /metrics, /healthz, /readyz");
    let http_task = tokio::spawn(http::run(
        listener,
        HttpState {
            metrics: metrics.clone(),
            ready: ready.clone(),
            sales: Some(http::SalesAccess {
                client: client.clone(),
                nodes: NodeClient::new(args.node_timeout_ms).context("node admin client")?,
                viewer: args
                    .viewer_service_account
                    .as_deref()
                    .map(http::viewer_username)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--viewer-service-account: {e}"))?,
            }),
        },
        stopped(stop_rx.clone()),
    ));
    client
        .apiserver_version()
        .await
        .context("API server unreachable")?;
    if args.crd_check {
        check_installed_crd(&client).await?;
    } else {
        tracing::warn!(
            "--crd-check=false: the installed CRD is not checked for the fields this operator writes"
        );
    }
    ready.store(true, Ordering::Relaxed);

    let mut lease = None;
    let leading = Leading::default();
    if args.leader_elect {
        let namespace = args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
            .with_namespace(&namespace)
            .with_identity(&identity)
            .with_duration(args.lease_duration_s)
            // Renewed halfway through: a slow API server call does not lose the Lease.
            .with_grace((args.lease_duration_s / 2).max(1))
            .build()
            .await
            .context("lease manager")?;
        let (mut is_leader, task) = manager.watch().await;
        tracing::info!(lease = %args.lease_name, %namespace, %identity, "waiting for the leader Lease");
        let mut stop = stop_rx.clone();
        tokio::select! {
            r = is_leader.wait_for(|l| *l) => { r.context("lease manager stopped")?; }
            _ = stop.wait_for(|s| *s) => { return Ok(()); }
        }
        tracing::info!(%identity, "leading");
        metrics.leader.set(1);
        // Losing the Lease stops this replica; its restart re-contends. No selling
        // lease is renewed from then on, not even while the controller winds down.
        let on_lost = {
            let (stop_tx, leading) = (stop_tx.clone(), leading.clone());
            move |why: String| {
                leading.turn_off();
                tracing::error!(%why, "lost the leader Lease: stopping");
                let _ = stop_tx.send(true);
            }
        };
        let mut watch_leader = is_leader.clone();
        let lost = on_lost.clone();
        let watcher = tokio::spawn(async move {
            if watch_leader.wait_for(|l| !*l).await.is_ok() {
                lost("the Lease manager says so".into());
            }
        });
        let deadline = tokio::spawn(lead_while_leased(
            kube::Api::namespaced(client.clone(), &namespace),
            args.lease_name.clone(),
            identity.clone(),
            std::time::Duration::from_secs(args.lease_duration_s),
            on_lost,
        ));
        lease = Some((is_leader, watcher, deadline, task));
    }

    let nodes = NodeClient::new(args.node_timeout_ms).context("node admin client")?;
    let mut build = BuildConfig {
        redis_image: args.redis_image.clone(),
        ..BuildConfig::default()
    };
    if let Some(image) = args.node_image.clone() {
        build.node_image = image;
    }
    let reporter = Reporter {
        controller: "flashsale-operator".into(),
        instance: Some(identity),
    };
    let settings = Settings {
        nodes,
        build,
        reporter,
        metrics: metrics.clone(),
        resync_ms: args.resync_ms,
        leading,
    };
    let leader_since = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
    controller::run(
        client,
        settings,
        args.namespace.clone(),
        leader_since,
        stopped(stop_rx.clone()),
    )
    .await;
    tracing::info!("controller stopped");

    if let Some((is_leader, watcher, deadline, task)) = lease {
        // Dropping every receiver makes the lease task release the Lease for a fast hand-over.
        watcher.abort();
        let _ = watcher.await;
        deadline.abort();
        let _ = deadline.await;
        drop(is_leader);
        let _ = task.await;
        metrics.leader.set(0);
    }
    let _ = stop_tx.send(true);
    let _ = http_task.await;
    Ok(())
}
