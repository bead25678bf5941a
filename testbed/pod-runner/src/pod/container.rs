//! One container's life under supervision: start it (see `launch`), run its
//! probes, restart it under the pod's restartPolicy with capped exponential
//! back-off, and stop it when the pod stops.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};

use super::launch::{LaunchError, Sandbox, exit_code, grace, prepare, spawn, terminate};
use super::probe;
use super::runtime::{CState, CStatus};
use super::sources::Sources;
use super::{Ctx, PodShared, now_s};

/// Restart back-off: doubles from 1 s up to 30 s (the kubelet uses 10 s → 5 min;
/// shorter here so chaos tests see restarts quickly).
const BACKOFF_BASE_MS: u64 = 1_000;
/// How often a held container looks whether it was released.
const HOLD_POLL_MS: u64 = 200;
const BACKOFF_MAX_MS: u64 = 30_000;
/// A container that ran this long resets its back-off.
const BACKOFF_RESET_S: u64 = 60;
/// Retry interval while a container cannot be configured (missing Secret, …).
const CONFIG_RETRY_MS: u64 = 2_000;

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

    /// A native sidecar: an init container with restartPolicy Always, which
    /// keeps running (and restarting) beside the main containers.
    fn sidecar(&self) -> bool {
        self.is_init && self.container().restart_policy.as_deref() == Some("Always")
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
        let (ns, pod_name) = (
            self.pod.metadata.namespace.clone().unwrap_or_default(),
            self.pod.metadata.name.clone().unwrap_or_default(),
        );
        loop {
            if stop.borrow().is_some() {
                break;
            }
            // `fault hold`: not started again until released (a node that never returns).
            if self.ctx.cfg.state.is_held(&ns, &pod_name) {
                self.update(|s| {
                    s.state = CState::Waiting {
                        reason: "Held".into(),
                        message: Some("held by `fault hold`: not started until released".into()),
                    };
                    s.ready = false;
                });
                if sleep_or_stop(&mut stop, Duration::from_millis(HOLD_POLL_MS)).await {
                    break;
                }
                continue;
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
            let long_running = !self.is_init || self.sidecar();
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
                s.started = !has_startup && long_running;
                s.ready = !has_readiness && !has_startup && long_running;
            });
            let (kill_tx, mut kill_rx) = mpsc::channel::<String>(1);
            let probes = long_running.then(|| {
                tokio::spawn(probe::run(
                    self.ctx.clone(),
                    self.pod.clone(),
                    c.clone(),
                    self.sandbox.ip,
                    pid,
                    self.shared.clone(),
                    (self.index, self.is_init),
                    kill_tx,
                ))
            });
            let (status, stopping, message) = tokio::select! {
                s = child.wait() => (s.ok(), false, None),
                g = stop_grace(&mut stop) => {
                    self.ctx.event(&self.pod, false, "Killing", format!("Stopping container {}", c.name));
                    let left = pre_stop(&c, self.sandbox.ip, pid, g).await;
                    (Some(terminate(&mut child, pid, left).await), true, None)
                }
                Some(why) = kill_rx.recv() => {
                    tracing::info!(container = %c.name, why = %why, "killing container");
                    self.ctx.event(&self.pod, false, "Killing", format!("Container {} {why}, will be restarted", c.name));
                    let left = pre_stop(&c, self.sandbox.ip, pid, grace(&self.pod)).await;
                    (Some(terminate(&mut child, pid, left).await), false, Some(why))
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
            let restart = !stopping
                && if self.sidecar() {
                    should_restart("Always", false, code)
                } else {
                    should_restart(&policy, self.is_init, code)
                };
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

/// Runs the container's preStop hook (exec, httpGet, sleep) within the grace
/// period, as the kubelet does before SIGTERM; returns the grace left.
async fn pre_stop(c: &Container, ip: std::net::Ipv4Addr, pid: i32, grace: Duration) -> Duration {
    let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) else {
        return grace;
    };
    let started = tokio::time::Instant::now();
    let hook = async {
        if let Some(s) = &h.sleep {
            tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64)).await;
            return;
        }
        // Same actions as a probe; the whole grace period is its timeout.
        let as_probe = k8s_openapi::api::core::v1::Probe {
            exec: h.exec.clone(),
            http_get: h.http_get.clone(),
            tcp_socket: h.tcp_socket.clone(),
            timeout_seconds: Some(grace.as_secs().max(1) as i32),
            ..Default::default()
        };
        if let Err(e) = probe::once(&as_probe, c, ip, pid).await {
            tracing::info!(container = %c.name, error = %e, "preStop hook failed");
        }
    };
    let _ = tokio::time::timeout(grace, hook).await;
    grace.saturating_sub(started.elapsed())
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
