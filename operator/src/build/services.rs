//! The three Services of a sale: headless (stable pod DNS, not-ready pods included, for
//! the nodes among themselves), client (every ready node: the sale's front door — a
//! secondary forwards what its copy cannot answer to the primary), primary (only the pod
//! labelled `flashsale.dev/role=primary`: the shortest path to the primary).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Owner;
use crate::labels;

fn http_port() -> ServicePort {
    ServicePort {
        name: Some(labels::NODE_PORT_NAME.to_string()),
        port: labels::NODE_PORT,
        target_port: Some(IntOrString::String(labels::NODE_PORT_NAME.to_string())),
        protocol: Some("TCP".to_string()),
        ..ServicePort::default()
    }
}

fn service(
    owner: &Owner,
    name: String,
    selector: BTreeMap<String, String>,
    headless: bool,
) -> Service {
    Service {
        metadata: owner.meta(
            name,
            labels::component_labels(&owner.name, labels::NODE_APP),
        ),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![http_port()]),
            cluster_ip: headless.then(|| "None".to_string()),
            // The nodes find each other before they are ready (a secondary catching up).
            publish_not_ready_addresses: headless.then_some(true),
            type_: Some("ClusterIP".to_string()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

pub fn build_headless_service(owner: &Owner) -> Service {
    service(
        owner,
        labels::headless_service_name(&owner.name),
        labels::node_selector(&owner.name),
        true,
    )
}

pub fn build_client_service(owner: &Owner) -> Service {
    service(
        owner,
        labels::client_service_name(&owner.name),
        labels::node_selector(&owner.name),
        false,
    )
}

pub fn build_primary_service(owner: &Owner) -> Service {
    service(
        owner,
        labels::primary_service_name(&owner.name),
        labels::primary_selector(&owner.name),
        false,
    )
}
