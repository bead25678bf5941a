//! `pod-runner shim --spec FILE`: the few single-threaded steps between fork and the
//! container's binary — join the pod's network namespace, take a private mount and
//! UTS namespace, set the pod's hostname, bind-mount the volumes, chdir, exec.
//! Kept out of the (multi-threaded) runner because setns/unshare act on the calling
//! thread and are only sound before exec in a single-threaded process.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("reading spec {0}: {1}")]
    Spec(PathBuf, String),
    #[error("{step}: {source}")]
    Sys {
        step: String,
        source: nix::errno::Errno,
    },
    #[error("{step}: {source}")]
    Io {
        step: String,
        source: std::io::Error,
    },
    #[error("argument contains a NUL byte")]
    Nul,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MountSpec {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShimSpec {
    /// Name under /run/netns (made by `ip netns add`).
    pub netns: Option<String>,
    pub hostname: String,
    pub mounts: Vec<MountSpec>,
    pub workdir: Option<PathBuf>,
    pub executable: PathBuf,
    pub argv: Vec<String>,
}

fn sys(step: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> ShimError {
    let step = step.into();
    move |source| ShimError::Sys { step, source }
}

/// Runs the steps and execs; returns only on failure.
pub fn run(spec_path: &Path) -> Result<std::convert::Infallible, ShimError> {
    let text =
        std::fs::read(spec_path).map_err(|e| ShimError::Spec(spec_path.into(), e.to_string()))?;
    let spec: ShimSpec = serde_json::from_slice(&text)
        .map_err(|e| ShimError::Spec(spec_path.into(), e.to_string()))?;
    if let Some(ns) = &spec.netns {
        let path = format!("/run/netns/{ns}");
        let f = std::fs::File::open(&path).map_err(|source| ShimError::Io {
            step: format!("open {path}"),
            source,
        })?;
        setns(&f, CloneFlags::CLONE_NEWNET).map_err(sys(format!("setns {path}")))?;
    }
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
        .map_err(sys("unshare mount+uts"))?;
    // Without this the pod's bind mounts would propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("make / rprivate"))?;
    nix::unistd::sethostname(&spec.hostname).map_err(sys("sethostname"))?;
    let mut mounts = spec.mounts.clone();
    // Parents before children, so a volume inside another volume lands on top.
    mounts.sort_by_key(|m| m.target.components().count());
    for m in &mounts {
        bind(m)?;
    }
    if let Some(dir) = &spec.workdir {
        std::fs::create_dir_all(dir).map_err(|source| ShimError::Io {
            step: format!("create workingDir {}", dir.display()),
            source,
        })?;
        std::env::set_current_dir(dir).map_err(|source| ShimError::Io {
            step: format!("chdir {}", dir.display()),
            source,
        })?;
    }
    let exe = CString::new(spec.executable.as_os_str().as_bytes()).map_err(|_| ShimError::Nul)?;
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| ShimError::Nul))
        .collect::<Result<_, _>>()?;
    nix::unistd::execv(&exe, &argv).map_err(sys(format!("exec {}", spec.executable.display())))
}

fn bind(m: &MountSpec) -> Result<(), ShimError> {
    if !m.target.exists() {
        // Normally made (and recorded) by the runner; here only for targets inside
        // another volume, which live in that volume's directory.
        let made = if m.source.is_dir() {
            std::fs::create_dir_all(&m.target)
        } else {
            m.target
                .parent()
                .map(std::fs::create_dir_all)
                .unwrap_or(Ok(()))
                .and_then(|_| std::fs::write(&m.target, b""))
        };
        made.map_err(|source| ShimError::Io {
            step: format!("create mountpoint {}", m.target.display()),
            source,
        })?;
    }
    let what = format!("bind {} on {}", m.source.display(), m.target.display());
    mount(
        Some(&m.source),
        &m.target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys(what.clone()))?;
    if m.read_only {
        mount(
            None::<&str>,
            &m.target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(sys(format!("read-only {what}")))?;
    }
    Ok(())
}
