//! What the Services and EndpointSlices say, reduced to plain values: each service
//! port with its ClusterIP and the ready endpoints behind it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label the EndpointSlice controller puts on every slice of a Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One port of one Service with a ClusterIP, and where its traffic may go.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    /// The port's name; "" for the unnamed single port.
    pub port_name: String,
    /// `tcp` or `udp`, as iptables spells it.
    pub protocol: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// Ready endpoints, sorted and without duplicates.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// A synthetic endpoint for `default/kubernetes`: with `--endpoint-reconciler-type=none`
/// nothing publishes the API server behind it, but in-cluster clients may dial it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiServer {
    pub ip: Ipv4Addr,
    pub port: u16,
}

pub fn cluster_ip(service: &Service) -> Option<Ipv4Addr> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.cluster_ip.as_deref()?.parse().ok()
}

pub fn is_headless(service: &Service) -> bool {
    let spec = service.spec.as_ref();
    spec.and_then(|s| s.cluster_ip.as_deref()) == Some("None")
        && spec.and_then(|s| s.type_.as_deref()) != Some("ExternalName")
}

/// The slices that belong to a Service (same namespace, service-name label).
pub fn slices_of<'a>(
    service: &'a Service,
    slices: &'a [&'a EndpointSlice],
) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
    let ns = service.metadata.namespace.as_deref();
    let name = service.metadata.name.as_deref();
    slices.iter().copied().filter(move |s| {
        s.metadata.namespace.as_deref() == ns
            && s.address_type == "IPv4"
            && s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .map(String::as_str)
                == name
    })
}

/// Ready endpoint addresses of a slice, with the hostname the controller gave them.
/// `ready` unset means ready (the API's own convention).
pub fn ready_addresses(slice: &EndpointSlice) -> impl Iterator<Item = (Ipv4Addr, Option<&str>)> {
    slice
        .endpoints
        .iter()
        .flatten()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| {
            e.addresses
                .iter()
                .filter_map(move |a| Some((a.parse().ok()?, e.hostname.as_deref())))
        })
}

fn protocol(p: Option<&str>) -> Option<String> {
    match p.unwrap_or("TCP") {
        "TCP" => Some("tcp".into()),
        "UDP" => Some("udp".into()),
        _ => None, // SCTP: not needed by anything here
    }
}

/// Every proxied service port, in a stable order.
pub fn service_ports(
    services: &[&Service],
    slices: &[&EndpointSlice],
    api_server: Option<ApiServer>,
) -> Vec<ServicePort> {
    let mut out = Vec::new();
    for svc in services {
        let Some(ip) = cluster_ip(svc) else { continue };
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let mine: Vec<&EndpointSlice> = slices_of(svc, slices).collect();
        for sp in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
            let Some(proto) = protocol(sp.protocol.as_deref()) else {
                continue;
            };
            let Ok(port) = u16::try_from(sp.port) else {
                continue;
            };
            let port_name = sp.name.clone().unwrap_or_default();
            let mut endpoints = BTreeSet::new();
            for slice in &mine {
                let target = slice.ports.iter().flatten().find(|p| {
                    p.name.clone().unwrap_or_default() == port_name
                        && protocol(p.protocol.as_deref()).as_deref() == Some(proto.as_str())
                });
                let Some(target) = target
                    .and_then(|p| p.port)
                    .and_then(|p| u16::try_from(p).ok())
                else {
                    continue;
                };
                endpoints.extend(ready_addresses(slice).map(|(a, _)| (a, target)));
            }
            if let Some(api) = api_server
                && endpoints.is_empty()
                && ns == "default"
                && name == "kubernetes"
                && proto == "tcp"
            {
                endpoints.insert((api.ip, api.port));
            }
            out.push(ServicePort {
                namespace: ns.clone(),
                name: name.clone(),
                port_name,
                protocol: proto,
                cluster_ip: ip,
                port,
                endpoints: endpoints.into_iter().collect(),
            });
        }
    }
    out.sort();
    out
}
