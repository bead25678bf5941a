//! `pod-runner fault`: chaos for tests, from any process — kill or freeze a pod's
//! containers (their process groups), cut its network (veth link down), or hold a pod
//! down: kill it and keep it (and a pod re-created under its name) from starting again,
//! as if its node never came back, until `release`. Reads and writes only the state
//! dir, so it works while the runner runs.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::net;
use crate::state::{StateDir, StateError};

#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum Fault {
    /// SIGKILL the container's process group (a crash; the runner restarts it per restartPolicy).
    Kill,
    /// SIGSTOP the process group (a hang: probes time out).
    Freeze,
    /// SIGCONT after a freeze.
    Thaw,
    /// Take the pod's veth down: no packet in or out.
    Cut,
    /// Bring the veth back up.
    Restore,
    /// SIGKILL, and no restart (also of a pod re-created with this name) until `release`.
    Hold,
    /// Let a held pod start again.
    Release,
}

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error("target must be <namespace>/<pod>, got {0:?}")]
    Target(String),
    #[error("signalling pid {pid}: {source}")]
    Signal { pid: i32, source: nix::errno::Errno },
}

/// Applies `fault` to `target` (`ns/pod`); returns what it touched, for the log.
pub fn apply(
    state: &StateDir,
    fault: Fault,
    target: &str,
    container: Option<&str>,
) -> Result<Vec<String>, FaultError> {
    let (ns, name) = target
        .split_once('/')
        .ok_or_else(|| FaultError::Target(target.to_string()))?;
    match fault {
        Fault::Hold => {
            state.hold(ns, name)?;
            // Then kill what runs (nothing may run: a pod that is not there yet is held too).
            return match apply(state, Fault::Kill, target, container) {
                Ok(mut done) => {
                    done.push("held".into());
                    Ok(done)
                }
                Err(FaultError::State(_)) => Ok(vec!["held (nothing running)".into()]),
                Err(e) => Err(e),
            };
        }
        Fault::Release => {
            state.release(ns, name)?;
            return Ok(vec!["released".into()]);
        }
        _ => {}
    }
    let rec = state.find_record(ns, name)?;
    let signal = match fault {
        Fault::Cut | Fault::Restore => {
            net::set_link(&rec.net, fault == Fault::Restore)?;
            return Ok(vec![rec.net.veth_host]);
        }
        Fault::Kill => Signal::SIGKILL,
        Fault::Freeze => Signal::SIGSTOP,
        Fault::Thaw => Signal::SIGCONT,
        Fault::Hold | Fault::Release => unreachable!("handled above"),
    };
    let pids: Vec<(String, i32)> = state
        .pids(&rec.uid)
        .into_iter()
        .filter(|(c, _)| container.is_none_or(|want| want == c))
        .collect();
    if pids.is_empty() {
        return Err(StateError::NoSuchContainer {
            pod: target.to_string(),
            container: container.unwrap_or("*").to_string(),
        }
        .into());
    }
    let mut done = Vec::new();
    for (c, pid) in pids {
        killpg(Pid::from_raw(pid), signal).map_err(|source| FaultError::Signal { pid, source })?;
        done.push(format!("{c} (pgid {pid})"));
    }
    Ok(done)
}
