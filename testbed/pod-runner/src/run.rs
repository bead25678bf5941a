//! `pod-runner run`: wires the node heartbeat, the volume provisioner, the service
//! proxy, the log endpoint and the pod workers onto one kube client.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::config::{RunConfig, index_from_bridge, split_api_server};
use crate::images::ImageMap;
use crate::ipam::{Cidr, Table};
use crate::state::StateDir;
use crate::{RunArgs, cleanup, logs, node, pod, provisioner, proxy};

/// Variables `${VAR}` in the image map may use, with defaults for the usual ones.
fn image_vars() -> std::collections::HashMap<String, String> {
    let mut vars: std::collections::HashMap<String, String> = std::env::vars().collect();
    let home = vars.get("HOME").cloned().unwrap_or_else(|| "/root".into());
    let cache = vars
        .entry("FLASHSALE_CACHE".into())
        .or_insert_with(|| format!("{home}/.cache/flashsale"))
        .clone();
    let target = vars
        .entry("CARGO_TARGET_DIR".into())
        .or_insert_with(|| format!("{cache}/target"))
        .clone();
    vars.entry("FLASHSALE_BIN_DIR".into())
        .or_insert_with(|| format!("{target}/release"));
    if !vars.contains_key("KUBECTL_BIN") {
        // The newest cached tool set's kubectl (scripts/build-tools.sh layout).
        let mut found: Vec<_> = std::fs::read_dir(format!("{cache}/tools"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin/kubectl"))
            .filter(|p| p.exists())
            .collect();
        found.sort();
        let k = found
            .pop()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "kubectl".into());
        vars.insert("KUBECTL_BIN".into(), k);
    }
    vars
}

/// Kills what a previous runner of this state dir left running: pods start afresh.
fn reset(state: &StateDir) {
    for rec in state.records() {
        for (_, pid) in state.pids(&rec.uid) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        crate::net::teardown(&rec.net);
        let _ = std::fs::remove_dir_all(state.pod_dir(&rec.uid));
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Several rustls backends may be linked (kube, reqwest): pick one explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster_index = args
        .cluster_index
        .or_else(|| index_from_bridge(&args.bridge))
        .context("--cluster-index not given and --bridge is not fsbr<N>")?;
    let (api_host, api_port) =
        split_api_server(&args.api_server).context("--api-server must be https://HOST:PORT")?;
    let state = StateDir::new(&args.state_dir);
    state.init()?;
    std::fs::write(
        cleanup::runner_pid_file(&state),
        std::process::id().to_string(),
    )?;
    reset(&state);
    let cfg = RunConfig {
        cluster_index,
        node_name: args.node_name.clone(),
        state: state.clone(),
        bridge: args.bridge.clone(),
        pod_cidr: Cidr::parse(&args.pod_cidr)?,
        pod_cidr_text: args.pod_cidr.clone(),
        service_cidr: args.service_cidr.clone(),
        gateway: args.gateway,
        api_host,
        api_port,
        ca_file: args.ca_file.clone(),
        kubelet_port: args.kubelet_port,
        node_cpus: if args.node_cpus == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
        } else {
            args.node_cpus
        },
        self_exe: std::env::current_exe().context("locating own binary")?,
    };
    let images = ImageMap::load(&args.images, &image_vars())?;
    let mut ipam = Table::load(&state.ipam())?;
    ipam.in_use.clear();
    ipam.save(&state.ipam())?;

    let kc = Kubeconfig::read_from(&args.kubeconfig).context("reading kubeconfig")?;
    let kcfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    let client = kube::Client::try_from(kcfg)?;
    let version = client
        .apiserver_version()
        .await
        .context("API server /version")?
        .git_version;
    node::register(&client, &cfg, &version)
        .await
        .context("registering node")?;
    tracing::info!(node = %cfg.node_name, %version, "node registered");

    let ctx = Arc::new(pod::Ctx {
        client: client.clone(),
        cfg: cfg.clone(),
        images,
        ipam: Mutex::new(ipam),
        node_cpus: cfg.node_cpus,
        node_memory_bytes: node::memory_kib() * 1024,
        recorder: kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: "kubelet".into(),
                instance: Some(cfg.node_name.clone()),
            },
        ),
    });
    tokio::spawn(node::heartbeat(client.clone(), cfg.clone(), version));
    {
        let (c, s) = (client.clone(), state.clone());
        tokio::spawn(async move {
            if let Err(e) = provisioner::run(c, s).await {
                tracing::error!(error = %e, "volume provisioner stopped");
            }
        });
    }
    {
        let c = client.clone();
        let pcfg = cfg.proxy();
        let api = proxy::api_server_from_url(&args.api_server);
        tokio::spawn(async move {
            if let Err(e) = proxy::run(c, pcfg, api, std::future::pending()).await {
                tracing::error!(error = %e, "service proxy stopped");
            }
        });
    }
    {
        let cfg = cfg.clone();
        tokio::spawn(async move {
            if let Err(e) = logs::serve(cfg).await {
                tracing::error!(error = %e, "log endpoint stopped");
            }
        });
    }
    let pods = tokio::spawn(pod::run(ctx));
    tokio::select! {
        r = pods => { r??; anyhow::bail!("pod watch ended") }
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm() => {}
    }
    tracing::info!("stopping; pods keep running until `pod-runner cleanup`");
    Ok(())
}

async fn sigterm() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
