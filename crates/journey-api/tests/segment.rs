//! The Segment tracking API and content codings through the router: one test per endpoint,
//! write keys, all-or-nothing batches, clock-skew correction, gzip and its limits.

use std::io::Write;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use http_body_util::BodyExt;
use journey_api::auth::Tokens;
use journey_api::segment::WriteKeys;
use journey_api::{router, AppState, IngestLimits, Metrics};
use journey_core::{EngineConfig, Rules};
use journey_ingest::{DeadLetter, DeadLetters, Position};
use journey_runtime::{Runtime, RuntimeConfig, RuntimeHandle};
use serde_json::{json, Value};
use tower::ServiceExt;

const RULES: &str = r#"
phases = ["consideration", "decision"]
[[touchpoint]]
name = "product"
phase = "consideration"
source = "web"
event = "page_view"
where = { url = { prefix = "/p/" } }
[[touchpoint]]
name = "app_home"
phase = "consideration"
event = "screen_view"
where = { "context.library.name" = "analytics-python" }
[[touchpoint]]
name = "order"
phase = "decision"
event = "order"
goal = true
"#;

/// 2026-11-20T12:00:00Z: the API's "now" and every request's arrival time.
const NOW: i64 = 1_795_176_000_000;

struct Api {
    app: Router,
    rt: RuntimeHandle,
    metrics: Arc<Metrics>,
    letters: flume::Receiver<DeadLetter>,
    _runtime: Runtime,
}

fn api(keys: WriteKeys, tokens: Tokens) -> Api {
    let runtime = Runtime::start(
        Arc::new(EngineConfig::default()),
        Arc::new(Rules::from_toml(RULES).unwrap()),
        RuntimeConfig {
            workers: 1,
            live: false,
            ..RuntimeConfig::default()
        },
        Vec::new(),
    );
    let rt = runtime.handle();
    let (dead_letters, letters) = DeadLetters::channel(100);
    let metrics = Arc::new(Metrics::new());
    let state = AppState {
        runtime: rt.clone(),
        metrics: metrics.clone(),
        limits: IngestLimits {
            write_keys: keys,
            max_body_bytes: 4096,
            max_batch_events: 20,
            ..IngestLimits::default()
        },
        clock: Arc::new(|| NOW),
        tokens,
        dead_letters,
        alerts: None,
        cluster: None,
    };
    Api {
        app: router(state),
        rt,
        metrics,
        letters,
        _runtime: runtime,
    }
}

fn open() -> Api {
    api(WriteKeys::default(), Tokens::default())
}

fn keyed() -> Api {
    api(
        WriteKeys::new([
            ("wk-website-0123456789".to_string(), "web".to_string()),
            ("wk-ios-app-0123456789".to_string(), "app".to_string()),
        ]),
        Tokens::default(),
    )
}

