//! The hosts file that stands in for cluster DNS: Service names → ClusterIP,
//! headless Services → ready pod IPs, `pod.subdomain.ns.svc.cluster.local` → pod IP.
//! Pure: a function of the Services, EndpointSlices and Pods.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::model::{cluster_ip, is_headless, ready_addresses, slices_of};

pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The three spellings a pod may use for `first.rest`: fully qualified, `.svc`, short.
fn names(first: &str, ns: &str) -> [String; 3] {
    [
        format!("{first}.{ns}.svc.{CLUSTER_DOMAIN}"),
        format!("{first}.{ns}.svc"),
        format!("{first}.{ns}"),
    ]
}

fn pod_is_live(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// The whole hosts file, lines sorted so the same cluster state gives the same bytes.
pub fn render(services: &[&Service], slices: &[&EndpointSlice], pods: &[&Pod]) -> String {
    // (ip, name) pairs: a name may map to several IPs (headless), each its own line.
    let mut entries: BTreeSet<(String, Ipv4Addr)> = BTreeSet::new();
    // Per-pod names map to exactly one IP; pods win over endpoint hostnames.
    let mut pod_names: BTreeMap<String, Ipv4Addr> = BTreeMap::new();

    for svc in services {
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let Some(name) = svc.metadata.name.as_deref() else {
            continue;
        };
        if let Some(ip) = cluster_ip(svc) {
            for n in names(name, ns) {
                entries.insert((n, ip));
            }
        } else if is_headless(svc) {
            for slice in slices_of(svc, slices) {
                for (ip, hostname) in ready_addresses(slice) {
                    for n in names(name, ns) {
                        entries.insert((n, ip));
                    }
                    if let Some(h) = hostname {
                        for n in names(&format!("{h}.{name}"), ns) {
                            pod_names.entry(n).or_insert(ip);
                        }
                    }
                }
            }
        }
    }
    for pod in pods.iter().filter(|p| pod_is_live(p)) {
        let spec = pod.spec.as_ref();
        let Some(subdomain) = spec.and_then(|s| s.subdomain.as_deref()) else {
            continue;
        };
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let host = spec
            .and_then(|s| s.hostname.as_deref())
            .or(pod.metadata.name.as_deref());
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let (Some(host), Some(ip)) = (host, ip) else {
            continue;
        };
        for n in names(&format!("{host}.{subdomain}"), ns) {
            pod_names.insert(n, ip);
        }
    }
    entries.extend(pod_names);

    let mut out = String::from(
        "# Written by the pod runner's service proxy (the local cluster's DNS stand-in).\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    // One line per IP with all its names, fully qualified first, like real hosts files.
    let mut by_ip: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
    for (name, ip) in entries {
        by_ip.entry(ip).or_default().push(name);
    }
    let mut lines: Vec<String> = Vec::new();
    for (ip, mut names) in by_ip {
        names.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        lines.push(format!("{ip}\t{}", names.join(" ")));
    }
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    out
}
