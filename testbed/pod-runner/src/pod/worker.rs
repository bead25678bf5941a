//! One pod from bind to delete: sandbox (address, netns, volumes), init containers
//! in order, the containers under supervision, status reports, and on deletion
//! SIGTERM → grace → SIGKILL, teardown, and the final delete (grace 0, UID
//! precondition) that keeps the pod from hanging in Terminating.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::watch;

use super::container::{Supervised, sleep_or_stop};
use super::env::PodFacts;
use super::launch::{Sandbox, grace};
use super::runtime::{CStatus, PodRuntime};
use super::sources::Sources;
use super::{Ctx, PodShared, now_s, status, volumes};
use crate::net::{self, PodNet};
use crate::state::PodRecord;

/// Retry interval of sandbox setup (claim not bound yet, Secret missing, …).
const SETUP_RETRY_MS: u64 = 2_000;
/// Status is re-checked at least this often even without a change signal.
const STATUS_RESYNC_MS: u64 = 5_000;
/// How often the start of a native sidecar is checked before the next init container.
const SIDECAR_POLL_MS: u64 = 100;
/// The final delete is retried this often (1 s, 2 s, … apart) before giving up.
const DELETE_ATTEMPTS_MAX: u32 = 10;
/// Content volumes (Secrets, ConfigMaps, tokens) are re-rendered this often.
const VOLUME_REFRESH_S: u64 = 60;

fn key(p: &Pod) -> (String, String, String) {
    (
        p.metadata.namespace.clone().unwrap_or_default(),
        p.metadata.name.clone().unwrap_or_default(),
        p.metadata.uid.clone().unwrap_or_default(),
    )
}

fn is_terminal(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// Resolves when the pod is being deleted (or is gone); gives the grace period.
async fn deletion(mut rx: watch::Receiver<Option<Pod>>) -> Duration {
    loop {
        {
            let cur = rx.borrow_and_update();
            match cur.as_ref() {
                None => return Duration::ZERO,
                Some(p) if p.metadata.deletion_timestamp.is_some() => return grace(p),
                _ => {}
            }
        }
        if rx.changed().await.is_err() {
            return Duration::ZERO;
        }
    }
}

pub async fn run(ctx: Arc<Ctx>, rx: watch::Receiver<Option<Pod>>) {
    let Some(pod) = rx.borrow().clone() else {
        return;
    };
    let (ns, name, uid) = key(&pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let shared = Arc::new(PodShared {
        rt: std::sync::Mutex::new(PodRuntime {
            init: spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| CStatus {
                    sidecar: c.restart_policy.as_deref() == Some("Always"),
                    ..CStatus::new(&c.name, c.image.as_deref().unwrap_or(""))
                })
                .collect(),
            containers: spec
                .containers
                .iter()
                .map(|c| CStatus::new(&c.name, c.image.as_deref().unwrap_or("")))
                .collect(),
            ..Default::default()
        }),
        changed: tokio::sync::Notify::new(),
    });
    let (stop_tx, stop_rx) = watch::channel(None::<Duration>);
    let runs = !is_terminal(&pod) && pod.metadata.deletion_timestamp.is_none();
    tracing::info!(pod = %format!("{ns}/{name}"), runs, "pod assigned");
    let reporter =
        runs.then(|| tokio::spawn(report_status(ctx.clone(), rx.clone(), shared.clone())));
    let body = run_pod(
        ctx.clone(),
        Arc::new(pod.clone()),
        rx.clone(),
        shared.clone(),
        stop_rx,
    );
    tokio::pin!(body);
    let del = deletion(rx.clone());
    tokio::pin!(del);
    if runs {
        tokio::select! {
            _ = &mut body => {
                // Every container is done for good: free the sandbox, keep the
                // (terminal) pod until someone deletes it.
                teardown(ctx.clone(), uid.clone()).await;
                let g = (&mut del).await;
                let _ = stop_tx.send(Some(g));
            }
            g = &mut del => {
                let _ = stop_tx.send(Some(g));
                body.await;
            }
        }
    } else {
        (&mut del).await;
    }
    if let Some(r) = reporter {
        r.abort();
    }
    teardown(ctx.clone(), uid.clone()).await;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.clone()),
            resource_version: None,
        }),
        ..Default::default()
    };
    // Retried: a pod left behind here would hang in Terminating for good.
    for attempt in 1..=DELETE_ATTEMPTS_MAX {
        match api.delete(&name, &dp).await {
            Ok(_) => {
                tracing::info!(pod = %format!("{ns}/{name}"), "pod stopped and deleted");
                return;
            }
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return,
            Err(e) => {
                tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, attempt, "final delete failed");
                tokio::time::sleep(Duration::from_secs(attempt as u64)).await;
            }
        }
    }
}

