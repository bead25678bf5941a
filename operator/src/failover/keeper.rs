//! The lease keeper: the leading operator renews each sale's primary's selling lease
//! every `leaseDuration / 8` (`super::timing`), off the reconcile loop, and says what it
//! knows: since when renewals fail (the failure detector of a frozen or cut-off
//! primary), and when the last lease it could have extended ends at the latest — the
//! fence's deadline, on the operator's own clock.
//!
//! A renewal carries the newest token the node gave; the node extends its lease to that
//! token's issue time + the duration. So what bounds the lease is when the operator
//! *received* the newest token it ever *sent*: that instant is kept per sale, and
//! `lease_end` is it + duration + margin — the latest such end, when the duration
//! changed for the same node and epoch (a shortened `leaseDuration` does not shorten
//! what the node already holds). Stopping (the fence) freezes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use flashsale_core::admin::LeaseRenewal;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::mpsc;

use super::leadership::Leading;
use super::timing::{FENCE_MARGIN, renew_every};
use crate::nodes::{NodeClient, NodeError};

/// What to renew: a sale's primary at its epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub pod: String,
    /// The pod's `metadata.uid` when it was handed the lease: the pod the leased run
    /// is in (a pod made again under the name is another one).
    pub pod_uid: Option<String>,
    pub url: String,
    pub admin_token: String,
    pub epoch: u64,
    pub lease: Duration,
}

/// The keeper's account of one sale's lease.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LeaseView {
    /// The pod, its address and the epoch renewed (or last renewed).
    pub pod: Option<String>,
    pub url: Option<String>,
    pub epoch: u64,
    /// Renewing now (false once stopped for a fence).
    pub held: bool,
    /// Renewals have failed since the last one that succeeded (then), and the last error.
    pub failing_since: Option<Time>,
    pub failing: Option<String>,
    /// Any lease this operator could have granted is over by then (wall clock).
    pub lease_end: Option<Time>,
    /// The node run (`instance` part of its tokens) that holds the lease.
    pub instance: Option<String>,
    /// The `metadata.uid` of the pod that run is in ([`Target::pod_uid`]).
    pub pod_uid: Option<String>,
    /// A renewal has succeeded for this target.
    pub granted: bool,
    /// The lease duration the keeper renews with now.
    pub duration: Option<Duration>,
}

impl LeaseView {
    /// Whether the keeper renews, and has granted, `pod`'s lease at `url` and `epoch`
    /// with `duration`. Not: the primary's lease is held anew (`roles::Step::GrantLease`),
    /// which is also how a changed `leaseDuration` reaches the keeper.
    pub fn renews(
        &self,
        pod: Option<&str>,
        url: Option<&str>,
        epoch: u64,
        duration: Duration,
    ) -> bool {
        self.held
            && self.granted
            && self.pod.as_deref() == pod
            && self.url.as_deref() == url
            && self.epoch == epoch
            && self.duration == Some(duration)
    }
}

struct Entry {
    target: Target,
    held: bool,
    /// The newest token received, and when.
    token: Option<(String, Instant)>,
    /// The lease that ends last of those sent to this pod at this epoch: when its token
    /// was received, and its duration. A renewal for a shorter lease (the spec's
    /// `leaseDuration` shortened) does not shorten what the node holds (its end is the
    /// latest of what it was granted), so the fence waits for this.
    longest: Option<(Instant, Duration)>,
    failing: Option<(Instant, SystemTime, String)>,
    /// When the last renewal succeeded: renewals have failed since then, once they fail.
    last_ok: Option<SystemTime>,
    granted: bool,
    next_at: Instant,
    busy: bool,
}

impl Entry {
    /// A target held from now on, nothing known of it yet.
    fn fresh(target: Target) -> Self {
        Entry {
            target,
            held: true,
            token: None,
            longest: None,
            failing: None,
            last_ok: None,
            granted: false,
            next_at: Instant::now(),
            busy: false,
        }
    }
}

/// How long [`Keeper::renew_now`] waits for a renewal in flight, at most (a renewal is
/// bounded by the node client's timeout).
const RENEW_NOW_WAIT: Duration = Duration::from_millis(50);
const RENEW_NOW_WAITS: u32 = 60;

