//! Hand-written scenarios for sessions, lateness, journeys, eviction, reloads and snapshots:
//! each pins one rule of docs/semantics.md at its boundary.

use std::borrow::Cow;
use std::sync::Arc;

use journey_core::query::{funnel, touchpoints, Include, SegmentFilter, Summary};
use journey_core::snapshot::SnapshotError;
use journey_core::time::{Millis, DAY, HOUR, MINUTE};
use journey_core::{EngineConfig, Event, Rules, Shard};
use serde_json::json;

const RULES: &str = r#"
phases = ["awareness", "consideration", "decision"]
[[touchpoint]]
name = "visit"
phase = "awareness"
event = "page_view"
[[touchpoint]]
name = "product"
phase = "consideration"
event = "product_view"
[[touchpoint]]
name = "order"
phase = "decision"
event = "order"
goal = true
"#;

const T: Millis = 1_795_000_020_000 / HOUR * HOUR;

fn ev(customer: &str, ts: Millis, name: &str) -> Event<'static> {
    Event {
        event_id: None,
        customer_id: Cow::Owned(customer.to_string()),
        ts,
        source: Cow::Borrowed("web"),
        name: Cow::Owned(name.to_string()),
        attributes: json!({}),
    }
}

fn shard_with(cfg: EngineConfig) -> Shard {
    Shard::new(Arc::new(cfg), Arc::new(Rules::from_toml(RULES).unwrap()))
}

fn shard() -> Shard {
    shard_with(EngineConfig::default())
}

fn summary(s: &Shard) -> Summary {
    Summary::collect(
        [s.aggregates()],
        T - 10 * DAY,
        T + 100 * DAY,
        &Include::default(),
    )
}

fn sessions(s: &Shard) -> u64 {
    summary(s).sessions
}

#[test]
fn event_exactly_one_gap_later_arriving_at_the_watermark_joins_the_session() {
    let mut s = shard();
    s.apply(&ev("a", T, "page_view")).unwrap();
    // Another customer pushes the watermark to exactly T + 30m.
    s.apply(&ev("b", T + 35 * MINUTE, "page_view")).unwrap();
    assert_eq!(s.watermark(), T + 30 * MINUTE);
    assert_eq!(sessions(&s), 0, "a's session may still grow");
    let applied = s.apply(&ev("a", T + 30 * MINUTE, "order")).unwrap();
    assert!(!applied.late);
    s.flush();
    let tps = touchpoints(&summary(&s), s.rules());
    assert_eq!(sessions(&s), 2, "a: one session of two events; b: one");
    assert_eq!(tps[2].completions, 1);
    assert_eq!(tps[0].drop_offs, 1, "only b's session drops off");
}

#[test]
fn sessions_close_when_the_watermark_passes_last_plus_gap() {
    let mut s = shard();
    s.apply(&ev("a", T, "page_view")).unwrap();
    // Live mode: the wall clock moves the watermark to now − 5m.
    s.advance_clock(T + 35 * MINUTE);
    assert_eq!(sessions(&s), 0, "watermark == last + gap: not yet");
    s.advance_clock(T + 35 * MINUTE + 1);
    assert_eq!(sessions(&s), 1);
    assert_eq!(s.open_sessions(), 0);
}

#[test]
fn a_gap_longer_than_the_session_gap_splits() {
    let mut s = shard();
    s.apply(&ev("a", T, "page_view")).unwrap();
    s.apply(&ev("a", T + 30 * MINUTE + 1, "product_view"))
        .unwrap();
    s.flush();
    let sum = summary(&s);
    assert_eq!(sum.sessions, 2);
    assert_eq!(
        sum.transitions.len(),
        4,
        "two single-step sessions: start→x, x→exit each"
    );
}

#[test]
fn sessions_longer_than_max_duration_split() {
    let mut s = shard_with(EngineConfig {
        session_max_duration: HOUR,
        ..Default::default()
    });
    for m in (0..=90).step_by(10) {
        s.apply(&ev("a", T + m * MINUTE, "page_view")).unwrap();
    }
    s.flush();
    assert_eq!(
        sessions(&s),
        2,
        "0..50m in the first, 60..90m in the second"
    );
}

