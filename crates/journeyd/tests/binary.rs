//! The real `journeyd` binary, driven over real HTTP and its command line.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn journeyd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_journeyd"));
    c.current_dir(repo())
        .env("NO_COLOR", "1")
        .env("JOURNEYD_LOG__LEVEL", "warn");
    c
}

/// `journeyd run` serving HTTP on `127.0.0.1:port`.
fn run_on(port: u16) -> Command {
    let mut c = journeyd();
    c.arg("run")
        .env("JOURNEYD_HTTP__LISTEN", format!("127.0.0.1:{port}"));
    c
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request; returns status and body.
fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    // Chunked bodies: join the chunks.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn get_json(port: u16, path: &str) -> Option<Value> {
    let (status, body) = http(port, "GET", path, "").ok()?;
    (status == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Service {
    /// Asks for a graceful stop (SIGTERM) and returns whether the process exited cleanly.
    fn terminate(mut self) -> bool {
        sigterm(&self.0);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
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

fn reached(funnel: &Value) -> Vec<i64> {
    funnel["funnel"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reached"].as_i64().unwrap())
        .collect()
}

#[test]
fn demo_serves_a_live_funnel_over_http() {
    let port = free_port();
    let child = journeyd()
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--customers-per-minute",
            "30",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let service = Service(child);
    let funnel = wait_until("a non-empty funnel", || {
        get_json(port, "/v1/funnel").filter(|f| f["funnel"]["journeys"].as_i64() > Some(0))
    });
    let r = reached(&funnel);
    assert!(
        r[0] > 0 && r.windows(2).all(|w| w[0] >= w[1]),
        "reached never grows along the funnel: {r:?}"
    );
    let tps = wait_until("closed sessions", || {
        get_json(port, "/v1/touchpoints").filter(|t| {
            t["touchpoints"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["sessions"].as_u64() > Some(0))
        })
    });
    assert!(tps["touchpoints"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["name"] == "product_page" && x["visits"].as_u64() > Some(0)));
    let (status, metrics) = http(port, "GET", "/metrics", "").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("journeyd_touchpoint_visits_total{touchpoint=\"product_page\"}"));
    assert!(service.terminate(), "SIGTERM stops journeyd cleanly");
}

#[test]
fn run_ingests_over_http_and_answers_queries() {
    let port = free_port();
    let child = run_on(port)
        .env("JOURNEYD_RUNTIME__TICK_INTERVAL", "100ms")
        .env("JOURNEYD_RUNTIME__PUBLISH_INTERVAL", "100ms")
        // Short sessions, so the wall-clock watermark closes them within seconds.
        .env("JOURNEYD_SESSION__GAP", "2s")
        .env("JOURNEYD_SESSION__ALLOWED_LATENESS", "10s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let service = Service(child);
    wait_until("readiness", || get_json(port, "/readyz"));
    // Recent events: in live mode the watermark follows the wall clock, so older ones are late.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let t = now - 5_000;
    let lines = [
        format!(
            r#"{{"customer_id":"a","ts":{t},"source":"web","event":"page_view","attributes":{{"url":"/products/1"}}}}"#
        ),
        format!(
            r#"{{"customer_id":"a","ts":{},"source":"web","event":"order_completed"}}"#,
            t + 100
        ),
        format!(
            r#"{{"customer_id":"b","ts":{t},"source":"web","event":"page_view","attributes":{{"url":"/products/2"}}}}"#
        ),
        "not json".to_string(),
    ];
    let (status, body) = http(port, "POST", "/v1/events", &lines.join("\n")).unwrap();
    assert_eq!(status, 202, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (reply["accepted"].as_u64(), reply["rejected"].as_u64()),
        (Some(3), Some(1))
    );
    let tps = wait_until("both sessions closed", || {
        get_json(port, "/v1/touchpoints?from=now-3h").filter(|v| {
            v["touchpoints"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["name"] == "product_page" && t["sessions"] == 2)
        })
    });
    let product = tps["touchpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "product_page")
        .cloned()
        .unwrap();
    assert_eq!(
        (product["visits"].as_u64(), product["drop_offs"].as_u64()),
        (Some(2), Some(1))
    );
    let funnel = get_json(port, "/v1/funnel?from=now-3h").unwrap();
    assert_eq!(reached(&funnel), vec![2, 2, 1, 0, 0]);
    let (status, problem) = http(port, "GET", "/v1/funnel?from=someday", "").unwrap();
    assert_eq!(status, 400);
    assert!(problem.contains("\"parameter\":\"from\""), "{problem}");
    assert!(service.terminate());
}

/// The exit status and standard error of `child` (spawned with stderr piped), which must end
/// within 30 s; `what` names it if it does not (it is then killed).
/// Posts one `login` of `customer` dated now over HTTP; it must be accepted.
fn post_login_now(port: u16, customer: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let line =
        format!(r#"{{"customer_id":"{customer}","ts":{now},"source":"web","event":"login"}}"#);
    let (status, body) = http(port, "POST", "/v1/events", &line).unwrap();
    assert_eq!(status, 202, "{body}");
}

fn sigterm(child: &Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
}

fn exit_of(mut child: Child, what: &str) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not end within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status, err)
}

/// Two instances without Kafka on one state directory would each claim every task, and the
/// one fenced would lose its input: the second is refused at start, naming the directory.
/// Once the first has stopped, the directory is free again.
#[test]
fn a_second_instance_on_the_same_state_directory_is_refused() {
    let dir = std::env::temp_dir().join(format!("journeyd-lock-{}", std::process::id()));
    let url = format!("file://{}", dir.join("state").display());
    let start = |port: u16| {
        run_on(port)
            .env("JOURNEYD_STATE__URL", &url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first_port = free_port();
    let first = Service(start(first_port));
    wait_until("readiness", || get_json(first_port, "/readyz"));
    let (status, err) = exit_of(start(free_port()), "the second instance");
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("another journeyd without Kafka uses the state directory"),
        "{err}"
    );
    assert!(first.terminate(), "the first instance stops cleanly");
    let third_port = free_port();
    let third = Service(start(third_port));
    wait_until("readiness after the first stopped", || {
        get_json(third_port, "/readyz")
    });
    assert!(third.terminate());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A checkpoint at shutdown that cannot be written loses the HTTP input taken since the last
/// one: the exit status says so instead of reporting a clean stop, in the log's format (it
/// was a plain `journeyd: …` line after the JSON log).
#[test]
fn run_fails_its_exit_when_the_last_checkpoint_is_not_written() {
    for format in ["text", "json"] {
        let err = last_checkpoint_not_written(format);
        let said = the_error_in(&err, format);
        assert!(
            said.starts_with("the checkpoint at shutdown was not written for every task"),
            "{format}: {err}"
        );
    }
}

/// Runs journeyd with `log.format` = `format`, makes its state directory unwritable and stops
/// it; returns its standard error once it has exited with an error.
fn last_checkpoint_not_written(format: &str) -> String {
    let dir = std::env::temp_dir().join(format!("journeyd-lastcp-{format}-{}", std::process::id()));
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let port = free_port();
    let child = run_on(port)
        .env("JOURNEYD_STATE__URL", format!("file://{}", state.display()))
        .env("JOURNEYD_CHECKPOINT__INTERVAL", "1h")
        .env("JOURNEYD_LOG__FORMAT", format)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("readiness", || get_json(port, "/readyz"));
    post_login_now(port, "a");
    // The state directory becomes a file: every write under it fails.
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::write(&state, b"not a directory").unwrap();
    sigterm(&child);
    let (status, err) = exit_of(child, "journeyd after SIGTERM");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!status.success(), "exit {status}; {err}");
    err
}

/// The message of the one ERROR line of journeyd's own in `err`, a standard error written in `log.format` =
/// `format`. In JSON every line must parse (log shippers drop or mangle those that do not),
/// and the message is the `message` field of the ERROR object; in text the line reads
/// `<time> ERROR journeyd: <message>`.
fn the_error_in(err: &str, format: &str) -> String {
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    if format == "json" {
        let objects: Vec<Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}\n{err}")))
            .collect();
        // Other ERROR lines (each failed task checkpoint) come from the library crates.
        let errors: Vec<&Value> = objects
            .iter()
            .filter(|o| o["level"] == "ERROR" && o["target"] == "journeyd")
            .collect();
        assert_eq!(errors.len(), 1, "one ERROR line: {err}");
        errors[0]["fields"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("a message: {err}"))
            .to_string()
    } else {
        let errors: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.split_once(" ERROR journeyd: ").map(|(_, m)| m))
            .collect();
        assert_eq!(errors.len(), 1, "one ERROR line: {err}");
        assert!(
            !lines.iter().any(|l| l.starts_with("journeyd: ")),
            "said once, through the logger: {err}"
        );
        errors[0].to_string()
    }
}

/// A fatal error once the logger is set up (here a state directory that is a file, found at
/// start) is one line in `log.format`, the whole message in it, and the exit status is 1. With
/// `log.level = "off"` it is still said, in the same shape. Before the logger exists (an
/// invalid setting) the format is not known yet: the line is plain text.
#[test]
fn a_fatal_error_is_said_once_in_the_log_format() {
    let scratch = tempfile::Builder::new()
        .prefix("journeyd-fatal-")
        .tempdir()
        .unwrap();
    let file = scratch.path().join("state");
    std::fs::write(&file, b"not a directory").unwrap();
    let url = format!("file://{}", file.display());
    let listen = format!("127.0.0.1:{}", free_port());
    let run = |env: &[(&str, &str)]| {
        let mut all = vec![
            ("JOURNEYD_HTTP__LISTEN", listen.as_str()),
            ("JOURNEYD_STATE__URL", url.as_str()),
        ];
        all.extend_from_slice(env);
        let out = output(&["run"], &all);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{env:?}: {err}");
        err
    };
    let whole = format!("cannot create the state directory {}: ", file.display());
    for format in ["text", "json"] {
        let err = run(&[("JOURNEYD_LOG__FORMAT", format)]);
        let said = the_error_in(&err, format);
        assert!(
            said.starts_with(&whole) && said.len() > whole.len(),
            "{format}, with its cause: {err}"
        );
    }
    let err = run(&[
        ("JOURNEYD_LOG__FORMAT", "json"),
        ("JOURNEYD_LOG__LEVEL", "off"),
    ]);
    assert!(the_error_in(&err, "json").starts_with(&whole), "{err}");

    let out = output(
        &["run"],
        &[
            ("JOURNEYD_LOG__FORMAT", "json"),
            ("JOURNEYD_HTTP__LISTEN", "nowhere"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("journeyd: ") && err.contains("http.listen"),
        "{err}"
    );
}

/// A client that sent part of a request and went quiet held the graceful shutdown until the
/// deadline, which then exited 1 and lost the events accepted over HTTP. The open connections
/// now get `http.request_timeout` (3 s here) and are left behind; the final checkpoint holds
/// the event, and a restart has it.
#[test]
fn a_half_sent_request_does_not_hold_the_shutdown() {
    let dir = std::env::temp_dir().join(format!("journeyd-halfsent-{}", std::process::id()));
    let url = format!("file://{}", dir.join("state").display());
    let port = free_port();
    let start = || {
        run_on(port)
            .env("JOURNEYD_HTTP__REQUEST_TIMEOUT", "3s")
            .env("JOURNEYD_STATE__URL", &url)
            .env("JOURNEYD_CHECKPOINT__INTERVAL", "1h")
            .env("JOURNEYD_RUNTIME__SHUTDOWN_TIMEOUT", "20s")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let child = start();
    wait_until("readiness", || get_json(port, "/readyz"));
    post_login_now(port, "half");
    let mut quiet = TcpStream::connect(("127.0.0.1", port)).unwrap();
    quiet
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let signalled = Instant::now();
    sigterm(&child);
    let (status, err) = exit_of(child, "journeyd after SIGTERM");
    let took = signalled.elapsed();
    drop(quiet);
    assert!(status.success(), "exit {status} after {took:?}; {err}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    let child = start();
    wait_until("readiness after the restart", || get_json(port, "/readyz"));
    let restored = get_json(port, "/v1/customers/half");
    sigterm(&child);
    let _ = exit_of(child, "the restarted journeyd");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        restored.is_some(),
        "the event accepted before SIGTERM survived"
    );
}

/// Sends part of a request and goes quiet: the open connection holds the orderly shutdown for
/// `http.request_timeout` and a second.
fn half_sent_request(port: u16) -> TcpStream {
    let mut quiet = TcpStream::connect(("127.0.0.1", port)).unwrap();
    quiet
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    quiet
}

/// A second SIGTERM during the orderly shutdown was ignored until `runtime.shutdown_timeout`
/// (50 s by default, 300 s here). It now ends journeyd at once with status 1, in one line
/// saying where the shutdown was and what restarts from where. A half-sent request holds the
/// shutdown for `http.request_timeout` (60 s) meanwhile.
#[test]
fn a_second_sigterm_ends_the_shutdown_at_once() {
    let scratch = tempfile::Builder::new()
        .prefix("journeyd-second-")
        .tempdir()
        .unwrap();
    let port = free_port();
    let child = run_on(port)
        .env("JOURNEYD_HTTP__REQUEST_TIMEOUT", "60s")
        .env("JOURNEYD_RUNTIME__SHUTDOWN_TIMEOUT", "300s")
        .env(
            "JOURNEYD_STATE__URL",
            format!("file://{}", scratch.path().join("state").display()),
        )
        .env("JOURNEYD_CHECKPOINT__INTERVAL", "1h")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("readiness", || get_json(port, "/readyz"));
    post_login_now(port, "a");
    let _quiet = half_sent_request(port);
    sigterm(&child);
    // The shutdown has begun once the address is no longer accepted.
    wait_until("the listener to close", || {
        TcpStream::connect(("127.0.0.1", port)).err()
    });
    sigterm(&child);
    let (status, err) = exit_of(child, "journeyd after a second SIGTERM");
    assert_eq!(status.code(), Some(1), "{err}");
    let said: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("a second signal (SIGTERM)"))
        .collect();
    assert_eq!(said.len(), 1, "said once: {err}");
    assert!(
        said[0].contains("while the shutdown was answering the open HTTP requests")
            && said[0].contains("restart from their previous checkpoint"),
        "{err}"
    );
}

/// The deadline's message was printed twice, through the logger and again as a plain line,
/// which broke `log.format = "json"`. It is now one line, in the log's format.
#[test]
fn the_shutdown_deadline_says_it_once_in_the_log_format() {
    let port = free_port();
    let child = run_on(port)
        .env("JOURNEYD_HTTP__REQUEST_TIMEOUT", "60s")
        .env("JOURNEYD_RUNTIME__SHUTDOWN_TIMEOUT", "2s")
        .env("JOURNEYD_LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("readiness", || get_json(port, "/readyz"));
    // Holds the shutdown past its deadline.
    let _quiet = half_sent_request(port);
    sigterm(&child);
    let (status, err) = exit_of(child, "journeyd after SIGTERM");
    assert_eq!(status.code(), Some(1), "{err}");
    for line in err.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not JSON: {line}\n{err}"
        );
    }
    let said: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("did not finish within runtime.shutdown_timeout (2s)"))
        .collect();
    assert_eq!(said.len(), 1, "said once: {err}");
    assert!(
        said[0].contains("the state held in memory is lost"),
        "{err}"
    );
}

/// Standard error a closed pipe (the log shipper reading it went away): the first log line
/// after SIGTERM failed to be written, tracing reported that with `eprintln!`, which panicked
/// the signal thread before it requested the shutdown, and every later SIGTERM or Ctrl-C was
/// ignored: only SIGKILL ended journeyd. The shutdown is now requested before anything is
/// logged, and a line that cannot be written is dropped.
#[test]
fn sigterm_with_standard_error_a_closed_pipe_shuts_down_in_order() {
    let port = free_port();
    let mut child = run_on(port)
        .env("JOURNEYD_LOG__LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("readiness", || get_json(port, "/readyz"));
    drop(child.stderr.take());
    // A log line on the closed pipe before the signal, and more after it.
    let _ = http(port, "GET", "/v1/nothing-here", "");
    sigterm(&child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("journeyd ignored SIGTERM with standard error a closed pipe for 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

/// SIGTERM while `journeyd demo` backfilled its history found the default disposition (the
/// handlers were installed when serving began) and ended the process at once, status 143.
/// The backfill now stops and the shutdown is the orderly one, status 0.
#[test]
fn sigterm_during_the_demo_backfill_shuts_down_in_order() {
    let port = free_port();
    let child = journeyd()
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            // Minutes of generating, even in a release build.
            "--history",
            "365d",
            "--history-per-day",
            "50000",
        ])
        .env("JOURNEYD_LOG__LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The address is bound just before the backfill begins, and answered only after it ends.
    wait_until("the demo to bind its address", || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    sigterm(&child);
    let (status, err) = exit_of(child, "journeyd demo after SIGTERM");
    assert!(status.success(), "exit {status}; {err}");
    assert!(
        !err.contains("journeyd is serving"),
        "the signal came after the backfill: {err}"
    );
    assert!(err.contains("shutting down before serving"), "{err}");
}

/// SIGTERM while journeyd waited for brokers that do not answer (reading the partition counts
/// of the input topics, up to 10 s a topic) ended it at once with status 143. It now stops
/// waiting and exits with status 0: nothing was taken in.
#[test]
fn sigterm_while_waiting_for_kafka_shuts_down_in_order() {
    // A broker that accepts connections and never answers.
    let broker = TcpListener::bind("127.0.0.1:0").unwrap();
    broker.set_nonblocking(true).unwrap();
    let scratch = tempfile::Builder::new()
        .prefix("journeyd-kafka-wait-")
        .tempdir()
        .unwrap();
    let config = scratch.path().join("journeyd.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:{}\"\n[kafka]\nenabled = true\nbrokers = \"{}\"\n\
             [[kafka.topics]]\nname = \"web\"\n[[kafka.topics]]\nname = \"crm\"\n",
            free_port(),
            broker.local_addr().unwrap()
        ),
    )
    .unwrap();
    let child = journeyd()
        .args(["run", "--config", config.to_str().unwrap()])
        .env("JOURNEYD_LOG__LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _connection = wait_until("journeyd to reach the broker", || broker.accept().ok());
    sigterm(&child);
    let (status, err) = exit_of(child, "journeyd after SIGTERM");
    assert!(status.success(), "exit {status}; {err}");
    assert!(
        err.contains("shut down before serving, while reading from Kafka"),
        "{err}"
    );
}

fn output(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = journeyd();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// A decoder thread count no machine has is refused before any thread starts.
#[test]
fn replay_bounds_its_decoder_threads() {
    let out = output(
        &[
            "replay",
            "--decoders",
            "100000",
            "tests/golden/events.ndjson",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--decoders: at most 1024 threads, got 100000"),
        "{err}"
    );
}

/// Output that cannot be written (a full disk, a closed pipe) is an error, not a panic.
#[test]
fn replay_reports_an_unwritable_standard_output() {
    let full = std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = journeyd()
        .args(["replay", "tests/golden/events.ndjson"])
        .stdout(full)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot write to standard output"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn replay_prints_the_figures_of_a_file() {
    let replay = |tasks: &str| {
        let out = output(
            &["replay", "tests/golden/events.ndjson"],
            &[("JOURNEYD_RUNTIME__TASKS", tasks)],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        // Left out of the figures: said on standard error too, not only in the JSON.
        assert!(
            err.contains("1 of 28 lines rejected (bad_timestamp 1)"),
            "{err}"
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let v = replay("12");
    assert_eq!(v["events"]["read"], 28);
    assert_eq!(v["events"]["accepted"], 27);
    assert_eq!(v["events"]["rejected"]["bad_timestamp"], 1);
    assert_eq!(
        v["events"]["late"], 1,
        "cat's first event arrives behind the file's watermark"
    );
    assert_eq!(v["sessions"], 11);
    assert_eq!(reached(&v), vec![4, 4, 4, 3, 2]);
    // Moments of truth for the rules' goal phase: every journey of the file reached it.
    let m = &v["moments"][0];
    assert_eq!(
        (&m["goal"], &m["journeys"], &m["converted"]),
        (&json!("decision"), &json!(4), &json!(4))
    );
    assert!(
        m["moments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["touched"]["journeys"].as_i64() > Some(0)),
        "{m}"
    );
    // A file is one stream: its figures do not depend on how many tasks share its customers
    // (0: one per worker, replay's default).
    for tasks in ["0", "1", "5", "64"] {
        assert_eq!(replay(tasks), v, "runtime.tasks = {tasks}");
    }
    // The same file from stdin.
    let mut child = journeyd()
        .args(["replay", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let input = std::fs::read(repo().join("tests/golden/events.ndjson")).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    let w: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(w["funnel"], v["funnel"]);
}

/// `replay` says how many lines it rejected on standard error. With standard error a closed
/// pipe, `eprintln!` panicked after the whole replay and the figures were never printed.
#[test]
fn replay_with_standard_error_a_closed_pipe_still_prints_its_figures() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    let mut text = std::fs::read_to_string(repo().join("tests/golden/events.ndjson")).unwrap();
    text.push_str("not json\n");
    std::fs::write(&file, text).unwrap();
    let mut child = journeyd()
        .arg("replay")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", out.status);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["from"], json!("2026-11-20T08:00:00.000Z"));
}

/// Replay printed the range of its figures as epoch milliseconds while the API answers in
/// RFC 3339 (UTC, to the millisecond): both now read, and compare, the same, whether the
/// range comes from the data or from `--from/--to` given as epoch milliseconds.
#[test]
fn replay_prints_its_range_in_rfc3339_as_the_api() {
    let range = |args: &[&str]| {
        let out = output(
            &[&["replay"], args, &["tests/golden/events.ndjson"]].concat(),
            &[],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (v["from"].clone(), v["to"].clone())
    };
    // From the file's first event to the end of the hour of its last one.
    assert_eq!(
        range(&[]),
        (
            json!("2026-11-20T08:00:00.000Z"),
            json!("2026-11-25T11:00:00.000Z")
        )
    );
    assert_eq!(
        range(&["--from", "1795165200000", "--to", "2026-11-20T12:30:00Z"]),
        (
            json!("2026-11-20T09:00:00.000Z"),
            json!("2026-11-20T12:30:00.000Z")
        )
    );
}

#[test]
fn check_rules_reports_every_problem() {
    let ok = output(&["check-rules", "config/rules.toml"], &[]);
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok, 22 touchpoints in 5 phases"));
    let scratch = tempfile::Builder::new()
        .prefix("journeyd-rules-")
        .tempdir()
        .unwrap();
    let dir = scratch.path();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[touchpoint]]\nname = \"a\"\nphase = \"nope\"\n[[touchpoint]]\nname = \"a\"\nphase = \"awareness\"\nevent = \"x\"\n").unwrap();
    let out = output(&["check-rules", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 problems in rules"), "{err}");
    assert!(
        err.contains("touchpoint 1 `a`: unknown phase `nope`"),
        "{err}"
    );
    assert!(
        err.contains("touchpoint 2 `a`: duplicate name `a` (first used by touchpoint 1)"),
        "{err}"
    );
    let missing = output(&["check-rules", "no/such/file.toml"], &[]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr)
        .contains("cannot read rules file no/such/file.toml"));
}

fn generate_and_replay(format: &str, source: &str) -> Value {
    generate_and_replay_payload(format, source, "compact")
}

fn generate_and_replay_payload(format: &str, source: &str, payload: &str) -> Value {
    let gen = output(
        &[
            "generate",
            "--payload",
            payload,
            "--customers",
            "300",
            // In the past: records dated more than a day after the wall clock are rejected.
            "--start",
            "2026-09-01T00:00:00Z",
            "--format",
            format,
            "--only-source",
            source,
        ],
        &[],
    );
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let mut child = journeyd()
        .args(["replay", "--format", format, "--source", source, "-"])
        .env("JOURNEYD_RUNTIME__WORKERS", "2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&gen.stdout).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn generated_streams_replay_to_the_same_figures_in_every_format() {
    for (source, other) in [("web", "segment"), ("service", "cloudevents")] {
        let canonical = generate_and_replay("canonical", source);
        let encoded = generate_and_replay(other, source);
        assert_eq!(canonical["events"]["rejected"], serde_json::json!({}));
        assert_eq!(
            encoded["events"]["rejected"],
            serde_json::json!({}),
            "{other}"
        );
        assert!(
            canonical["events"]["accepted"].as_u64() > Some(50),
            "{source}"
        );
        assert_eq!(
            encoded["events"]["accepted"], canonical["events"]["accepted"],
            "{other}"
        );
        assert!(
            canonical["funnel"]["journeys"].as_i64() > Some(10),
            "{source}: {}",
            canonical["funnel"]
        );
        for key in ["funnel", "touchpoints", "transitions", "sessions"] {
            assert_eq!(encoded[key], canonical[key], "{other} {key}");
        }
    }
    let bad = output(&["generate", "--format", "avro"], &[]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown format `avro`"));
}

/// `--payload realistic` widens every record to about 1 KB of Segment-like noise; the rules
/// must see through it: the same seed gives the same figures as the compact payload, in every
/// format.
#[test]
fn realistic_payloads_replay_to_the_compact_figures_in_every_format() {
    for (format, source) in [
        ("canonical", "web"),
        ("segment", "web"),
        ("cloudevents", "service"),
    ] {
        let compact = generate_and_replay_payload(format, source, "compact");
        let wide = generate_and_replay_payload(format, source, "realistic");
        assert_eq!(
            wide["events"]["rejected"],
            serde_json::json!({}),
            "{format}"
        );
        assert!(
            compact["events"]["classified"].as_u64() > Some(50),
            "{format}"
        );
        for key in ["events", "funnel", "touchpoints", "transitions", "sessions"] {
            assert_eq!(wide[key], compact[key], "{format} {key}");
        }
    }
    let bad = output(&["generate", "--payload", "huge"], &[]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown payload `huge`"));
}

/// Journeys run weeks past `--start`: `generate` says how many of its events a replay today
/// would reject as dated in the future, and nothing when none is.
#[test]
fn generate_warns_of_events_dated_after_tomorrow() {
    let today = chrono::Utc::now().to_rfc3339();
    let out = output(&["generate", "--customers", "50", "--start", &today], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("events are dated more than a day after now"),
        "{err}"
    );
    let past = output(
        &[
            "generate",
            "--customers",
            "50",
            "--start",
            "2025-01-01T00:00:00Z",
        ],
        &[],
    );
    assert!(past.status.success());
    assert!(
        !String::from_utf8_lossy(&past.stderr).contains("dated more than a day"),
        "{}",
        String::from_utf8_lossy(&past.stderr)
    );
}

/// Producing without a reachable broker fails within seconds, naming the address, instead of
/// queueing for good.
#[test]
fn generate_to_an_unreachable_kafka_fails_naming_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let brokers = format!("127.0.0.1:{port}");
    let out = output(
        &[
            "generate",
            "--customers",
            "5",
            "--kafka-brokers",
            &brokers,
            "--topic",
            "web",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot reach Kafka at {brokers}")),
        "{err}"
    );
}
