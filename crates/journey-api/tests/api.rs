//! The API through its router: every endpoint, its errors, and ingest through to the figures.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use journey_api::auth::Tokens;
use journey_api::{router, AppState, IngestLimits, Metrics};
use journey_core::{EngineConfig, Rules};
use journey_ingest::{DeadLetter, DeadLetters, Position};
use journey_runtime::{Runtime, RuntimeConfig, RuntimeHandle};
use serde_json::{json, Value};
use tower::ServiceExt;

const RULES: &str = r#"
phases = ["awareness", "consideration", "decision"]
[[touchpoint]]
name = "landing"
phase = "awareness"
event = "page_view"
where = { url = "/" }
[[touchpoint]]
name = "product"
phase = "consideration"
event = "page_view"
where = { url = { prefix = "/p/" } }
[[touchpoint]]
name = "order"
phase = "decision"
event = "order"
goal = true
"#;

/// 2026-11-20T12:00:00Z: the API's "now" in these tests.
const NOW: i64 = 1_795_176_000_000;

struct Api {
    app: Router,
    rt: RuntimeHandle,
    metrics: Arc<Metrics>,
    letters: flume::Receiver<DeadLetter>,
    board: journey_alert::Board,
    _runtime: Runtime,
}

fn api() -> Api {
    api_with(Tokens::default())
}

fn api_with(tokens: Tokens) -> Api {
    let cfg = Arc::new(EngineConfig {
        breakdowns: vec!["persona".into()],
        segment_dimensions: vec!["persona".into()],
        ..EngineConfig::default()
    });
    let rc = RuntimeConfig {
        workers: 2,
        live: false,
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::start(
        cfg,
        Arc::new(Rules::from_toml(RULES).unwrap()),
        rc,
        Vec::new(),
    );
    let rt = runtime.handle();
    let (dead_letters, letters) = DeadLetters::channel(100);
    let metrics = Arc::new(Metrics::new());
    let board = journey_alert::Board::new(journey_alert::AlertConfig::default());
    let state = AppState {
        runtime: rt.clone(),
        metrics: metrics.clone(),
        limits: IngestLimits {
            max_body_bytes: 4096,
            max_batch_events: 20,
            ..IngestLimits::default()
        },
        clock: Arc::new(|| NOW),
        tokens,
        dead_letters,
        alerts: Some(board.clone()),
        cluster: None,
    };
    Api {
        app: router(state),
        rt,
        metrics,
        letters,
        board,
        _runtime: runtime,
    }
}

async fn call(app: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, String, Value) {
    call_as(app, None, method, uri, body).await
}

async fn call_as(
    app: &Router,
    token: Option<&str>,
    method: &str,
    uri: &str,
    body: &str,
) -> (StatusCode, String, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Body::from(body.to_string())).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, ctype, value)
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    let (s, _, v) = call(app, "GET", uri, "").await;
    (s, v)
}

