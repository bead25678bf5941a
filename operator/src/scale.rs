//! The autoscaler's I/O (the decision is `crate::autoscale`, pure): a [`Sample`] from
//! the nodes the pass just asked, the decision, `spec.nodes.replicas` written through
//! the scale subresource (field manager `flashsale-autoscaler`, as an HPA writes it —
//! the next pass applies the StatefulSet), the Events with the numbers that decided, and
//! `status.autoscaler`. Leader only: it runs inside the reconcile, which only the
//! leading operator runs. Stands down with a Warning while an HPA targets the sale.

use std::collections::HashMap;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use std::sync::{Mutex, MutexGuard};

use crate::autoscale::{Decision, Memory, Mode, Params, Sample, decide};
use crate::crd::{AutoscalerStatus, FlashSale, FlashSaleStatus, ReplicationMode};
use crate::events::{Kind, Note};
use crate::observe::Observed;

/// The field manager of the autoscaler's writes to `spec.nodes.replicas`.
pub const FIELD_MANAGER: &str = "flashsale-autoscaler";
/// How often a sale with autoscaling on is reconciled (a sample and a decision each).
pub const AUTOSCALE_REQUEUE_MS: u64 = 1_000;
/// Samples kept: the longest window the spec allows, and some.
const KEEP_MS: i64 = 11 * 60 * 1000;

#[derive(Default)]
struct SaleScaler {
    mem: Memory,
    counts: Counts,
    /// The primary's refused-for-load total at the last sample (a rise = refusing now).
    primary_refused: Option<(String, u64)>,
    mode: Option<Mode>,
    limited: bool,
    conflict: bool,
    /// The last scale this leader made: the status write of the pass that made it loses
    /// its race (the scale moved the resourceVersion), so it is kept here for the next.
    last_scale: Option<(Time, String)>,
}

/// Every sale's autoscaler memory, in the leader (a new leader starts empty).
#[derive(Default)]
pub struct Autoscalers {
    sales: Mutex<HashMap<String, SaleScaler>>,
}

