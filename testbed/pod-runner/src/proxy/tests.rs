//! The proxy's rules and hosts file, generated from a fixture namespace.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::model::{self, ApiServer};
use super::rules::{self, Chains};
use super::{api_server_from_url, apply, hosts};

struct Fixture {
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    pods: Vec<Pod>,
}

fn fixture() -> Fixture {
    let mut f = Fixture {
        services: vec![],
        slices: vec![],
        pods: vec![],
    };
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(include_str!("fixtures/shop.yaml")).expect("fixture is YAML");
    for v in docs {
        match v["kind"].as_str() {
            Some("Service") => f.services.push(serde_json::from_value(v).expect("Service")),
            Some("EndpointSlice") => f
                .slices
                .push(serde_json::from_value(v).expect("EndpointSlice")),
            Some("Pod") => f.pods.push(serde_json::from_value(v).expect("Pod")),
            other => panic!("unexpected kind {other:?}"),
        }
    }
    f
}

const API: ApiServer = ApiServer {
    ip: Ipv4Addr::new(10, 213, 3, 1),
    port: 6443,
};

fn ports(f: &Fixture) -> Vec<model::ServicePort> {
    let services: Vec<&Service> = f.services.iter().collect();
    let slices: Vec<&EndpointSlice> = f.slices.iter().collect();
    model::service_ports(&services, &slices, Some(API))
}

fn hosts_of(f: &Fixture) -> String {
    let services: Vec<&Service> = f.services.iter().collect();
    let slices: Vec<&EndpointSlice> = f.slices.iter().collect();
    let pods: Vec<&Pod> = f.pods.iter().collect();
    hosts::render(&services, &slices, &pods)
}

/// The IP a name resolves to through the hosts file, as glibc reads it (first line).
fn resolve(hosts: &str, name: &str) -> Option<Ipv4Addr> {
    hosts.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let mut words = l.split_whitespace();
        let ip = words.next()?;
        words.any(|w| w == name).then(|| ip.parse().ok())?
    })
}

#[test]
fn service_traffic_goes_only_to_ready_endpoints_on_the_target_port() {
    let f = fixture();
    let ports = ports(&f);
    let web_http = ports
        .iter()
        .find(|p| p.name == "web" && p.port_name == "http")
        .expect("web:http is proxied");
    assert_eq!(web_http.cluster_ip, Ipv4Addr::new(10, 214, 3, 20));
    assert_eq!(
        web_http.endpoints,
        vec![
            (Ipv4Addr::new(10, 213, 3, 10), 8000),
            (Ipv4Addr::new(10, 213, 3, 11), 8000)
        ],
        "the not-ready endpoint and the other namespace's slice are left out"
    );
    let web_metrics = ports.iter().find(|p| p.port_name == "metrics").unwrap();
    assert_eq!(web_metrics.port, 9090);
    assert!(web_metrics.endpoints.iter().all(|(_, port)| *port == 9100));
    assert!(
        !ports
            .iter()
            .any(|p| p.name == "nodes" || p.name == "payments")
    );
}

#[test]
fn rules_spread_connections_evenly_and_masquerade_hairpin_traffic() {
    let f = fixture();
    let chains = Chains::new(3);
    let text = rules::render(&chains, "10.213.3.0/24", &ports(&f), &[]);
    let web = chains.service(
        ports(&f)
            .iter()
            .find(|p| p.name == "web" && p.port == 80)
            .unwrap(),
    );
    assert!(text.contains(&format!(
        "-A FS3-SERVICES -d 10.214.3.20/32 -p tcp -m tcp --dport 80 -j {web}\n"
    )));
    assert!(text.contains(&format!(
        "-A {web} -m statistic --mode random --probability 0.5000000000 -p tcp -j DNAT --to-destination 10.213.3.10:8000\n"
    )));
    assert!(text.contains(&format!(
        "-A {web} -p tcp -j DNAT --to-destination 10.213.3.11:8000\n"
    )));
    assert!(
        text.contains(
            "-A FS3-POSTROUTING -s 10.213.3.0/24 -m conntrack --ctstate DNAT -j MASQUERADE"
        )
    );
    assert!(
        text.contains("-d 10.214.3.1/32 -p tcp -m tcp --dport 443"),
        "kubernetes.default leads to the API server"
    );
    assert!(text.contains("--to-destination 10.213.3.1:6443"));
    assert!(
        !text.contains("10.214.3.30"),
        "a Service without endpoints gets no rule"
    );
    assert!(text.starts_with("*nat\n") && text.ends_with("COMMIT\n"));
}

