//! One container's life: build its shim spec and env, start it as its own process
//! group in the pod's namespaces, stop it (SIGTERM, grace, SIGKILL), and supervise
//! restarts under the pod's restartPolicy with capped exponential back-off.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};

use super::env::{self, PodFacts};
use super::probe;
use super::runtime::{CState, CStatus};
use super::sources::Sources;
use super::volumes;
use super::{Ctx, PodShared, now_s};
use crate::net::PodNet;
use crate::shim::ShimSpec;

/// Restart back-off: doubles from 1 s up to 30 s (the kubelet uses 10 s → 5 min;
/// shorter here so chaos tests see restarts quickly).
const BACKOFF_BASE_MS: u64 = 1_000;
const BACKOFF_MAX_MS: u64 = 30_000;
/// A container that ran this long resets its back-off.
const BACKOFF_RESET_S: u64 = 60;
/// Retry interval while a container cannot be configured (missing Secret, …).
const CONFIG_RETRY_MS: u64 = 2_000;
/// A container's log file is rotated at its next start once larger than this.
const LOG_BYTES_MAX: u64 = 64 << 20;
/// Grace periods are capped so a bad manifest cannot hang teardown.
pub const GRACE_MAX_S: u64 = 300;

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
    pub ip: Ipv4Addr,
    /// volume name → (directory, read-only)
    pub volume_dirs: HashMap<String, (PathBuf, bool)>,
    pub facts: PodFacts,
}

pub fn backoff(restarts: u32) -> Duration {
    let ms = BACKOFF_BASE_MS.saturating_mul(1u64 << restarts.min(16));
    Duration::from_millis(ms.min(BACKOFF_MAX_MS))
}

