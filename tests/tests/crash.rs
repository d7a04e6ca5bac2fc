//! Crash safety (SPEC §9): the real binary consumes a topic of the mock Kafka cluster, is
//! killed with SIGKILL at seeded random points and restarted each time, and its final figures
//! equal those of a run that was never interrupted. Duplicate suppression is off, so a record
//! applied twice would show. A second test restarts after SIGTERM and needs no replay.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use journey_core::time::DAY;
use journey_gen::{generate, GenConfig, Rng};
use journey_tests::{get_json, group_caught_up, metric, temp_dir, wait_until, Service};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::ClientConfig;
use serde_json::Value;

const TOPIC: &str = "events";
/// Journeys start on this day and run on for about three weeks: the whole data set lies in the
/// past (see [`cluster_with_events`]).
const START: i64 = 1_790_812_800_000; // 2026-10-01T00:00:00Z

/// One partition: the order the service reads records in is then fixed, so sessions and
/// lateness (which depend on arrival order) come out the same in every run.
fn cluster_with_events(customers: usize) -> (MockCluster<'static, DefaultProducerContext>, usize) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 1, 1).expect("topic");
    let events = generate(&GenConfig {
        customers,
        start: START,
        span: DAY,
        ..GenConfig::default()
    });
    // journeyd runs live, and live event time reads the wall clock: a record dated more than
    // `ingest.max_future` after it is refused, and event time stops at it (journey-runtime's
    // task.rs). A record dated after the wall clock would make the figures depend on when it is
    // read, and the killed run reads every record later than the reference run does: it would
    // accept records the reference refused, or close sessions the reference still held open.
    // Dated in the past, the figures depend on the records alone.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let last = events.iter().map(|e| e.ts).max().unwrap_or(START);
    assert!(
        last < now,
        "the generated events run until {last}, after the wall clock ({now}, epoch ms): move START \
         back so that every event lies in the past"
    );
    // Small record batches: a fetch returns at least one whole batch, so big batches would
    // defeat the consumer's small fetch size.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("batch.num.messages", "20")
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    for e in &events {
        let payload = serde_json::to_string(e).expect("event JSON");
        let mut record: BaseRecord<str, str> =
            BaseRecord::to(TOPIC).payload(payload.as_str()).partition(0);
        while let Err((_, r)) = producer.send(record) {
            producer.poll(Duration::from_millis(10));
            record = r;
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    (cluster, events.len())
}

fn write_config(dir: &Path, port: u16, brokers: &str, group: &str) -> std::path::PathBuf {
    let path = dir.join("journeyd.toml");
    let checkpoints = dir.join("checkpoints");
    // No wall-clock watermark ticks (tick_interval = 1h): figures then depend on the records
    // alone. Small fetches keep consumption slow enough to be killed in the middle.
    let text = format!(
        r#"
[http]
listen = "127.0.0.1:{port}"
[runtime]
workers = 2
publish_interval = "100ms"
tick_interval = "1h"
[dedup]
horizon = "0s"
[checkpoint]
dir = "{checkpoints}"
interval = "250ms"
[kafka]
enabled = true
brokers = "{brokers}"
group_id = "{group}"
[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
"max.partition.fetch.bytes" = "8192"
[[kafka.topics]]
name = "{TOPIC}"
format = "canonical"
"#,
        checkpoints = checkpoints.display()
    );
    std::fs::write(&path, text).expect("config");
    path
}

/// Everything the API reports for the data's time range.
fn figures(port: u16) -> Value {
    let q = format!("from={}&to={}", START - DAY, START + 90 * DAY);
    let get = |path: &str| {
        get_json(port, &format!("{path}?{q}")).unwrap_or_else(|| panic!("{path} answers"))
    };
    serde_json::json!({
        "funnel": get("/v1/funnel"),
        "touchpoints": get("/v1/touchpoints"),
        "transitions": get("/v1/transitions"),
    })
}

/// Waits until a checkpoint covers the whole topic (its offsets are committed after it), then
/// for the workers' next publish.
fn wait_consumed(brokers: &str, group: &str) {
    wait_until(
        "the whole topic to be checkpointed",
        Duration::from_secs(240),
        || group_caught_up(brokers, group, TOPIC, 1).then_some(()),
    );
    std::thread::sleep(Duration::from_millis(500));
}

#[test]
fn killed_at_random_points_and_restarted_the_figures_equal_an_uninterrupted_run() {
    let (cluster, n) = cluster_with_events(1_000);
    let brokers = cluster.bootstrap_servers();
    // Each fetch round trip takes 5 ms, so the topic takes seconds to read.
    cluster
        .broker_round_trip_time(1, Duration::from_millis(5))
        .expect("rtt");

    let dir = temp_dir("crash-reference");
    let port = journey_tests::free_port();
    let t0 = std::time::Instant::now();
    let mut reference = Service::start(&write_config(&dir, port, &brokers, "reference"), port);
    reference.wait_ready();
    wait_consumed(&brokers, "reference");
    let want = figures(port);
    eprintln!("crash test: reference run took {:?}", t0.elapsed());
    assert!(reference.terminate(), "clean exit");
    let reached = want["funnel"]["funnel"]["steps"][0]["reached"].as_u64();
    assert!(
        reached > Some(500),
        "a meaningful data set: {reached:?} of {n} events"
    );

    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_123);
    eprintln!("crash test: seed {seed} (set CRASH_SEED to repeat another), {n} events");
    let mut rng = Rng::new(seed);
    let dir = temp_dir("crash-killed");
    let port = journey_tests::free_port();
    let config = write_config(&dir, port, &brokers, "killed");
    let mut kills = 0;
    let mut progress = Vec::new();
    while kills < 5 {
        let mut service = Service::start(&config, port);
        service.wait_ready();
        // Kill at a random point after consumption (re)starts, so every kill interrupts work
        // in flight: applying, snapshotting or writing a checkpoint.
        wait_until("consumption to start", Duration::from_secs(60), || {
            metric(port, "journeyd_events_applied_total").filter(|&a| a > 0.0)
        });
        std::thread::sleep(Duration::from_millis((rng.unit() * 800.0) as u64));
        let applied = metric(port, "journeyd_events_applied_total").unwrap_or(0.0);
        progress.push(applied as u64);
        service.kill();
        kills += 1;
        assert!(
            !group_caught_up(&brokers, "killed", TOPIC, 1),
            "kill {kills} came after the topic was consumed; the test needs slower input"
        );
    }
    eprintln!("crash test: events applied by each killed incarnation: {progress:?}");
    let mut last = Service::start(&config, port);
    last.wait_ready();
    wait_consumed(&brokers, "killed");
    let got = figures(port);
    eprintln!("crash test: all done after {:?}", t0.elapsed());
    assert!(last.terminate(), "clean exit");
    assert_eq!(
        got, want,
        "figures after {kills} kills differ (seed {seed})"
    );
}

#[test]
fn a_graceful_restart_resumes_from_the_checkpoint_without_replaying() {
    let (cluster, _) = cluster_with_events(300);
    let brokers = cluster.bootstrap_servers();
    let dir = temp_dir("graceful-restart");
    let port = journey_tests::free_port();
    let config = write_config(&dir, port, &brokers, "graceful");

    let mut first = Service::start(&config, port);
    first.wait_ready();
    wait_consumed(&brokers, "graceful");
    let before = figures(port);
    assert!(first.terminate(), "clean exit on SIGTERM");
    // One partition: one task, one checkpoint object (its newest generation).
    let generations = std::fs::read_dir(dir.join("checkpoints/tasks/00000"))
        .unwrap()
        .count();
    assert_eq!(generations, 1, "older generations are cleaned up");

    let mut second = Service::start(&config, port);
    second.wait_ready();
    // The restored state answers at once, and nothing is read again.
    wait_until("the restored figures", Duration::from_secs(10), || {
        (figures(port) == before).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(metric(port, "journeyd_events_applied_total"), Some(0.0));
    assert_eq!(figures(port), before);
    assert!(second.terminate());
}