/// The row of touchpoint `name` in a `/v1/touchpoints` answer.
fn touchpoint(v: &Value, name: &str) -> Value {
    v["touchpoints"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no touchpoint {name} in {v}"))
}

/// Three customers: one buys, one drops off at a product page, one bounces at landing.
async fn ingest(api: &Api) {
    let lines = [
        json!({"customer_id": "a", "ts": "2026-11-20T10:00:00Z", "event": "page_view", "attributes": {"url": "/", "persona": "pro"}}),
        json!({"customer_id": "a", "ts": "2026-11-20T10:01:00Z", "event": "page_view", "attributes": {"url": "/p/1"}}),
        json!({"customer_id": "a", "ts": "2026-11-20T10:03:00Z", "event": "order"}),
        json!({"customer_id": "b", "ts": "2026-11-20T10:00:00Z", "event": "page_view", "attributes": {"url": "/", "persona": "saver"}}),
        json!({"customer_id": "b", "ts": "2026-11-20T10:02:00Z", "event": "page_view", "attributes": {"url": "/p/2"}}),
        json!({"customer_id": "c", "ts": "2026-11-20T10:05:00Z", "event": "page_view", "attributes": {"url": "/"}}),
    ];
    let mut body: String = lines.iter().map(|l| l.to_string() + "\n").collect();
    body.push_str("{\"customer_id\": \"d\", \"event\": \"x\"}\n");
    let (status, _, v) = call(&api.app, "POST", "/v1/events?source=web", &body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(v["accepted"], 6);
    assert_eq!(v["rejected"], 1);
    assert_eq!(
        v["errors"][0],
        json!({"line": 7, "reason": "missing_field", "error": "missing field `ts`"})
    );
    api.rt.flush().await.unwrap();
}

/// A body from a Windows producer: a UTF-8 byte-order mark and `\r\n` line endings are
/// accepted like the plain body, as NDJSON and as a JSON array, also gzip'd.
#[tokio::test]
async fn bom_and_crlf_bodies_are_ingested_like_plain_ones() {
    let api = api();
    let line = |c: &str| {
        json!({"customer_id": c, "ts": "2026-11-20T10:00:00Z", "event": "page_view", "attributes": {"url": "/"}})
            .to_string()
    };
    let bodies = [
        format!("\u{FEFF}{}\r\n{}\r\n", line("w1"), line("w2")),
        format!("\u{FEFF}[{},\r\n{}]\r\n", line("w3"), line("w4")),
        format!("\u{FEFF}{}\r\n", line("w5")),
    ];
    for body in &bodies {
        let (status, _, v) = call(&api.app, "POST", "/v1/events?source=web", body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body:?}: {v}");
        assert_eq!(v["rejected"], 0, "{body:?}: {v}");
    }
    api.rt.flush().await.unwrap();
    let (_, v) = get(
        &api.app,
        "/v1/touchpoints?from=2026-11-20T00:00:00Z&to=2026-11-21T00:00:00Z",
    )
    .await;
    let landing = touchpoint(&v, "landing");
    assert_eq!(landing["visits"], 5, "{v}");
}

/// SPEC §1: a record dated more than `ingest.max_future` (1 day) after the API's clock is
/// rejected as `timestamp_in_future`, dead-lettered, and moves no watermark, so the honest
/// record after it is on time.
#[tokio::test]
async fn future_dated_records_are_dead_lettered_and_move_no_watermark() {
    let api = api();
    let day = 86_400_000;
    let body = format!(
        "{}\n{}\n{}\n",
        json!({"customer_id": "a", "ts": NOW - 60_000, "event": "page_view", "attributes": {"url": "/"}}),
        json!({"customer_id": "x", "ts": NOW + day + 1, "event": "page_view", "attributes": {"url": "/"}}),
        json!({"customer_id": "b", "ts": NOW - 50_000, "event": "page_view", "attributes": {"url": "/"}}),
    );
    let (status, _, v) = call(&api.app, "POST", "/v1/events?source=web", &body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(v["errors"][0]["reason"], "timestamp_in_future");
    assert_eq!(v["errors"][0]["line"], 2);
    let letters: Vec<DeadLetter> = api.letters.try_iter().collect();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].reason, letters[0].position.clone()),
        ("timestamp_in_future", Position::Http { line: 2 })
    );
    api.rt.flush().await.unwrap();
    assert_eq!(
        api.rt
            .stats()
            .late
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // Exactly one day ahead is still accepted.
    let edge = json!({"customer_id": "c", "ts": NOW + day, "event": "page_view"}).to_string();
    let (_, _, v) = call(&api.app, "POST", "/v1/events?source=web", &edge).await;
    assert_eq!(v["accepted"], 1);
}

#[tokio::test]
async fn rejected_records_become_dead_letters_with_their_bytes_and_line() {
    let api = api();
    let body = concat!(
        "{\"customer_id\": \"a\", \"ts\": 1795168800000, \"event\": \"page_view\"}\n",
        "not json at all\n",
        "{\"customer_id\": \"\", \"ts\": 1795168800000, \"event\": \"x\"}\n",
        "{\"customer_id\": \"b\", \"ts\": \"yesterday\", \"event\": \"x\"}\n",
        "{\"customer_id\": \"c\", \"ts\": 1795168800000, \"event\": \"order\"}\n",
    );
    let (status, _, v) = call(&api.app, "POST", "/v1/events?source=shop", body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(2), Some(3))
    );
    let letters: Vec<DeadLetter> = api.letters.try_iter().collect();
    let seen: Vec<(&str, Position, &[u8])> = letters
        .iter()
        .map(|d| (d.reason, d.position.clone(), d.record.as_slice()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                "not_json",
                Position::Http { line: 2 },
                &b"not json at all"[..]
            ),
            (
                "customer_id_length",
                Position::Http { line: 3 },
                br#"{"customer_id": "", "ts": 1795168800000, "event": "x"}"#
            ),
            (
                "bad_timestamp",
                Position::Http { line: 4 },
                br#"{"customer_id": "b", "ts": "yesterday", "event": "x"}"#
            ),
        ]
    );
    assert!(letters.iter().all(|d| d.source == "shop" && d.at == NOW));
    api.rt.flush().await.unwrap();
    let (_, f) = get(
        &api.app,
        "/v1/touchpoints?from=2026-11-20T00:00:00Z&to=2026-11-21T00:00:00Z",
    )
    .await;
    let visits: u64 = f["touchpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["visits"].as_u64().unwrap())
        .sum();
    assert_eq!(
        visits, 1,
        "the valid order around the bad records is counted"
    );
}

/// A body that cannot be split into records (here a JSON array cut short) is one rejected
/// record: 400, counted, and dead-lettered whole.
#[tokio::test]
async fn an_unreadable_body_is_counted_and_dead_lettered_whole() {
    let api = api();
    let body = "[{\"customer_id\": \"a\", \"ts\": 1795168800000, \"event\": \"page_view\"},";
    let (status, _, v) = call(&api.app, "POST", "/v1/events?source=shop", body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let letters: Vec<DeadLetter> = api.letters.try_iter().collect();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (
            letters[0].reason,
            &letters[0].position,
            letters[0].record.as_slice()
        ),
        ("not_json", &Position::HttpBody, body.as_bytes())
    );
    assert_eq!(letters[0].source, "shop");
    let count = |label: &[&str]| api.metrics.ingest_rejected.with_label_values(label).get();
    assert_eq!(count(&["shop", "not_json"]), 1);
    let rejected = api
        .metrics
        .ingest_events
        .with_label_values(&["shop", "rejected"])
        .get();
    assert_eq!(rejected, 1);
    assert_eq!(letters[0].position_json(), json!({"http": {"body": true}}));
}

#[tokio::test]
async fn tokens_guard_each_kind_of_access() {
    const READ: &str = "read-token-0123456789";
    const INGEST: &str = "ingest-token-0123456789";
    const ADMIN: &str = "admin-token-0123456789";
    let api = api_with(Tokens {
        read: vec![READ.into()],
        ingest: vec![INGEST.into()],
        admin: vec![ADMIN.into()],
    });
    let app = &api.app;
    let event = r#"{"customer_id": "a", "ts": 1795168800000, "event": "page_view"}"#;
    let cases: Vec<(Option<&str>, &str, &str, &str, StatusCode)> = vec![
        (None, "GET", "/healthz", "", StatusCode::OK),
        (None, "GET", "/readyz", "", StatusCode::OK),
        (None, "GET", "/", "", StatusCode::OK),
        (None, "GET", "/openapi.json", "", StatusCode::OK),
        (None, "GET", "/v1/funnel", "", StatusCode::UNAUTHORIZED),
        (None, "GET", "/metrics", "", StatusCode::UNAUTHORIZED),
        (
            Some("wrong-token-0123456789"),
            "GET",
            "/v1/funnel",
            "",
            StatusCode::UNAUTHORIZED,
        ),
        (
            Some(INGEST),
            "GET",
            "/v1/funnel",
            "",
            StatusCode::UNAUTHORIZED,
        ),
        (Some(READ), "GET", "/v1/funnel", "", StatusCode::OK),
        (Some(ADMIN), "GET", "/metrics", "", StatusCode::OK),
        (
            Some(READ),
            "POST",
            "/v1/events",
            event,
            StatusCode::UNAUTHORIZED,
        ),
        (
            Some(INGEST),
            "POST",
            "/v1/events",
            event,
            StatusCode::ACCEPTED,
        ),
        (
            Some(READ),
            "PUT",
            "/v1/rules",
            RULES,
            StatusCode::UNAUTHORIZED,
        ),
        (
            Some(INGEST),
            "PUT",
            "/v1/rules",
            RULES,
            StatusCode::UNAUTHORIZED,
        ),
        (Some(ADMIN), "PUT", "/v1/rules", RULES, StatusCode::OK),
    ];
    for (token, method, uri, body, want) in cases {
        let (status, ctype, v) = call_as(app, token, method, uri, body).await;
        assert_eq!(status, want, "{method} {uri} with {token:?}: {v}");
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(ctype, "application/problem+json");
            assert!(!v.to_string().contains("token-0123456789"), "{v}");
        }
    }
    let unauthorized: u64 = ["read", "ingest", "admin"]
        .iter()
        .map(|a| api.metrics.unauthorized.with_label_values(&[a]).get())
        .sum();
    assert_eq!(unauthorized, 7);
}

