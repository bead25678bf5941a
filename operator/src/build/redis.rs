//! The managed Redis (pub/sub only: replication messages, nothing stored, so no volume
//! and no persistence), and the env var that tells the nodes where Redis is, managed or
//! external.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, Service, ServicePort, ServiceSpec, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{BuildConfig, Owner};
use crate::crd::FlashSale;
use crate::labels;

/// The env var the stock node reads for its Redis URL.
pub const REDIS_URL_ENV: &str = "STOCK_NODE_REDIS_URL";

fn selector(sale: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_string(), labels::REDIS_APP.to_string()),
        (labels::INSTANCE.to_string(), sale.to_string()),
    ])
}

pub fn build_redis_deployment(owner: &Owner, sale: &FlashSale, config: &BuildConfig) -> Deployment {
    let image = sale
        .spec
        .redis
        .image
        .clone()
        .unwrap_or_else(|| config.redis_image.clone());
    let pod_labels = labels::component_labels(&owner.name, labels::REDIS_APP);
    let args = [
        "--port",
        "6379",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        // Bounds what a slow subscriber may buffer: past it Redis drops the subscriber,
        // which then catches up from the primary's WAL.
        "--client-output-buffer-limit",
        "pubsub 32mb 8mb 60",
    ];
    Deployment {
        metadata: owner.meta(labels::redis_name(&owner.name), pod_labels.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector(&owner.name)),
                ..LabelSelector::default()
            },
            // One Redis at a time: pub/sub state is per connection anyway.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".to_string()),
                ..DeploymentStrategy::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "redis".to_string(),
                        image: Some(image),
                        args: Some(args.iter().map(|a| a.to_string()).collect()),
                        ports: Some(vec![ContainerPort {
                            name: Some("redis".to_string()),
                            container_port: labels::REDIS_PORT,
                            protocol: Some("TCP".to_string()),
                            ..ContainerPort::default()
                        }]),
                        readiness_probe: Some(Probe {
                            tcp_socket: Some(TCPSocketAction {
                                port: IntOrString::String("redis".to_string()),
                                ..TCPSocketAction::default()
                            }),
                            period_seconds: Some(5),
                            ..Probe::default()
                        }),
                        resources: Some(ResourceRequirements {
                            requests: Some(BTreeMap::from([
                                ("cpu".to_string(), Quantity("50m".to_string())),
                                ("memory".to_string(), Quantity("64Mi".to_string())),
                            ])),
                            limits: Some(BTreeMap::from([(
                                "memory".to_string(),
                                Quantity("256Mi".to_string()),
                            )])),
                            ..ResourceRequirements::default()
                        }),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

pub fn build_redis_service(owner: &Owner) -> Service {
    Service {
        metadata: owner.meta(
            labels::redis_name(&owner.name),
            labels::component_labels(&owner.name, labels::REDIS_APP),
        ),
        spec: Some(ServiceSpec {
            selector: Some(selector(&owner.name)),
            ports: Some(vec![ServicePort {
                name: Some("redis".to_string()),
                port: labels::REDIS_PORT,
                target_port: Some(IntOrString::String("redis".to_string())),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            }]),
            type_: Some("ClusterIP".to_string()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// `STOCK_NODE_REDIS_URL` for the nodes: the managed Redis' Service, or the external URL
/// read from its Secret by the kubelet (the operator never reads that Secret).
pub fn redis_url_env(owner: &Owner, sale: &FlashSale) -> EnvVar {
    match &sale.spec.redis.external_url_secret_ref {
        Some(secret_ref) if !sale.spec.redis.managed => EnvVar {
            name: REDIS_URL_ENV.to_string(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(secret_ref.clone()),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        _ => EnvVar {
            name: REDIS_URL_ENV.to_string(),
            value: Some(format!(
                "redis://{}.{}.svc:{}",
                labels::redis_name(&owner.name),
                owner.namespace,
                labels::REDIS_PORT
            )),
            ..EnvVar::default()
        },
    }
}
