//! A container's environment, as the kubelet builds it: service variables for the
//! API server, `envFrom`, then `env` in order with `$(VAR)` expansion, values from
//! Secrets, ConfigMaps and the downward API. Pure: the API reads are in `Sources`.

use k8s_openapi::api::core::v1::{Container, ObjectFieldSelector, Pod, ResourceFieldSelector};

use super::sources::{Data, Sources};
use crate::expand::Env;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnvError {
    #[error("{kind} {name:?} not found")]
    Missing { kind: &'static str, name: String },
    #[error("key {key:?} not found in {kind} {name:?}")]
    MissingKey {
        kind: &'static str,
        name: String,
        key: String,
    },
    #[error("unsupported fieldRef {0:?}")]
    Field(String),
    #[error("unsupported resourceFieldRef {0:?}")]
    Resource(String),
}

/// Facts about where the pod runs that env and downward API volumes expose.
#[derive(Debug, Clone)]
pub struct PodFacts {
    pub pod_ip: String,
    pub host_ip: String,
    pub api_host: String,
    pub api_port: u16,
    /// Node allocatable, the value of a resourceFieldRef with no limit set.
    pub node_cpus: u32,
    pub node_memory_bytes: u64,
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn field_value(
    pod: &Pod,
    facts: &PodFacts,
    sel: &ObjectFieldSelector,
) -> Result<String, EnvError> {
    let path = sel.field_path.as_str();
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_key = |prefix: &str| -> Option<String> {
        let rest = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(rest.to_string())
    };
    let fmt_map = |m: Option<&std::collections::BTreeMap<String, String>>| {
        m.into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => fmt_map(meta.labels.as_ref()),
        "metadata.annotations" => fmt_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        _ => {
            if let Some(k) = map_key("metadata.labels") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&k))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(k) = map_key("metadata.annotations") {
                meta.annotations
                    .as_ref()
                    .and_then(|l| l.get(&k))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(EnvError::Field(path.to_string()));
            }
        }
    })
}

/// Parses a quantity into a plain number of `unit`s (bytes, or cores when `cpu`).
fn quantity(q: &str, cpu: bool) -> Option<f64> {
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("K", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("", 1.0),
    ];
    let _ = cpu;
    suffixes.iter().find_map(|(s, mult)| {
        let num = q.strip_suffix(s)?;
        num.parse::<f64>().ok().map(|n| n * mult)
    })
}

/// `limits.cpu`, `requests.memory`, …: the container's value (node allocatable when
/// no limit is set, as the kubelet does), divided by the divisor, rounded up.
pub fn resource_value(
    c: &Container,
    facts: &PodFacts,
    sel: &ResourceFieldSelector,
) -> Result<String, EnvError> {
    let bad = || EnvError::Resource(sel.resource.clone());
    let (kind, name) = sel.resource.split_once('.').ok_or_else(bad)?;
    let cpu = name == "cpu";
    let res = c.resources.as_ref();
    let set = match kind {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => return Err(bad()),
    }
    .and_then(|m| m.get(name))
    .and_then(|q| quantity(&q.0, cpu));
    let value = match (set, name) {
        (Some(v), _) => v,
        (None, "cpu") if kind == "limits" => facts.node_cpus as f64,
        (None, "memory") if kind == "limits" => facts.node_memory_bytes as f64,
        (None, _) => 0.0,
    };
    let divisor = sel
        .divisor
        .as_ref()
        .and_then(|d| quantity(&d.0, cpu))
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    Ok(format!("{}", (value / divisor).ceil() as u64))
}

fn lookup<'a>(
    map: &'a std::collections::HashMap<String, Data>,
    kind: &'static str,
    name: &str,
) -> Result<Option<&'a std::collections::BTreeMap<String, Vec<u8>>>, EnvError> {
    match map.get(name) {
        Some(Some(d)) => Ok(Some(d)),
        _ => Err(EnvError::Missing {
            kind,
            name: name.to_string(),
        }),
    }
}

