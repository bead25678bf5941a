//! Build: the objects a sale should own, as pure functions of the FlashSale and the
//! operator's settings (no client, no clock), each unit tested from YAML fixtures.

mod pdb;
mod redis;
mod secret;
mod services;
mod statefulset;

pub use pdb::build_pdb;
pub use redis::{build_redis_deployment, build_redis_service, redis_url_env};
pub use secret::build_admin_secret;
pub use services::{build_client_service, build_headless_service, build_primary_service};
pub use statefulset::build_statefulset;

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
