//! The iptables nat rules of the service proxy, as `iptables-restore --noflush`
//! input: a pure function of the service ports and the chains that exist now.

use std::fmt::Write as _;

use super::model::ServicePort;

/// Names of the chains of one cluster; all start with `FS<N>-` so `down` finds them.
#[derive(Debug, Clone)]
pub struct Chains {
    pub prefix: String,
}

impl Chains {
    pub fn new(cluster_index: u32) -> Self {
        Self {
            prefix: format!("FS{cluster_index}-"),
        }
    }
    pub fn services(&self) -> String {
        format!("{}SERVICES", self.prefix)
    }
    pub fn postrouting(&self) -> String {
        format!("{}POSTROUTING", self.prefix)
    }
    fn service_prefix(&self) -> String {
        format!("{}SVC-", self.prefix)
    }
    /// One chain per service port. A checksum keeps the name within iptables' 28
    /// characters and stable across restarts, so the rules read the same each time.
    pub fn service(&self, p: &ServicePort) -> String {
        let key = format!("{}/{}/{}/{}", p.namespace, p.name, p.port_name, p.protocol);
        format!(
            "{}{:08X}",
            self.service_prefix(),
            crc32c::crc32c(key.as_bytes())
        )
    }
    /// Whether a chain is one of the per-service chains this proxy made.
    pub fn is_service_chain(&self, chain: &str) -> bool {
        chain.starts_with(&self.service_prefix())
    }
}

/// The nat table as it should be. `existing` are chain names in the nat table now:
/// per-service chains no longer wanted are flushed and deleted in the same restore.
pub fn render(
    chains: &Chains,
    pod_cidr: &str,
    ports: &[ServicePort],
    existing: &[String],
) -> String {
    let mut wanted: Vec<String> = ports
        .iter()
        .filter(|p| !p.endpoints.is_empty())
        .map(|p| chains.service(p))
        .collect();
    wanted.sort();
    wanted.dedup();
    let stale: Vec<&String> = existing
        .iter()
        .filter(|c| chains.is_service_chain(c) && !wanted.contains(c))
        .collect();

    let mut out = String::from("*nat\n");
    // Declaring a chain in a --noflush restore creates it or empties it.
    for c in [chains.services(), chains.postrouting()]
        .iter()
        .chain(&wanted)
    {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    for c in &stale {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    // Pod -> ClusterIP -> pod on the same bridge: without the masquerade the answer
    // would go straight back over the bridge and never be un-DNATed.
    let _ = writeln!(
        out,
        "-A {} -s {pod_cidr} -m conntrack --ctstate DNAT -j MASQUERADE",
        chains.postrouting()
    );
    for p in ports.iter().filter(|p| !p.endpoints.is_empty()) {
        let chain = chains.service(p);
        let _ = writeln!(
            out,
            "-A {} -d {}/32 -p {proto} -m {proto} --dport {} -j {chain}",
            chains.services(),
            p.cluster_ip,
            p.port,
            proto = p.protocol,
        );
        // kube-proxy's scheme: endpoint i of n is taken with probability 1/(n-i), so
        // each is equally likely and the last one catches whatever is left.
        let n = p.endpoints.len();
        for (i, (ip, port)) in p.endpoints.iter().enumerate() {
            let remaining = n - i;
            let statistic = if remaining > 1 {
                format!(
                    "-m statistic --mode random --probability {:.10} ",
                    1.0 / remaining as f64
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "-A {chain} {statistic}-p {} -j DNAT --to-destination {ip}:{port}",
                p.protocol
            );
        }
    }
    for c in &stale {
        let _ = writeln!(out, "-X {c}");
    }
    out.push_str("COMMIT\n");
    out
}

/// Chain names declared in `iptables-save -t nat` output.
pub fn parse_chains(save: &str) -> Vec<String> {
    save.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}
