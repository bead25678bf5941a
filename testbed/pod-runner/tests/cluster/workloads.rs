//! What a user of the local cluster relies on: Deployments behind Services,
//! StatefulSets keeping their volumes, crashed containers restarted, deleted pods
//! gone, and in-cluster clients held to their RBAC.

use std::net::Ipv4Addr;

use crate::harness::{Cluster, TestResult, ensure, http_get, wait_until};

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: http
          image: python:3.11
          command: [python3, -m, http.server, "8080"]
          ports: [{containerPort: 8080, name: http}]
          readinessProbe:
            httpGet: {path: /, port: http}
            periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

/// A pod in the cluster that fetches a URL by name and exits 0 on HTTP 200.
fn fetch_pod(name: &str, url: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  containers:
    - name: fetch
      image: python:3.11
      command:
        - python3
        - -c
        - |
          import sys, time, urllib.request
          for attempt in range(20):
              try:
                  code = urllib.request.urlopen("{url}", timeout=3).status
                  print("GET {url} ->", code)
                  sys.exit(0 if code == 200 else 1)
              except Exception as e:
                  print("attempt", attempt, e)
                  time.sleep(1)
          sys.exit(1)
"#
    )
}

pub fn deployment_behind_a_service(c: &Cluster) -> TestResult {
    let ns = c.namespace("t-web")?;
    let ns = ns.name.as_str();
    c.apply(ns, WEB)?;
    let pods = wait_until("2 web pods Running and Ready", || {
        let pods = c.pods(ns, "app=web").ok()?;
        (pods.len() == 2
            && pods
                .iter()
                .all(|p| p.phase == "Running" && p.ready && p.ip.is_some()))
        .then_some(pods)
    })?;
    let mut pod_ips: Vec<Ipv4Addr> = pods.iter().filter_map(|p| p.ip).collect();
    pod_ips.sort();

    let slice_ips = wait_until("the EndpointSlice to list both pods as ready", || {
        let v = c
            .json(&[
                "-n",
                ns,
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=web",
            ])
            .ok()?;
        let mut ips: Vec<Ipv4Addr> = v["items"]
            .as_array()?
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] != false)
            .filter_map(|e| e["addresses"][0].as_str()?.parse().ok())
            .collect();
        ips.sort();
        (ips == pod_ips).then_some(ips)
    })?;
    ensure(slice_ips == pod_ips, || {
        format!("slice {slice_ips:?} != pods {pod_ips:?}")
    })?;

    for ip in &pod_ips {
        let code = http_get(*ip, 8080, "/")?;
        ensure(code == 200, || {
            format!("host -> pod {ip}:8080 answered {code}")
        })?;
    }
    let svc = c.json(&["-n", ns, "get", "service", "web"])?;
    let cluster_ip: Ipv4Addr = svc["spec"]["clusterIP"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or("service web has no ClusterIP")?;
    // The proxy applies rules shortly after the slice changes.
    let code = wait_until("host -> ClusterIP:80", || {
        http_get(cluster_ip, 80, "/").ok()
    })?;
    ensure(code == 200, || {
        format!("host -> ClusterIP {cluster_ip}:80 answered {code}")
    })?;

    let url = format!("http://web.{ns}.svc.cluster.local/");
    c.apply(ns, &fetch_pod("fetch", &url))?;
    let (phase, logs) = c.wait_finished(ns, "fetch")?;
    ensure(phase == "Succeeded", || {
        format!("a pod could not GET {url} through the ClusterIP: {phase}\n{logs}")
    })?;

    // Scaled down, the Service must stop sending anything to the pod that went away.
    c.kubectl(
        &["-n", ns, "scale", "deployment", "web", "--replicas=1"],
        None,
    )?;
    wait_until("one web pod left", || {
        let pods = c.pods(ns, "app=web").ok()?;
        (pods.len() == 1).then_some(())
    })?;
    wait_until("20 GETs in a row through the ClusterIP to succeed", || {
        (0..20)
            .all(|_| http_get(cluster_ip, 80, "/") == Ok(200))
            .then_some(())
    })
}

