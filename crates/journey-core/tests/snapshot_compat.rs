//! Snapshots written by an earlier release are read by this one: a checkpoint survives an
//! upgrade. `tests/data/shard-v5.snapshot` was written by journeyd at commit a408a74 (snapshot
//! format version 5) from the first half of [`events`]; restoring it here, applying the second
//! half and flushing must give the figures of one shard that never stopped.

use std::borrow::Cow;
use std::sync::Arc;

use journey_core::query::{Include, Summary};
use journey_core::snapshot;
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
name = "blog"
phase = "awareness"
event = "blog_view"
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

const T: Millis = 1_795_000_000_000;
const FIXTURE: &[u8] = include_bytes!("data/shard-v5.snapshot");

fn config() -> Arc<EngineConfig> {
    Arc::new(EngineConfig {
        journey_window: 2 * DAY,
        // A day of lateness keeps previous journeys and sessions open across the cut.
        allowed_lateness: DAY,
        breakdowns: vec!["persona".into()],
        segment_dimensions: vec!["persona".into()],
        goal_phases: vec!["decision".into(), "consideration".into()],
        // Hour buckets past an hour keep the fixture small.
        retention_fine: HOUR,
        ..EngineConfig::default()
    })
}

fn rules() -> Arc<Rules> {
    Arc::new(Rules::from_toml(RULES).unwrap())
}

/// Twelve customers over ten days, in time order with jitter under the allowed lateness:
/// several journeys each, sessions open across the cut, personas for segments.
fn events() -> Vec<Event<'static>> {
    let names = ["page_view", "blog_view", "product_view", "order", "scroll"];
    let mut rng: u64 = 7;
    let mut next = move |n: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % n
    };
    let mut out = Vec::new();
    for c in 0..12u64 {
        let mut ts = T + next(DAY as u64) as Millis;
        while ts < T + 10 * DAY {
            let step = match next(4) {
                0 => next(20) * MINUTE as u64,
                1 => next(50) * MINUTE as u64,
                2 => next(30) * HOUR as u64,
                _ => next(3) * DAY as u64,
            };
            ts += step as Millis;
            let mut attributes = json!({});
            if next(3) == 0 {
                attributes["persona"] = json!(["saver", "pro"][next(2) as usize]);
            }
            out.push(Event {
                event_id: None,
                customer_id: Cow::Owned(format!("c{c}")),
                ts,
                source: Cow::Borrowed("web"),
                name: Cow::Borrowed(names[next(5) as usize]),
                attributes,
            });
        }
    }
    // Arrival: time order with a jitter of up to 4 minutes.
    let mut keyed: Vec<(Millis, usize)> = out
        .iter()
        .enumerate()
        .map(|(i, e)| (e.ts + next(5) as Millis * MINUTE - 2 * MINUTE, i))
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, i)| out[i].clone()).collect()
}

fn summary(s: &Shard) -> Summary {
    let include = Include {
        breakdowns: vec!["persona".into()],
        ..Include::default()
    };
    Summary::collect([s.aggregates()], T - DAY, T + 20 * DAY, &include)
}

#[test]
fn a_version_5_snapshot_restores_and_continues_as_if_never_stopped() {
    let evs = events();
    let (before, after) = evs.split_at(evs.len() / 2);
    assert_eq!(snapshot::format_version(FIXTURE), Some(5));
    let mut restored = Shard::restore(FIXTURE, config(), rules()).unwrap();
    assert_eq!(
        snapshot::format_version(&restored.snapshot()),
        Some(snapshot::VERSION),
        "written in the current format"
    );
    assert_eq!(snapshot::format_version(b"JRNYSHR"), None);
    // The fixture holds what changed shape since version 5: customers with a previous
    // journey, and sessions open across the cut.
    let ids: Vec<String> = (0..12).map(|c| format!("c{c}")).collect();
    let views: Vec<_> = ids.iter().filter_map(|id| restored.customer(id)).collect();
    let with_prev = views.iter().filter(|v| v.journeys.len() == 2).count();
    let open = views.iter().filter(|v| !v.open_events.is_empty()).count();
    eprintln!(
        "{} customers, {with_prev} with a previous journey, {open} with open events",
        views.len()
    );
    assert!(
        with_prev >= 2 && open >= 2,
        "{with_prev} previous journeys, {open} open sessions"
    );

    let mut never_stopped = Shard::new(config(), rules());
    for e in before {
        let _ = never_stopped.apply(e);
    }
    assert_eq!(summary(&restored), summary(&never_stopped), "at the cut");
    for e in after {
        assert_eq!(
            restored.apply(e).map_err(|e| e.to_string()),
            never_stopped.apply(e).map_err(|e| e.to_string())
        );
    }
    restored.flush();
    never_stopped.flush();
    assert_eq!(summary(&restored), summary(&never_stopped));
    assert!(summary(&restored).sessions > 100);
}
