//! The autoscaler's decision, pure: from the nodes' recent load, the sale's bounds and
//! the clock, how many nodes the sale should run and why. Knative's shape (a stable and
//! a panic window over per-second demand), the HPA's rules (a tolerance, scale-up in
//! steps, scale-down one node at a time after a stabilisation window). The controller
//! feeds it a [`Sample`] per pass and writes what it decides through the scale
//! subresource (SCALING.md §3); nothing here does I/O, so the table, property and
//! simulated-clock tests below drive it directly.

use std::collections::VecDeque;

/// One observation of the sale's load, about a second apart.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub at_ms: i64,
    /// Public requests per second over all nodes (what the crowd asks for).
    pub demand_per_s: f64,
    /// Nodes that answered the scrape.
    pub answered: u32,
    /// Nodes ready to take load (a secondary catching up counts as no capacity).
    pub ready: u32,
    /// The primary refused something for load (429, 503 busy) since the last sample.
    pub primary_refused: bool,
    /// The primary's engine queue, taken over its limit (0.0..=1.0).
    pub primary_inflight_ratio: f64,
}

/// The sale's bounds and knobs (`spec.autoscaling`) and the floors of the moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    pub min: u32,
    pub max: u32,
    /// Requests per second one node is meant to carry.
    pub target_per_node: f64,
    pub stable_window_ms: i64,
    pub panic_window_ms: i64,
    /// Panic when demand in the panic window is this many times the ready capacity.
    pub panic_threshold: f64,
    /// No change while demand is within this fraction of the current capacity.
    pub tolerance: f64,
    /// The most nodes one scale-up adds.
    pub scale_up_step_max: u32,
    /// A scale-down waits until no recommendation in this window was higher.
    pub scale_down_stabilization_ms: i64,
    /// Never below this: the primary's ordinal + 1 (a StatefulSet removes the highest
    /// ordinals), and 2 in quorum mode.
    pub floor: u32,
    /// Pre-scale: from `starts_at_ms - prescale_lead_ms` until the window opens, at
    /// least `prescale_replicas`.
    pub starts_at_ms: Option<i64>,
    pub prescale_lead_ms: i64,
    pub prescale_replicas: u32,
    /// After the window ends, back to the minimum.
    pub ends_at_ms: Option<i64>,
    /// A scale-down held for a reason outside the load (shown as `down_blocked`): the
    /// primary fails its checks, and a failover may begin that needs every secondary.
    /// Scale-ups go on.
    pub down_held: Option<&'static str>,
}

impl Params {
    /// The fewest nodes: `min`, or the floor when higher, but never above `max` unless
    /// the floor is.
    pub fn lowest(&self) -> u32 {
        self.min.max(self.floor).min(self.max.max(self.floor))
    }

    /// The most nodes: `max`, or the floor when higher.
    pub fn highest(&self) -> u32 {
        self.max.max(self.lowest())
    }
}

/// Knobs for tests: 1..=6 nodes at 100/s each, 30 s windows, floor 1.
#[cfg(test)]
pub(crate) fn test_params() -> Params {
    Params {
        min: 1,
        max: 6,
        target_per_node: 100.0,
        stable_window_ms: 30_000,
        panic_window_ms: 3_000,
        panic_threshold: 2.0,
        tolerance: 0.1,
        scale_up_step_max: 4,
        scale_down_stabilization_ms: 30_000,
        floor: 1,
        starts_at_ms: None,
        prescale_lead_ms: 60_000,
        prescale_replicas: 6,
        ends_at_ms: None,
        down_held: None,
    }
}

/// What the autoscaler is doing (shown in `status.autoscaler.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Stable,
    Panic,
    PreScale,
    /// After the sale's window: back to the minimum.
    Ended,
    /// Not enough nodes answered: the count is held.
    Blind,
    /// A failover or switchover moves the primary: the count is held (set by the
    /// scaler, never by [`decide`]).
    Holding,
    /// A HorizontalPodAutoscaler targets the sale: the operator's autoscaler stands
    /// down (set by the scaler, never by [`decide`]).
    External,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Stable => "Stable",
            Mode::Panic => "Panic",
            Mode::PreScale => "PreScale",
            Mode::Ended => "Ended",
            Mode::Blind => "Blind",
            Mode::Holding => "Holding",
            Mode::External => "External",
        }
    }
}

