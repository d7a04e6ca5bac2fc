//! journey-alert: drop-off and conversion alerts evaluated inside journeyd (SPEC §8).
//!
//! Per touchpoint, the drop-off rate of a recent window is compared with a baseline (the same
//! window a day earlier, or a trailing average). A touchpoint whose rate breaches both
//! thresholds with enough sessions turns *pending*, *firing* once it has breached for the
//! `for` duration, and *resolved* when it stops breaching, as Prometheus alerts do. Per phase,
//! the conversion of the journeys that reached it in the window ([`ConversionAlerts`]) is
//! compared the same way and alerts when it falls, with the same states and delivery.
//!
//! Time is event time, passed in: sessions are counted when they close, so the recent window
//! ends where every session in it has closed (see [`Windows::at`]). [`Evaluator`] is pure;
//! [`notify`] pushes state changes to Alertmanager or a webhook.

pub mod notify;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use journey_core::agg::Aggregates;
use journey_core::query::{touchpoints, Include, SegmentFilter, Summary};
use journey_core::time::{Millis, DAY};
use journey_core::Rules;
use serde::{Deserialize, Serialize};

/// What the recent rate is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// The same window one day earlier (daily seasonality).
    DayBefore,
    /// The average over this long before the recent window.
    Trailing(Millis),
}

/// What an alert watches.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A touchpoint's drop-off rate rises.
    #[default]
    DropOff,
    /// A phase's conversion falls.
    Conversion,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::DropOff => "drop_off",
            Kind::Conversion => "conversion",
        }
    }
}

/// Which conversion of a phase conversion alerts watch (`alerts.conversion`). Both are flows
/// over the window, from the journeys that *reached* phases in it (bucketed by the time they
/// reached them, as time to convert is: docs/semantics.md §7), so that the recent window and
/// its baseline are measured alike; a cohort measure (journeys by start) would always look
/// worse for the recent window, whose journeys have had less time to convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversionAlerts {
    /// No conversion alerts.
    Off,
    /// Phase k: journeys that reached phase k+1 in the window / those that reached phase k
    /// (the funnel's step conversion of phase k); every phase but the last.
    Step,
    /// Phase k: journeys that reached phase k in the window / journeys that started in it
    /// (reached the first phase); every phase but the first.
    FromStart,
}

/// How alerts are evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertConfig {
    pub window: Millis,
    pub baseline: Baseline,
    /// The recent rate must be at least `baseline × threshold_relative` ...
    pub threshold_relative: f64,
    /// ... and at least `baseline + threshold_absolute`.
    pub threshold_absolute: f64,
    /// Sessions needed in the recent window and in the baseline before a touchpoint is judged.
    pub min_sessions: u64,
    /// How long a breach must last before the alert fires.
    pub for_: Millis,
    /// How long resolved alerts stay listed.
    pub keep_resolved: Millis,
    /// Touchpoints to watch; empty watches all.
    pub touchpoints: Vec<String>,
    /// Phase conversion alerts.
    pub conversion: ConversionAlerts,
    /// The recent conversion must be at most `baseline × conversion_relative` ...
    pub conversion_relative: f64,
    /// ... and at most `baseline − conversion_absolute`.
    pub conversion_absolute: f64,
    /// Phases to watch for conversion alerts; empty watches all.
    pub phases: Vec<String>,
    /// Judge only the journeys of this segment (`alerts.segment`, `DIM:VALUE` of a
    /// `breakdown.segment_dimensions` dimension, issue 17); `None`: all journeys.
    pub segment: Option<SegmentFilter>,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            window: 15 * 60_000,
            baseline: Baseline::DayBefore,
            threshold_relative: 1.5,
            threshold_absolute: 0.05,
            min_sessions: 50,
            for_: 5 * 60_000,
            keep_resolved: 60 * 60_000,
            touchpoints: Vec::new(),
            conversion: ConversionAlerts::Step,
            conversion_relative: 0.8,
            conversion_absolute: 0.05,
            phases: Vec::new(),
            segment: None,
        }
    }
}

/// The recent and baseline ranges, `[from, to)`, for one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub recent: (Millis, Millis),
    pub baseline: (Millis, Millis),
}

impl Windows {
    /// The windows ending at `end`.
    pub fn ending(cfg: &AlertConfig, end: Millis) -> Windows {
        let recent = (end - cfg.window, end);
        let baseline = match cfg.baseline {
            Baseline::DayBefore => (recent.0 - DAY, recent.1 - DAY),
            Baseline::Trailing(len) => (recent.0 - len, recent.0),
        };
        Windows { recent, baseline }
    }

