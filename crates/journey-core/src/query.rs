//! Queries over partial aggregates: each partial is summarised for a time range, summaries
//! merge by name (exactly, in any grouping), and reports are computed from the merged summary.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::agg::{
    Aggregates, Bucket, Counters, PhaseAgg, ScoreAgg, TouchpointAgg, EXIT, OTHER_LABEL, START,
};
use crate::rules::Rules;
use crate::sketch::Sketch;
use crate::time::Millis;

pub const START_LABEL: &str = "(start)";
pub const EXIT_LABEL: &str = "(exit)";

/// Name-keyed figures of one time range; the unit that shards and instances merge.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub touchpoints: BTreeMap<String, TouchpointAgg>,
    pub phases: BTreeMap<String, PhaseAgg>,
    pub transitions: BTreeMap<(String, String), u64>,
    /// Breakdown dimension → value → phase → journeys whose furthest phase it is.
    pub breakdowns: BTreeMap<String, BTreeMap<String, BTreeMap<String, i64>>>,
    /// Closed sessions, classified or not.
    pub sessions: u64,
    pub counters: Counters,
}

/// What to include when summarising.
#[derive(Debug, Clone, Default)]
pub struct Include {
    /// Breakdown dimensions to carry (none by default: they cost the most to merge).
    pub breakdowns: Vec<String>,
    /// Only the journeys of this segment (`segment=DIM:VALUE`); `None`: all journeys.
    pub segment: Option<SegmentFilter>,
}

/// One value of a segment dimension (`breakdown.segment_dimensions`): the journeys whose
/// first-touch value of `dimension` is `value` (SPEC §4, docs/semantics.md §4 "Segments").
/// `value` may be `(none)` or `other` (the values beyond `breakdown.max_values`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFilter {
    pub dimension: String,
    pub value: String,
}

impl SegmentFilter {
    /// Parses `DIM:VALUE` (split at the first `:`); `None` without a `:` or with an empty side.
    pub fn parse(s: &str) -> Option<SegmentFilter> {
        let (d, v) = s.split_once(':')?;
        (!d.is_empty() && !v.is_empty()).then(|| SegmentFilter {
            dimension: d.to_string(),
            value: v.to_string(),
        })
    }
}

impl Summary {
    /// Summarises one partial over `[from, to)`.
    pub fn of(agg: &Aggregates, from: Millis, to: Millis, include: &Include) -> Summary {
        let dims: Vec<usize> = agg
            .dimensions
            .iter()
            .enumerate()
            .filter(|(_, d)| include.breakdowns.contains(&d.name))
            .map(|(i, _)| i)
            .collect();
        // With a segment: its position among the partial's segment dimensions and its value
        // id; a value this partial never saw contributes nothing but the counters.
        let segment = match &include.segment {
            None => None,
            Some(f) => {
                let found = agg.segment_dims.iter().enumerate().find_map(|(k, &d)| {
                    let dim = agg.dimensions.get(d).filter(|x| x.name == f.dimension)?;
                    Some((k, dim.values.get(&f.value)?))
                });
                match found {
                    Some(kv) => Some(kv),
                    None => {
                        return Summary {
                            counters: agg.counters.clone(),
                            ..Default::default()
                        }
                    }
                }
            }
        };
        let mut acc = Bucket::default();
        agg.timeline.for_each(from, to, |b| {
            let b = match segment {
                None => Some(b),
                Some((k, v)) => b.segment_of(k, v),
            };
            if let Some(b) = b {
                acc.merge_dims(b, |d| dims.contains(&d));
            }
        });
        let tp_name = |id: u16| match id {
            START => START_LABEL.to_string(),
            EXIT => EXIT_LABEL.to_string(),
            id => agg.touchpoints.name(id).to_string(),
        };
        let mut s = Summary {
            sessions: acc.sessions,
            counters: agg.counters.clone(),
            ..Default::default()
        };
        for (i, t) in acc.touchpoints.into_iter().enumerate() {
            if t != TouchpointAgg::default() {
                s.touchpoints.insert(tp_name(i as u16), t);
            }
        }
        for (i, p) in acc.phases.into_iter().enumerate() {
            if p != PhaseAgg::default() {
                s.phases.insert(agg.phases.name(i as u16).to_string(), p);
            }
        }
        for ((a, b), n) in acc.transitions {
            s.transitions.insert((tp_name(a), tp_name(b)), n);
        }
        for &d in &dims {
            let dim = &agg.dimensions[d];
            let out = s.breakdowns.entry(dim.name.clone()).or_default();
            if let Some(values) = acc.breakdowns.get(d) {
                for (v, row) in values {
                    let phases = out.entry(dim.values.name(*v).to_string()).or_default();
                    for (p, n) in row.iter().enumerate() {
                        if *n != 0 {
                            *phases
                                .entry(agg.phases.name(p as u16).to_string())
                                .or_default() += n;
                        }
                    }
                }
            }
        }
        s
    }

