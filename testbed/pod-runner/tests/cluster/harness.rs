//! The cluster under test and the few kubectl calls the tests make, each bounded
//! in time. A cluster the harness started is taken down when its guard drops.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub type TestResult = Result<(), String>;

/// Longest wait for anything a test expects the cluster to do.
pub const WAIT_S: u64 = 90;
/// Longest a single kubectl call may take.
const KUBECTL_TIMEOUT_S: u64 = 30;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cache_dir() -> PathBuf {
    std::env::var_os("FLASHSALE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/flashsale")
        })
}

pub fn cluster_sh(args: &[&str]) -> Result<String, String> {
    cluster_sh_env(args, &[])
}

fn cluster_sh_env(args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let out = Command::new("bash")
        .arg(repo_root().join("testbed/cluster.sh"))
        .args(args)
        .envs(env.iter().copied())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cluster.sh {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("cluster.sh {args:?} failed ({})", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One local cluster, as recorded in its dir by `testbed/cluster.sh up`.
pub struct Cluster {
    pub name: String,
    pub dir: PathBuf,
    pub index: u32,
    pub bin: PathBuf,
    /// Whether this harness started it, and so must take it down.
    owned: bool,
}

impl Cluster {
    /// Reads the cluster's `cluster.env` (written by `up`).
    pub fn open(name: &str, owned: bool) -> Result<Self, String> {
        let dir = cache_dir().join("clusters").join(name);
        let env = std::fs::read_to_string(dir.join("cluster.env"))
            .map_err(|e| format!("cluster '{name}' is not up ({}): {e}", dir.display()))?;
        let get = |k: &str| {
            env.lines()
                .rev()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(str::to_owned)
                .ok_or_else(|| format!("{k} missing in cluster.env"))
        };
        Ok(Self {
            name: name.to_owned(),
            index: get("INDEX")?.parse().map_err(|e| format!("INDEX: {e}"))?,
            bin: PathBuf::from(get("BIN")?),
            dir,
            owned,
        })
    }

    /// `FLASHSALE_CLUSTER` names a running cluster to reuse; otherwise start `name`.
    pub fn reuse_or_start(name: &str) -> Result<Self, String> {
        if let Ok(existing) = std::env::var("FLASHSALE_CLUSTER") {
            cluster_sh(&["status", "--name", &existing])
                .map_err(|e| format!("FLASHSALE_CLUSTER={existing} is not up: {e}"))?;
            return Self::open(&existing, false);
        }
        Self::start(name, false)
    }

    /// `skip_build`: use the release binaries as they are (another `up` of this
    /// run built them), instead of waiting on cargo's lock behind other builds.
    pub fn start(name: &str, skip_build: bool) -> Result<Self, String> {
        let started = Instant::now();
        // The guard exists before `up` returns, so a failed `up` is taken down too.
        let mut guard = Self {
            name: name.to_owned(),
            dir: cache_dir().join("clusters").join(name),
            index: 0,
            bin: PathBuf::new(),
            owned: true,
        };
        let skip = if skip_build { "1" } else { "0" };
        cluster_sh_env(&["up", "--name", name], &[("FLASHSALE_SKIP_BUILD", skip)])?;
        let opened = Self::open(name, true)?;
        guard.owned = false;
        eprintln!(
            "cluster '{name}' up in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(opened)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    pub fn kubectl_bin(&self) -> PathBuf {
        self.bin.join("kubectl")
    }

    /// Runs kubectl; Ok(stdout) on success, Err(stderr) otherwise.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut cmd = Command::new("timeout");
        cmd.arg(KUBECTL_TIMEOUT_S.to_string())
            .arg(self.kubectl_bin())
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("kubectl: {e}"))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .map_err(|e| format!("kubectl stdin: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("kubectl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    pub fn apply(&self, ns: &str, yaml: &str) -> TestResult {
        self.kubectl(&["-n", ns, "apply", "-f", "-"], Some(yaml))
            .map(drop)
    }

    pub fn json(&self, args: &[&str]) -> Result<Value, String> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = self.kubectl(&a, None)?;
        serde_json::from_str(&out).map_err(|e| format!("kubectl {args:?}: bad JSON: {e}"))
    }

    /// A fresh namespace for one test; removed (without waiting) when dropped.
    pub fn namespace(&self, name: &str) -> Result<Namespace<'_>, String> {
        let _ = self.kubectl(
            &["delete", "namespace", name, "--wait=true", "--timeout=60s"],
            None,
        );
        self.kubectl(&["create", "namespace", name], None)?;
        // Pods are refused until the namespace's default ServiceAccount exists.
        wait_until(&format!("ServiceAccount {name}/default"), || {
            self.kubectl(&["-n", name, "get", "serviceaccount", "default"], None)
                .ok()
        })?;
        Ok(Namespace {
            cluster: self,
            name: name.to_owned(),
        })
    }

    /// A pod's phase, ready condition, IP, restart count of its first container.
    pub fn pod(&self, ns: &str, name: &str) -> Result<PodView, String> {
        let v = self.json(&["-n", ns, "get", "pod", name])?;
        Ok(PodView::from(&v))
    }

    pub fn pods(&self, ns: &str, selector: &str) -> Result<Vec<PodView>, String> {
        let v = self.json(&["-n", ns, "get", "pods", "-l", selector])?;
        Ok(v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(PodView::from)
            .collect())
    }

    /// Waits for a pod to finish and returns (phase, its logs).
    pub fn wait_finished(&self, ns: &str, name: &str) -> Result<(String, String), String> {
        let phase = wait_until(&format!("pod {ns}/{name} to finish"), || {
            let p = self.pod(ns, name).ok()?;
            matches!(p.phase.as_str(), "Succeeded" | "Failed").then_some(p.phase)
        })?;
        let logs = self.pod_logs(ns, name);
        Ok((phase, logs))
    }

    /// A pod's output: `kubectl logs` (through the pod runner's kubelet endpoint), or,
    /// where that is not served, the files the pod runner writes.
    pub fn pod_logs(&self, ns: &str, pod: &str) -> String {
        if let Ok(logs) = self.kubectl(&["-n", ns, "logs", pod], None) {
            return logs;
        }
        let prefix = format!("{ns}_{pod}_");
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.runner_dir().join("logs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
            .collect();
        files.sort();
        files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .collect()
    }

    /// Where the pod runner keeps a pod's state (pids, volumes).
    pub fn runner_dir(&self) -> PathBuf {
        self.dir.join("runner")
    }

    pub fn down(&mut self) -> TestResult {
        self.owned = false;
        cluster_sh(&["down", "--name", &self.name]).map(drop)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.owned {
            let _ = cluster_sh(&["down", "--name", &self.name]);
        }
    }
}

pub struct Namespace<'a> {
    cluster: &'a Cluster,
    pub name: String,
}

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
    }
}

#[derive(Debug, Clone, Default)]
pub struct PodView {
    pub uid: String,
    pub phase: String,
    pub ready: bool,
    pub ip: Option<Ipv4Addr>,
    pub restarts: u64,
}

impl From<&Value> for PodView {
    fn from(v: &Value) -> Self {
        let status = &v["status"];
        let ready = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        Self {
            uid: v["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
            phase: status["phase"].as_str().unwrap_or_default().to_owned(),
            ready,
            ip: status["podIP"].as_str().and_then(|s| s.parse().ok()),
            restarts: status["containerStatuses"][0]["restartCount"]
                .as_u64()
                .unwrap_or(0),
        }
    }
}

/// Polls `f` every 250 ms until it returns Some, for at most WAIT_S.
pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T, String> {
    let deadline = Instant::now() + Duration::from_secs(WAIT_S);
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out after {WAIT_S} s waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A plain HTTP/1.0 GET from this host; returns the status code.
pub fn http_get(ip: Ipv4Addr, port: u16, path: &str) -> Result<u16, String> {
    let timeout = Duration::from_secs(5);
    let addr = SocketAddr::from((ip, port));
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n")
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut head = [0u8; 64];
    let n = s
        .read(&mut head)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{addr}: not an HTTP answer: {line:?}"))
}

pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> TestResult {
    if cond { Ok(()) } else { Err(msg()) }
}
