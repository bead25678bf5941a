//! Apply: server-side apply of what `build` produced (one field manager, forced, so the
//! operator owns its fields), creation of the admin Secret once, deletion of what the
//! sale no longer wants, and the pod label/annotation patches that record roles.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::{self, BuildConfig, Owner};
use crate::crd::FlashSale;
use crate::labels;

/// Length of the admin token in random bytes (hex-encoded: twice as many characters).
const ADMIN_TOKEN_BYTES: usize = 32;

/// What an apply pass changed that a person would want to hear about.
#[derive(Debug, Default)]
pub struct Applied {
    pub statefulset_created: bool,
    pub secret_created: bool,
    pub redis_removed: bool,
}

async fn ssa<K>(api: &Api<K>, obj: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let params = PatchParams::apply(labels::FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(obj)).await
}

async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// A fresh random admin token.
pub fn new_admin_token() -> String {
    let bytes: [u8; ADMIN_TOKEN_BYTES] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Applies every object the sale should own, in dependency order.
pub async fn apply_all(
    client: &kube::Client,
    owner: &Owner,
    sale: &FlashSale,
    config: &BuildConfig,
    have_secret: bool,
    have_statefulset: bool,
    have_redis: bool,
) -> Result<Applied, kube::Error> {
    let ns = owner.namespace.as_str();
    let mut applied = Applied::default();

    if !have_secret {
        // Created once and never applied again: reconcile must not rotate the token.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        let secret = build::build_admin_secret(owner, &new_admin_token());
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => applied.secret_created = true,
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }

    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    for svc in [
        build::build_headless_service(owner),
        build::build_client_service(owner),
        build::build_primary_service(owner),
    ] {
        ssa(&services, &svc).await?;
    }

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let redis_name = labels::redis_name(&owner.name);
    if sale.spec.redis.managed {
        ssa(
            &deployments,
            &build::build_redis_deployment(owner, sale, config),
        )
        .await?;
        ssa(&services, &build::build_redis_service(owner)).await?;
    } else if have_redis {
        // Switched to an external Redis: the managed one goes.
        delete_if_present(&deployments, &redis_name).await?;
        delete_if_present(&services, &redis_name).await?;
        applied.redis_removed = true;
    }

    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    ssa(&pdbs, &build::build_pdb(owner)).await?;

    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    ssa(
        &statefulsets,
        &build::build_statefulset(owner, sale, config),
    )
    .await?;
    applied.statefulset_created = !have_statefulset;
    Ok(applied)
}

/// Records on a pod what its node accepted: the role label and/or annotations.
pub async fn patch_pod(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    role_label: Option<&str>,
    annotations: &[(&str, &str)],
) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut meta = serde_json::Map::new();
    if let Some(role) = role_label {
        meta.insert("labels".into(), serde_json::json!({ labels::ROLE: role }));
    }
    if !annotations.is_empty() {
        let map: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        meta.insert("annotations".into(), map.into());
    }
    let patch = serde_json::json!({ "metadata": meta });
    pods.patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Teardown on delete: removes the StatefulSet first so the nodes stop (SIGTERM, final
/// WAL sync) while their Secret and Services still exist; returns the pods still left.
pub async fn stop_nodes(client: &kube::Client, sale: &FlashSale) -> Result<usize, kube::Error> {
    let ns = sale.namespace().unwrap_or_default();
    let name = sale.name_any();
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    delete_if_present(&statefulsets, &labels::statefulset_name(&name)).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let selector = labels::selector_string(&labels::node_selector(&name));
    let left = pods
        .list(&kube::api::ListParams::default().labels(&selector))
        .await?;
    Ok(left.items.len())
}