    /// The end of the recent window for the tasks' watermarks (epoch ms): the furthest-behind
    /// watermark less the session gap, by when every session that ended in the window has
    /// closed and been counted (SPEC §3). Tasks that have seen nothing (`Millis::MIN`) are
    /// skipped; `None` before any task has.
    pub fn end_for(watermarks: &[Millis], session_gap: Millis) -> Option<Millis> {
        watermarks
            .iter()
            .copied()
            .filter(|&w| w != Millis::MIN)
            .min()
            .map(|w| w.saturating_sub(session_gap))
    }
}

/// One touchpoint's (or, for conversion, one phase's) counts in both windows.
///
/// For [`Kind::Conversion`], `touchpoint` is the phase's name, `sessions` the journeys that
/// entered the conversion (reached phase k, or started, for [`ConversionAlerts::FromStart`])
/// and `drop_offs` those of them that did not convert: conversion is `1 − drop_offs /
/// sessions`.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub kind: Kind,
    pub touchpoint: String,
    pub phase: Option<String>,
    pub sessions: u64,
    pub drop_offs: u64,
    pub baseline_sessions: u64,
    pub baseline_drop_offs: u64,
}

/// Counts per touchpoint in both windows, merged over the partials; then, unless
/// `conversion` is off, per phase (rules order) the conversion counts. With a `segment`, only
/// its journeys count.
pub fn observe(
    parts: &[Arc<Aggregates>],
    rules: &Rules,
    w: &Windows,
    conversion: ConversionAlerts,
    segment: Option<&SegmentFilter>,
) -> Vec<Observation> {
    let include = Include {
        segment: segment.cloned(),
        ..Include::default()
    };
    let collect = |(from, to): (Millis, Millis)| {
        Summary::collect(parts.iter().map(|p| p.as_ref()), from, to, &include)
    };
    let (recent, base) = (collect(w.recent), collect(w.baseline));
    let baseline: BTreeMap<String, (u64, u64)> = touchpoints(&base, rules)
        .into_iter()
        .map(|t| (t.name, (t.sessions, t.drop_offs)))
        .collect();
    let mut out: Vec<Observation> = touchpoints(&recent, rules)
        .into_iter()
        .map(|t| {
            let (bs, bd) = baseline.get(&t.name).copied().unwrap_or_default();
            Observation {
                kind: Kind::DropOff,
                touchpoint: t.name,
                phase: t.phase,
                sessions: t.sessions,
                drop_offs: t.drop_offs,
                baseline_sessions: bs,
                baseline_drop_offs: bd,
            }
        })
        .collect();
    let phases = rules.phases();
    for (k, phase) in phases.iter().enumerate() {
        let (entered, converted) = match conversion {
            ConversionAlerts::Off => break,
            ConversionAlerts::Step if k + 1 < phases.len() => (k, k + 1),
            ConversionAlerts::FromStart if k > 0 => (0, k),
            _ => continue,
        };
        let counts = |s: &Summary| {
            let reached = |i: usize| {
                s.phases
                    .get(&phases[i])
                    .map_or(0, |a| a.time_to_convert.count())
            };
            // More may convert in a window than entered it (they entered before): no negative
            // non-conversions.
            let n = reached(entered);
            (n, n - reached(converted).min(n))
        };
        let ((n, lost), (bn, blost)) = (counts(&recent), counts(&base));
        out.push(Observation {
            kind: Kind::Conversion,
            touchpoint: phase.clone(),
            phase: Some(phase.clone()),
            sessions: n,
            drop_offs: lost,
            baseline_sessions: bn,
            baseline_drop_offs: blost,
        });
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Firing,
    Resolved,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Firing => "firing",
            State::Resolved => "resolved",
        }
    }
}

/// One touchpoint's drop-off alert, or one phase's conversion alert.
///
/// For [`Kind::Conversion`], `touchpoint` is the phase's name, `sessions` the journeys that
/// entered the conversion in the window, and `drop_off_rate` / `baseline_rate` the shares that
/// did not convert (`1 − conversion`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Absent in alerts saved before conversion alerts existed: those are drop-off alerts.
    #[serde(default)]
    pub kind: Kind,
    pub touchpoint: String,
    pub phase: Option<String>,
    pub state: State,
    /// Of the last evaluation that breached (for resolved alerts: the last one before).
    pub drop_off_rate: f64,
    pub baseline_rate: f64,
    pub sessions: u64,
    pub baseline_sessions: u64,
    /// When the breach began (event time).
    pub active_since: Millis,
    pub fired_at: Option<Millis>,
    pub resolved_at: Option<Millis>,
    pub summary: String,
}