/// Why the count is what it is: the Event's reason and the numbers that decided it.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub desired: u32,
    pub mode: Mode,
    /// Demand averaged over the stable and the panic window (requests/s).
    pub stable_demand: f64,
    pub panic_demand: f64,
    /// What the load alone asks for, before steps, stabilisation and bounds.
    pub wanted: u32,
    /// Pinned at `max` while the load asks for more.
    pub limited: bool,
    /// A scale-down the load asks for but a rule holds back (stabilisation, panic, a
    /// floor, a new leader's first window).
    pub down_blocked: Option<&'static str>,
    /// The panic began with this decision.
    pub panic_started: bool,
}

/// What the autoscaler remembers between passes (per sale, in the leader's memory: a
/// new leader starts empty and waits one stable window before any scale-down).
#[derive(Clone, Debug, Default)]
pub struct Memory {
    samples: VecDeque<Sample>,
    /// (when, what the load asked for): the scale-down stabilisation window.
    recommendations: VecDeque<(i64, u32)>,
    panic_until_ms: Option<i64>,
    /// When this history began (a new leader's memory): no scale-down for a window.
    started_ms: Option<i64>,
    /// The last pass that held the count for a failover: no scale-down for a window
    /// after it either ([`Memory::hold`]).
    held_ms: Option<i64>,
    /// When the count last changed (a scale-down waits the stabilisation window after
    /// any change: one node at a time, spaced).
    changed_ms: Option<i64>,
}

impl Memory {
    pub fn record(&mut self, s: Sample, keep_ms: i64) {
        self.started_ms.get_or_insert(s.at_ms);
        // Out-of-order samples (a clock step) are dropped rather than reordered.
        if self.samples.back().is_some_and(|b| b.at_ms >= s.at_ms) {
            return;
        }
        self.samples.push_back(s);
        while self
            .samples
            .front()
            .is_some_and(|f| f.at_ms < s.at_ms - keep_ms)
        {
            self.samples.pop_front();
        }
    }

    /// The count is held while a failover or switchover moves the primary: the
    /// samples of the outage say little of the crowd, so once the hold ends no
    /// scale-down for a window, as for a new leader.
    pub fn hold(&mut self, now_ms: i64) {
        self.held_ms = Some(now_ms);
    }

    fn mean_demand(&self, now_ms: i64, window_ms: i64) -> f64 {
        let (sum, n) = self
            .samples
            .iter()
            .filter(|s| s.at_ms > now_ms - window_ms)
            .fold((0.0, 0u32), |(sum, n), s| (sum + s.demand_per_s, n + 1));
        if n == 0 { 0.0 } else { sum / f64::from(n) }
    }
}

fn nodes_for(demand: f64, target: f64) -> u32 {
    if target <= 0.0 || !demand.is_finite() || demand <= 0.0 {
        return 0;
    }
    (demand / target).ceil().min(f64::from(u32::MAX)) as u32
}

