//! Settings of one `pod-runner run`, as given by `testbed/cluster.sh up`.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::ipam::Cidr;
use crate::state::StateDir;

/// What the service proxy (see `proxy`) gets from the runner; it need not read
/// every field.
#[derive(Debug, Clone)]
#[allow(dead_code)]
pub struct ProxyConfig {
    pub cluster_index: u8,
    pub node_name: String,
    pub state_dir: PathBuf,
    /// `$STATE/hosts`, every pod's /etc/hosts.
    pub hosts_file: PathBuf,
    pub bridge: String,
    pub pod_cidr: String,
    pub service_cidr: String,
    pub gateway: Ipv4Addr,
}

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub cluster_index: u8,
    pub node_name: String,
    pub state: StateDir,
    pub bridge: String,
    pub pod_cidr: Cidr,
    pub pod_cidr_text: String,
    pub service_cidr: String,
    pub gateway: Ipv4Addr,
    /// API server as pods see it (KUBERNETES_SERVICE_HOST/PORT).
    pub api_host: String,
    pub api_port: u16,
    /// Cluster CA: the log endpoint checks the API server's client cert against it.
    pub ca_file: PathBuf,
    pub kubelet_port: u16,
    /// CPUs the Node advertises (requests are not enforced by the runner).
    pub node_cpus: u32,
    /// The runner's own binary, re-executed as `pod-runner shim`.
    pub self_exe: PathBuf,
}

impl RunConfig {
    pub fn proxy(&self) -> ProxyConfig {
        ProxyConfig {
            cluster_index: self.cluster_index,
            node_name: self.node_name.clone(),
            state_dir: self.state.root.clone(),
            hosts_file: self.state.hosts(),
            bridge: self.bridge.clone(),
            pod_cidr: self.pod_cidr_text.clone(),
            service_cidr: self.service_cidr.clone(),
            gateway: self.gateway,
        }
    }
}

/// `https://10.213.7.1:6443` → ("10.213.7.1", 6443).
pub fn split_api_server(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let hostport = rest.split('/').next()?;
    let (host, port) = hostport.rsplit_once(':')?;
    Some((
        host.trim_matches(['[', ']']).to_string(),
        port.parse().ok()?,
    ))
}

/// `fsbr7` → 7.
pub fn index_from_bridge(bridge: &str) -> Option<u8> {
    bridge.strip_prefix("fsbr")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_server_and_bridge_parsing() {
        assert_eq!(
            split_api_server("https://10.213.7.1:16443"),
            Some(("10.213.7.1".into(), 16443))
        );
        assert_eq!(split_api_server("https://10.213.7.1"), None);
        assert_eq!(index_from_bridge("fsbr200"), Some(200));
        assert_eq!(index_from_bridge("br0"), None);
    }
}
