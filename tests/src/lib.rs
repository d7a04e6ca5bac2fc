//! End-to-end and golden tests of journeyd live in `tests/`; this library is what they share:
//! starting the real `journeyd` binary, talking HTTP to it, and reading Kafka state.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

/// The repository root (tests run the binary from there, so `config/rules.toml` resolves).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `journeyd` binary: `JOURNEYD_BIN`, or the one cargo built next to this test
/// (`cargo test --workspace` builds it for journeyd's own tests).
pub fn journeyd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("JOURNEYD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    // target/<profile>/deps/<test> → target/<profile>/journeyd
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("journeyd"))
        .expect("the test binary sits in target/<profile>/deps");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p journeyd` first, or set JOURNEYD_BIN",
        bin.display()
    );
    bin
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("journeyd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("creating a temp dir");
    d
}

/// One HTTP/1.0 request: the status and body, or `None` if the service is not answering.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.get(9..12)?.parse().ok()?;
    let (_, body) = raw.split_once("\r\n\r\n")?;
    Some((status, body.to_string()))
}

/// GET, expecting 200 and JSON.
pub fn get_json(port: u16, path: &str) -> Option<Value> {
    match http(port, "GET", path, "")? {
        (200, body) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// The value of an unlabelled (or fully spelled-out) series in Prometheus text.
pub fn metric(port: u16, series: &str) -> Option<f64> {
    let (_, text) = http(port, "GET", "/metrics", "")?;
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .filter(|rest| rest.starts_with(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Polls `f` every 100 ms until it yields, failing the test after `limit`.
pub fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running `journeyd run`. Dropping it stops it with SIGTERM.
#[derive(Debug)]
pub struct Service {
    child: Option<Child>,
    pub port: u16,
}

impl Service {
    /// Starts `journeyd run --config <config>` from the repository root.
    pub fn start(config: &Path, port: u16) -> Service {
        let child = Command::new(journeyd_bin())
            .args(["run", "--config"])
            .arg(config)
            .current_dir(repo())
            .env("JOURNEYD_LOG__LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting journeyd");
        Service {
            child: Some(child),
            port,
        }
    }

    /// Waits for `/readyz`; fails at once if the process exits instead.
    pub fn wait_ready(&mut self) {
        let port = self.port;
        let child = self.child.as_mut().expect("running");
        wait_until("journeyd to answer", Duration::from_secs(30), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("journeyd exited before it was ready: {status}");
            }
            http(port, "GET", "/readyz", "").filter(|(s, _)| *s == 200)
        });
    }

    /// SIGKILL: no shutdown work of any kind.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited with success.
    pub fn terminate(mut self) -> bool {
        self.child.take().is_some_and(terminate)
    }
}

fn terminate(mut c: Child) -> bool {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(c.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = c.try_wait() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
    false
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            terminate(c);
        }
    }
}

/// Whether the group's committed offset of every partition equals the partition's end.
pub fn group_caught_up(brokers: &str, group: &str, topic: &str, partitions: i32) -> bool {
    let Ok(client) = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create::<BaseConsumer>()
    else {
        return false;
    };
    let timeout = Duration::from_secs(5);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let Ok(committed) = client.committed_offsets(tpl, timeout) else {
        return false;
    };
    (0..partitions).all(|p| {
        let Ok((_, high)) = client.fetch_watermarks(topic, p, timeout) else {
            return false;
        };
        let at = committed.find_partition(topic, p).map(|e| e.offset());
        high == 0 || at == Some(Offset::Offset(high))
    })
}
