//! `stock-node serve` from flags to a running node — the composition root: read the
//! config, open the engine, apply the sale file and the start role, start replication,
//! bind, serve HTTP until told to stop, then let the engine make everything durable.

use std::future::Future;

use flashsale_core::SellError;
use flashsale_core::admin::Role;
use tokio::net::TcpListener;

use crate::admission::Admission;
use crate::config::{ConfigError, ServeArgs, StartRole, load_sale_config};
use crate::engine::{Engine, EngineError, EngineOptions};
use crate::http::{AppState, Limits, run};
use crate::metrics::Metrics;

/// Why the node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("opening the engine: {0}")]
    Engine(#[from] EngineError),
    #[error("applying the start configuration: {0}")]
    Start(#[from] SellError),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("starting replication: {0}")]
    Replication(#[from] crate::replication::ReplError),
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

/// Turns transparent huge pages off for this process unless `allow` (`--allow-thp`).
/// Called before the runtime and the engine start; the kernel checks the process's
/// setting at each page fault, so it covers what the allocator mapped before too.
///
/// Why: the allocator (mimalloc) asks for huge pages on its arenas, and with huge pages
/// the first write to each fresh 2 MiB zeroes the whole of it in one page fault, on the
/// thread that wrote. On the node that is the sequencer, which allocates the orders and
/// grows their index while a batch waits on it. Sampled on `make bench-node`'s VM at
/// 15k purchases/s open loop, the sequencer ran 5–10 stretches of 2–7.5 ms in 8 s that
/// were all page zeroing under `do_huge_pmd_anonymous_page` (`clear_page_erms`), and
/// none of 2 ms or more with them off (three runs). In closed-loop runs at the peak,
/// three alternating pairs, purchases/s did not drop (35.3–35.5k off against
/// 28.5–38.8k on, the machine's steal time moving it) and the process held 66 MB
/// against 73–86 MB. Redis turns them off for itself by default (`disable-thp`) for
/// the same latency reason. `bench-noop` runs the same way, so the benchmark's ceiling
/// and the node differ only in what they do.
pub fn huge_pages(allow: bool) {
    if allow {
        return;
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::warn!(error = %e, "prctl(PR_SET_THP_DISABLE) failed: transparent huge pages stay on for this process");
    }
}

/// Runs a node until `shutdown` resolves; returns once the engine's last sync is done.
pub async fn serve(
    args: ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let admin_token = args.admin_token()?;
    let sale = args.config.as_deref().map(load_sale_config).transpose()?;
    if let Some(path) = args
        .config
        .as_ref()
        .filter(|_| args.role == StartRole::Standby)
    {
        // Only the primary logs the sale's config (FAILOVER.md I3): refused before the
        // engine opens, so nothing changes.
        return Err(ConfigError::Invalid {
            path: path.clone(),
            reason: "a sale file is for a node started as the primary (`--role primary`); a standby takes the sale once it is the primary (`PUT /admin/v1/role`, then `PUT /admin/v1/config`)".into(),
        }
        .into());
    }
    let durability = args
        .durability
        .map(Into::into)
        .or(sale.as_ref().map(|s| s.durability))
        .unwrap_or_default();
    // A lone primary sells from the start; a standby waits for the operator's
    // `PUT /admin/v1/role`. Once a role is in the WAL, the WAL decides on restart.
    let initial_role = (args.role == StartRole::Primary).then_some(Role::Primary);
    let lease = std::sync::Arc::new(crate::lease::Lease::new(
        args.lease.into(),
        std::sync::Arc::new(crate::lease::SystemMonotonic::default()),
    ));
    let memory = args
        .memory_max_bytes
        .or_else(crate::admission::default_memory_max)
        .filter(|&m| m > 0)
        .map(crate::admission::MemoryBudget::new);
    match &memory {
        Some(m) => tracing::info!(budget = ?m, "new purchases stop at this resident memory"),
        None => tracing::info!(
            "no memory budget: no --memory-max-bytes, and no cgroup memory limit found"
        ),
    }
    let engine = Engine::open(EngineOptions {
        lease,
        data_dir: args.data_dir.clone(),
        durability,
        queue_len_max: args.engine_inflight_max,
        snapshot_every_records: args.snapshot_every_records,
        segment_bytes_max: args.segment_bytes_max,
        commit_interval_min: std::time::Duration::from_micros(args.group_commit_interval_us),
        initial_role,
        memory: memory.clone(),
        ..Default::default()
    })?;
    if let Some(mut sale) = sale {
        sale.durability = durability;
        engine.configure(sale).await?;
    }
    let limits = Limits {
        body_bytes_max: args.body_bytes_max as usize,
        request_timeout: std::time::Duration::from_millis(args.request_timeout_ms),
        connections_max: args.connections_max,
        idle_timeout: std::time::Duration::from_millis(args.idle_timeout_ms),
        shutdown_drain: std::time::Duration::from_millis(args.shutdown_drain_ms),
    };
    let admission = Admission::new(
        args.admission_rate_per_s,
        args.admission_burst,
        args.engine_inflight_max,
    )
    .with_memory(memory.clone());
    // Replication runs beside the server and stops with it (see `crate::replication`).
    let replication_stop = tokio_util::sync::CancellationToken::new();
    let replication = crate::replication::runtime::Replication::start(
        engine.clone(),
        &args.replication,
        admin_token.clone(),
        replication_stop.clone(),
    )?;
    let mut metrics = Metrics::new(engine.metrics());
    replication.stats.register(metrics.registry_mut());
    // Forwarding calls the primary's admin route: without a token it could only fail,
    // so a node without one answers `not_primary` as before.
    let forwarder = args
        .forward_limits()
        .filter(|_| admin_token.is_some())
        .map(|l| crate::forward::Forwarder::start(l, admin_token.clone()));
    let mut state = AppState::new(engine.clone(), admission, metrics, admin_token, limits)
        .with_replication(replication);
    if let Some(f) = forwarder {
        state = state.with_forwarder(f);
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: args.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(ServeError::Serve)?;
    let st = state.node_status();
    tracing::info!(%addr, role = ?st.role, epoch = st.epoch, sale = ?st.sale, ?durability, "listening");
    let sampler = memory.map(|m| {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_millis(
                crate::admission::MEMORY_SAMPLE_MS,
            ));
            loop {
                every.tick().await;
                m.sample();
            }
        })
    });
    let served = run(listener, state, shutdown).await;
    if let Some(s) = sampler {
        s.abort();
    }
    replication_stop.cancel();
    // Whatever happened to the server, what the engine acknowledged is made durable.
    engine.shutdown().await;
    tracing::info!("engine closed; bye");
    served.map_err(ServeError::Serve)
}