/// Whether a container that exited with `exit_code` runs again.
pub fn should_restart(policy: &str, is_init: bool, exit_code: i32) -> bool {
    if is_init {
        return exit_code != 0 && policy != "Never";
    }
    match policy {
        "OnFailure" => exit_code != 0,
        "Never" => false,
        _ => true,
    }
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

fn prepare(
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
        netns: Some(sandbox.net.netns.clone()),
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

fn spawn(
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
async fn terminate(
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

fn exit_code(s: &std::process::ExitStatus) -> (i32, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => (c, None),
        (None, Some(sig)) => (128 + sig, Some(sig)),
        _ => (255, None),
    }
}

pub struct Supervised {
    pub ctx: Arc<Ctx>,
    pub pod: Arc<Pod>,
    pub sandbox: Arc<Sandbox>,
    pub shared: Arc<PodShared>,
    pub index: usize,
    pub is_init: bool,
}

impl Supervised {
    fn container(&self) -> &Container {
        let spec = self.pod.spec.as_ref().expect("pod has a spec");
        if self.is_init {
            &spec.init_containers.as_ref().expect("init containers")[self.index]
        } else {
            &spec.containers[self.index]
        }
    }

    fn update(&self, f: impl FnOnce(&mut CStatus)) {
        let (idx, init) = (self.index, self.is_init);
        self.shared.update(|rt| {
            let list = if init {
                &mut rt.init
            } else {
                &mut rt.containers
            };
            if let Some(c) = list.get_mut(idx) {
                f(c);
            }
        });
    }

    /// Runs the container until it finishes for good or the pod stops (`stop`
    /// carries the grace period). Returns the last exit code.
    pub async fn run(self, mut stop: watch::Receiver<Option<Duration>>) -> Option<i32> {
        let c = self.container().clone();
        let uid = self.pod.metadata.uid.clone().unwrap_or_default();
        let policy = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let mut restarts: u32 = 0;
        let mut backoff_step: u32 = 0;
        let mut last_exit = None;
        loop {
            if stop.borrow().is_some() {
                break;
            }
            let launched = async {
                let sources = Sources::fetch(&self.ctx.client, &self.pod)
                    .await
                    .map_err(|e| LaunchError::Io {
                        what: "reading Secrets/ConfigMaps".into(),
                        source: std::io::Error::other(e),
                    })?;
                let (spec, env) = prepare(&self.ctx, &self.pod, &self.sandbox, &c, &sources)?;
                spawn(&self.ctx, &self.pod, &c, &spec, &env).map(|ch| (ch, spec))
            }
            .await;
            let (mut child, spec) = match launched {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(pod = %self.pod.metadata.name.as_deref().unwrap_or(""), container = %c.name, error = %e, "cannot start container");
                    self.ctx
                        .event(&self.pod, true, "Failed", format!("Error: {e}"));
                    let reason = e.reason().to_string();
                    self.update(|s| {
                        s.state = CState::Waiting {
                            reason,
                            message: Some(e.to_string()),
                        }
                    });
                    if sleep_or_stop(&mut stop, Duration::from_millis(CONFIG_RETRY_MS)).await {
                        break;
                    }
                    continue;
                }
            };
            let pid = child.id().map(|p| p as i32).unwrap_or(0);
            self.ctx.event(
                &self.pod,
                false,
                "Started",
                format!("Started container {}", c.name),
            );
            let _ = self.ctx.cfg.state.write_pid(&uid, &c.name, pid as u32);
            let started_at = now_s();
            let has_startup = c.startup_probe.is_some();
            let has_readiness = c.readiness_probe.is_some();
            let is_init = self.is_init;
            let cid = format!(
                "pod-runner://{}-{}-{}",
                crate::net::short_hash(&uid),
                c.name,
                restarts
            );
            let image_id = format!("pod-runner://{}", spec.executable.display());
            self.update(|s| {
                s.state = CState::Running { started_at };
                s.container_id = Some(cid);
                s.image_id = image_id;
                s.started = !has_startup && !is_init;
                s.ready = !has_readiness && !has_startup && !is_init;
            });
            let (kill_tx, mut kill_rx) = mpsc::channel::<String>(1);
            let probes = (!self.is_init).then(|| {
                tokio::spawn(probe::run(
                    self.ctx.clone(),
                    self.pod.clone(),
                    c.clone(),
                    self.sandbox.ip,
                    pid,
                    self.shared.clone(),
                    self.index,
                    kill_tx,
                ))
            });
            let (status, stopping, message) = tokio::select! {
                s = child.wait() => (s.ok(), false, None),
                g = stop_grace(&mut stop) => {
                    self.ctx.event(&self.pod, false, "Killing", format!("Stopping container {}", c.name));
                    (Some(terminate(&mut child, pid, g).await), true, None)
                }
                Some(why) = kill_rx.recv() => {
                    tracing::info!(container = %c.name, why = %why, "killing container");
                    self.ctx.event(&self.pod, false, "Killing", format!("Container {} {why}, will be restarted", c.name));
                    (Some(terminate(&mut child, pid, grace(&self.pod)).await), false, Some(why))
                }
            };
            if let Some(p) = probes {
                p.abort();
            }
            // Whatever the container forked is part of it: sweep the group.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            self.ctx.cfg.state.clear_pid(&uid, &c.name);
            let (code, signal) = status.as_ref().map(exit_code).unwrap_or((255, None));
            last_exit = Some(code);
            let finished_at = now_s();
            let terminated = CState::Terminated {
                exit_code: code,
                signal,
                reason: if code == 0 {
                    "Completed".into()
                } else {
                    "Error".into()
                },
                started_at: Some(started_at),
                finished_at,
            };
            let restart = !stopping && should_restart(&policy, self.is_init, code);
            tracing::info!(pod = %self.pod.metadata.name.as_deref().unwrap_or(""), container = %c.name, code, restart, message = ?message, "container exited");
            let ran = finished_at.duration_since(started_at).as_secs() as u64;
            if ran >= BACKOFF_RESET_S {
                backoff_step = 0;
            }
            if !restart {
                self.update(|s| {
                    s.state = terminated;
                    s.ready = false;
                    s.finished = true;
                });
                break;
            }
            restarts += 1;
            let delay = backoff(backoff_step);
            self.ctx.event(
                &self.pod,
                true,
                "BackOff",
                format!(
                    "Back-off {}s restarting failed container {}",
                    delay.as_secs(),
                    c.name
                ),
            );
            backoff_step += 1;
            self.update(|s| {
                s.last_state = Some(terminated);
                s.state = CState::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: Some(format!(
                        "back-off {}s restarting failed container",
                        delay.as_secs()
                    )),
                };
                s.restart_count = restarts as i32;
                s.ready = false;
                s.started = false;
            });
            if sleep_or_stop(&mut stop, delay).await {
                break;
            }
        }
        last_exit
    }
}

/// Waits for the stop signal; gives the grace period.
async fn stop_grace(stop: &mut watch::Receiver<Option<Duration>>) -> Duration {
    stop.wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|v| *v)
        .unwrap_or_default()
}

/// Sleeps; true when the pod was told to stop meanwhile.
pub async fn sleep_or_stop(stop: &mut watch::Receiver<Option<Duration>>, d: Duration) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(Option::is_some) => true,
    };
    stopped || stop.borrow().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policy_decisions() {
        assert!(should_restart("Always", false, 0));
        assert!(should_restart("OnFailure", false, 1));
        assert!(!should_restart("OnFailure", false, 0));
        assert!(!should_restart("Never", false, 137));
        assert!(
            should_restart("Always", true, 1),
            "failed init containers retry"
        );
        assert!(
            !should_restart("Always", true, 0),
            "done init containers do not"
        );
        assert!(!should_restart("Never", true, 1));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(40), Duration::from_millis(BACKOFF_MAX_MS));
    }
}