    /// Summarises and merges several partials.
    pub fn collect<'a>(
        parts: impl IntoIterator<Item = &'a Aggregates>,
        from: Millis,
        to: Millis,
        include: &Include,
    ) -> Summary {
        let mut s = Summary::default();
        for p in parts {
            s.merge(&Summary::of(p, from, to, include));
        }
        s
    }

    /// Exact, associative and commutative merge.
    pub fn merge(&mut self, o: &Summary) {
        self.sessions += o.sessions;
        self.counters.merge(&o.counters);
        for (k, t) in &o.touchpoints {
            self.touchpoints.entry(k.clone()).or_default().merge(t);
        }
        for (k, p) in &o.phases {
            self.phases.entry(k.clone()).or_default().merge(p);
        }
        for (k, n) in &o.transitions {
            *self.transitions.entry(k.clone()).or_default() += n;
        }
        for (d, values) in &o.breakdowns {
            let dim = self.breakdowns.entry(d.clone()).or_default();
            for (v, row) in values {
                let r = dim.entry(v.clone()).or_default();
                for (p, n) in row {
                    *r.entry(p.clone()).or_default() += n;
                }
            }
        }
    }
}

/// Count, mean and percentiles of a duration sketch, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DurationStats {
    pub count: u64,
    pub mean_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub min_ms: Option<u64>,
    pub max_ms: Option<u64>,
}

impl From<&Sketch> for DurationStats {
    fn from(s: &Sketch) -> Self {
        DurationStats {
            count: s.count(),
            mean_ms: s.mean(),
            p50_ms: s.quantile(0.5),
            p90_ms: s.quantile(0.9),
            p99_ms: s.quantile(0.99),
            min_ms: s.min(),
            max_ms: s.max(),
        }
    }
}

/// One phase of the funnel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunnelStep {
    pub phase: String,
    /// Journeys that reached this phase or a later one.
    pub reached: i64,
    /// `reached[next] / reached[this]`; `None` for the last phase or when nothing reached this one.
    pub conversion: Option<f64>,
    /// `reached[this] / reached[first]`.
    pub from_start: Option<f64>,
    /// `reached[this] − reached[next]`; `None` for the last phase, which has no next one.
    pub drop_off: Option<i64>,
    /// Time spent in the phase before moving on; not tracked per breakdown value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dwell: Option<DurationStats>,
    /// Time to convert: from the journey's start to reaching this phase (SPEC §4), over the
    /// journeys that reached it in the range (bucketed by the time they reached it), in
    /// milliseconds; not tracked per breakdown value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_to_convert: Option<DurationStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunnelReport {
    pub journeys: i64,
    pub steps: Vec<FunnelStep>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<BreakdownReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakdownReport {
    pub dimension: String,
    pub values: Vec<BreakdownValue>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakdownValue {
    pub value: String,
    pub journeys: i64,
    pub steps: Vec<FunnelStep>,
}

fn steps(
    phases: &[String],
    furthest: impl Fn(&str) -> i64,
    durations: impl Fn(&str) -> Option<PhaseAgg>,
) -> Vec<FunnelStep> {
    let mut reached = vec![0i64; phases.len()];
    let mut acc = 0;
    for (k, p) in phases.iter().enumerate().rev() {
        acc += furthest(p);
        reached[k] = acc;
    }
    let ratio = |a: i64, b: i64| (b > 0).then(|| a as f64 / b as f64);
    phases
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let next = reached.get(k + 1).copied();
            let d = durations(p);
            FunnelStep {
                phase: p.clone(),
                reached: reached[k],
                conversion: next.and_then(|n| ratio(n, reached[k])),
                from_start: ratio(reached[k], reached[0]),
                drop_off: next.map(|n| reached[k] - n),
                dwell: d.as_ref().map(|a| DurationStats::from(&a.dwell)),
                time_to_convert: d.as_ref().map(|a| DurationStats::from(&a.time_to_convert)),
            }
        })
        .collect()
}

