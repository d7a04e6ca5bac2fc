//! Hostile input through Kafka and HTTP: every malformed record lands in the dead-letter file
//! with its reason, source, position and original bytes, and the valid records around them
//! are all counted.

use std::time::Duration;

use journey_tests::{free_port, http, metric, temp_dir, wait_until, Service};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::Value;

const TS: i64 = 1_795_132_800_000; // 2026-11-20T00:00:00Z

/// Each malformed record with the reason it must be dead-lettered for.
fn corpus() -> Vec<(Vec<u8>, &'static str)> {
    let long_id = "x".repeat(300);
    vec![
        (b"{oops".to_vec(), "not_json"),
        (vec![b'{', 0xff, 0xfe, b'}'], "invalid_utf8"),
        (br#"{"customer_id": "a", "event": "page_view"}"#.to_vec(), "missing_field"),
        (format!(r#"{{"customer_id": true, "ts": {TS}, "event": "x"}}"#).into_bytes(), "wrong_type"),
        (format!(r#"{{"customer_id": "{long_id}", "ts": {TS}, "event": "x"}}"#).into_bytes(), "customer_id_length"),
        (br#"{"customer_id": "a", "ts": "yesterday", "event": "x"}"#.to_vec(), "bad_timestamp"),
        (br#"{"customer_id": "a", "ts": 100, "event": "x"}"#.to_vec(), "timestamp_out_of_range"),
        (br#"{"customer_id": "a", "ts": "2099-01-01T00:00:00Z", "event": "x"}"#.to_vec(), "timestamp_in_future"),
        (format!(r#"{{"customer_id": "a", "ts": {TS}, "event": "x", "attributes": {{"pad": "{}"}}}}"#, "p".repeat(2000)).into_bytes(), "too_large"),
    ]
}

/// A valid event; `i` spaces customers so none reaches session.max_events.
fn valid(i: usize, source: &str) -> Vec<u8> {
    format!(
        r#"{{"customer_id": "{source}-{i}", "ts": {}, "event": "page_view", "attributes": {{"url": "/"}}}}"#,
        TS + i as i64 * 1000
    )
    .into_bytes()
}

/// Four events in one session of one customer: with session.max_events = 3 the last is refused
/// by the engine.
fn too_many(source: &str) -> Vec<Vec<u8>> {
    (0..4)
        .map(|i| {
            format!(
                r#"{{"customer_id": "{source}-busy", "ts": {}, "event": "page_view"}}"#,
                TS + i * 60_000
            )
            .into_bytes()
        })
        .collect()
}

fn read_letters(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each dead letter is a JSON line"))
        .collect()
}

#[test]
fn malformed_records_from_kafka_and_http_land_in_the_dead_letter_file() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("web", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("producer");
    let bad = corpus();
    // valid, bad, valid, bad, ... then one customer with too many events.
    let mut records: Vec<Vec<u8>> = Vec::new();
    for (i, (b, _)) in bad.iter().enumerate() {
        records.push(valid(i, "web"));
        records.push(b.clone());
    }
    records.push(valid(bad.len(), "web"));
    records.extend(too_many("web"));
    for r in &records {
        producer
            .send(
                BaseRecord::<(), [u8]>::to("web")
                    .payload(r.as_slice())
                    .partition(0),
            )
            .expect("queued");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");

    let dir = temp_dir("bad-input");
    let letters_path = dir.join("dead-letters.ndjson");
    let port = free_port();
    let config = dir.join("journeyd.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[http]
listen = "127.0.0.1:{port}"
[runtime]
workers = 2
publish_interval = "100ms"
[session]
max_events = 3
[ingest]
max_record_bytes = 1024
[dead_letter]
sink = "file"
path = "{}"
[kafka]
enabled = true
brokers = "{brokers}"
group_id = "bad-input"
[[kafka.topics]]
name = "web"
"#,
            letters_path.display()
        ),
    )
    .expect("config");
    let mut service = Service::start(&config, port);
    service.wait_ready();

    // The same corpus over HTTP, as NDJSON, less the invalid UTF-8 record (this test's HTTP
    // client sends text; the decoder's UTF-8 check is the same for every source).
    let mut body = String::new();
    for r in records
        .iter()
        .filter(|r| !r.starts_with(b"{\"customer_id\": \"web-busy"))
        .chain(&too_many("shop"))
    {
        if let Ok(line) = std::str::from_utf8(r) {
            body.push_str(line);
            body.push('\n');
        }
    }
    let (status, reply) = http(port, "POST", "/v1/events?source=shop", &body).expect("POST");
    assert_eq!(status, 202, "{reply}");
    let reply: Value = serde_json::from_str(&reply).expect("JSON reply");
    assert_eq!(reply["rejected"], bad.len() - 1, "{reply}");

    let valid_per_source = bad.len() + 1 + 3;
    wait_until("every valid event applied", Duration::from_secs(60), || {
        let applied = metric(port, "journeyd_events_applied_total")?;
        (applied as usize == 2 * valid_per_source).then_some(())
    });
    let expected_letters = bad.len() + 1 + (bad.len() - 1) + 1;
    let letters = wait_until("every dead letter written", Duration::from_secs(30), || {
        let l = read_letters(&letters_path);
        (l.len() == expected_letters).then_some(l)
    });

    let from_kafka: Vec<&Value> = letters.iter().filter(|l| l["source"] == "web").collect();
    let reasons: Vec<&str> = from_kafka
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = bad.iter().map(|(_, r)| *r).collect();
    want.push("too_many_events");
    assert_eq!(reasons, want);
    for (i, (bytes, reason)) in bad.iter().enumerate() {
        let l = from_kafka[i];
        assert_eq!(l["position"]["kafka"]["topic"], "web", "{reason}");
        assert_eq!(
            l["position"]["kafka"]["offset"],
            2 * i as u64 + 1,
            "{reason}"
        );
        let kept = match std::str::from_utf8(bytes) {
            Ok(s) => l["record"] == s,
            Err(_) => l["record_base64"].is_string(),
        };
        assert!(kept, "{reason}: original bytes kept: {l}");
        assert!(l["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let engine = from_kafka[bad.len()];
    assert_eq!(engine["position"], serde_json::json!({"engine": {}}));
    assert!(engine["record"].as_str().unwrap().contains("web-busy"));

    // A request's records are dead-lettered in line order once its events are queued, so
    // the engine's letter for one of them may come first.
    let from_http: Vec<&Value> = letters.iter().filter(|l| l["source"] == "shop").collect();
    let (decoded, engine): (Vec<&Value>, Vec<&Value>) = from_http
        .into_iter()
        .partition(|l| l["position"]["http"]["line"].as_u64().is_some());
    let reasons: Vec<&str> = decoded
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = bad
        .iter()
        .map(|(_, r)| *r)
        .filter(|r| *r != "invalid_utf8")
        .collect();
    assert_eq!(reasons, want);
    assert_eq!(engine.len(), 1, "{engine:?}");
    assert_eq!(engine[0]["reason"], "too_many_events");
    assert_eq!(engine[0]["position"], serde_json::json!({"engine": {}}));

    for (_, reason) in &bad {
        let series =
            format!("journeyd_ingest_rejected_total{{reason=\"{reason}\",source=\"web\"}}");
        assert_eq!(metric(port, &series), Some(1.0), "{series}");
    }
    assert_eq!(
        metric(
            port,
            "journeyd_dead_letters_total{outcome=\"written\",sink=\"file\"}"
        ),
        Some(expected_letters as f64)
    );
    assert!(service.terminate());
}
