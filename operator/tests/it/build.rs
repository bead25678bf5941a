//! The build step from YAML fixtures: what each owned object says, as a person running a
//! sale would check it (the pods run the node with the contract's flags, the primary
//! Service reaches only the primary, volumes outlive the sale unless told otherwise …).

use std::collections::BTreeMap;

use flashsale_operator::build::{self, BuildConfig, Owner};
use flashsale_operator::crd::FlashSale;
use flashsale_operator::labels;
use k8s_openapi::api::apps::v1::StatefulSet;

fn fixture(name: &str) -> FlashSale {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn built(name: &str) -> (FlashSale, Owner, StatefulSet) {
    let sale = fixture(name);
    let owner = Owner::of(&sale).expect("fixture has namespace and uid");
    let sts = build::build_statefulset(
        &owner,
        &sale,
        &BuildConfig::default(),
        sale.spec.nodes.replicas,
    );
    (sale, owner, sts)
}

fn pod_labels(sts: &StatefulSet) -> BTreeMap<String, String> {
    sts.spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn statefulset_runs_the_node_with_the_contract_flags_on_a_wal_volume() {
    let (_, _, sts) = built("basic.yaml");
    let spec = sts.spec.as_ref().unwrap();
    assert_eq!(sts.metadata.name.as_deref(), Some("spring"));
    assert_eq!(sts.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(spec.replicas, Some(3), "default replicas");
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    assert_eq!(spec.service_name.as_deref(), Some("spring-nodes"));
    let pod = spec.template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    assert_eq!(
        c.args.as_ref().unwrap().join(" "),
        "serve --listen 0.0.0.0:8080 --data-dir /var/lib/flashsale/wal --role standby \
         --lease required --admin-token-file /etc/flashsale/admin/token --log-format json"
    );
    assert_eq!(
        c.image.as_deref(),
        Some(&*format!(
            "flashsale/stock-node:{}",
            env!("CARGO_PKG_VERSION")
        ))
    );
    let port = &c.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.container_port, port.name.as_deref()),
        (8080, Some("http"))
    );
    let ready = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(ready.path.as_deref(), Some("/readyz"));
    let live = c
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(live.path.as_deref(), Some("/healthz"));
    let mounts: BTreeMap<_, _> = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| (m.mount_path.as_str(), m.name.as_str()))
        .collect();
    assert_eq!(mounts.get("/var/lib/flashsale"), Some(&"wal"));
    assert_eq!(mounts.get("/etc/flashsale/admin"), Some(&"admin"));
    let admin = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "admin")
        .unwrap();
    assert_eq!(
        admin.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("spring-admin")
    );
    let claim = &spec.volume_claim_templates.as_ref().unwrap()[0];
    assert_eq!(claim.metadata.name.as_deref(), Some("wal"));
    let claim_spec = claim.spec.as_ref().unwrap();
    assert_eq!(claim_spec.storage_class_name, None, "default StorageClass");
    assert_eq!(
        claim_spec
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"]
            .0,
        "1Gi"
    );
    let retention = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .unwrap();
    assert_eq!(
        retention.when_deleted.as_deref(),
        Some("Retain"),
        "WAL outlives the sale by default"
    );
    let env: BTreeMap<_, _> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.as_str(), e))
        .collect();
    assert_eq!(
        env["STOCK_NODE_REDIS_URL"].value.as_deref(),
        Some("redis://spring-redis.shop.svc:6379")
    );
    assert!(
        !env.contains_key("STOCK_NODE_ADMISSION_RATE_PER_S"),
        "node default when unset"
    );
}

