//! Segments over generated data with personas (issue 17, SPEC §4 "Segments"): the figures of
//! `segment=persona:X` equal those of a replay of only persona X's customers, and the
//! segments of a dimension sum to the total for every figure.
//!
//! The generator gives each customer one persona, carried by every page view, and every
//! journey starts with a page view; the journey window is long enough that each customer has
//! one journey. So "the journeys of persona X" and "the customers of persona X" are the same
//! set, and a replay of those customers alone is the reference.

use std::path::PathBuf;
use std::sync::Arc;

use journey_core::query::{funnel, touchpoints, transitions, Include, SegmentFilter, Summary};
use journey_core::time::{DAY, MINUTE};
use journey_core::{EngineConfig, Event, Rules, Shard};
use journey_gen::{generate, GenConfig};

const PERSONAS: [&str; 4] = ["bargain-hunter", "researcher", "impulse", "business"];

fn rules() -> Arc<Rules> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/rules.toml");
    Arc::new(Rules::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap())
}

fn config() -> EngineConfig {
    EngineConfig {
        journey_window: 120 * DAY,
        breakdowns: vec!["persona".into(), "utm_medium".into()],
        segment_dimensions: vec!["persona".into(), "first_touchpoint".into()],
        retention_fine: 100 * DAY,
        retention_total: 200 * DAY,
        ..EngineConfig::default()
    }
}

fn persona<'e>(e: &'e Event<'_>) -> Option<&'e str> {
    e.attributes.get("persona").and_then(|v| v.as_str())
}

/// Replays `events` through `tasks` shards routed by customer, as the runtime does.
fn replay<'a>(events: impl Iterator<Item = &'a Event<'static>>, tasks: usize) -> Vec<Shard> {
    let cfg = Arc::new(config());
    let rules = rules();
    let mut shards: Vec<Shard> = (0..tasks)
        .map(|_| Shard::new(cfg.clone(), rules.clone()))
        .collect();
    for e in events {
        let k = e.customer_id[2..].parse::<usize>().unwrap() % tasks;
        shards[k].apply(e).unwrap();
    }
    for s in &mut shards {
        s.flush();
    }
    shards
}

fn figures(mut s: Summary) -> Summary {
    // Counters are shard-wide, not per segment.
    s.counters = Default::default();
    s
}

fn include(segment: Option<(&str, &str)>) -> Include {
    Include {
        breakdowns: vec!["utm_medium".into()],
        segment: segment.map(|(d, v)| SegmentFilter {
            dimension: d.into(),
            value: v.into(),
        }),
    }
}

#[test]
fn each_persona_segment_equals_a_replay_of_only_its_customers() {
    let gen = GenConfig {
        customers: 3_000,
        span: 3 * DAY,
        ..GenConfig::default()
    };
    let events = generate(&gen);
    let all = replay(events.iter(), 3);
    let rules = rules();
    let (from, to) = (gen.start - DAY, gen.start + 150 * DAY);
    // Sub-ranges too: a day, and minutes at the start.
    let ranges = [
        (from, to),
        (gen.start + DAY, gen.start + 2 * DAY),
        (gen.start + 7 * MINUTE, gen.start + 95 * MINUTE),
    ];
    let mut customers_of: Vec<std::collections::BTreeSet<&str>> = vec![Default::default(); 4];
    for e in &events {
        if let Some(p) = persona(e) {
            let i = PERSONAS.iter().position(|x| *x == p).unwrap();
            customers_of[i].insert(&e.customer_id);
        }
    }
    for (i, p) in PERSONAS.iter().enumerate() {
        assert!(customers_of[i].len() > 100, "{p} has customers");
        let only = replay(
            events
                .iter()
                .filter(|e| customers_of[i].contains(&*e.customer_id)),
            2,
        );
        for &(a, b) in &ranges {
            let want = figures(Summary::collect(
                only.iter().map(|s| s.aggregates()),
                a,
                b,
                &include(None),
            ));
            let got = figures(Summary::collect(
                all.iter().map(|s| s.aggregates()),
                a,
                b,
                &include(Some(("persona", p))),
            ));
            assert!(want.sessions > 0 || (a, b) != (from, to));
            assert_eq!(got, want, "persona {p}, range [{a}, {b})");
            // So every report agrees as well.
            assert_eq!(
                funnel(&got, rules.phases(), Some("utm_medium"), 100),
                funnel(&want, rules.phases(), Some("utm_medium"), 100)
            );
            assert_eq!(touchpoints(&got, &rules), touchpoints(&want, &rules));
            assert_eq!(transitions(&got), transitions(&want));
        }
    }
}

#[test]
fn segments_sum_to_the_total_for_every_figure() {
    let gen = GenConfig {
        customers: 2_000,
        span: 2 * DAY,
        out_of_order: 0.2,
        ..GenConfig::default()
    };
    let events = generate(&gen);
    let all = replay(events.iter(), 4);
    let (from, to) = (gen.start - DAY, gen.start + 150 * DAY);
    let total = figures(Summary::collect(
        all.iter().map(|s| s.aggregates()),
        from,
        to,
        &include(None),
    ));
    assert!(total.sessions > 1_000);
    for dim in ["persona", "first_touchpoint"] {
        let mut values: Vec<String> = all
            .iter()
            .flat_map(|s| {
                let a = s.aggregates();
                let d = &a.dimensions[a.dimensions.iter().position(|x| x.name == dim).unwrap()];
                (0..d.values.len()).map(|v| d.values.name(v as u16).to_string())
            })
            .collect();
        values.sort();
        values.dedup();
        let mut sum = Summary::default();
        for v in &values {
            sum.merge(&Summary::collect(
                all.iter().map(|s| s.aggregates()),
                from,
                to,
                &include(Some((dim, v))),
            ));
        }
        assert_eq!(figures(sum), total, "the values of {dim} sum to the total");
    }
}

/// Memory stays bounded: each segment dimension adds at most one copy of the figures per
/// value that occurs, measured as the encoded size of the aggregates (a snapshot after the
/// end of input, when every customer is evicted). Prints the figures of docs/benchmarks.md.
#[test]
fn segment_aggregates_cost_at_most_one_copy_per_value() {
    let gen = GenConfig {
        customers: 2_000,
        span: 2 * DAY,
        ..GenConfig::default()
    };
    let events = generate(&gen);
    let size = |segments: &[&str]| {
        let cfg = Arc::new(EngineConfig {
            segment_dimensions: segments.iter().map(|s| s.to_string()).collect(),
            ..config()
        });
        let mut shard = Shard::new(cfg, rules());
        for e in &events {
            shard.apply(e).unwrap();
        }
        shard.flush();
        assert_eq!(shard.customers(), 0);
        shard.snapshot().len()
    };
    let plain = size(&[]);
    let persona = size(&["persona"]);
    let both = size(&["persona", "first_touchpoint"]);
    eprintln!("aggregates: {plain} B; with persona: {persona} B; with persona and first_touchpoint: {both} B");
    // 4 personas; first touchpoints of the generator: 5 awareness touchpoints.
    assert!(persona > plain);
    assert!(persona <= plain * (1 + 4), "{persona} > 5 × {plain}");
    assert!(both <= plain * (1 + 4 + 5), "{both} > 10 × {plain}");
}
