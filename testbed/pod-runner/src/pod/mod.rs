//! Pods bound to this node: watch them (field selector on `spec.nodeName`) and run
//! each in its own worker task, which owns the pod's sandbox and processes.

pub mod container;
pub mod env;
pub mod launch;
pub mod probe;
pub mod runtime;
pub mod sources;
pub mod status;
pub mod volumes;
mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{Notify, watch};

use crate::config::RunConfig;
use crate::images::ImageMap;
use crate::ipam::Table;

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("watching pods: {0}")]
    Watch(#[from] watcher::Error),
}

/// Shared by every pod worker.
pub struct Ctx {
    pub client: kube::Client,
    pub cfg: RunConfig,
    pub images: ImageMap,
    pub ipam: Mutex<Table>,
    pub node_cpus: u32,
    pub node_memory_bytes: u64,
    pub recorder: kube::runtime::events::Recorder,
}

impl Ctx {
    /// Records a pod Event (what `kubectl describe pod` lists), as the kubelet
    /// does; fire-and-forget so a slow API never delays a container.
    pub fn event(&self, pod: &Pod, warning: bool, reason: &str, note: String) {
        use kube::Resource;
        use kube::runtime::events::{Event, EventType};
        let recorder = self.recorder.clone();
        let reference = pod.object_ref(&());
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note),
            action: reason.to_string(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&ev, &reference).await {
                tracing::debug!(error = %e, "publishing event");
            }
        });
    }
}

/// One pod's runtime model plus a wake-up for its status reporter.
pub struct PodShared {
    pub rt: Mutex<runtime::PodRuntime>,
    pub changed: Notify,
}

impl PodShared {
    pub fn update(&self, f: impl FnOnce(&mut runtime::PodRuntime)) {
        f(&mut self.rt.lock().expect("pod runtime lock"));
        self.changed.notify_one();
    }

    pub fn snapshot(&self) -> runtime::PodRuntime {
        self.rt.lock().expect("pod runtime lock").clone()
    }
}

/// Now, to the second: the API stores times in seconds, so finer stamps would
/// only make equal statuses look different.
pub fn now_s() -> jiff::Timestamp {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .unwrap_or_else(|_| jiff::Timestamp::now())
}

fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

/// Dispatches watch events to per-pod workers until the watch ends.
pub async fn run(ctx: Arc<Ctx>) -> Result<(), PodError> {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.cfg.node_name));
    let mut events = watcher(api, wc).default_backoff().boxed();
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let mut listed: HashSet<String> = HashSet::new();
    let upsert = |workers: &mut HashMap<String, watch::Sender<Option<Pod>>>, p: Pod| {
        let id = uid(&p);
        match workers.get(&id) {
            Some(tx) if !tx.is_closed() => {
                tx.send_replace(Some(p));
            }
            _ => {
                let (tx, rx) = watch::channel(Some(p));
                tokio::spawn(worker::run(ctx.clone(), rx));
                workers.insert(id, tx);
            }
        }
    };
    while let Some(ev) = events.try_next().await? {
        workers.retain(|_, tx| !tx.is_closed());
        match ev {
            watcher::Event::Init => listed.clear(),
            watcher::Event::InitApply(p) => {
                listed.insert(uid(&p));
                upsert(&mut workers, p);
            }
            watcher::Event::InitDone => {
                // Pods that vanished while the watch was down.
                for (id, tx) in &workers {
                    if !listed.contains(id) {
                        tx.send_replace(None);
                    }
                }
            }
            watcher::Event::Apply(p) => upsert(&mut workers, p),
            watcher::Event::Delete(p) => {
                if let Some(tx) = workers.get(&uid(&p)) {
                    tx.send_replace(None);
                }
            }
        }
    }
    Ok(())
}
