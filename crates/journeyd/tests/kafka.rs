//! journeyd against librdkafka's mock cluster (a real Kafka protocol peer on a TCP port):
//! three topics in three wire formats, several partitions, a known event set. The figures the
//! service computes must equal those of the engine run directly in this test, and the consumer
//! group's committed offsets must reach the end of every partition once the events are applied.
//! Topics consumed together must be co-partitioned (the same partition count): a set that is
//! not stops journeyd at startup, and so does (with `kafka.repartition`) an internal topic with
//! another partition count than the tasks.

use std::borrow::Cow;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use journey_core::query::{funnel, Include, Summary};
use journey_core::time::DAY;
use journey_core::{EngineConfig, Event, Rules, Shard};
use journey_gen::{generate, GenConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};

/// Co-partitioned: the same partition count everywhere (a task is one partition index).
const TOPICS: [(&str, i32, &str); 3] = [
    ("web", 3, "segment"),
    ("crm", 3, "canonical"),
    ("service", 3, "cloudevents"),
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The record for a topic's wire format.
fn encode(e: &Event<'_>) -> (&'static str, String) {
    let attrs = if e.attributes.is_null() {
        json!({})
    } else {
        e.attributes.clone()
    };
    match &*e.source {
        "web" => ("web", json!({"type": "track", "event": e.name, "userId": e.customer_id, "timestamp": iso(e.ts), "messageId": e.event_id, "properties": attrs}).to_string()),
        "crm" => ("crm", serde_json::to_string(e).unwrap()),
        _ => ("service", json!({"specversion": "1.0", "type": e.name, "source": "/service-desk", "id": e.event_id, "subject": e.customer_id, "time": iso(e.ts), "data": attrs}).to_string()),
    }
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
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    raw.starts_with("HTTP/1.0 200")
        .then(|| raw.split_once("\r\n\r\n").map(|x| x.1.to_string()))
        .flatten()
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
}

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kafka_topics_in_three_formats_give_the_engines_figures_and_commit_applied_offsets() {
    let cluster = MockCluster::new(1).unwrap();
    for (topic, partitions, _) in TOPICS {
        cluster.create_topic(topic, partitions, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();

    // In the past, journeys and all: the service rejects records dated more than a day after
    // its wall clock (ingest.max_future), and generated journeys run weeks past `start`.
    let start = 1_788_220_800_000; // 2026-09-01T00:00:00Z
    let events = generate(&GenConfig {
        customers: 120,
        start,
        span: DAY,
        ..GenConfig::default()
    });
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for e in &events {
        let (topic, payload) = encode(e);
        producer
            .send(
                BaseRecord::to(topic)
                    .key(e.customer_id.as_ref())
                    .payload(&payload),
            )
            .unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let mut non_empty = 0;
    for (topic, partitions, _) in TOPICS {
        for p in 0..partitions {
            let (_, high) = probe
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .unwrap();
            non_empty += (high > 0) as usize;
        }
    }
    assert!(non_empty >= 7, "records spread over the partitions");

    // What the engine makes of the same events, in time order.
    let rules = Arc::new(
        Rules::from_toml(&std::fs::read_to_string(repo().join("config/rules.toml")).unwrap())
            .unwrap(),
    );
    // Reading three topics' backlogs interleaves their event times by up to the whole span of
    // the data, but a task's watermark is the minimum over its partitions: with the default
    // lateness nothing is late, and every figure must equal the engine's in time order.
    let cfg = EngineConfig::default();
    let mut shard = Shard::new(Arc::new(cfg), rules.clone());
    for e in &events {
        shard
            .apply(&Event {
                source: Cow::Borrowed(&*e.source),
                ..e.clone()
            })
            .unwrap();
    }
    shard.flush();
    let (from, to) = (start - DAY, start + 60 * DAY);
    let want = Summary::collect([shard.aggregates()], from, to, &Include::default());

    let port = free_port();
    let scratch = tempfile::Builder::new()
        .prefix("journeyd-kafka-")
        .tempdir()
        .unwrap();
    let dir = scratch.path();
    let config = dir.join("journeyd.toml");
    let mut toml = format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n[runtime]\nworkers = 2\npublish_interval = \"200ms\"\ntick_interval = \"200ms\"\n\
         [kafka]\nenabled = true\nbrokers = \"{brokers}\"\ngroup_id = \"journeyd-test\"\n[kafka.properties]\n\"auto.commit.interval.ms\" = \"200\"\n"
    );
    for (topic, _, format) in TOPICS {
        toml.push_str(&format!(
            "[[kafka.topics]]\nname = \"{topic}\"\nsource = \"{topic}\"\nformat = \"{format}\"\n"
        ));
    }
    std::fs::write(&config, toml).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_journeyd"))
        .args(["run", "--config", config.to_str().unwrap()])
        .current_dir(repo())
        .env("JOURNEYD_LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _service = Service(child);

    let deadline = Instant::now() + Duration::from_secs(90);
    let n = events.len() as f64;
    loop {
        let applied =
            get(port, "/metrics").and_then(|m| metric(&m, "journeyd_events_applied_total"));
        if applied == Some(n) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "applied {applied:?} of {n} events"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = get(port, "/metrics").unwrap();
    for (topic, _, _) in TOPICS {
        let count = events.iter().filter(|e| e.source == topic).count() as f64;
        let line =
            format!("journeyd_ingest_events_total{{outcome=\"accepted\",source=\"{topic}\"}}");
        assert_eq!(metric(&metrics, &line), Some(count), "{topic}");
    }

    // Funnel and visits do not depend on arrival order: they must match exactly.
    std::thread::sleep(Duration::from_millis(600));
    let q = format!("from={from}&to={to}");
    let got: Value = serde_json::from_str(&get(port, &format!("/v1/funnel?{q}")).unwrap()).unwrap();
    let expected = serde_json::to_value(funnel(&want, rules.phases(), None, 100)).unwrap();
    let reached = |v: &Value| {
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["reached"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(reached(&got["funnel"]), reached(&expected));
    assert!(reached(&expected)[0] > 50, "a meaningful data set");
    let tps: Value =
        serde_json::from_str(&get(port, &format!("/v1/touchpoints?{q}")).unwrap()).unwrap();
    for t in tps["touchpoints"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let want_visits = want.touchpoints.get(name).map_or(0, |a| a.visits);
        assert_eq!(t["visits"].as_u64(), Some(want_visits), "{name}");
        if let Some(score) = want.touchpoints.get(name).filter(|a| a.score.count > 0) {
            assert_eq!(
                t["score"]["count"].as_u64(),
                Some(score.score.count),
                "{name} scores"
            );
        }
    }

    // Every assigned partition has a lag gauge, zero once everything is consumed (refreshed
    // every 5 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = get(port, "/metrics").unwrap();
        let lags: Vec<f64> = m
            .lines()
            .filter(|l| l.starts_with("journeyd_kafka_consumer_lag{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        let partitions: i32 = TOPICS.iter().map(|t| t.1).sum();
        if lags.len() == partitions as usize && lags.iter().all(|&l| l == 0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lag gauges: {:?}",
            m.lines()
                .filter(|l| l.starts_with("journeyd_kafka"))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Offsets: committed only after the events were applied, up to the end of each partition.
    let check: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "journeyd-test")
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut tpl = TopicPartitionList::new();
        let mut ends = Vec::new();
        for (topic, partitions, _) in TOPICS {
            for p in 0..partitions {
                tpl.add_partition(topic, p);
                let (_, high) = check
                    .fetch_watermarks(topic, p, Duration::from_secs(5))
                    .unwrap();
                ends.push(((topic.to_string(), p), high));
            }
        }
        let committed = check
            .committed_offsets(tpl, Duration::from_secs(5))
            .unwrap();
        let all = ends.iter().all(|((t, p), high)| {
            let off = committed.find_partition(t, *p).map(|e| e.offset());
            *high == 0 || off == Some(Offset::Offset(*high))
        });
        if all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "committed {committed:?}, partition ends {ends:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `text` without ANSI colour sequences (`ESC [ ... letter`), which hold digits.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `text` names `topic` with `count` as a whole number next to it on one line: within
/// 60 characters after the name, or 20 before it (`4 partitions in mismatch-web`).
fn names_count(text: &str, topic: &str, count: i32) -> bool {
    let whole = |s: &str| {
        s.split(|c: char| !c.is_ascii_digit())
            .any(|n| n == count.to_string())
    };
    strip_ansi(text).lines().any(|line| {
        line.match_indices(topic).any(|(i, _)| {
            let after: String = line[i + topic.len()..].chars().take(60).collect();
            let head: Vec<char> = line[..i].chars().collect();
            let before: String = head[head.len().saturating_sub(20)..].iter().collect();
            whole(&after) || whole(&before)
        })
    })
}

#[test]
fn topics_with_different_partition_counts_stop_journeyd_at_startup() {
    // Names no other name contains, and counts that tell them apart.
    let topics = [
        ("mismatch-web", 4),
        ("mismatch-crm", 2),
        ("mismatch-service", 3),
    ];
    let cluster = MockCluster::new(1).unwrap();
    for (topic, partitions) in topics {
        cluster.create_topic(topic, partitions, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    let port = free_port();
    let scratch = tempfile::Builder::new()
        .prefix("journeyd-kafka-mismatch-")
        .tempdir()
        .unwrap();
    let dir = scratch.path();
    let config = dir.join("journeyd.toml");
    let mut toml = format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n[kafka]\nenabled = true\nbrokers = \"{brokers}\"\n\
         group_id = \"journeyd-mismatch\"\n"
    );
    for (topic, _) in topics {
        toml.push_str(&format!(
            "[[kafka.topics]]\nname = \"{topic}\"\nsource = \"{topic}\"\nformat = \"canonical\"\n"
        ));
    }
    std::fs::write(&config, toml).unwrap();
    // In text for people, and in JSON, where a log shipper must parse every line: the error
    // is then one JSON object at level ERROR, not a plain `journeyd: …` line.
    for format in ["text", "json"] {
        let stderr = refused_at_startup(&config, dir, format);
        for (topic, partitions) in topics {
            assert!(
                names_count(&stderr, topic, partitions),
                "{format}: the error names topic {topic} and its {partitions} partitions; \
                 stderr:\n{stderr}"
            );
        }
        let error = stderr
            .lines()
            .filter(|l| l.contains("must have the same partition count"))
            .collect::<Vec<_>>();
        assert_eq!(error.len(), 1, "{format}: said once; stderr:\n{stderr}");
        if format == "json" {
            for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
                assert!(
                    serde_json::from_str::<Value>(line).is_ok(),
                    "not JSON: {line}\nstderr:\n{stderr}"
                );
            }
            let v: Value = serde_json::from_str(error[0]).unwrap();
            assert_eq!(v["level"], "ERROR", "{stderr}");
            assert!(
                v["fields"]["message"].as_str().is_some_and(
                    |m| m.starts_with("the input topics must have the same partition count")
                ),
                "{stderr}"
            );
        } else {
            assert!(
                error[0].contains(
                    "ERROR journeyd: the input topics must have the same partition count"
                ),
                "{stderr}"
            );
        }
    }
}

/// Starts `journeyd run --config <config>` at log level `level` in `format`, its standard
/// error written to `stderr`.
fn run_logged(
    config: &std::path::Path,
    stderr: &std::path::Path,
    level: &str,
    format: &str,
) -> Service {
    let child = Command::new(env!("CARGO_BIN_EXE_journeyd"))
        .args(["run", "--config", config.to_str().unwrap()])
        .current_dir(repo())
        .env("JOURNEYD_LOG__LEVEL", level)
        .env("JOURNEYD_LOG__FORMAT", format)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap();
    Service(child)
}

/// Runs `journeyd run --config <config>` with `log.format` = `format`, which must exit with an
/// error within 30 s; returns its standard error.
fn refused_at_startup(config: &std::path::Path, dir: &std::path::Path, format: &str) -> String {
    let stderr_path = dir.join(format!("stderr-{format}.log"));
    let mut service = run_logged(config, &stderr_path, "warn", format);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = service.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "journeyd is still running 30 s after starting on topics with 4, 2 and 3 \
             partitions; it must refuse them at startup. stderr:\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(!status.success(), "exit status {status}; stderr:\n{stderr}");
    stderr
}

#[test]
fn names_count_finds_a_topic_with_its_count() {
    let msg = "journeyd: input topics are not co-partitioned: mismatch-web has 4 partitions, \
               mismatch-crm 2, mismatch-service 3";
    assert!(names_count(msg, "mismatch-web", 4));
    assert!(names_count(msg, "mismatch-crm", 2));
    assert!(names_count(msg, "mismatch-service", 3));
    assert!(!names_count(
        "mismatch-web has 14 partitions",
        "mismatch-web",
        4
    ));
    assert!(!names_count("mismatch-web\n4", "mismatch-web", 4));
    assert!(names_count("[(\"mismatch-crm\", 2)]", "mismatch-crm", 2));
    let coloured = "\u{1b}[2m2026-11-30T11:22:58Z\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m mismatch-crm";
    assert!(
        !names_count(coloured, "mismatch-crm", 2),
        "no digits of colour codes"
    );
}

/// With `kafka.repartition`, an internal topic that exists with another partition count than
/// the tasks stops journeyd at startup, naming it with both counts (repartitioned records would
/// otherwise reach the wrong tasks).
#[test]
fn an_internal_topic_with_another_partition_count_stops_journeyd_at_startup() {
    let cluster = MockCluster::new(1).unwrap();
    for (topic, partitions) in [("rp-web", 4), ("rp-crm", 2), ("journeyd-rp-repartition", 3)] {
        cluster.create_topic(topic, partitions, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    let scratch = tempfile::Builder::new()
        .prefix("journeyd-kafka-rp-")
        .tempdir()
        .unwrap();
    let dir = scratch.path();
    let config = dir.join("journeyd.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:{}\"\n[kafka]\nenabled = true\nbrokers = \"{brokers}\"\n\
             group_id = \"journeyd-rp\"\nrepartition = true\nrepartition_replication_factor = 1\n\
             [[kafka.topics]]\nname = \"rp-web\"\n[[kafka.topics]]\nname = \"rp-crm\"\n",
            free_port()
        ),
    )
    .unwrap();
    let stderr_path = dir.join("stderr.log");
    let mut service = run_logged(&config, &stderr_path, "warn", "text");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = service.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "journeyd is still running 30 s after starting with an internal topic of 3 \
             partitions for 4 tasks; it must refuse it at startup"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = strip_ansi(&std::fs::read_to_string(&stderr_path).unwrap());
    assert!(!status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(
        stderr.contains(
            "the internal topic `journeyd-rp-repartition` has 3 partitions but the tasks are 4"
        ),
        "stderr:\n{stderr}"
    );
}

/// A partition whose leader is down from the start: journeyd cannot look up its position or
/// fetch it, and its task's watermark waits. After `kafka.stall_timeout` it says so, naming
/// the partition, and `journeyd_kafka_stalled_partitions` counts it; once the leader is back,
/// the partition moves and the gauge returns to 0. The other partition, on a live broker, is
/// never counted.
#[test]
fn a_partition_whose_leader_is_down_is_reported_stalled_until_it_moves() {
    let cluster = MockCluster::new(2).unwrap();
    cluster.create_topic("stall-web", 2, 1).unwrap();
    cluster.partition_leader("stall-web", 0, Some(1)).unwrap();
    cluster.partition_leader("stall-web", 1, Some(2)).unwrap();
    cluster
        .coordinator(MockCoordinator::Group("journeyd-stall".into()), 1)
        .unwrap();
    let brokers = cluster.bootstrap_servers();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for i in 0..20 {
        let payload = json!({
            "customer_id": format!("c-{i}"),
            "ts": iso(1_788_220_800_000 + i * 1000),
            "source": "web",
            "event": "page_view",
            "attributes": {"url": "/products/shoes"}
        })
        .to_string();
        let key = format!("c-{i}");
        producer
            .send(
                BaseRecord::to("stall-web")
                    .partition((i % 2) as i32)
                    .key(&key)
                    .payload(&payload),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    cluster.broker_down(2).unwrap();

    let port = free_port();
    let scratch = tempfile::Builder::new()
        .prefix("journeyd-kafka-stall-")
        .tempdir()
        .unwrap();
    let dir = scratch.path();
    let config = dir.join("journeyd.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n[runtime]\nworkers = 1\n[kafka]\nenabled = true\n\
             brokers = \"{brokers}\"\ngroup_id = \"journeyd-stall\"\nstall_timeout = \"2s\"\n\
             [[kafka.topics]]\nname = \"stall-web\"\nsource = \"web\"\n"
        ),
    )
    .unwrap();
    let stderr_path = dir.join("stderr.log");
    let _service = run_logged(&config, &stderr_path, "info", "text");
    let log = || strip_ansi(&std::fs::read_to_string(&stderr_path).unwrap_or_default());
    let stalled =
        || get(port, "/metrics").and_then(|m| metric(&m, "journeyd_kafka_stalled_partitions"));

    let deadline = Instant::now() + Duration::from_secs(90);
    while stalled() != Some(1.0) || !log().contains("stall-web/1 has not moved for") {
        assert!(
            Instant::now() < deadline,
            "no stall reported for partition 1 within 90 s: gauge {:?}; log:\n{}",
            stalled(),
            log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        !log().contains("stall-web/0 has not moved"),
        "log:\n{}",
        log()
    );

    cluster.broker_up(2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while stalled() != Some(0.0) || !log().contains("stall-web/1 is moving again") {
        assert!(
            Instant::now() < deadline,
            "partition 1 still counted stalled 90 s after its leader came back: gauge {:?}; \
             log:\n{}",
            stalled(),
            log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
