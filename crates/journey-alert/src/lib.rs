//! journey-alert: drop-off alerts evaluated inside journeyd (SPEC §8).
//!
//! Per touchpoint, the drop-off rate of a recent window is compared with a baseline (the same
//! window a day earlier, or a trailing average). A touchpoint whose rate breaches both
//! thresholds with enough sessions turns *pending*, *firing* once it has breached for the
//! `for` duration, and *resolved* when it stops breaching, as Prometheus alerts do.
//!
//! Time is event time, passed in: sessions are counted when they close, so the recent window
//! ends where every session in it has closed (see [`Windows::at`]). [`Evaluator`] is pure;
//! [`notify`] pushes state changes to Alertmanager or a webhook.

pub mod notify;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use journey_core::agg::Aggregates;
use journey_core::query::{touchpoints, Include, Summary};
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

/// One touchpoint's counts in both windows.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub touchpoint: String,
    pub phase: Option<String>,
    pub sessions: u64,
    pub drop_offs: u64,
    pub baseline_sessions: u64,
    pub baseline_drop_offs: u64,
}

/// Counts per touchpoint in both windows, merged over the partials.
pub fn observe(parts: &[Arc<Aggregates>], rules: &Rules, w: &Windows) -> Vec<Observation> {
    let collect = |(from, to): (Millis, Millis)| {
        let s = Summary::collect(
            parts.iter().map(|p| p.as_ref()),
            from,
            to,
            &Include::default(),
        );
        touchpoints(&s, rules)
    };
    let recent = collect(w.recent);
    let baseline: BTreeMap<String, (u64, u64)> = collect(w.baseline)
        .into_iter()
        .map(|t| (t.name, (t.sessions, t.drop_offs)))
        .collect();
    recent
        .into_iter()
        .map(|t| {
            let (bs, bd) = baseline.get(&t.name).copied().unwrap_or_default();
            Observation {
                touchpoint: t.name,
                phase: t.phase,
                sessions: t.sessions,
                drop_offs: t.drop_offs,
                baseline_sessions: bs,
                baseline_drop_offs: bd,
            }
        })
        .collect()
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

/// One touchpoint's alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
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
    alerts: BTreeMap<String, Alert>,
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
                .map(|a| (a.touchpoint.clone(), a))
                .collect(),
        }
    }

    pub fn config(&self) -> &AlertConfig {
        &self.cfg
    }

    /// Whether an observation breaches the thresholds.
    pub fn breaches(&self, o: &Observation) -> bool {
        if o.sessions < self.cfg.min_sessions || o.baseline_sessions < self.cfg.min_sessions {
            return false;
        }
        let now = rate(o.drop_offs, o.sessions);
        let base = rate(o.baseline_drop_offs, o.baseline_sessions);
        // A rate exactly on a threshold breaches it, whatever the float rounding.
        const EPS: f64 = 1e-9;
        now + EPS >= base * self.cfg.threshold_relative
            && now + EPS >= base + self.cfg.threshold_absolute
    }

    fn watched(&self, touchpoint: &str) -> bool {
        self.cfg.touchpoints.is_empty() || self.cfg.touchpoints.iter().any(|t| t == touchpoint)
    }

    /// Advances every touchpoint's alert to evaluation time `now` and returns the changes.
    /// A pending alert that stops breaching is dropped silently, as in Prometheus.
    pub fn evaluate(&mut self, now: Millis, observations: &[Observation]) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut seen = Vec::new();
        let watched: Vec<&Observation> = observations
            .iter()
            .filter(|o| self.watched(&o.touchpoint))
            .collect();
        for o in watched {
            seen.push(o.touchpoint.clone());
            let breach = self.breaches(o);
            let (r, b) = (
                rate(o.drop_offs, o.sessions),
                rate(o.baseline_drop_offs, o.baseline_sessions),
            );
            let prev = self.alerts.get(&o.touchpoint).map(|a| a.state);
            match (prev, breach) {
                (None | Some(State::Resolved), true) => {
                    let mut a = Alert {
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
                    self.alerts.insert(o.touchpoint.clone(), a);
                }
                (Some(state @ (State::Pending | State::Firing)), true) => {
                    let Some(a) = self.alerts.get_mut(&o.touchpoint) else {
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
                    self.alerts.remove(&o.touchpoint);
                }
                (Some(State::Firing), false) => {
                    if let Some(a) = self.alerts.get_mut(&o.touchpoint) {
                        changes.push(resolve(a, now));
                    }
                }
                (None | Some(State::Resolved), false) => {}
            }
        }
        // A touchpoint gone from the rules can no longer breach.
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

    /// Every listed alert: firing first, then pending, then resolved; by touchpoint within.
    pub fn alerts(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self.alerts.values().cloned().collect();
        v.sort_by_key(|a| {
            (
                match a.state {
                    State::Firing => 0,
                    State::Pending => 1,
                    State::Resolved => 2,
                },
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
    let obs = observe(parts, rules, &w);
    let changes = ev.evaluate(end, &obs);
    let rates = obs
        .iter()
        .filter(|o| ev.watched(&o.touchpoint))
        .map(|o| {
            (
                o.touchpoint.clone(),
                rate(o.drop_offs, o.sessions),
                rate(o.baseline_drop_offs, o.baseline_sessions),
            )
        })
        .collect();
    board.publish(Report {
        evaluated_at: Some(end),
        alerts: ev.alerts(),
        rates,
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
        }
    }

    fn obs(tp: &str, sessions: u64, drop_offs: u64, bs: u64, bd: u64) -> Observation {
        Observation {
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
