//! The official Segment Python SDK (`segment-analytics-python`, PyPI) against the real binary:
//! a journey of track, page and identify calls, a batch of 1 000 events sent with gzip on, and
//! a client with a wrong write key. The SDK must report no error for the right key and a 401
//! for every call of the wrong one; journeyd's figures and `journeyd_ingest_events_total` must
//! match what the SDK sent.
//!
//! Needs `python3` with the SDK (`pip install segment-analytics-python`; `.ci/run` installs it).
//! `$JOURNEYD_PYTHON` picks another interpreter.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

const KEY: &str = "wk-website-0123456789";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    assert!(
        !head.to_ascii_lowercase().contains("chunked"),
        "unexpected chunked answer"
    );
    Some(body.to_string())
}

fn get_json(port: u16, path: &str) -> Option<Value> {
    serde_json::from_str(&get(port, path)?).ok()
}

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of one Prometheus sample whose line has every one of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn touchpoint<'v>(v: &'v Value, name: &str) -> &'v Value {
    v["touchpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap()
}

#[test]
fn segment_python_sdk_sends_to_journeyd() {
    let python = std::env::var("JOURNEYD_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import segment.analytics"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "the Segment SDK is missing: `pip install segment-analytics-python` (.ci/run does), \
         or point $JOURNEYD_PYTHON at a python3 that has it"
    );

    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_journeyd"))
        .current_dir(repo())
        .arg("run")
        .env("JOURNEYD_LOG__LEVEL", "warn")
        .env("JOURNEYD_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "JOURNEYD_HTTP__SEGMENT_WRITE_KEYS",
            format!(r#"[{{ key = "{KEY}", source = "web" }}]"#),
        )
        .env(
            "JOURNEYD_RULES__PATH",
            "tests/field-cases/09-gzip-request-body/rules.toml",
        )
        .env("JOURNEYD_RULES__WATCH", "false")
        .env("JOURNEYD_RUNTIME__TICK_INTERVAL", "100ms")
        .env("JOURNEYD_RUNTIME__PUBLISH_INTERVAL", "100ms")
        // Short sessions, so the wall-clock watermark closes them within seconds.
        .env("JOURNEYD_SESSION__GAP", "2s")
        .env("JOURNEYD_SESSION__ALLOWED_LATENESS", "30s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _service = Service(child);
    wait_until("readiness", || get(port, "/readyz"));

    // Recent event times: in live mode the watermark follows the wall clock.
    let t0 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        - 5_000;
    let out = Command::new(&python)
        .arg(repo().join("tests/sdk/segment_sdk.py"))
        .args([
            &format!("http://127.0.0.1:{port}"),
            KEY,
            "wk-wrong-key-0123456789",
            &t0.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    let sent =
        report["sent"]["journey"].as_u64().unwrap() + report["sent"]["bulk"].as_u64().unwrap();
    assert_eq!(sent, 1004);
    // The wrong key: every call refused with 401 (not retried, not applied).
    let wrong = report["wrong_key_errors"].as_array().unwrap();
    assert!(!wrong.is_empty(), "{report}");
    assert!(wrong.iter().all(|e| e["status"] == 401), "{report}");
    assert_eq!(
        wrong
            .iter()
            .map(|e| e["calls"].as_u64().unwrap())
            .sum::<u64>(),
        3
    );

    let metrics = get(port, "/metrics").unwrap();
    let accepted = sample(
        &metrics,
        "journeyd_ingest_events_total",
        &["source=\"web\"", "outcome=\"accepted\""],
    );
    assert_eq!(accepted, sent, "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "journeyd_ingest_events_total",
            &["outcome=\"rejected\""]
        ),
        0
    );
    assert!(sample(&metrics, "journeyd_http_unauthorized_total", &["segment"]) >= 1);

    // 251 customers: every one saw a product page, 101 ordered (sdk-1 and bulk-0..99), 150
    // left at the product page (cart and wishlist events are no touchpoints).
    let tps = wait_until("every session closed", || {
        get_json(port, "/v1/touchpoints?from=now-1h")
            .filter(|v| touchpoint(v, "product_page")["sessions"] == 251)
    });
    let product = touchpoint(&tps, "product_page");
    assert_eq!(
        (product["visits"].as_u64(), product["drop_offs"].as_u64()),
        (Some(501), Some(150)),
        "{tps}"
    );
    assert_eq!(touchpoint(&tps, "order_confirmed")["completions"], 101);
    let funnel = get_json(port, "/v1/funnel?from=now-1h").unwrap();
    let reached: Vec<i64> = funnel["funnel"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reached"].as_i64().unwrap())
        .collect();
    assert_eq!(reached, [251, 251, 101, 0, 0], "{funnel}");
}