/// A state change worth telling someone about.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub alert: Alert,
    /// The previous state (`None`: the touchpoint had no alert).
    pub from: Option<State>,
}

/// Alert states across evaluations.
#[derive(Debug, Clone)]
pub struct Evaluator {
    cfg: AlertConfig,
    /// By kind and touchpoint (drop-off) or phase (conversion).
    alerts: BTreeMap<(Kind, String), Alert>,
}

fn rate(drop_offs: u64, sessions: u64) -> f64 {
    if sessions == 0 {
        0.0
    } else {
        drop_offs as f64 / sessions as f64
    }
}

fn pct(r: f64) -> String {
    format!("{:.1} %", 100.0 * r)
}

impl Evaluator {
    pub fn new(cfg: AlertConfig) -> Evaluator {
        Evaluator {
            cfg,
            alerts: BTreeMap::new(),
        }
    }

    /// An evaluator that continues from `alerts` ([`Evaluator::alerts`] of another one, e.g.
    /// the previous leader of a consumer group): pending alerts keep counting their `for`
    /// period from when their breach began, and firing ones stay firing without a new
    /// notification.
    pub fn resume(cfg: AlertConfig, alerts: Vec<Alert>) -> Evaluator {
        Evaluator {
            cfg,
            alerts: alerts
                .into_iter()
                .map(|a| ((a.kind, a.touchpoint.clone()), a))
                .collect(),
        }
    }

    pub fn config(&self) -> &AlertConfig {
        &self.cfg
    }

    /// Whether an observation breaches the thresholds: for drop-off, the rate rose to at
    /// least `baseline × threshold_relative` and `baseline + threshold_absolute`; for
    /// conversion, it fell to at most `baseline × conversion_relative` and `baseline −
    /// conversion_absolute`. Both need `min_sessions` (sessions, or journeys entering the
    /// conversion) in each window.
    pub fn breaches(&self, o: &Observation) -> bool {
        if o.sessions < self.cfg.min_sessions || o.baseline_sessions < self.cfg.min_sessions {
            return false;
        }
        let now = rate(o.drop_offs, o.sessions);
        let base = rate(o.baseline_drop_offs, o.baseline_sessions);
        // A rate exactly on a threshold breaches it, whatever the float rounding.
        const EPS: f64 = 1e-9;
        match o.kind {
            Kind::DropOff => {
                now + EPS >= base * self.cfg.threshold_relative
                    && now + EPS >= base + self.cfg.threshold_absolute
            }
            Kind::Conversion => {
                let (now, base) = (1.0 - now, 1.0 - base);
                now <= base * self.cfg.conversion_relative + EPS
                    && now <= base - self.cfg.conversion_absolute + EPS
            }
        }
    }

    fn watched(&self, o: &Observation) -> bool {
        let (list, name) = match o.kind {
            Kind::DropOff => (&self.cfg.touchpoints, &o.touchpoint),
            Kind::Conversion => (&self.cfg.phases, &o.touchpoint),
        };
        list.is_empty() || list.iter().any(|t| t == name)
    }

