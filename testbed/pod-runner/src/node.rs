//! The Node this runner stands for: registration, `nodes/status` (Ready, no
//! pressure), and the heartbeat Lease in `kube-node-lease` that keeps the node
//! lifecycle controller from marking it NotReady and evicting its pods.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::config::RunConfig;

pub const FIELD_MANAGER: &str = "pod-runner";
/// The kubelet's defaults: renew every 10 s, a lease lasts 40 s.
const LEASE_RENEW_INTERVAL_S: u64 = 10;
const LEASE_DURATION_S: i32 = 40;
/// Full status re-posted this often (the lease carries liveness in between).
const STATUS_INTERVAL_S: u64 = 60;
/// The scheduler's default pod limit per node.
const PODS_MAX: u32 = 110;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

pub fn memory_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(4 << 20)
}

fn kernel_version() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

pub fn node_object(cfg: &RunConfig) -> serde_json::Value {
    let n = &cfg.node_name;
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": n,
            "labels": {
                "kubernetes.io/hostname": n,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
                "node.kubernetes.io/instance-type": "flashsale-pod-runner",
                "flashsale.dev/pod-runner": "true",
            },
        },
        "spec": { "podCIDR": cfg.pod_cidr_text, "podCIDRs": [cfg.pod_cidr_text] },
    })
}

pub fn node_status(cfg: &RunConfig, kubelet_version: &str) -> serde_json::Value {
    let now = now_rfc3339();
    let cond = |t: &str, status: &str, reason: &str, msg: &str| {
        json!({"type": t, "status": status, "reason": reason, "message": msg,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let cpus = cfg.node_cpus;
    let resources = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{}Ki", memory_kib()),
        "pods": PODS_MAX.to_string(),
        "ephemeral-storage": "100Gi",
    });
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "status": {
            "addresses": [{"type": "InternalIP", "address": cfg.gateway.to_string()}],
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                cond("Ready", "True", "KubeletReady", "pod-runner is posting ready status"),
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "no PID pressure"),
                cond("NetworkUnavailable", "False", "RouteCreated", "pod bridge is up"),
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.kubelet_port}},
            "nodeInfo": {
                "architecture": std::env::consts::ARCH.replace("x86_64", "amd64"),
                "bootID": "", "machineID": "", "systemUUID": "",
                "containerRuntimeVersion": concat!("pod-runner://", env!("CARGO_PKG_VERSION")),
                "kernelVersion": kernel_version(),
                "kubeProxyVersion": "",
                "kubeletVersion": kubelet_version,
                "operatingSystem": "linux",
                "osImage": "flashsale pod-runner (local processes)",
            },
        },
    })
}

/// Creates/updates the Node and posts its status once.
pub async fn register(
    client: &kube::Client,
    cfg: &RunConfig,
    kubelet_version: &str,
) -> Result<(), NodeError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    nodes
        .patch(&cfg.node_name, &pp, &Patch::Apply(node_object(cfg)))
        .await?;
    nodes
        .patch_status(
            &cfg.node_name,
            &pp,
            &Patch::Apply(node_status(cfg, kubelet_version)),
        )
        .await?;
    Ok(())
}

async fn renew_lease(
    client: &kube::Client,
    cfg: &RunConfig,
    node_uid: &str,
) -> Result<(), NodeError> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": cfg.node_name,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": cfg.node_name, "uid": node_uid}],
        },
        "spec": {
            "holderIdentity": cfg.node_name,
            "leaseDurationSeconds": LEASE_DURATION_S,
            "renewTime": MicroTime(jiff::Timestamp::now()),
        },
    });
    leases
        .patch(
            &cfg.node_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(lease),
        )
        .await?;
    Ok(())
}

/// Keeps the node alive forever: lease every 10 s, status every minute. Errors are
/// logged and retried on the next tick (an API server restart must not kill us).
pub async fn heartbeat(client: kube::Client, cfg: RunConfig, kubelet_version: String) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut tick = tokio::time::interval(Duration::from_secs(LEASE_RENEW_INTERVAL_S));
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        ticks += 1;
        let uid = match nodes.get(&cfg.node_name).await {
            Ok(n) => n.metadata.uid.unwrap_or_default(),
            Err(kube::Error::Api(e)) if e.code == 404 => {
                tracing::warn!("node object gone; registering again");
                if let Err(e) = register(&client, &cfg, &kubelet_version).await {
                    tracing::warn!(error = %e, "re-registering node");
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading node");
                continue;
            }
        };
        if let Err(e) = renew_lease(&client, &cfg, &uid).await {
            tracing::warn!(error = %e, "renewing node lease");
        }
        if ticks.is_multiple_of(STATUS_INTERVAL_S / LEASE_RENEW_INTERVAL_S) {
            let pp = PatchParams::apply(FIELD_MANAGER).force();
            if let Err(e) = nodes
                .patch_status(
                    &cfg.node_name,
                    &pp,
                    &Patch::Apply(node_status(&cfg, &kubelet_version)),
                )
                .await
            {
                tracing::warn!(error = %e, "posting node status");
            }
        }
    }
}