#[test]
fn late_events_reach_the_funnel_but_not_closed_sessions() {
    let mut s = shard();
    s.apply(&ev("a", T, "page_view")).unwrap();
    s.apply(&ev("b", T + 2 * HOUR, "page_view")).unwrap();
    assert_eq!(sessions(&s), 1, "a's session closed");
    let applied = s.apply(&ev("a", T + MINUTE, "order")).unwrap();
    assert!(applied.late);
    s.flush();
    let sum = summary(&s);
    assert_eq!(sum.counters.late, 1);
    let f = funnel(&sum, s.rules().phases(), None, 100);
    assert_eq!(
        f.steps.iter().map(|x| x.reached).collect::<Vec<_>>(),
        vec![2, 1, 1]
    );
    let tps = touchpoints(&sum, s.rules());
    assert_eq!(tps[2].visits, 1, "visits count late events");
    assert_eq!(tps[2].sessions, 0, "the closed session is not revised");
    assert_eq!(tps[0].drop_offs, 2);
}

#[test]
fn a_late_event_inside_an_open_session_joins_it() {
    let mut s = shard();
    s.apply(&ev("a", T, "page_view")).unwrap();
    s.apply(&ev("a", T + 20 * MINUTE, "page_view")).unwrap();
    s.advance_clock(T + 15 * MINUTE); // watermark T + 10m
    assert!(s.apply(&ev("a", T + 5 * MINUTE, "order")).unwrap().late);
    s.flush();
    let tps = touchpoints(&summary(&s), s.rules());
    assert_eq!(tps[2].sessions, 1);
    assert_eq!(tps[0].drop_offs, 0, "the session reached the goal");
}

#[test]
fn too_many_events_in_one_session_are_rejected_and_nothing_is_applied() {
    let mut s = shard_with(EngineConfig {
        session_max_events: 3,
        ..Default::default()
    });
    for i in 0..3 {
        s.apply(&ev("a", T + i * MINUTE, "page_view")).unwrap();
    }
    let err = s.apply(&ev("a", T + 4 * MINUTE, "order")).unwrap_err();
    assert_eq!(err.reason(), "too_many_events");
    assert_eq!(
        err.to_string(),
        "customer `a` already has 3 events in its open session"
    );
    s.flush();
    let sum = summary(&s);
    assert_eq!(sum.counters.events, 3);
    assert_eq!(sum.counters.rejected_too_many_events, 1);
    assert_eq!(touchpoints(&sum, s.rules())[2].visits, 0);
}