    /// Advances every touchpoint's alert to evaluation time `now` and returns the changes.
    /// A pending alert that stops breaching is dropped silently, as in Prometheus.
    pub fn evaluate(&mut self, now: Millis, observations: &[Observation]) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut seen = Vec::new();
        let watched: Vec<&Observation> = observations.iter().filter(|o| self.watched(o)).collect();
        for o in watched {
            let key = (o.kind, o.touchpoint.clone());
            seen.push(key.clone());
            let breach = self.breaches(o);
            let (r, b) = (
                rate(o.drop_offs, o.sessions),
                rate(o.baseline_drop_offs, o.baseline_sessions),
            );
            let prev = self.alerts.get(&key).map(|a| a.state);
            match (prev, breach) {
                (None | Some(State::Resolved), true) => {
                    let mut a = Alert {
                        kind: o.kind,
                        touchpoint: o.touchpoint.clone(),
                        phase: o.phase.clone(),
                        state: State::Pending,
                        drop_off_rate: r,
                        baseline_rate: b,
                        sessions: o.sessions,
                        baseline_sessions: o.baseline_sessions,
                        active_since: now,
                        fired_at: None,
                        resolved_at: None,
                        summary: String::new(),
                    };
                    if self.cfg.for_ == 0 {
                        a.state = State::Firing;
                        a.fired_at = Some(now);
                    }
                    a.summary = summary(&a);
                    changes.push(Change {
                        alert: a.clone(),
                        from: prev,
                    });
                    self.alerts.insert(key, a);
                }
                (Some(state @ (State::Pending | State::Firing)), true) => {
                    let Some(a) = self.alerts.get_mut(&key) else {
                        continue;
                    };
                    a.drop_off_rate = r;
                    a.baseline_rate = b;
                    a.sessions = o.sessions;
                    a.baseline_sessions = o.baseline_sessions;
                    if state == State::Pending && now - a.active_since >= self.cfg.for_ {
                        a.state = State::Firing;
                        a.fired_at = Some(now);
                    }
                    a.summary = summary(a);
                    if a.state != state {
                        changes.push(Change {
                            alert: a.clone(),
                            from: Some(state),
                        });
                    }
                }
                (Some(State::Pending), false) => {
                    self.alerts.remove(&key);
                }
                (Some(State::Firing), false) => {
                    if let Some(a) = self.alerts.get_mut(&key) {
                        changes.push(resolve(a, now));
                    }
                }
                (None | Some(State::Resolved), false) => {}
            }
        }
        // A touchpoint or phase gone from the rules (or conversion alerts turned off) can no
        // longer breach.
        for (name, a) in self.alerts.iter_mut() {
            if !seen.contains(name) && a.state == State::Firing {
                changes.push(resolve(a, now));
            }
        }
        let keep = self.cfg.keep_resolved;
        self.alerts.retain(|name, a| match a.state {
            State::Resolved => a.resolved_at.is_some_and(|t| now - t < keep),
            State::Pending => seen.contains(name),
            State::Firing => true,
        });
        changes
    }

    /// Every listed alert: firing first, then pending, then resolved; drop-off before
    /// conversion, then by touchpoint or phase within.
    pub fn alerts(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self.alerts.values().cloned().collect();
        v.sort_by_key(|a| {
            (
                match a.state {
                    State::Firing => 0,
                    State::Pending => 1,
                    State::Resolved => 2,
                },
                a.kind,
                a.touchpoint.clone(),
            )
        });
        v
    }
}

/// Moves a firing alert to resolved.
fn resolve(a: &mut Alert, now: Millis) -> Change {
    a.state = State::Resolved;
    a.resolved_at = Some(now);
    a.summary = summary(a);
    Change {
        alert: a.clone(),
        from: Some(State::Firing),
    }
}

fn summary(a: &Alert) -> String {
    if a.kind == Kind::Conversion {
        let phase = a.phase.as_deref().unwrap_or(&a.touchpoint);
        return match a.state {
            State::Resolved => format!(
                "conversion of {phase} is back within its baseline ({} before it resolved, baseline {})",
                pct(1.0 - a.drop_off_rate),
                pct(1.0 - a.baseline_rate)
            ),
            _ => format!(
                "conversion of {phase} fell to {} of {} journeys (baseline {} of {})",
                pct(1.0 - a.drop_off_rate),
                a.sessions,
                pct(1.0 - a.baseline_rate),
                a.baseline_sessions
            ),
        };
    }
    match a.state {
        State::Resolved => format!(
            "drop-off at {} is back within its baseline ({} before it resolved, baseline {})",
            a.touchpoint,
            pct(a.drop_off_rate),
            pct(a.baseline_rate)
        ),
        _ => format!(
            "drop-off at {} rose to {} of {} sessions (baseline {} of {})",
            a.touchpoint,
            pct(a.drop_off_rate),
            a.sessions,
            pct(a.baseline_rate),
            a.baseline_sessions
        ),
    }
}

/// The latest evaluation, shared with the API and the metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// End of the recent window of the last evaluation (event time).
    pub evaluated_at: Option<Millis>,
    pub alerts: Vec<Alert>,
    /// Every watched touchpoint's recent and baseline rate, for the gauges.
    #[serde(skip)]
    pub rates: Vec<(String, f64, f64)>,
    /// Every watched phase's recent and baseline conversion, for the gauges.
    #[serde(skip)]
    pub conversions: Vec<(String, f64, f64)>,
}

/// Where the evaluator publishes and readers read.
#[derive(Debug, Clone)]
pub struct Board {
    pub config: Arc<AlertConfig>,
    report: Arc<RwLock<Report>>,
}

impl Board {
    pub fn new(config: AlertConfig) -> Board {
        Board {
            config: Arc::new(config),
            report: Arc::new(RwLock::new(Report::default())),
        }
    }