/// Renews leases; shared by the controller (hold, stop, view) and its own task.
pub struct Keeper {
    nodes: NodeClient,
    entries: Mutex<HashMap<String, Entry>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Off once this replica may no longer lead: nothing more is sent.
    leading: Leading,
}

fn wall(at: Instant) -> Time {
    let ago = Instant::now().saturating_duration_since(at);
    Time(
        jiff::Timestamp::try_from(SystemTime::now() - ago)
            .unwrap_or_else(|_| jiff::Timestamp::now()),
    )
}

impl Keeper {
    /// Renews only while `leading` is on (`failover::leadership`).
    pub fn new(
        nodes: NodeClient,
        metrics: Arc<crate::metrics::Metrics>,
        leading: Leading,
    ) -> Arc<Self> {
        Arc::new(Self {
            nodes,
            entries: Mutex::new(HashMap::new()),
            metrics,
            leading,
        })
    }

    /// Renews `target` for `sale` from now on (a new target starts afresh).
    pub fn hold(&self, sale: &str, target: Target) {
        let mut entries = self.entries.lock().expect("not poisoned");
        match entries.get_mut(sale) {
            Some(e) if e.target == target => e.held = true,
            // The same node at the same epoch with another lease duration (or address):
            // a fresh account, but what was granted before still bounds its lease.
            Some(e) if e.target.pod == target.pod && e.target.epoch == target.epoch => {
                let longest = e.longest;
                *e = Entry::fresh(target);
                e.longest = longest;
            }
            _ => {
                entries.insert(sale.to_string(), Entry::fresh(target));
            }
        }
    }

    /// Stops renewing `sale`'s lease (the fence): from now on its lease only runs out.
    pub fn stop(&self, sale: &str) {
        if let Some(e) = self.entries.lock().expect("not poisoned").get_mut(sale) {
            e.held = false;
        }
    }

    /// The sale is gone.
    pub fn forget(&self, sale: &str) {
        self.entries.lock().expect("not poisoned").remove(sale);
    }

    pub fn view(&self, sale: &str) -> LeaseView {
        let entries = self.entries.lock().expect("not poisoned");
        let Some(e) = entries.get(sale) else {
            return LeaseView::default();
        };
        LeaseView {
            pod: Some(e.target.pod.clone()),
            url: Some(e.target.url.clone()),
            epoch: e.target.epoch,
            held: e.held,
            failing_since: e.failing.as_ref().map(|(_, at, _)| {
                Time(jiff::Timestamp::try_from(*at).unwrap_or_else(|_| jiff::Timestamp::now()))
            }),
            failing: e.failing.as_ref().map(|(_, _, why)| why.clone()),
            lease_end: e.longest.map(|(r, lease)| {
                let end = wall(r);
                Time(end.0 + lease + FENCE_MARGIN)
            }),
            instance: e
                .token
                .as_ref()
                .and_then(|(t, _)| t.split_once(':').map(|(i, _)| i.to_string())),
            pod_uid: e.target.pod_uid.clone(),
            granted: e.granted,
            duration: Some(e.target.lease),
        }
    }

    /// Renews `sale`'s lease now, once, and says whether the node took it. A renewal
    /// already in flight (the keeper's own tick, or one for the target a new `hold`
    /// replaced, as when `leaseDuration` changes) is waited for, a bounded while, and
    /// this one made after it: otherwise it would be skipped and read as refused.
    pub async fn renew_now(&self, sale: &str) -> Result<(), String> {
        for _ in 0..RENEW_NOW_WAITS {
            if !self.leading.is_on() {
                return Err("this replica no longer leads: no lease is renewed".into());
            }
            if self.renew(sale).await {
                break;
            }
            tokio::time::sleep(RENEW_NOW_WAIT).await;
        }
        let view = self.view(sale);
        match view.failing {
            None if view.granted => Ok(()),
            None => Err("no renewal made".into()),
            Some(why) => Err(why),
        }
    }