fn with_id(mut e: Event<'static>, id: &str) -> Event<'static> {
    e.event_id = Some(Cow::Owned(id.to_string()));
    e
}

#[test]
fn a_retried_event_id_counts_once_and_survives_a_snapshot() {
    let mut s = shard();
    s.apply(&with_id(ev("a", T, "page_view"), "e1")).unwrap();
    let err = s
        .apply(&with_id(ev("a", T, "page_view"), "e1"))
        .unwrap_err();
    assert_eq!(err.reason(), "duplicate");
    // The same id from another customer, and events without ids, are not duplicates.
    s.apply(&with_id(ev("b", T, "page_view"), "e1")).unwrap();
    s.apply(&ev("a", T + MINUTE, "page_view")).unwrap();
    s.apply(&ev("a", T + MINUTE, "page_view")).unwrap();
    let bytes = s.snapshot();
    let mut r = Shard::restore(&bytes, s.config().clone(), s.rules().clone()).unwrap();
    assert!(r.apply(&with_id(ev("a", T, "page_view"), "e1")).is_err());
    r.flush();
    let sum = summary(&r);
    assert_eq!(sum.counters.events, 4);
    assert_eq!(sum.counters.duplicates, 2);
    assert_eq!(touchpoints(&sum, r.rules())[0].visits, 4);
}

#[test]
fn duplicates_beyond_the_horizon_or_with_dedup_off_are_applied() {
    let mut s = shard_with(EngineConfig {
        dedup_horizon: HOUR,
        ..Default::default()
    });
    s.apply(&with_id(ev("a", T, "page_view"), "e1")).unwrap();
    s.apply(&ev("b", T + 2 * HOUR, "page_view")).unwrap();
    // Two hours on, `e1` is forgotten; it is also late, and still counted.
    s.apply(&with_id(ev("a", T, "page_view"), "e1")).unwrap();
    let mut off = shard_with(EngineConfig {
        dedup_horizon: 0,
        ..Default::default()
    });
    off.apply(&with_id(ev("a", T, "page_view"), "e1")).unwrap();
    off.apply(&with_id(ev("a", T, "page_view"), "e1")).unwrap();
    assert_eq!(off.remembered_ids(), 0);
}

#[test]
fn an_event_after_the_window_starts_a_new_journey() {
    let mut s = shard();
    s.apply(&ev("a", T, "page_view")).unwrap();
    s.apply(&ev("a", T + 30 * DAY, "order")).unwrap();
    s.apply(&ev("a", T + 30 * DAY + 1, "product_view")).unwrap();
    let view = s.customer("a").unwrap();
    assert_eq!(view.journeys.len(), 2);
    assert_eq!(view.journeys[0].furthest_phase, "decision");
    assert_eq!(view.journeys[1].furthest_phase, "consideration");
    assert_eq!(view.journeys[1].started_at, T + 30 * DAY + 1);
    s.flush();
    let f = funnel(&summary(&s), s.rules().phases(), None, 100);
    assert_eq!(f.journeys, 2);
    assert_eq!(f.steps[1].reached, 2);
    assert_eq!(f.steps[2].reached, 1);
    assert_eq!(f.steps[0].conversion, Some(1.0));
    assert_eq!(f.steps[1].conversion, Some(0.5));
    assert_eq!(f.steps[1].drop_off, Some(1));
    assert_eq!(f.steps[2].drop_off, None, "the last phase has no next one");
}

#[test]
fn phase_dwell_records_only_the_phase_left() {
    let mut s = shard();
    s.apply(&ev("a", T, "page_view")).unwrap();
    s.apply(&ev("a", T + 10 * MINUTE, "order")).unwrap(); // skips consideration
    s.apply(&ev("a", T + 20 * MINUTE, "product_view")).unwrap(); // not a move forward
    s.flush();
    let sum = summary(&s);
    let f = funnel(&sum, s.rules().phases(), None, 100);
    assert_eq!(f.steps[0].dwell.as_ref().unwrap().count, 1);
    assert_eq!(
        f.steps[0].dwell.as_ref().unwrap().max_ms,
        Some((10 * MINUTE) as u64)
    );
    assert_eq!(
        f.steps[1].dwell.as_ref().unwrap().count,
        0,
        "a skipped phase records nothing"
    );
    assert_eq!(f.steps[2].dwell.as_ref().unwrap().count, 0);
}

#[test]
fn customers_are_evicted_once_their_journey_is_final_and_no_session_is_open() {
    let mut s = shard();
    s.apply(&ev("a", T, "page_view")).unwrap();
    s.apply(&ev("b", T + HOUR, "page_view")).unwrap();
    assert_eq!(s.customers(), 2);
    s.advance_clock(T + 30 * DAY + 10 * MINUTE);
    assert_eq!(s.customers(), 1, "a's journey ended at T + 30d");
    s.advance_clock(T + 31 * DAY + 10 * MINUTE);
    assert_eq!(s.customers(), 0);
    assert!(s.customer("a").is_none());
    assert_eq!(s.aggregates().counters.customers_evicted, 2);
}

#[test]
fn unclassified_events_keep_a_session_alive() {
    let mut s = shard();
    s.apply(&ev("a", T, "page_view")).unwrap();
    s.apply(&ev("a", T + 25 * MINUTE, "scroll")).unwrap();
    s.apply(&ev("a", T + 50 * MINUTE, "order")).unwrap();
    s.flush();
    let sum = summary(&s);
    assert_eq!(sum.sessions, 1);
    let tps = touchpoints(&sum, s.rules());
    assert_eq!(
        tps[0].dwell.max_ms,
        Some((50 * MINUTE) as u64),
        "dwell runs to the next classified event"
    );
    assert_eq!(sum.counters.unclassified, 1);
}

#[test]
fn new_rules_apply_to_later_events_and_old_touchpoints_stay_readable() {
    let mut s = shard();
    s.apply(&ev("a", T, "page_view")).unwrap();
    let renamed = RULES.replace("name = \"visit\"", "name = \"landing\"");
    s.set_rules(Arc::new(Rules::from_toml(&renamed).unwrap()));
    s.apply(&ev("b", T + MINUTE, "page_view")).unwrap();
    s.flush();
    let tps = touchpoints(&summary(&s), s.rules());
    let landing = tps.iter().find(|t| t.name == "landing").unwrap();
    let visit = tps.iter().find(|t| t.name == "visit").unwrap();
    assert_eq!((landing.visits, visit.visits), (1, 1));
    assert_eq!(visit.phase, None, "no longer in the rules");
}

#[test]
fn breakdown_values_beyond_the_cap_fold_into_other() {
    let cfg = EngineConfig {
        breakdowns: vec!["persona".into()],
        breakdown_max_values: 2,
        ..Default::default()
    };
    let mut s = shard_with(cfg);
    for (i, p) in ["a", "b", "c", "d"].iter().enumerate() {
        let mut e = ev(&format!("c{i}"), T + i as Millis * MINUTE, "page_view");
        e.attributes = json!({ "persona": p });
        s.apply(&e).unwrap();
    }
    s.flush();
    assert_eq!(
        persona_rows(&s, 100),
        vec![
            ("a".to_string(), 1),
            ("b".to_string(), 1),
            ("other".to_string(), 2)
        ]
    );
    // The query's own cap folds again, keeping the largest values.
    let values: Vec<String> = persona_rows(&s, 2).into_iter().map(|(v, _)| v).collect();
    assert_eq!(values, vec!["a", "other"]);
}

/// The funnel's `persona` breakdown over the day around `T`: (value, journeys) per row, at
/// most `cap` rows.
fn persona_rows(s: &Shard, cap: usize) -> Vec<(String, i64)> {
    let sum = Summary::collect(
        [s.aggregates()],
        T - DAY,
        T + DAY,
        &Include {
            breakdowns: vec!["persona".into()],
            ..Include::default()
        },
    );
    funnel(&sum, s.rules().phases(), Some("persona"), cap)
        .breakdown
        .unwrap()
        .values
        .into_iter()
        .map(|v| (v.value, v.journeys))
        .collect()
}

/// Values are capped in size as in number: a megabyte value is kept as its first 253 bytes
/// and `…` (at a character boundary), and two values equal up to there are one row.
#[test]
fn breakdown_values_are_cut_to_their_first_bytes() {
    let cfg = EngineConfig {
        breakdowns: vec!["persona".into()],
        ..Default::default()
    };
    let mut s = shard_with(cfg);
    let long = |tail: &str| format!("{}{tail}", "é".repeat(500_000));
    for (i, p) in [long("x"), long("y"), "short".to_string()]
        .iter()
        .enumerate()
    {
        let mut e = ev(&format!("c{i}"), T + i as Millis * MINUTE, "page_view");
        e.attributes = json!({ "persona": p });
        s.apply(&e).unwrap();
    }
    s.flush();
    let mut values = persona_rows(&s, 100);
    values.sort();
    let cut = format!("{}…", "é".repeat(126));
    assert_eq!(cut.len(), 255, "252 bytes of é, then the 3-byte ellipsis");
    assert_eq!(values, vec![("short".to_string(), 1), (cut, 2)]);
}

#[test]
fn corrupt_snapshots_are_refused_whole() {
    let mut s = shard();
    s.apply(&ev("a", T, "page_view")).unwrap();
    let good = s.snapshot();
    let cfg = Arc::new(EngineConfig::default());
    let rules = Arc::new(Rules::from_toml(RULES).unwrap());
    let restore = |b: &[u8]| Shard::restore(b, cfg.clone(), rules.clone()).map(|_| ());
    assert!(restore(&good).is_ok());
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(matches!(
        restore(&flipped),
        Err(SnapshotError::Checksum { .. })
    ));
    let mut version = good.clone();
    version[8] = 99;
    assert_eq!(
        restore(&version).unwrap_err().to_string(),
        "snapshot format version 99 was written by a newer journeyd (this build reads versions 5 to 6): run that build, restore the copy of the state store taken before upgrading, or move the checkpoint away and re-read the input to rebuild the state"
    );
    // A version 3 snapshot (before segments and time to convert) is refused by its version.
    version[8] = 3;
    assert_eq!(
        restore(&version).unwrap_err().to_string(),
        "snapshot format version 3 is not supported (this build reads versions 5 to 6): move the checkpoint away and re-read the input to rebuild the state"
    );
    // So is a version 4 snapshot (before moments of truth: its journeys have no touched-sets).
    version[8] = 4;
    assert_eq!(
        restore(&version).unwrap_err().to_string(),
        "snapshot format version 4 is not supported (this build reads versions 5 to 6): move the checkpoint away and re-read the input to rebuild the state"
    );
    assert!(matches!(
        restore(&good[..10]),
        Err(SnapshotError::Truncated(10))
    ));
    assert!(matches!(
        restore(b"not a snapshot at all"),
        Err(SnapshotError::BadMagic)
    ));
    let other = Arc::new(EngineConfig {
        breakdowns: vec!["persona".into()],
        ..Default::default()
    });
    let err = Shard::restore(&good, other, rules.clone()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "snapshot does not fit the configuration: snapshot has breakdown dimensions \
         [source, first_touchpoint], the configuration [source, first_touchpoint, persona]"
    );
}

#[test]
fn customer_view_shows_journey_and_open_session() {
    let mut s = shard();
    s.apply(&ev("a", T, "page_view")).unwrap();
    s.apply(&ev("a", T + MINUTE, "scroll")).unwrap();
    s.apply(&ev("a", T + 2 * MINUTE, "product_view")).unwrap();
    let v = s.customer("a").unwrap();
    assert_eq!(v.journeys.len(), 1);
    let j = &v.journeys[0];
    assert_eq!(j.furthest_phase, "consideration");
    assert_eq!(
        j.phases,
        vec![
            ("awareness".to_string(), T),
            ("consideration".to_string(), T + 2 * MINUTE)
        ]
    );
    assert_eq!(
        j.breakdown,
        vec![
            ("source".into(), "web".into()),
            ("first_touchpoint".into(), "visit".into())
        ]
    );
    let tps: Vec<Option<&str>> = v
        .open_events
        .iter()
        .map(|p| p.touchpoint.as_deref())
        .collect();
    assert_eq!(tps, vec![Some("visit"), None, Some("product")]);
    assert!(s.customer("nobody").is_none());
}

#[test]
fn cumulative_totals_only_grow_and_follow_the_furthest_phase() {
    let mut s = shard_with(EngineConfig {
        retention_fine: HOUR,
        retention_total: 2 * HOUR,
        ..Default::default()
    });
    s.apply(&ev("a", T, "page_view")).unwrap();
    s.apply(&ev("a", T + MINUTE, "order")).unwrap(); // skips consideration: reached anyway
    s.apply(&ev("b", T + 2 * MINUTE, "product_view")).unwrap();
    // Far later events push the first hours out of retention; totals keep them.
    s.apply(&ev("c", T + 10 * HOUR, "page_view")).unwrap();
    s.flush();
    let totals = &s.aggregates().totals;
    let phase =
        |name: &str| totals.phase_reached[s.aggregates().phases.get(name).unwrap() as usize];
    assert_eq!(
        (
            phase("awareness"),
            phase("consideration"),
            phase("decision")
        ),
        (3, 2, 1)
    );
    let tp = |name: &str| {
        totals.touchpoints[s.aggregates().touchpoints.get(name).unwrap() as usize].clone()
    };
    assert_eq!(
        (
            tp("visit").visits,
            tp("visit").sessions,
            tp("visit").drop_offs
        ),
        (2, 2, 1)
    );
    assert_eq!(
        (
            tp("order").exits,
            tp("order").completions,
            tp("order").drop_offs
        ),
        (1, 1, 0)
    );
    let mut sum = Summary::collect([s.aggregates()], T - DAY, T + DAY, &Include::default());
    sum.counters = Default::default();
    assert!(
        !sum.touchpoints.contains_key("order"),
        "the buckets have expired"
    );
}

/// Moments of truth (docs/semantics.md §6): a journey's touches count once its session has
/// closed, only before the journey reached the goal phase, and its figures move with the
/// journey when a late event moves its start; whether a touch came before the conversion is
/// decided when its session closes.
#[test]
fn moments_count_closed_sessions_before_conversion_and_follow_the_journey() {
    let mut s = shard();
    let moments = |s: &Shard, from: Millis, to: Millis| {
        Summary::collect([s.aggregates()], from, to, &Include::default())
            .moments
            .get("decision")
            .cloned()
            .unwrap_or_default()
    };
    s.apply(&ev("a", T, "page_view")).unwrap();
    let m = moments(&s, T - DAY, T + DAY);
    assert_eq!((m.journeys, m.converted), (1, 0));
    assert!(m.touched.is_empty(), "the session is still open");
    // Another customer moves the watermark past a's session: its touch is recorded.
    s.apply(&ev("b", T + 2 * HOUR, "page_view")).unwrap();
    let m = moments(&s, T - DAY, T + DAY);
    assert_eq!(m.touched.get("visit"), Some(&[1, 0]));
    // a converts in a second session; a product view after the order is no touch.
    s.apply(&ev("a", T + 3 * HOUR, "order")).unwrap();
    s.apply(&ev("a", T + 3 * HOUR + MINUTE, "product_view"))
        .unwrap();
    s.apply(&ev("b", T + 5 * HOUR, "page_view")).unwrap();
    let m = moments(&s, T - DAY, T + DAY);
    assert_eq!((m.journeys, m.converted), (2, 1));
    assert_eq!(m.touched.get("visit"), Some(&[2, 1]), "a's and b's visits");
    assert_eq!(m.touched.get("product"), None, "after the conversion");
    // A late order an hour before a's start moves the journey (and its touched-set, decided
    // when the session closed) to the earlier bucket.
    s.apply(&ev("a", T - HOUR, "order")).unwrap();
    let m = moments(&s, T - 2 * HOUR, T - HOUR + MINUTE);
    assert_eq!((m.journeys, m.converted), (1, 1));
    assert_eq!(m.touched.get("visit"), Some(&[1, 1]));
    let m = moments(&s, T, T + DAY);
    assert_eq!(
        (m.journeys, m.converted),
        (1, 0),
        "only b's journey is left there"
    );
    assert_eq!(m.touched.get("visit"), Some(&[1, 0]));
}

#[test]
fn a_snapshot_tracking_other_goal_phases_is_refused() {
    let rules = Arc::new(Rules::from_toml(RULES).unwrap());
    let s = shard_with(EngineConfig {
        goal_phases: vec!["consideration".into()],
        ..EngineConfig::default()
    });
    let bytes = s.snapshot();
    let other = EngineConfig {
        goal_phases: vec!["decision".into()],
        ..EngineConfig::default()
    };
    let err = Shard::restore(&bytes, Arc::new(other), rules.clone()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "snapshot does not fit the configuration: snapshot tracks moments for goal phases [consideration], the configuration [decision]"
    );
    // Derived goals (no setting): the snapshot's stay, its journeys' touched-sets are theirs.
    let restored = Shard::restore(&bytes, Arc::new(EngineConfig::default()), rules).unwrap();
    assert_eq!(restored.aggregates().moment_goals, ["consideration"]);
}

/// The touched-set holds touchpoint ids 0 to 62 (docs/semantics.md §6): a rule set with more
/// touchpoints leaves the later ones out of the moments figures, and nothing else changes.
#[test]
fn touchpoints_past_the_touched_set_bound_are_left_out_of_moments() {
    let mut text = String::from("phases = [\"a\", \"b\"]\n");
    for i in 0..70 {
        text.push_str(&format!(
            "[[touchpoint]]\nname = \"t{i}\"\nphase = \"a\"\nevent = \"e{i}\"\n"
        ));
    }
    text.push_str("[[touchpoint]]\nname = \"buy\"\nphase = \"b\"\nevent = \"buy\"\ngoal = true\n");
    let rules = Arc::new(Rules::from_toml(&text).unwrap());
    let mut s = Shard::new(Arc::new(EngineConfig::default()), rules);
    for (i, name) in ["e1", "e62", "e63", "e69", "buy"].iter().enumerate() {
        s.apply(&ev("a", T + i as Millis * MINUTE, name)).unwrap();
    }
    s.flush();
    let m = summary(&s).moments.get("b").cloned().unwrap();
    assert_eq!((m.journeys, m.converted), (1, 1));
    let touched: Vec<&str> = m.touched.keys().map(String::as_str).collect();
    assert_eq!(touched, ["t1", "t62"]);
    // The report says which touchpoints could not be tracked (ids 63 and up of 71 here).
    let untracked: Vec<&str> = m.untracked.iter().map(String::as_str).collect();
    assert_eq!(untracked.len(), 71 - 63);
    assert!(untracked.contains(&"t63") && untracked.contains(&"buy"));
    let report = journey_core::query::moments(&summary(&s), &s.rules().clone(), "b");
    let tracked = |n: &str| {
        report
            .moments
            .iter()
            .find(|m| m.touchpoint == n)
            .map(|m| m.tracked)
    };
    assert_eq!(
        (
            tracked("t1"),
            tracked("t62"),
            tracked("t63"),
            tracked("t69")
        ),
        (Some(true), Some(true), Some(false), Some(false))
    );
    assert_eq!(
        summary(&s).touchpoints["t69"].visits,
        1,
        "other figures keep it"
    );
}

fn with_persona(mut e: Event<'static>, persona: &str) -> Event<'static> {
    e.attributes = json!({ "persona": persona });
    e
}

fn segmented() -> Shard {
    shard_with(EngineConfig {
        journey_window: 2 * DAY,
        breakdowns: vec!["persona".into()],
        segment_dimensions: vec!["persona".into()],
        goal_phases: vec!["decision".into()],
        ..EngineConfig::default()
    })
}

fn of_segment(s: &Shard, persona: &str) -> Summary {
    let include = Include {
        segment: Some(SegmentFilter::parse(&format!("persona:{persona}")).unwrap()),
        ..Include::default()
    };
    Summary::collect([s.aggregates()], T - 10 * DAY, T + 100 * DAY, &include)
}

/// A session that began in one journey's window and runs into the next is still open when a
/// third journey starts (the proptest seed of 2026-12-01): the first journey is kept until
/// that session closes, so the session's touches reach its touched-set and its figures its
/// segment (docs/semantics.md §5, §6).
#[test]
fn a_journey_outlives_a_newer_one_while_its_session_is_open() {
    let mut s = segmented();
    s.apply(&with_persona(ev("a", T, "page_view"), "saver"))
        .unwrap();
    // Minutes before the first journey's window ends: a session that runs into the second.
    s.apply(&ev("a", T + 2 * DAY - 10 * MINUTE, "product_view"))
        .unwrap();
    s.apply(&with_persona(
        ev("a", T + 2 * DAY + 10 * MINUTE, "page_view"),
        "pro",
    ))
    .unwrap();
    // Past the second journey's window while that session is open: a third journey.
    s.apply(&ev("a", T + 4 * DAY + 20 * MINUTE, "order"))
        .unwrap();
    s.flush();

    let all = summary(&s);
    assert_eq!(all.counters.journeys_started, 3);
    let m = Summary::collect([s.aggregates()], T - DAY, T + 10 * DAY, &Include::default()).moments
        ["decision"]
        .clone();
    assert_eq!((m.journeys, m.converted), (3, 1));
    assert_eq!(
        m.touched.get("visit"),
        Some(&[2, 0]),
        "the first two journeys"
    );
    assert_eq!(
        m.touched.get("product"),
        Some(&[1, 0]),
        "the product view before the first window's end touched the first journey"
    );
    // The session is the first journey's: its segment is "saver".
    let saver = of_segment(&s, "saver");
    assert_eq!(
        saver.sessions, 2,
        "the first visit's session and the spanning one"
    );
    assert_eq!(saver.touchpoints["product"].sessions, 1);
    assert_eq!(of_segment(&s, "pro").sessions, 0);
}

/// With the watermark held back by a slow input (a task of several inputs), a customer can
/// be journeys ahead of it: an on-time event in an earlier journey's window still reaches that
/// journey, as it does when the same events are replayed in time order.
#[test]
fn an_on_time_event_reaches_a_journey_a_newer_one_followed() {
    let events = [
        ev("a", T, "page_view"),
        ev("a", T + 3 * DAY, "page_view"),
        ev("a", T + 6 * DAY, "page_view"),
        // The slow input's event: on time, since the watermark has not moved.
        ev("a", T + HOUR, "order"),
    ];
    let mut held = segmented();
    held.set_external_watermark(true);
    held.advance_clock(T);
    for e in &events {
        assert!(!held.apply(e).unwrap().late);
    }
    held.flush();
    let mut replayed = segmented();
    let mut in_order = events.clone();
    in_order.sort_by_key(|e| e.ts);
    for e in &in_order {
        replayed.apply(e).unwrap();
    }
    replayed.flush();

    let (h, r) = (summary(&held), summary(&replayed));
    assert_eq!(h.counters.late_outside_journey, 0);
    assert_eq!(
        h.phases["decision"].furthest, 1,
        "the first journey converted"
    );
    assert_eq!(h.phases, r.phases);
    assert_eq!(h.touchpoints, r.touchpoints);
    assert_eq!(h.moments, r.moments);
}
