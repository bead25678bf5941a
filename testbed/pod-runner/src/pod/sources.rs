//! Everything a pod's env and volumes read from the API, fetched in one step before
//! a container starts (and again on refresh): Secrets, ConfigMaps and service
//! account tokens (TokenRequest, bound to the pod like the kubelet's).

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, ServiceAccount};
use kube::Api;
use kube::api::PostParams;

/// The kubelet's default for projected tokens without expirationSeconds.
const TOKEN_EXPIRATION_DEFAULT_S: i64 = 3607;

/// Key → bytes of one Secret or ConfigMap; `None` when it does not exist.
pub type Data = Option<BTreeMap<String, Vec<u8>>>;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sources {
    pub secrets: HashMap<String, Data>,
    pub config_maps: HashMap<String, Data>,
    /// audience ("" = the API server's) → token.
    pub tokens: HashMap<String, String>,
}

fn containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    spec.into_iter().flat_map(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(s.containers.iter())
    })
}

/// Names of the Secrets and ConfigMaps and the token audiences the pod refers to.
pub fn references(pod: &Pod) -> (HashSet<String>, HashSet<String>, HashMap<String, i64>) {
    let mut secrets = HashSet::new();
    let mut cms = HashSet::new();
    let mut tokens = HashMap::new();
    for c in containers(pod) {
        for e in c.env_from.iter().flatten() {
            if let Some(s) = &e.secret_ref {
                secrets.insert(s.name.clone());
            }
            if let Some(c) = &e.config_map_ref {
                cms.insert(c.name.clone());
            }
        }
        for e in c.env.iter().flatten() {
            let Some(vf) = &e.value_from else { continue };
            if let Some(s) = &vf.secret_key_ref {
                secrets.insert(s.name.clone());
            }
            if let Some(c) = &vf.config_map_key_ref {
                cms.insert(c.name.clone());
            }
        }
    }
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.insert(s);
        }
        if let Some(c) = &v.config_map {
            cms.insert(c.name.clone());
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(s) = &src.secret {
                secrets.insert(s.name.clone());
            }
            if let Some(c) = &src.config_map {
                cms.insert(c.name.clone());
            }
            if let Some(t) = &src.service_account_token {
                tokens.insert(
                    t.audience.clone().unwrap_or_default(),
                    t.expiration_seconds.unwrap_or(TOKEN_EXPIRATION_DEFAULT_S),
                );
            }
        }
    }
    (secrets, cms, tokens)
}

async fn get_or_none<K>(api: &Api<K>, name: &str) -> Result<Option<K>, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get(name).await {
        Ok(o) => Ok(Some(o)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

impl Sources {
    pub async fn fetch(client: &kube::Client, pod: &Pod) -> Result<Self, kube::Error> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let (secret_names, cm_names, audiences) = references(pod);
        let mut out = Sources::default();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        for n in secret_names {
            let data = get_or_none(&secrets, &n).await?.map(|s| {
                let mut m: BTreeMap<String, Vec<u8>> = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                // stringData is write-only, but an object read back right after an
                // apply may still carry it in some clients' caches: be lenient.
                for (k, v) in s.string_data.unwrap_or_default() {
                    m.entry(k).or_insert_with(|| v.into_bytes());
                }
                m
            });
            out.secrets.insert(n, data);
        }
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        for n in cm_names {
            let data = get_or_none(&cms, &n).await?.map(|c| {
                let mut m: BTreeMap<String, Vec<u8>> = c
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                m.extend(
                    c.binary_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0)),
                );
                m
            });
            out.config_maps.insert(n, data);
        }
        if !audiences.is_empty() {
            let sa_name = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into());
            let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
            for (aud, exp) in audiences {
                let req = TokenRequest {
                    spec: Some(TokenRequestSpec {
                        audiences: (!aud.is_empty()).then(|| vec![aud.clone()]),
                        expiration_seconds: Some(exp),
                        bound_object_ref: Some(BoundObjectReference {
                            api_version: Some("v1".into()),
                            kind: Some("Pod".into()),
                            name: pod.metadata.name.clone(),
                            uid: pod.metadata.uid.clone(),
                        }),
                    }),
                    ..Default::default()
                };
                let resp = sas
                    .create_token_request(&sa_name, &PostParams::default(), &req)
                    .await?;
                let token = resp.status.and_then(|s| s.token).unwrap_or_default();
                out.tokens.insert(aud, token);
            }
        }
        Ok(out)
    }
}
