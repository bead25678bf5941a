//! The pod sandbox on the real kernel, without a cluster: a container started by
//! `pod-runner shim` lives in its own network namespace (reachable from the host on
//! its address) with private mounts, `pod-runner fault` cuts and kills it from
//! another process, and `pod-runner cleanup` leaves no process, namespace or link
//! behind — even when the runner never stopped its pods. Needs root and iproute2;
//! skipped (with a message) otherwise. Uses the throwaway cluster index 199.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INDEX: u8 = 199;
const BRIDGE: &str = "fsbr199";
const GATEWAY: &str = "10.213.199.1";
const POD_IP: &str = "10.213.199.5";
const NETNS: &str = "fs199-sbxtest0";
const VETH: &str = "fsv199-sbxtest0";
const PEER: &str = "fsp199-sbxtest0";
/// Every wait in this test ends by then.
const WAIT_MAX_S: u64 = 20;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pod-runner"))
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn ip_out(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Removes everything the test made, also when an assertion fails midway.
struct Guard {
    state: PathBuf,
    children: Vec<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new(bin())
            .args(["cleanup", "--state-dir"])
            .arg(&self.state)
            .args(["--cluster-index", &INDEX.to_string()])
            .stdout(Stdio::null())
            .status();
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        ip(&["link", "del", BRIDGE]);
    }
}

fn http_get(path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &format!("{POD_IP}:8080").parse().ok()?,
        Duration::from_secs(1),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(WAIT_MAX_S);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.exists())
}

fn write_spec(state: &Path, python: &Path) -> PathBuf {
    let spec = serde_json::json!({
        "netns": NETNS,
        "hostname": "sbx-0",
        "mounts": [{"source": state.join("vol"), "target": state.join("mnt/inside"), "read_only": true}],
        "workdir": state.join("mnt/inside"),
        "executable": python,
        "argv": ["python3", "-m", "http.server", "8080"],
    });
    let spec_path = state.join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    spec_path
}

fn start_pod(state: &Path, python: &Path) -> Child {
    Command::new(bin())
        .args(["shim", "--spec"])
        .arg(write_spec(state, python))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap()
}

/// Starts the pod through a shell that exits at once, so init adopts (and reaps) it.
fn start_orphan_pod(state: &Path, python: &Path) -> u32 {
    let spec_path = write_spec(state, python);
    let out = Command::new("sh")
        .args(["-c", r#""$0" shim --spec "$1" >/dev/null 2>&1 & echo $!"#])
        .arg(bin())
        .arg(&spec_path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

use std::os::unix::process::CommandExt;

#[test]
fn pod_sandbox_network_mounts_faults_and_cleanup() {
    if !nix::unistd::Uid::effective().is_root() || which("ip").is_none() {
        eprintln!("skipped: needs root and iproute2");
        return;
    }
    let Some(python) = which("python3") else {
        eprintln!("skipped: needs python3");
        return;
    };
    // Several people may run the workspace tests at once on one machine: the
    // fixed names of index 199 are used by one run at a time.
    let lock_file = std::fs::File::create("/tmp/flashsale-pod-runner-sandbox-test.lock").unwrap();
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().to_path_buf();
    let mut guard = Guard {
        state: state.clone(),
        children: Vec::new(),
    };
    // A leftover from an earlier crashed run must not break this one.
    drop(Guard {
        state: state.clone(),
        children: Vec::new(),
    });
    assert!(ip(&["link", "add", BRIDGE, "type", "bridge"]));
    assert!(ip(&[
        "addr",
        "add",
        &format!("{GATEWAY}/24"),
        "dev",
        BRIDGE
    ]));
    assert!(ip(&["link", "set", BRIDGE, "up"]));
    for args in [
        vec!["netns", "add", NETNS],
        vec!["link", "add", VETH, "type", "veth", "peer", "name", PEER],
        vec!["link", "set", PEER, "netns", NETNS],
        vec!["-n", NETNS, "link", "set", PEER, "name", "eth0"],
        vec!["-n", NETNS, "addr", "add", "10.213.199.5/24", "dev", "eth0"],
        vec!["-n", NETNS, "link", "set", "lo", "up"],
        vec!["-n", NETNS, "link", "set", "eth0", "up"],
        vec!["link", "set", VETH, "master", BRIDGE],
        vec!["link", "set", VETH, "up"],
    ] {
        assert!(ip(&args), "ip {args:?}");
    }
    std::fs::create_dir_all(state.join("vol")).unwrap();
    std::fs::write(state.join("vol/f"), "hello from the volume").unwrap();
    std::fs::create_dir_all(state.join("mnt/inside")).unwrap();

    let child = start_pod(&state, &python);
    let pid = child.id();
    guard.children.push(child);
    wait_until("the pod's HTTP server", || {
        http_get("/f").is_some_and(|r| r.contains("hello from the volume"))
    });
    assert!(
        !state.join("mnt/inside/f").exists(),
        "the pod's bind mount must not show on the host"
    );

    // Another cluster's cleanup that recorded the same host mountpoint (it made
    // it first) must leave it: this pod still mounts it in its namespace.
    let other = tmp.path().join("other-cluster");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join("created-dirs"),
        format!("{}\n", state.join("mnt/inside").display()),
    )
    .unwrap();
    assert!(
        Command::new(bin())
            .args(["cleanup", "--state-dir"])
            .arg(&other)
            .args(["--cluster-index", "198"])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    assert!(
        state.join("mnt/inside").exists(),
        "a mountpoint in use elsewhere is kept"
    );
    assert!(
        http_get("/f").is_some_and(|r| r.contains("hello")),
        "and the pod still sees its volume"
    );

    // The state a runner keeps, so `fault` works from this other process.
    let pod_dir = state.join("pods/uid-1");
    std::fs::create_dir_all(pod_dir.join("pids")).unwrap();
    std::fs::write(pod_dir.join("pids/web"), pid.to_string()).unwrap();
    let record = serde_json::json!({
        "namespace": "shop", "name": "web-0", "uid": "uid-1", "ip": POD_IP,
        "net": {"netns": NETNS, "veth_host": VETH, "veth_peer": PEER},
    });
    std::fs::write(pod_dir.join("record.json"), record.to_string()).unwrap();
    let fault = |f: &str| {
        Command::new(bin())
            .args(["fault", "--state-dir"])
            .arg(&state)
            .args([f, "shop/web-0"])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(fault("cut"));
    assert!(http_get("/f").is_none(), "a cut pod is unreachable");
    assert!(fault("restore"));
    wait_until("the pod back after restore", || http_get("/f").is_some());
    assert!(fault("kill"));
    let status = guard.children[0].wait().unwrap();
    assert!(!status.success(), "killed container exits by signal");

    // A "crashed runner": a second pod process still runs, orphaned (its parent
    // is gone, as when the runner dies); cleanup must end it.
    let pid2 = start_orphan_pod(&state, &python);
    wait_until("the second pod process", || http_get("/").is_some());
    let cleanup = || {
        Command::new(bin())
            .args(["cleanup", "--state-dir"])
            .arg(&state)
            .args(["--cluster-index", &INDEX.to_string()])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(cleanup());
    wait_until("the pod process to be gone", || {
        !Path::new(&format!("/proc/{pid2}")).exists()
    });
    assert!(!ip_out(&["netns", "list"]).contains(NETNS), "netns removed");
    assert!(
        !ip_out(&["-o", "link", "show"]).contains(VETH),
        "veth removed"
    );
    assert!(!state.join("pods").exists(), "pod state removed");
    assert!(cleanup(), "cleanup is idempotent");
}
