//! The runner's state directory: everything another process (`fault`, `cleanup`,
//! a restarted runner) needs to find what this runner made.
//!
//! ```text
//! $STATE/hosts                         bind-mounted as every pod's /etc/hosts
//! $STATE/resolv.conf                   every pod's /etc/resolv.conf (no DNS server)
//! $STATE/ipam.json                     sticky pod addresses
//! $STATE/created-dirs                  host mountpoints the runner had to create
//! $STATE/logs/<ns>_<pod>_<c>.log       container stdout+stderr (restarts append)
//! $STATE/pv/<pv-name>/                 PersistentVolume data
//! $STATE/pods/<uid>/record.json        namespace, name, netns, veth, address
//! $STATE/pods/<uid>/pids/<container>   pid (= process group) of the running container
//! $STATE/pods/<uid>/volumes/<volume>/  materialised emptyDir/configMap/secret/projected
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::net::PodNet;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("no pod {0} in the runner's state (is it running on this runner?)")]
    NoSuchPod(String),
    #[error("pod {pod} has no running container {container:?}")]
    NoSuchContainer { pod: String, container: String },
}

pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Pods must not query the host's resolver (a private address outside the
/// project's namespaces), and there is no cluster DNS: names come from the
/// service proxy's hosts file. A loopback nameserver fails at once (nothing
/// listens in the pod's namespace) instead of timing out.
const RESOLV_CONF: &str = "# pod-runner: no cluster DNS; cluster names are in /etc/hosts\n\
nameserver 127.0.0.1\n\
options timeout:1 attempts:1\n";

