//! Queries over partial aggregates: each partial is summarised for a time range, summaries
//! merge by name (exactly, in any grouping), and reports are computed from the merged summary.

use std::collections::{BTreeMap, BTreeSet};

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
    /// Goal phase → moments of truth of the journeys starting in the range.
    pub moments: BTreeMap<String, MomentsSummary>,
}

/// The moments-of-truth counts of one goal phase, by touchpoint name (see
/// [`crate::agg::MomentsAgg`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MomentsSummary {
    pub journeys: i64,
    pub converted: i64,
    /// Touchpoint → `[journeys that touched it before converting, of those the converted]`.
    pub touched: BTreeMap<String, [i64; 2]>,
    /// Touchpoints some task has no touched-set bit for (its id is at least
    /// [`crate::agg::MOMENT_TOUCHPOINTS`] there): their touched counts are incomplete.
    pub untracked: BTreeSet<String>,
}

impl MomentsSummary {
    fn merge(&mut self, o: &MomentsSummary) {
        self.journeys += o.journeys;
        self.converted += o.converted;
        for (k, t) in &o.touched {
            let m = self.touched.entry(k.clone()).or_default();
            m[0] += t[0];
            m[1] += t[1];
        }
        self.untracked.extend(o.untracked.iter().cloned());
    }
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
/// first-touch value of `dimension` is `value` (SPEC §4, docs/semantics.md §9 "Segments").
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
        for (id, t) in acc.touchpoints {
            if t != TouchpointAgg::default() {
                s.touchpoints.insert(tp_name(id), t);
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
        for (goal, m) in agg.moment_goals.iter().zip(&acc.moments) {
            if m.journeys == 0 && m.converted == 0 && m.touched.iter().all(|t| *t == [0, 0]) {
                continue;
            }
            let out = s.moments.entry(goal.clone()).or_default();
            out.journeys += m.journeys;
            out.converted += m.converted;
            for (i, t) in m.touched.iter().enumerate() {
                if *t != [0, 0] {
                    out.touched.insert(tp_name(i as u16), *t);
                }
            }
            out.untracked.extend(
                (crate::agg::MOMENT_TOUCHPOINTS..agg.touchpoints.len() as u16)
                    .map(|id| agg.touchpoints.name(id).to_string()),
            );
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
        for (g, m) in &o.moments {
            self.moments.entry(g.clone()).or_default().merge(m);
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

/// Significance level of `significant` in [`moments`]: a two-sided Fisher p-value below it.
pub const MOMENTS_ALPHA: f64 = 0.05;

/// Journeys and conversions of one side of a moment of truth.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MomentGroup {
    pub journeys: i64,
    pub converted: i64,
    /// `converted / journeys`; `None` without journeys.
    pub conversion: Option<f64>,
}

impl MomentGroup {
    fn new(journeys: i64, converted: i64) -> MomentGroup {
        let (journeys, converted) = (journeys.max(0), converted.clamp(0, journeys.max(0)));
        MomentGroup {
            journeys,
            converted,
            conversion: (journeys > 0).then(|| converted as f64 / journeys as f64),
        }
    }
}

/// What the data says about one touchpoint as a moment of truth.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Moment {
    pub touchpoint: String,
    /// `None` for a touchpoint in the data but no longer in the rules.
    pub phase: Option<String>,
    /// The rules' `moment_of_truth` flag, shown next to what the data says.
    pub moment_of_truth: bool,
    /// Journeys that touched it before reaching the goal phase.
    pub touched: MomentGroup,
    /// The other journeys of the range.
    pub not_touched: MomentGroup,
    /// `touched.conversion / not_touched.conversion`; `None` when either is undefined or the
    /// latter is 0.
    pub lift: Option<f64>,
    /// Odds ratio of converting, touched against not touched; `None` when a cell of the 2×2
    /// table is 0.
    pub odds_ratio: Option<f64>,
    /// 95 % confidence interval of the odds ratio (Woolf's logit method).
    pub ci95: Option<[f64; 2]>,
    /// Two-sided p-value of Fisher's exact test; `None` when nobody or everybody touched it,
    /// or nobody or everybody converted.
    pub p_value: Option<f64>,
    /// `p_value < 0.05` ([`MOMENTS_ALPHA`]); no correction for testing many touchpoints.
    pub significant: bool,
    /// False when some task could not track the touchpoint (more than
    /// [`crate::agg::MOMENT_TOUCHPOINTS`] touchpoints seen): its counts are then too low, and
    /// "never touched" cannot be told from "not tracked".
    pub tracked: bool,
}

/// `/v1/moments`: conversion to one goal phase of the journeys that touched each touchpoint
/// against those that did not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MomentsReport {
    pub goal: String,
    /// Journeys starting in the range.
    pub journeys: i64,
    /// Of those, the ones that reached the goal phase.
    pub converted: i64,
    pub conversion: Option<f64>,
    /// Ranked, see [`moments`].
    pub moments: Vec<Moment>,
}

impl Moment {
    /// Ranking tier: 0 for a significant rise of conversion, 1 for no significant
    /// difference, 2 for a significant fall.
    fn tier(&self) -> u8 {
        let diff = match (self.touched.conversion, self.not_touched.conversion) {
            (Some(t), Some(n)) => t - n,
            _ => 0.0,
        };
        match (self.significant, diff) {
            (true, d) if d > 0.0 => 0,
            (true, d) if d < 0.0 => 2,
            _ => 1,
        }
    }

    /// The lift for ranking: an infinite lift (the untouched never converted) ranks highest.
    fn rank_lift(&self) -> f64 {
        match (
            self.lift,
            self.touched.conversion,
            self.not_touched.conversion,
        ) {
            (Some(l), _, _) => l,
            (None, Some(t), Some(n)) if n == 0.0 && t > 0.0 => f64::INFINITY,
            _ => f64::NEG_INFINITY,
        }
    }
}

/// Moments of truth for `goal` (docs/semantics.md §6 "Moments of truth"): every touchpoint of
/// the rules in a phase before the goal phase, every touchpoint the rules flag
/// `moment_of_truth`, and any touchpoint in the data the rules no longer list.
///
/// Ranked: first the touchpoints whose touch significantly raises conversion (by lift,
/// highest first), then those without a significant difference (by p-value, smallest first),
/// then those whose touch significantly lowers it (by lift, highest first, so the most
/// harmful is last); ties by name.
pub fn moments(s: &Summary, rules: &Rules, goal: &str) -> MomentsReport {
    let empty = MomentsSummary::default();
    let m = s.moments.get(goal).unwrap_or(&empty);
    let goal_rank = rules.phases().iter().position(|p| p == goal);
    let mut out: Vec<Moment> = rules
        .touchpoints()
        .iter()
        .filter(|t| t.moment_of_truth || goal_rank.is_none_or(|g| t.phase < g))
        .map(|t| {
            let phase = rules.phases().get(t.phase).cloned();
            moment(&t.name, phase, t.moment_of_truth, m)
        })
        .collect();
    for name in m.touched.keys() {
        if !rules.touchpoints().iter().any(|t| &t.name == name) {
            out.push(moment(name, None, false, m));
        }
    }
    out.sort_by(|a, b| {
        let by_p = |x: &Moment| x.p_value.unwrap_or(f64::INFINITY);
        a.tier()
            .cmp(&b.tier())
            .then_with(|| match a.tier() {
                1 => by_p(a).total_cmp(&by_p(b)),
                _ => b.rank_lift().total_cmp(&a.rank_lift()),
            })
            .then_with(|| a.touchpoint.cmp(&b.touchpoint))
    });
    let total = MomentGroup::new(m.journeys, m.converted);
    MomentsReport {
        goal: goal.to_string(),
        journeys: total.journeys,
        converted: total.converted,
        conversion: total.conversion,
        moments: out,
    }
}

fn moment(name: &str, phase: Option<String>, flagged: bool, m: &MomentsSummary) -> Moment {
    let [tj, tc] = m.touched.get(name).copied().unwrap_or([0, 0]);
    let touched = MomentGroup::new(tj.min(m.journeys), tc.min(m.converted));
    let not_touched = MomentGroup::new(
        m.journeys.max(0) - touched.journeys,
        m.converted.max(0) - touched.converted,
    );
    let a = touched.converted as u64;
    let b = (touched.journeys - touched.converted) as u64;
    let c = not_touched.converted as u64;
    let d = (not_touched.journeys - not_touched.converted) as u64;
    let lift = match (touched.conversion, not_touched.conversion) {
        (Some(t), Some(n)) if n > 0.0 => Some(t / n),
        _ => None,
    };
    let or = crate::stats::odds_ratio(a, b, c, d);
    let p_value = crate::stats::fisher_exact(a, b, c, d);
    Moment {
        touchpoint: name.to_string(),
        phase,
        moment_of_truth: flagged,
        touched,
        not_touched,
        lift,
        odds_ratio: or.map(|o| o.0),
        ci95: or.map(|o| o.1),
        p_value,
        significant: p_value.is_some_and(|p| p < MOMENTS_ALPHA),
        tracked: !m.untracked.contains(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
phases = ["a", "b", "c"]
[[touchpoint]]
name = "up"
phase = "a"
event = "up"
[[touchpoint]]
name = "flat"
phase = "a"
event = "flat"
[[touchpoint]]
name = "down"
phase = "a"
event = "down"
[[touchpoint]]
name = "huge"
phase = "b"
event = "huge"
[[touchpoint]]
name = "rare"
phase = "b"
event = "rare"
[[touchpoint]]
name = "buy"
phase = "c"
event = "buy"
goal = true
moment_of_truth = true
[[touchpoint]]
name = "late"
phase = "c"
event = "late"
"#;

    /// 1000 journeys, 300 converted; per touchpoint `[touched, of which converted]`.
    fn summary() -> Summary {
        let mut m = MomentsSummary {
            journeys: 1000,
            converted: 300,
            ..Default::default()
        };
        // up: 60 % of 200 against 22.5 % of 800; huge: all 100 touchers converted (lift 200/900
        // against 1 → 1/(200/900) = 4.5); down: 10 % against 35 %; flat: 30 % against 30 %;
        // rare: 1 of 2.
        for (name, t) in [
            ("up", [200, 120]),
            ("huge", [100, 100]),
            ("down", [200, 20]),
            ("flat", [100, 30]),
            ("rare", [2, 1]),
            ("gone", [10, 9]),
        ] {
            m.touched.insert(name.to_string(), t);
        }
        let mut s = Summary::default();
        s.moments.insert("c".into(), m);
        s
    }

    fn get_p(r: &MomentsReport, n: &str) -> f64 {
        let m = r.moments.iter().find(|m| m.touchpoint == n).unwrap();
        m.p_value.unwrap()
    }

    #[test]
    fn moments_rank_significant_rises_first_and_falls_last() {
        let rules = Rules::from_toml(RULES).unwrap();
        let r = moments(&summary(), &rules, "c");
        let names: Vec<&str> = r.moments.iter().map(|m| m.touchpoint.as_str()).collect();
        // Significant rises by lift (huge 4.5, up 0.6/0.225 = 2.67, gone 0.9/(291/990) = 3.06),
        // then the rest by p-value (rare ≈ 0.5, flat 1; buy has none: last of them), then the
        // significant fall.
        assert_eq!(names, ["huge", "gone", "up", "rare", "flat", "buy", "down"]);
        assert!(get_p(&r, "rare") < get_p(&r, "flat"));
        let get = |n: &str| r.moments.iter().find(|m| m.touchpoint == n).unwrap();
        assert!(get("up").significant && get("huge").significant && get("down").significant);
        assert!(!get("flat").significant && !get("rare").significant);
        assert!((get("huge").lift.unwrap() - 4.5).abs() < 1e-12);
        assert_eq!(get("huge").odds_ratio, None, "no toucher failed to convert");
        assert_eq!(get("flat").lift, Some(1.0));
        assert_eq!(get("gone").phase, None, "in the data, not in the rules");
        assert!(
            get("buy").moment_of_truth,
            "shown although in the goal phase"
        );
        assert_eq!(get("buy").touched.journeys, 0);
        assert_eq!(get("buy").p_value, None);
        assert!(
            r.moments.iter().all(|m| m.touchpoint != "late"),
            "goal phase, not flagged: left out"
        );
        assert_eq!(
            (r.journeys, r.converted, r.conversion),
            (1000, 300, Some(0.3))
        );
    }

    #[test]
    fn moments_of_an_untracked_goal_are_empty_not_nan() {
        let rules = Rules::from_toml(RULES).unwrap();
        let r = moments(&summary(), &rules, "b");
        assert_eq!((r.journeys, r.conversion), (0, None));
        for m in &r.moments {
            assert_eq!((m.lift, m.p_value, m.significant), (None, None, false));
        }
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains("NaN") && !json.contains("inf"), "{json}");
    }
}
