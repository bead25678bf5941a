//! What the runner knows about one pod's processes, shared between the container
//! supervisors, the probes and the status reporter.

use std::net::Ipv4Addr;

use jiff::Timestamp;

#[derive(Debug, Clone, PartialEq)]
pub enum CState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated {
        exit_code: i32,
        signal: Option<i32>,
        reason: String,
        started_at: Option<Timestamp>,
        finished_at: Timestamp,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct CStatus {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: Option<String>,
    pub state: CState,
    pub last_state: Option<CState>,
    pub restart_count: i32,
    pub ready: bool,
    pub started: bool,
    /// Terminated and will not run again (restart policy says so).
    pub finished: bool,
    /// A native sidecar (init container with restartPolicy Always).
    pub sidecar: bool,
}

impl CStatus {
    pub fn new(name: &str, image: &str) -> Self {
        CStatus {
            name: name.to_string(),
            image: image.to_string(),
            image_id: String::new(),
            container_id: None,
            state: CState::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            last_state: None,
            restart_count: 0,
            ready: false,
            started: false,
            finished: false,
            sidecar: false,
        }
    }

    pub fn exit_code(&self) -> Option<i32> {
        match &self.state {
            CState::Terminated { exit_code, .. } => Some(*exit_code),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodRuntime {
    pub ip: Option<Ipv4Addr>,
    pub start_time: Option<Timestamp>,
    /// Network namespace and volumes are in place.
    pub sandbox_ready: bool,
    pub init: Vec<CStatus>,
    pub containers: Vec<CStatus>,
    pub init_done: bool,
    /// An init container failed under restartPolicy Never: the pod failed.
    pub init_failed: bool,
    /// Why the pod cannot start yet (missing Secret, no address, …).
    pub setup_error: Option<(String, String)>,
}

/// The pod phase the kubelet would report.
pub fn phase(rt: &PodRuntime) -> &'static str {
    if rt.init_failed {
        return "Failed";
    }
    if !rt.init_done {
        return "Pending";
    }
    if !rt.containers.is_empty() && rt.containers.iter().all(|c| c.finished) {
        return if rt.containers.iter().all(|c| c.exit_code() == Some(0)) {
            "Succeeded"
        } else {
            "Failed"
        };
    }
    let ever_ran = |c: &CStatus| {
        c.restart_count > 0 || matches!(c.state, CState::Running { .. } | CState::Terminated { .. })
    };
    if rt.containers.iter().any(ever_ran) {
        "Running"
    } else {
        "Pending"
    }
}