#[tokio::test]
async fn ingested_events_show_in_funnel_touchpoints_and_transitions() {
    let api = api();
    ingest(&api).await;
    let (s, v) = get(&api.app, "/v1/funnel").await;
    assert_eq!(s, StatusCode::OK);
    let reached: Vec<i64> = v["funnel"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["reached"].as_i64().unwrap())
        .collect();
    assert_eq!(reached, vec![3, 2, 1]);
    assert_eq!(
        v["from"], "2026-11-19T12:00:00.000Z",
        "defaults to the last 24 hours"
    );

    assert_eq!(
        v["segment_dimensions"],
        json!(["persona"]),
        "the funnel names what `segment` accepts"
    );

    let (_, v) = get(&api.app, "/v1/funnel?breakdown=persona").await;
    let values: Vec<(String, i64)> = v["funnel"]["breakdown"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["value"].as_str().unwrap().to_string(),
                x["journeys"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        values,
        vec![("(none)".into(), 1), ("pro".into(), 1), ("saver".into(), 1)]
    );

    let (_, v) = get(&api.app, "/v1/touchpoints?sort=drop_off_rate").await;
    let tps = v["touchpoints"].as_array().unwrap();
    // product: 1 of 2 sessions dropped off there; landing: 1 of 3.
    let order: Vec<&str> = tps.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(order, vec!["product", "landing", "order"]);
    assert_eq!(
        (tps[1]["sessions"].as_u64(), tps[1]["drop_offs"].as_u64()),
        (Some(3), Some(1))
    );
    let product = tps.iter().find(|t| t["name"] == "product").unwrap();
    assert_eq!(
        (
            product["visits"].as_u64(),
            product["exits"].as_u64(),
            product["drop_offs"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );

    let (_, v) = get(&api.app, "/v1/transitions?limit=2").await;
    assert_eq!(
        v["transitions"][0],
        json!({"from": "(start)", "to": "landing", "count": 3})
    );
    assert_eq!(v["transitions"].as_array().unwrap().len(), 2);

    let (_, v) = get(&api.app, "/v1/timeseries?touchpoint=landing&figure=visits&from=2026-11-20T09:00:00Z&to=2026-11-20T12:00:00Z&step=1h").await;
    let points: Vec<f64> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect();
    assert_eq!(points, vec![0.0, 3.0, 0.0]);
    // Without `touchpoint`, a touchpoint figure is the first touchpoint's (landing).
    let (s, _, v) = call(
        &api.app,
        "GET",
        "/v1/timeseries?figure=visits&from=2026-11-20T09:00:00Z&to=2026-11-20T12:00:00Z&step=1h",
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["target"], "landing");
    assert_eq!(v["points"][1]["value"], 3.0);
    // Without `phase`, a phase figure is the first phase's (awareness).
    let (_, v) = get(
        &api.app,
        "/v1/timeseries?figure=reached&from=now-3h&step=1h",
    )
    .await;
    assert_eq!(v["target"], "awareness");
    // A step giving more than 10 000 points is enlarged to the smallest multiple that does not:
    // 90 days of 1m are 129 600 points, 13m gives 9 970.
    let (s, _, v) = call(
        &api.app,
        "GET",
        "/v1/timeseries?touchpoint=landing&from=now-90d&step=1m",
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["step_ms"], 13 * 60_000);
    assert_eq!(v["points"].as_array().unwrap().len(), 9_970);
    let (_, v) = get(&api.app, "/v1/transitions?limit=16785409").await;
    assert!(v["transitions"].is_array());
    let (_, v) = get(
        &api.app,
        "/v1/timeseries?phase=decision&figure=reached&from=now-3h&step=1h",
    )
    .await;
    assert_eq!(v["points"][1]["value"], 1.0);

    let (s, _, v) = call(&api.app, "GET", "/v1/customers/a", "").await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "after the end of input every journey is final"
    );
    assert_eq!(v["status"], 404);
}

/// `segment=persona:X` on every report, against the figures worked out by hand from
/// [`ingest`]: a (pro) lands at 10:00, views a product at 10:01 and orders at 10:03; b (saver)
/// lands at 10:00 and leaves after a product at 10:02; c (no persona) bounces at 10:05.
#[tokio::test]
async fn segments_restrict_every_report_to_one_persona() {
    let api = api();
    ingest(&api).await;
    let reached = |v: &Value| -> Vec<i64> {
        v["funnel"]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["reached"].as_i64().unwrap())
            .collect()
    };
    for (seg, want) in [
        ("pro", vec![1, 1, 1]),
        ("saver", vec![1, 1, 0]),
        ("(none)", vec![1, 0, 0]),
        ("unseen", vec![0, 0, 0]),
    ] {
        let (s, v) = get(&api.app, &format!("/v1/funnel?segment=persona:{seg}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(reached(&v), want, "persona {seg}");
        assert_eq!(v["segment"], json!({"dimension": "persona", "value": seg}));
    }
    // Time to convert, from t0 to each phase: pro 0, 1 min, 3 min.
    let (_, v) = get(&api.app, "/v1/funnel?segment=persona:pro").await;
    let ttc: Vec<(u64, u64)> = v["funnel"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let t = &x["time_to_convert"];
            assert_eq!(t["count"], 1);
            (t["min_ms"].as_u64().unwrap(), t["max_ms"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(ttc, vec![(0, 0), (60_000, 60_000), (180_000, 180_000)]);
    // All journeys: awareness 3 × 0; consideration a 1 min and b 2 min; decision a 3 min.
    let (_, v) = get(&api.app, "/v1/funnel").await;
    let steps = v["funnel"]["steps"].as_array().unwrap();
    let t = |i: usize, k: &str| steps[i]["time_to_convert"][k].clone();
    assert_eq!((t(0, "count"), t(0, "max_ms")), (json!(3), json!(0)));
    assert_eq!(
        (
            t(1, "count"),
            t(1, "min_ms"),
            t(1, "max_ms"),
            t(1, "mean_ms")
        ),
        (json!(2), json!(60_000), json!(120_000), json!(90_000.0))
    );
    assert_eq!((t(2, "count"), t(2, "min_ms")), (json!(1), json!(180_000)));
    assert!(v.get("segment").is_none());

    let (_, v) = get(&api.app, "/v1/touchpoints?segment=persona:saver").await;
    let product = touchpoint(&v, "product");
    assert_eq!(
        (
            &product["visits"],
            &product["sessions"],
            &product["drop_offs"]
        ),
        (&json!(1), &json!(1), &json!(1))
    );
    let (_, v) = get(&api.app, "/v1/transitions?segment=persona:pro").await;
    let pairs: Vec<(String, String, u64)> = v["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["from"].as_str().unwrap().into(),
                t["to"].as_str().unwrap().into(),
                t["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut want: Vec<(String, String, u64)> = [
        ("(start)", "landing"),
        ("landing", "product"),
        ("order", "(exit)"),
        ("product", "order"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string(), 1))
    .collect();
    want.sort();
    assert_eq!(pairs, want);
    let (_, v) = get(
        &api.app,
        "/v1/timeseries?touchpoint=landing&figure=visits&from=2026-11-20T09:00:00Z&to=2026-11-20T12:00:00Z&step=1h&segment=persona:(none)",
    )
    .await;
    assert_eq!(v["points"][1]["value"], 1.0);
    let (_, v) = get(
        &api.app,
        "/v1/timeseries?phase=consideration&figure=time_to_convert_p50&from=2026-11-20T09:00:00Z&to=2026-11-20T12:00:00Z&step=1h&segment=persona:saver",
    )
    .await;
    let p50 = v["points"][1]["value"].as_f64().unwrap();
    assert!((p50 - 120_000.0).abs() <= 1_200.0, "{p50}");

    // A dimension that carries no segments, or a malformed value: 400 naming the configured.
    for uri in [
        "/v1/funnel?segment=source:web",
        "/v1/touchpoints?segment=utm:cpc",
        "/v1/transitions?segment=persona",
        "/v1/timeseries?segment=:pro",
    ] {
        let (s, ctype, v) = call(&api.app, "GET", uri, "").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(ctype, "application/problem+json");
        assert_eq!(v["parameter"], "segment", "{uri}");
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .contains("configured in breakdown.segment_dimensions: persona"),
            "{v}"
        );
    }
}

#[tokio::test]
async fn a_live_customer_shows_its_journey_and_open_session() {
    let api = api();
    let body = [
        json!({"customer_id": "a", "ts": "2026-11-20T10:00:00Z", "event": "page_view", "attributes": {"url": "/"}}),
        json!({"customer_id": "a", "ts": "2026-11-20T10:01:00Z", "event": "order"}),
    ]
    .map(|l| l.to_string())
    .join("\n");
    call(&api.app, "POST", "/v1/events", &body).await;
    api.rt.sync().await.unwrap();
    let (s, v) = get(&api.app, "/v1/customers/a").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["journeys"][0]["furthest_phase"], "decision");
    let open: Vec<&str> = v["open_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["touchpoint"].as_str().unwrap())
        .collect();
    assert_eq!(open, vec!["landing", "order"]);
    let (s, _) = get(&api.app, "/v1/customers/zz").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_parameters_get_a_problem_naming_the_parameter() {
    let api = api();
    for (uri, param) in [
        ("/v1/funnel?from=yesterday", "from"),
        ("/v1/funnel?to=never", "to"),
        ("/v1/funnel?to=0", "to"),
        ("/v1/funnel?breakdown=colour", "breakdown"),
        ("/v1/funnel?limit=0", "limit"),
        ("/v1/touchpoints?sort=best", "sort"),
        ("/v1/transitions?limit=x", "limit"),
        ("/v1/timeseries?touchpoint=landing&figure=fun", "figure"),
        ("/v1/timeseries?figure=visits&phase=nope", "phase"),
        ("/v1/transitions?limit=16785410", "limit"),
        ("/v1/transitions?limit=0", "limit"),
        ("/v1/timeseries?touchpoint=nope", "touchpoint"),
        ("/v1/timeseries?figure=reached&phase=nope", "phase"),
        ("/v1/timeseries?touchpoint=landing&step=30s", "step"),
        ("/v1/events?format=avro", "format"),
        // Percent-decodes to bytes that are not UTF-8.
        ("/v1/customers/%FF%FE", "id"),
    ] {
        let method = if uri.starts_with("/v1/events") {
            "POST"
        } else {
            "GET"
        };
        let (s, ctype, v) = call(&api.app, method, uri, "").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(ctype, "application/problem+json", "{uri}");
        assert_eq!(v["parameter"], param, "{uri}: {v}");
        assert!(v["detail"].as_str().unwrap().len() > 10, "{uri}");
    }
    // A `to` not after `from` is the empty range at `from`: answered, with nothing in it.
    for uri in [
        "/v1/funnel?from=now&to=now-1h",
        "/v1/funnel?from=now",
        "/v1/touchpoints?from=now",
        "/v1/transitions?from=now&to=now",
    ] {
        let (s, v) = get(&api.app, uri).await;
        assert_eq!(s, StatusCode::OK, "{uri}: {v}");
        assert_eq!(v["from"], v["to"], "{uri}: {v}");
    }
    let (s, v) = get(&api.app, "/v1/funnel?from=now").await;
    assert_eq!((s, &v["funnel"]["journeys"]), (StatusCode::OK, &json!(0)));
    // Every parameter is given once: a repeated one is refused, naming it.
    for uri in [
        "/v1/alerts?state=firing&state=firing",
        "/v1/funnel?from=now-1h&from=now-2h",
    ] {
        let (s, v) = get(&api.app, uri).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}");
        assert!(
            v["detail"].as_str().unwrap().contains("more than once"),
            "{v}"
        );
    }
    // `state` is checked even while alerts are disabled.
    let (s, v) = get(&api.app, "/v1/alerts?state=null").await;
    assert_eq!(
        (s, &v["parameter"]),
        (StatusCode::BAD_REQUEST, &json!("state"))
    );
    let (s, v) = get(&api.app, "/v1/funnel?form=now-1h").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        v["detail"],
        "unknown parameter `form` (expected one of: from, to, breakdown, limit, segment)"
    );
    assert_eq!(
        v["parameter"], "form",
        "names the parameter like every other 400"
    );
    let (s, v) = get(&api.app, "/v2/nothing").await;
    assert_eq!(
        (s, v["status"].as_u64()),
        (StatusCode::NOT_FOUND, Some(404))
    );
}

#[tokio::test]
async fn ingest_limits_are_enforced() {
    let api = api();
    let line = json!({"customer_id": "a", "ts": NOW, "event": "page_view"}).to_string();
    let big = vec![line.clone(); 21].join("\n");
    let (s, _, v) = call(&api.app, "POST", "/v1/events", &big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["detail"], "21 records in one request, at most 20 allowed");
    let (s, _, _) = call(&api.app, "POST", "/v1/events", &"x".repeat(5000)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, _, v) = call(&api.app, "POST", "/v1/events", "garbage").await;
    assert_eq!(
        (s, v["accepted"].as_u64()),
        (StatusCode::BAD_REQUEST, Some(0))
    );
    // A JSON array and a single object are accepted too.
    let (s, _, v) = call(&api.app, "POST", "/v1/events", &format!("[{line},{line}]")).await;
    assert_eq!((s, v["accepted"].as_u64()), (StatusCode::ACCEPTED, Some(2)));
    let (s, _, v) = call(&api.app, "POST", "/v1/events", &line).await;
    assert_eq!((s, v["accepted"].as_u64()), (StatusCode::ACCEPTED, Some(1)));
}

#[tokio::test]
async fn rules_are_replaced_whole_or_not_at_all() {
    let api = api();
    let (_, v) = get(&api.app, "/v1/rules").await;
    assert_eq!(v["touchpoints"].as_array().unwrap().len(), 3);
    let (s, _, v) = call(
        &api.app,
        "PUT",
        "/v1/rules",
        "[[touchpoint]]\nname = \"x\"\nphase = \"nope\"\n",
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["errors"].as_array().unwrap().len(), 2, "{v}");
    let (_, v) = get(&api.app, "/v1/rules").await;
    assert_eq!(
        v["touchpoints"].as_array().unwrap().len(),
        3,
        "the old rules stay"
    );

    let new_rules = RULES.replace("name = \"landing\"", "name = \"home\"");
    let (s, _, _) = call(&api.app, "PUT", "/v1/rules", &new_rules).await;
    assert_eq!(s, StatusCode::OK);
    let line = json!({"customer_id": "n", "ts": "2026-11-20T11:00:00Z", "event": "page_view", "attributes": {"url": "/"}});
    call(&api.app, "POST", "/v1/events", &line.to_string()).await;
    api.rt.flush().await.unwrap();
    let (_, v) = get(&api.app, "/v1/touchpoints").await;
    let home = touchpoint(&v, "home");
    assert_eq!(home["visits"], 1, "events after the swap use the new rules");
}

/// An ingest request holds a decode permit ([`RuntimeHandle::decoding`]) from decoding to
/// submitting: with a rules swap waiting, it queues behind it and is decoded with the
/// attributes the new rules read, then classified by them. Without the permit it would be
/// decoded at once without `ref` (the old rules do not read it) and finish before the swap.
#[tokio::test]
async fn an_ingest_request_during_a_rules_swap_is_decoded_for_the_new_rules() {
    let api = api();
    let other_batch = api.rt.decoding().await;
    let new_rules = RULES.replace("where = { url = \"/\" }", "where = { ref = \"ad\" }");
    assert_ne!(new_rules, RULES);
    let app = api.app.clone();
    let swap = tokio::spawn(async move { call(&app, "PUT", "/v1/rules", &new_rules).await.0 });
    // Until the swap waits for the permit, no new permit is given out.
    while tokio::time::timeout(std::time::Duration::ZERO, api.rt.decoding())
        .await
        .is_ok()
    {
        tokio::task::yield_now().await;
    }
    let line = json!({"customer_id": "r", "ts": "2026-11-20T11:00:00Z", "event": "page_view", "attributes": {"url": "/x", "ref": "ad"}});
    let app = api.app.clone();
    let mut request =
        tokio::spawn(async move { call(&app, "POST", "/v1/events", &line.to_string()).await.0 });
    // Decoding one line takes microseconds; held back by the swap, the request never finishes
    // while the other batch's permit is out.
    let wait = std::time::Duration::from_millis(300);
    assert!(
        tokio::time::timeout(wait, &mut request).await.is_err(),
        "the request waits behind the swap"
    );
    drop(other_batch);
    assert_eq!(swap.await.unwrap(), StatusCode::OK);
    assert_eq!(request.await.unwrap(), StatusCode::ACCEPTED);
    api.rt.flush().await.unwrap();
    let (_, v) = get(&api.app, "/v1/touchpoints").await;
    let landing = touchpoint(&v, "landing");
    assert_eq!(landing["visits"], 1, "{v}");
}

#[tokio::test]
async fn metrics_health_and_openapi() {
    let api = api();
    ingest(&api).await;
    let (s, _, text) = call(&api.app, "GET", "/metrics", "").await;
    assert_eq!(s, StatusCode::OK);
    let text = text.as_str().unwrap().to_string();
    for line in [
        "journeyd_ingest_events_total{outcome=\"accepted\",source=\"web\"} 6",
        "journeyd_ingest_rejected_total{reason=\"missing_field\",source=\"web\"} 1",
        "journeyd_events_applied_total 6",
        "journeyd_touchpoint_visits_total{touchpoint=\"landing\"} 3",
        "journeyd_touchpoint_drop_offs_total{touchpoint=\"product\"} 1",
        "journeyd_touchpoint_sessions_total{touchpoint=\"landing\"} 3",
        "journeyd_phase_reached_total{phase=\"decision\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
    assert!(!text.contains("customer"), "no customer label ever");
    let (s, v) = get(&api.app, "/healthz").await;
    assert_eq!((s, v), (StatusCode::OK, Value::String("ok\n".into())));
    let (s, v) = get(&api.app, "/readyz").await;
    assert_eq!((s, v["workers"].as_u64()), (StatusCode::OK, Some(2)));
    // Not ready while assigned tasks are being restored from the state store.
    api.rt.set_restoring(2);
    let (s, v) = get(&api.app, "/readyz").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(v["detail"].as_str().unwrap().contains("restoring 2"), "{v}");
    api.rt.set_restoring(0);
    assert_eq!(get(&api.app, "/readyz").await.0, StatusCode::OK);
    let (_, v) = get(&api.app, "/openapi.json").await;
    assert_eq!(v["openapi"], "3.1.0");
    for path in [
        "/v1/funnel",
        "/v1/touchpoints",
        "/v1/transitions",
        "/v1/timeseries",
        "/v1/customers/{id}",
        "/v1/alerts",
        "/v1/rules",
        "/v1/events",
    ] {
        assert!(v["paths"].get(path).is_some(), "{path} documented");
    }
    // `segment` on every report, restricted to the configured segment dimensions.
    for path in [
        "/v1/funnel",
        "/v1/touchpoints",
        "/v1/transitions",
        "/v1/timeseries",
    ] {
        let params = v["paths"][path]["get"]["parameters"].as_array().unwrap();
        let seg = params.iter().find(|p| p["name"] == "segment").unwrap();
        assert_eq!(seg["schema"]["pattern"], "^(persona):.+$", "{path}");
    }
    let step = &v["components"]["schemas"]["FunnelStep"]["properties"];
    assert!(step.get("time_to_convert").is_some(), "{step}");
    let (s, html) = get(&api.app, "/").await;
    assert_eq!(s, StatusCode::OK);
    assert!(html.as_str().unwrap().contains("/v1/funnel"));
}

#[tokio::test]
async fn alerts_show_the_evaluators_report() {
    use journey_alert::{Alert, Kind, Report, State};
    let api = api();
    let (s, v) = get(&api.app, "/v1/alerts").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["evaluation"]["enabled"], true);
    assert_eq!(v["evaluation"]["evaluated_at"], Value::Null);
    assert_eq!(v["evaluation"]["baseline"], "day_before");
    assert_eq!(v["alerts"], json!([]));

    let alert = |tp: &str, state: State, resolved: Option<i64>| Alert {
        kind: Kind::DropOff,
        touchpoint: tp.into(),
        phase: Some("decision".into()),
        state,
        drop_off_rate: 0.5,
        baseline_rate: 0.125,
        sessions: 80,
        baseline_sessions: 64,
        active_since: NOW - 600_000,
        fired_at: Some(NOW - 300_000),
        resolved_at: resolved,
        summary: format!("drop-off at {tp} rose"),
    };
    api.board.publish(Report {
        evaluated_at: Some(NOW),
        alerts: vec![
            alert("cart", State::Firing, None),
            alert("checkout", State::Resolved, Some(NOW)),
            Alert {
                kind: Kind::Conversion,
                touchpoint: "consideration".into(),
                phase: Some("consideration".into()),
                summary: "conversion of consideration fell".into(),
                ..alert("consideration", State::Pending, None)
            },
        ],
        rates: Vec::new(),
        conversions: Vec::new(),
    });
    let (_, v) = get(&api.app, "/v1/alerts").await;
    assert_eq!(v["evaluation"]["evaluated_at"], "2026-11-20T12:00:00.000Z");
    assert_eq!(v["alerts"].as_array().unwrap().len(), 3);
    assert_eq!(v["evaluation"]["conversion"], "step");
    // A conversion alert: the phase, conversions (1 − the share not converting), journeys.
    let conv = v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "conversion")
        .unwrap();
    assert_eq!(
        (
            &conv["kind"],
            &conv["touchpoint"],
            &conv["phase"],
            &conv["state"]
        ),
        (
            &json!("conversion"),
            &Value::Null,
            &json!("consideration"),
            &json!("pending")
        )
    );
    assert_eq!(
        (
            &conv["conversion"],
            &conv["baseline_conversion"],
            &conv["journeys"]
        ),
        (&json!(0.5), &json!(0.875), &json!(80))
    );
    // Both kinds as the OpenAPI document's `Alert` describes them: every field it names,
    // every required one present.
    let (_, doc) = get(&api.app, "/openapi.json").await;
    let schema = &doc["components"]["schemas"]["Alert"];
    for a in v["alerts"].as_array().unwrap() {
        for key in a.as_object().unwrap().keys() {
            assert!(schema["properties"].get(key).is_some(), "{key} in {schema}");
        }
        for key in schema["required"].as_array().unwrap() {
            assert!(a.get(key.as_str().unwrap()).is_some(), "{key} in {a}");
        }
    }
    let cart = &v["alerts"][0];
    assert_eq!(cart["kind"], "drop_off");
    assert_eq!(
        (
            cart["touchpoint"].as_str(),
            cart["state"].as_str(),
            cart["drop_off_rate"].as_f64(),
            cart["sessions"].as_u64(),
            cart["fired_at"].as_str(),
            &cart["resolved_at"],
        ),
        (
            Some("cart"),
            Some("firing"),
            Some(0.5),
            Some(80),
            Some("2026-11-20T11:55:00.000Z"),
            &Value::Null
        )
    );
    let (_, v) = get(&api.app, "/v1/alerts?state=resolved").await;
    let names: Vec<&str> = v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["touchpoint"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["checkout"]);
    let (_, v) = get(&api.app, "/v1/alerts?state=pending").await;
    assert_eq!(v["alerts"][0]["kind"], "conversion", "{v}");
    let (s, v) = get(&api.app, "/v1/alerts?state=loud").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["detail"].as_str().unwrap().contains("state"), "{v}");
}

#[tokio::test]
async fn metrics_carry_the_last_hours_dwell_quantiles() {
    let api = api();
    // Inside the last hour before NOW: landing → product after 2 minutes, product → order
    // after 1 minute; the journey moves on from awareness after 2 minutes.
    let body = [
        json!({"customer_id": "e", "ts": "2026-11-20T11:30:00Z", "event": "page_view", "attributes": {"url": "/"}}),
        json!({"customer_id": "e", "ts": "2026-11-20T11:32:00Z", "event": "page_view", "attributes": {"url": "/p/9"}}),
        json!({"customer_id": "e", "ts": "2026-11-20T11:33:00Z", "event": "order"}),
        // Before the hour: not in the quantiles.
        json!({"customer_id": "f", "ts": "2026-11-20T10:00:00Z", "event": "page_view", "attributes": {"url": "/"}}),
        json!({"customer_id": "f", "ts": "2026-11-20T10:30:00Z", "event": "page_view", "attributes": {"url": "/p/1"}}),
    ]
    .iter()
    .map(|l| l.to_string() + "\n")
    .collect::<String>();
    let (status, _, _) = call(&api.app, "POST", "/v1/events?source=web", &body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    api.rt.flush().await.unwrap();
    let (_, _, text) = call(&api.app, "GET", "/metrics", "").await;
    let text = text.as_str().unwrap().to_string();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no `{series}` in\n{text}"))
    };
    // The sketch's relative error is 1 %.
    let near = |got: f64, want: f64| (got - want).abs() <= want * 0.01 + 1e-9;
    let landing =
        value("journeyd_touchpoint_dwell_seconds{quantile=\"0.5\",touchpoint=\"landing\"}");
    assert!(near(landing, 120.0), "landing p50 {landing}");
    let product =
        value("journeyd_touchpoint_dwell_seconds{quantile=\"0.99\",touchpoint=\"product\"}");
    assert!(near(product, 60.0), "product p99 {product}");
    let awareness = value("journeyd_phase_dwell_seconds{phase=\"awareness\",quantile=\"0.5\"}");
    assert!(near(awareness, 120.0), "awareness p50 {awareness}");
    // No dwell at the order (nothing follows it): a gap, not a zero.
    assert!(
        value("journeyd_touchpoint_dwell_seconds{quantile=\"0.5\",touchpoint=\"order\"}").is_nan()
    );
}

/// Moments of truth, computed by hand. Goal: `decision` (the phase of the goal touchpoint
/// `order`). Seven journeys; `landing` and `product` come before the goal phase.
///
/// | customer | events (minutes after 10:00)   | touched before converting | converted |
/// |----------|--------------------------------|---------------------------|-----------|
/// | a (pro)  | landing 0, product 1, order 3  | landing, product          | yes       |
/// | b (saver)| landing 0, product 2           | landing, product          | no        |
/// | c        | landing 5                      | landing                   | no        |
/// | e (pro)  | product 0, order 2, landing 4  | product (landing is after)| yes       |
/// | f (saver)| order 0, product 1             | nothing                   | yes       |
/// | g (pro)  | product 0, order 1             | product                   | yes       |
/// | h (saver)| landing 0                      | landing                   | no        |
///
/// landing: touched 4 (1 converted), not touched 3 (3 converted): lift (1/4)/(3/3) = 0.25,
/// odds ratio undefined (a zero cell), Fisher: X ~ Hypergeometric(7, 4, 4), P(X=x) = 4, 18,
/// 12, 1 (/35) for x = 1..4; observed x = 1, so p = (4 + 1)/35.
/// product: touched 4 (3 converted), not touched 3 (1 converted): lift 0.75/(1/3) = 2.25,
/// odds ratio 3·2/(1·1) = 6, Woolf's interval exp(ln 6 ± 1.959964·√(1/3+1+1+1/2)),
/// Fisher observed x = 3, p = (4 + 12 + 1)/35.
#[tokio::test]
async fn moments_of_truth_match_a_hand_computed_example() {
    let api = api();
    let at = |m: u32| format!("2026-11-20T10:0{m}:00Z");
    let ev = |c: &str, m: u32, what: &str, persona: Option<&str>| {
        let (event, url) = match what {
            "landing" => ("page_view", Some("/")),
            "product" => ("page_view", Some("/p/1")),
            _ => ("order", None),
        };
        let mut attrs = json!({});
        if let Some(u) = url {
            attrs["url"] = json!(u);
        }
        if let Some(p) = persona {
            attrs["persona"] = json!(p);
        }
        json!({"customer_id": c, "ts": at(m), "event": event, "attributes": attrs})
    };
    let lines = [
        ev("a", 0, "landing", Some("pro")),
        ev("a", 1, "product", None),
        ev("a", 3, "order", None),
        ev("b", 0, "landing", Some("saver")),
        ev("b", 2, "product", None),
        ev("c", 5, "landing", None),
        ev("e", 0, "product", Some("pro")),
        ev("e", 2, "order", None),
        ev("e", 4, "landing", None),
        ev("f", 0, "order", Some("saver")),
        ev("f", 1, "product", None),
        ev("g", 0, "product", Some("pro")),
        ev("g", 1, "order", None),
        ev("h", 0, "landing", Some("saver")),
    ];
    let body: String = lines.iter().map(|l| l.to_string() + "\n").collect();
    let (status, _, v) = call(&api.app, "POST", "/v1/events?source=web", &body).await;
    assert_eq!((status, &v["accepted"]), (StatusCode::ACCEPTED, &json!(14)));
    api.rt.flush().await.unwrap();

    let (s, v) = get(&api.app, "/v1/moments").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["goal"], "decision");
    assert_eq!((&v["journeys"], &v["converted"]), (&json!(7), &json!(4)));
    assert_eq!(v["conversion"].as_f64().unwrap(), 4.0 / 7.0);
    assert!(v["from"].is_string() && v["to"].is_string());
    let list = v["moments"].as_array().unwrap();
    let names: Vec<&str> = list
        .iter()
        .map(|m| m["touchpoint"].as_str().unwrap())
        .collect();
    // Neither is significant: ranked by p-value, smallest first. `order` is in the goal phase.
    assert_eq!(names, ["landing", "product"]);
    let close = |x: &Value, want: f64| {
        let x = x.as_f64().unwrap();
        assert!(
            (x - want).abs() < 1e-9 * want.abs().max(1.0),
            "{x} vs {want}"
        );
    };
    let landing = &list[0];
    assert_eq!(landing["phase"], "awareness");
    assert_eq!(landing["moment_of_truth"], false);
    assert_eq!(landing["touched"]["journeys"], 4);
    assert_eq!(landing["touched"]["converted"], 1);
    assert_eq!(landing["not_touched"]["journeys"], 3);
    assert_eq!(landing["not_touched"]["converted"], 3);
    close(&landing["touched"]["conversion"], 0.25);
    close(&landing["not_touched"]["conversion"], 1.0);
    close(&landing["lift"], 0.25);
    assert_eq!(landing["odds_ratio"], Value::Null, "a zero cell");
    assert_eq!(landing["ci95"], Value::Null);
    close(&landing["p_value"], 5.0 / 35.0);
    assert_eq!(landing["significant"], false);

    let product = &list[1];
    assert_eq!(product["phase"], "consideration");
    assert_eq!(
        (
            &product["touched"]["journeys"],
            &product["touched"]["converted"]
        ),
        (&json!(4), &json!(3))
    );
    assert_eq!(
        (
            &product["not_touched"]["journeys"],
            &product["not_touched"]["converted"]
        ),
        (&json!(3), &json!(1))
    );
    close(&product["lift"], 2.25);
    close(&product["odds_ratio"], 6.0);
    let se = (1.0f64 / 3.0 + 1.0 + 1.0 + 0.5).sqrt();
    close(
        &product["ci95"][0],
        (6f64.ln() - 1.959963984540054 * se).exp(),
    );
    close(
        &product["ci95"][1],
        (6f64.ln() + 1.959963984540054 * se).exp(),
    );
    close(&product["p_value"], 17.0 / 35.0);
    assert_eq!(product["significant"], false);

    // One persona: a, e and g (all converted). landing: a only; product: all three.
    let (s, v) = get(&api.app, "/v1/moments?segment=persona:pro&goal=decision").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["segment"],
        json!({"dimension": "persona", "value": "pro"})
    );
    assert_eq!((&v["journeys"], &v["converted"]), (&json!(3), &json!(3)));
    let by_name = |n: &str| {
        v["moments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["touchpoint"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("landing")["touched"]["journeys"], 1);
    assert_eq!(by_name("product")["touched"]["journeys"], 3);
    assert_eq!(by_name("product")["not_touched"]["conversion"], Value::Null);
    assert_eq!(
        by_name("product")["p_value"],
        Value::Null,
        "everybody converted"
    );

    // A range without journeys: zeros, nulls, never NaN.
    let (s, v) = get(&api.app, "/v1/moments?from=now-1h").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (&v["journeys"], &v["conversion"]),
        (&json!(0), &Value::Null)
    );
    assert_eq!(v["moments"][0]["lift"], Value::Null);

    // Bad parameters: problem documents naming them.
    for (uri, param) in [
        ("/v1/moments?goal=consideration", "goal"),
        ("/v1/moments?goal=nope", "goal"),
        ("/v1/moments?from=yesterday", "from"),
        ("/v1/moments?segment=colour:red", "segment"),
        ("/v1/moments?segment=persona", "segment"),
        ("/v1/moments?phase=decision", "phase"),
    ] {
        let (s, ctype, v) = call(&api.app, "GET", uri, "").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(ctype, "application/problem+json", "{uri}");
        assert_eq!(v["parameter"], param, "{uri}: {v}");
    }
    let (_, v) = get(&api.app, "/v1/moments?goal=consideration").await;
    assert_eq!(v["goal_phases"], json!(["decision"]));
    // The OpenAPI document allows exactly the tracked goals and the configured segments.
    let (_, doc) = get(&api.app, "/openapi.json").await;
    let params = doc["paths"]["/v1/moments"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let param = |n: &str| params.iter().find(|p| p["name"] == n).unwrap().clone();
    assert_eq!(param("goal")["schema"]["enum"], json!(["decision"]));
    assert_eq!(param("segment")["schema"]["pattern"], "^(persona):.+$");
    let schema = &doc["components"]["schemas"]["Moment"]["properties"];
    for field in [
        "touched",
        "not_touched",
        "lift",
        "odds_ratio",
        "ci95",
        "p_value",
    ] {
        assert!(schema.get(field).is_some(), "{field}");
    }
}
