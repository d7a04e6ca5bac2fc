//! The task state store against a real S3 server (moto, started per test): checkpoints
//! written and restored through `s3://`, and fencing, where the conditional write
//! (`If-None-Match: *`) of an instance that lost its task is refused by the server.
//!
//! Run with `cargo test -p journey-tests --test state_s3`; moto's server comes from
//! `pip install 'moto[server]'` (installed by the test when missing).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use journey_core::time::DAY;
use journey_gen::{generate, GenConfig};
use journey_state::{Content, StateStore};
use journey_tests::{free_port, get_json, http, metric, temp_dir, wait_until, Moto, Service};
use serde_json::Value;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn store(moto: &Moto, url: &str) -> StateStore {
    StateStore::open_with(url, moto.env()).expect("opening the s3 store")
}

#[test]
fn generations_fencing_and_plain_objects_through_moto() {
    let moto = Moto::start("library");
    moto.create_bucket("journeyd");
    let a = store(&moto, "s3://journeyd/cluster-a");

    // Plain objects, as used for instance membership.
    a.put("members/i-1.json", br#"{"id":"i-1"}"#.to_vec())
        .unwrap();
    a.put("members/i-2.json", b"{}".to_vec()).unwrap();
    assert_eq!(
        a.get("members/i-1.json").unwrap().unwrap(),
        br#"{"id":"i-1"}"#
    );
    assert_eq!(a.get("members/none.json").unwrap(), None);
    let names: Vec<String> = a
        .list("members/")
        .unwrap()
        .into_iter()
        .map(|l| l.path)
        .collect();
    assert_eq!(names, ["members/i-1.json", "members/i-2.json"]);
    a.delete("members/i-2.json").unwrap();
    assert_eq!(a.list("members/").unwrap().len(), 1);

    // Instance A owns task 5 and checkpoints it twice; old generations are cleaned up.
    let (mut lease_a, content) = a.claim(5, None).unwrap();
    assert_eq!(content, Content::Empty);
    a.write(&mut lease_a, b"a-1".to_vec()).unwrap();
    let g = a.write(&mut lease_a, b"a-2".to_vec()).unwrap();
    let gens: Vec<u64> = a
        .generations(5)
        .unwrap()
        .into_iter()
        .map(|(g, _)| g)
        .collect();
    assert_eq!(gens, vec![g]);

    // Instance B (its own client) takes the task over while A is paused.
    let b = store(&moto, "s3://journeyd/cluster-a");
    let (mut lease_b, content) = b.claim(5, None).unwrap();
    assert_eq!(
        content,
        Content::Read {
            generation: g,
            bytes: b"a-2".to_vec()
        }
    );
    // A wakes: the server refuses its create-if-absent of the claimed generation.
    let err = a.write(&mut lease_a, b"zombie".to_vec()).unwrap_err();
    assert!(err.is_fenced(), "{err}");
    b.write(&mut lease_b, b"b-1".to_vec()).unwrap();
    b.write(&mut lease_b, b"b-2".to_vec()).unwrap();
    // A, far behind now (its next number was cleaned up), is refused all the same.
    for _ in 0..3 {
        assert!(a
            .write(&mut lease_a, b"zombie".to_vec())
            .unwrap_err()
            .is_fenced());
    }
    let latest = a.latest(5).unwrap().unwrap();
    assert_eq!(latest.bytes, b"b-2");
    assert_eq!(b.generations(5).unwrap().len(), 1, "only the newest stays");
    // Another prefix of the same bucket is another store.
    assert!(store(&moto, "s3://journeyd/cluster-b")
        .latest_all()
        .unwrap()
        .is_empty());
}

fn write_config(dir: &Path, port: u16, url: &str) -> PathBuf {
    let path = dir.join("journeyd.toml");
    // No wall-clock watermark ticks: the figures depend on the events alone.
    let text = format!(
        r#"
[http]
listen = "127.0.0.1:{port}"
[runtime]
workers = 2
tasks = 4
publish_interval = "100ms"
tick_interval = "1h"
[state]
url = "{url}"
[checkpoint]
interval = "200ms"
"#
    );
    std::fs::write(&path, text).expect("config");
    path
}

fn figures(port: u16, from: i64, to: i64) -> Value {
    let get = |p: &str| {
        get_json(port, &format!("{p}?from={from}&to={to}")).unwrap_or_else(|| panic!("{p}"))
    };
    serde_json::json!({
        "funnel": get("/v1/funnel"),
        "touchpoints": get("/v1/touchpoints"),
        "transitions": get("/v1/transitions"),
    })
}

#[test]
fn the_service_checkpoints_to_s3_and_restores_from_it() {
    let moto = Moto::start("service");
    moto.create_bucket("state");
    let url = "s3://state/journeyd";
    let dir = temp_dir("state-s3-service");
    let port = free_port();
    let config = write_config(&dir, port, url);
    let start = (now_ms() / DAY - 3) * DAY;
    let events = generate(&GenConfig {
        customers: 300,
        start,
        span: DAY,
        ..GenConfig::default()
    });
    let body: String = events
        .iter()
        .map(|e| serde_json::to_string(e).expect("event JSON") + "\n")
        .collect();

    let mut first = Service::start_with_env(&config, port, &moto.env());
    first.wait_ready();
    let (status, reply) = http(port, "POST", "/v1/events", &body).expect("ingest");
    assert_eq!(status, 202, "{reply}");
    let accepted = serde_json::from_str::<Value>(&reply).unwrap()["accepted"]
        .as_u64()
        .unwrap();
    assert!(accepted > 1_000, "{reply}");
    wait_until(
        "every accepted event handled",
        Duration::from_secs(30),
        || {
            let handled: f64 = [
                "journeyd_events_applied_total",
                "journeyd_events_duplicate_total",
                "journeyd_events_late_total",
                "journeyd_events_rejected_too_many_events_total",
            ]
            .iter()
            .map(|m| metric(port, m).unwrap_or(0.0))
            .sum();
            (handled as u64 == accepted).then_some(())
        },
    );
    let (from, to) = (start - DAY, start + 3 * DAY);
    // Published partials follow within publish_interval: wait until two reads agree.
    let mut last = Value::Null;
    let before = wait_until("settled figures", Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(300));
        let now = figures(port, from, to);
        let same = now == last;
        last = now.clone();
        same.then_some(now)
    });
    assert!(first.terminate(), "clean exit on SIGTERM");

    // One object per task, in the bucket under the URL's prefix.
    let s3 = store(&moto, url);
    let latest = s3.latest_all().unwrap();
    assert_eq!(
        latest.iter().map(|l| l.task).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    for l in &latest {
        assert_eq!(s3.generations(l.task).unwrap().len(), 1, "{}", l.path);
    }

    let mut second = Service::start_with_env(&config, port, &moto.env());
    second.wait_ready();
    assert_eq!(metric(port, "journeyd_task_restores_total"), Some(4.0));
    wait_until("the restored figures", Duration::from_secs(10), || {
        (figures(port, from, to) == before).then_some(())
    });
    assert!(second.terminate());
}