/// The phase funnel in the order of `phases`; with a breakdown, at most `max_values` values
/// (by journeys), the rest folded into `other`.
pub fn funnel(
    s: &Summary,
    phases: &[String],
    breakdown: Option<&str>,
    max_values: usize,
) -> FunnelReport {
    let furthest = |p: &str| s.phases.get(p).map_or(0, |a| a.furthest);
    let durations = |p: &str| Some(s.phases.get(p).cloned().unwrap_or_default());
    let main = steps(phases, furthest, durations);
    let breakdown = breakdown.map(|dim| {
        let mut rows: Vec<(String, BTreeMap<String, i64>)> = s
            .breakdowns
            .get(dim)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let total = |r: &BTreeMap<String, i64>| {
            phases
                .iter()
                .map(|p| r.get(p).copied().unwrap_or(0))
                .sum::<i64>()
        };
        rows.retain(|(_, r)| total(r) != 0);
        rows.sort_by(|a, b| total(&b.1).cmp(&total(&a.1)).then_with(|| a.0.cmp(&b.0)));
        // `other` is listed last and counts towards the cap.
        let mut other: Option<BTreeMap<String, i64>> = rows
            .iter()
            .position(|r| r.0 == OTHER_LABEL)
            .map(|i| rows.remove(i).1);
        if rows.len() + other.is_some() as usize > max_values {
            let rest = rows.split_off(max_values.saturating_sub(1));
            let fold = other.get_or_insert_with(BTreeMap::new);
            for (_, r) in rest {
                for (p, n) in r {
                    *fold.entry(p).or_default() += n;
                }
            }
        }
        if let Some(o) = other {
            rows.push((OTHER_LABEL.to_string(), o));
        }
        BreakdownReport {
            dimension: dim.to_string(),
            values: rows
                .into_iter()
                .map(|(value, r)| {
                    let steps = steps(phases, |p| r.get(p).copied().unwrap_or(0), |_| None);
                    BreakdownValue {
                        value,
                        journeys: steps.first().map_or(0, |s| s.reached),
                        steps,
                    }
                })
                .collect(),
        }
    });
    FunnelReport {
        journeys: main.first().map_or(0, |s| s.reached),
        steps: main,
        breakdown,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreReport {
    pub count: u64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nps: Option<NpsReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NpsReport {
    pub promoters: u64,
    pub passives: u64,
    pub detractors: u64,
    /// 100 × (promoters − detractors) / answers, from −100 to 100.
    pub nps: f64,
}

impl ScoreReport {
    fn new(s: &ScoreAgg, nps: bool) -> Option<ScoreReport> {
        (s.count > 0).then(|| ScoreReport {
            count: s.count,
            mean: s.sum / s.count as f64,
            min: s.min,
            max: s.max,
            nps: nps.then(|| NpsReport {
                promoters: s.promoters,
                passives: s.passives,
                detractors: s.detractors,
                nps: 100.0 * (s.promoters as f64 - s.detractors as f64) / s.count as f64,
            }),
        })
    }
}

/// The figures of one touchpoint over a range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TouchpointReport {
    pub name: String,
    /// `None` for a touchpoint that is in the data but no longer in the rules.
    pub phase: Option<String>,
    pub channel: Option<String>,
    pub goal: bool,
    pub moment_of_truth: bool,
    pub visits: u64,
    pub sessions: u64,
    pub exits: u64,
    pub drop_offs: u64,
    /// `drop_offs / sessions`.
    pub drop_off_rate: Option<f64>,
    pub completions: u64,
    pub dwell: DurationStats,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<ScoreReport>,
}

/// Every touchpoint of the rules, in rule order, then any others present in the data.
pub fn touchpoints(s: &Summary, rules: &Rules) -> Vec<TouchpointReport> {
    let empty = TouchpointAgg::default();
    let mut out: Vec<TouchpointReport> = rules
        .touchpoints()
        .iter()
        .map(|t| {
            let a = s.touchpoints.get(&t.name).unwrap_or(&empty);
            report(
                &t.name,
                a,
                Some(rules.phases()[t.phase].clone()),
                t.channel.clone(),
                t.goal,
                t.moment_of_truth,
                t.score.as_ref().is_some_and(|x| x.nps),
            )
        })
        .collect();
    for (name, a) in &s.touchpoints {
        if !rules.touchpoints().iter().any(|t| &t.name == name) {
            out.push(report(name, a, None, None, false, false, false));
        }
    }
    out
}

fn report(
    name: &str,
    a: &TouchpointAgg,
    phase: Option<String>,
    channel: Option<String>,
    goal: bool,
    moment_of_truth: bool,
    nps: bool,
) -> TouchpointReport {
    TouchpointReport {
        name: name.to_string(),
        phase,
        channel,
        goal,
        moment_of_truth,
        visits: a.visits,
        sessions: a.sessions,
        exits: a.exits,
        drop_offs: a.dropoffs,
        drop_off_rate: (a.sessions > 0).then(|| a.dropoffs as f64 / a.sessions as f64),
        completions: a.completions,
        dwell: DurationStats::from(&a.dwell),
        score: ScoreReport::new(&a.score, nps),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransitionReport {
    pub from: String,
    pub to: String,
    pub count: u64,
}

/// Transitions, most frequent first.
pub fn transitions(s: &Summary) -> Vec<TransitionReport> {
    let mut v: Vec<TransitionReport> = s
        .transitions
        .iter()
        .map(|((a, b), n)| TransitionReport {
            from: a.clone(),
            to: b.clone(),
            count: *n,
        })
        .collect();
    v.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| (&a.from, &a.to).cmp(&(&b.from, &b.to)))
    });
    v
}

/// A figure that `/v1/timeseries` can plot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    Visits,
    Sessions,
    Exits,
    DropOffs,
    DropOffRate,
    Completions,
    DwellP50,
    DwellP90,
    DwellP99,
    ScoreMean,
    Nps,
    /// For a phase: journeys starting in the step that reached it.
    Reached,
    /// For a phase: median time spent in it.
    PhaseDwellP50,
    /// For a phase: median time from the journey's start to reaching it.
    TimeToConvertP50,
}

