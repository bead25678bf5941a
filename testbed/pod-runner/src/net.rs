//! Pod networking: one network namespace per pod, a veth pair whose host side hangs
//! on the cluster's bridge, the pod's address and a default route via the gateway.
//! Driven through iproute2's `ip` (the tool every CNI plugin's docs reproduce by hand).
//! Every name carries `fs<N>-` / `fsv<N>-` so cleanup finds them after a crash.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("running `ip`: {0}")]
    Spawn(std::io::Error),
}

/// The names of one pod's network objects, all derived from the pod uid.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PodNet {
    pub netns: String,
    pub veth_host: String,
    pub veth_peer: String,
}

/// 8 hex digits of the uid: with `fsv200-` that is 15 characters, the kernel's
/// interface name limit.
pub fn short_hash(uid: &str) -> String {
    format!("{:08x}", crc32c::crc32c(uid.as_bytes()))
}

impl PodNet {
    pub fn for_pod(cluster_index: u8, uid: &str) -> Self {
        let h = short_hash(uid);
        PodNet {
            netns: format!("fs{cluster_index}-{h}"),
            veth_host: format!("fsv{cluster_index}-{h}"),
            veth_peer: format!("fsp{cluster_index}-{h}"),
        }
    }
}

pub fn netns_prefix(cluster_index: u8) -> String {
    format!("fs{cluster_index}-")
}

pub fn link_prefixes(cluster_index: u8) -> [String; 2] {
    [
        format!("fsv{cluster_index}-"),
        format!("fsp{cluster_index}-"),
    ]
}

pub fn ip(args: &[&str]) -> Result<String, NetError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(NetError::Spawn)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Creates the namespace and wiring; on failure undoes what it made, so a retry
/// starts clean.
/// Private and link-local ranges a pod must never reach except through the routes
/// to our own pod and service ranges (more specific, so they win).
pub const FORBIDDEN_RANGES: [&str; 5] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
];

/// The pod's MAC address, derived from its IP (locally administered, unicast). IPs are
/// sticky per pod name, so a re-created pod comes back with the same IP *and* MAC, and
/// the neighbour entries other pods and the host still hold for that IP stay right;
/// with a random MAC they would point at the gone veth until they time out (~30 s).
pub fn pod_mac(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("02:46:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

pub fn setup(
    net: &PodNet,
    bridge: &str,
    ip_addr: Ipv4Addr,
    prefix_len: u8,
    gateway: Ipv4Addr,
    service_cidr: &str,
) -> Result<(), NetError> {
    teardown(net);
    let r = (|| {
        let addr = format!("{ip_addr}/{prefix_len}");
        let gw = gateway.to_string();
        let ns = net.netns.as_str();
        ip(&["netns", "add", ns])?;
        ip(&[
            "link",
            "add",
            &net.veth_host,
            "type",
            "veth",
            "peer",
            "name",
            &net.veth_peer,
        ])?;
        ip(&["link", "set", &net.veth_peer, "netns", ns])?;
        ip(&["-n", ns, "link", "set", &net.veth_peer, "name", "eth0"])?;
        ip(&[
            "-n",
            ns,
            "link",
            "set",
            "eth0",
            "address",
            &pod_mac(ip_addr),
        ])?;
        ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["link", "set", &net.veth_host, "master", bridge])?;
        ip(&["link", "set", &net.veth_host, "up"])?;
        ip(&["-n", ns, "route", "add", "default", "via", &gw])?;
        // The default route would carry a pod's stray traffic (the host's DNS
        // server, a metadata service) out through the host: refuse it here, at
        // once, and route only our service range through the gateway.
        for r in FORBIDDEN_RANGES {
            ip(&["-n", ns, "route", "add", "unreachable", r])?;
        }
        ip(&["-n", ns, "route", "add", service_cidr, "via", &gw])?;
        Ok(())
    })();
    if r.is_err() {
        teardown(net);
    }
    r
}

/// Kills whatever still runs in the namespace, then deletes the veth and the
/// namespace. Missing pieces are fine (idempotent).
pub fn teardown(net: &PodNet) {
    kill_netns_pids(&net.netns);
    let _ = ip(&["link", "del", &net.veth_host]);
    let _ = ip(&["netns", "del", &net.netns]);
}

/// SIGKILLs every process in the namespace until none is left; returns their pids.
pub fn kill_netns_pids(netns: &str) -> Vec<i32> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let mut killed = Vec::new();
    for _ in 0..10 {
        let pids: Vec<i32> = ip(&["netns", "pids", netns])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        for p in pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            killed.push(p);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    killed
}

/// Link down/up of the pod's host-side veth: the pod keeps its address but no
/// packet crosses (a cut cable).
pub fn set_link(net: &PodNet, up: bool) -> Result<(), NetError> {
    ip(&[
        "link",
        "set",
        &net.veth_host,
        if up { "up" } else { "down" },
    ])
    .map(|_| ())
}

pub fn list_netns() -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

pub fn list_links() -> Vec<String> {
    ip(&["-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let name = l.split(':').nth(1)?.trim();
            Some(name.split('@').next().unwrap_or(name).to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limit_and_carry_the_cluster_index() {
        for idx in [1u8, 42, 200] {
            let n = PodNet::for_pod(idx, "5e0b4b8e-2b7a-4c38-9d6a-1f0c2d3e4f50");
            assert!(n.veth_host.len() <= 15, "{}", n.veth_host);
            assert!(n.veth_peer.len() <= 15);
            assert!(n.netns.starts_with(&netns_prefix(idx)));
            assert!(
                link_prefixes(idx)
                    .iter()
                    .any(|p| n.veth_host.starts_with(p))
            );
        }
        assert!(!PodNet::for_pod(10, "u").netns.starts_with(&netns_prefix(1)));
    }

    #[test]
    fn a_pod_mac_follows_its_ip_and_is_a_local_unicast_address() {
        let ip: Ipv4Addr = "10.213.2.17".parse().unwrap();
        assert_eq!(pod_mac(ip), "02:46:0a:d5:02:11");
        assert_eq!(pod_mac(ip), pod_mac(ip));
        assert_ne!(pod_mac(ip), pod_mac("10.213.2.18".parse().unwrap()));
        let first = u8::from_str_radix(&pod_mac(ip)[..2], 16).unwrap();
        assert_eq!(first & 0b11, 0b10, "locally administered, unicast");
    }
}
