//! The recovery Job of a failover: `stock-node wal ship` run against the old primary's
//! WAL volume, mounted read-only, into the node about to be promoted — for when the old
//! pod cannot be asked (its process is gone, or its node does not answer). The image
//! has no shell: the Job runs the node binary's own subcommand.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::statefulset::{
    ADMIN_MOUNT, ADMIN_VOLUME, DATA_MOUNT, admin_volume, restricted_container, restricted_pod,
};
use super::{BuildConfig, Owner};
use crate::crd::FlashSale;
use crate::labels;

/// The name of the Job of the failover to `epoch` that ships into pod `to`: one per
/// epoch and candidate, so a rerun finds it, and a Job that shipped the tail into
/// another node (a candidate lost and replaced) is never taken for this one's.
/// `<sale>-recover-e<epoch>-<ordinal>`; the whole pod name when it has no ordinal.
pub fn recovery_job_name(sale: &str, epoch: u64, to: &str) -> String {
    let to = to
        .rsplit_once('-')
        .map(|(_, o)| o)
        .filter(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or(to);
    format!("{sale}-recover-e{epoch}-{to}")
}

/// The WAL claim of a node pod (`<claim template>-<pod>`, the StatefulSet's naming).
pub fn wal_claim_name(pod: &str) -> String {
    format!("wal-{pod}")
}

/// Ships `from_pod`'s WAL into pod `to_pod`, the node at `to_url`.
pub fn build_recovery_job(
    owner: &Owner,
    sale: &FlashSale,
    config: &BuildConfig,
    epoch: u64,
    from_pod: &str,
    to_pod: &str,
    to_url: &str,
) -> Job {
    let mut job_labels = labels::component_labels(&owner.name, labels::RECOVERY_APP);
    job_labels.insert(labels::FAILOVER_EPOCH.to_string(), epoch.to_string());
    let image = sale
        .spec
        .nodes
        .image
        .clone()
        .unwrap_or_else(|| config.node_image.clone());
    let args: Vec<String> = [
        "wal",
        "ship",
        &format!("{DATA_MOUNT}/wal"),
        "--to",
        to_url,
        // A primary's log holds its sale's config and role at epoch 1 or later; a volume
        // with none (an empty one in the old one's place) is not the tail, and fails the
        // Job (3). Not the old primary's own epoch: a candidate that died while being
        // promoted (the next failover is from it) may not have logged its epoch.
        "--expect-epoch",
        "1",
        "--admin-token-file",
        &format!("{ADMIN_MOUNT}/{}", labels::ADMIN_TOKEN_KEY),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Job {
        metadata: owner.meta(
            recovery_job_name(&owner.name, epoch, to_pod),
            job_labels.clone(),
        ),
        spec: Some(JobSpec {
            // 3 and 4 (the log unreadable, the node refused) cannot be cured by a rerun.
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![PodFailurePolicyRule {
                    action: "FailJob".to_string(),
                    on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                        operator: "In".to_string(),
                        values: vec![3, 4],
                        container_name: None,
                    }),
                    on_pod_conditions: None,
                }],
            }),
            backoff_limit: Some(3),
            active_deadline_seconds: Some(120),
            ttl_seconds_after_finished: Some(600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(job_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_string()),
                    automount_service_account_token: Some(false),
                    containers: vec![Container {
                        name: "ship".to_string(),
                        image: Some(image),
                        args: Some(args),
                        volume_mounts: Some(vec![
                            VolumeMount {
                                name: "wal".to_string(),
                                mount_path: DATA_MOUNT.to_string(),
                                read_only: Some(true),
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
                    }],
                    security_context: Some(restricted_pod()),
                    volumes: Some(vec![
                        Volume {
                            name: "wal".to_string(),
                            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                                claim_name: wal_claim_name(from_pod),
                                read_only: Some(true),
                            }),
                            ..Volume::default()
                        },
                        admin_volume(&owner.name),
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

/// Labels a recovery Job carries (for tests and `kubectl get jobs -l`).
pub fn recovery_selector(sale: &str) -> BTreeMap<String, String> {
    labels::component_labels(sale, labels::RECOVERY_APP)
}
