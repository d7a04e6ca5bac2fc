//! The engine against a deliberately simple reference model: sort each customer's events by
//! time (a stable sort of the arrival order, so equal times keep arrival order), cut sessions
//! and journeys, count. Random multi-customer streams, with ties in time, arrive shuffled
//! within the allowed lateness; every figure must equal the reference's. A per-session event
//! limit rejects exactly the events that would overfill the session they join. Merging shard
//! partials in any grouping, and snapshot → restore → continue, must equal one uninterrupted
//! shard.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use journey_core::agg::{PhaseAgg, TouchpointAgg};
use journey_core::query::{Include, SegmentFilter, Summary, EXIT_LABEL, START_LABEL};
use journey_core::sketch::Sketch;
use journey_core::time::{Millis, DAY, HOUR, MINUTE, SECOND};
use journey_core::{EngineConfig, Event, Rules, Shard};
use proptest::prelude::*;
use serde_json::json;

const RULES: &str = r#"
phases = ["awareness", "consideration", "decision", "retention"]
[[touchpoint]]
name = "ad"
phase = "awareness"
source = "web"
event = "page_view"
where = { utm = "cpc" }
[[touchpoint]]
name = "blog"
phase = "awareness"
source = "web"
event = "page_view"
where = { url = { prefix = "/blog" } }
[[touchpoint]]
name = "product"
phase = "consideration"
source = "web"
event = "page_view"
where = { url = { prefix = "/p/" } }
[[touchpoint]]
name = "lead"
phase = "consideration"
source = "crm"
event = "lead"
[[touchpoint]]
name = "cart"
phase = "decision"
event = "add_to_cart"
[[touchpoint]]
name = "order"
phase = "decision"
event = "order"
goal = true
[[touchpoint]]
name = "ticket"
phase = "retention"
source = "service"
event = "ticket"
[[touchpoint]]
name = "survey"
phase = "retention"
event = "survey"
score = "score"
nps = true
"#;

const T0: Millis = 1_795_000_000_000;

fn config() -> EngineConfig {
    EngineConfig {
        session_gap: 30 * MINUTE,
        session_max_duration: 3 * HOUR,
        allowed_lateness: 5 * MINUTE,
        journey_window: 2 * DAY,
        breakdowns: vec!["persona".into()],
        // Two goals, not in the rules' order: each has its own touched-set per journey.
        goal_phases: vec!["decision".into(), "consideration".into()],
        retention_fine: 60 * DAY,
        retention_total: 90 * DAY,
        ..EngineConfig::default()
    }
}

fn kind_event(kind: u8, score: u8) -> (&'static str, &'static str, serde_json::Value) {
    match kind {
        0 => ("web", "page_view", json!({"utm": "cpc"})),
        1 => ("web", "page_view", json!({"url": "/blog/a"})),
        2 => ("web", "page_view", json!({"url": "/p/1"})),
        3 => ("web", "page_view", json!({"url": "/about"})),
        4 => ("crm", "lead", json!({})),
        5 => ("web", "add_to_cart", json!({})),
        6 => ("web", "order", json!({})),
        7 => ("service", "ticket", json!({})),
        8 => ("service", "survey", json!({"score": score})),
        _ => ("web", "scroll", json!({})),
    }
}

/// Gaps that straddle the session gap, the max duration and the journey window, and zero
/// gaps: trackers stamp whole seconds, so equal times are common.
fn gap() -> impl Strategy<Value = Millis> {
    prop_oneof![
        2 => Just(0),
        3 => (1..600i64).prop_map(|s| s * SECOND),
        3 => (1..40i64).prop_map(|m| m * MINUTE),
        2 => (25..35i64).prop_map(|m| m * MINUTE + 1),
        1 => Just(30 * MINUTE),
        1 => (1..20i64).prop_map(|h| h * HOUR),
        1 => (1..3i64).prop_map(|d| d * DAY - HOUR),
    ]
}