    /// One renewal of `sale`'s lease (skipped when stopped); false when skipped because
    /// one is in flight.
    async fn renew(&self, sale: &str) -> bool {
        let (target, mut token) = {
            let mut entries = self.entries.lock().expect("not poisoned");
            let Some(e) = entries.get_mut(sale) else {
                return true;
            };
            if e.busy {
                return false;
            }
            if !e.held || !self.leading.is_on() {
                return true;
            }
            e.busy = true;
            (e.target.clone(), e.token.clone())
        };
        let mut outcome = Err(String::new());
        // Two tries: a node that restarted refuses its former run's token and hands a
        // fresh one, to be used at once.
        for _ in 0..2 {
            let (t, received) = match token.take() {
                Some(t) => t,
                None => match self.nodes.status(&target.url, &target.admin_token).await {
                    Ok(s) => match s.lease {
                        Some(l) => (l.token, Instant::now()),
                        None => {
                            outcome = Err(format!("{} has no lease to renew", target.pod));
                            break;
                        }
                    },
                    Err(e) => {
                        outcome = Err(format!("{}: {e}", target.pod));
                        break;
                    }
                },
            };
            {
                let mut entries = self.entries.lock().expect("not poisoned");
                let Some(e) = entries.get_mut(sale) else {
                    return true;
                };
                if e.target != target {
                    // Another target held meanwhile (`hold`): nothing is sent to this
                    // one, and the new entry's account (its busy flag, its longest
                    // lease) is its own.
                    return true;
                }
                if !e.held || !self.leading.is_on() {
                    // Stopped meanwhile, or no longer leading: nothing more is sent.
                    e.busy = false;
                    return true;
                }
                let lease = target.lease;
                e.longest = Some(match e.longest {
                    Some((r, l)) if r + l >= received + lease => (r, l),
                    _ => (received, lease),
                });
            }
            let renewal = LeaseRenewal {
                epoch: target.epoch,
                token: t,
                duration_ms: target.lease.as_millis() as u64,
            };
            match self
                .nodes
                .put_lease(&target.url, &target.admin_token, &renewal)
                .await
            {
                Ok(l) => {
                    token = Some((l.token, Instant::now()));
                    outcome = Ok(());
                    break;
                }
                Err(NodeError::Refused { status: 409, body }) => {
                    outcome = Err(format!("{} refused the lease: {body}", target.pod));
                    token = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["lease"]["token"].as_str().map(str::to_owned))
                        .map(|t| (t, Instant::now()));
                    if token.is_none() {
                        break;
                    }
                }
                Err(e) => {
                    outcome = Err(format!("{}: {e}", target.pod));
                    break;
                }
            }
        }
        let mut entries = self.entries.lock().expect("not poisoned");
        let Some(e) = entries.get_mut(sale) else {
            return true;
        };
        if e.target != target {
            return true;
        }
        e.busy = false;
        let period = renew_every(target.lease);
        match outcome {
            Ok(()) => {
                e.token = token;
                e.failing = None;
                e.last_ok = Some(SystemTime::now());
                e.granted = true;
                e.next_at = Instant::now() + period;
                self.metrics.lease_renewal(true);
            }
            Err(why) => {
                e.token = token;
                if e.failing.is_none() {
                    // Failing since the node last proved it was well, not since the
                    // failure was noticed (a renewal may take its whole timeout to fail).
                    let since = e.last_ok.unwrap_or_else(SystemTime::now);
                    e.failing = Some((Instant::now(), since, why));
                } else if let Some(f) = e.failing.as_mut() {
                    f.2 = why;
                }
                // Try again sooner: the lease is running out.
                e.next_at = Instant::now() + period / 2;
                self.metrics.lease_renewal(false);
            }
        }
        true
    }

    /// Renews every held lease when due, until `shutdown`; sends a sale's key to `wake`
    /// when its renewals start failing (so its reconcile runs at once).
    pub async fn run(
        self: Arc<Self>,
        wake: mpsc::Sender<String>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut shutdown => return,
            }
            let due: Vec<String> = {
                let now = Instant::now();
                let entries = self.entries.lock().expect("not poisoned");
                entries
                    .iter()
                    .filter(|(_, e)| e.held && !e.busy && e.next_at <= now)
                    .map(|(k, _)| k.clone())
                    .collect()
            };
            for sale in due {
                let me = self.clone();
                let wake = wake.clone();
                tokio::spawn(async move {
                    let was_failing = me.view(&sale).failing.is_some();
                    me.renew(&sale).await;
                    if !was_failing && me.view(&sale).failing.is_some() {
                        let _ = wake.try_send(sale);
                    }
                });
            }
        }
    }
}
