//! `down` after a crash: every process, network namespace, interface, iptables
//! chain, mount and file of the cluster is gone.

use std::process::Command;

use crate::harness::{Cluster, TestResult, ensure, wait_until};

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: leftover}
spec:
  containers:
    - name: main
      image: busybox
      command: [sh, -c, 'exec sleep 3600']
      volumeMounts: [{name: scratch, mountPath: /scratch}]
  volumes: [{name: scratch, emptyDir: {}}]
"#;

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Everything of cluster `index` (dir `dir`) this machine still has, one line each.
pub fn leftovers(index: u32, dir: &str) -> Vec<String> {
    let mut found = Vec::new();
    let netns = sh("ip netns list");
    found.extend(
        netns
            .lines()
            .filter(|l| l.starts_with(&format!("fs{index}-")))
            .map(|l| format!("netns {l}")),
    );
    let links = sh("ip -o link show");
    for l in links.lines() {
        let name = l.split(':').nth(1).unwrap_or_default().trim();
        let name = name.split('@').next().unwrap_or_default();
        let ours = [
            format!("fsbr{index}"),
            format!("fsv{index}-"),
            format!("fsp{index}-"),
        ];
        if name == ours[0] || name.starts_with(&ours[1]) || name.starts_with(&ours[2]) {
            found.push(format!("interface {name}"));
        }
    }
    for table in ["nat", "filter", "mangle", "raw"] {
        let save = sh(&format!("iptables-save -t {table}"));
        found.extend(
            save.lines()
                .filter(|l| l.contains(&format!("FS{index}-")))
                .map(|l| format!("iptables {table}: {l}")),
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    found.extend(
        mounts
            .lines()
            .filter(|l| l.contains(dir))
            .map(|l| format!("mount {l}")),
    );
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(dir) {
            found.push(format!(
                "process {}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    if std::path::Path::new(dir).exists() {
        found.push(format!("dir {dir}"));
    }
    found
}

/// Starts its own cluster, runs a pod, `kill -9`s every process of the cluster (a
/// crash), then checks that `down` leaves nothing behind.
pub fn down_after_a_crash_leaves_nothing(name: &str) -> TestResult {
    let mut c = Cluster::start(name, true)?;
    let dir = c.dir.to_string_lossy().into_owned();
    let index = c.index;
    c.apply("default", POD)?;
    let pod = wait_until("pod leftover Running", || {
        c.pod("default", "leftover")
            .ok()
            .filter(|p| p.phase == "Running")
    })?;
    let pod_pids = sh(&format!(
        "cat {}/pods/{}/pids/* 2>/dev/null",
        c.runner_dir().display(),
        pod.uid
    ));
    ensure(!leftovers(index, &dir).is_empty(), || {
        "the cluster left no trace to clean".into()
    })?;

    // The crash: every control-plane process and the pod runner die at once.
    sh(&format!(
        "for f in {dir}/pids/*.pid; do kill -9 $(cat $f); done"
    ));
    c.down()?;
    let left = leftovers(index, &dir);
    let pods_alive: Vec<&str> = pod_pids
        .split_whitespace()
        .filter(|p| p.parse().is_ok_and(crate::workloads::process_alive))
        .collect();
    ensure(left.is_empty() && pods_alive.is_empty(), || {
        format!("after down: {left:#?}, pod processes alive: {pods_alive:?}")
    })
}