/// What one pass of the autoscaler did.
pub struct Pass {
    pub status: Option<AutoscalerStatus>,
    pub notes: Vec<Note>,
    /// Demand and desired count for the operator's metrics.
    pub demand_per_s: f64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The public requests a node has answered since it started (`load.answered`).
fn public_answered(st: &flashsale_core::admin::NodeStatus) -> u64 {
    ["purchase", "confirm", "cancel", "read"]
        .iter()
        .filter_map(|k| st.load.answered.get(*k))
        .sum()
}

/// Per node: (when, public requests answered so far) at the last sample — demand is
/// the counters' rise over the time between two samples, a 1 s bucket (the node's own
/// per-second gauge averages several seconds and would lag the crowd).
pub type Counts = HashMap<String, (i64, u64)>;

/// The sample the nodes' statuses give (pure). `counts` is updated to this sample.
pub fn sample(
    observed: &Observed,
    primary: Option<&str>,
    prev_refused: Option<u64>,
    counts: &mut Counts,
    at_ms: i64,
) -> (Sample, Option<u64>) {
    let mut s = Sample {
        at_ms,
        demand_per_s: 0.0,
        answered: 0,
        ready: 0,
        primary_refused: false,
        primary_inflight_ratio: 0.0,
    };
    let mut refused_now = None;
    for p in &observed.pods {
        let Some(Ok(st)) = &p.node else { continue };
        s.answered += 1;
        let total = public_answered(st);
        s.demand_per_s += match counts.get(&p.name) {
            Some(&(then, was)) if total >= was && at_ms > then => {
                (total - was) as f64 * 1000.0 / (at_ms - then) as f64
            }
            // First sight of the node, or it restarted: no bucket yet (its own gauge
            // averages seconds that may predate the autoscaler's interest).
            _ => 0.0,
        };
        counts.insert(p.name.clone(), (at_ms, total));
        if p.ready {
            s.ready += 1;
        }
        if Some(p.name.as_str()) == primary {
            let refused: u64 = st.load.refused_for_load.values().sum();
            s.primary_refused = prev_refused.is_some_and(|was| refused > was);
            refused_now = Some(refused);
            if st.load.engine_inflight_max > 0 {
                s.primary_inflight_ratio =
                    st.load.engine_inflight as f64 / st.load.engine_inflight_max as f64;
            }
        }
    }
    (s, refused_now)
}

/// The decision's knobs from the spec and the floors of the moment (pure).
pub fn params(sale: &FlashSale, primary_ordinal: Option<u32>) -> Params {
    let a = &sale.spec.autoscaling;
    let ms = |d: &kube::core::Duration| {
        let d: std::time::Duration = (*d).into();
        d.as_millis() as i64
    };
    let mut floor = primary_ordinal.map_or(1, |o| o + 1);
    if sale.spec.replication.mode == ReplicationMode::Quorum {
        floor = floor.max(2);
    }
    let at = |t: &Option<Time>| t.as_ref().map(|t| t.0.as_millisecond());
    Params {
        min: a.min_replicas.max(1) as u32,
        max: a.max_replicas.max(1) as u32,
        target_per_node: f64::from(a.target_purchases_per_s.max(1)),
        stable_window_ms: ms(&a.stable_window),
        panic_window_ms: ms(&a.panic_window),
        panic_threshold: f64::from(a.panic_threshold_percent) / 100.0,
        tolerance: f64::from(a.tolerance_percent) / 100.0,
        scale_up_step_max: a.scale_up_step_max.max(1) as u32,
        scale_down_stabilization_ms: ms(&a.scale_down_stabilization),
        floor,
        starts_at_ms: at(&sale.spec.window.starts_at),
        prescale_lead_ms: ms(&a.pre_scale_lead),
        prescale_replicas: a.pre_scale_replicas.unwrap_or(a.max_replicas).max(1) as u32,
        ends_at_ms: at(&sale.spec.window.ends_at),
        down_held: None,
    }
}

/// Why a scale happened, in words with its numbers (the Event's message). A count set
/// outside the bounds (`kubectl scale`, a changed `minReplicas` or `maxReplicas`) is
/// brought back with the bound named.
pub fn reason(d: &Decision, from: u32, p: &Params, ready: u32) -> String {
    let lowest = p.lowest();
    let bound = if d.desired > from && from < lowest {
        if p.floor > p.min {
            format!(
                "; {from} is below the floor of {lowest} nodes (the primary's pod, and a secondary in quorum mode, are kept)"
            )
        } else {
            format!("; {from} is below minReplicas {}", p.min)
        }
    } else if d.desired < from && from > p.highest() {
        format!("; {from} is above maxReplicas {}", p.max)
    } else {
        String::new()
    };
    format!(
        "{from} → {} nodes ({}): demand {:.0}/s over the stable window, {:.0}/s over the panic window; target {:.0}/s per node, {ready} ready; wanted {}{}{bound}",
        d.desired,
        d.mode.as_str(),
        d.stable_demand,
        d.panic_demand,
        p.target_per_node,
        d.wanted,
        if d.limited {
            format!(", held at maxReplicas {}", p.max)
        } else {
            String::new()
        }
    )
}

impl Autoscalers {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, SaleScaler>> {
        // A panic while holding it leaves plain data behind: use it.
        self.sales.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets a sale (deleted, or autoscaling turned off).
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    /// One pass for `sale`: sample, decide, write, and say so.
    #[allow(clippy::too_many_arguments)]
    pub async fn pass(
        &self,
        client: &kube::Client,
        sale: &FlashSale,
        key: &str,
        prev: &FlashSaleStatus,
        observed: &Observed,
        primary: Option<&str>,
        primary_ordinal: Option<u32>,
        in_failover: bool,
        down_held: Option<&'static str>,
    ) -> Pass {
        let mut out = Pass {
            status: None,
            notes: Vec::new(),
            demand_per_s: 0.0,
        };
        if !sale.spec.autoscaling.enabled {
            self.forget(key);
            return out;
        }
        let ns = sale.namespace().unwrap_or_default();
        let name = sale.name_any();
        let current = sale.spec.nodes.replicas.max(1) as u32;
        let kept = prev.autoscaler.clone().unwrap_or_default();
        let remembered = self.lock().get(key).and_then(|s| s.last_scale.clone());
        let (last_scale_time, last_scale_reason) = match remembered {
            Some((t, why)) => (Some(t), Some(why)),
            None => (kept.last_scale_time, kept.last_scale_reason),
        };
        let mut status = AutoscalerStatus {
            desired_replicas: current as i32,
            last_scale_time,
            last_scale_reason,
            mode: String::new(),
            scale_down_held_by: None,
        };

        // An HPA on the sale owns the count: stand down. A list that fails while an HPA
        // was there reads as "still there": the autoscaler must not write over it.
        let hpa = match targeting_hpa(client, &ns, &name).await {
            Ok(h) => h,
            Err(()) if self.lock().get(key).is_some_and(|s| s.conflict) => {
                Some("(unknown: the list failed)".to_string())
            }
            Err(()) => None,
        };
        let (prev_refused, was_conflict) = {
            let sales = self.lock();
            let s = sales.get(key);
            (
                s.and_then(|s| s.primary_refused.clone())
                    .filter(|(pod, _)| Some(pod.as_str()) == primary)
                    .map(|(_, n)| n),
                s.is_some_and(|s| s.conflict),
            )
        };
        if let Some(hpa) = hpa {
            if !was_conflict {
                out.notes.push(Note::warning(
                    "AutoscalingConflict",
                    format!("HorizontalPodAutoscaler {hpa} targets this sale: the operator's autoscaler stands down while it does (spec.autoscaling.enabled is ignored)"),
                    Kind::Action,
                ));
            }
            let mut sales = self.lock();
            let s = sales.entry(key.to_string()).or_default();
            s.conflict = true;
            s.mode = Some(Mode::External);
            status.mode = Mode::External.as_str().into();
            out.status = Some(status);
            return out;
        }

        let now = now_ms();
        let mut p = params(sale, primary_ordinal);
        p.down_held = down_held;
        let decision = {
            let mut sales = self.lock();
            let s = sales.entry(key.to_string()).or_default();
            if s.conflict {
                // The HPA is gone: start afresh (its samples are stale, and a new
                // history waits a window before any scale-down).
                *s = SaleScaler::default();
            }
            let (sample, refused_now) = sample(observed, primary, prev_refused, &mut s.counts, now);
            out.demand_per_s = sample.demand_per_s;
            s.primary_refused = primary.zip(refused_now).map(|(p, n)| (p.to_string(), n));
            s.mem.record(sample, KEEP_MS);
            if in_failover {
                // The primary moves: hold the count (samples still count), and a
                // window with no scale-down after.
                s.mem.hold(now);
                s.mode = Some(Mode::Holding);
                status.mode = Mode::Holding.as_str().into();
                out.status = Some(status);
                return out;
            }
            let d = decide(&mut s.mem, &p, current, now);
            if d.panic_started {
                out.notes.push(Note::warning(
                    "AutoscalerPanic",
                    format!(
                        "panic: demand {:.0}/s over the panic window against {} ready nodes × {:.0}/s{}; no scale-down until it has been calm for the stable window",
                        d.panic_demand,
                        sample.ready,
                        p.target_per_node,
                        if sample.primary_refused { ", and the primary refuses for load" } else { "" }
                    ),
                    Kind::Action,
                ));
            }
            if sample.primary_refused && s.mode != Some(Mode::Panic) {
                out.notes.push(Note::warning(
                    "PrimarySaturated",
                    format!(
                        "the primary {} refuses requests for load (429/503), its engine queue {:.0}% full",
                        primary.unwrap_or("?"),
                        sample.primary_inflight_ratio * 100.0
                    ),
                    Kind::Action,
                ));
            }
            if d.limited && !s.limited {
                out.notes.push(Note::warning(
                    "ScaleLimited",
                    format!(
                        "the load asks for {} nodes; held at maxReplicas {} (demand {:.0}/s, target {:.0}/s per node)",
                        d.wanted, p.max, d.stable_demand.max(d.panic_demand), p.target_per_node
                    ),
                    Kind::Action,
                ));
            }
            if d.mode == Mode::Blind && s.mode != Some(Mode::Blind) {
                out.notes.push(Note::warning(
                    "MetricsUnavailable",
                    format!(
                        "only {} of {current} nodes answered with their load: holding at {current} nodes until at least half answer",
                        sample.answered
                    ),
                    Kind::Action,
                ));
            }
            s.limited = d.limited;
            s.mode = Some(d.mode);
            (d, sample.ready)
        };
        let (decision, ready) = decision;
        status.mode = decision.mode.as_str().into();
        status.desired_replicas = decision.desired as i32;
        status.scale_down_held_by = decision.down_blocked.map(str::to_string);
        if decision.desired != current {
            let why = reason(&decision, current, &p, ready);
            match write_replicas(client, &ns, &name, decision.desired).await {
                Ok(()) => {
                    let reason_word = match (decision.desired > current, decision.mode) {
                        (true, Mode::PreScale) => "PreScaled",
                        (true, _) => "ScaledUp",
                        (false, _) => "ScaledDown",
                    };
                    out.notes
                        .push(Note::normal(reason_word, why.clone(), Kind::Action));
                    let at = Time(jiff::Timestamp::now());
                    if let Some(s) = self.lock().get_mut(key) {
                        s.last_scale = Some((at.clone(), why.clone()));
                    }
                    status.last_scale_time = Some(at);
                    status.last_scale_reason = Some(why);
                }
                Err(e) => {
                    tracing::warn!(sale = %name, error = %e, "autoscaler: writing replicas failed");
                    out.notes.push(Note::warning(
                        "ScaleFailed",
                        format!(
                            "could not write spec.nodes.replicas = {}: {e}",
                            decision.desired
                        ),
                        Kind::Action,
                    ));
                }
            }
        }
        out.status = Some(status);
        out
    }
}

/// `spec.nodes.replicas = n` through the scale subresource, as an HPA writes it.
async fn write_replicas(
    client: &kube::Client,
    ns: &str,
    name: &str,
    n: u32,
) -> Result<(), kube::Error> {
    let api: Api<FlashSale> = Api::namespaced(client.clone(), ns);
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    api.patch_scale(
        name,
        &pp,
        &Patch::Merge(serde_json::json!({"spec": {"replicas": n}})),
    )
    .await
    .map(|_| ())
}

/// The name of an HPA whose scale target is this FlashSale, if any; `Err` when the list
/// failed (logged).
async fn targeting_hpa(client: &kube::Client, ns: &str, name: &str) -> Result<Option<String>, ()> {
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    match api.list(&ListParams::default()).await {
        Ok(list) => Ok(list.items.into_iter().find_map(|h| {
            let t = &h.spec.scale_target_ref;
            (t.kind == "FlashSale"
                && t.name == name
                && t.api_version
                    .as_deref()
                    .is_none_or(|v| v.starts_with("flashsale.dev/")))
            .then(|| h.name_any())
        })),
        Err(e) => {
            tracing::warn!(error = %e, "autoscaler: listing HorizontalPodAutoscalers failed");
            Err(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscale::{Memory, decide};

    fn knobs() -> Params {
        Params {
            min: 2,
            max: 4,
            target_per_node: 10.0,
            ..crate::autoscale::test_params()
        }
    }

    /// A count set below the floor or above the ceiling (`kubectl scale`) is brought
    /// back, and the Event's message names the bound; a scale for load names none.
    #[test]
    fn a_count_outside_the_bounds_is_brought_back_naming_the_bound() {
        let mut p = knobs();
        let why = |p: &Params, current| {
            let d = decide(&mut Memory::default(), p, current, 0);
            (d.desired, reason(&d, current, p, current))
        };
        let (to, msg) = why(&p, 1);
        assert_eq!(to, 2);
        assert!(msg.ends_with("; 1 is below minReplicas 2"), "{msg}");
        p.floor = 3; // the primary is s-2
        let (to, msg) = why(&p, 1);
        assert_eq!(to, 3);
        assert!(
            msg.contains("below the floor of 3 nodes (the primary's pod"),
            "{msg}"
        );
        p.floor = 1;
        let (to, msg) = why(&p, 6);
        assert_eq!(to, 4);
        assert!(msg.ends_with("; 6 is above maxReplicas 4"), "{msg}");
        // After the sale's end too (there the autoscaler wants the minimum anyway).
        p.ends_at_ms = Some(0);
        let (to, msg) = why(&p, 1);
        assert_eq!(to, 2);
        assert!(msg.ends_with("; 1 is below minReplicas 2"), "{msg}");
        let (to, msg) = why(&p, 6);
        assert_eq!(to, 4, "to maxReplicas in one step");
        assert!(msg.ends_with("; 6 is above maxReplicas 4"), "{msg}");
        p.ends_at_ms = None;
        // Within the bounds, a scale for load: no bound named.
        let mut mem = Memory::default();
        mem.record(
            crate::autoscale::Sample {
                at_ms: 0,
                demand_per_s: 35.0,
                answered: 2,
                ready: 2,
                primary_refused: false,
                primary_inflight_ratio: 0.0,
            },
            120_000,
        );
        let d = decide(&mut mem, &p, 2, 0);
        let msg = reason(&d, 2, &p, 2);
        assert!(
            d.desired > 2 && !msg.contains("minReplicas 2") && !msg.contains("above"),
            "{msg}"
        );
    }
}
