//! Pod volumes as directories under the state dir (emptyDir, configMap, secret,
//! downwardAPI, projected — which includes the service account token, `ca.crt` and
//! `namespace` of the admission plugin's `kube-api-access-*` volume), and the bind
//! mounts that put them at each volumeMount's path inside the container.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod, Volume};

use super::env::{PodFacts, field_value, resource_value};
use super::sources::Sources;
use crate::expand::Env;
use crate::shim::MountSpec;

/// The kubelet's default file mode for configMap/secret/projected volumes.
const DEFAULT_MODE: i32 = 0o644;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VolumeError {
    #[error("{kind} {name:?} not found (volume {volume:?})")]
    Missing {
        kind: &'static str,
        name: String,
        volume: String,
    },
    #[error("key {key:?} not in {kind} {name:?}")]
    MissingKey {
        kind: &'static str,
        name: String,
        key: String,
    },
    #[error("volume {0:?} is not declared by the pod")]
    Undeclared(String),
    #[error("volume {volume:?}: {what} is not supported by the pod runner")]
    Unsupported { volume: String, what: String },
    #[error("path {0:?} escapes its volume")]
    BadPath(String),
    #[error("claim {0:?} is not bound yet")]
    ClaimUnbound(String),
    #[error("{what}: {msg}")]
    Io { what: String, msg: String },
    #[error(transparent)]
    Env(#[from] super::env::EnvError),
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileOut {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: i32,
}

/// A relative path that stays inside its volume.
fn safe_rel(p: &str) -> Result<String, VolumeError> {
    let ok = !p.is_empty()
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(p.to_string())
    } else {
        Err(VolumeError::BadPath(p.to_string()))
    }
}

#[allow(clippy::too_many_arguments)]
fn keyed_files(
    kind: &'static str,
    name: &str,
    volume: &str,
    data: Option<&Option<BTreeMap<String, Vec<u8>>>>,
    items: Option<&Vec<KeyToPath>>,
    optional: bool,
    mode: i32,
    out: &mut Vec<FileOut>,
) -> Result<(), VolumeError> {
    let data = match data {
        Some(Some(d)) => d,
        _ if optional => return Ok(()),
        _ => {
            return Err(VolumeError::Missing {
                kind,
                name: name.to_string(),
                volume: volume.to_string(),
            });
        }
    };
    match items {
        None => {
            for (k, v) in data {
                out.push(FileOut {
                    path: safe_rel(k)?,
                    data: v.clone(),
                    mode,
                });
            }
        }
        Some(items) => {
            for it in items {
                match data.get(&it.key) {
                    Some(v) => out.push(FileOut {
                        path: safe_rel(&it.path)?,
                        data: v.clone(),
                        mode: it.mode.unwrap_or(mode),
                    }),
                    None if optional => {}
                    None => {
                        return Err(VolumeError::MissingKey {
                            kind,
                            name: name.to_string(),
                            key: it.key.clone(),
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

fn downward_files(
    pod: &Pod,
    facts: &PodFacts,
    items: &[k8s_openapi::api::core::v1::DownwardAPIVolumeFile],
    mode: i32,
    out: &mut Vec<FileOut>,
) -> Result<(), VolumeError> {
    let containers = &pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    for it in items {
        let value = if let Some(f) = &it.field_ref {
            field_value(pod, facts, f)?
        } else if let Some(r) = &it.resource_field_ref {
            let c = containers
                .iter()
                .find(|c| Some(&c.name) == r.container_name.as_ref())
                .or(containers.first())
                .cloned()
                .unwrap_or_default();
            resource_value(&c, facts, r)?
        } else {
            continue;
        };
        out.push(FileOut {
            path: safe_rel(&it.path)?,
            data: value.into_bytes(),
            mode: it.mode.unwrap_or(mode),
        });
    }
    Ok(())
}

/// The files of a content volume, or None for volumes that are not rendered
/// (emptyDir, PVC, hostPath).
pub fn render(
    pod: &Pod,
    v: &Volume,
    sources: &Sources,
    facts: &PodFacts,
) -> Option<Result<Vec<FileOut>, VolumeError>> {
    let mut out = Vec::new();
    let r = if let Some(cm) = &v.config_map {
        keyed_files(
            "ConfigMap",
            &cm.name,
            &v.name,
            sources.config_maps.get(&cm.name),
            cm.items.as_ref(),
            cm.optional.unwrap_or(false),
            cm.default_mode.unwrap_or(DEFAULT_MODE),
            &mut out,
        )
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        keyed_files(
            "Secret",
            &name,
            &v.name,
            sources.secrets.get(&name),
            s.items.as_ref(),
            s.optional.unwrap_or(false),
            s.default_mode.unwrap_or(DEFAULT_MODE),
            &mut out,
        )
    } else if let Some(d) = &v.downward_api {
        downward_files(
            pod,
            facts,
            d.items.as_deref().unwrap_or_default(),
            d.default_mode.unwrap_or(DEFAULT_MODE),
            &mut out,
        )
    } else if let Some(p) = &v.projected {
        let mode = p.default_mode.unwrap_or(DEFAULT_MODE);
        (|| {
            for src in p.sources.iter().flatten() {
                if let Some(cm) = &src.config_map {
                    keyed_files(
                        "ConfigMap",
                        &cm.name,
                        &v.name,
                        sources.config_maps.get(&cm.name),
                        cm.items.as_ref(),
                        cm.optional.unwrap_or(false),
                        mode,
                        &mut out,
                    )?;
                }
                if let Some(s) = &src.secret {
                    keyed_files(
                        "Secret",
                        &s.name,
                        &v.name,
                        sources.secrets.get(&s.name),
                        s.items.as_ref(),
                        s.optional.unwrap_or(false),
                        mode,
                        &mut out,
                    )?;
                }
                if let Some(d) = &src.downward_api {
                    downward_files(
                        pod,
                        facts,
                        d.items.as_deref().unwrap_or_default(),
                        mode,
                        &mut out,
                    )?;
                }
                if let Some(t) = &src.service_account_token {
                    let aud = t.audience.clone().unwrap_or_default();
                    let token = sources.tokens.get(&aud).cloned().unwrap_or_default();
                    out.push(FileOut {
                        path: safe_rel(&t.path)?,
                        data: token.into_bytes(),
                        mode,
                    });
                }
            }
            Ok(())
        })()
    } else {
        return None;
    };
    Some(r.map(|_| out))
}

/// Writes `files` into `dir`, replacing changed files atomically (rename), so a
/// bind-mounted directory shows the new content. Returns whether anything changed.
pub fn write_files(dir: &Path, files: &[FileOut]) -> Result<bool, VolumeError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what: String| {
        move |e: std::io::Error| VolumeError::Io {
            what,
            msg: e.to_string(),
        }
    };
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    let mut changed = false;
    for f in files {
        let target = dir.join(&f.path);
        if std::fs::read(&target).ok().as_deref() == Some(f.data.as_slice()) {
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
        }
        let tmp = target.with_file_name(format!(
            ".{}.tmp",
            target
                .file_name()
                .map(|s| s.to_string_lossy())
                .unwrap_or_default()
        ));
        std::fs::write(&tmp, &f.data).map_err(io(format!("write {}", tmp.display())))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(f.mode as u32 & 0o777))
            .map_err(io(format!("chmod {}", tmp.display())))?;
        std::fs::rename(&tmp, &target).map_err(io(format!("rename to {}", target.display())))?;
        changed = true;
    }
    Ok(changed)
}

/// Bind mounts for one container: each volumeMount (subPath/subPathExpr,
/// readOnly) from `volume_dirs`, plus the shared hosts file as /etc/hosts.
pub fn mounts_for(
    c: &Container,
    volume_dirs: &HashMap<String, (PathBuf, bool)>,
    hosts_file: &Path,
    resolv_conf: &Path,
    env: &Env,
) -> Result<Vec<MountSpec>, VolumeError> {
    let mut out = vec![
        MountSpec {
            source: hosts_file.to_path_buf(),
            target: PathBuf::from("/etc/hosts"),
            read_only: true,
        },
        MountSpec {
            source: resolv_conf.to_path_buf(),
            target: PathBuf::from("/etc/resolv.conf"),
            read_only: true,
        },
    ];
    for vm in c.volume_mounts.iter().flatten() {
        let (dir, volume_ro) = volume_dirs
            .get(&vm.name)
            .ok_or_else(|| VolumeError::Undeclared(vm.name.clone()))?;
        let sub = match (&vm.sub_path, &vm.sub_path_expr) {
            (Some(s), _) if !s.is_empty() => Some(s.clone()),
            (_, Some(e)) if !e.is_empty() => Some(env.expand(e)),
            _ => None,
        };
        let source = match sub {
            Some(s) => dir.join(safe_rel(&s)?),
            None => dir.clone(),
        };
        // A pod's own volume at one of these paths wins.
        out.retain(|m| m.target != Path::new(&vm.mount_path));
        out.push(MountSpec {
            source,
            target: PathBuf::from(&vm.mount_path),
            read_only: vm.read_only.unwrap_or(false) || *volume_ro,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_saphyr::from_str(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: op-1, namespace: shop, uid: u-2}
spec:
  serviceAccountName: operator
  containers:
  - name: op
    image: flashsale/operator
    volumeMounts:
    - {name: kube-api-access-x, mountPath: /var/run/secrets/kubernetes.io/serviceaccount, readOnly: true}
    - {name: admin, mountPath: /etc/flashsale/admin, readOnly: true}
    - {name: cfg, mountPath: /etc/app/config.yaml, subPath: config.yaml}
  volumes:
  - name: kube-api-access-x
    projected:
      defaultMode: 420
      sources:
      - serviceAccountToken: {expirationSeconds: 3607, path: token}
      - configMap: {name: kube-root-ca.crt, items: [{key: ca.crt, path: ca.crt}]}
      - downwardAPI: {items: [{path: namespace, fieldRef: {apiVersion: v1, fieldPath: metadata.namespace}}]}
  - name: admin
    secret: {secretName: admin, defaultMode: 256}
  - name: cfg
    configMap: {name: app, items: [{key: cfg, path: config.yaml}]}
"#,
        )
        .unwrap()
    }

    fn facts() -> PodFacts {
        PodFacts {
            pod_ip: "10.213.1.9".into(),
            host_ip: "10.213.1.1".into(),
            api_host: "10.213.1.1".into(),
            api_port: 6443,
            node_cpus: 2,
            node_memory_bytes: 1 << 30,
        }
    }

    fn sources() -> Sources {
        let mut s = Sources::default();
        s.config_maps.insert(
            "kube-root-ca.crt".into(),
            Some(BTreeMap::from([("ca.crt".into(), b"PEM".to_vec())])),
        );
        s.config_maps.insert(
            "app".into(),
            Some(BTreeMap::from([("cfg".into(), b"a: 1".to_vec())])),
        );
        s.secrets.insert(
            "admin".into(),
            Some(BTreeMap::from([("token".into(), b"t0k".to_vec())])),
        );
        s.tokens.insert(String::new(), "jwt".into());
        s
    }

    fn vol(p: &Pod, name: &str) -> Volume {
        p.spec
            .as_ref()
            .unwrap()
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == name)
            .unwrap()
            .clone()
    }

    #[test]
    fn service_account_volume_has_token_ca_and_namespace() {
        let p = pod();
        let files = render(&p, &vol(&p, "kube-api-access-x"), &sources(), &facts())
            .unwrap()
            .unwrap();
        let get = |n: &str| files.iter().find(|f| f.path == n).map(|f| f.data.clone());
        assert_eq!(get("token"), Some(b"jwt".to_vec()));
        assert_eq!(get("ca.crt"), Some(b"PEM".to_vec()));
        assert_eq!(get("namespace"), Some(b"shop".to_vec()));
    }

    #[test]
    fn secret_volume_keeps_mode_and_missing_secret_fails() {
        let p = pod();
        let files = render(&p, &vol(&p, "admin"), &sources(), &facts())
            .unwrap()
            .unwrap();
        assert_eq!(
            files,
            vec![FileOut {
                path: "token".into(),
                data: b"t0k".to_vec(),
                mode: 0o400
            }]
        );
        let mut s = sources();
        s.secrets.insert("admin".into(), None);
        assert!(matches!(
            render(&p, &vol(&p, "admin"), &s, &facts()),
            Some(Err(VolumeError::Missing { .. }))
        ));
    }

    #[test]
    fn files_are_written_and_rewritten_only_on_change() {
        let d = tempfile::tempdir().unwrap();
        let f = vec![FileOut {
            path: "a/b".into(),
            data: b"1".to_vec(),
            mode: 0o600,
        }];
        assert!(write_files(d.path(), &f).unwrap());
        assert!(!write_files(d.path(), &f).unwrap());
        assert_eq!(std::fs::read(d.path().join("a/b")).unwrap(), b"1");
        assert!(safe_rel("../x").is_err());
        assert!(safe_rel("/etc/passwd").is_err());
    }

    #[test]
    fn mounts_follow_volume_mounts_with_subpath_and_read_only() {
        let p = pod();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let dirs: HashMap<String, (PathBuf, bool)> = ["kube-api-access-x", "admin", "cfg"]
            .iter()
            .map(|n| (n.to_string(), (PathBuf::from(format!("/s/{n}")), false)))
            .collect();
        let m = mounts_for(
            c,
            &dirs,
            Path::new("/s/hosts"),
            Path::new("/s/resolv.conf"),
            &Env::default(),
        )
        .unwrap();
        assert_eq!(m[0].target, PathBuf::from("/etc/hosts"));
        assert_eq!(m[1].target, PathBuf::from("/etc/resolv.conf"));
        let sa = m
            .iter()
            .find(|m| m.target.ends_with("serviceaccount"))
            .unwrap();
        assert!(sa.read_only);
        let cfg = m
            .iter()
            .find(|m| m.target == Path::new("/etc/app/config.yaml"))
            .unwrap();
        assert_eq!(cfg.source, PathBuf::from("/s/cfg/config.yaml"));
        assert!(!cfg.read_only);
    }
}