#[derive(Debug, Clone)]
struct Stream {
    events: Vec<Event<'static>>,
    /// Arrival order: indices into `events`.
    arrival: Vec<usize>,
}

fn stream() -> impl Strategy<Value = Stream> {
    let customer = (
        prop::collection::vec((gap(), 0u8..10, 0u8..11, prop::option::of(0u8..3)), 1..25),
        (0..(3 * DAY / MINUTE)).prop_map(|m| m * MINUTE),
    );
    (prop::collection::vec(customer, 1..7), any::<u64>()).prop_map(|(customers, seed)| {
        let mut events = Vec::new();
        for (c, (steps, offset)) in customers.into_iter().enumerate() {
            let mut ts = T0 + offset;
            for (g, kind, score, persona) in steps {
                ts += g;
                let (source, name, mut attrs) = kind_event(kind, score);
                if let Some(p) = persona {
                    attrs["persona"] = json!(["saver", "pro", "casual"][p as usize]);
                }
                events.push(Event {
                    event_id: None,
                    customer_id: Cow::Owned(format!("c{c}")),
                    ts,
                    source: Cow::Borrowed(source),
                    name: Cow::Borrowed(name),
                    attributes: attrs,
                });
            }
        }
        // Arrival sorted by time plus a jitter of at most the allowed lateness: no event is
        // ever more than that behind the largest time seen before it.
        let mut rng = seed;
        let mut keyed: Vec<(Millis, u64, usize)> = events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Whole minutes, so that boundary coincidences (exactly on the watermark) occur.
                (e.ts + ((rng >> 33) as Millis % 6) * MINUTE, rng >> 50, i)
            })
            .collect();
        keyed.sort();
        Stream {
            events,
            arrival: keyed.into_iter().map(|k| k.2).collect(),
        }
    })
}

/// An event with its time and touchpoint, as the reference sorts them.
type Classified<'e> = (Millis, Option<u16>, &'e Event<'static>);

impl Stream {
    /// The events in arrival order.
    fn arrived(&self) -> impl Iterator<Item = &Event<'static>> + '_ {
        self.arrival.iter().map(|&i| &self.events[i])
    }
}

