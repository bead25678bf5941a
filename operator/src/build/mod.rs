//! Build: the objects a sale should own, as pure functions of the FlashSale and the
//! operator's settings (no client, no clock), each unit tested from YAML fixtures.

mod pdb;
mod recovery;
mod redis;
mod secret;
mod services;
mod statefulset;

pub use pdb::build_pdb;
pub use recovery::{build_recovery_job, recovery_job_name, recovery_selector, wal_claim_name};
pub use redis::{build_redis_deployment, build_redis_service, redis_url_env};
pub use secret::build_admin_secret;
pub use services::{build_client_service, build_headless_service, build_primary_service};
pub use statefulset::build_statefulset;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::FlashSale;

/// Images the operator falls back to when the spec names none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildConfig {
    pub node_image: String,
    pub redis_image: String,
}

impl Default for BuildConfig {
    fn default() -> Self {
        Self {
            node_image: format!("flashsale/stock-node:{}", env!("CARGO_PKG_VERSION")),
            redis_image: "redis:7.2".to_string(),
        }
    }
}

/// A FlashSale that lacks what every owned object needs.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the FlashSale has no {0} yet (not read from the API server?)")]
    MissingMetadata(&'static str),
}

/// What every owned object takes from its sale: name, namespace, controller reference.
#[derive(Clone, Debug)]
pub struct Owner {
    pub name: String,
    pub namespace: String,
    pub owner_ref: OwnerReference,
}

impl Owner {
    pub fn of(sale: &FlashSale) -> Result<Self, BuildError> {
        let namespace = sale
            .namespace()
            .ok_or(BuildError::MissingMetadata("namespace"))?;
        let owner_ref = sale
            .controller_owner_ref(&())
            .ok_or(BuildError::MissingMetadata("uid"))?;
        Ok(Self {
            name: sale.name_any(),
            namespace,
            owner_ref,
        })
    }

    /// Metadata of an owned object: its name, the sale's namespace, labels, controller ref.
    pub fn meta(
        &self,
        name: String,
        labels: std::collections::BTreeMap<String, String>,
    ) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.owner_ref.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// What of the sale's objects exists already (read from the controller's caches).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Existing {
    pub admin_secret: bool,
    pub statefulset: bool,
    pub redis: bool,
    /// The StatefulSet has another update strategy than `OnDelete` (made by an operator
    /// before the pod template rollout): an apply cannot change it alone, as the API
    /// server keeps the `rollingUpdate` it defaulted, which `OnDelete` refuses.
    pub statefulset_rolling_update: bool,
}

/// The managed Redis: run it, take it away (the sale switched to an external one), or
/// leave things as they are.
#[derive(Clone, Debug, PartialEq)]
pub enum RedisObjects {
    Managed(Box<(Deployment, Service)>),
    /// Delete the Deployment and Service of this name.
    Remove {
        name: String,
    },
    Absent,
}

/// Everything a sale should own, as one value: `apply` makes it so, whole.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// The admin Secret, only when it does not exist yet: it is created once and never
    /// applied again (a reconcile must not rotate the token).
    pub admin_secret: Option<Secret>,
    /// Headless, client and primary Services.
    pub services: Vec<Service>,
    pub redis: RedisObjects,
    pub pdb: PodDisruptionBudget,
    pub statefulset: StatefulSet,
}

/// The whole desired state of a sale. Pure: `fresh_token` is drawn by the caller and
/// used only if the admin Secret does not exist yet. `primary_ordinal`: the highest
/// ordinal to keep, the primary's pod's (and a failover's candidate's:
/// `Observed::floor_ordinal`) — the StatefulSet never shrinks below it (a StatefulSet
/// removes the highest ordinals; a scale-down that would remove the primary switches
/// over first).
pub fn desired(
    owner: &Owner,
    sale: &FlashSale,
    config: &BuildConfig,
    existing: &Existing,
    fresh_token: &str,
    primary_ordinal: Option<u32>,
) -> Desired {
    let replicas = sale
        .spec
        .nodes
        .replicas
        .max(primary_ordinal.map_or(0, |o| o as i32 + 1));
    let redis = if sale.spec.redis.managed {
        RedisObjects::Managed(Box::new((
            build_redis_deployment(owner, sale, config),
            build_redis_service(owner),
        )))
    } else if existing.redis {
        RedisObjects::Remove {
            name: crate::labels::redis_name(&owner.name),
        }
    } else {
        RedisObjects::Absent
    };
    Desired {
        admin_secret: (!existing.admin_secret).then(|| build_admin_secret(owner, fresh_token)),
        services: vec![
            build_headless_service(owner),
            build_client_service(owner),
            build_primary_service(owner),
        ],
        redis,
        pdb: build_pdb(owner),
        statefulset: build_statefulset(owner, sale, config, replicas),
    }
}
