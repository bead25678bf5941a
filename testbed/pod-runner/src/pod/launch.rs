//! Starting and stopping one container process: its env and shim spec (image →
//! binary, volumes → bind mounts), the spawn as its own process group in the pod's
//! namespaces with output to the log file, and SIGTERM → grace → SIGKILL.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::Ctx;
use super::env::{self, PodFacts};
use super::sources::Sources;
use super::volumes;
use crate::net::PodNet;
use crate::shim::ShimSpec;

/// A container's log file is rotated at its next start once larger than this.
const LOG_BYTES_MAX: u64 = 64 << 20;
/// Grace periods are capped so a bad manifest cannot hang teardown.
const GRACE_MAX_S: u64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Env(#[from] env::EnvError),
    #[error(transparent)]
    Volume(#[from] volumes::VolumeError),
    #[error(transparent)]
    Image(#[from] crate::images::ImageError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl LaunchError {
    /// The kubelet's waiting reason for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            LaunchError::Env(_) | LaunchError::Volume(_) => "CreateContainerConfigError",
            LaunchError::Image(_) => "ErrImagePull",
            _ => "CreateContainerError",
        }
    }
}

/// What every container of a started pod shares.
#[derive(Debug)]
pub struct Sandbox {
    pub net: PodNet,
    /// `hostNetwork: true`: no namespace of its own, the node's address.
    pub host_network: bool,
    pub ip: Ipv4Addr,
    /// volume name → (directory, read-only)
    pub volume_dirs: HashMap<String, (PathBuf, bool)>,
    pub facts: PodFacts,
}

/// Pod grace period: deletionGracePeriodSeconds when deleting, else the spec's.
pub fn grace(pod: &Pod) -> Duration {
    let s = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .clamp(0, GRACE_MAX_S as i64);
    Duration::from_secs(s as u64)
}

pub(super) fn prepare(
    ctx: &Ctx,
    pod: &Pod,
    sandbox: &Sandbox,
    c: &Container,
    sources: &Sources,
) -> Result<(ShimSpec, crate::expand::Env), LaunchError> {
    let image = c.image.clone().unwrap_or_default();
    // Resolve with a provisional PATH first: the image's directory joins PATH.
    let probe_env = env::build(pod, c, sources, &sandbox.facts, None)?;
    let command: Vec<String> = c
        .command
        .iter()
        .flatten()
        .map(|s| probe_env.expand(s))
        .collect();
    let args: Vec<String> = c
        .args
        .iter()
        .flatten()
        .map(|s| probe_env.expand(s))
        .collect();
    let host_path = std::env::var("PATH").unwrap_or_default();
    let container_path = probe_env.get("PATH").unwrap_or_default().to_string();
    let search = format!("{container_path}:{host_path}");
    let resolved = ctx.images.resolve(&image, &command, &args, &search)?;
    let image_dir = resolved.image_dir.as_ref().map(|d| d.display().to_string());
    let env = env::build(pod, c, sources, &sandbox.facts, image_dir.as_deref())?;
    let state = &ctx.cfg.state;
    let mounts = volumes::mounts_for(
        c,
        &sandbox.volume_dirs,
        &state.hosts(),
        &state.resolv_conf(),
        &env,
    )?;
    for m in &mounts {
        if !m.target.exists() {
            if m.source.is_dir() {
                ctx.cfg.state.create_host_dir(&m.target)?;
            } else {
                ctx.cfg.state.create_host_file(&m.target)?;
            }
        }
    }
    let spec = ShimSpec {
        netns: (!sandbox.host_network).then(|| sandbox.net.netns.clone()),
        // spec.hostname when set (as the kubelet does), else the pod name.
        hostname: pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .or_else(|| pod.metadata.name.clone())
            .unwrap_or_default(),
        mounts,
        workdir: c.working_dir.as_ref().map(PathBuf::from),
        executable: resolved.executable,
        argv: resolved.argv,
    };
    Ok((spec, env))
}

pub(super) fn spawn(
    ctx: &Ctx,
    pod: &Pod,
    c: &Container,
    spec: &ShimSpec,
    env: &crate::expand::Env,
) -> Result<tokio::process::Child, LaunchError> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let io = |what: String| move |source| LaunchError::Io { what, source };
    let dir = ctx.cfg.state.pod_dir(uid);
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let spec_path = dir.join(format!("{}.spec.json", c.name));
    let body = serde_json::to_vec_pretty(spec).map_err(|e| LaunchError::Io {
        what: "encode shim spec".into(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&spec_path, body).map_err(io(format!("write {}", spec_path.display())))?;
    let log_path = ctx.cfg.state.log_file(ns, name, &c.name);
    // Rotated only between runs (the running process holds the file): one old
    // generation is kept as `.log.1`, as kubectl logs --previous would want.
    if std::fs::metadata(&log_path).is_ok_and(|m| m.len() > LOG_BYTES_MAX) {
        let _ = std::fs::rename(&log_path, log_path.with_extension("log.1"));
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(format!("open {}", log_path.display())))?;
    let log2 = log.try_clone().map_err(io("dup log".into()))?;
    let mut cmd = tokio::process::Command::new(&ctx.cfg.self_exe);
    cmd.arg("shim")
        .arg("--spec")
        .arg(&spec_path)
        .env_clear()
        .envs(env.iter())
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Own process group: signals reach the container's children too.
        .process_group(0)
        .kill_on_drop(false);
    cmd.spawn()
        .map_err(io(format!("spawn shim for {}", c.name)))
}

/// SIGTERM the group, wait up to `grace`, then SIGKILL it.
pub(super) async fn terminate(
    child: &mut tokio::process::Child,
    pid: i32,
    grace: Duration,
) -> std::process::ExitStatus {
    let pg = Pid::from_raw(pid);
    let _ = killpg(pg, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(s)) => s,
        _ => {
            let _ = killpg(pg, Signal::SIGKILL);
            child
                .wait()
                .await
                .unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(9))
        }
    }
}

pub(super) fn exit_code(s: &std::process::ExitStatus) -> (i32, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => (c, None),
        (None, Some(sig)) => (128 + sig, Some(sig)),
        _ => (255, None),
    }
}