/// The decision at `now_ms` for a sale that runs `current` nodes.
pub fn decide(mem: &mut Memory, p: &Params, current: u32, now_ms: i64) -> Decision {
    let floor = p.lowest();
    // A hold on scale-downs (a failing primary) holds the ceiling's cut too: a
    // `maxReplicas` lowered below the count waits, as the load's scale-down does.
    let max = p.highest();
    let over_ceiling = current > max;
    let ceiling = match p.down_held {
        Some(_) => max.max(current),
        None => max,
    };
    let clamp = |n: u32| n.clamp(floor, ceiling);
    let last = mem.samples.back().copied();
    let stable_demand = mem.mean_demand(now_ms, p.stable_window_ms);
    let panic_demand = mem.mean_demand(now_ms, p.panic_window_ms);
    let mut d = Decision {
        desired: clamp(current),
        mode: Mode::Stable,
        stable_demand,
        panic_demand,
        wanted: current,
        limited: false,
        down_blocked: p.down_held.filter(|_| over_ceiling),
        panic_started: false,
    };

    // A new leader (its memory empty: when the count last changed is unknown), or the
    // end of a hold: no scale-down for the longer of the stable window and the
    // stabilisation window.
    let window = p.stable_window_ms.max(p.scale_down_stabilization_ms);
    let recent = |t: Option<i64>| t.is_some_and(|t| now_ms - t < window);
    let fresh = if recent(mem.started_ms) {
        Some("a new leader's first window")
    } else if recent(mem.held_ms) {
        Some("the window after a failover")
    } else {
        None
    };

    // After the window: back to the minimum, whatever the load.
    if p.ends_at_ms.is_some_and(|e| now_ms >= e) {
        d.mode = Mode::Ended;
        d.wanted = floor;
        let spaced = mem
            .changed_ms
            .is_none_or(|c| now_ms - c >= p.scale_down_stabilization_ms);
        let held = p.down_held.or(fresh);
        d.desired = if current > floor && spaced && held.is_none() {
            clamp(current - 1)
        } else {
            clamp(current)
        };
        if current > floor {
            d.down_blocked = held.or(d.down_blocked);
        }
        if d.desired != current {
            mem.changed_ms = Some(now_ms);
        }
        return d;
    }

    // Blind: fewer than half the nodes answered; hold (but never below the floor).
    let Some(last) = last.filter(|s| now_ms - s.at_ms <= p.stable_window_ms) else {
        d.mode = Mode::Blind;
        return d;
    };
    if last.answered * 2 < current.max(1) {
        d.mode = Mode::Blind;
        return d;
    }

    let ready = last.ready.max(1);
    let capacity = f64::from(ready) * p.target_per_node;
    let saturated = last.primary_refused || last.primary_inflight_ratio >= 0.5;
    let panicking_now = panic_demand >= p.panic_threshold * capacity || saturated;
    if panicking_now {
        d.panic_started = mem.panic_until_ms.is_none_or(|u| now_ms >= u);
        // Panic lasts a stable window past its last cause.
        mem.panic_until_ms = Some(now_ms + p.stable_window_ms);
    }
    let panic = mem.panic_until_ms.is_some_and(|u| now_ms < u);
    if !panic {
        mem.panic_until_ms = None;
    }

    let stable_wanted = nodes_for(stable_demand, p.target_per_node);
    let panic_wanted = nodes_for(panic_demand, p.target_per_node);
    let mut wanted = if panic {
        // In panic: the short window, and a saturated primary asks for one more node
        // than are ready whatever the demand figure says — once the last one asked for
        // is ready (nodes take longer than a pass to start: no runaway to the maximum).
        let more = if saturated && last.ready >= current {
            last.ready + 1
        } else {
            0
        };
        stable_wanted.max(panic_wanted).max(more)
    } else {
        stable_wanted
    };
    // Tolerance: no change while the demand is within it of the current capacity.
    let load_ratio = stable_demand / (f64::from(current.max(1)) * p.target_per_node);
    if !panic && current > 0 && (load_ratio - 1.0).abs() <= p.tolerance {
        wanted = current;
    }

    // Pre-scale before the window opens: the crowd arrives as a step.
    let prescale = p
        .starts_at_ms
        .is_some_and(|s| now_ms < s && now_ms >= s - p.prescale_lead_ms);
    if prescale {
        wanted = wanted.max(p.prescale_replicas);
    }
    d.wanted = wanted;
    d.limited = wanted > max;
    d.mode = if panic {
        Mode::Panic
    } else if prescale {
        Mode::PreScale
    } else {
        Mode::Stable
    };

    mem.recommendations.push_back((now_ms, wanted));
    while mem
        .recommendations
        .front()
        .is_some_and(|(at, _)| *at <= now_ms - p.scale_down_stabilization_ms)
    {
        mem.recommendations.pop_front();
    }

    let target = clamp(wanted);
    d.desired = if target > current {
        current + (target - current).min(p.scale_up_step_max.max(1))
    } else if target < current {
        let highest = mem
            .recommendations
            .iter()
            .map(|(_, w)| *w)
            .max()
            .unwrap_or(current);
        if let Some(why) = p.down_held {
            d.down_blocked = Some(why);
            current
        } else if panic {
            d.down_blocked = Some("panic");
            current
        } else if prescale {
            d.down_blocked = Some("pre-scale");
            current
        } else if let Some(why) = fresh {
            d.down_blocked = Some(why);
            current
        } else if highest >= current
            || mem
                .changed_ms
                .is_some_and(|c| now_ms - c < p.scale_down_stabilization_ms)
        {
            d.down_blocked = Some("stabilisation window");
            current
        } else {
            current - 1
        }
    } else {
        if wanted < current && current == floor {
            d.down_blocked = Some("floor");
        }
        current
    };
    d.desired = clamp(d.desired);
    if d.desired != current {
        mem.changed_ms = Some(now_ms);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params() -> Params {
        test_params()
    }

    fn sample(at_ms: i64, demand: f64, ready: u32) -> Sample {
        Sample {
            at_ms,
            demand_per_s: demand,
            answered: ready,
            ready,
            primary_refused: false,
            primary_inflight_ratio: 0.0,
        }
    }

    /// Runs a second-by-second load `demand(t_s)` from `start` nodes for `seconds`,
    /// applying every decision at once (as the StatefulSet would, all nodes ready).
    fn run(p: &Params, start: u32, seconds: i64, demand: impl Fn(i64) -> f64) -> Vec<Decision> {
        let mut mem = Memory::default();
        let mut current = start;
        let mut out = Vec::new();
        for t in 0..seconds {
            let now = t * 1000;
            mem.record(sample(now, demand(t), current), 120_000);
            let d = decide(&mut mem, p, current, now);
            current = d.desired;
            out.push(d);
        }
        out
    }

    #[test]
    fn table() {
        // (demand/s, nodes, ready, refused) → desired after a full stable window at it.
        let cases = [
            (
                250.0,
                3,
                3,
                false,
                3,
                "within tolerance of 3×100? no: 250 → 3 nodes",
            ),
            (400.0, 3, 3, false, 4, "400/s asks for 4"),
            (
                1000.0,
                3,
                3,
                false,
                6,
                "1000/s: panic (≥2× capacity), +3, pinned at max 6",
            ),
            (
                305.0,
                3,
                3,
                false,
                3,
                "305/s within the 10% tolerance of 300",
            ),
            (
                10.0,
                3,
                3,
                false,
                3,
                "low load: the first window after start holds",
            ),
            (
                150.0,
                2,
                2,
                true,
                3,
                "a refusing primary: panic, one more node",
            ),
        ];
        for (demand, nodes, ready, refused, want, why) in cases {
            let p = params();
            let mut mem = Memory::default();
            for t in 0..30 {
                let mut s = sample(t * 1000, demand, ready);
                s.primary_refused = refused;
                mem.record(s, 120_000);
            }
            let d = decide(&mut mem, &p, nodes, 29_000);
            assert_eq!(d.desired, want, "{why}: {d:?}");
        }
    }

    #[test]
    fn a_ramp_scales_up_in_steps_then_down_one_at_a_time_after_the_window() {
        let p = params();
        // 100/s, then 500/s for a minute, then 50/s.
        let ds = run(&p, 1, 240, |t| match t {
            0..40 => 100.0,
            40..100 => 500.0,
            _ => 50.0,
        });
        let at = |s: usize| ds[s].desired;
        assert_eq!(at(39), 1, "100/s is one node's worth");
        // Panic at 500/s (5× one node's capacity): up in a step, not one by one.
        let first_up = (40..100).find(|&s| at(s) > 1).unwrap();
        assert!(first_up <= 42, "reacted at {first_up}s");
        assert!(ds[first_up].mode == Mode::Panic && ds[first_up].panic_started);
        assert!(
            at(first_up) >= 3,
            "a step, not one node: {:?}",
            ds[first_up]
        );
        let at_five = (40..100).find(|&s| at(s) == 5).unwrap();
        assert!(at_five <= 45, "5 nodes only at {at_five}s");
        assert_eq!(at(99), 5, "500/s holds 5");
        // Down: not before the panic and the stabilisation window are over, one at a time.
        let first_down = (100..240).find(|&s| at(s) < 5).unwrap();
        assert!(
            first_down >= 130,
            "scaled down at {first_down}s, inside the window"
        );
        let mut last_down = None;
        for s in first_down..239 {
            assert!(at(s) + 1 >= at(s - 1), "more than one node removed at {s}s");
            if at(s) < at(s - 1) {
                if let Some(l) = last_down {
                    assert!(
                        s - l >= 30,
                        "scale-downs at {l}s and {s}s: closer than the window"
                    );
                }
                last_down = Some(s);
            }
        }
        assert_eq!(at(239), 1, "back to one node at 50/s");
    }

    #[test]
    fn a_new_leader_waits_one_window_before_scaling_down() {
        let p = params();
        let ds = run(&p, 4, 40, |_| 20.0);
        assert!(ds[..29].iter().all(|d| d.desired == 4), "{:?}", ds[28]);
        assert_eq!(ds[10].down_blocked, Some("a new leader's first window"));
        assert!(ds[39].desired < 4);
    }

    /// A new leader knows nothing of when the count last changed: it waits the longer
    /// of the stable and the stabilisation windows before a scale-down, after the
    /// sale's end too (a crash-looping operator removed a node per restart there).
    /// Before, the stable window alone, and after the end no wait at all.
    #[test]
    fn a_new_leader_waits_the_longer_window_after_the_end_too() {
        let mut p = params();
        p.scale_down_stabilization_ms = 60_000;
        let ds = run(&p, 4, 70, |_| 20.0);
        assert!(ds[..59].iter().all(|d| d.desired == 4), "{:?}", ds[45]);
        assert_eq!(ds[45].down_blocked, Some("a new leader's first window"));
        assert!(ds[69].desired < 4);
        p.ends_at_ms = Some(0);
        let ds = run(&p, 4, 70, |_| 20.0);
        assert_eq!((ds[0].mode, ds[0].desired), (Mode::Ended, 4));
        assert!(ds[..59].iter().all(|d| d.desired == 4), "{:?}", ds[30]);
        assert_eq!(ds[69].desired, 3, "one node down once the window passed");
    }

    /// While the primary fails its checks (before a failover begins), no scale-down:
    /// the failover may need the very secondary it would remove. Scale-ups go on.
    #[test]
    fn a_failing_primary_holds_scale_downs_not_scale_ups() {
        let mut p = params();
        p.down_held = Some("a failing primary");
        let ds = run(&p, 4, 100, |_| 20.0);
        assert!(ds.iter().all(|d| d.desired == 4), "{:?}", ds[99]);
        assert_eq!(ds[99].down_blocked, Some("a failing primary"));
        let ds = run(&p, 1, 5, |_| 350.0);
        assert!(ds[4].desired > 1, "{:?}", ds[4]);
        // A maxReplicas lowered below the count waits too, whatever the mode (with
        // samples, without them, after the end); once the primary is well, it applies.
        p.max = 2;
        for ends in [None, Some(0)] {
            p.ends_at_ms = ends;
            let ds = run(&p, 4, 5, |_| 20.0);
            assert!(ds.iter().all(|d| d.desired == 4), "{ends:?}: {:?}", ds[4]);
            assert_eq!(ds[4].down_blocked, Some("a failing primary"));
        }
        p.ends_at_ms = None;
        let mut mem = Memory::default();
        let blind = decide(&mut mem, &p, 4, 0);
        assert_eq!((blind.mode, blind.desired), (Mode::Blind, 4));
        assert_eq!(blind.down_blocked, Some("a failing primary"));
        p.down_held = None;
        assert_eq!(decide(&mut mem, &p, 4, 0).desired, 2);
    }

    /// A hold (a failover or a switchover) starts the window again: the outage's
    /// samples (demand near zero: the crowd could not buy) must not scale the sale
    /// down the moment the new primary sells.
    #[test]
    fn no_scale_down_for_a_window_after_a_hold() {
        let p = params();
        let mut mem = Memory::default();
        for t in 0..100 {
            mem.record(sample(t * 1000, 20.0, 4), 120_000);
        }
        mem.hold(100_000);
        let d = decide(&mut mem, &p, 4, 101_000);
        assert_eq!(
            (d.desired, d.down_blocked),
            (4, Some("the window after a failover"))
        );
        mem.record(sample(131_000, 20.0, 4), 120_000);
        assert_eq!(decide(&mut mem, &p, 4, 131_000).desired, 3);
    }

    #[test]
    fn pre_scale_before_the_window_and_back_to_min_after_it() {
        let mut p = params();
        p.starts_at_ms = Some(100_000);
        p.ends_at_ms = Some(200_000);
        p.prescale_replicas = 4;
        let ds = run(&p, 1, 260, |_| 10.0);
        assert_eq!(ds[30].desired, 1, "too early");
        assert_eq!(ds[40].mode, Mode::PreScale);
        assert_eq!(
            ds[41].desired, 4,
            "pre-scaled a minute before the start (in one step of 4)"
        );
        assert_eq!(ds[99].desired, 4);
        assert_eq!(ds[200].mode, Mode::Ended);
        assert_eq!(ds[259].desired, 1, "back to the minimum after the end");
    }

    #[test]
    fn blind_holds_and_floors_hold() {
        let mut p = params();
        p.floor = 3; // the primary is pod 2
        let mut mem = Memory::default();
        for t in 0..60 {
            let mut s = sample(t * 1000, 0.0, 4);
            s.answered = 1; // of 4
            mem.record(s, 120_000);
        }
        let d = decide(&mut mem, &p, 4, 59_000);
        assert_eq!((d.mode, d.desired), (Mode::Blind, 4));
        let ds = run(&p, 4, 200, |_| 0.0);
        assert_eq!(ds[199].desired, 3, "never below the primary's ordinal + 1");
    }

    #[test]
    fn a_saturated_primary_adds_one_node_as_the_last_becomes_ready() {
        let p = params();
        let mut mem = Memory::default();
        let mut current = 1;
        for t in 0..10 {
            // The new node takes longer than these passes to start: ready stays 1.
            let mut s = sample(t * 1000, 50.0, 1);
            s.primary_refused = true;
            mem.record(s, 120_000);
            current = decide(&mut mem, &p, current, t * 1000).desired;
        }
        assert_eq!(
            current, 2,
            "one more than ready, not a climb to the maximum"
        );
    }

    #[test]
    fn after_the_window_down_to_the_minimum_one_node_per_stabilisation_window() {
        let mut p = params();
        p.ends_at_ms = Some(10_000);
        let ds = run(&p, 5, 200, |_| 0.0);
        let downs: Vec<usize> = (1..200)
            .filter(|&s| ds[s].desired < ds[s - 1].desired)
            .collect();
        assert_eq!(ds[199].desired, 1);
        assert!(
            downs.windows(2).all(|w| w[1] - w[0] >= 30),
            "downs at {downs:?}"
        );
    }

    proptest! {
        #[test]
        fn always_within_bounds_and_floors(
            levels in proptest::collection::vec(0.0f64..1500.0, 1..8),
            min in 1u32..4, extra in 0u32..6, floor in 1u32..5, start in 1u32..10,
            refused in proptest::collection::vec(proptest::bool::weighted(0.05), 160),
            stabilization in 0i64..60_000,
        ) {
            let mut p = params();
            p.scale_down_stabilization_ms = stabilization;
            p.min = min;
            p.max = min + extra;
            p.floor = floor;
            let mut mem = Memory::default();
            let mut current = start;
            // Steps of load, 20 s each: ramps, drops, calm.
            let demands: Vec<f64> = levels.iter().flat_map(|l| [*l; 20]).collect();
            for (t, dmd) in demands.iter().enumerate() {
                let now = t as i64 * 1000;
                let mut s = sample(now, *dmd, current);
                s.primary_refused = refused[t];
                mem.record(s, 120_000);
                let d = decide(&mut mem, &p, current, now);
                let lo = min.max(floor).min(p.max.max(floor));
                prop_assert!(d.desired >= lo && d.desired <= p.max.max(lo), "{d:?} out of [{lo}, {}]", p.max);
                if d.mode == Mode::Panic && d.desired < current {
                    prop_assert!(current > p.max.max(lo), "scaled down in panic: {d:?}");
                }
                prop_assert!(d.desired <= current.max(lo) + 4, "a step larger than 4: {d:?}");
                current = d.desired;
            }
        }

        #[test]
        fn constant_load_converges_with_at_most_one_change(
            demand in 0.0f64..800.0, start in 1u32..7,
        ) {
            let p = params();
            let ds = run(&p, start, 300, |_| demand);
            // Once the steps down (one per window) are done, every decision is the same.
            let settled: Vec<u32> = ds[240..].iter().map(|d| d.desired).collect();
            prop_assert!(settled.windows(2).all(|w| w[0] == w[1]), "still moving: {settled:?}");
            // And it never flaps: the count moves in one direction only.
            let counts: Vec<u32> = ds.iter().map(|d| d.desired).collect();
            let ups = counts.windows(2).any(|w| w[1] > w[0]);
            let downs = counts.windows(2).any(|w| w[1] < w[0]);
            prop_assert!(!(ups && downs), "up and down at a constant load: {counts:?}");
        }
    }
}
