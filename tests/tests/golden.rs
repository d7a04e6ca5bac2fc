//! Golden test: a hand-written event file and `config/rules.toml` give exactly the
//! classification and figures checked in under `tests/golden/`.

use std::path::PathBuf;
use std::sync::Arc;

use journey_core::query::{funnel, touchpoints, transitions, Include, Summary};
use journey_core::time::DAY;
use journey_core::{decode_canonical, DecodeLimits, EngineConfig, Rules, Shard};
use serde_json::{json, Value};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs the file through the engine and renders everything the golden file holds.
fn render() -> Value {
    let rules_text = std::fs::read_to_string(repo().join("config/rules.toml")).unwrap();
    let rules = Arc::new(Rules::from_toml(&rules_text).unwrap());
    let cfg = Arc::new(EngineConfig::default());
    let mut shard = Shard::new(cfg.clone(), rules.clone());
    let input = std::fs::read_to_string(repo().join("tests/golden/events.ndjson")).unwrap();
    let mut lines = Vec::new();
    for (n, line) in input.lines().enumerate() {
        match decode_canonical(line.as_bytes(), "web", &DecodeLimits::default()) {
            Ok(ev) => {
                let applied = shard.apply(&ev).unwrap();
                let tp = applied.touchpoint.map(|i| rules.touchpoint(i));
                lines.push(json!({
                    "line": n + 1,
                    "event_id": ev.event_id,
                    "touchpoint": tp.map(|t| t.name.clone()),
                    "phase": tp.map(|t| rules.phases()[t.phase].clone()),
                    "late": applied.late,
                }));
            }
            Err(e) => {
                lines.push(json!({ "line": n + 1, "rejected": e.reason(), "error": e.to_string() }))
            }
        }
    }
    shard.flush();
    let from = journey_core::event::parse_rfc3339("2026-11-20T00:00:00Z").unwrap();
    let include = Include {
        breakdowns: vec!["source".into(), "first_touchpoint".into()],
        ..Include::default()
    };
    let s = Summary::collect([shard.aggregates()], from, from + 30 * DAY, &include);
    json!({
        "classification": lines,
        "funnel": funnel(&s, rules.phases(), None, 100),
        "funnel_by_first_touchpoint": funnel(&s, rules.phases(), Some("first_touchpoint"), 100).breakdown,
        "touchpoints": touchpoints(&s, &rules).into_iter().filter(|t| t.visits > 0).collect::<Vec<_>>(),
        "transitions": transitions(&s),
        "sessions": s.sessions,
        "counters": {
            "events": s.counters.events,
            "classified": s.counters.classified,
            "unclassified": s.counters.unclassified,
            "late": s.counters.late,
            "journeys_started": s.counters.journeys_started,
        },
    })
}

#[test]
fn golden_classification_and_figures() {
    let got = render();
    let path = repo().join("tests/golden/expected.json");
    let pretty = serde_json::to_string_pretty(&got).unwrap() + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &pretty).unwrap();
    }
    let want: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        got,
        want,
        "output differs from {}; rerun with UPDATE_GOLDEN=1 and review",
        path.display()
    );
}