#[test]
fn stale_chains_of_this_cluster_go_and_nobody_elses_are_touched() {
    let f = fixture();
    let chains = Chains::new(3);
    let existing: Vec<String> = [
        "FS3-SVC-DEADBEEF",
        "FS30-SVC-DEADBEEF",
        "KUBE-SERVICES",
        "FS3-SERVICES",
    ]
    .map(String::from)
    .into();
    let text = rules::render(&chains, "10.213.3.0/24", &ports(&f), &existing);
    assert!(text.contains("-X FS3-SVC-DEADBEEF\n"));
    assert!(!text.contains("FS30-"));
    assert!(!text.contains("KUBE-"));
    assert!(!text.contains("-X FS3-SERVICES"));
}

#[test]
fn rules_are_accepted_by_iptables_restore() {
    let f = fixture();
    let text = rules::render(&Chains::new(3), "10.213.3.0/24", &ports(&f), &[]);
    let out = std::process::Command::new("iptables-restore")
        .args(["--test", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .expect("iptables-restore runs (scripts/install-deps.sh installs iptables)");
    assert!(
        out.status.success(),
        "iptables-restore --test refused the rules: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn parse_chains_reads_iptables_save() {
    let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:FS3-SVC-0A1B2C3D - [0:0]\n-A PREROUTING -j FS3-SERVICES\nCOMMIT\n";
    assert_eq!(
        rules::parse_chains(save),
        vec!["PREROUTING", "FS3-SVC-0A1B2C3D"]
    );
}

#[test]
fn hosts_resolve_services_headless_services_and_statefulset_pods() {
    let f = fixture();
    let h = hosts_of(&f);
    let web = Some(Ipv4Addr::new(10, 214, 3, 20));
    assert_eq!(resolve(&h, "web.shop.svc.cluster.local"), web);
    assert_eq!(resolve(&h, "web.shop.svc"), web);
    assert_eq!(resolve(&h, "web.shop"), web);
    assert_eq!(
        resolve(&h, "nodes.shop.svc.cluster.local"),
        Some(Ipv4Addr::new(10, 213, 3, 21))
    );
    assert_eq!(
        resolve(&h, "sale-0.nodes.shop.svc.cluster.local"),
        Some(Ipv4Addr::new(10, 213, 3, 21))
    );
    assert_eq!(
        resolve(&h, "sale-1.nodes.shop.svc.cluster.local"),
        Some(Ipv4Addr::new(10, 213, 3, 22)),
        "a pod that is not ready yet still has its own name"
    );
    assert_eq!(
        resolve(&h, "sale-2.nodes.shop.svc.cluster.local"),
        None,
        "failed pods have none"
    );
    assert_eq!(resolve(&h, "payments.shop.svc.cluster.local"), None);
    assert_eq!(
        resolve(&h, "kubernetes.default.svc"),
        Some(Ipv4Addr::new(10, 214, 3, 1))
    );
    assert_eq!(resolve(&h, "localhost"), Some(Ipv4Addr::LOCALHOST));
    assert_eq!(h, hosts_of(&fixture()), "same cluster, same bytes");
}

#[test]
fn hosts_file_is_rewritten_in_place() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hosts");
    apply::write_in_place(&path, &"x".repeat(1000)).unwrap();
    let inode = std::fs::metadata(&path).unwrap().ino();
    apply::write_in_place(&path, "short\n").unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().ino(),
        inode,
        "bind mounts keep seeing it"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "short\n");
}

#[test]
fn api_server_url_parses() {
    assert_eq!(api_server_from_url("https://10.213.3.1:6443"), Some(API));
    assert_eq!(api_server_from_url("https://kubernetes:6443"), None);
}
