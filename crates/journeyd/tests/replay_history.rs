//! `journeyd replay` of a long history: a generated 400-day file is reported from its first
//! event to its last (replay's retention follows the data, not `retention.total`), and
//! `--from/--to` give exactly what the API answers for the same range over the same events.
//! The service's API says `truncated_from` when a range reaches past its retention.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::http::Request;
use journey_api::auth::Tokens;
use journey_api::{router, AppState, IngestLimits, Metrics};
use journey_core::time::{Millis, DAY, MAX_EVENT_TIME, MIN_EVENT_TIME};
use journey_core::{DecodeLimits, EngineConfig, Event, Rules};
use journey_ingest::{DeadLetters, Decoder, Format};
use journey_runtime::{Runtime, RuntimeConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Epoch milliseconds of an RFC 3339 time in replay's output.
fn millis(v: &Value) -> Millis {
    let text = v
        .as_str()
        .unwrap_or_else(|| panic!("an RFC 3339 time: {v}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .timestamp_millis()
}

fn journeyd(args: &[&str]) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_journeyd"))
        .current_dir(repo())
        .env("JOURNEYD_RUNTIME__WORKERS", "1")
        .env("JOURNEYD_LOG__LEVEL", "warn")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "journeyd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// 400 days of journeys starting from 2025-01-01 (all in the past, so none is rejected as
/// future-dated), written to a temporary file.
fn history() -> (PathBuf, String) {
    let path = std::env::temp_dir().join(format!("journeyd-400d-{}.ndjson", std::process::id()));
    journeyd(&[
        "generate",
        "--customers",
        "1500",
        "--start",
        "2025-01-01T00:00:00Z",
        "--span",
        "400d",
        "-o",
        path.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&path).unwrap();
    (path, text)
}

fn events(text: &str) -> Vec<Event<'static>> {
    let dec = Decoder::new(Format::Canonical, "file", DecodeLimits::default());
    text.lines()
        .map(|l| dec.decode(l.as_bytes()).unwrap().into_owned())
        .collect()
}

fn rules() -> Rules {
    Rules::from_toml(&std::fs::read_to_string(repo().join("config/rules.toml")).unwrap()).unwrap()
}

/// The API over a non-live runtime that applied `events` in file order and ended its input.
struct Api {
    app: axum::Router,
    tokio: tokio::runtime::Runtime,
    _runtime: Runtime,
}

impl Api {
    fn new(events: &[Event<'static>], engine: EngineConfig) -> Api {
        let rc = RuntimeConfig {
            workers: 1,
            live: false,
            ..RuntimeConfig::default()
        };
        let runtime = Runtime::start(Arc::new(engine), Arc::new(rules()), rc, Vec::new());
        let rt = runtime.handle();
        for batch in events.chunks(4096) {
            rt.submit_blocking(batch.to_vec()).unwrap();
        }
        rt.flush_blocking().unwrap();
        let (dead_letters, _) = DeadLetters::channel(16);
        let state = AppState {
            runtime: rt,
            metrics: Arc::new(Metrics::new()),
            limits: IngestLimits::default(),
            clock: journey_ingest::system_clock(),
            tokens: Tokens::default(),
            dead_letters,
            alerts: None,
            cluster: None,
        };
        Api {
            app: router(state),
            tokio: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            _runtime: runtime,
        }
    }

    fn get(&self, path: &str) -> Value {
        self.tokio.block_on(async {
            let req = Request::get(path).body(Body::empty()).unwrap();
            let resp = self.app.clone().oneshot(req).await.unwrap();
            assert!(resp.status().is_success(), "{path}: {}", resp.status());
            let bytes = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
            serde_json::from_slice(&bytes).unwrap()
        })
    }
}

fn whole_history() -> EngineConfig {
    EngineConfig {
        retention_total: MAX_EVENT_TIME - MIN_EVENT_TIME,
        ..EngineConfig::default()
    }
}

#[test]
fn replay_of_400_days_covers_the_whole_file_and_from_to_match_the_api() {
    let (path, text) = history();
    let file = path.to_str().unwrap();
    let evs = events(&text);
    let rules = rules();
    let classified = evs.iter().filter(|e| rules.classify(e).is_some()).count() as u64;
    let first = evs.iter().map(|e| e.ts).min().unwrap();
    let last = evs.iter().map(|e| e.ts).max().unwrap();
    assert!(
        last - first > 400 * DAY,
        "the file spans more than 400 days"
    );

    let v: Value = serde_json::from_slice(&journeyd(&["replay", file])).unwrap();
    assert_eq!(v["events"]["rejected"], json!({}));
    assert_eq!(v["events"]["expired"], 0, "nothing slid out of retention");
    assert_eq!(v["events"]["duplicates"], 0);
    assert_eq!(v["events"]["classified"], classified);
    let visits: u64 = v["touchpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["visits"].as_u64().unwrap())
        .sum();
    assert_eq!(
        visits, classified,
        "total visits = classified events in the file"
    );
    let (from, to) = (millis(&v["from"]), millis(&v["to"]));
    assert!(
        from <= first && first - from < DAY,
        "from the first event: {from}"
    );
    assert!(to > last && to - last < DAY, "to the last event: {to}");

    // A range inside the history, with edges inside hours, over the API and with --from/--to.
    let api = Api::new(&evs, whole_history());
    for (lo, hi) in [
        ("2025-03-10T10:30:00Z", "2025-06-01T00:00:00Z"),
        ("2025-11-02T00:00:00Z", "2026-01-15T17:45:00Z"),
    ] {
        let r: Value =
            serde_json::from_slice(&journeyd(&["replay", "--from", lo, "--to", hi, file])).unwrap();
        let q = format!("from={lo}&to={hi}");
        let funnel = api.get(&format!("/v1/funnel?{q}"));
        let tps = api.get(&format!("/v1/touchpoints?{q}"));
        let trs = api.get(&format!("/v1/transitions?{q}&limit=100000"));
        assert_eq!(r["funnel"], funnel["funnel"], "{q}");
        // The range as the API writes it (RFC 3339, to the millisecond), not epoch ms.
        assert_eq!(
            (&r["from"], &r["to"]),
            (&funnel["from"], &funnel["to"]),
            "{q}"
        );
        assert_eq!(
            r["from"],
            format!("{}.000Z", lo.trim_end_matches('Z')),
            "{q}"
        );
        assert_eq!(r["touchpoints"], tps["touchpoints"], "{q}");
        assert_eq!(r["transitions"], trs["transitions"], "{q}");
        assert!(
            funnel.get("truncated_from").is_none(),
            "all retained: {funnel}"
        );
        let part: u64 = r["touchpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["visits"].as_u64().unwrap())
            .sum();
        assert!(
            part > 0 && part < visits,
            "{q}: the range restricts ({part} of {visits})"
        );
    }

    // The service with the default 90-day retention: a range reaching further back says so.
    let service = Api::new(&evs, EngineConfig::default());
    let kept_from = |v: &Value| v["truncated_from"].as_str().map(str::to_string);
    let q = format!("from={first}&to={}", last + 1);
    let old = service.get(&format!("/v1/touchpoints?{q}"));
    let truncated = kept_from(&old).expect("a range past retention says so");
    let t = journey_core::event::parse_rfc3339(&truncated).unwrap();
    assert!(t > last - 91 * DAY && t <= last - 89 * DAY, "{truncated}");
    for endpoint in ["funnel", "transitions"] {
        assert_eq!(
            kept_from(&service.get(&format!("/v1/{endpoint}?{q}"))),
            Some(truncated.clone())
        );
    }
    let recent: Millis = last - 30 * DAY;
    let fresh = service.get(&format!("/v1/touchpoints?from={recent}&to={}", last + 1));
    assert_eq!(
        kept_from(&fresh),
        None,
        "a range inside retention is complete"
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn replay_counts_dropped_duplicates() {
    let path = std::env::temp_dir().join(format!("journeyd-dups-{}.ndjson", std::process::id()));
    let line = |id: &str, ts: &str| {
        format!(
            r#"{{"event_id":"{id}","customer_id":"c","ts":"{ts}","source":"web","event":"page_view","attributes":{{"url":"/products/1"}}}}"#
        )
    };
    let lines = [
        line("e1", "2026-11-02T10:00:00Z"),
        line("e1", "2026-11-02T10:00:00Z"),
        line("e2", "2026-11-02T10:01:00Z"),
        line("e1", "2026-11-02T10:00:00Z"),
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    let v: Value = serde_json::from_slice(&journeyd(&[
        "replay",
        "--source",
        "web",
        path.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(v["events"]["accepted"], 4);
    assert_eq!(v["events"]["duplicates"], 2);
    assert_eq!(v["events"]["applied"], 2);
    let _ = std::fs::remove_file(path);
}

/// A file saved by a Windows tool (a UTF-8 byte-order mark, `\r\n` line endings) replays
/// exactly like the plain file.
#[test]
fn replay_of_a_bom_and_crlf_file_equals_the_plain_file() {
    let plain = std::fs::read_to_string(repo().join("tests/golden/events.ndjson")).unwrap();
    let path = std::env::temp_dir().join(format!("journeyd-crlf-{}.ndjson", std::process::id()));
    std::fs::write(&path, format!("\u{FEFF}{}", plain.replace('\n', "\r\n"))).unwrap();
    let windows: Value =
        serde_json::from_slice(&journeyd(&["replay", path.to_str().unwrap()])).unwrap();
    let plain: Value =
        serde_json::from_slice(&journeyd(&["replay", "tests/golden/events.ndjson"])).unwrap();
    let _ = std::fs::remove_file(path);
    // The golden file has one bad record of its own; nothing more is rejected.
    assert_eq!(windows["events"]["rejected"], json!({"bad_timestamp": 1}));
    assert_eq!(windows, plain);
}

#[test]
fn replay_rejects_a_bad_range() {
    let out = Command::new(env!("CARGO_BIN_EXE_journeyd"))
        .current_dir(repo())
        .args([
            "replay",
            "--from",
            "2026-11-02T00:00:00Z",
            "--to",
            "2026-11-01T00:00:00Z",
            "tests/golden/events.ndjson",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--from must be before --to"));
    let out = Command::new(env!("CARGO_BIN_EXE_journeyd"))
        .current_dir(repo())
        .args(["replay", "--from", "someday", "tests/golden/events.ndjson"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--from: `someday` is not a time"));
}