    pub fn report(&self) -> Report {
        self.report
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn publish(&self, report: Report) {
        *self.report.write().unwrap_or_else(|p| p.into_inner()) = report;
    }
}

/// One evaluation over the current partials: observes, advances `ev`, publishes to `board`
/// and returns the changes. `None` while no event has been seen.
pub fn tick(
    ev: &mut Evaluator,
    board: &Board,
    parts: &[Arc<Aggregates>],
    rules: &Rules,
    watermarks: &[Millis],
    session_gap: Millis,
) -> Option<Vec<Change>> {
    let end = Windows::end_for(watermarks, session_gap)?;
    let w = Windows::ending(ev.config(), end);
    let c = ev.config();
    let obs = observe(parts, rules, &w, c.conversion, c.segment.as_ref());
    let changes = ev.evaluate(end, &obs);
    let rates = |kind: Kind| {
        obs.iter()
            .filter(|o| o.kind == kind && ev.watched(o))
            .map(|o| {
                let (r, b) = (
                    rate(o.drop_offs, o.sessions),
                    rate(o.baseline_drop_offs, o.baseline_sessions),
                );
                match kind {
                    Kind::DropOff => (o.touchpoint.clone(), r, b),
                    Kind::Conversion => (o.touchpoint.clone(), 1.0 - r, 1.0 - b),
                }
            })
            .collect()
    };
    board.publish(Report {
        evaluated_at: Some(end),
        alerts: ev.alerts(),
        rates: rates(Kind::DropOff),
        conversions: rates(Kind::Conversion),
    });
    Some(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Millis = 60_000;

    fn cfg() -> AlertConfig {
        AlertConfig {
            window: 15 * MIN,
            baseline: Baseline::DayBefore,
            threshold_relative: 1.5,
            threshold_absolute: 0.05,
            min_sessions: 50,
            for_: 10 * MIN,
            keep_resolved: 30 * MIN,
            touchpoints: Vec::new(),
            ..AlertConfig::default()
        }
    }

    fn obs(tp: &str, sessions: u64, drop_offs: u64, bs: u64, bd: u64) -> Observation {
        Observation {
            kind: Kind::DropOff,
            touchpoint: tp.into(),
            phase: Some("decision".into()),
            sessions,
            drop_offs,
            baseline_sessions: bs,
            baseline_drop_offs: bd,
        }
    }

    #[test]
    fn the_window_ends_at_the_furthest_behind_task_less_the_gap() {
        assert_eq!(Windows::end_for(&[], 30 * MIN), None);
        assert_eq!(Windows::end_for(&[Millis::MIN], 30 * MIN), None);
        // A task that has seen nothing does not hold the window back; the slowest one does.
        let wm = [Millis::MIN, 500 * MIN, 200 * MIN, Millis::MAX];
        assert_eq!(Windows::end_for(&wm, 30 * MIN), Some(170 * MIN));
    }

    #[test]
    fn thresholds_guard_and_baseline() {
        let ev = Evaluator::new(cfg());
        // 40 % against 10 %: both thresholds.
        assert!(ev.breaches(&obs("cart", 100, 40, 100, 10)));
        // Too few sessions now, or in the baseline.
        assert!(!ev.breaches(&obs("cart", 49, 40, 100, 10)));
        assert!(!ev.breaches(&obs("cart", 100, 40, 49, 10)));
        // Relative met (3×) but absolute not (+4 points).
        assert!(!ev.breaches(&obs("cart", 100, 6, 100, 2)));
        // Absolute met (+10 points) but relative not (1.2×).
        assert!(!ev.breaches(&obs("cart", 100, 60, 100, 50)));
        // Exactly on both thresholds counts.
        assert!(ev.breaches(&obs("cart", 100, 15, 100, 10)));
    }

    #[test]
    fn pending_firing_resolved_then_forgotten() {
        let mut ev = Evaluator::new(cfg());
        let t0 = 1_000 * MIN;
        assert!(ev.evaluate(t0, &[obs("cart", 100, 10, 100, 10)]).is_empty());
        assert!(ev.alerts().is_empty());

        let c = ev.evaluate(t0 + MIN, &[obs("cart", 100, 40, 100, 10)]);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].from, c[0].alert.state), (None, State::Pending));
        assert_eq!(ev.alerts()[0].active_since, t0 + MIN);

        // Still pending just before `for`, firing at it.
        assert!(ev
            .evaluate(t0 + 10 * MIN, &[obs("cart", 100, 40, 100, 10)])
            .is_empty());
        let c = ev.evaluate(t0 + 11 * MIN, &[obs("cart", 120, 60, 100, 10)]);
        assert_eq!(
            (c[0].from, c[0].alert.state),
            (Some(State::Pending), State::Firing)
        );
        let a = &ev.alerts()[0];
        assert_eq!(a.fired_at, Some(t0 + 11 * MIN));
        assert_eq!((a.drop_off_rate, a.sessions), (0.5, 120));
        assert!(a.summary.contains("50.0 %"), "{}", a.summary);