/// The reference: per customer, events in time order, cut and counted the obvious way.
/// `events` come in arrival order; a stable sort by time keeps equal times in that order.
/// Returns `(time, effect)` records so any range can be summarised.
fn reference<'e>(
    events: impl IntoIterator<Item = &'e Event<'static>>,
    rules: &Rules,
    cfg: &EngineConfig,
) -> Vec<(Millis, Effect)> {
    let mut by_customer: BTreeMap<&str, Vec<Classified<'e>>> = BTreeMap::new();
    for e in events {
        by_customer
            .entry(&e.customer_id)
            .or_default()
            .push((e.ts, rules.classify(e), e));
    }
    let name = |tp: u16| rules.touchpoint(tp).name.clone();
    let phase = |tp: u16| rules.touchpoint(tp).phase;
    let mut out = Vec::new();
    for evs in by_customer.values_mut() {
        // Stable: ties keep arrival order (SPEC §3).
        evs.sort_by_key(|e| e.0);
        for (ts, tp, e) in evs.iter() {
            if let Some(tp) = tp {
                let score = rules.score(*tp, e);
                out.push((*ts, Effect::Visit(name(*tp), score)));
            }
        }
        // Sessions.
        let mut sessions: Vec<Vec<(Millis, Option<u16>)>> = Vec::new();
        for &(ts, tp, _) in evs.iter() {
            let start_new = match sessions.last() {
                None => true,
                Some(s) => {
                    ts - s.last().unwrap().0 > cfg.session_gap
                        || ts - s[0].0 >= cfg.session_max_duration
                }
            };
            if start_new {
                sessions.push(Vec::new());
            }
            sessions.last_mut().unwrap().push((ts, tp));
        }
        for s in &sessions {
            let last = s.last().unwrap().0;
            out.push((last, Effect::Session));
            let cls: Vec<(Millis, u16)> = s
                .iter()
                .filter_map(|(t, tp)| tp.map(|tp| (*t, tp)))
                .collect();
            if cls.is_empty() {
                continue;
            }
            let goal = cls.iter().any(|(_, tp)| rules.touchpoint(*tp).goal);
            let mut touched: Vec<u16> = cls.iter().map(|c| c.1).collect();
            touched.sort();
            touched.dedup();
            for tp in touched {
                out.push((last, Effect::Touched(name(tp), rules.touchpoint(tp).goal)));
            }
            let exit = cls.last().unwrap().1;
            out.push((last, Effect::Exit(name(exit), !goal)));
            let mut steps = vec![START_LABEL.to_string()];
            for (_, tp) in &cls {
                if steps.last() != Some(&name(*tp)) {
                    steps.push(name(*tp));
                }
            }
            steps.push(EXIT_LABEL.to_string());
            for w in steps.windows(2) {
                out.push((last, Effect::Transition(w[0].clone(), w[1].clone())));
            }
            for w in cls.windows(2) {
                out.push((
                    w[0].0,
                    Effect::Dwell(name(w[0].1), (w[1].0 - w[0].0) as u64),
                ));
            }
        }
        // Journeys.
        let cls: Vec<&Classified<'_>> = evs.iter().filter(|e| e.1.is_some()).collect();
        let mut i = 0;
        while i < cls.len() {
            let t0 = cls[i].0;
            let mut j = i;
            while j < cls.len() && cls[j].0 <= t0 + cfg.journey_window {
                j += 1;
            }
            let members = &cls[i..j];
            // Phase dwell depends on the first time per phase only: at equal times the higher
            // phase counts first, so a simultaneous pair records no zero sample.
            let mut by_phase: Vec<&&Classified<'_>> = members.iter().collect();
            by_phase.sort_by_key(|m| (m.0, std::cmp::Reverse(phase(m.1.unwrap()))));
            // Time to convert: every phase up to the one seen is reached when it is seen.
            let mut next = 0;
            for m in &by_phase {
                while next <= phase(m.1.unwrap()) {
                    out.push((
                        m.0,
                        Effect::TimeToConvert(rules.phases()[next].clone(), (m.0 - t0) as u64),
                    ));
                    next += 1;
                }
            }
            let mut furthest = phase(by_phase[0].1.unwrap());
            let mut entered = t0;
            for m in by_phase {
                let p = phase(m.1.unwrap());
                if p > furthest {
                    out.push((
                        m.0,
                        Effect::PhaseDwell(
                            rules.phases()[furthest].clone(),
                            (m.0 - entered) as u64,
                        ),
                    ));
                    furthest = p;
                    entered = m.0;
                }
            }
            let persona = members
                .iter()
                .find_map(|m| m.2.attributes.get("persona").and_then(|v| v.as_str()))
                .unwrap_or("(none)")
                .to_string();
            // Moments of truth, per goal phase: the touchpoints the journey touched strictly
            // before its first event in the goal phase or a later one.
            for goal in cfg.moment_goals(rules) {
                let g = rules.phases().iter().position(|p| *p == goal).unwrap();
                let reached = members
                    .iter()
                    .filter(|m| phase(m.1.unwrap()) >= g)
                    .map(|m| m.0)
                    .min();
                let mut touched: Vec<String> = members
                    .iter()
                    .filter(|m| reached.is_none_or(|r| m.0 < r))
                    .map(|m| name(m.1.unwrap()))
                    .collect();
                touched.sort();
                touched.dedup();
                out.push((t0, Effect::Moment(goal, touched, reached.is_some())));
            }
            out.push((
                t0,
                Effect::Journey(rules.phases()[furthest].clone(), persona),
            ));
            i = j;
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Effect {
    Visit(String, Option<f64>),
    Session,
    Touched(String, bool),
    Exit(String, bool),
    Transition(String, String),
    Dwell(String, u64),
    PhaseDwell(String, u64),
    TimeToConvert(String, u64),
    Journey(String, String),
    /// A journey's goal phase, touched-set and whether it converted.
    Moment(String, Vec<String>, bool),
}

fn reference_summary(
    records: &[(Millis, Effect)],
    rules: &Rules,
    from: Millis,
    to: Millis,
) -> Summary {
    let mut s = Summary::default();
    let nps = |n: &str| {
        rules
            .touchpoints()
            .iter()
            .any(|t| t.name == n && t.score.as_ref().is_some_and(|x| x.nps))
    };
    for (t, e) in records.iter().filter(|(t, _)| (from..to).contains(t)) {
        let _ = t;
        match e {
            Effect::Visit(n, score) => {
                let a = s.touchpoints.entry(n.clone()).or_default();
                a.visits += 1;
                if let Some(v) = score {
                    a.score.add(*v, nps(n));
                }
            }
            Effect::Session => s.sessions += 1,
            Effect::Touched(n, goal) => {
                let a = s.touchpoints.entry(n.clone()).or_default();
                a.sessions += 1;
                a.completions += *goal as u64;
            }
            Effect::Exit(n, drop) => {
                let a = s.touchpoints.entry(n.clone()).or_default();
                a.exits += 1;
                a.dropoffs += *drop as u64;
            }
            Effect::Transition(a, b) => {
                *s.transitions.entry((a.clone(), b.clone())).or_default() += 1
            }
            Effect::Dwell(n, d) => s.touchpoints.entry(n.clone()).or_default().dwell.add(*d),
            Effect::PhaseDwell(p, d) => s.phases.entry(p.clone()).or_default().dwell.add(*d),
            Effect::TimeToConvert(p, d) => s
                .phases
                .entry(p.clone())
                .or_default()
                .time_to_convert
                .add(*d),
            Effect::Moment(goal, touched, converted) => {
                let m = s.moments.entry(goal.clone()).or_default();
                m.journeys += 1;
                m.converted += *converted as i64;
                for n in touched {
                    let t = m.touched.entry(n.clone()).or_default();
                    t[0] += 1;
                    t[1] += *converted as i64;
                }
            }
            Effect::Journey(p, persona) => {
                s.phases.entry(p.clone()).or_default().furthest += 1;
                *s.breakdowns
                    .entry("persona".into())
                    .or_default()
                    .entry(persona.clone())
                    .or_default()
                    .entry(p.clone())
                    .or_default() += 1;
            }
        }
    }
    s
}

/// Figures only: counters are compared separately.
fn figures(mut s: Summary) -> Summary {
    s.counters = Default::default();
    s.touchpoints.retain(|_, a| *a != TouchpointAgg::default());
    s.phases.retain(|_, a| *a != PhaseAgg::default());
    for values in s.breakdowns.values_mut() {
        for row in values.values_mut() {
            row.retain(|_, n| *n != 0);
        }
        values.retain(|_, row| !row.is_empty());
    }
    s.breakdowns.retain(|_, v| !v.is_empty());
    s
}

fn run(stream: &Stream, shards: usize, cfg: &Arc<EngineConfig>, rules: &Arc<Rules>) -> Vec<Shard> {
    let mut out: Vec<Shard> = (0..shards)
        .map(|_| Shard::new(cfg.clone(), rules.clone()))
        .collect();
    for &i in &stream.arrival {
        let e = &stream.events[i];
        let k = e.customer_id[1..].parse::<usize>().unwrap() % shards;
        let applied = out[k].apply(e).unwrap();
        assert!(!applied.late, "the generator never produces late events");
    }
    for s in &mut out {
        s.flush();
    }
    out
}

fn include() -> Include {
    Include {
        breakdowns: vec!["persona".into()],
        ..Include::default()
    }
}

fn windows(events: &[Event<'static>]) -> Vec<(Millis, Millis)> {
    let lo = events.iter().map(|e| e.ts).min().unwrap() / MINUTE * MINUTE;
    let hi = events.iter().map(|e| e.ts).max().unwrap() + MINUTE;
    let mid = lo + (hi - lo) / 2 / MINUTE * MINUTE;
    vec![
        (lo - DAY, hi + DAY),
        (lo, mid),
        (mid, hi + DAY),
        (mid - 7 * MINUTE, mid + 95 * MINUTE),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn engine_equals_reference_under_shuffle(stream in stream()) {
        let cfg = Arc::new(config());
        let rules = Arc::new(Rules::from_toml(RULES).unwrap());
        let shards = run(&stream, 1, &cfg, &rules);
        let records = reference(stream.arrived(), &rules, &cfg);
        for (from, to) in windows(&stream.events) {
            let got = figures(Summary::collect(shards.iter().map(|s| s.aggregates()), from, to, &include()));
            let want = figures(reference_summary(&records, &rules, from, to));
            prop_assert_eq!(got, want, "window [{}, {})", from, to);
        }
        let c = &shards[0].aggregates().counters;
        prop_assert_eq!(c.events as usize, stream.events.len());
        prop_assert_eq!(c.late, 0);
        let journeys = records.iter().filter(|r| matches!(r.1, Effect::Journey(..))).count();
        prop_assert_eq!(c.journeys_started as usize, journeys);
        prop_assert_eq!(shards[0].customers(), 0, "everything evicted after flush");
    }

    /// A task of two inputs (web events on one topic, CRM and service events on another),
    /// each in its own arrival order, interleaved with one running up to the journey window
    /// (two days) of event time ahead of the other; the watermark is the slower input's, as a
    /// task's is (docs/semantics.md §5, journey-runtime's task). Nothing is late, and every
    /// figure equals the reference's: a customer may be journeys ahead of the watermark.
    /// Further ahead the figures may differ, as documented: a journey keeps phase times, not
    /// events, so it cannot be re-cut when an earlier event arrives (three days fails).
    #[test]
    fn a_task_of_two_inputs_equals_the_reference_under_skew(stream in stream(), picks in prop::collection::vec(any::<bool>(), 1..64)) {
        const SKEW: Millis = 2 * DAY;
        let cfg = Arc::new(config());
        let rules = Arc::new(Rules::from_toml(RULES).unwrap());
        let web = |i: &usize| stream.events[*i].source == "web";
        let inputs: [Vec<usize>; 2] = [
            stream.arrival.iter().copied().filter(web).collect(),
            stream.arrival.iter().copied().filter(|i| !web(i)).collect(),
        ];
        let mut shard = Shard::new(cfg.clone(), rules.clone());
        shard.set_external_watermark(true);
        let (mut next, mut max_ts) = ([0usize; 2], [None::<Millis>; 2]);
        let mut arrived = Vec::new();
        for step in 0.. {
            let head = |k: usize| inputs[k].get(next[k]).map(|&i| stream.events[i].ts);
            let k = match (head(0), head(1)) {
                (None, None) => break,
                (Some(_), None) => 0,
                (None, Some(_)) => 1,
                (Some(a), Some(b)) => {
                    let want = picks[step % picks.len()] as usize;
                    let (mine, other) = if want == 0 { (a, b) } else { (b, a) };
                    if mine <= other + SKEW { want } else { 1 - want }
                }
            };
            let i = inputs[k][next[k]];
            next[k] += 1;
            arrived.push(i);
            let applied = shard.apply(&stream.events[i]).unwrap();
            prop_assert!(!applied.late, "no input falls behind the slower input's watermark");
            max_ts[k] = max_ts[k].max(Some(stream.events[i].ts));
            // An input that has delivered everything is idle and no longer holds the task.
            let clock = (0..2)
                .filter(|&k| next[k] < inputs[k].len())
                .map(|k| max_ts[k])
                .min()
                .unwrap_or(max_ts[k]);
            if let Some(now) = clock {
                shard.advance_clock(now);
            }
        }
        shard.flush();
        let records = reference(arrived.iter().map(|&i| &stream.events[i]), &rules, &cfg);
        for (from, to) in windows(&stream.events) {
            let got = figures(Summary::collect([shard.aggregates()], from, to, &include()));
            let want = figures(reference_summary(&records, &rules, from, to));
            prop_assert_eq!(got, want, "window [{}, {})", from, to);
        }
        let c = &shard.aggregates().counters;
        prop_assert_eq!(c.late_outside_journey, 0);
        prop_assert_eq!(shard.customers(), 0, "everything evicted after flush");
    }

    #[test]
    fn merging_shards_in_any_grouping_equals_one_shard(stream in stream(), n in 2usize..5, split in any::<u64>()) {
        let cfg = Arc::new(config());
        let rules = Arc::new(Rules::from_toml(RULES).unwrap());
        let one = run(&stream, 1, &cfg, &rules);
        let many = run(&stream, n, &cfg, &rules);
        for (from, to) in windows(&stream.events) {
            let whole = Summary::collect(one.iter().map(|s| s.aggregates()), from, to, &include());
            let parts: Vec<Summary> = many.iter().map(|s| Summary::of(s.aggregates(), from, to, &include())).collect();
            // Left fold, right fold, and a split into two groups merged separately.
            let mut left = Summary::default();
            parts.iter().for_each(|p| left.merge(p));
            let mut right = Summary::default();
            parts.iter().rev().for_each(|p| right.merge(p));
            let cut = (split as usize) % parts.len();
            let (mut a, mut b) = (Summary::default(), Summary::default());
            parts[..cut].iter().for_each(|p| a.merge(p));
            parts[cut..].iter().rev().for_each(|p| b.merge(p));
            b.merge(&a);
            prop_assert_eq!(&figures(left.clone()), &figures(whole.clone()));
            prop_assert_eq!(&figures(right), &figures(whole.clone()));
            prop_assert_eq!(&figures(b), &figures(whole.clone()));
            // Evictions depend on how far each shard's watermark got, so they are not compared.
            let ops = |c: &journey_core::agg::Counters| journey_core::agg::Counters { customers_evicted: 0, ..c.clone() };
            prop_assert_eq!(ops(&left.counters), ops(&whole.counters));
        }
    }

    #[test]
    fn snapshot_restore_continue_equals_never_stopping(stream in stream(), cut in any::<prop::sample::Index>()) {
        let cfg = Arc::new(config());
        let rules = Arc::new(Rules::from_toml(RULES).unwrap());
        let whole = run(&stream, 1, &cfg, &rules);
        let at = cut.index(stream.arrival.len() + 1);
        let mut shard = Shard::new(cfg.clone(), rules.clone());
        for &i in &stream.arrival[..at] {
            shard.apply(&stream.events[i]).unwrap();
        }
        let bytes = shard.snapshot();
        let before = shard.aggregates().clone();
        let customers = shard.customers();
        drop(shard);
        let mut restored = Shard::restore(&bytes, cfg.clone(), rules.clone()).unwrap();
        prop_assert_eq!(restored.aggregates(), &before, "restore is lossless");
        prop_assert_eq!(restored.customers(), customers);
        for &i in &stream.arrival[at..] {
            restored.apply(&stream.events[i]).unwrap();
        }
        restored.flush();
        for (from, to) in windows(&stream.events) {
            let a = Summary::of(whole[0].aggregates(), from, to, &include());
            let b = Summary::of(restored.aggregates(), from, to, &include());
            prop_assert_eq!(a, b);
        }
    }
}

/// The model's config with segments on `persona` and `first_touchpoint`.
fn segmented_config() -> EngineConfig {
    EngineConfig {
        segment_dimensions: vec!["persona".into(), "first_touchpoint".into()],
        ..config()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// SPEC §4 "Segments": for every figure, the values of a segment dimension sum to the
    /// total, in every window and in every grouping of shards; and configuring segments
    /// changes no total figure.
    #[test]
    fn segments_of_a_dimension_sum_to_the_total(stream in stream(), n in 1usize..4) {
        let rules = Arc::new(Rules::from_toml(RULES).unwrap());
        let plain = run(&stream, 1, &Arc::new(config()), &rules);
        let cfg = Arc::new(segmented_config());
        let shards = run(&stream, n, &cfg, &rules);
        let parts = || shards.iter().map(|s| s.aggregates());
        for (from, to) in windows(&stream.events) {
            let total = figures(Summary::collect(parts(), from, to, &include()));
            let unsegmented = figures(Summary::collect(plain.iter().map(|s| s.aggregates()), from, to, &include()));
            prop_assert_eq!(&total, &unsegmented, "segments change no total");
            for (d, dim) in cfg.segment_dimensions.iter().enumerate() {
                let values: Vec<String> = {
                    let mut v: Vec<String> = parts()
                        .flat_map(|a| {
                            let i = a.segment_dims[d];
                            (0..a.dimensions[i].values.len())
                                .map(|id| a.dimensions[i].values.name(id as u16).to_string())
                                .collect::<Vec<_>>()
                        })
                        .collect();
                    v.sort();
                    v.dedup();
                    v
                };
                let mut sum = Summary::default();
                for v in &values {
                    let inc = Include {
                        segment: Some(SegmentFilter { dimension: dim.clone(), value: v.clone() }),
                        ..include()
                    };
                    sum.merge(&Summary::collect(parts(), from, to, &inc));
                }
                prop_assert_eq!(&figures(sum), &total, "segments of {} in [{}, {})", dim, from, to);
            }
        }
    }

    /// Segment aggregates survive a snapshot: restore, continue, and every segment's figures
    /// equal those of a shard that never stopped.
    #[test]
    fn segments_survive_snapshot_restore(stream in stream(), cut in any::<prop::sample::Index>()) {
        let cfg = Arc::new(segmented_config());
        let rules = Arc::new(Rules::from_toml(RULES).unwrap());
        let whole = run(&stream, 1, &cfg, &rules);
        let at = cut.index(stream.arrival.len() + 1);
        let mut shard = Shard::new(cfg.clone(), rules.clone());
        for &i in &stream.arrival[..at] {
            shard.apply(&stream.events[i]).unwrap();
        }
        let mut restored = Shard::restore(&shard.snapshot(), cfg.clone(), rules.clone()).unwrap();
        for &i in &stream.arrival[at..] {
            restored.apply(&stream.events[i]).unwrap();
        }
        restored.flush();
        for v in ["saver", "pro", "casual", "(none)"] {
            let inc = Include {
                segment: Some(SegmentFilter { dimension: "persona".into(), value: v.into() }),
                ..include()
            };
            for (from, to) in windows(&stream.events) {
                prop_assert_eq!(
                    Summary::of(whole[0].aggregates(), from, to, &inc),
                    Summary::of(restored.aggregates(), from, to, &inc)
                );
            }
        }
    }
}

#[test]
fn a_snapshot_under_other_segment_dimensions_is_refused() {
    let rules = Arc::new(Rules::from_toml(RULES).unwrap());
    let shard = Shard::new(Arc::new(segmented_config()), rules.clone());
    let err = Shard::restore(&shard.snapshot(), Arc::new(config()), rules).unwrap_err();
    assert_eq!(
        err.to_string(),
        "snapshot does not fit the configuration: snapshot has segment dimensions [persona, first_touchpoint], the configuration []"
    );
}

#[test]
fn shuffling_beyond_lateness_is_detected_as_late() {
    let cfg = Arc::new(config());
    let rules = Arc::new(Rules::from_toml(RULES).unwrap());
    let mut shard = Shard::new(cfg, rules);
    let ev = |ts: Millis| Event {
        event_id: None,
        customer_id: Cow::Borrowed("c1"),
        ts,
        source: Cow::Borrowed("web"),
        name: Cow::Borrowed("order"),
        attributes: json!({}),
    };
    assert!(!shard.apply(&ev(T0 + HOUR)).unwrap().late);
    assert!(
        !shard.apply(&ev(T0 + HOUR - 5 * MINUTE)).unwrap().late,
        "exactly at the watermark"
    );
    assert!(shard.apply(&ev(T0 + HOUR - 5 * MINUTE - 1)).unwrap().late);
    assert_eq!(shard.aggregates().counters.late, 1);
}

#[test]
fn sketch_reference_is_the_engines_sketch() {
    // The reference builds the same sketch type; guard that it is order independent.
    let mut a = Sketch::default();
    let mut b = Sketch::default();
    for v in [5u64, 500, 50_000] {
        a.add(v);
    }
    for v in [50_000u64, 5, 500] {
        b.add(v);
    }
    assert_eq!(a, b);
}

/// Which events a per-session limit must reject, arrival by arrival: each event joins the
/// session that the customer's accepted events form with it inserted after every event of the
/// same time; it is rejected when that session already holds `limit` events. Sessions that are
/// complete do not count, whatever the watermark.
fn limit_reference(stream: &Stream, cfg: &EngineConfig, limit: usize) -> Vec<bool> {
    let mut accepted: BTreeMap<&str, Vec<Millis>> = BTreeMap::new();
    let mut rejected = vec![false; stream.events.len()];
    for &i in &stream.arrival {
        let e = &stream.events[i];
        let times = accepted.entry(&e.customer_id).or_default();
        let pos = times.partition_point(|&t| t <= e.ts);
        let mut with = times.clone();
        with.insert(pos, e.ts);
        // Cut `with` into sessions; find the one holding `pos`.
        let (mut start, mut joined) = (0, None);
        for k in 1..=with.len() {
            let split = k == with.len()
                || with[k] - with[k - 1] > cfg.session_gap
                || with[k] - with[start] >= cfg.session_max_duration;
            if split {
                if (start..k).contains(&pos) {
                    joined = Some(k - start - 1);
                }
                start = k;
            }
        }
        if joined.unwrap() >= limit {
            rejected[i] = true;
        } else {
            times.insert(pos, e.ts);
        }
    }
    rejected
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn session_limit_counts_only_the_session_an_event_joins(stream in stream(), limit in 1usize..6) {
        let cfg = Arc::new(EngineConfig { session_max_events: limit, ..config() });
        let rules = Arc::new(Rules::from_toml(RULES).unwrap());
        let want = limit_reference(&stream, &cfg, limit);
        let mut shard = Shard::new(cfg.clone(), rules.clone());
        let mut got = vec![false; stream.events.len()];
        for &i in &stream.arrival {
            match shard.apply(&stream.events[i]) {
                Ok(a) => prop_assert!(!a.late),
                Err(journey_core::ApplyError::TooManyEvents { .. }) => got[i] = true,
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
        shard.flush();
        prop_assert_eq!(&got, &want);
        let rejected = want.iter().filter(|r| **r).count() as u64;
        prop_assert_eq!(shard.aggregates().counters.rejected_too_many_events, rejected);
        // The accepted events give exactly the reference's figures: rejected ones left no trace.
        let accepted = stream.arrival.iter().filter(|&&i| !want[i]).map(|&i| &stream.events[i]);
        let records = reference(accepted, &rules, &cfg);
        for (from, to) in windows(&stream.events) {
            let got = figures(Summary::of(shard.aggregates(), from, to, &include()));
            let want = figures(reference_summary(&records, &rules, from, to));
            prop_assert_eq!(got, want, "window [{}, {})", from, to);
        }
    }
}