/// Kills leftovers, removes the netns, frees the address and the pod's directory.
/// Runs on a blocking thread: it shells out to `ip` and may wait for processes.
async fn teardown(ctx: Arc<Ctx>, uid: String) {
    let _ = tokio::task::spawn_blocking(move || teardown_blocking(&ctx, &uid)).await;
}

fn teardown_blocking(ctx: &Ctx, uid: &str) {
    let pod_net = PodNet::for_pod(ctx.cfg.cluster_index, uid);
    for (_, pid) in ctx.cfg.state.pids(uid) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    net::teardown(&pod_net);
    {
        let mut t = ctx.ipam.lock().expect("ipam lock");
        t.release(uid);
        if let Err(e) = t.save(&ctx.cfg.state.ipam()) {
            tracing::warn!(error = %e, "saving ipam");
        }
    }
    let _ = std::fs::remove_dir_all(ctx.cfg.state.pod_dir(uid));
}

async fn run_pod(
    ctx: Arc<Ctx>,
    pod: Arc<Pod>,
    latest: watch::Receiver<Option<Pod>>,
    shared: Arc<PodShared>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let (ns, name, _) = key(&pod);
    shared.update(|rt| rt.start_time = Some(now_s()));
    let sandbox = loop {
        match setup(&ctx, &pod, &shared).await {
            Ok(s) => break Arc::new(s),
            Err(e) => {
                tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "pod setup");
                let reason = match e {
                    SetupError::Volume(volumes::VolumeError::ClaimUnbound(_)) => {
                        "ContainerCreating"
                    }
                    _ => "CreateContainerConfigError",
                };
                shared.update(|rt| rt.setup_error = Some((reason.to_string(), e.to_string())));
                if sleep_or_stop(&mut stop, Duration::from_millis(SETUP_RETRY_MS)).await {
                    return;
                }
            }
        }
    };
    shared.update(|rt| {
        rt.setup_error = None;
        rt.sandbox_ready = true;
        rt.ip = Some(sandbox.ip);
    });
    let refresher = tokio::spawn(refresh_volumes(ctx.clone(), latest, sandbox.clone()));
    let spec = pod.spec.clone().unwrap_or_default();
    let sup = |index, is_init| Supervised {
        ctx: ctx.clone(),
        pod: pod.clone(),
        sandbox: sandbox.clone(),
        shared: shared.clone(),
        index,
        is_init,
    };
    // Native sidecars outlive the init phase: they get their own stop signal,
    // sent when the pod stops or once the main containers are done for good.
    let (side_tx, side_rx) = watch::channel(None::<Duration>);
    let mut sidecars = Vec::new();
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.push(tokio::spawn(sup(i, true).run(side_rx.clone())));
            // The next init container starts once this one has started.
            let started = || {
                let rt = shared.snapshot();
                rt.init.get(i).is_some_and(|s| s.started || s.finished)
            };
            while !started() {
                if sleep_or_stop(&mut stop, Duration::from_millis(SIDECAR_POLL_MS)).await {
                    break;
                }
            }
        } else {
            let code = sup(i, true).run(stop.clone()).await;
            if stop.borrow().is_none() && code != Some(0) {
                shared.update(|rt| rt.init_failed = true);
            }
        }
        if stop.borrow().is_some() || shared.snapshot().init_failed {
            break;
        }
    }
    if stop.borrow().is_none() && !shared.snapshot().init_failed {
        shared.update(|rt| rt.init_done = true);
        let runs = (0..spec.containers.len()).map(|i| sup(i, false).run(stop.clone()));
        futures::future::join_all(runs).await;
    }
    let g = stop.borrow().unwrap_or_else(|| grace(&pod));
    let _ = side_tx.send(Some(g));
    futures::future::join_all(sidecars).await;
    refresher.abort();
}