impl Figure {
    pub const ALL: [(&'static str, Figure); 14] = [
        ("visits", Figure::Visits),
        ("sessions", Figure::Sessions),
        ("exits", Figure::Exits),
        ("drop_offs", Figure::DropOffs),
        ("drop_off_rate", Figure::DropOffRate),
        ("completions", Figure::Completions),
        ("dwell_p50", Figure::DwellP50),
        ("dwell_p90", Figure::DwellP90),
        ("dwell_p99", Figure::DwellP99),
        ("score_mean", Figure::ScoreMean),
        ("nps", Figure::Nps),
        ("reached", Figure::Reached),
        ("phase_dwell_p50", Figure::PhaseDwellP50),
        ("time_to_convert_p50", Figure::TimeToConvertP50),
    ];

    pub fn parse(s: &str) -> Option<Figure> {
        Figure::ALL.iter().find(|(n, _)| *n == s).map(|(_, f)| *f)
    }

    /// Whether the figure belongs to a phase rather than a touchpoint.
    pub fn is_phase_figure(self) -> bool {
        matches!(
            self,
            Figure::Reached | Figure::PhaseDwellP50 | Figure::TimeToConvertP50
        )
    }

    /// The value of this figure for `target` (a touchpoint or phase name) in a summary.
    pub fn value(self, s: &Summary, target: &str, phases: &[String]) -> Option<f64> {
        if self.is_phase_figure() {
            return match self {
                Figure::Reached => {
                    let k = phases.iter().position(|p| p == target)?;
                    Some(
                        phases[k..]
                            .iter()
                            .map(|p| s.phases.get(p).map_or(0, |a| a.furthest))
                            .sum::<i64>() as f64,
                    )
                }
                Figure::TimeToConvertP50 => s
                    .phases
                    .get(target)
                    .and_then(|a| a.time_to_convert.quantile(0.5)),
                _ => s.phases.get(target).and_then(|a| a.dwell.quantile(0.5)),
            };
        }
        let empty = TouchpointAgg::default();
        let a = s.touchpoints.get(target).unwrap_or(&empty);
        match self {
            Figure::Visits => Some(a.visits as f64),
            Figure::Sessions => Some(a.sessions as f64),
            Figure::Exits => Some(a.exits as f64),
            Figure::DropOffs => Some(a.dropoffs as f64),
            Figure::DropOffRate => (a.sessions > 0).then(|| a.dropoffs as f64 / a.sessions as f64),
            Figure::Completions => Some(a.completions as f64),
            Figure::DwellP50 => a.dwell.quantile(0.5),
            Figure::DwellP90 => a.dwell.quantile(0.9),
            Figure::DwellP99 => a.dwell.quantile(0.99),
            Figure::ScoreMean => (a.score.count > 0).then(|| a.score.sum / a.score.count as f64),
            Figure::Nps => ScoreReport::new(&a.score, true)
                .and_then(|r| r.nps)
                .map(|n| n.nps),
            Figure::Reached | Figure::PhaseDwellP50 | Figure::TimeToConvertP50 => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub t: Millis,
    pub value: Option<f64>,
}

/// One figure over time in steps of `step` from `from` (inclusive) to `to` (exclusive), of
/// the journeys `include` selects (its `segment`; its breakdowns are not needed).
#[allow(clippy::too_many_arguments)]
pub fn timeseries(
    parts: &[&Aggregates],
    from: Millis,
    to: Millis,
    step: Millis,
    figure: Figure,
    target: &str,
    phases: &[String],
    include: &Include,
) -> Vec<Point> {
    let mut out = Vec::new();
    let mut t = from;
    while t < to && step > 0 {
        let end = t.saturating_add(step).min(to);
        let s = Summary::collect(parts.iter().copied(), t, end, include);
        out.push(Point {
            t,
            value: figure.value(&s, target, phases),
        });
        t = end;
    }
    out
}