const STORE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: store}
spec:
  clusterIP: None
  selector: {app: store}
  ports: [{name: x, port: 1}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: store}
spec:
  serviceName: store
  replicas: 1
  selector: {matchLabels: {app: store}}
  template:
    metadata: {labels: {app: store}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: store
          image: busybox
          command:
            - sh
            - -c
            - 'cat /data/boots 2>/dev/null; echo "boot of $(hostname) pod uid $POD_UID" >> /data/boots; exec sleep 3600'
          env:
            - name: POD_UID
              valueFrom: {fieldRef: {fieldPath: metadata.uid}}
          volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
    - metadata: {name: data}
      spec:
        accessModes: [ReadWriteOnce]
        resources: {requests: {storage: 10Mi}}
"#;

pub fn statefulset_keeps_its_volume(c: &Cluster) -> TestResult {
    let ns = c.namespace("t-store")?;
    let ns = ns.name.as_str();
    c.apply(ns, STORE)?;
    let first = wait_until("store-0 Running", || {
        c.pod(ns, "store-0").ok().filter(|p| p.phase == "Running")
    })?;
    let pvc = c.json(&["-n", ns, "get", "pvc", "data-store-0"])?;
    ensure(pvc["status"]["phase"] == "Bound", || {
        format!("PVC not Bound: {}", pvc["status"])
    })?;

    c.kubectl(
        &[
            "-n",
            ns,
            "delete",
            "pod",
            "store-0",
            "--wait=true",
            "--timeout=60s",
        ],
        None,
    )?;
    let second = wait_until("store-0 re-created and Running", || {
        c.pod(ns, "store-0")
            .ok()
            .filter(|p| p.uid != first.uid && p.phase == "Running")
    })?;
    // The new pod printed what the old one wrote before appending its own line.
    let logs = wait_until("store-0's logs to show the first boot", || {
        let logs = c.pod_logs(ns, "store-0");
        logs.contains(&first.uid).then_some(logs)
    })?;
    ensure(!logs.contains(&second.uid), || {
        format!("the second pod saw its own line before writing it: {logs}")
    })?;
    let pvc = c.json(&["-n", ns, "get", "pvc", "data-store-0"])?;
    ensure(pvc["status"]["phase"] == "Bound", || {
        "PVC lost its binding".into()
    })?;

    // Its stable name, as peers of a StatefulSet find each other.
    let name = format!("store-0.store.{ns}.svc.cluster.local");
    c.apply(ns, &resolve_pod("resolve", &name))?;
    let (phase, logs) = c.wait_finished(ns, "resolve")?;
    let ip = second.ip.map(|ip| ip.to_string()).unwrap_or_default();
    ensure(
        phase == "Succeeded" && logs.starts_with(&format!("{ip} ")),
        || format!("{name} should resolve to {ip} in a pod: {phase}\n{logs}"),
    )
}

fn resolve_pod(pod: &str, name: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {pod}}}
spec:
  restartPolicy: Never
  containers:
    - name: getent
      image: busybox
      command: [getent, hosts, {name}]
"#
    )
}

const SLEEPER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: sleeper}
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: main
      image: busybox
      command: [sh, -c, 'trap "exit 0" TERM; while true; do sleep 1; done']
"#;

/// The host pids of a pod's containers, from the pod runner's state dir.
fn pod_pids(c: &Cluster, uid: &str) -> Vec<i32> {
    let dir = c.runner_dir().join("pods").join(uid).join("pids");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
        .collect()
}

/// Whether a process runs. A zombie does not: it has exited, and here its parent
/// may be a PID 1 that never reaps orphans.
pub fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or_default()
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