#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error(transparent)]
    Ipam(#[from] crate::ipam::IpamError),
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Volume(#[from] volumes::VolumeError),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

fn facts(ctx: &Ctx, ip: std::net::Ipv4Addr) -> PodFacts {
    PodFacts {
        pod_ip: ip.to_string(),
        host_ip: ctx.cfg.gateway.to_string(),
        api_host: ctx.cfg.api_host.clone(),
        api_port: ctx.cfg.api_port,
        node_cpus: ctx.node_cpus,
        node_memory_bytes: ctx.node_memory_bytes,
    }
}

async fn setup(ctx: &Ctx, pod: &Pod, _shared: &PodShared) -> Result<Sandbox, SetupError> {
    let (ns, name, uid) = key(pod);
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    let ip = if host_network {
        ctx.cfg.gateway
    } else {
        let mut t = ctx.ipam.lock().expect("ipam lock");
        let ip = t.allocate(&ctx.cfg.pod_cidr, &format!("{ns}/{name}"), &uid)?;
        t.save(&ctx.cfg.state.ipam())?;
        ip
    };
    let pod_net = PodNet::for_pod(ctx.cfg.cluster_index, &uid);
    let facts = facts(ctx, ip);
    let volume_dirs = materialise(ctx, pod, &facts).await?;
    if !host_network {
        let (n, b, g, len) = (
            pod_net.clone(),
            ctx.cfg.bridge.clone(),
            ctx.cfg.gateway,
            ctx.cfg.pod_cidr.prefix_len,
        );
        let svc = ctx.cfg.service_cidr.clone();
        tokio::task::spawn_blocking(move || net::setup(&n, &b, ip, len, g, &svc))
            .await
            .map_err(|e| net::NetError::Spawn(std::io::Error::other(e)))??;
    }
    ctx.cfg.state.write_record(&PodRecord {
        namespace: ns,
        name,
        uid,
        net: pod_net.clone(),
        ip: ip.to_string(),
    })?;
    Ok(Sandbox {
        net: pod_net,
        host_network,
        ip,
        volume_dirs,
        facts,
    })
}

/// Creates every volume's directory (rendering content volumes) and resolves
/// claims and hostPaths; volume name → (directory, read-only).
async fn materialise(
    ctx: &Ctx,
    pod: &Pod,
    facts: &PodFacts,
) -> Result<HashMap<String, (std::path::PathBuf, bool)>, SetupError> {
    let (ns, _, uid) = key(pod);
    let sources = Sources::fetch(&ctx.client, pod).await?;
    let mut out = HashMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = ctx.cfg.state.volume_dir(&uid, &v.name);
        if let Some(files) = volumes::render(pod, v, &sources, facts) {
            volumes::write_files(&dir, &files?)?;
            out.insert(v.name.clone(), (dir, true));
        } else if let Some(c) = &v.persistent_volume_claim {
            let path = crate::provisioner::claim_path(&ctx.client, &ns, &c.claim_name)
                .await?
                .ok_or_else(|| volumes::VolumeError::ClaimUnbound(c.claim_name.clone()))?;
            std::fs::create_dir_all(&path).map_err(|e| volumes::VolumeError::Io {
                what: format!("create {path}"),
                msg: e.to_string(),
            })?;
            out.insert(v.name.clone(), (path.into(), c.read_only.unwrap_or(false)));
        } else if let Some(h) = &v.host_path {
            if matches!(h.type_.as_deref(), Some("DirectoryOrCreate")) {
                ctx.cfg
                    .state
                    .create_host_dir(std::path::Path::new(&h.path))?;
            }
            out.insert(v.name.clone(), (h.path.clone().into(), false));
        } else if v.empty_dir.is_some() || v.ephemeral.is_none() {
            std::fs::create_dir_all(&dir).map_err(|e| volumes::VolumeError::Io {
                what: format!("create {}", dir.display()),
                msg: e.to_string(),
            })?;
            out.insert(v.name.clone(), (dir, false));
        } else {
            return Err(volumes::VolumeError::Unsupported {
                volume: v.name.clone(),
                what: "ephemeral volume".into(),
            }
            .into());
        }
    }
    Ok(out)
}

/// Keeps Secret/ConfigMap/token volumes current, as the kubelet's sync loop does;
/// downwardAPI volumes follow the pod's latest labels and annotations.
async fn refresh_volumes(
    ctx: Arc<Ctx>,
    latest: watch::Receiver<Option<Pod>>,
    sandbox: Arc<Sandbox>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(VOLUME_REFRESH_S));
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(pod) = latest.borrow().clone() else {
            return;
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let Ok(sources) = Sources::fetch(&ctx.client, &pod).await else {
            continue;
        };
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            if let Some(Ok(files)) = volumes::render(&pod, v, &sources, &sandbox.facts) {
                let _ = volumes::write_files(&ctx.cfg.state.volume_dir(&uid, &v.name), &files);
            }
        }
    }
}

/// Posts the pod's status whenever the runtime model changes (and checks every
/// few seconds); never writes an unchanged status.
async fn report_status(
    ctx: Arc<Ctx>,
    mut rx: watch::Receiver<Option<Pod>>,
    shared: Arc<PodShared>,
) {
    let host_ip = ctx.cfg.gateway.to_string();
    let mut last: Option<serde_json::Value> = None;
    loop {
        let Some(pod) = rx.borrow_and_update().clone() else {
            return;
        };
        let (ns, name, _) = key(&pod);
        let st = status::build(&pod, &shared.snapshot(), &host_ip, now_s());
        let mut body = serde_json::json!({ "status": st });
        // Merge patch: absent fields would keep stale values; null clears them.
        for k in ["reason", "message"] {
            if body["status"].get(k).is_none() {
                body["status"][k] = serde_json::Value::Null;
            }
        }
        if last.as_ref() != Some(&body) {
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(_) => last = Some(body),
                Err(kube::Error::Api(e)) if e.code == 404 => return,
                Err(e) => tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "status patch"),
            }
        }
        tokio::select! {
            _ = shared.changed.notified() => {}
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(STATUS_RESYNC_MS)) => {}
        }
    }
}