fn basic(key: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{key}:"));
    format!("Basic {b64}")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

async fn post(
    app: &Router,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method("POST").uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

async fn post_json(app: &Router, uri: &str, body: Value) -> (StatusCode, Value) {
    post(app, uri, &[], body.to_string()).await
}

/// The open session of a customer as the runtime keeps it: (ts, touchpoint) per event.
async fn events_of(api: &Api, customer: &str) -> Vec<(i64, Option<String>)> {
    api.rt.sync().await.unwrap();
    match api.rt.customer(customer).await.unwrap() {
        Some(view) => view
            .open_events
            .into_iter()
            .map(|p| (p.ts, p.touchpoint))
            .collect(),
        None => Vec::new(),
    }
}

fn counter(api: &Api, source: &str, outcome: &str) -> u64 {
    api.metrics
        .ingest_events
        .with_label_values(&[source, outcome])
        .get()
}

#[tokio::test]
async fn track_is_an_event_named_after_the_call() {
    let api = open();
    let (status, v) = post_json(
        &api.app,
        "/v1/track",
        json!({"userId": "u1", "event": "order", "messageId": "m-1",
               "timestamp": "2026-11-20T10:00:00Z", "properties": {"revenue": 3}}),
    )
    .await;
    assert_eq!((status, v), (StatusCode::OK, json!({"success": true})));
    assert_eq!(counter(&api, "web", "accepted"), 1);
    let ts = 1_795_168_800_000; // 2026-11-20T10:00:00Z
    assert_eq!(events_of(&api, "u1").await, [(ts, Some("order".into()))]);
    // Sent again (an SDK retry): the messageId drops the duplicate.
    let (status, _) = post_json(
        &api.app,
        "/v1/track",
        json!({"userId": "u1", "event": "order", "messageId": "m-1",
               "timestamp": "2026-11-20T10:00:00Z"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(events_of(&api, "u1").await.len(), 1);
}

#[tokio::test]
async fn page_screen_identify_group_and_alias_each_keep_an_event() {
    let api = open();
    let ts = "2026-11-20T10:00:00Z";
    let calls = [
        (
            "/v1/page",
            json!({"userId": "u2", "timestamp": ts, "properties": {"url": "/p/1"}}),
        ),
        (
            "/v1/screen",
            json!({"userId": "u2", "timestamp": ts, "name": "Home"}),
        ),
        (
            "/v1/identify",
            json!({"userId": "u2", "timestamp": ts, "traits": {"plan": "pro"}}),
        ),
        (
            "/v1/group",
            json!({"userId": "u2", "timestamp": ts, "groupId": "g-1"}),
        ),
        (
            "/v1/alias",
            json!({"userId": "u2", "timestamp": ts, "previousId": "anon-1"}),
        ),
        // analytics.js' one-letter paths are the same endpoints.
        (
            "/v1/p",
            json!({"anonymousId": "a3", "timestamp": ts, "properties": {"url": "/p/2"}}),
        ),
    ];
    for (uri, body) in calls {
        let (status, v) = post_json(&api.app, uri, body).await;
        assert_eq!(
            (status, v),
            (StatusCode::OK, json!({"success": true})),
            "{uri}"
        );
    }
    assert_eq!(counter(&api, "web", "accepted"), 6);
    assert_eq!(counter(&api, "web", "rejected"), 0);
    assert!(
        api.letters.try_iter().next().is_none(),
        "nothing dead-lettered"
    );
    // Five events of u2: the page call is a touchpoint of source `web`, the others are kept
    // unclassified (the screen call has no analytics-python context).
    let touchpoints: Vec<Option<String>> = events_of(&api, "u2")
        .await
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(touchpoints.len(), 5, "{touchpoints:?}");
    assert_eq!(
        touchpoints.iter().flatten().collect::<Vec<_>>(),
        ["product"]
    );
    assert_eq!(events_of(&api, "a3").await.len(), 1);
}

#[tokio::test]
async fn batch_applies_shared_sent_at_and_context_and_corrects_clock_skew() {
    let api = open();
    // A device clock one year fast: sentAt and originalTimestamp are device time, the request
    // arrives at NOW, so ts = NOW - (sentAt - originalTimestamp) = NOW - 2 s.
    let (status, v) = post_json(
        &api.app,
        "/v1/batch",
        json!({
            "sentAt": "2027-11-20T12:00:02Z",
            "context": {"library": {"name": "analytics-python"}},
            "batch": [
                {"type": "screen", "userId": "u4", "messageId": "b-1",
                 "originalTimestamp": "2027-11-20T12:00:00Z", "name": "Home"},
                {"type": "track", "userId": "u4", "event": "order", "messageId": "b-2",
                 "timestamp": "2026-11-20T11:59:59Z"}
            ]
        }),
    )
    .await;
    assert_eq!((status, v), (StatusCode::OK, json!({"success": true})));
    // The screen call got the batch's context (so the rule on it matched) and ts NOW - 2 s.
    assert_eq!(
        events_of(&api, "u4").await,
        [
            (NOW - 2000, Some("app_home".into())),
            (NOW - 1000, Some("order".into()))
        ]
    );
    assert_eq!(counter(&api, "web", "accepted"), 2);
}

#[tokio::test]
async fn a_bad_call_makes_the_whole_batch_400_and_nothing_is_applied() {
    let api = open();
    let (status, v) = post_json(
        &api.app,
        "/v1/batch",
        json!({"batch": [
            {"type": "track", "userId": "u5", "event": "order", "timestamp": "2026-11-20T10:00:00Z"},
            {"type": "track", "event": "order", "timestamp": "2026-11-20T10:00:00Z"}
        ]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["code"], "invalid_request");
    assert_eq!(v["errors"][0]["line"], 2);
    assert_eq!(v["errors"][0]["reason"], "missing_field");
    assert_eq!(counter(&api, "web", "accepted"), 0);
    assert_eq!(counter(&api, "web", "rejected"), 1);
    assert_eq!(api.letters.try_iter().count(), 1);
    assert!(events_of(&api, "u5").await.is_empty());

    // A body that is no valid request as a whole is one rejected record, kept whole.
    for (body, reason) in [
        (json!({"batch": "x"}), "invalid_request"),
        (json!({"nobatch": []}), "invalid_request"),
        (json!({"batch": [1]}), "invalid_request"),
        (
            json!({"batch": [{"userId": "u", "event": "x", "timestamp": "soon"}]}),
            "invalid_request",
        ),
        (json!({"batch": [], "writeKey": 7}), "invalid_request"),
        (json!([1]), "not_json"),
    ] {
        let rejected = counter(&api, "web", "rejected");
        let (status, _) = post_json(&api.app, "/v1/batch", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(counter(&api, "web", "rejected"), rejected + 1, "{body}");
        let letters: Vec<DeadLetter> = api.letters.try_iter().collect();
        assert_eq!(letters.len(), 1, "{body}");
        assert_eq!(
            (
                letters[0].reason,
                &letters[0].position,
                letters[0].record.as_slice()
            ),
            (reason, &Position::HttpBody, body.to_string().as_bytes()),
        );
        assert_eq!(letters[0].source, "web");
    }
    let (status, _) = post(&api.app, "/v1/track", &[], "not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let letters: Vec<DeadLetter> = api.letters.try_iter().collect();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].reason, letters[0].record.as_slice()),
        ("not_json", &b"not json"[..])
    );
    // Valid JSON a parsed body cannot hold: the answer says which limit, not "not JSON".
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    for body in [
        r#"{"batch": [{"userId": "u", "event": "x", "properties": {"big": 1e400}}]}"#.to_string(),
        format!(
            r#"{{"batch": [{{"userId": "u", "event": "x", "properties": {{"deep": {deep}}}}}]}}"#
        ),
    ] {
        let (status, v) = post(&api.app, "/v1/batch", &[], body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let detail = v["detail"].as_str().unwrap_or_default();
        assert!(
            detail.starts_with("the body is not JSON journeyd can read: ")
                && detail.contains("64-bit float and nesting up to 128 levels"),
            "{detail}"
        );
        let letters: Vec<DeadLetter> = api.letters.try_iter().collect();
        assert_eq!(
            (
                letters.len(),
                letters[0].reason,
                letters[0].record.as_slice()
            ),
            (1, "not_json", body.as_bytes())
        );
    }
    let rejected = api
        .metrics
        .ingest_rejected
        .with_label_values(&["web", "invalid_request"])
        .get();
    assert_eq!(rejected, 5);
    let many: Vec<Value> = (0..21)
        .map(|i| json!({"userId": "u", "event": "x", "timestamp": NOW - i}))
        .collect();
    let (status, v) = post_json(&api.app, "/v1/batch", json!({ "batch": many })).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
    assert_eq!(
        api.letters.try_iter().count(),
        0,
        "a batch over the limit is refused, not kept"
    );
}

/// An unreadable body is kept only when the HTTP Basic key names its sender: a `writeKey`
/// inside bytes that are not JSON cannot, and unknown senders' bytes are kept nowhere.
#[tokio::test]
async fn unreadable_bodies_are_kept_only_for_a_known_sender() {
    let api = keyed();
    let (status, _) = post(
        &api.app,
        "/v1/track",
        &[],
        "{\"writeKey\": \"wk-ios-app-0123456789\"",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(api.letters.try_iter().count(), 0);
    assert_eq!(counter(&api, "app", "rejected"), 0);

    let auth = basic("wk-ios-app-0123456789");
    let (status, _) = post(
        &api.app,
        "/v1/track",
        &[("authorization", &auth)],
        "{\"userId\":",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let letters: Vec<DeadLetter> = api.letters.try_iter().collect();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (
            letters[0].source.as_str(),
            letters[0].reason,
            &letters[0].position
        ),
        ("app", "not_json", &Position::HttpBody)
    );
    assert_eq!(counter(&api, "app", "rejected"), 1);
}

#[tokio::test]
async fn write_keys_pick_the_source_and_unknown_keys_get_401() {
    let api = keyed();
    let call = json!({"userId": "u6", "event": "order", "timestamp": NOW - 1000});
    let (status, _) = post(
        &api.app,
        "/v1/track",
        &[("authorization", &basic("wk-ios-app-0123456789"))],
        call.to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(counter(&api, "app", "accepted"), 1);
    // writeKey in the body, as analytics.js sends it.
    let mut with_key = call.clone();
    with_key["writeKey"] = json!("wk-website-0123456789");
    let (status, _) = post_json(&api.app, "/v1/t", with_key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(counter(&api, "web", "accepted"), 1);
    for headers in [
        vec![],
        vec![("authorization", basic("wk-wrong-key-0123456789"))],
        vec![("authorization", "Basic !!!".to_string())],
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, v) = post(&api.app, "/v1/track", &h, call.to_string()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(v["code"], "unauthorized");
    }
    assert_eq!(
        counter(&api, "web", "accepted") + counter(&api, "app", "accepted"),
        2
    );

    // No write keys but ingest tokens: the tokens are the write keys.
    let api = self::api(
        WriteKeys::default(),
        Tokens {
            ingest: vec!["ingest-token-0123456789".into()],
            ..Tokens::default()
        },
    );
    let (status, _) = post_json(&api.app, "/v1/track", call.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post(
        &api.app,
        "/v1/track",
        &[("authorization", &basic("ingest-token-0123456789"))],
        call.to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

/// Field case 09: `POST /v1/events` with `Content-Encoding: gzip` decodes the body (it used to
/// split the compressed bytes into "lines" and dead-letter them).
#[tokio::test]
async fn gzip_request_body_regression() {
    let api = open();
    let ndjson = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/field-cases/09-gzip-request-body/events.ndjson"
    ))
    .unwrap();
    let (status, v) = post(
        &api.app,
        "/v1/events",
        &[("content-encoding", "gzip")],
        gzip(&ndjson),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(2), Some(0))
    );
    assert!(api.letters.try_iter().next().is_none());

    // The Segment endpoints decode it too.
    let call = json!({"userId": "u7", "event": "order", "timestamp": NOW - 1000}).to_string();
    let (status, _) = post(
        &api.app,
        "/v1/track",
        &[("content-encoding", "gzip")],
        gzip(call.as_bytes()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // A zip bomb: small on the wire, over max_body_bytes (4096) decoded → 413, nothing applied.
    let mut bomb = ndjson.clone();
    bomb.extend(std::iter::repeat_n(b' ', 1 << 20));
    let before = counter(&api, "web", "accepted");
    let (status, v) = post(
        &api.app,
        "/v1/events",
        &[("content-encoding", "gzip")],
        gzip(&bomb),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    let (status, _) = post(
        &api.app,
        "/v1/batch",
        &[("content-encoding", "gzip")],
        gzip(&bomb),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(counter(&api, "web", "accepted"), before);

    // An unknown coding: 415 for the whole request, no line decoded.
    let (status, v) = post(
        &api.app,
        "/v1/events",
        &[("content-encoding", "zstd")],
        ndjson.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{v}");
    let (status, v) = post(
        &api.app,
        "/v1/track",
        &[("content-encoding", "compress")],
        call,
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_content_encoding")
        )
    );
    assert!(api.letters.try_iter().next().is_none());
}

#[tokio::test]
async fn browsers_get_cors_headers_and_preflight_answers() {
    let api = open();
    let req = Request::builder()
        .method("OPTIONS")
        .uri("/v1/t")
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .body(Body::empty())
        .unwrap();
    let resp = api.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
}

/// What the OpenAPI document promises about times and ids, checked against the answers (the
/// schemathesis run of tests/contract/schemathesis.sh found each of these).
#[tokio::test]
async fn times_and_ids_are_checked_as_the_document_describes_them() {
    let api = open();
    // A call dated more than `ingest.max_future` (1 day) ahead: 200, dead-lettered as
    // `timestamp_in_future`, and the rest of the batch is applied.
    let ahead = NOW + 2 * 86_400_000;
    let (status, v) = post_json(
        &api.app,
        "/v1/batch",
        json!({"batch": [
            {"userId": "f1", "event": "order", "timestamp": ahead},
            {"userId": "f1", "event": "order", "timestamp": "2026-11-20T10:00:00Z"},
        ]}),
    )
    .await;
    assert_eq!((status, v), (StatusCode::OK, json!({"success": true})));
    assert_eq!(events_of(&api, "f1").await.len(), 1);
    assert_eq!(counter(&api, "web", "accepted"), 1);
    assert_eq!(counter(&api, "web", "rejected"), 1);
    let letter = api
        .letters
        .try_recv()
        .expect("the future call is dead-lettered");
    assert_eq!(letter.reason, "timestamp_in_future");
    // The same call alone: still 200, nothing applied.
    let (status, _) = post_json(
        &api.app,
        "/v1/track",
        json!({"userId": "f2", "event": "order", "timestamp": ahead}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(events_of(&api, "f2").await.is_empty());

    // Whole numbers written as floats are integers (JSON Schema and the decoder agree).
    let (status, v) = post_json(
        &api.app,
        "/v1/page",
        json!({"userId": "w1", "timestamp": 1_795_168_800_000.0_f64, "sentAt": 1_795_168_800_000.0_f64}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(events_of(&api, "w1").await[0].0, 1_795_168_800_000);
    let (status, _) = post_json(
        &api.app,
        "/v1/page",
        json!({"userId": "w1", "timestamp": 1_795_168_800_000.5_f64}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Every time is checked against 2000-01-01..2100-01-01, also one that is not used.
    for body in [
        json!({"batch": [], "sentAt": 946_684_799_999_i64}),
        json!({"batch": [{"userId": "m1", "event": "x", "timestamp": "2026-11-20T10:00:00Z",
                          "sentAt": 946_684_799_999_i64}]}),
        json!({"batch": [{"userId": "m1", "event": "x", "timestamp": "2026-11-20T10:00:00Z",
                          "receivedAt": "2100-01-01T00:00:00Z"}]}),
    ] {
        let (status, v) = post_json(&api.app, "/v1/batch", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
    }
    let (status, _) = post_json(
        &api.app,
        "/v1/batch",
        json!({"batch": [], "sentAt": 946_684_800_000_i64}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Customer ids are limited in characters, as `maxLength` counts: 256 four-byte
    // characters are an id, 257 are not; `anonymousId` is checked next to a `userId` too.
    let wide = |n: usize| "\u{1F600}".repeat(n);
    let (status, v) = post_json(
        &api.app,
        "/v1/track",
        json!({"userId": wide(256), "event": "x", "timestamp": "2026-11-20T10:00:00Z"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(events_of(&api, &wide(256)).await.len(), 1);
    for body in [
        json!({"userId": wide(257), "event": "x"}),
        json!({"userId": "u", "anonymousId": wide(257), "event": "x"}),
        json!({"userId": "u", "anonymousId": {}, "event": "x"}),
    ] {
        let (status, v) = post_json(&api.app, "/v1/track", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
    }

    // The document: fixed time bounds (no maximum that moves with the clock), the future
    // limit in words.
    let req = Request::builder()
        .uri("/openapi.json")
        .body(Body::empty())
        .unwrap();
    let resp = api.app.clone().oneshot(req).await.unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let doc: Value = serde_json::from_slice(&bytes).unwrap();
    let time = &doc["components"]["schemas"]["SegmentCall"]["properties"]["timestamp"];
    assert_eq!(time["minimum"], 946_684_800_000_i64);
    assert_eq!(time["maximum"], 4_102_444_799_999_i64);
    assert!(time["pattern"]
        .as_str()
        .unwrap()
        .starts_with("^20[0-9][0-9]-"));
    assert!(time["description"]
        .as_str()
        .unwrap()
        .contains("timestamp_in_future"));
}

/// A body with a UTF-8 byte-order mark and `\r\n` line endings is the plain body.
#[tokio::test]
async fn a_bom_and_crlf_body_is_the_plain_body() {
    let api = open();
    let body = "\u{FEFF}{\"batch\": [\r\n{\"userId\": \"b1\", \"event\": \"order\", \"timestamp\": \"2026-11-20T10:00:00Z\"}\r\n]}\r\n";
    let (status, v) = post(&api.app, "/v1/batch", &[], body.to_string()).await;
    assert_eq!((status, v), (StatusCode::OK, json!({"success": true})));
    let (status, v) = post(
        &api.app,
        "/v1/t",
        &[],
        "\u{FEFF}{\"userId\": \"b1\", \"event\": \"order\", \"timestamp\": \"2026-11-20T10:01:00Z\"}\r\n".to_string(),
    )
    .await;
    assert_eq!((status, v), (StatusCode::OK, json!({"success": true})));
    assert_eq!(events_of(&api, "b1").await.len(), 2);
}
