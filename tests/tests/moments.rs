//! Moments of truth over generated data (issue 17): the generator's planted moment of truth
//! (`GenConfig::planted_moment`: a newsletter signup makes a visitor add to the cart) is what
//! `/v1/moments`' ranking puts first, over every task merged and in each persona's segment;
//! without the plant, the same touchpoint is no significant rise.

use std::path::PathBuf;
use std::sync::Arc;

use journey_core::query::{moments, Include, MomentsReport, SegmentFilter, Summary};
use journey_core::time::DAY;
use journey_core::{EngineConfig, Rules, Shard};
use journey_gen::{generate, GenConfig};

const PERSONAS: [&str; 4] = ["bargain-hunter", "researcher", "impulse", "business"];

fn rules() -> Arc<Rules> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/rules.toml");
    Arc::new(Rules::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap())
}

/// Replays the generator's journeys through four tasks (routed by customer) and reports the
/// moments of truth of the default goal, for all journeys or one persona.
fn report(planted: bool, persona: Option<&str>) -> MomentsReport {
    let cfg = Arc::new(EngineConfig {
        breakdowns: vec!["persona".into()],
        segment_dimensions: vec!["persona".into()],
        ..EngineConfig::default()
    });
    let rules = rules();
    let gen = GenConfig {
        customers: 6_000,
        span: 2 * DAY,
        planted_moment: planted,
        ..GenConfig::default()
    };
    let mut shards: Vec<Shard> = (0..4)
        .map(|_| Shard::new(cfg.clone(), rules.clone()))
        .collect();
    for e in generate(&gen) {
        let k = e.customer_id[2..].parse::<usize>().unwrap() % shards.len();
        shards[k].apply(&e).unwrap();
    }
    for s in &mut shards {
        s.flush();
    }
    let goal = cfg.moment_goals(&rules);
    assert_eq!(
        goal,
        ["decision"],
        "the phase of the rules' goal touchpoints"
    );
    let include = Include {
        segment: persona.map(|p| SegmentFilter {
            dimension: "persona".into(),
            value: p.into(),
        }),
        ..Include::default()
    };
    let (from, to) = (gen.start - DAY, gen.start + 60 * DAY);
    let sum = Summary::collect(shards.iter().map(|s| s.aggregates()), from, to, &include);
    moments(&sum, &rules, &goal[0])
}

#[test]
fn the_planted_moment_of_truth_ranks_first() {
    let r = report(true, None);
    let first = &r.moments[0];
    assert_eq!(
        first.touchpoint,
        "newsletter_signup",
        "{:#?}",
        &r.moments[..3]
    );
    assert!(first.significant, "{first:?}");
    assert!(first.lift.unwrap() > 1.3, "{first:?}");
    let [lo, _] = first.ci95.unwrap();
    assert!(
        lo > 1.0,
        "the odds ratio's interval lies above 1: {first:?}"
    );
    assert!(
        r.journeys > 5_000,
        "one journey per customer: {}",
        r.journeys
    );
    // In every persona's segment too: the plant is in every persona's behaviour.
    for p in PERSONAS {
        let r = report(true, Some(p));
        assert_eq!(r.moments[0].touchpoint, "newsletter_signup", "persona {p}");
    }
}

#[test]
fn without_the_plant_the_newsletter_is_no_significant_rise() {
    let r = report(false, None);
    let n = r
        .moments
        .iter()
        .find(|m| m.touchpoint == "newsletter_signup")
        .unwrap();
    let rise = n.significant && n.lift.is_some_and(|l| l > 1.0);
    assert!(!rise, "{n:?}");
    assert_ne!(r.moments[0].touchpoint, "newsletter_signup");
}
