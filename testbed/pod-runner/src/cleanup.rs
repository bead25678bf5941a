//! `pod-runner cleanup`: removes everything a runner of cluster N made, whether it
//! stopped cleanly or crashed — the runner itself, every process in an `fs<N>-`
//! namespace, the namespaces, `fsv<N>-`/`fsp<N>-` links, mounts under the state
//! dir, and host mountpoints it created. Safe to run twice.

use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::net;
use crate::state::StateDir;

/// How long the runner gets to exit on SIGTERM before SIGKILL.
const RUNNER_STOP_MS: u64 = 3_000;
/// How long cleanup waits for killed pod processes to disappear.
const PROCESS_GONE_WAIT_MS: u64 = 5_000;

pub fn runner_pid_file(state: &StateDir) -> std::path::PathBuf {
    state.root.join("runner.pid")
}

fn stop_runner(state: &StateDir) {
    let Some(pid) = std::fs::read_to_string(runner_pid_file(state))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    // Only if that pid is still a pod-runner (pids are reused after a crash).
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    if !exe.to_string_lossy().contains("pod-runner") || pid == std::process::id() as i32 {
        return;
    }
    let p = Pid::from_raw(pid);
    let _ = kill(p, Signal::SIGTERM);
    let deadline = std::time::Instant::now() + Duration::from_millis(RUNNER_STOP_MS);
    while std::time::Instant::now() < deadline && kill(p, None).is_ok() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(p, Signal::SIGKILL);
}

/// Mount points at or below `root` (the runner makes none, but a crashed shim or a
/// hand-made test mount could leave one; unmounting is harmless).
fn mounts_under(root: &std::path::Path) -> Vec<String> {
    let root = root.display().to_string();
    let mut v: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m == &root || m.starts_with(&format!("{root}/")))
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.len()));
    v
}

pub fn run(state: &StateDir, cluster_index: u8) -> Vec<String> {
    let mut report = Vec::new();
    let mut killed = Vec::new();
    stop_runner(state);
    for rec in state.records() {
        for (_, pid) in state.pids(&rec.uid) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            killed.push(pid);
        }
    }
    let ns_prefix = net::netns_prefix(cluster_index);
    for ns in net::list_netns()
        .into_iter()
        .filter(|n| n.starts_with(&ns_prefix))
    {
        killed.extend(net::kill_netns_pids(&ns));
        let _ = net::ip(&["netns", "del", &ns]);
        report.push(format!("netns {ns}"));
    }
    let prefixes = net::link_prefixes(cluster_index);
    for link in net::list_links()
        .into_iter()
        .filter(|l| prefixes.iter().any(|p| l.starts_with(p.as_str())))
    {
        let _ = net::ip(&["link", "del", &link]);
        report.push(format!("link {link}"));
    }
    for m in mounts_under(&state.root) {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        report.push(format!("mount {m}"));
    }
    state.remove_created_dirs();
    let _ = std::fs::remove_dir_all(state.pods_root());
    if let Ok(mut t) = crate::ipam::Table::load(&state.ipam()) {
        t.in_use.clear();
        let _ = t.save(&state.ipam());
    }
    let _ = std::fs::remove_file(runner_pid_file(state));
    // SIGKILL is asynchronous: return only once the processes are really gone
    // (reaped), so a caller that checks right after sees the truth.
    let deadline = std::time::Instant::now() + Duration::from_millis(PROCESS_GONE_WAIT_MS);
    killed.sort_unstable();
    killed.dedup();
    let exists = |pid: &i32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    for pid in &killed {
        while exists(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Some(pid) = killed.iter().find(|p| exists(p)) {
        report.push(format!("(process {pid} killed but not reaped yet)"));
    }
    report
}
