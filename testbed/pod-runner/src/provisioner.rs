//! Local volume provisioner for StorageClass `fs-local`: a pending claim of the class
//! gets a hostPath PV backed by `$STATE/pv/<pv-name>`, pre-bound through `claimRef`
//! (the controller manager's PV controller completes the binding); a Released PV of
//! ours with reclaim policy Delete loses its directory and is deleted.
//!
//! Binding mode Immediate: the PV exists before the scheduler looks at the pod, and
//! a hostPath PV has no node affinity, so the scheduler's VolumeBinding plugin
//! accepts it at once (WaitForFirstConsumer would need the selected-node handshake).

use std::path::Path;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::node::FIELD_MANAGER;
use crate::state::StateDir;

pub const STORAGE_CLASS: &str = "fs-local";
pub const PROVISIONER: &str = "flashsale.dev/pod-runner";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("watch: {0}")]
    Watch(#[from] watcher::Error),
    #[error("volume directory {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub async fn ensure_storage_class(client: &kube::Client) -> Result<(), ProvisionError> {
    let api: Api<StorageClass> = Api::all(client.clone());
    let sc = json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    });
    api.patch(
        STORAGE_CLASS,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(sc),
    )
    .await?;
    Ok(())
}

/// The PV for a pending claim of our class, or None when the claim is not ours to serve.
pub fn pv_for_claim(pvc: &PersistentVolumeClaim, pv_root: &Path) -> Option<PersistentVolume> {
    let spec = pvc.spec.as_ref()?;
    if spec.storage_class_name.as_deref() != Some(STORAGE_CLASS) || spec.volume_name.is_some() {
        return None;
    }
    let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref());
    if !matches!(phase, None | Some("Pending")) || pvc.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let uid = pvc.metadata.uid.as_deref()?;
    let name = format!("pvc-{uid}");
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| "1Gi".into());
    let modes = spec
        .access_modes
        .clone()
        .unwrap_or_else(|| vec!["ReadWriteOnce".into()]);
    let v = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "annotations": {PROVISIONED_BY: PROVISIONER}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": modes,
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "volumeMode": spec.volume_mode.clone().unwrap_or_else(|| "Filesystem".into()),
            "hostPath": {"path": pv_root.join(&name).display().to_string(), "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": pvc.namespace(), "name": pvc.name_any(), "uid": uid,
            },
        },
    });
    serde_json::from_value(v).ok()
}

fn ours_and_released(pv: &PersistentVolume) -> bool {
    pv.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER)
        && pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released")
        && pv
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
            == Some("Delete")
}

async fn provision(
    api: &Api<PersistentVolume>,
    pvc: &PersistentVolumeClaim,
    state: &StateDir,
) -> Result<(), ProvisionError> {
    let Some(pv) = pv_for_claim(pvc, &state.pv_root()) else {
        return Ok(());
    };
    let dir = state.pv_root().join(pv.name_any());
    std::fs::create_dir_all(&dir).map_err(|source| ProvisionError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    match api.create(&PostParams::default(), &pv).await {
        Ok(_) => {
            tracing::info!(pv = %pv.name_any(), claim = %format!("{}/{}", pvc.namespace().unwrap_or_default(), pvc.name_any()), "provisioned");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn reclaim(
    api: &Api<PersistentVolume>,
    pv: &PersistentVolume,
    state: &StateDir,
) -> Result<(), ProvisionError> {
    if !ours_and_released(pv) {
        return Ok(());
    }
    let dir = state.pv_root().join(pv.name_any());
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ProvisionError::Io {
                path: dir.display().to_string(),
                source,
            });
        }
    }
    match api.delete(&pv.name_any(), &DeleteParams::default()).await {
        Ok(_) => {
            tracing::info!(pv = %pv.name_any(), "released volume deleted");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Runs both watches forever; a failed step is logged and retried on the next event
/// (the watcher re-lists periodically, so nothing pending is forgotten).
pub async fn run(client: kube::Client, state: StateDir) -> Result<(), ProvisionError> {
    ensure_storage_class(&client).await?;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let claims = {
        let pvs = pvs.clone();
        let state = state.clone();
        watcher(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .applied_objects()
        .try_for_each(move |pvc| {
            let pvs = pvs.clone();
            let state = state.clone();
            async move {
                if let Err(e) = provision(&pvs, &pvc, &state).await {
                    tracing::warn!(error = %e, claim = %pvc.name_any(), "provisioning");
                }
                Ok(())
            }
        })
    };
    let released = watcher(pvs.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .try_for_each(|pv| {
            let pvs = pvs.clone();
            let state = state.clone();
            async move {
                if let Err(e) = reclaim(&pvs, &pv, &state).await {
                    tracing::warn!(error = %e, pv = %pv.name_any(), "reclaiming");
                }
                Ok(())
            }
        });
    let (a, b) = futures::future::join(claims, released).await;
    a?;
    b?;
    Ok(())
}

/// Where a bound claim's data lives on this machine.
pub async fn claim_path(
    client: &kube::Client,
    ns: &str,
    claim: &str,
) -> Result<Option<String>, kube::Error> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get(claim)
        .await?;
    let Some(pv_name) = pvc.spec.and_then(|s| s.volume_name) else {
        return Ok(None);
    };
    if pvc.status.and_then(|s| s.phase).as_deref() != Some("Bound") {
        return Ok(None);
    }
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&pv_name)
        .await?;
    let spec = pv.spec.unwrap_or_default();
    Ok(spec
        .host_path
        .map(|h| h.path)
        .or_else(|| spec.local.map(|l| l.path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(yaml: &str) -> PersistentVolumeClaim {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const PENDING: &str = r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: wal-node-0, namespace: shop, uid: 1234-abcd}
spec:
  storageClassName: fs-local
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 2Gi}}
status: {phase: Pending}
"#;

    #[test]
    fn pending_claim_of_our_class_gets_a_prebound_local_pv() {
        let pv = pv_for_claim(&claim(PENDING), Path::new("/s/pv")).unwrap();
        assert_eq!(pv.name_any(), "pvc-1234-abcd");
        let spec = pv.spec.unwrap();
        let cref = spec.claim_ref.unwrap();
        assert_eq!(
            (
                cref.namespace.as_deref(),
                cref.name.as_deref(),
                cref.uid.as_deref()
            ),
            (Some("shop"), Some("wal-node-0"), Some("1234-abcd"))
        );
        assert_eq!(spec.host_path.unwrap().path, "/s/pv/pvc-1234-abcd");
        assert_eq!(spec.capacity.unwrap()["storage"].0, "2Gi");
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Delete")
        );
    }

    #[test]
    fn other_classes_and_bound_claims_are_left_alone() {
        let other = PENDING.replace("fs-local", "gp3");
        assert!(pv_for_claim(&claim(&other), Path::new("/s")).is_none());
        let bound = PENDING.replace("phase: Pending", "phase: Bound");
        assert!(pv_for_claim(&claim(&bound), Path::new("/s")).is_none());
    }
}
