//! The local cluster's stand-in for kube-proxy and cluster DNS: watches Services,
//! EndpointSlices and Pods, programs iptables nat rules (ClusterIP:port → a ready
//! endpoint) and keeps a hosts file that every pod sees as `/etc/hosts`.
//!
//! Pipeline: watch → (debounce) → model → render rules + hosts → apply if changed.

mod apply;
pub mod cleanup;
mod hosts;
mod model;
mod rules;
#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::config::ProxyConfig;
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

pub use model::ApiServer;

/// Changes arriving within this window are applied together.
const DEBOUNCE_MS: u64 = 100;
/// Re-apply even without changes, so rules flushed by someone else come back.
const RESYNC_MS: u64 = 30_000;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("could not run {program}: {source}")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("{program} {args} failed: {stderr}")]
    Failed {
        program: &'static str,
        args: String,
        stderr: String,
    },
    #[error("{program} did not finish within {timeout_ms} ms")]
    Timeout {
        program: &'static str,
        timeout_ms: u64,
    },
    #[error("writing the hosts file {path}: {source}")]
    Hosts {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Parses `https://10.213.1.1:6443` into the API server's address.
pub fn api_server_from_url(url: &str) -> Option<ApiServer> {
    let rest = url.split("://").nth(1)?.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':')?;
    Some(ApiServer {
        ip: host.parse::<Ipv4Addr>().ok()?,
        port: port.parse().ok()?,
    })
}

/// Writes an initial hosts file (localhost only) if there is none, so pods started
/// before the first sync still have an `/etc/hosts` to mount.
pub fn ensure_hosts_file(path: &Path) -> Result<(), ProxyError> {
    if path.exists() {
        return Ok(());
    }
    apply::write_in_place(path, &hosts::render(&[], &[], &[]))
}

struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
}

/// What was applied last, so an unchanged cluster costs no iptables call.
#[derive(Default)]
struct Applied {
    rules: String,
    hosts: String,
}

/// Runs until `shutdown` completes. Sync failures are logged and retried; they
/// never stop the pod runner.
///
/// `api_server` is where `kubernetes.default.svc` should lead (the API server on
/// the bridge, see [`api_server_from_url`]); `None` leaves that Service unproxied.
pub async fn run(
    client: Client,
    config: ProxyConfig,
    api_server: Option<ApiServer>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProxyError> {
    ensure_hosts_file(&config.hosts_file)?;
    apply::enable_forwarding().await?;

    let (services, svc_writer) = reflector::store();
    let (slices, slice_writer) = reflector::store();
    let (pods, pod_writer) = reflector::store();
    let wc = watcher::Config::default;
    // Each stream yields Some(kind) once its initial list is complete, None otherwise.
    let svc_events = reflector(
        svc_writer,
        watcher(Api::<Service>::all(client.clone()), wc()),
    )
    .default_backoff()
    .map(|e| (0usize, e.map(|e| matches!(e, watcher::Event::InitDone))));
    let slice_events = reflector(
        slice_writer,
        watcher(Api::<EndpointSlice>::all(client.clone()), wc()),
    )
    .default_backoff()
    .map(|e| (1usize, e.map(|e| matches!(e, watcher::Event::InitDone))));
    let pod_events = reflector(pod_writer, watcher(Api::<Pod>::all(client), wc()))
        .default_backoff()
        .map(|e| (2usize, e.map(|e| matches!(e, watcher::Event::InitDone))));
    let mut events =
        stream::select_all([svc_events.boxed(), slice_events.boxed(), pod_events.boxed()]);
    let stores = Stores {
        services,
        slices,
        pods,
    };

    let mut ready = [false; 3];
    let mut applied = Applied::default();
    let mut resync = tokio::time::interval(Duration::from_millis(RESYNC_MS));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = resync.tick() => applied = Applied::default(),
            event = events.next() => match event {
                None => return Ok(()),
                Some((kind, Ok(init_done))) => ready[kind] |= init_done,
                Some((kind, Err(e))) => tracing::warn!(kind, error = %e, "service proxy watch error"),
            },
        }
        if !ready.iter().all(|r| *r) {
            continue;
        }
        // Let a burst of changes (a Deployment scaling) settle into one apply.
        let settle = tokio::time::sleep(Duration::from_millis(DEBOUNCE_MS));
        tokio::pin!(settle);
        loop {
            tokio::select! {
                _ = &mut settle => break,
                event = events.next() => if let Some((kind, Ok(true))) = event { ready[kind] = true },
            }
        }
        if let Err(e) = sync(&config, api_server, &stores, &mut applied).await {
            tracing::warn!(error = %e, "service proxy sync failed; retrying on the next change");
            applied = Applied::default();
        }
    }
}

async fn sync(
    config: &ProxyConfig,
    api_server: Option<ApiServer>,
    stores: &Stores,
    applied: &mut Applied,
) -> Result<(), ProxyError> {
    let services = stores.services.state();
    let slices = stores.slices.state();
    let pods = stores.pods.state();
    let services: Vec<&Service> = services.iter().map(AsRef::as_ref).collect();
    let slices: Vec<&EndpointSlice> = slices.iter().map(AsRef::as_ref).collect();
    let pods: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();

    let hosts = hosts::render(&services, &slices, &pods);
    if hosts != applied.hosts {
        apply::write_in_place(&config.hosts_file, &hosts)?;
        applied.hosts = hosts;
    }

    let chains = rules::Chains::new(config.cluster_index.into());
    let ports = model::service_ports(&services, &slices, api_server);
    // Compare without the stale-chain part: it depends on what exists, not on the cluster.
    let wanted = rules::render(&chains, &config.pod_cidr, &ports, &[]);
    if wanted != applied.rules {
        let existing = apply::nat_chains().await?;
        apply::restore(&rules::render(&chains, &config.pod_cidr, &ports, &existing)).await?;
        apply::ensure_jumps(&chains, &config.service_cidr).await?;
        tracing::info!(
            service_ports = ports.len(),
            "service proxy applied nat rules"
        );
        applied.rules = wanted;
    }
    Ok(())
}
