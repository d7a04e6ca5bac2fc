//! Drop-off alerting end to end: the generator's spike at the cart, fed through the real
//! binary's HTTP ingest, takes journeyd's own alert for `cart` from pending to firing to
//! resolved; the webhook and an Alertmanager stand-in receive the firing and the resolution.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use journey_core::time::{DAY, HOUR, MINUTE};
use journey_gen::{stream, to_canonical_json, GenConfig, Spike, Step};
use journey_tests::{free_port, get_json, http, metric, temp_dir, wait_until, Service};
use serde_json::Value;

const START: i64 = 1_795_132_800_000; // 2026-11-20T00:00:00Z
const LATENESS: i64 = 5 * MINUTE;
const GAP: i64 = 30 * MINUTE;

/// Requests received: (path, JSON body).
type Inbox = Arc<Mutex<Vec<(String, Value)>>>;

/// A minimal HTTP server that keeps every POST body and answers 200.
fn receiver() -> (u16, Inbox) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let inbox: Inbox = Arc::default();
    let keep = inbox.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split(' ').nth(1).unwrap_or("").to_string();
            let mut length = 0;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok() {
                let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                keep.lock().unwrap().push((path, value));
            }
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (port, inbox)
}

fn cart_state(alerts: &Value) -> &str {
    alerts["alerts"]
        .as_array()
        .and_then(|list| list.iter().find(|a| a["touchpoint"] == "cart"))
        .and_then(|a| a["state"].as_str())
        .unwrap_or("inactive")
}

fn millis(rfc3339: &Value) -> Option<i64> {
    let s = rfc3339.as_str()?;
    chrono_free_parse(s)
}

/// `2026-11-21T09:15:00.000Z` → Unix ms (the service always writes this exact shape).
fn chrono_free_parse(s: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    // Days from 1970-01-01 to y-mo-d (proleptic Gregorian).
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((((days * 24 + h) * 60 + mi) * 60 + se) * 1000 + ms)
}

