//! The stock nodes' StatefulSet: one pod and one WAL volume per node, started in
//! standby (the operator then tells each node its role and config over the admin API).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm,
    PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
    VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{BuildConfig, Owner, redis_url_env};
use crate::crd::{FlashSale, ReclaimPolicy, ReplicationMode};
use crate::labels;

/// Where the WAL volume is mounted; the node keeps its WAL in `wal/` below it.
pub const DATA_MOUNT: &str = "/var/lib/flashsale";
/// Where the admin Secret is mounted; the token is the `token` file.
pub const ADMIN_MOUNT: &str = "/etc/flashsale/admin";
const WAL_VOLUME: &str = "wal";
pub(super) const ADMIN_VOLUME: &str = "admin";
/// Unprivileged user of the distroless image (`nonroot`).
const RUN_AS_USER: i64 = 65532;

/// The container hardening of every pod the operator makes (Pod Security Standards
/// "restricted"): no privilege escalation, a read-only root, no capabilities.
pub(super) fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// The pod side of it: the image's unprivileged user, the runtime's seccomp profile.
pub(super) fn restricted_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        fs_group: Some(RUN_AS_USER),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// The sale's admin Secret as the `admin` volume (the token, readable by the group).
pub(super) fn admin_volume(sale: &str) -> Volume {
    Volume {
        name: ADMIN_VOLUME.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(labels::admin_secret_name(sale)),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The node's command line, fixed by the node's CLI contract.
pub fn node_args() -> Vec<String> {
    std::iter::once("serve")
        .chain(flashsale_core::admin::POD_SERVE_FLAGS.iter().copied())
        .map(str::to_string)
        .collect()
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("250m".to_string())),
            ("memory".to_string(), Quantity("128Mi".to_string())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("512Mi".to_string()),
        )])),
        ..ResourceRequirements::default()
    }
}

fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(labels::NODE_PORT_NAME.to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(1),
        ..Probe::default()
    }
}

/// The node's settings that are not fixed flags, through its `STOCK_NODE_*` env twins.
fn env(owner: &Owner, sale: &FlashSale) -> Vec<EnvVar> {
    let value = |name: &str, value: String| EnvVar {
        name: name.to_string(),
        value: Some(value),
        ..EnvVar::default()
    };
    let mut env = vec![
        // The node's name in replication acks and status: its pod name.
        EnvVar {
            name: "STOCK_NODE_NAME".to_string(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_string(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        redis_url_env(owner, sale),
        // Known before the node has a sale, so pub/sub replication works from the start.
        value(
            "STOCK_NODE_REDIS_CHANNEL",
            flashsale_core::replication::default_channel(&owner.name),
        ),
        value(
            crate::observe::REPLICATION_ENV,
            match sale.spec.replication.mode {
                ReplicationMode::Async => "async",
                ReplicationMode::Quorum => "quorum",
            }
            .to_string(),
        ),
    ];
    if let Some(rate) = sale.spec.admission_rate {
        env.push(value("STOCK_NODE_ADMISSION_RATE_PER_S", rate.to_string()));
    }
    env
}

fn container(owner: &Owner, sale: &FlashSale, config: &BuildConfig) -> Container {
    Container {
        name: labels::NODE_APP.to_string(),
        image: Some(
            sale.spec
                .nodes
                .image
                .clone()
                .unwrap_or_else(|| config.node_image.clone()),
        ),
        args: Some(node_args()),
        ports: Some(vec![ContainerPort {
            name: Some(labels::NODE_PORT_NAME.to_string()),
            container_port: labels::NODE_PORT,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        }]),
        env: Some(env(owner, sale)),
        // Ready = has a role and a config (a primary: and its lease). Probed every second,
        // so the Services follow a failover within about a second.
        readiness_probe: Some(http_probe("/readyz", 1, 2)),
        // Generous: WAL replay after a crash must not be mistaken for a hang.
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        resources: Some(
            sale.spec
                .nodes
                .resources
                .clone()
                .unwrap_or_else(default_resources),
        ),
        volume_mounts: Some(vec![
            VolumeMount {
                name: WAL_VOLUME.to_string(),
                mount_path: DATA_MOUNT.to_string(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: ADMIN_VOLUME.to_string(),
                mount_path: ADMIN_MOUNT.to_string(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        security_context: Some(restricted_container()),
        ..Container::default()
    }
}

fn wal_claim(sale: &FlashSale) -> PersistentVolumeClaim {
    let storage = &sale.spec.nodes.storage;
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(WAL_VOLUME.to_string()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    storage.size.clone(),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

fn anti_affinity(sale_name: &str) -> Affinity {
    Affinity {
        // Preferred, not required: a one-machine cluster must still run a sale.
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(labels::node_selector(sale_name)),
                            ..LabelSelector::default()
                        }),
                        topology_key: "kubernetes.io/hostname".to_string(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

/// The StatefulSet of `replicas` nodes (the spec's, or more while a scale-down waits
/// for the primary to move off the highest ordinals: see [`super::desired`]).
pub fn build_statefulset(
    owner: &Owner,
    sale: &FlashSale,
    config: &BuildConfig,
    replicas: i32,
) -> StatefulSet {
    let mut pod_labels = labels::component_labels(&owner.name, labels::NODE_APP);
    pod_labels.extend(labels::node_selector(&owner.name));
    let when_deleted = match sale.spec.nodes.storage.reclaim_policy {
        ReclaimPolicy::Retain => "Retain",
        ReclaimPolicy::Delete => "Delete",
    };
    StatefulSet {
        metadata: owner.meta(
            labels::statefulset_name(&owner.name),
            labels::component_labels(&owner.name, labels::NODE_APP),
        ),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(labels::headless_service_name(&owner.name)),
            // Nodes start in standby and wait for the operator: no reason to start them one by one.
            pod_management_policy: Some("Parallel".to_string()),
            // A changed template replaces no pod by itself: the operator replaces them,
            // the primary last and only after a switchover (`crate::rollout`). The
            // StatefulSet controller's rolling update would delete the primary's pod
            // like any other, a failover that waits out its lease.
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".to_string()),
                rolling_update: None,
            }),
            selector: LabelSelector {
                match_labels: Some(labels::node_selector(&owner.name)),
                ..LabelSelector::default()
            },
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(when_deleted.to_string()),
                    // A removed secondary's WAL is kept: a scale-up reuses it and catches up.
                    when_scaled: Some("Retain".to_string()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container(owner, sale, config)],
                    affinity: Some(anti_affinity(&owner.name)),
                    // SIGTERM drains in-flight purchases and syncs the WAL before exit.
                    termination_grace_period_seconds: Some(30),
                    automount_service_account_token: Some(false),
                    security_context: Some(restricted_pod()),
                    volumes: Some(vec![admin_volume(&owner.name)]),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![wal_claim(sale)]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}