#[test]
fn statefulset_follows_every_node_setting_of_the_full_spec() {
    let (_, _, sts) = built("full.yaml");
    let spec = sts.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(5));
    let c = &spec.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("registry.example.com/flashsale/stock-node:1.2.3")
    );
    let res = c.resources.as_ref().unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "1");
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "1Gi");
    let claim_spec = spec.volume_claim_templates.as_ref().unwrap()[0]
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast-ssd"));
    assert_eq!(
        claim_spec
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"]
            .0,
        "5Gi"
    );
    let retention = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .unwrap();
    assert_eq!(retention.when_deleted.as_deref(), Some("Delete"));
    assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));
    let env: BTreeMap<_, _> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.as_str(), e))
        .collect();
    let from = env["STOCK_NODE_REDIS_URL"]
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (from.name.as_str(), from.key.as_str()),
        ("shared-redis", "url")
    );
    assert_eq!(
        env["STOCK_NODE_ADMISSION_RATE_PER_S"].value.as_deref(),
        Some("20000")
    );
}

#[test]
fn statefulset_prefers_spreading_nodes_and_is_owned_by_the_sale() {
    let (sale, _, sts) = built("basic.yaml");
    let affinity = sts
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .affinity
        .as_ref()
        .unwrap();
    let anti = affinity.pod_anti_affinity.as_ref().unwrap();
    assert!(
        anti.required_during_scheduling_ignored_during_execution
            .is_none(),
        "one machine must still run a sale"
    );
    let term = &anti
        .preferred_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        term.pod_affinity_term.topology_key,
        "kubernetes.io/hostname"
    );
    let refs = sts.metadata.owner_references.as_ref().unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].kind, "FlashSale");
    assert_eq!(refs[0].api_version, "flashsale.dev/v1alpha1");
    assert_eq!(Some(&refs[0].uid), sale.metadata.uid.as_ref());
    assert_eq!(refs[0].controller, Some(true));
}

#[test]
fn pod_labels_carry_the_fixed_label_set_but_never_a_role() {
    let (_, _, sts) = built("basic.yaml");
    let labels = pod_labels(&sts);
    assert_eq!(labels[labels::INSTANCE], "spring");
    assert_eq!(labels[labels::SALE], "spring");
    assert_eq!(labels[labels::MANAGED_BY], "flashsale-operator");
    assert_eq!(labels[labels::NAME], "stock-node");
    assert!(
        !labels.contains_key(labels::ROLE),
        "the role lives on the pod, set by the operator"
    );
    let selector = sts
        .spec
        .as_ref()
        .unwrap()
        .selector
        .match_labels
        .clone()
        .unwrap();
    assert!(selects(&selector, &labels));
}

#[test]
fn primary_service_reaches_only_the_primary_and_client_service_every_node() {
    let (_, owner, sts) = built("basic.yaml");
    let mut primary_pod = pod_labels(&sts);
    primary_pod.insert(labels::ROLE.into(), labels::ROLE_PRIMARY.into());
    let mut secondary_pod = pod_labels(&sts);
    secondary_pod.insert(labels::ROLE.into(), labels::ROLE_SECONDARY.into());

    let primary = build::build_primary_service(&owner);
    assert_eq!(primary.metadata.name.as_deref(), Some("spring-primary"));
    let sel = primary.spec.as_ref().unwrap().selector.clone().unwrap();
    assert!(selects(&sel, &primary_pod));
    assert!(!selects(&sel, &secondary_pod));
    assert!(
        !selects(&sel, &pod_labels(&sts)),
        "a pod without a role gets no purchases"
    );

    let client = build::build_client_service(&owner);
    assert_eq!(client.metadata.name.as_deref(), Some("spring"));
    let sel = client.spec.as_ref().unwrap().selector.clone().unwrap();
    assert!(selects(&sel, &primary_pod) && selects(&sel, &secondary_pod));

    let headless = build::build_headless_service(&owner);
    let spec = headless.spec.as_ref().unwrap();
    assert_eq!(headless.metadata.name.as_deref(), Some("spring-nodes"));
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(spec.publish_not_ready_addresses, Some(true));
    for svc in [&primary, &client, &headless] {
        let port = &svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        assert_eq!(port.port, 8080);
        assert_eq!(
            svc.metadata.owner_references.as_ref().unwrap()[0].controller,
            Some(true)
        );
    }
}

