//! Apply: server-side apply of what `build` produced (one field manager, forced, so the
//! operator owns its fields), creation of the admin Secret once, deletion of what the
//! sale no longer wants, and the pod label/annotation patches that record roles.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::{Desired, Existing, RedisObjects};
use crate::labels;

/// Length of the admin token in random bytes (hex-encoded: twice as many characters).
const ADMIN_TOKEN_BYTES: usize = 32;

/// What an apply pass changed that a person would want to hear about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub statefulset_created: bool,
    /// The admin token, when this pass created the Secret (the caches do not have it yet).
    pub secret_created: Option<String>,
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

/// Makes the desired state so, whole, in dependency order: the Secret (created once),
/// the Services, Redis (applied or removed), the PodDisruptionBudget, the StatefulSet.
pub async fn apply(
    client: &kube::Client,
    namespace: &str,
    desired: &Desired,
    existing: &Existing,
) -> Result<Applied, kube::Error> {
    let mut applied = Applied::default();
    if let Some(secret) = &desired.admin_secret {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        match secrets.create(&PostParams::default(), secret).await {
            Ok(_) => {
                applied.secret_created = secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(labels::ADMIN_TOKEN_KEY))
                    .and_then(|t| String::from_utf8(t.0.clone()).ok());
            }
            // Created by an earlier pass that the cache has not seen yet.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    for svc in &desired.services {
        ssa(&services, svc).await?;
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    match &desired.redis {
        RedisObjects::Managed(objects) => {
            let (deployment, service) = &**objects;
            ssa(&deployments, deployment).await?;
            ssa(&services, service).await?;
        }
        RedisObjects::Remove { name } => {
            delete_if_present(&deployments, name).await?;
            delete_if_present(&services, name).await?;
            applied.redis_removed = true;
        }
        RedisObjects::Absent => {}
    }
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), namespace);
    ssa(&pdbs, &desired.pdb).await?;
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    if existing.statefulset_rolling_update {
        // Made by an operator before `OnDelete`: the API server defaulted
        // `rollingUpdate`, which no manager owns, so an apply of `OnDelete` would be
        // refused ("only allowed for updateStrategy 'RollingUpdate'"). Replaced whole.
        let name = desired
            .statefulset
            .metadata
            .name
            .clone()
            .unwrap_or_default();
        let patch = serde_json::json!({
            "spec": { "updateStrategy": { "type": "OnDelete", "rollingUpdate": null } }
        });
        statefulsets
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    ssa(&statefulsets, &desired.statefulset).await?;
    applied.statefulset_created = !existing.statefulset;
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

/// Deletes a node pod, only if it is still the pod of `uid` (a pod made again under
/// the same name is another pod). `Ok(false)`: gone already, or another pod now.
pub async fn delete_pod(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    uid: &str,
) -> Result<bool, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match pods.delete(pod, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Teardown on delete: removes the StatefulSet first so the nodes stop (SIGTERM, final
/// WAL sync) while their Secret and Services still exist.
pub async fn delete_statefulset(
    client: &kube::Client,
    namespace: &str,
    sale: &str,
) -> Result<(), kube::Error> {
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    delete_if_present(&statefulsets, &labels::statefulset_name(sale)).await?;
    Ok(())
}

/// Takes the role label off a pod (the primary Service stops selecting it at once).
pub async fn unlabel_pod(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({ "metadata": { "labels": { labels::ROLE: null } } });
    pods.patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Creates the recovery Job (once: an existing one of the same name is kept).
pub async fn create_job(
    client: &kube::Client,
    namespace: &str,
    job: &k8s_openapi::api::batch::v1::Job,
) -> Result<(), kube::Error> {
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), namespace);
    match jobs.create(&PostParams::default(), job).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes a Job and, in the background, its pods (gone already: fine).
pub async fn delete_job(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<(), kube::Error> {
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), namespace);
    delete_if_present(&jobs, name).await.map(|_| ())
}

/// Removes an annotation from the sale (a switchover request, once handled).
pub async fn remove_sale_annotation(
    client: &kube::Client,
    namespace: &str,
    sale: &str,
    key: &str,
) -> Result<(), kube::Error> {
    let api: Api<crate::crd::FlashSale> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({ "metadata": { "annotations": { key: null } } });
    api.patch(sale, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}