/// The container's environment, in kubelet order. `image_path` goes first on PATH.
pub fn build(
    pod: &Pod,
    c: &Container,
    sources: &Sources,
    facts: &PodFacts,
    image_path: Option<&str>,
) -> Result<Env, EnvError> {
    let mut env = Env::default();
    env.set("KUBERNETES_SERVICE_HOST", &facts.api_host);
    env.set("KUBERNETES_SERVICE_PORT", facts.api_port.to_string());
    env.set("KUBERNETES_SERVICE_PORT_HTTPS", facts.api_port.to_string());
    let tcp = format!("tcp://{}:{}", facts.api_host, facts.api_port);
    env.set("KUBERNETES_PORT", &tcp);
    for ef in c.env_from.iter().flatten() {
        let prefix = ef.prefix.clone().unwrap_or_default();
        let (kind, name, optional, map) = if let Some(s) = &ef.secret_ref {
            (
                "Secret",
                &s.name,
                s.optional.unwrap_or(false),
                &sources.secrets,
            )
        } else if let Some(cm) = &ef.config_map_ref {
            (
                "ConfigMap",
                &cm.name,
                cm.optional.unwrap_or(false),
                &sources.config_maps,
            )
        } else {
            continue;
        };
        match lookup(map, kind, name) {
            Ok(Some(d)) => {
                for (k, v) in d {
                    env.set(format!("{prefix}{k}"), String::from_utf8_lossy(v));
                }
            }
            Ok(None) => {}
            Err(_) if optional => {}
            Err(e) => return Err(e),
        }
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => env.expand(e.value.as_deref().unwrap_or("")),
            Some(vf) => {
                if let Some(f) = &vf.field_ref {
                    field_value(pod, facts, f)?
                } else if let Some(r) = &vf.resource_field_ref {
                    resource_value(c, facts, r)?
                } else {
                    let (kind, name, key, optional, map) = if let Some(s) = &vf.secret_key_ref {
                        (
                            "Secret",
                            &s.name,
                            &s.key,
                            s.optional.unwrap_or(false),
                            &sources.secrets,
                        )
                    } else if let Some(cm) = &vf.config_map_key_ref {
                        (
                            "ConfigMap",
                            &cm.name,
                            &cm.key,
                            cm.optional.unwrap_or(false),
                            &sources.config_maps,
                        )
                    } else {
                        continue;
                    };
                    let found = lookup(map, kind, name).map(|d| d.and_then(|d| d.get(key)));
                    match found {
                        Ok(Some(v)) => String::from_utf8_lossy(v).into_owned(),
                        _ if optional => continue,
                        Ok(None) => {
                            return Err(EnvError::MissingKey {
                                kind,
                                name: name.clone(),
                                key: key.clone(),
                            });
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        };
        env.set(e.name.clone(), value);
    }
    let path = match image_path {
        Some(p) => format!("{p}:{DEFAULT_PATH}"),
        None => DEFAULT_PATH.to_string(),
    };
    env.set_default("PATH", path);
    env.set_default("HOME", "/root");
    env.set_default("HOSTNAME", pod.metadata.name.clone().unwrap_or_default());
    Ok(env)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn pod() -> Pod {
        serde_saphyr::from_str(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: node-0, namespace: shop, uid: u-9, labels: {app: stock, role: primary}}
spec:
  nodeName: fs1-node
  serviceAccountName: stock
  containers:
  - name: node
    image: flashsale/stock-node
    resources: {limits: {memory: 256Mi}}
    envFrom:
    - configMapRef: {name: sale}
      prefix: SALE_
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: ROLE, valueFrom: {fieldRef: {fieldPath: "metadata.labels['role']"}}}
    - {name: PEER, value: "$(POD_NAME).nodes.shop.svc:$(SALE_PORT)"}
    - {name: TOKEN, valueFrom: {secretKeyRef: {name: admin, key: token}}}
    - {name: OPT, valueFrom: {secretKeyRef: {name: nope, key: x, optional: true}}}
    - {name: MEM_MI, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    - {name: CPUS, valueFrom: {resourceFieldRef: {resource: limits.cpu}}}
    - {name: SA, valueFrom: {fieldRef: {fieldPath: spec.serviceAccountName}}}
"#,
        )
        .unwrap()
    }

    fn facts() -> PodFacts {
        PodFacts {
            pod_ip: "10.213.1.5".into(),
            host_ip: "10.213.1.1".into(),
            api_host: "10.213.1.1".into(),
            api_port: 16443,
            node_cpus: 2,
            node_memory_bytes: 1 << 30,
        }
    }

    fn sources() -> Sources {
        let mut s = Sources::default();
        s.config_maps.insert(
            "sale".into(),
            Some(BTreeMap::from([("PORT".to_string(), b"8080".to_vec())])),
        );
        s.secrets.insert(
            "admin".into(),
            Some(BTreeMap::from([("token".to_string(), b"s3cret".to_vec())])),
        );
        s
    }

    #[test]
    fn builds_env_like_the_kubelet() {
        let p = pod();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let env = build(&p, c, &sources(), &facts(), Some("/img")).unwrap();
        assert_eq!(env.get("KUBERNETES_SERVICE_HOST"), Some("10.213.1.1"));
        assert_eq!(env.get("KUBERNETES_SERVICE_PORT"), Some("16443"));
        assert_eq!(env.get("SALE_PORT"), Some("8080"));
        assert_eq!(env.get("POD_IP"), Some("10.213.1.5"));
        assert_eq!(env.get("ROLE"), Some("primary"));
        assert_eq!(env.get("PEER"), Some("node-0.nodes.shop.svc:8080"));
        assert_eq!(env.get("TOKEN"), Some("s3cret"));
        assert_eq!(env.get("OPT"), None, "optional missing secret is skipped");
        assert_eq!(env.get("MEM_MI"), Some("256"));
        assert_eq!(env.get("CPUS"), Some("2"), "no limit: node allocatable");
        assert_eq!(env.get("SA"), Some("stock"));
        assert!(env.get("PATH").unwrap().starts_with("/img:"));
        assert_eq!(env.get("HOSTNAME"), Some("node-0"));
    }

    #[test]
    fn missing_required_secret_is_an_error_naming_it() {
        let p = pod();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let mut s = sources();
        s.secrets.insert("admin".into(), None);
        assert_eq!(
            build(&p, c, &s, &facts(), None),
            Err(EnvError::Missing {
                kind: "Secret",
                name: "admin".into()
            })
        );
    }
}