#[test]
fn admin_secret_holds_the_given_token_under_the_mounted_key() {
    let (_, owner, _) = built("basic.yaml");
    let secret = build::build_admin_secret(&owner, "s3cr3t-token");
    assert_eq!(secret.metadata.name.as_deref(), Some("spring-admin"));
    assert_eq!(secret.data.as_ref().unwrap()["token"].0, b"s3cr3t-token");
    assert_eq!(
        secret.metadata.owner_references.as_ref().unwrap()[0].controller,
        Some(true)
    );
}

#[test]
fn pdb_lets_one_node_go_at_a_time() {
    let (_, owner, sts) = built("basic.yaml");
    let pdb = build::build_pdb(&owner);
    let spec = pdb.spec.as_ref().unwrap();
    assert_eq!(
        spec.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let sel = spec
        .selector
        .as_ref()
        .unwrap()
        .match_labels
        .clone()
        .unwrap();
    assert!(selects(&sel, &pod_labels(&sts)));
}

#[test]
fn managed_redis_is_a_pubsub_only_redis_behind_the_service_the_nodes_are_given() {
    let (sale, owner, _) = built("basic.yaml");
    let deploy = build::build_redis_deployment(&owner, &sale, &BuildConfig::default());
    assert_eq!(deploy.metadata.name.as_deref(), Some("spring-redis"));
    let spec = deploy.spec.as_ref().unwrap();
    let c = &spec.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some("redis:7.2"));
    let args = c.args.as_ref().unwrap().join(" ");
    assert!(args.contains("--appendonly no"), "{args}");
    let svc = build::build_redis_service(&owner);
    assert_eq!(svc.metadata.name.as_deref(), Some("spring-redis"));
    let sel = svc.spec.as_ref().unwrap().selector.clone().unwrap();
    let pod = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    assert!(selects(&sel, &pod));
    assert!(selects(&spec.selector.match_labels.clone().unwrap(), &pod));
    let env = build::redis_url_env(&owner, &sale);
    assert_eq!(
        env.value.as_deref(),
        Some("redis://spring-redis.shop.svc:6379")
    );
}

#[test]
fn owner_needs_a_uid_and_namespace() {
    let mut sale = fixture("basic.yaml");
    sale.metadata.uid = None;
    assert!(Owner::of(&sale).is_err());
}

/// The failover's recovery Job: the old primary's WAL volume, read-only, shipped into
/// the candidate by the node binary's own `wal ship`; 3 and 4 fail it at once.
#[test]
fn the_recovery_job_ships_the_old_primarys_volume_into_the_candidate() {
    let (sale, owner, _) = built("basic.yaml");
    let job = build::build_recovery_job(
        &owner,
        &sale,
        &BuildConfig::default(),
        4,
        "spring-0",
        "spring-1",
        "http://10.0.0.11:8080",
    );
    // One Job per epoch and candidate: a Job that shipped into another node is never
    // taken for this one's.
    assert_eq!(job.metadata.name.as_deref(), Some("spring-recover-e4-1"));
    assert_ne!(
        build::recovery_job_name("spring", 4, "spring-1"),
        build::recovery_job_name("spring", 4, "spring-2")
    );
    assert_eq!(
        job.metadata.owner_references.as_ref().unwrap()[0].name,
        "spring"
    );
    let spec = job.spec.as_ref().unwrap();
    let rules = &spec.pod_failure_policy.as_ref().unwrap().rules;
    assert_eq!(rules[0].action, "FailJob");
    assert_eq!(rules[0].on_exit_codes.as_ref().unwrap().values, [3, 4]);
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    let c = &pod.containers[0];
    assert_eq!(
        c.args.as_ref().unwrap().join(" "),
        "wal ship /var/lib/flashsale/wal --to http://10.0.0.11:8080 --expect-epoch 1 --admin-token-file /etc/flashsale/admin/token",
        "an empty volume is not the tail"
    );
    let wal = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "wal")
        .unwrap();
    let claim = wal.persistent_volume_claim.as_ref().unwrap();
    assert_eq!(
        (claim.claim_name.as_str(), claim.read_only),
        ("wal-spring-0", Some(true))
    );
    assert!(
        c.volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .all(|m| m.read_only == Some(true))
    );
}