#[test]
fn a_fenced_instance_drops_the_task_and_cannot_overwrite_it() {
    let moto = Moto::start("fencing");
    moto.create_bucket("state");
    let url = "s3://state/fencing";
    let dir = temp_dir("state-s3-fencing");
    let port = free_port();
    let config = write_config(&dir, port, url);
    let mut a = Service::start_with_env(&config, port, &moto.env());
    a.wait_ready();
    wait_until(
        "a checkpoint of every task",
        Duration::from_secs(20),
        || (metric(port, "journeyd_checkpoints_total{outcome=\"written\"}")? >= 8.0).then_some(()),
    );
    assert_eq!(metric(port, "journeyd_tasks_owned"), Some(4.0));

    // Another instance takes task 2 over behind the service's back.
    let b = store(&moto, url);
    let (mut lease, _) = b.claim(2, None).unwrap();
    wait_until(
        "the service's next write fenced",
        Duration::from_secs(20),
        || (metric(port, "journeyd_checkpoint_fenced_total")? == 1.0).then_some(()),
    );
    assert_eq!(
        metric(port, "journeyd_tasks_owned"),
        Some(3.0),
        "the fenced task was dropped"
    );
    b.write(&mut lease, b"new owner".to_vec()).unwrap();
    // Several checkpoint intervals later, the new owner's checkpoint still stands.
    let written = metric(port, "journeyd_checkpoints_total{outcome=\"written\"}").unwrap();
    wait_until("more checkpoint rounds", Duration::from_secs(20), || {
        (metric(port, "journeyd_checkpoints_total{outcome=\"written\"}")? >= written + 6.0)
            .then_some(())
    });
    assert_eq!(b.latest(2).unwrap().unwrap().bytes, b"new owner");
    assert_eq!(metric(port, "journeyd_checkpoint_fenced_total"), Some(1.0));
    assert!(a.terminate(), "clean exit on SIGTERM");
    assert_eq!(b.latest(2).unwrap().unwrap().bytes, b"new owner");
}

/// A state store that stops answering while journeyd shuts down would hold the exit in the
/// final checkpoint's retries, until the orchestrator's SIGKILL. `runtime.shutdown_timeout`
/// ends it with status 1 and a message saying what is lost.
#[test]
fn a_shutdown_that_cannot_reach_the_state_store_ends_at_the_shutdown_timeout() {
    let moto = Moto::start("deadline");
    moto.create_bucket("state");
    let dir = temp_dir("state-s3-deadline");
    let port = free_port();
    let config = write_config(&dir, port, "s3://state/journeyd");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text = text.replace("[runtime]\n", "[runtime]\nshutdown_timeout = \"2s\"\n");
    std::fs::write(&config, text).expect("config");
    let mut child = std::process::Command::new(journey_tests::journeyd_bin())
        .args(["run", "--config", &config.to_string_lossy()])
        .envs(moto.env())
        .current_dir(journey_tests::repo())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting journeyd");
    wait_until("journeyd to answer", Duration::from_secs(30), || {
        http(port, "GET", "/readyz", "").filter(|(s, _)| *s == 200)
    });
    let event = format!(
        r#"{{"customer_id":"c1","ts":{},"event":"page_view"}}"#,
        now_ms() - 60_000
    );
    let (status, reply) = http(port, "POST", "/v1/events", &event).expect("ingest");
    assert_eq!(status, 202, "{reply}");
    drop(moto);
    let signalled = std::time::Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(killed, "SIGTERM sent");
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for journeyd") {
            break status;
        }
        if signalled.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("journeyd still shutting down 30 s after SIGTERM, past its 2 s deadline");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = signalled.elapsed();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut err)
        .expect("stderr");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("within runtime.shutdown_timeout (2s)") && err.contains("previous checkpoint"),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM"
    );
}