pub fn killed_container_restarts_and_deleted_pod_is_gone(c: &Cluster) -> TestResult {
    let ns = c.namespace("t-crash")?;
    let ns = ns.name.as_str();
    c.apply(ns, SLEEPER)?;
    let before = wait_until("sleeper Running", || {
        c.pod(ns, "sleeper").ok().filter(|p| p.phase == "Running")
    })?;
    let pids = wait_until("sleeper's pid file", || {
        Some(pod_pids(c, &before.uid)).filter(|p| !p.is_empty())
    })?;
    crate::harness::cluster_sh(&["fault", "--name", &c.name, "kill", &format!("{ns}/sleeper")])?;
    let after = wait_until("restartCount to rise and the pod to run again", || {
        c.pod(ns, "sleeper")
            .ok()
            .filter(|p| p.restarts > before.restarts && p.phase == "Running")
    })?;
    ensure(after.uid == before.uid, || {
        "the pod was replaced, not restarted".into()
    })?;
    ensure(pids.iter().all(|p| !process_alive(*p)), || {
        format!("killed processes {pids:?} still alive")
    })?;

    let pids = wait_until("the restarted container's pid", || {
        let p = pod_pids(c, &after.uid);
        (!p.is_empty() && p.iter().all(|p| process_alive(*p))).then_some(p)
    })?;
    c.kubectl(
        &[
            "-n",
            ns,
            "delete",
            "pod",
            "sleeper",
            "--wait=true",
            "--timeout=60s",
        ],
        None,
    )?;
    wait_until("the deleted pod's processes to be gone", || {
        pids.iter().all(|p| !process_alive(*p)).then_some(())
    })
    .map_err(|e| format!("{e}: pids {pids:?}"))
}

const RBAC: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: reader}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader}
rules: [{apiGroups: [""], resources: [pods], verbs: [get, list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader-reads-pods}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
subjects: [{kind: ServiceAccount, name: reader}]
"#;

const API_BY_NAME: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: api-by-name}
spec:
  serviceAccountName: reader
  restartPolicy: Never
  containers:
    - name: get
      image: python:3.11
      command:
        - python3
        - -c
        - |
          import ssl, urllib.request
          sa = "/var/run/secrets/kubernetes.io/serviceaccount/"
          ctx = ssl.create_default_context(cafile=sa + "ca.crt")
          req = urllib.request.Request("https://kubernetes.default.svc/api/v1/namespaces/t-rbac/pods",
              headers={"Authorization": "Bearer " + open(sa + "token").read()})
          print(urllib.request.urlopen(req, context=ctx, timeout=5).status)
"#;

/// A pod running the real kubectl with nothing but its mounted token.
fn kubectl_pod(name: &str, args: &[&str]) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  serviceAccountName: reader
  restartPolicy: Never
  containers:
    - name: kubectl
      image: bitnami/kubectl:1.36
      args: {args:?}
"#
    )
}

pub fn in_cluster_client_is_held_to_its_rbac(c: &Cluster) -> TestResult {
    let ns = c.namespace("t-rbac")?;
    let ns = ns.name.as_str();
    c.apply(ns, RBAC)?;
    c.apply(ns, &kubectl_pod("lister", &["get", "pods", "-o", "name"]))?;
    let (phase, _) = c.wait_finished(ns, "lister")?;
    // Read through the API server and the pod runner's kubelet endpoint, as a user would.
    let logs = c.kubectl(&["-n", ns, "logs", "lister"], None)?;
    ensure(phase == "Succeeded" && logs.contains("pod/lister"), || {
        format!("in-cluster `kubectl get pods` with the reader token: {phase}\n{logs}")
    })?;
    // Clients that dial the API by its Service name (client libraries' default URL).
    c.apply(ns, API_BY_NAME)?;
    let (phase, logs) = c.wait_finished(ns, "api-by-name")?;
    ensure(phase == "Succeeded", || {
        format!("https://kubernetes.default.svc from a pod: {phase}\n{logs}")
    })?;
    c.apply(ns, &kubectl_pod("snooper", &["get", "secrets"]))?;
    let (phase, logs) = c.wait_finished(ns, "snooper")?;
    ensure(phase == "Failed" && logs.contains("forbidden"), || {
        format!("`kubectl get secrets` with the reader token should be forbidden: {phase}\n{logs}")
    })
}