#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub net: PodNet,
    pub ip: String,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    pub fn init(&self) -> Result<(), StateError> {
        for d in [self.logs(), self.pv_root(), self.pods_root()] {
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let hosts = self.hosts();
        if !hosts.exists() {
            std::fs::write(&hosts, "").map_err(io_err(&hosts))?;
        }
        let resolv = self.resolv_conf();
        std::fs::write(&resolv, RESOLV_CONF).map_err(io_err(&resolv))
    }

    fn hold_file(&self, ns: &str, pod: &str) -> PathBuf {
        self.root.join("holds").join(format!("{ns}_{pod}"))
    }

    /// Keeps the pod `ns/pod` from starting (`fault hold`).
    pub fn hold(&self, ns: &str, pod: &str) -> Result<(), StateError> {
        let f = self.hold_file(ns, pod);
        if let Some(dir) = f.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        std::fs::write(&f, "").map_err(io_err(&f))
    }

    /// Lets it start again.
    pub fn release(&self, ns: &str, pod: &str) -> Result<(), StateError> {
        let f = self.hold_file(ns, pod);
        match std::fs::remove_file(&f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&f)(e)),
            _ => Ok(()),
        }
    }

    /// Whether `ns/pod` is held.
    pub fn is_held(&self, ns: &str, pod: &str) -> bool {
        self.hold_file(ns, pod).exists()
    }

    pub fn resolv_conf(&self) -> PathBuf {
        self.root.join("resolv.conf")
    }

    pub fn hosts(&self) -> PathBuf {
        self.root.join("hosts")
    }
    pub fn ipam(&self) -> PathBuf {
        self.root.join("ipam.json")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn log_file(&self, ns: &str, pod: &str, container: &str) -> PathBuf {
        self.logs().join(format!("{ns}_{pod}_{container}.log"))
    }
    pub fn pv_root(&self) -> PathBuf {
        self.root.join("pv")
    }
    pub fn pods_root(&self) -> PathBuf {
        self.root.join("pods")
    }
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_root().join(uid)
    }
    pub fn volume_dir(&self, uid: &str, volume: &str) -> PathBuf {
        self.pod_dir(uid).join("volumes").join(volume)
    }
    pub fn pid_file(&self, uid: &str, container: &str) -> PathBuf {
        self.pod_dir(uid).join("pids").join(container)
    }
    pub fn created_dirs(&self) -> PathBuf {
        self.root.join("created-dirs")
    }

    pub fn write_record(&self, rec: &PodRecord) -> Result<(), StateError> {
        let dir = self.pod_dir(&rec.uid);
        std::fs::create_dir_all(dir.join("pids")).map_err(io_err(&dir))?;
        let p = dir.join("record.json");
        let body = serde_json::to_vec_pretty(rec).map_err(|source| StateError::Json {
            path: p.clone(),
            source,
        })?;
        std::fs::write(&p, body).map_err(io_err(&p))
    }

    pub fn records(&self) -> Vec<PodRecord> {
        let Ok(rd) = std::fs::read_dir(self.pods_root()) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| std::fs::read(e.path().join("record.json")).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }

    pub fn find_record(&self, ns: &str, name: &str) -> Result<PodRecord, StateError> {
        self.records()
            .into_iter()
            .find(|r| r.namespace == ns && r.name == name)
            .ok_or_else(|| StateError::NoSuchPod(format!("{ns}/{name}")))
    }

    pub fn write_pid(&self, uid: &str, container: &str, pid: u32) -> Result<(), StateError> {
        let p = self.pid_file(uid, container);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(io_err(d))?;
        }
        std::fs::write(&p, pid.to_string()).map_err(io_err(&p))
    }

    pub fn clear_pid(&self, uid: &str, container: &str) {
        let _ = std::fs::remove_file(self.pid_file(uid, container));
    }

    /// Running containers of a pod: (container, pid).
    pub fn pids(&self, uid: &str) -> Vec<(String, i32)> {
        let Ok(rd) = std::fs::read_dir(self.pod_dir(uid).join("pids")) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let pid = std::fs::read_to_string(e.path())
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                Some((e.file_name().to_string_lossy().into_owned(), pid))
            })
            .collect()
    }

    /// Creates `dir` (and missing parents) on the host, remembering each directory
    /// made so cleanup removes them again (only if still empty).
    pub fn create_host_dir(&self, dir: &Path) -> Result<(), StateError> {
        self.create_host_path(dir, false)
    }

    /// As `create_host_dir`, for a file mountpoint (an empty file).
    pub fn create_host_file(&self, file: &Path) -> Result<(), StateError> {
        self.create_host_path(file, true)
    }

    fn create_host_path(&self, dir: &Path, is_file: bool) -> Result<(), StateError> {
        let mut missing = Vec::new();
        let mut cur = Some(dir);
        while let Some(d) = cur {
            if d.exists() {
                break;
            }
            missing.push(d.to_path_buf());
            cur = d.parent();
        }
        if missing.is_empty() {
            return Ok(());
        }
        let list = self.created_dirs();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&list)
            .map_err(io_err(&list))?;
        // Outermost first in the file; cleanup removes in reverse order.
        for d in missing.iter().rev() {
            writeln!(f, "{}", d.display()).map_err(io_err(&list))?;
        }
        if is_file {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            std::fs::write(dir, b"").map_err(io_err(dir))
        } else {
            std::fs::create_dir_all(dir).map_err(io_err(dir))
        }
    }

    /// Removes the recorded host directories that are empty, innermost first.
    pub fn remove_created_dirs(&self) {
        let Ok(text) = std::fs::read_to_string(self.created_dirs()) else {
            return;
        };
        // Another cluster's pod may be using the same path as a mountpoint in its
        // private mount namespace; removing it would detach that pod's volume.
        let in_use = mount_points_of_all_namespaces();
        let mut dirs: Vec<&str> = text
            .lines()
            .filter(|l| !l.is_empty())
            .filter(|l| {
                // mountinfo shows resolved paths (/var/run → /run).
                let real = std::fs::canonicalize(l).map(|p| p.display().to_string());
                !in_use.contains(*l) && !real.is_ok_and(|r| in_use.contains(&r))
            })
            .collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
        dirs.dedup();
        for d in dirs {
            let p = Path::new(d);
            // Empty files are file mountpoints (subPath mounts); anything with
            // content was not ours to begin with or got used: left alone.
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.is_file() && m.len() == 0 => {
                    let _ = std::fs::remove_file(p);
                }
                Ok(m) if m.is_dir() => {
                    let _ = std::fs::remove_dir(p);
                }
                _ => {}
            }
        }
        let _ = std::fs::remove_file(self.created_dirs());
    }
}

/// Every mount point of every mount namespace on the machine (one mountinfo
/// read per namespace).
fn mount_points_of_all_namespaces() -> std::collections::HashSet<String> {
    let mut seen_ns = std::collections::HashSet::new();
    let mut points = std::collections::HashSet::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return points;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(ns) = std::fs::read_link(e.path().join("ns/mnt")) else {
            continue;
        };
        if !seen_ns.insert(ns) {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(e.path().join("mountinfo")) else {
            continue;
        };
        points.extend(
            info.lines()
                .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string)),
        );
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_host_dirs_are_recorded_and_removed_only_when_empty() {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::new(t.path().join("state"));
        s.init().unwrap();
        let a = t.path().join("host/a/b/c");
        s.create_host_dir(&a).unwrap();
        let keep = t.path().join("host/keep");
        s.create_host_dir(&keep).unwrap();
        std::fs::write(keep.join("data"), "x").unwrap();
        s.remove_created_dirs();
        assert!(!t.path().join("host/a").exists());
        assert!(keep.join("data").exists(), "non-empty dirs are left alone");
        s.remove_created_dirs(); // idempotent
    }
}
