//! Pod status from the runtime model: a pure function, so what `kubectl get pods`
//! shows is tested without an API server. Conditions keep their previous
//! `lastTransitionTime` unless their status flips, so an unchanged pod produces an
//! identical status and no write.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::runtime::{CState, CStatus, PodRuntime, phase};

fn state(s: &CState) -> ContainerState {
    match s {
        CState::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        CState::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*started_at)),
            }),
            ..Default::default()
        },
        CState::Terminated {
            exit_code,
            signal,
            reason,
            started_at,
            finished_at,
        } => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *exit_code,
                signal: *signal,
                reason: Some(reason.clone()),
                started_at: started_at.map(Time),
                finished_at: Some(Time(*finished_at)),
                container_id: None,
                message: None,
            }),
            ..Default::default()
        },
    }
}

fn container_status(c: &CStatus) -> ContainerStatus {
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image_id.clone(),
        container_id: c.container_id.clone(),
        ready: c.ready,
        started: Some(c.started),
        restart_count: c.restart_count,
        state: Some(state(&c.state)),
        last_state: Some(c.last_state.as_ref().map(state).unwrap_or_default()),
        ..Default::default()
    }
}

fn condition(
    pod: &Pod,
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    now: jiff::Timestamp,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let previous = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_));
    let since = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Some(Time(now)),
    };
    PodCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: if ok { None } else { reason.map(str::to_string) },
        last_transition_time: since,
        ..Default::default()
    }
}

/// The full status to post for `pod` given what runs. `now` stamps conditions that change.
pub fn build(pod: &Pod, rt: &PodRuntime, host_ip: &str, now: jiff::Timestamp) -> PodStatus {
    let phase = phase(rt);
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let sidecars_ready = rt.init.iter().filter(|c| c.sidecar).all(|c| c.ready);
    let containers_ready = sidecars_ready
        && !rt.containers.is_empty()
        && rt.containers.iter().all(|c| c.ready)
        && !terminal;
    let not_ready_reason = if terminal {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let mut conditions = vec![
        condition(
            pod,
            "PodReadyToStartContainers",
            rt.sandbox_ready,
            None,
            now,
        ),
        condition(
            pod,
            "Initialized",
            rt.init_done,
            Some("ContainersNotInitialized"),
            now,
        ),
        condition(pod, "Ready", containers_ready, Some(not_ready_reason), now),
        condition(
            pod,
            "ContainersReady",
            containers_ready,
            Some(not_ready_reason),
            now,
        ),
    ];
    // Conditions other writers own (PodScheduled from the scheduler,
    // DisruptionTarget from eviction, readiness gates) are carried over: a merge
    // patch replaces the whole list.
    let ours: Vec<String> = conditions.iter().map(|c| c.type_.clone()).collect();
    conditions.extend(
        pod.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| !ours.contains(&c.type_))
            .cloned(),
    );
    let (reason, message) = match &rt.setup_error {
        Some((r, m)) if phase == "Pending" => (Some(r.clone()), Some(m.clone())),
        _ => (None, None),
    };
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(host_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: host_ip.to_string(),
        }]),
        pod_ip: rt.ip.map(|ip| ip.to_string()),
        pod_ips: rt.ip.map(|ip| vec![PodIP { ip: ip.to_string() }]),
        start_time: rt.start_time.map(Time),
        init_container_statuses: (!rt.init.is_empty())
            .then(|| rt.init.iter().map(container_status).collect()),
        container_statuses: Some(rt.containers.iter().map(container_status).collect()),
        reason,
        message,
        qos_class: pod.status.as_ref().and_then(|s| s.qos_class.clone()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_saphyr::from_str(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, uid: u-1}
spec:
  nodeName: fs1-node
  containers: [{name: web, image: python}]
status:
  phase: Pending
  conditions:
  - {type: PodScheduled, status: "True", lastTransitionTime: "2026-01-01T00:00:00Z"}
  - {type: DisruptionTarget, status: "True", reason: EvictionByEvictionAPI}
"#,
        )
        .unwrap()
    }

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn running(ready: bool) -> PodRuntime {
        let mut c = CStatus::new("web", "python");
        c.state = CState::Running { started_at: t(0) };
        c.ready = ready;
        c.started = true;
        PodRuntime {
            ip: Some("10.213.1.2".parse().unwrap()),
            start_time: Some(t(0)),
            sandbox_ready: true,
            init_done: true,
            containers: vec![c],
            ..Default::default()
        }
    }

    fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
    }

    #[test]
    fn running_ready_pod_reports_ip_and_ready() {
        let s = build(&pod(), &running(true), "10.213.1.1", t(5));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.213.1.2"));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(
            cond(&s, "PodScheduled").status,
            "True",
            "scheduler's condition kept"
        );
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready && cs.state.as_ref().unwrap().running.is_some());
    }

    #[test]
    fn unchanged_runtime_gives_identical_status() {
        let mut p = pod();
        let first = build(&p, &running(false), "10.213.1.1", t(5));
        p.status = Some(first.clone());
        let again = build(&p, &running(false), "10.213.1.1", t(60));
        assert_eq!(first, again, "no timestamp moves while nothing changes");
        let ready = build(&p, &running(true), "10.213.1.1", t(60));
        assert_eq!(
            cond(&ready, "Ready").last_transition_time,
            Some(Time(t(60)))
        );
    }

    #[test]
    fn all_exited_containers_make_the_pod_terminal() {
        let mut rt = running(false);
        rt.containers[0].state = CState::Terminated {
            exit_code: 0,
            signal: None,
            reason: "Completed".into(),
            started_at: Some(t(0)),
            finished_at: t(3),
        };
        rt.containers[0].finished = true;
        assert_eq!(
            build(&pod(), &rt, "h", t(4)).phase.as_deref(),
            Some("Succeeded")
        );
        rt.containers[0].state = CState::Terminated {
            exit_code: 2,
            signal: None,
            reason: "Error".into(),
            started_at: Some(t(0)),
            finished_at: t(3),
        };
        let s = build(&pod(), &rt, "h", t(4));
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        assert_eq!(
            s.container_statuses.unwrap()[0]
                .state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .exit_code,
            2
        );
    }

    #[test]
    fn crash_looping_container_keeps_pod_running_with_counts() {
        let mut rt = running(false);
        rt.containers[0].restart_count = 3;
        rt.containers[0].state = CState::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: None,
        };
        let s = build(&pod(), &rt, "h", t(4));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.container_statuses.unwrap()[0].restart_count, 3);
    }

    #[test]
    fn an_unready_native_sidecar_keeps_the_pod_unready() {
        let mut rt = running(true);
        let mut side = CStatus::new("proxy", "busybox");
        side.sidecar = true;
        side.state = CState::Running { started_at: t(0) };
        rt.init = vec![side];
        let s = build(&pod(), &rt, "h", t(1));
        assert_eq!(cond(&s, "Ready").status, "False");
        rt.init[0].ready = true;
        let s = build(&pod(), &rt, "h", t(2));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(s.phase.as_deref(), Some("Running"));
    }

    #[test]
    fn pending_until_init_containers_are_done() {
        let mut rt = running(false);
        rt.init_done = false;
        rt.init = vec![CStatus::new("migrate", "busybox")];
        let s = build(&pod(), &rt, "h", t(1));
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(cond(&s, "Initialized").status, "False");
        assert_eq!(s.init_container_statuses.unwrap().len(), 1);
    }
}