/// The figures worked out by hand, asserted directly so that regenerating the golden file
/// cannot silently accept a wrong number.
#[test]
fn hand_computed_figures() {
    let got = render();
    let reached: Vec<i64> = got["funnel"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reached"].as_i64().unwrap())
        .collect();
    // Furthest phases: ann advocacy, ben decision, cat retention, dan advocacy.
    assert_eq!(reached, vec![4, 4, 4, 3, 2]);
    // Time to convert, t0 → phase (ms). Ann: ad 09:00, product 09:01, cart 09:03, NPS on the
    // 25th 10:00 (retention and advocacy at once, 5 d 1 h). Ben: 11:00, product 11:06, cart
    // next day 08:04 (21 h 4 min). Cat starts at her sales call (decision: 0 for the first
    // three phases), ticket 2 d 18 h later. Dan: 12:00, compare 20 s later, NPS 2 d later
    // (decision, retention and advocacy at once).
    let ttc = |i: usize| {
        let t = &got["funnel"]["steps"][i]["time_to_convert"];
        (
            t["count"].as_u64().unwrap(),
            t["min_ms"].as_u64().unwrap(),
            t["max_ms"].as_u64().unwrap(),
            t["mean_ms"].as_f64().unwrap(),
        )
    };
    assert_eq!(ttc(0), (4, 0, 0, 0.0));
    assert_eq!(
        ttc(1),
        (4, 0, 360_000, (60_000 + 360_000 + 20_000) as f64 / 4.0)
    );
    assert_eq!(
        ttc(2),
        (
            4,
            0,
            172_800_000,
            (180_000 + 75_840_000 + 172_800_000) as f64 / 4.0
        )
    );
    assert_eq!(
        ttc(3),
        (
            3,
            172_800_000,
            435_600_000,
            (435_600_000 + 237_600_000 + 172_800_000) as f64 / 3.0
        )
    );
    assert_eq!(
        ttc(4),
        (
            2,
            172_800_000,
            435_600_000,
            (435_600_000 + 172_800_000) as f64 / 2.0
        )
    );
    // Cat's lead (08:00) arrives after ann's order (09:07): 1 h behind the 09:02 watermark,
    // so it is late: in visits and the funnel, but in no session.
    assert_eq!(got["sessions"], 11);
    let lead = got["classification"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["event_id"] == "c1")
        .cloned()
        .unwrap();
    assert_eq!(lead["late"], true);
    assert_eq!(got["counters"]["late"], 1);
    let tp = |name: &str| {
        got["touchpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .cloned()
            .unwrap()
    };
    let figures = |name: &str| {
        let t = tp(name);
        (
            t["visits"].as_u64().unwrap(),
            t["sessions"].as_u64().unwrap(),
            t["exits"].as_u64().unwrap(),
            t["drop_offs"].as_u64().unwrap(),
        )
    };
    assert_eq!(figures("product_page"), (4, 3, 1, 1));
    assert_eq!(figures("cart"), (2, 2, 1, 1));
    assert_eq!(figures("order_confirmed"), (1, 1, 1, 0));
    assert_eq!(figures("nps_survey"), (2, 2, 1, 1));
    assert_eq!(
        figures("lead_created"),
        (1, 0, 0, 0),
        "late: a visit, no session"
    );
    assert_eq!(tp("order_confirmed")["completions"], 1);
    assert_eq!(tp("deal_won")["completions"], 1);
    // Dwell at product pages: 2 min (ann), 3 min (ben, past his scroll), 4 min (ben, next day).
    assert_eq!(tp("product_page")["dwell"]["count"], 3);
    assert_eq!(tp("product_page")["dwell"]["min_ms"], 120_000);
    assert_eq!(tp("product_page")["dwell"]["max_ms"], 240_000);
    let nps = &tp("nps_survey")["score"];
    assert_eq!(
        (nps["count"].as_u64(), nps["mean"].as_f64()),
        (Some(2), Some(6.5))
    );
    assert_eq!(
        nps["nps"]["nps"], 0.0,
        "one promoter (10), one detractor (3)"
    );
    assert_eq!(tp("ticket_resolved")["score"]["mean"], 4.0);
    let drop_offs: u64 = got["touchpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["drop_offs"].as_u64().unwrap())
        .sum();
    assert_eq!(drop_offs, 9, "11 sessions, 2 reached a goal");
    let count = |from: &str, to: &str| {
        got["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["from"] == from && t["to"] == to)
            .map(|t| t["count"].as_u64().unwrap())
    };
    assert_eq!(count("product_page", "add_to_cart"), Some(2));
    assert_eq!(count("(start)", "nps_survey"), Some(2));
    assert_eq!(
        count("product_page", "product_page"),
        None,
        "repeats are one step"
    );
    assert_eq!(count("blog_post", "product_page"), Some(1));
    let rejected: Vec<&Value> = got["classification"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l.get("rejected").is_some())
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["rejected"], "bad_timestamp");
    assert_eq!(
        got["counters"]["unclassified"], 2,
        "ben's scroll and his /about page"
    );
}