        let c = ev.evaluate(t0 + 20 * MIN, &[obs("cart", 100, 10, 100, 10)]);
        assert_eq!(
            (c[0].from, c[0].alert.state),
            (Some(State::Firing), State::Resolved)
        );
        assert_eq!(ev.alerts()[0].resolved_at, Some(t0 + 20 * MIN));
        // Listed for keep_resolved, then gone.
        ev.evaluate(t0 + 49 * MIN, &[obs("cart", 100, 10, 100, 10)]);
        assert_eq!(ev.alerts().len(), 1);
        ev.evaluate(t0 + 50 * MIN, &[obs("cart", 100, 10, 100, 10)]);
        assert!(ev.alerts().is_empty());
    }

    #[test]
    fn a_resumed_evaluator_continues_where_the_previous_one_stopped() {
        let mut old = Evaluator::new(cfg());
        let t0 = 1_000 * MIN;
        old.evaluate(
            t0,
            &[obs("cart", 100, 40, 100, 10), obs("blog", 100, 40, 100, 10)],
        );
        old.evaluate(t0 + 5 * MIN, &[obs("cart", 100, 40, 100, 10)]);
        let c = old.evaluate(
            t0 + 10 * MIN,
            &[obs("cart", 100, 40, 100, 10), obs("blog", 100, 40, 100, 10)],
        );
        let states: Vec<_> = c
            .iter()
            .map(|c| (c.alert.touchpoint.as_str(), c.alert.state))
            .collect();
        assert_eq!(states, [("cart", State::Firing), ("blog", State::Pending)]);
        // `cart` is firing, `blog` pending again since +10. Handed over through JSON.
        let text = serde_json::to_string(&old.alerts()).unwrap();
        let mut new = Evaluator::resume(cfg(), serde_json::from_str(&text).unwrap());
        assert_eq!(new.alerts(), old.alerts());
        let both = [obs("cart", 100, 40, 100, 10), obs("blog", 100, 40, 100, 10)];
        // Firing stays firing: no change to notify.
        assert!(new.evaluate(t0 + 15 * MIN, &both).is_empty());
        // blog's `for` counts from +10, not from the handover.
        let c = new.evaluate(t0 + 20 * MIN, &both);
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].alert.touchpoint.as_str(), c[0].from, c[0].alert.state),
            ("blog", Some(State::Pending), State::Firing)
        );
    }

    #[test]
    fn a_short_breach_never_fires() {
        let mut ev = Evaluator::new(cfg());
        ev.evaluate(0, &[obs("cart", 100, 40, 100, 10)]);
        let c = ev.evaluate(5 * MIN, &[obs("cart", 100, 10, 100, 10)]);
        assert!(c.is_empty(), "a pending alert ends silently: {c:?}");
        assert!(ev.alerts().is_empty());
        // A new breach starts a new pending period.
        ev.evaluate(6 * MIN, &[obs("cart", 100, 40, 100, 10)]);
        ev.evaluate(15 * MIN, &[obs("cart", 100, 40, 100, 10)]);
        assert_eq!(ev.alerts()[0].state, State::Pending);
    }

    #[test]
    fn zero_for_fires_at_once_and_refire_after_resolve() {
        let mut ev = Evaluator::new(AlertConfig { for_: 0, ..cfg() });
        let c = ev.evaluate(0, &[obs("cart", 100, 40, 100, 10)]);
        assert_eq!((c[0].from, c[0].alert.state), (None, State::Firing));
        ev.evaluate(MIN, &[obs("cart", 100, 10, 100, 10)]);
        let c = ev.evaluate(2 * MIN, &[obs("cart", 100, 40, 100, 10)]);
        assert_eq!(
            (c[0].from, c[0].alert.state),
            (Some(State::Resolved), State::Firing)
        );
    }

    #[test]
    fn only_watched_touchpoints_and_removed_ones_resolve() {
        let mut ev = Evaluator::new(AlertConfig {
            for_: 0,
            touchpoints: vec!["cart".into()],
            ..cfg()
        });
        ev.evaluate(
            0,
            &[obs("cart", 100, 40, 100, 10), obs("blog", 100, 90, 100, 10)],
        );
        let names: Vec<String> = ev.alerts().into_iter().map(|a| a.touchpoint).collect();
        assert_eq!(names, ["cart"]);
        // The rules no longer have `cart`: its firing alert resolves.
        let c = ev.evaluate(MIN, &[obs("blog", 100, 90, 100, 10)]);
        assert_eq!(c[0].alert.state, State::Resolved);
    }

    fn conv(phase: &str, n: u64, converted: u64, bn: u64, bconverted: u64) -> Observation {
        Observation {
            kind: Kind::Conversion,
            touchpoint: phase.into(),
            phase: Some(phase.into()),
            sessions: n,
            drop_offs: n - converted,
            baseline_sessions: bn,
            baseline_drop_offs: bn - bconverted,
        }
    }

    #[test]
    fn conversion_breaches_when_it_falls_by_both_thresholds() {
        // conversion_relative 0.8, conversion_absolute 0.05, min 50 journeys.
        let ev = Evaluator::new(cfg());
        // 40 % against 60 %: 0.67× and −20 points.
        assert!(ev.breaches(&conv("decision", 100, 40, 100, 60)));
        // Exactly 0.8× and −12 points (48 against 60) counts.
        assert!(ev.breaches(&conv("decision", 100, 48, 100, 60)));
        // 0.85×: not enough relative fall.
        assert!(!ev.breaches(&conv("decision", 100, 51, 100, 60)));
        // 10 % against 14 %: 0.71× but only −4 points.
        assert!(!ev.breaches(&conv("decision", 100, 10, 100, 14)));
        // A rise never breaches; too few journeys are not judged.
        assert!(!ev.breaches(&conv("decision", 100, 90, 100, 60)));
        assert!(!ev.breaches(&conv("decision", 49, 0, 100, 60)));
    }

    #[test]
    fn conversion_alerts_have_their_own_states_next_to_drop_off_alerts() {
        let mut ev = Evaluator::new(cfg());
        let t0 = 1_000 * MIN;
        // A touchpoint and a phase of the same name: two alerts.
        let both = [
            obs("decision", 100, 40, 100, 10),
            conv("decision", 100, 30, 100, 60),
        ];
        let c = ev.evaluate(t0, &both);
        assert_eq!(c.len(), 2);
        assert!(c.iter().all(|c| c.alert.state == State::Pending));
        let c = ev.evaluate(t0 + 10 * MIN, &[both[1].clone()]);
        assert_eq!(
            (c[0].alert.kind, c[0].from, c[0].alert.state),
            (Kind::Conversion, Some(State::Pending), State::Firing)
        );
        let a = ev.alerts();
        assert_eq!(
            a.len(),
            1,
            "the drop-off alert stopped breaching while pending"
        );
        assert_eq!(
            a[0].summary,
            "conversion of decision fell to 30.0 % of 100 journeys (baseline 60.0 % of 100)"
        );
        let c = ev.evaluate(t0 + 11 * MIN, &[conv("decision", 100, 58, 100, 60)]);
        assert_eq!(
            (c[0].alert.kind, c[0].alert.state),
            (Kind::Conversion, State::Resolved)
        );
        // Only watched phases.
        let mut ev = Evaluator::new(AlertConfig {
            phases: vec!["retention".into()],
            ..cfg()
        });
        assert!(ev.evaluate(t0, &[both[1].clone()]).is_empty());
    }

    #[test]
    fn alerts_saved_before_conversion_alerts_read_as_drop_off() {
        let saved = r#"[{"touchpoint":"cart","phase":"decision","state":"firing","drop_off_rate":0.5,
            "baseline_rate":0.1,"sessions":100,"baseline_sessions":100,"active_since":0,
            "fired_at":0,"resolved_at":null,"summary":""}]"#;
        let alerts: Vec<Alert> = serde_json::from_str(saved).unwrap();
        assert_eq!(alerts[0].kind, Kind::DropOff);
        let mut ev = Evaluator::resume(cfg(), alerts);
        // Still breaching: stays firing, nothing to notify.
        assert!(ev
            .evaluate(MIN, &[obs("cart", 100, 50, 100, 10)])
            .is_empty());
    }

    /// Conversion observed from real aggregates: journeys that reached `a` in each window and
    /// those that reached `b` (step), or started (from start), counted by reach time.
    #[test]
    fn observed_conversion_counts_phase_reaches_in_each_window() {
        use journey_core::{EngineConfig, Event, Shard};
        use std::borrow::Cow;
        let rules = Arc::new(
            Rules::from_toml(
                r#"
phases = ["a", "b", "c"]
[[touchpoint]]
name = "x"
phase = "a"
event = "x"
[[touchpoint]]
name = "y"
phase = "b"
event = "y"
"#,
            )
            .unwrap(),
        );
        let mut shard = Shard::new(Arc::new(EngineConfig::default()), rules.clone());
        let end = 1_000 * DAY;
        let ev = |c: String, ts: Millis, name: &'static str| Event {
            event_id: None,
            customer_id: Cow::Owned(c),
            ts,
            source: Cow::Borrowed("web"),
            name: Cow::Borrowed(name),
            attributes: serde_json::json!({}),
        };
        // Baseline (a day before): 100 journeys, 60 reach b; recent: 100, 20 reach b.
        for (day, converting) in [(DAY, 60), (0, 20)] {
            for i in 0..100 {
                let c = format!("{day}-{i}");
                let t = end - day - 10 * MIN + i as Millis;
                shard.apply(&ev(c.clone(), t, "x")).unwrap();
                if i < converting {
                    shard.apply(&ev(c, t + MIN, "y")).unwrap();
                }
            }
        }
        shard.flush();
        let parts = [Arc::new(shard.aggregates().clone())];
        let w = Windows::ending(&cfg(), end);
        let step = observe(&parts, &rules, &w, ConversionAlerts::Step, None);
        let a = step
            .iter()
            .find(|o| o.kind == Kind::Conversion && o.touchpoint == "a")
            .unwrap();
        assert_eq!(
            (
                a.sessions,
                a.drop_offs,
                a.baseline_sessions,
                a.baseline_drop_offs
            ),
            (100, 80, 100, 40)
        );
        assert!(Evaluator::new(cfg()).breaches(a));
        // b's step (to c) and the last phase: b has nobody converting in either window.
        let kinds: Vec<&str> = step
            .iter()
            .filter(|o| o.kind == Kind::Conversion)
            .map(|o| o.touchpoint.as_str())
            .collect();
        assert_eq!(kinds, ["a", "b"], "every phase but the last");
        let from_start = observe(&parts, &rules, &w, ConversionAlerts::FromStart, None);
        let b = from_start
            .iter()
            .find(|o| o.kind == Kind::Conversion && o.touchpoint == "b")
            .unwrap();
        assert_eq!((b.sessions, b.drop_offs), (100, 80));
        assert!(observe(&parts, &rules, &w, ConversionAlerts::Off, None)
            .iter()
            .all(|o| o.kind == Kind::DropOff));
    }

    /// `alerts.segment`: only the segment's journeys count, in both windows.
    #[test]
    fn a_segment_scope_judges_only_its_journeys() {
        use journey_core::{EngineConfig, Event, Shard};
        use std::borrow::Cow;
        let rules = Arc::new(
            Rules::from_toml(
                r#"
phases = ["a"]
[[touchpoint]]
name = "x"
phase = "a"
event = "x"
"#,
            )
            .unwrap(),
        );
        let cfg_engine = EngineConfig {
            breakdowns: vec!["persona".into()],
            segment_dimensions: vec!["persona".into()],
            ..EngineConfig::default()
        };
        let mut shard = Shard::new(Arc::new(cfg_engine), rules.clone());
        let end = 1_000 * DAY;
        // Recent window: 30 `pro` sessions and 70 `saver` ones, one visit each.
        for i in 0..100 {
            let persona = if i < 30 { "pro" } else { "saver" };
            shard
                .apply(&Event {
                    event_id: None,
                    customer_id: Cow::Owned(format!("c{i}")),
                    ts: end - 10 * MIN + i as Millis,
                    source: Cow::Borrowed("web"),
                    name: Cow::Borrowed("x"),
                    attributes: serde_json::json!({ "persona": persona }),
                })
                .unwrap();
        }
        shard.flush();
        let parts = [Arc::new(shard.aggregates().clone())];
        let w = Windows::ending(&cfg(), end);
        let sessions = |segment: Option<&SegmentFilter>| {
            observe(&parts, &rules, &w, ConversionAlerts::Off, segment)
                .iter()
                .find(|o| o.touchpoint == "x")
                .map(|o| o.sessions)
        };
        assert_eq!(sessions(None), Some(100));
        let pro = SegmentFilter::parse("persona:pro").unwrap();
        assert_eq!(sessions(Some(&pro)), Some(30));
        let nobody = SegmentFilter::parse("persona:nobody").unwrap();
        assert_eq!(sessions(Some(&nobody)), Some(0));
    }

    #[test]
    fn windows() {
        let c = cfg();
        let w = Windows::ending(&c, 10 * DAY);
        assert_eq!(w.recent, (10 * DAY - 15 * MIN, 10 * DAY));
        assert_eq!(w.baseline, (9 * DAY - 15 * MIN, 9 * DAY));
        let t = Windows::ending(
            &AlertConfig {
                baseline: Baseline::Trailing(DAY),
                ..c
            },
            10 * DAY,
        );
        assert_eq!(t.baseline, (9 * DAY - 15 * MIN, 10 * DAY - 15 * MIN));
    }
}
