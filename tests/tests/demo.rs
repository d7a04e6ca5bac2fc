//! `journeyd demo`, the real binary over real HTTP: after its backfill, within the first
//! minute every phase and every touchpoint of `config/rules.toml` has traffic, scores and
//! NPS show and the personas differ; then the scheduled drop-off spike at the cart makes the
//! cart's alert go pending and reach firing within the time the README states:
//! `--spike-after` + `session.allowed_lateness` + `session.gap` + `alerts.window` +
//! `alerts.for` + 1 minute after the start.
//!
//! The settings are shortened through flags and `JOURNEYD_*` variables (a week of history,
//! a 1-minute session gap, a 2-minute window, 20 s `for`), so the test takes about four
//! minutes instead of the quarter of an hour the defaults take.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use journey_tests::{free_port, get_json, http, Service};
use serde_json::Value;

const SPIKE_AFTER_S: u64 = 20;
const LATENESS_S: u64 = 10;
const GAP_S: u64 = 60;
const WINDOW_S: u64 = 120;
const FOR_S: u64 = 20;
const THRESHOLD_RELATIVE: f64 = 1.3;

fn demo() -> Service {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let spike_after = format!("{SPIKE_AFTER_S}s");
    let env: Vec<(String, String)> = [
        ("JOURNEYD_SESSION__GAP", format!("{GAP_S}s")),
        (
            "JOURNEYD_SESSION__ALLOWED_LATENESS",
            format!("{LATENESS_S}s"),
        ),
        ("JOURNEYD_ALERTS__WINDOW", format!("{WINDOW_S}s")),
        ("JOURNEYD_ALERTS__FOR", format!("{FOR_S}s")),
        ("JOURNEYD_ALERTS__INTERVAL", "2s".to_string()),
        // A 1-minute gap splits many visits, so the cart's usual drop-off rate is about 0.6
        // instead of 0.4: 1.5 times that is out of reach of any spike.
        (
            "JOURNEYD_ALERTS__THRESHOLD_RELATIVE",
            THRESHOLD_RELATIVE.to_string(),
        ),
        // Some 40 cart sessions a minute: 80 in the 2-minute window.
        ("JOURNEYD_ALERTS__MIN_SESSIONS", "50".to_string()),
        ("JOURNEYD_RUNTIME__PUBLISH_INTERVAL", "500ms".to_string()),
        ("JOURNEYD_RULES__WATCH", "false".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let args = [
        "demo",
        "--listen",
        &listen,
        "--history",
        "7d",
        "--history-per-day",
        "1000",
        "--spike-after",
        &spike_after,
        "--spike-abandon",
        "0.9",
    ];
    Service::start_command(&args, port, &env)
}

/// Every touchpoint and phase of the rules in force.
fn rules(port: u16) -> (Vec<String>, Vec<String>) {
    let r = get_json(port, "/v1/rules").expect("GET /v1/rules");
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("a list")
            .iter()
            .filter_map(|t| t.as_str().or(t["name"].as_str()).map(str::to_string))
            .collect()
    };
    (names(&r["touchpoints"]), names(&r["phases"]))
}

/// What is still missing for "every phase and touchpoint has traffic, scores show, personas
/// differ"; empty when nothing is.
fn missing(port: u16, touchpoints: &[String], phases: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let Some(tps) = get_json(port, "/v1/touchpoints") else {
        return vec!["/v1/touchpoints".into()];
    };
    let Some(funnel) = get_json(port, "/v1/funnel?breakdown=persona") else {
        return vec!["/v1/funnel".into()];
    };
    let list = tps["touchpoints"].as_array().cloned().unwrap_or_default();
    for name in touchpoints {
        let t = list.iter().find(|t| t["name"] == name.as_str());
        let n = |k: &str| t.and_then(|t| t[k].as_u64()).unwrap_or(0);
        if n("visits") == 0 || n("sessions") == 0 {
            out.push(format!("traffic at {name}"));
        }
    }
    let score = |name: &str| {
        list.iter()
            .find(|t| t["name"] == name)
            .map(|t| t["score"].clone())
    };
    if score("ticket_resolved").is_none_or(|s| s["count"].as_u64().unwrap_or(0) == 0) {
        out.push("CSAT scores".into());
    }
    if score("nps_survey").is_none_or(|s| s["nps"]["nps"].as_f64().is_none()) {
        out.push("NPS".into());
    }
    let steps = funnel["funnel"]["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for phase in phases {
        let reached = steps
            .iter()
            .find(|s| s["phase"] == phase.as_str())
            .and_then(|s| s["reached"].as_i64())
            .unwrap_or(0);
        if reached == 0 {
            out.push(format!("journeys in {phase}"));
        }
    }
    // Personas: all four, their decision reach (share of their journeys) at least 15 points
    // apart between the most and the least decided.
    let values = funnel["funnel"]["breakdown"]["values"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let personas: BTreeSet<&str> = values.iter().filter_map(|v| v["value"].as_str()).collect();
    for p in ["bargain-hunter", "business", "impulse", "researcher"] {
        if !personas.contains(p) {
            out.push(format!("persona {p}"));
        }
    }
    let decided: Vec<f64> = values
        .iter()
        .filter_map(|v| v["steps"][2]["from_start"].as_f64())
        .collect();
    let spread = decided.iter().cloned().fold(f64::NAN, f64::max)
        - decided.iter().cloned().fold(f64::NAN, f64::min);
    if spread.is_nan() || spread < 0.15 {
        out.push(format!("personas that differ (decision reach {decided:?})"));
    }
    out
}

/// The cart's alert state and the whole answer.
fn cart_alert(port: u16) -> Option<(String, Value)> {
    let v = get_json(port, "/v1/alerts")?;
    let a = v["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["touchpoint"] == "cart")?
        .clone();
    Some((a["state"].as_str()?.to_string(), a))
}

#[test]
fn demo_shows_the_whole_journey_at_once_and_the_spike_fires_in_time() {
    let service = demo();
    let port = service.port;
    // The backfill runs before the first request is answered.
    let deadline = Instant::now() + Duration::from_secs(180);
    while http(port, "GET", "/readyz", "").is_none_or(|(s, _)| s != 200) {
        assert!(Instant::now() < deadline, "the demo never got ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    eprintln!("demo ready (history backfilled)");
    let (touchpoints, phases) = rules(port);
    assert_eq!(touchpoints.len(), 22, "{touchpoints:?}");
    assert_eq!(phases.len(), 5);

    // Within the first minute: the whole journey.
    let mut left = missing(port, &touchpoints, &phases);
    while !left.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "a minute after the start the demo still lacks: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
        left = missing(port, &touchpoints, &phases);
    }
    eprintln!(
        "whole journey after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The generator's planted moment of truth is what the data ranks first.
    let moments = get_json(port, "/v1/moments").expect("GET /v1/moments");
    let top: Vec<&str> = moments["moments"]
        .as_array()
        .map(|m| {
            m.iter()
                .take(3)
                .filter_map(|m| m["touchpoint"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        top.first(),
        Some(&"newsletter_signup"),
        "the planted moment of truth ranks first: {top:?}"
    );
    let alerts = get_json(port, "/v1/alerts").expect("GET /v1/alerts");
    assert_eq!(alerts["evaluation"]["enabled"], true, "alerts are on");
    assert!(
        cart_alert(port).is_none(),
        "no cart alert before the spike: {alerts}"
    );

    // The spike: pending, then firing, within the README's bound.
    let bound = Duration::from_secs(SPIKE_AFTER_S + LATENESS_S + GAP_S + WINDOW_S + FOR_S + 60);
    let mut pending_at = None;
    let firing = loop {
        let state = cart_alert(port);
        match state.as_ref().map(|(s, _)| s.as_str()) {
            Some("pending") if pending_at.is_none() => {
                pending_at = Some(started.elapsed());
                eprintln!(
                    "cart pending after {:.0} s",
                    started.elapsed().as_secs_f64()
                );
            }
            Some("firing") => break state.map(|(_, a)| a),
            _ => {}
        }
        assert!(
            started.elapsed() < bound,
            "the cart's alert did not fire within {bound:?} of the start (last: {state:?})"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let fired = started.elapsed();
    eprintln!("cart firing after {:.0} s", fired.as_secs_f64());
    let firing = firing.expect("a firing alert");
    assert!(
        pending_at.is_some() || firing["active_since"] != firing["fired_at"],
        "pending came first: {firing}"
    );
    let (rate, baseline) = (
        firing["drop_off_rate"].as_f64().unwrap_or(0.0),
        firing["baseline_rate"].as_f64().unwrap_or(1.0),
    );
    assert!(
        rate >= baseline * THRESHOLD_RELATIVE && rate >= baseline + 0.1,
        "a clear rise: {firing}"
    );
    assert!(service.terminate(), "journeyd exits cleanly");
}
