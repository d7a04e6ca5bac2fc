//! Regression tests for the engine faults of issue 15, one per field case in
//! `tests/field-cases/` (events, rules and `expected.txt` with the reasoning). Each asserts the
//! figures of its `expected.txt`; decoding and replay faults are tested against the real
//! binary in `crates/journeyd/tests/field_cases.rs`.

use std::sync::Arc;

use journey_core::query::{funnel, touchpoints, transitions, Include, Summary};
use journey_core::time::{MAX_EVENT_TIME, MIN_EVENT_TIME};
use journey_core::{decode_canonical, ApplyError, DecodeLimits, EngineConfig, Rules, Shard};

macro_rules! case {
    ($dir:literal) => {
        (
            include_str!(concat!(
                "../../../tests/field-cases/",
                $dir,
                "/events.ndjson"
            )),
            include_str!(concat!("../../../tests/field-cases/", $dir, "/rules.toml")),
        )
    };
}

/// Applies every line in file order (arrival order), then ends the input.
fn replay(
    (events, rules): (&str, &str),
    cfg: EngineConfig,
) -> (Shard, Vec<Result<(), ApplyError>>) {
    let rules = Arc::new(Rules::from_toml(rules).unwrap());
    let mut shard = Shard::new(Arc::new(cfg), rules);
    let mut results = Vec::new();
    for line in events.lines().filter(|l| !l.trim().is_empty()) {
        let ev = decode_canonical(line.as_bytes(), "web", &DecodeLimits::default()).unwrap();
        results.push(shard.apply(&ev).map(|_| ()));
    }
    shard.flush();
    (shard, results)
}

fn summary(shard: &Shard) -> Summary {
    Summary::collect(
        [shard.aggregates()],
        MIN_EVENT_TIME,
        MAX_EVENT_TIME,
        &Include::default(),
    )
}

/// `from>to:count` for every transition, sorted, as `expected.txt` writes them.
fn transition_list(s: &Summary) -> Vec<String> {
    let mut v: Vec<String> = transitions(s)
        .iter()
        .map(|t| format!("{}>{}:{}", t.from, t.to, t.count))
        .collect();
    v.sort();
    v
}

fn reached(s: &Summary, rules: &Rules) -> Vec<i64> {
    funnel(s, rules.phases(), None, 100)
        .steps
        .iter()
        .map(|st| st.reached)
        .collect()
}

/// 01: two page views with the same whole-second timestamp keep their arrival order, not the
/// order of their touchpoints in the rules file.
#[test]
fn same_timestamp_ties_keep_arrival_order() {
    let (shard, results) = replay(
        case!("01-same-timestamp-tie-order"),
        EngineConfig::default(),
    );
    assert!(results.iter().all(Result::is_ok));
    let s = summary(&shard);
    assert_eq!(
        transition_list(&s),
        [
            "(start)>product_page:1",
            "blog_post>(exit):1",
            "product_page>blog_post:1"
        ]
    );
    let tps = touchpoints(&s, shard.rules());
    let (blog, product) = (&tps[0], &tps[1]);
    assert_eq!(
        (blog.name.as_str(), blog.exits, blog.drop_offs),
        ("blog_post", 1, 1)
    );
    assert_eq!(
        (product.name.as_str(), product.exits, product.drop_offs),
        ("product_page", 0, 0)
    );
    // The dwell sample belongs to the entry page (0 s until the blog post), not the exit.
    assert_eq!((product.dwell.count, blog.dwell.count), (1, 0));
}

/// 02: a finished session still waiting for the watermark does not count against the next
/// session's `session.max_events`.
#[test]
fn max_events_counts_only_the_joined_session() {
    let cfg = EngineConfig {
        session_max_events: 3,
        ..EngineConfig::default()
    };
    let case = case!("02-max-events-counts-previous-session");
    let (shard, results) = replay(case, cfg);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let s = summary(&shard);
    assert_eq!(s.counters.rejected_too_many_events, 0);
    assert_eq!(s.counters.events, 5, "applied");
    assert_eq!(s.sessions, 2);
    let tps = touchpoints(&s, shard.rules());
    let order = tps.iter().find(|t| t.name == "order_confirmed").unwrap();
    assert_eq!((order.visits, order.completions), (1, 1));
    assert_eq!(reached(&s, shard.rules()), [1, 1, 1, 0, 0]);
}

/// 02, the limit itself: a fourth event in the same session is still rejected.
#[test]
fn max_events_still_rejects_beyond_the_limit_in_one_session() {
    let cfg = EngineConfig {
        session_max_events: 2,
        ..EngineConfig::default()
    };
    let (shard, results) = replay(case!("02-max-events-counts-previous-session"), cfg);
    let rejected: Vec<usize> = (0..results.len())
        .filter(|&i| results[i].is_err())
        .collect();
    assert_eq!(rejected, [2], "only the third event of the first session");
    assert_eq!(summary(&shard).counters.rejected_too_many_events, 1);
}

/// 04: a late event of a customer whose journey is final and evicted adds a visit only; it
/// never starts a second journey for the same customer.
#[test]
fn late_event_after_eviction_creates_no_journey() {
    let (shard, results) = replay(
        case!("04-late-event-after-eviction-new-journey"),
        EngineConfig::default(),
    );
    assert!(results.iter().all(Result::is_ok));
    let s = summary(&shard);
    assert_eq!(reached(&s, shard.rules()), [2, 1, 0, 0, 0]);
    assert_eq!(s.counters.journeys_started, 2);
    assert_eq!(s.counters.late, 1);
    assert_eq!(s.counters.late_outside_journey, 1);
    let tps = touchpoints(&s, shard.rules());
    let order = tps.iter().find(|t| t.name == "order_confirmed").unwrap();
    assert_eq!((order.visits, order.sessions), (1, 0));
}

/// 04, the never-seen variant: a customer's first event arriving late creates no journey.
#[test]
fn late_first_event_of_a_never_seen_customer_creates_no_journey() {
    let events = concat!(
        r#"{"customer_id":"a","ts":"2026-11-05T10:00:00Z","source":"web","event":"page_view","attributes":{"url":"/blog/a"}}"#,
        "\n",
        r#"{"customer_id":"b","ts":"2026-11-05T09:00:00Z","source":"web","event":"order_completed"}"#,
    );
    let (_, rules) = case!("04-late-event-after-eviction-new-journey");
    let (shard, _) = replay((events, rules), EngineConfig::default());
    let s = summary(&shard);
    assert_eq!(s.counters.late, 1);
    assert_eq!(
        reached(&s, shard.rules()),
        [1, 0, 0, 0, 0],
        "only a's journey"
    );
    assert!(shard.customer("b").is_none(), "no state kept for b");
}