#[test]
fn a_drop_off_spike_goes_pending_firing_resolved_and_reaches_the_webhook() {
    // Journeys start over three days; the third is compared with the second, whose mix of new
    // and returning visitors is alike (the first day has only new ones).
    let day3 = START + 2 * DAY;
    let spike_from = day3 + 8 * HOUR;
    let spike_until = day3 + 11 * HOUR;
    let stop_at = day3 + 16 * HOUR;
    let gen = GenConfig {
        seed: 7,
        customers: 36_000,
        start: START,
        span: 3 * DAY,
        spike: Some(Spike {
            step: Step::Cart,
            from: spike_from,
            until: Some(spike_until),
            abandon: 0.9,
        }),
        ..GenConfig::default()
    };

    let (hook_port, inbox) = receiver();
    let dir = temp_dir("alerts");
    let port = free_port();
    let config = dir.join("journeyd.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n\
             [runtime]\nworkers = 1\npublish_interval = \"50ms\"\n\
             [alerts]\nenabled = true\ninterval = \"50ms\"\nwindow = \"1h\"\n\
             baseline = \"day_before\"\nthreshold_relative = 1.5\nthreshold_absolute = 0.2\n\
             min_sessions = 20\nfor = \"30m\"\nkeep_resolved = \"12h\"\n\
             webhook_url = \"http://127.0.0.1:{hook_port}/hook\"\n\
             alertmanager_url = \"http://127.0.0.1:{hook_port}/am\"\n"
        ),
    )
    .expect("config");
    let mut service = Service::start(&config, port);
    service.wait_ready();

    // Events in time order, sent in 10-minute slices of event time; after each slice the
    // evaluation must reach the slice's end (less lateness and session gap) before the cart's
    // state is read, so every state the evaluator passes through is seen.
    let mut events = stream(&gen).take_while(|e| e.ts < stop_at).peekable();
    let mut seen: Vec<String> = Vec::new();
    let mut firing_metric = None;
    let mut slice_end = START + 10 * MINUTE;
    let mut sent = 0usize;
    while events.peek().is_some() {
        let mut body = String::new();
        while let Some(e) = events.next_if(|e| e.ts < slice_end) {
            body.push_str(&to_canonical_json(&e));
            body.push('\n');
            sent += 1;
            if body.len() > 4 << 20 {
                break;
            }
        }
        if !body.is_empty() {
            let (status, reply) = http(port, "POST", "/v1/events", &body).expect("ingest");
            assert_eq!(status, 202, "{reply}");
        }
        if events.peek().is_some_and(|e| e.ts < slice_end) {
            continue;
        }
        if slice_end <= day3 {
            slice_end += 10 * MINUTE;
            continue;
        }
        let target = slice_end - LATENESS - GAP - MINUTE;
        let alerts = wait_until(
            "the evaluation to catch up",
            Duration::from_secs(60),
            || {
                let v = get_json(port, "/v1/alerts")?;
                (millis(&v["evaluation"]["evaluated_at"])? >= target).then_some(v)
            },
        );
        let state = cart_state(&alerts).to_string();
        if state == "firing" && firing_metric.is_none() {
            firing_metric = metric(port, "journeyd_dropoff_alert_state{touchpoint=\"cart\"}");
        }
        if seen.last() != Some(&state) {
            seen.push(state);
        }
        slice_end += 10 * MINUTE;
    }
    assert!(sent > 50_000, "a real load: {sent} events");
    assert_eq!(
        seen,
        ["inactive", "pending", "firing", "resolved"],
        "cart's alert over the day"
    );
    assert_eq!(firing_metric, Some(2.0), "the gauge shows firing");

    // The alert fired after the spike began and resolved after it ended (event time).
    let v = get_json(port, "/v1/alerts?state=resolved").expect("alerts");
    let cart = &v["alerts"][0];
    assert_eq!(cart["touchpoint"], "cart");
    let fired = millis(&cart["fired_at"]).expect("fired_at");
    let resolved = millis(&cart["resolved_at"]).expect("resolved_at");
    assert!(
        fired > spike_from && fired < spike_until + HOUR,
        "fired at {}",
        cart["fired_at"]
    );
    assert!(
        resolved > spike_until,
        "resolved at {}",
        cart["resolved_at"]
    );
    let others: Vec<&Value> = v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["touchpoint"] != "cart")
        .collect();
    assert!(others.is_empty(), "only the cart alerted: {others:?}");

    // The webhook got the firing, then the resolution, in Alertmanager's webhook shape.
    let hooks = wait_until("two webhook deliveries", Duration::from_secs(10), || {
        let got: Vec<Value> = inbox
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == "/hook")
            .map(|(_, v)| v.clone())
            .collect();
        (got.len() >= 2).then_some(got)
    });
    let statuses: Vec<(&str, &str)> = hooks
        .iter()
        .map(|h| {
            (
                h["status"].as_str().unwrap_or(""),
                h["alerts"][0]["labels"]["touchpoint"]
                    .as_str()
                    .unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(statuses, [("firing", "cart"), ("resolved", "cart")]);
    assert_eq!(
        hooks[0]["alerts"][0]["labels"]["alertname"],
        "JourneyDropOffRising"
    );
    assert_eq!(
        hooks[0]["alerts"][0]["journeyd"]["previous_state"],
        "pending"
    );
    assert!(
        hooks[0]["alerts"][0]["journeyd"]["drop_off_rate"]
            .as_f64()
            .unwrap()
            > 0.3
    );

    // Alertmanager got the cart while it fired, and its end once resolved.
    let am: Vec<Value> = inbox
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == "/am/api/v2/alerts")
        .map(|(_, v)| v.clone())
        .collect();
    assert!(am.len() >= 2, "{am:?}");
    assert_eq!(am[0][0]["labels"]["touchpoint"], "cart");
    assert_eq!(am[0][0]["labels"]["alertname"], "JourneyDropOffRising");
    let last = am.last().unwrap();
    assert_eq!(
        last[0]["annotations"]["summary"]
            .as_str()
            .map(|s| s.contains("back within")),
        Some(true),
        "{last}"
    );
    assert_eq!(
        metric(
            port,
            "journeyd_alert_notifications_total{outcome=\"sent\",target=\"webhook\"}"
        ),
        Some(2.0)
    );
    assert!(service.terminate(), "clean shutdown");
}
