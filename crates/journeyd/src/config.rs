//! Configuration of the `journeyd` binary: one TOML file, overridden by `JOURNEYD_*` variables.
//!
//! Loading takes three steps, so that every mistake is reported once, precisely:
//!
//! 1. the file is parsed into a [`toml::Table`]; a syntax error carries line and column;
//! 2. environment overrides `JOURNEYD_<SECTION>__<KEY>` are written into that table;
//! 3. the table is deserialised into raw structs; every key none of them reads is collected
//!    (`serde_ignored`) and all of them are reported together, each with its place and the
//!    nearest known key; then [`RawConfig::build`] checks every value at once, each problem
//!    naming its key path.
//!
//! Every default lives in [`Settings::defaults`] (engine defaults come from
//! [`EngineConfig::default`]); `config/journeyd.toml` spells each one out with a comment, and a
//! test keeps the two equal.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use journey_alert::{AlertConfig, Baseline, ConversionAlerts};
use journey_api::auth::Tokens;
use journey_api::segment::WriteKeys;
use journey_core::query::SegmentFilter;
use journey_core::time::{parse_duration, HumanDuration, Millis, DAY};
use journey_core::EngineConfig;
use journey_ingest::Format;
pub use journey_kafka::{KafkaSettings, TopicSettings};
use journey_runtime::Partitioner;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Prefix of environment variables that override the file.
pub const ENV_PREFIX: &str = "JOURNEYD_";

const LOG_FORMATS: [&str; 2] = ["text", "json"];
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

const DEAD_LETTER_SINKS: [&str; 3] = ["none", "file", "kafka"];

const ALERT_BASELINES: [&str; 2] = ["day_before", "trailing"];
const ALERT_CONVERSIONS: [&str; 3] = ["step", "from_start", "off"];

/// More workers than this is a typo, not a machine.
pub(crate) const MAX_WORKERS: usize = 1024;
/// More tasks than this would only add per-task aggregate memory.
const MAX_TASKS: u32 = 4096;

/// Everything `journeyd` is configured with, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `[session]`, `[journey]`, `[breakdown]` and `[retention]`.
    pub engine: EngineConfig,
    pub rules: RulesSettings,
    pub runtime: RuntimeSettings,
    pub http: HttpSettings,
    pub ingest: IngestSettings,
    pub kafka: KafkaSettings,
    pub state: StateSettings,
    pub cluster: ClusterSettings,
    pub checkpoint: CheckpointSettings,
    pub dead_letter: DeadLetterSettings,
    pub alerts: AlertSettings,
    pub log: LogSettings,
    /// Deprecated settings that were used, each with what to write instead; logged at start.
    pub deprecations: Vec<String>,
}

/// `[alerts]`: drop-off alerts evaluated by journeyd itself.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertSettings {
    pub enabled: bool,
    /// How often the rules are evaluated (wall clock).
    pub interval: Duration,
    pub eval: AlertConfig,
    /// Alertmanager's base URL; firing alerts are re-sent every `resend`.
    pub alertmanager_url: Option<String>,
    pub webhook_url: Option<String>,
    pub resend: Duration,
}

/// `[state]`: where task checkpoints live.
#[derive(Debug, Clone, PartialEq)]
pub struct StateSettings {
    /// `file:///dir` or `s3://bucket/prefix`; `None` turns checkpoints off: a restart then
    /// starts empty.
    pub url: Option<String>,
}

/// `[cluster]`: how the instances of one consumer group (Kafka with a `[state] url`) find
/// each other, so that every instance answers queries over all tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    /// Base URL peers reach this instance's API at; `None`: derived from `http.listen`
    /// ([`ClusterSettings::advertised`]).
    pub advertise_url: Option<String>,
    /// Name of `members/<id>.json`; `None`: derived from the advertised URL.
    pub instance_id: Option<String>,
    /// How often the membership entry is rewritten and the others are read.
    pub heartbeat: Duration,
    /// Entries not rewritten for longer are ignored (a dead or paused instance).
    pub member_expiry: Duration,
    /// Bound of each request to a peer; below `http.request_timeout`.
    pub peer_timeout: Duration,
}

impl ClusterSettings {
    /// The advertised base URL: `advertise_url`, else `http://<listen>`, with the host name
    /// (`HOSTNAME`, else `/etc/hostname`) when `listen` is an unspecified address (0.0.0.0).
    pub fn advertised(&self, listen: SocketAddr) -> String {
        if let Some(u) = &self.advertise_url {
            return u.trim_end_matches('/').to_string();
        }
        if !listen.ip().is_unspecified() {
            return format!("http://{listen}");
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "127.0.0.1".into());
        format!("http://{host}:{}", listen.port())
    }

    /// `instance_id`, else the advertised URL's host and port (`10.0.0.7-8080`).
    pub fn id(&self, advertised: &str) -> String {
        if let Some(id) = &self.instance_id {
            return id.clone();
        }
        let bare = advertised
            .split_once("://")
            .map_or(advertised, |(_, rest)| rest);
        bare.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    }
}

/// `[checkpoint]`: periodic snapshots of all state with the source positions they reflect.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointSettings {
    pub interval: Duration,
}

/// `[dead_letter]`: where rejected records are kept.
#[derive(Debug, Clone, PartialEq)]
pub enum DeadLetterSettings {
    /// Counted and logged at debug level only.
    None,
    /// Appended to an NDJSON file.
    File(PathBuf),
    /// Produced to a topic of the `[kafka]` cluster, the original bytes as the value.
    Kafka { topic: String },
}

/// `[rules]`: where the touchpoint rules live.
#[derive(Debug, Clone, PartialEq)]
pub struct RulesSettings {
    /// Relative paths are relative to the working directory.
    pub path: PathBuf,
    /// Reload the rules when the file changes.
    pub watch: bool,
}

/// `[runtime]`: worker threads owning the shards.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeSettings {
    /// Always at least 1: `workers = 0` in the file resolves to the number of available cores.
    pub workers: usize,
    /// `runtime.tasks` as configured, `None` when left out or 0: tasks when Kafka is off (HTTP,
    /// `replay`, `demo`); with Kafka the input topics' partition count decides. Figures
    /// never depend on it; checkpoints do. Read it through [`RuntimeSettings::serve_tasks`]
    /// or [`RuntimeSettings::replay_tasks`].
    pub tasks: Option<u32>,
    /// Batches queued per worker before ingest waits.
    pub channel_capacity: usize,
    /// How often workers publish partial aggregates to the API.
    pub publish_interval: Duration,
    /// How often the watermark follows the wall clock.
    pub tick_interval: Duration,
    /// Nice value of the worker threads, so queries win the CPU over ingest (0 to 19).
    pub worker_nice: i32,
    /// How long the orderly shutdown after SIGTERM or Ctrl-C (requests answered, records
    /// applied, final checkpoint, commit) may take before the process exits with status 1
    /// anyway, as Vector's `--graceful-shutdown-limit-secs` does: below the orchestrator's
    /// grace period, so the exit says why instead of a SIGKILL.
    pub shutdown_timeout: Duration,
}

impl RuntimeSettings {
    /// Tasks of a serving instance without Kafka (HTTP ingest, `demo`): as configured, else
    /// [`journey_runtime::DEFAULT_TASKS`]. Its checkpoints can only be restored under the
    /// same count, so the default does not follow the machine.
    pub fn serve_tasks(&self) -> u32 {
        self.tasks.unwrap_or(journey_runtime::DEFAULT_TASKS)
    }

    /// Tasks of `journeyd replay`: as configured, else one per worker. A replay keeps no
    /// checkpoint, and its figures do not depend on the count (docs/semantics.md §4), so it
    /// takes the count that costs least: each task keeps its own time buckets, and 12 tasks
    /// on 2 workers took about 8 % more CPU and 1.6 × the memory of 2 (docs/benchmarks.md,
    /// "Replay's task count").
    pub fn replay_tasks(&self) -> u32 {
        self.tasks.unwrap_or_else(|| {
            u32::try_from(self.workers)
                .unwrap_or(u32::MAX)
                .clamp(1, MAX_TASKS)
        })
    }
}

/// `[http]`: the API server and `POST /v1/events`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub max_batch_events: usize,
    pub request_timeout: Duration,
    /// `source` of events posted without one.
    pub default_source: String,
    /// Bearer tokens per kind of access; a kind without tokens is open.
    pub tokens: Tokens,
    /// Write keys of the Segment tracking API (`/v1/batch`, ...) and the source of each.
    pub segment_write_keys: WriteKeys,
}

/// `[ingest]`: limits shared by every source.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestSettings {
    /// A larger record goes to the dead-letter sink.
    pub max_record_bytes: usize,
    /// A record dated more than this after the wall clock when decoded is rejected as
    /// `timestamp_in_future` (milliseconds; SPEC §1, default 1 day).
    pub max_future: Millis,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSettings {
    /// A level or `tracing` filter directives such as `info,journeyd=debug`.
    pub level: String,
    /// JSON lines instead of text.
    pub json: bool,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML at all.
    #[error("{origin}:{line}:{column}: invalid TOML: {message}")]
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// TOML, but a value of the wrong type. `origin` is the file, or the environment variable
    /// that introduced the problem.
    #[error("{}: {message}", Located(origin, *location))]
    Schema {
        origin: String,
        location: Option<(usize, usize)>,
        message: String,
    },
    /// Every key that is no setting, each starting with where it was written (file line and
    /// column, or the environment variable) and ending with the nearest known key, if any.
    #[error("unknown settings:\n  {}", .0.join("\n  "))]
    Unknown(Vec<String>),
    /// Every problem found, each starting with its key path.
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

struct Located<'a>(&'a str, Option<(usize, usize)>);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some((line, column)) => write!(f, "{}:{line}:{column}", self.0),
            None => f.write_str(self.0),
        }
    }
}

impl Settings {
    /// Settings that name parts of the rules, checked against the rules loaded at start:
    /// every `moments.goal_phases` and `alerts.phases` entry must be a phase.
    pub fn check_rules(&self, rules: &journey_core::Rules) -> Result<(), String> {
        let phases = rules.phases();
        let unknown = |key: &'static str, list: &[String]| {
            list.iter()
                .enumerate()
                .filter(|(_, g)| !phases.contains(g))
                .map(|(i, g)| format!("{key}[{i}]: `{g}` is no phase of the rules"))
                .collect::<Vec<String>>()
        };
        let mut bad = unknown("moments.goal_phases", &self.engine.goal_phases);
        bad.extend(unknown("alerts.phases", &self.alerts.eval.phases));
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} (phases: {})",
                bad.join("; "),
                phases.join(", ")
            ))
        }
    }

    /// The built-in defaults, as written out in `config/journeyd.toml`.
    pub fn defaults() -> Settings {
        Settings {
            engine: EngineConfig::default(),
            rules: RulesSettings {
                path: PathBuf::from("config/rules.toml"),
                watch: true,
            },
            runtime: RuntimeSettings {
                workers: available_cores(),
                tasks: None,
                channel_capacity: 64,
                publish_interval: Duration::from_secs(1),
                tick_interval: Duration::from_secs(1),
                worker_nice: 10,
                shutdown_timeout: Duration::from_secs(50),
            },
            http: HttpSettings {
                listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
                max_body_bytes: 10 << 20,
                max_batch_events: 10_000,
                request_timeout: Duration::from_secs(30),
                default_source: "http".to_string(),
                tokens: Tokens::default(),
                segment_write_keys: WriteKeys::default(),
            },
            ingest: IngestSettings {
                max_record_bytes: 1 << 20,
                max_future: DAY,
            },
            kafka: KafkaSettings {
                enabled: false,
                brokers: "localhost:9092".to_string(),
                group_id: "journeyd".to_string(),
                partitioner: Partitioner::Murmur2,
                idle_timeout: Duration::from_secs(10),
                max_task_idle: journey_runtime::DEFAULT_MAX_TASK_IDLE,
                max_buffered_records: journey_kafka::DEFAULT_MAX_BUFFERED_RECORDS,
                stall_timeout: journey_kafka::DEFAULT_STALL_TIMEOUT,
                properties: BTreeMap::new(),
                topics: Vec::new(),
                repartition: false,
                repartition_replication_factor: -1,
            },
            state: StateSettings { url: None },
            cluster: ClusterSettings {
                advertise_url: None,
                instance_id: None,
                heartbeat: Duration::from_secs(2),
                member_expiry: Duration::from_secs(10),
                peer_timeout: Duration::from_secs(2),
            },
            checkpoint: CheckpointSettings {
                interval: Duration::from_secs(10),
            },
            dead_letter: DeadLetterSettings::None,
            alerts: AlertSettings {
                enabled: false,
                interval: Duration::from_secs(15),
                eval: AlertConfig::default(),
                alertmanager_url: None,
                webhook_url: None,
                resend: Duration::from_secs(60),
            },
            log: LogSettings {
                level: "info".to_string(),
                json: false,
            },
            deprecations: Vec::new(),
        }
    }

    /// Reads the file at `path` (built-in defaults when `None`) and applies `env` overrides.
    ///
    /// `env` is usually the process environment; `std::env::vars()` panics on a variable that
    /// is not Unicode, so pass
    /// `std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
                load_text(&text, &path.display().to_string(), env)
            }
            None => Settings::from_toml_str("", env),
        }
    }

    /// Like [`Settings::load`] with the file's text; errors name the origin `<string>`.
    pub fn from_toml_str(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        load_text(text, "<string>", env)
    }
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn load_text(
    text: &str,
    origin: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, ConfigError> {
    let file: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let (line, column) = e.span().map_or((1, 1), |s| line_column(text, s.start));
        ConfigError::Syntax {
            origin: origin.to_string(),
            line,
            column,
            message: one_line(e.message()),
        }
    })?;
    let overrides = env_overrides(env).map_err(ConfigError::Invalid)?;
    let mut table = file.clone();
    let problems: Vec<String> = overrides
        .iter()
        .filter_map(|o| o.apply(&mut table).err())
        .collect();
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    let mut ignored = Vec::new();
    let raw: RawConfig = serde_ignored::deserialize(toml::Value::Table(table.clone()), |path| {
        ignored.push(segments(&path));
    })
    .map_err(|e| locate(e, text, origin, &file, &overrides))?;
    if !ignored.is_empty() {
        return Err(ConfigError::Unknown(unknown_keys(
            &ignored, text, origin, &file, &overrides,
        )));
    }
    raw.build().map_err(ConfigError::Invalid)
}

fn deserialize(table: &toml::Table) -> Result<RawConfig, toml::de::Error> {
    toml::Value::Table(table.clone()).try_into()
}

/// Finds where a deserialisation error of the merged table comes from: the file (with line
/// and column, which only the file's text has) or one environment variable.
fn locate(
    err: toml::de::Error,
    text: &str,
    origin: &str,
    file: &toml::Table,
    overrides: &[Override],
) -> ConfigError {
    let message = one_line(err.message());
    let schema = |origin: String, location| ConfigError::Schema {
        origin,
        location,
        message: message.clone(),
    };
    if let Err(e) = toml::from_str::<RawConfig>(text) {
        if one_line(e.message()) == message {
            return schema(
                origin.to_string(),
                e.span().map(|s| line_column(text, s.start)),
            );
        }
    }
    for o in overrides {
        let mut alone = file.clone();
        if o.apply(&mut alone).is_ok() {
            if let Err(e) = deserialize(&alone) {
                if one_line(e.message()) == message {
                    return schema(format!("environment variable {}", o.var), None);
                }
            }
        }
    }
    schema(origin.to_string(), None)
}

// ---- unknown keys -------------------------------------------------------------------------

/// One step of a key path: a key of a table, or an entry of an array.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

fn segments(path: &serde_ignored::Path<'_>) -> Vec<Segment> {
    use serde_ignored::Path;
    let mut out = match path {
        Path::Root => return Vec::new(),
        Path::Seq { parent, .. }
        | Path::Map { parent, .. }
        | Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => segments(parent),
    };
    match path {
        Path::Seq { index, .. } => out.push(Segment::Index(*index)),
        Path::Map { key, .. } => out.push(Segment::Key(key.clone())),
        _ => {}
    }
    out
}

/// `kafka.topics[0].name`, as the validation messages write key paths. A key that is not a
/// TOML bare key (a dot in it, say) is quoted as in TOML, so `"session.gap"` written as one
/// quoted key does not read as the setting `session.gap`.
fn dotted(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if bare {
                    out.push_str(k);
                } else {
                    out.push_str(&toml::Value::String(k.clone()).to_string());
                }
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// One line per unknown key and place it was written, the file's first (by position), then
/// the environment's (by variable name).
fn unknown_keys(
    ignored: &[Vec<Segment>],
    text: &str,
    origin: &str,
    file: &toml::Table,
    overrides: &[Override],
) -> Vec<String> {
    // Spans are only kept by toml_edit's immutable document; the text parsed above, so this
    // cannot fail, and without it the keys are still named, only without line and column.
    let doc = toml_edit::ImDocument::parse(text).ok();
    let mut in_file = Vec::new();
    let mut in_env = Vec::new();
    for path in ignored {
        let what = describe(path);
        let keys: Vec<&str> = path
            .iter()
            .map_while(|s| match s {
                Segment::Key(k) => Some(k.as_str()),
                Segment::Index(_) => None,
            })
            .collect();
        // The variables that wrote it: one whose value holds the key, or one that made the
        // key on its way to a setting below it (`JOURNEYD_SESION__GAP` makes `sesion`).
        let mut from_env = false;
        for o in overrides {
            let shared = o.path.iter().zip(&keys).all(|(a, b)| a == b);
            if shared && (o.path.len() <= keys.len() || keys.len() == path.len()) {
                in_env.push((o.var.clone(), what.clone()));
                from_env = true;
            }
        }
        // The file too may have it, and must then be fixed as well.
        if !from_env || in_table(file, path) {
            let place = doc
                .as_ref()
                .and_then(|d| key_offset(d.as_table(), path))
                .map(|offset| line_column(text, offset));
            in_file.push((place, what));
        }
    }
    in_file.sort();
    in_env.sort();
    in_file
        .into_iter()
        .map(|(place, what)| format!("{}: {what}", Located(origin, place)))
        .chain(
            in_env
                .into_iter()
                .map(|(var, what)| format!("environment variable {var}: {what}")),
        )
        .collect()
}

/// `unknown key `session.gapp`, did you mean `session.gap`?`, or the keys that are known
/// there when none is close.
fn describe(path: &[Segment]) -> String {
    let kind = if path.len() == 1 { "section" } else { "key" };
    let mut what = format!("unknown {kind} `{}`", dotted(path));
    let Some((Segment::Key(name), parent)) = path.split_last() else {
        return what;
    };
    let known = known_keys(parent);
    if let Some(near) = nearest(name, known) {
        let mut better = parent.to_vec();
        better.push(Segment::Key(near.to_string()));
        what.push_str(&format!(", did you mean `{}`?", dotted(&better)));
    } else if let Some(elsewhere) = misplaced(name, parent) {
        what.push_str(&format!(", did you mean `{elsewhere}`?"));
    } else if !known.is_empty() {
        let list: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
        what.push_str(&format!(" (expected one of {})", list.join(", ")));
    }
    what
}

/// The known key closest to `name`, when a typo away: at most one edit (a transposition
/// counts as one) per three characters, as rustc's own suggestions allow.
fn nearest(name: &str, known: &[&'static str]) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    let limit = (name.chars().count() / 3).max(1);
    known
        .iter()
        .map(|k| (strsim::osa_distance(&name, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// The same name as a key of another section, or as a section, for a key put in the wrong
/// place (`[session] window`, which is `journey.window`).
fn misplaced(name: &str, parent: &[Segment]) -> Option<String> {
    let sections = known_keys(&[]);
    if !parent.is_empty() && sections.contains(&name) {
        return Some(name.to_string());
    }
    sections.iter().find_map(|section| {
        let here = Segment::Key((*section).to_string());
        (parent.first() != Some(&here) && known_keys(std::slice::from_ref(&here)).contains(&name))
            .then(|| format!("{section}.{name}"))
    })
}

/// The keys the raw struct at `path` accepts, as serde's derive lists them; empty when `path`
/// leads to no struct (a map such as `kafka.properties` accepts every key).
fn known_keys(path: &[Segment]) -> &'static [&'static str] {
    let found = std::cell::Cell::new(None);
    // The probe always ends in an error: it only walks down to the struct and notes its keys.
    let _ = RawConfig::deserialize(KeyProbe {
        path,
        found: &found,
    });
    found.get().unwrap_or(&[])
}

/// A deserializer that leads a raw struct's derived `Deserialize` down `path` and records the
/// field names the struct at its end hands to `deserialize_struct`.
struct KeyProbe<'a> {
    path: &'a [Segment],
    found: &'a std::cell::Cell<Option<&'static [&'static str]>>,
}

impl<'de> Deserializer<'de> for KeyProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.path.split_first() {
            None => {
                self.found.set(Some(fields));
                Err(de::Error::custom("found"))
            }
            Some((Segment::Key(key), rest)) => visitor.visit_map(KeyProbeMap {
                key: Some(key),
                rest,
                found: self.found,
            }),
            Some((Segment::Index(_), _)) => Err(de::Error::custom("not an array")),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.path.split_first() {
            Some((Segment::Index(_), rest)) => visitor.visit_seq(KeyProbeSeq {
                next: Some(KeyProbe {
                    path: rest,
                    found: self.found,
                }),
            }),
            _ => Err(de::Error::custom("not an array")),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct tuple tuple_struct map enum identifier ignored_any
    }
}

/// A table holding only the probe's next key.
struct KeyProbeMap<'a> {
    key: Option<&'a str>,
    rest: &'a [Segment],
    found: &'a std::cell::Cell<Option<&'static [&'static str]>>,
}

impl<'de> de::MapAccess<'de> for KeyProbeMap<'_> {
    type Error = de::value::Error;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        self.key
            .take()
            .map(|k| seed.deserialize(de::value::StrDeserializer::new(k)))
            .transpose()
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        seed.deserialize(KeyProbe {
            path: self.rest,
            found: self.found,
        })
    }
}

/// An array holding only the probe's next element.
struct KeyProbeSeq<'a> {
    next: Option<KeyProbe<'a>>,
}

impl<'de> de::SeqAccess<'de> for KeyProbeSeq<'_> {
    type Error = de::value::Error;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.next.take().map(|p| seed.deserialize(p)).transpose()
    }
}

/// Whether the table holds a value at `path`.
fn in_table(table: &toml::Table, path: &[Segment]) -> bool {
    let Some((Segment::Key(first), rest)) = path.split_first() else {
        return false;
    };
    let mut value = match table.get(first) {
        Some(v) => v,
        None => return false,
    };
    for segment in rest {
        let next = match (segment, value) {
            (Segment::Key(k), toml::Value::Table(t)) => t.get(k),
            (Segment::Index(i), toml::Value::Array(a)) => a.get(*i),
            _ => None,
        };
        match next {
            Some(v) => value = v,
            None => return false,
        }
    }
    true
}

/// Byte offset of the last key of `path` in the file.
fn key_offset(root: &toml_edit::Table, path: &[Segment]) -> Option<usize> {
    use toml_edit::{Item, TableLike, Value};
    /// Where the walk stands: tables of an array of tables and array entries have no `Item`.
    #[derive(Clone, Copy)]
    enum Node<'a> {
        Table(&'a toml_edit::Table),
        Item(&'a Item),
        Value(&'a Value),
    }
    let mut node = Node::Table(root);
    let mut offset = None;
    for segment in path {
        node = match (segment, node) {
            (Segment::Key(k), node) => {
                let table: &dyn TableLike = match node {
                    Node::Table(t) => t,
                    Node::Item(i) => i.as_table_like()?,
                    Node::Value(v) => v.as_inline_table()?,
                };
                let (key, item) = table.get_key_value(k)?;
                offset = key.span().map(|s| s.start);
                Node::Item(item)
            }
            (Segment::Index(i), Node::Item(Item::ArrayOfTables(a))) => Node::Table(a.get(*i)?),
            (Segment::Index(i), Node::Item(Item::Value(Value::Array(a))))
            | (Segment::Index(i), Node::Value(Value::Array(a))) => Node::Value(a.get(*i)?),
            _ => return None,
        };
    }
    offset
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

// ---- environment overrides ----------------------------------------------------------------

/// One `JOURNEYD_<SECTION>__<KEY>` variable, ready to be written into the table.
#[derive(Debug)]
struct Override {
    var: String,
    path: Vec<String>,
    value: toml::Value,
}

/// Picks the overrides out of `env`, sorted by variable name so the result never depends on
/// the environment's order. Variables without a `__` (such as `JOURNEYD_CONFIG`, left to the
/// command line) are not overrides.
fn env_overrides(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Override>, Vec<String>> {
    let mut overrides = Vec::new();
    let mut problems = Vec::new();
    for (var, value) in env {
        let Some(rest) = var
            .get(..ENV_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
            .map(|_| &var[ENV_PREFIX.len()..])
        else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            problems.push(format!(
                "{var}: not a setting such as JOURNEYD_SESSION__GAP (sections and keys joined by `__`)"
            ));
            continue;
        }
        // librdkafka properties are strings: keep them verbatim, even when they look numeric.
        let value = if path.len() > 2 && path[0] == "kafka" && path[1] == "properties" {
            toml::Value::String(value)
        } else {
            env_value(&value)
        };
        overrides.push(Override { var, path, value });
    }
    overrides.sort_by(|a, b| a.var.cmp(&b.var));
    if problems.is_empty() {
        Ok(overrides)
    } else {
        Err(problems)
    }
}

/// An integer, float or boolean written exactly as TOML prints it, or a TOML array, becomes
/// that value; anything else stays a string. Requiring the canonical spelling keeps strings
/// such as `1_000` or `1e3` (a group id, a password) from being silently rewritten.
fn env_value(text: &str) -> toml::Value {
    match toml::Value::deserialize(toml::de::ValueDeserializer::new(text)) {
        Ok(v @ toml::Value::Array(_)) => v,
        Ok(v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)))
            if v.to_string() == text =>
        {
            v
        }
        _ => toml::Value::String(text.to_string()),
    }
}

impl Override {
    fn apply(&self, table: &mut toml::Table) -> Result<(), String> {
        let (last, parents) = self.path.split_last().expect("at least two segments");
        let mut current = table;
        for (i, segment) in parents.iter().enumerate() {
            let entry = current
                .entry(segment.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            current = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(format!(
                        "{}: {} is not a table",
                        self.var,
                        self.path[..=i].join(".")
                    ))
                }
            };
        }
        current.insert(last.clone(), self.value.clone());
        Ok(())
    }
}

// ---- raw structs: what the file may say ---------------------------------------------------

/// A string setting. Numbers and booleans are accepted and kept as written, because an
/// environment override such as `JOURNEYD_HTTP__LISTEN=8080` arrives as a number; validation
/// then says what is wrong with the text.
#[derive(Debug, Clone)]
#[cfg_attr(test, derive(serde::Serialize))]
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text, E> {
                Ok(Text(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                // As TOML prints it (`1.0`, not Rust's `1`), so env_value's text survives.
                Ok(Text(toml::Value::Float(v).to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(TextVisitor)
    }
}

/// The file as written: every key optional (absent means the default). Keys that are no field
/// are left to `serde_ignored`, which collects them all for one error (see `unknown_keys`).
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default)]
struct RawConfig {
    session: RawSession,
    journey: RawJourney,
    breakdown: RawBreakdown,
    moments: RawMoments,
    retention: RawRetention,
    rules: RawRules,
    runtime: RawRuntime,
    http: RawHttp,
    ingest: RawIngest,
    kafka: RawKafka,
    dedup: RawDedup,
    state: RawState,
    cluster: RawCluster,
    checkpoint: RawCheckpoint,
    dead_letter: RawDeadLetter,
    alerts: RawAlerts,
    log: RawLog,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default)]
struct RawAlerts {
    enabled: Option<bool>,
    interval: Option<Text>,
    window: Option<Text>,
    baseline: Option<Text>,
    trailing: Option<Text>,
    threshold_relative: Option<f64>,
    threshold_absolute: Option<f64>,
    min_sessions: Option<u64>,
    #[serde(rename = "for")]
    for_: Option<Text>,
    keep_resolved: Option<Text>,
    touchpoints: Option<Vec<String>>,
    conversion: Option<Text>,
    conversion_relative: Option<f64>,
    conversion_absolute: Option<f64>,
    phases: Option<Vec<String>>,
    segment: Option<String>,
    alertmanager_url: Option<Text>,
    webhook_url: Option<Text>,
    resend: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default)]
struct RawDedup {
    horizon: Option<Text>,
    max_ids: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default)]
struct RawState {
    url: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default)]
struct RawCluster {
    advertise_url: Option<Text>,
    instance_id: Option<Text>,
    heartbeat: Option<Text>,
    member_expiry: Option<Text>,
    peer_timeout: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default)]
struct RawCheckpoint {
    /// Deprecated alias of `state.url = "file://<dir>"`, so not in the shipped file.
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    dir: Option<Text>,
    interval: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default)]
struct RawDeadLetter {
    sink: Option<Text>,
    path: Option<Text>,
    topic: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default)]
struct RawSession {
    gap: Option<Text>,
    max_duration: Option<Text>,
    allowed_lateness: Option<Text>,
    max_events: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default)]
struct RawJourney {
    window: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default)]
struct RawBreakdown {
    attributes: Option<Vec<String>>,
    max_values: Option<usize>,
    segment_dimensions: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default)]
struct RawMoments {
    goal_phases: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default)]
struct RawRetention {
    fine: Option<Text>,
    total: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default)]
struct RawRules {
    path: Option<Text>,
    watch: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default)]
struct RawRuntime {
    workers: Option<usize>,
    tasks: Option<u32>,
    channel_capacity: Option<usize>,
    publish_interval: Option<Text>,
    tick_interval: Option<Text>,
    worker_nice: Option<i32>,
    shutdown_timeout: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default)]
struct RawHttp {
    listen: Option<Text>,
    max_body_bytes: Option<usize>,
    max_batch_events: Option<usize>,
    request_timeout: Option<Text>,
    default_source: Option<Text>,
    read_tokens: Option<Vec<Text>>,
    ingest_tokens: Option<Vec<Text>>,
    admin_tokens: Option<Vec<Text>>,
    segment_write_keys: Option<Vec<RawWriteKey>>,
}

/// One entry of `http.segment_write_keys`.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct RawWriteKey {
    key: Text,
    source: Text,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default)]
struct RawIngest {
    max_record_bytes: Option<usize>,
    max_future: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default)]
struct RawKafka {
    enabled: Option<bool>,
    brokers: Option<Text>,
    group_id: Option<Text>,
    partitioner: Option<Text>,
    idle_timeout: Option<Text>,
    max_task_idle: Option<Text>,
    max_buffered_records: Option<usize>,
    stall_timeout: Option<Text>,
    repartition: Option<bool>,
    repartition_replication_factor: Option<i64>,
    properties: BTreeMap<String, Text>,
    topics: Vec<RawTopic>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default)]
struct RawTopic {
    name: Option<Text>,
    source: Option<Text>,
    format: Option<Text>,
    mapping: Option<BTreeMap<String, Text>>,
    repartition: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default)]
struct RawLog {
    level: Option<Text>,
    format: Option<Text>,
}

// ---- validation ---------------------------------------------------------------------------

/// Problems found so far, and the keys whose value could not even be read (checks that
/// involve them are skipped: they would only judge the stand-in default).
#[derive(Debug, Default)]
struct Problems {
    errs: Vec<String>,
    unreadable: Vec<&'static str>,
}

impl Problems {
    fn push(&mut self, message: String) {
        self.errs.push(message);
    }

    fn duration(&mut self, key: &'static str, raw: Option<Text>, default: Millis) -> Millis {
        match raw.map(|t| parse_duration(&t.0)) {
            None => default,
            Some(Ok(ms)) => ms,
            Some(Err(e)) => {
                self.push(format!("{key}: {e}"));
                self.unreadable.push(key);
                default
            }
        }
    }

    /// A duration that must be positive, as a [`Duration`].
    fn interval(&mut self, key: &'static str, raw: Option<Text>, default: Duration) -> Duration {
        let default_ms = Millis::try_from(default.as_millis()).unwrap_or(Millis::MAX);
        let ms = self.duration(key, raw, default_ms);
        if ms <= 0 {
            self.push(format!(
                "{key}: must be positive, got {}",
                HumanDuration(ms)
            ));
            return default;
        }
        Duration::from_millis(ms.unsigned_abs())
    }

    fn at_least_one(&mut self, key: &str, raw: Option<usize>, default: usize) -> usize {
        match raw {
            None => default,
            Some(0) => {
                self.push(format!("{key}: must be at least 1, got 0"));
                default
            }
            Some(n) => n,
        }
    }

    fn not_empty(&mut self, key: &str, raw: Option<Text>, default: &str) -> String {
        match raw {
            None => default.to_string(),
            Some(t) if t.0.trim().is_empty() => {
                self.push(format!("{key}: must not be empty"));
                default.to_string()
            }
            Some(t) => t.0,
        }
    }

    /// `value` must be one of `allowed`.
    fn one_of(&mut self, key: &str, what: &str, value: &str, allowed: &[&str]) -> bool {
        let ok = allowed.contains(&value);
        if !ok {
            self.push(format!(
                "{key}: unknown {what} `{value}` (expected one of: {})",
                allowed.join(", ")
            ));
        }
        ok
    }
}

impl RawConfig {
    /// Every value checked; all problems at once, section by section.
    fn build(self) -> Result<Settings, Vec<String>> {
        let d = Settings::defaults();
        let mut p = Problems::default();

        let engine = EngineConfig {
            session_gap: p.duration("session.gap", self.session.gap, d.engine.session_gap),
            session_max_duration: p.duration(
                "session.max_duration",
                self.session.max_duration,
                d.engine.session_max_duration,
            ),
            allowed_lateness: p.duration(
                "session.allowed_lateness",
                self.session.allowed_lateness,
                d.engine.allowed_lateness,
            ),
            session_max_events: self
                .session
                .max_events
                .unwrap_or(d.engine.session_max_events),
            journey_window: p.duration(
                "journey.window",
                self.journey.window,
                d.engine.journey_window,
            ),
            breakdowns: self.breakdown.attributes.unwrap_or(d.engine.breakdowns),
            breakdown_max_values: self
                .breakdown
                .max_values
                .unwrap_or(d.engine.breakdown_max_values),
            segment_dimensions: self
                .breakdown
                .segment_dimensions
                .unwrap_or(d.engine.segment_dimensions),
            goal_phases: self.moments.goal_phases.unwrap_or(d.engine.goal_phases),
            retention_fine: p.duration(
                "retention.fine",
                self.retention.fine,
                d.engine.retention_fine,
            ),
            retention_total: p.duration(
                "retention.total",
                self.retention.total,
                d.engine.retention_total,
            ),
            dedup_horizon: p.duration("dedup.horizon", self.dedup.horizon, d.engine.dedup_horizon),
            dedup_max_ids: self.dedup.max_ids.unwrap_or(d.engine.dedup_max_ids),
        };
        if let Err(errs) = engine.validate() {
            let judged = errs
                .into_iter()
                .filter(|e| !p.unreadable.iter().any(|key| e.contains(key)));
            p.errs.extend(judged);
        }

        let rules = RulesSettings {
            path: PathBuf::from(p.not_empty(
                "rules.path",
                self.rules.path,
                &d.rules.path.to_string_lossy(),
            )),
            watch: self.rules.watch.unwrap_or(d.rules.watch),
        };

        let r = self.runtime;
        let workers = match r.workers {
            None | Some(0) => available_cores(),
            Some(n) if n > MAX_WORKERS => {
                p.push(format!(
                    "runtime.workers: at most {MAX_WORKERS} allowed, got {n} (0 = one per core)"
                ));
                d.runtime.workers
            }
            Some(n) => n,
        };
        let tasks = match r.tasks {
            None | Some(0) => d.runtime.tasks,
            Some(n) if n <= MAX_TASKS => Some(n),
            Some(n) => {
                p.push(format!(
                    "runtime.tasks: at most {MAX_TASKS} allowed, got {n} (0 = chosen by the command)"
                ));
                d.runtime.tasks
            }
        };
        let runtime = RuntimeSettings {
            workers,
            tasks,
            channel_capacity: p.at_least_one(
                "runtime.channel_capacity",
                r.channel_capacity,
                d.runtime.channel_capacity,
            ),
            publish_interval: p.interval(
                "runtime.publish_interval",
                r.publish_interval,
                d.runtime.publish_interval,
            ),
            tick_interval: p.interval(
                "runtime.tick_interval",
                r.tick_interval,
                d.runtime.tick_interval,
            ),
            worker_nice: match r.worker_nice {
                None => d.runtime.worker_nice,
                Some(n) if (0..=19).contains(&n) => n,
                Some(n) => {
                    p.push(format!("runtime.worker_nice: must be 0 to 19, got {n}"));
                    d.runtime.worker_nice
                }
            },
            shutdown_timeout: p.interval(
                "runtime.shutdown_timeout",
                r.shutdown_timeout,
                d.runtime.shutdown_timeout,
            ),
        };

        let h = self.http;
        let listen = match h.listen {
            None => d.http.listen,
            Some(t) => t.0.trim().parse().unwrap_or_else(|_| {
                p.push(format!(
                    "http.listen: `{}` is not an address such as 127.0.0.1:8080",
                    t.0
                ));
                d.http.listen
            }),
        };
        let http = HttpSettings {
            listen,
            max_body_bytes: p.at_least_one(
                "http.max_body_bytes",
                h.max_body_bytes,
                d.http.max_body_bytes,
            ),
            max_batch_events: p.at_least_one(
                "http.max_batch_events",
                h.max_batch_events,
                d.http.max_batch_events,
            ),
            request_timeout: p.interval(
                "http.request_timeout",
                h.request_timeout,
                d.http.request_timeout,
            ),
            default_source: p.not_empty(
                "http.default_source",
                h.default_source,
                &d.http.default_source,
            ),
            tokens: Tokens {
                read: tokens("http.read_tokens", h.read_tokens, &mut p),
                ingest: tokens("http.ingest_tokens", h.ingest_tokens, &mut p),
                admin: tokens("http.admin_tokens", h.admin_tokens, &mut p),
            },
            segment_write_keys: write_keys(h.segment_write_keys, &mut p),
        };

        let ingest = IngestSettings {
            max_record_bytes: p.at_least_one(
                "ingest.max_record_bytes",
                self.ingest.max_record_bytes,
                d.ingest.max_record_bytes,
            ),
            max_future: p.duration(
                "ingest.max_future",
                self.ingest.max_future,
                d.ingest.max_future,
            ),
        };
        if ingest.max_future <= 0 {
            p.push(format!(
                "ingest.max_future: must be positive, got {}",
                HumanDuration(ingest.max_future)
            ));
        }

        let kafka = build_kafka(self.kafka, d.kafka, &mut p);

        let c = self.checkpoint;
        let mut deprecations = Vec::new();
        let url = self.state.url.map(|t| t.0).filter(|u| !u.trim().is_empty());
        let dir = c.dir.map(|t| t.0).filter(|d| !d.trim().is_empty());
        let url = match (url, dir) {
            (Some(_), Some(_)) => {
                p.push(
                    "checkpoint.dir: deprecated, and state.url is set too; remove checkpoint.dir"
                        .into(),
                );
                None
            }
            (Some(url), None) => {
                if !(url.starts_with("file:///") || url.starts_with("s3://")) {
                    p.push(format!(
                        "state.url: `{url}` is not file:///<absolute dir> or s3://<bucket>/<prefix>"
                    ));
                } else if url == "s3://" || url.starts_with("s3:///") {
                    p.push(format!("state.url: `{url}` names no bucket"));
                }
                Some(url)
            }
            (None, Some(dir)) => {
                let url = format!("file://{dir}");
                deprecations.push(format!(
                    "checkpoint.dir is deprecated: write [state] url = \"{url}\" instead"
                ));
                Some(url)
            }
            (None, None) => None,
        };
        let state = StateSettings { url };
        let cluster = build_cluster(self.cluster, d.cluster, &http, &mut p);
        let checkpoint = CheckpointSettings {
            interval: p.interval("checkpoint.interval", c.interval, d.checkpoint.interval),
        };

        let dl = self.dead_letter;
        let sink = dl.sink.map_or_else(|| "none".to_string(), |t| t.0);
        let dead_letter = if !p.one_of("dead_letter.sink", "sink", &sink, &DEAD_LETTER_SINKS) {
            d.dead_letter
        } else if sink == "file" {
            let path = p.not_empty("dead_letter.path", dl.path, "dead-letters.ndjson");
            DeadLetterSettings::File(PathBuf::from(path))
        } else if sink == "kafka" {
            let topic = p.not_empty("dead_letter.topic", dl.topic, "journeyd-dead-letters");
            if topic == kafka.repartition_topic() {
                p.push(format!(
                    "dead_letter.topic: `{topic}` is journeyd's internal repartition topic"
                ));
            } else if kafka.topics.iter().any(|t| t.name == topic) {
                p.push(format!(
                    "dead_letter.topic: `{topic}` is also consumed as kafka.topics; dead letters would loop"
                ));
            }
            DeadLetterSettings::Kafka { topic }
        } else {
            DeadLetterSettings::None
        };

        let alerts = build_alerts(self.alerts, d.alerts, &engine, &mut p);

        let level = p.not_empty("log.level", self.log.level, &d.log.level);
        check_log_level(&level, &mut p);
        let json = match self.log.format {
            None => d.log.json,
            Some(t) => p.one_of("log.format", "format", &t.0, &LOG_FORMATS) && t.0 == "json",
        };
        let log = LogSettings { level, json };

        if p.errs.is_empty() {
            Ok(Settings {
                engine,
                rules,
                runtime,
                http,
                ingest,
                kafka,
                state,
                cluster,
                checkpoint,
                dead_letter,
                alerts,
                log,
                deprecations,
            })
        } else {
            Err(p.errs)
        }
    }
}

fn build_cluster(
    raw: RawCluster,
    d: ClusterSettings,
    http: &HttpSettings,
    p: &mut Problems,
) -> ClusterSettings {
    let advertise_url = raw
        .advertise_url
        .map(|t| t.0.trim().to_string())
        .filter(|u| !u.is_empty());
    if let Some(u) = &advertise_url {
        let rest = u
            .strip_prefix("http://")
            .or_else(|| u.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
            p.push(format!(
                "cluster.advertise_url: `{u}` is not a URL such as http://10.0.0.7:8080"
            ));
        }
    }
    let instance_id = raw
        .instance_id
        .map(|t| t.0.trim().to_string())
        .filter(|u| !u.is_empty());
    if let Some(id) = &instance_id {
        let ok = id.len() <= 128
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            p.push(format!(
                "cluster.instance_id: `{id}` must be 1 to 128 letters, digits, `.`, `_` or `-`"
            ));
        }
    }
    let c = ClusterSettings {
        advertise_url,
        instance_id,
        heartbeat: p.interval("cluster.heartbeat", raw.heartbeat, d.heartbeat),
        member_expiry: p.interval("cluster.member_expiry", raw.member_expiry, d.member_expiry),
        peer_timeout: p.interval("cluster.peer_timeout", raw.peer_timeout, d.peer_timeout),
    };
    if c.member_expiry <= c.heartbeat {
        p.push(format!(
            "cluster.member_expiry: must be longer than cluster.heartbeat ({:?}), got {:?}",
            c.heartbeat, c.member_expiry
        ));
    }
    if c.peer_timeout >= http.request_timeout {
        p.push(format!(
            "cluster.peer_timeout: must be shorter than http.request_timeout ({:?}), got {:?}",
            http.request_timeout, c.peer_timeout
        ));
    }
    c
}

fn build_kafka(raw: RawKafka, d: KafkaSettings, p: &mut Problems) -> KafkaSettings {
    let enabled = raw.enabled.unwrap_or(d.enabled);
    let brokers = raw.brokers.map_or(d.brokers, |t| t.0);
    let group_id = raw.group_id.map_or(d.group_id, |t| t.0);
    let partitioner = match raw.partitioner {
        None => d.partitioner,
        Some(t) => t.0.parse().unwrap_or_else(|e| {
            p.push(format!("kafka.partitioner: {e}"));
            d.partitioner
        }),
    };
    let idle_timeout = p.interval("kafka.idle_timeout", raw.idle_timeout, d.idle_timeout);
    let max_task_idle = p.interval("kafka.max_task_idle", raw.max_task_idle, d.max_task_idle);
    let max_buffered_records = p.at_least_one(
        "kafka.max_buffered_records",
        raw.max_buffered_records,
        d.max_buffered_records,
    );
    let stall_timeout = p.interval("kafka.stall_timeout", raw.stall_timeout, d.stall_timeout);
    let repartition = raw.repartition.unwrap_or(d.repartition);
    let repartition_replication_factor = match raw.repartition_replication_factor {
        None => d.repartition_replication_factor,
        Some(n) if n == -1 || (1..=i64::from(i16::MAX)).contains(&n) => n as i32,
        Some(n) => {
            p.push(format!(
                "kafka.repartition_replication_factor: must be -1 (the broker's default) or \
                 from 1 to 32767, got {n}"
            ));
            d.repartition_replication_factor
        }
    };
    let internal = format!("{group_id}-repartition");
    if enabled {
        if brokers.trim().is_empty() {
            p.push("kafka.brokers: must not be empty when kafka.enabled = true".into());
        }
        if group_id.trim().is_empty() {
            p.push("kafka.group_id: must not be empty when kafka.enabled = true".into());
        }
        if raw.topics.is_empty() {
            p.push(
                "kafka.topics: at least one [[kafka.topics]] entry is needed when kafka.enabled = true"
                    .into(),
            );
        }
    }

    let mut properties = BTreeMap::new();
    for (name, value) in raw.properties {
        let own_setting = match name.as_str() {
            "bootstrap.servers" => Some("kafka.brokers"),
            "group.id" => Some("kafka.group_id"),
            _ => None,
        };
        if let Some(setting) = own_setting {
            p.push(format!("kafka.properties.{name}: set {setting} instead"));
        } else if name.trim().is_empty() {
            p.push("kafka.properties: empty property name".into());
        } else {
            properties.insert(name, value.0);
        }
    }

    let mut topics: Vec<TopicSettings> = Vec::new();
    for (i, t) in raw.topics.into_iter().enumerate() {
        let key = format!("kafka.topics[{i}]");
        let name = match t.name {
            None => {
                p.push(format!("{key}.name: required"));
                String::new()
            }
            Some(n) if n.0.trim().is_empty() => {
                p.push(format!("{key}.name: must not be empty"));
                String::new()
            }
            Some(n) => n.0,
        };
        if !name.is_empty() && topics.iter().any(|seen| seen.name == name) {
            p.push(format!("{key}.name: duplicate topic `{name}`"));
        }
        if name == internal {
            p.push(format!(
                "{key}.name: `{name}` is journeyd's internal repartition topic (kafka.group_id \
                 + \"-repartition\"); list the topics it is made from instead"
            ));
        }
        let marked = t.repartition.unwrap_or(false);
        if marked && !repartition {
            p.push(format!(
                "{key}.repartition: needs kafka.repartition = true (journeyd repartitions only \
                 when allowed to create the internal topic `{internal}`)"
            ));
        }
        let source = match t.source {
            None => name.clone(),
            Some(s) if s.0.trim().is_empty() => {
                p.push(format!("{key}.source: must not be empty"));
                name.clone()
            }
            Some(s) => s.0,
        };
        let format = t.format.map_or_else(|| "canonical".to_string(), |f| f.0);
        let mapping = t
            .mapping
            .map(|m| {
                m.into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect::<BTreeMap<_, _>>()
            })
            .filter(|m| !m.is_empty());
        // The decoder's own check, so that building it from these settings cannot fail.
        if let Err(why) = Format::parse(&format, mapping.as_ref()) {
            let field = if Format::NAMES.contains(&format.as_str()) {
                "mapping"
            } else {
                "format"
            };
            p.push(format!("{key}.{field}: {why}"));
        }
        topics.push(TopicSettings {
            name,
            source,
            format,
            mapping,
            repartition: marked,
        });
    }

    KafkaSettings {
        enabled,
        brokers,
        group_id,
        partitioner,
        idle_timeout,
        max_task_idle,
        max_buffered_records,
        stall_timeout,
        properties,
        topics,
        repartition,
        repartition_replication_factor,
    }
}

/// A token list: each token non-empty, without whitespace, at least 16 characters.
fn build_alerts(
    a: RawAlerts,
    d: AlertSettings,
    engine: &EngineConfig,
    p: &mut Problems,
) -> AlertSettings {
    let window = p.duration("alerts.window", a.window, d.eval.window);
    if window <= 0 {
        p.push(format!(
            "alerts.window: must be positive, got {}",
            HumanDuration(window)
        ));
    }
    let name = a.baseline.map_or_else(|| "day_before".to_string(), |t| t.0);
    let trailing = p.duration("alerts.trailing", a.trailing, DAY);
    let baseline = if !p.one_of("alerts.baseline", "baseline", &name, &ALERT_BASELINES) {
        d.eval.baseline
    } else if name == "trailing" {
        if trailing <= 0 {
            p.push(format!(
                "alerts.trailing: must be positive, got {}",
                HumanDuration(trailing)
            ));
        }
        Baseline::Trailing(trailing)
    } else {
        Baseline::DayBefore
    };
    // Minute buckets end at retention.fine; an older baseline would be read from hour
    // buckets, which cannot be cut to the window.
    // Saturating: each duration may be as long as `parse_duration` allows.
    let reach = match baseline {
        Baseline::DayBefore => DAY.saturating_add(window),
        Baseline::Trailing(len) => window.saturating_add(len),
    }
    .saturating_add(engine.allowed_lateness)
    .saturating_add(engine.session_gap);
    let enabled = a.enabled.unwrap_or(d.enabled);
    if enabled && window > 0 && reach > engine.retention_fine {
        p.push(format!(
            "alerts.baseline: `{name}` reads data {} old, beyond retention.fine ({}); raise \
             retention.fine or shorten the windows",
            HumanDuration(reach),
            HumanDuration(engine.retention_fine)
        ));
    }
    let mut ratio = |key: &str, v: Option<f64>, default: f64, lo: f64| match v {
        None => default,
        Some(x) if x.is_finite() && x >= lo => x,
        Some(x) => {
            p.push(format!("{key}: must be a number of at least {lo}, got {x}"));
            default
        }
    };
    let threshold_relative = ratio(
        "alerts.threshold_relative",
        a.threshold_relative,
        d.eval.threshold_relative,
        1.0,
    );
    let threshold_absolute = ratio(
        "alerts.threshold_absolute",
        a.threshold_absolute,
        d.eval.threshold_absolute,
        0.0,
    );
    let conversion_relative = match a.conversion_relative {
        Some(x) if !(x.is_finite() && x > 0.0 && x <= 1.0) => {
            p.push(format!(
                "alerts.conversion_relative: must be a number above 0 and at most 1, got {x}"
            ));
            d.eval.conversion_relative
        }
        x => x.unwrap_or(d.eval.conversion_relative),
    };
    let conversion_absolute = match a.conversion_absolute {
        Some(x) if !(x.is_finite() && (0.0..=1.0).contains(&x)) => {
            p.push(format!(
                "alerts.conversion_absolute: must be a number from 0 to 1, got {x}"
            ));
            d.eval.conversion_absolute
        }
        x => x.unwrap_or(d.eval.conversion_absolute),
    };
    let conversion_name = a.conversion.map_or_else(|| "step".to_string(), |t| t.0);
    let conversion = if p.one_of(
        "alerts.conversion",
        "conversion",
        &conversion_name,
        &ALERT_CONVERSIONS,
    ) {
        match conversion_name.as_str() {
            "from_start" => ConversionAlerts::FromStart,
            "off" => ConversionAlerts::Off,
            _ => ConversionAlerts::Step,
        }
    } else {
        d.eval.conversion
    };
    let min_sessions = match a.min_sessions {
        None => d.eval.min_sessions,
        Some(0) => {
            p.push("alerts.min_sessions: must be at least 1, got 0".to_string());
            d.eval.min_sessions
        }
        Some(n) => n,
    };
    let mut non_negative = |key: &'static str, raw: Option<Text>, default: Millis| {
        let v = p.duration(key, raw, default);
        if v < 0 {
            p.push(format!(
                "{key}: must not be negative, got {}",
                HumanDuration(v)
            ));
            return default;
        }
        v
    };
    let for_ = non_negative("alerts.for", a.for_, d.eval.for_);
    let keep_resolved = non_negative(
        "alerts.keep_resolved",
        a.keep_resolved,
        d.eval.keep_resolved,
    );
    // Empty, as config/journeyd.toml writes it: all journeys.
    let segment = a.segment.filter(|t| !t.trim().is_empty()).and_then(|text| {
        let Some(f) = SegmentFilter::parse(&text) else {
            p.push(format!(
                "alerts.segment: `{text}` is not DIM:VALUE (e.g. \"persona:business\")"
            ));
            return None;
        };
        if !engine.segment_dimensions.contains(&f.dimension) {
            p.push(format!(
                "alerts.segment: `{}` is not in breakdown.segment_dimensions ({})",
                f.dimension,
                if engine.segment_dimensions.is_empty() {
                    "none configured".to_string()
                } else {
                    engine.segment_dimensions.join(", ")
                }
            ));
            return None;
        }
        Some(f)
    });
    let mut url = |key: &str, raw: Option<Text>| {
        let u = raw
            .map(|t| t.0.trim().to_string())
            .filter(|u| !u.is_empty())?;
        if u.starts_with("http://") || u.starts_with("https://") {
            Some(u)
        } else {
            p.push(format!("{key}: `{u}` is not an http:// or https:// URL"));
            None
        }
    };
    let alertmanager_url = url("alerts.alertmanager_url", a.alertmanager_url);
    let webhook_url = url("alerts.webhook_url", a.webhook_url);
    AlertSettings {
        enabled,
        interval: p.interval("alerts.interval", a.interval, d.interval),
        eval: AlertConfig {
            window,
            baseline,
            threshold_relative,
            threshold_absolute,
            min_sessions,
            for_,
            keep_resolved,
            touchpoints: a.touchpoints.unwrap_or_default(),
            conversion,
            conversion_relative,
            conversion_absolute,
            phases: a.phases.unwrap_or_default(),
            segment,
        },
        alertmanager_url,
        webhook_url,
        resend: p.interval("alerts.resend", a.resend, d.resend),
    }
}

/// `http.segment_write_keys`: each key at least 16 characters without whitespace, used once,
/// with a source of 1 to 64 characters.
fn write_keys(raw: Option<Vec<RawWriteKey>>, p: &mut Problems) -> WriteKeys {
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, k) in raw.unwrap_or_default().into_iter().enumerate() {
        let (key, source) = (k.key.0, k.source.0);
        if key.len() < 16 || key.chars().any(char::is_whitespace) {
            // The value is a secret: name its position, never echo it.
            p.push(format!(
                "http.segment_write_keys[{i}].key: a write key must be at least 16 characters without whitespace"
            ));
        } else if out.iter().any(|(k, _)| *k == key) {
            p.push(format!(
                "http.segment_write_keys[{i}].key: the same key is listed twice"
            ));
        } else if source.is_empty() || source.len() > 64 {
            p.push(format!(
                "http.segment_write_keys[{i}].source: must be 1 to 64 characters"
            ));
        } else {
            out.push((key, source));
        }
    }
    WriteKeys::new(out)
}

fn tokens(key: &str, raw: Option<Vec<Text>>, p: &mut Problems) -> Vec<String> {
    let mut out = Vec::new();
    for (i, t) in raw.unwrap_or_default().into_iter().enumerate() {
        if t.0.len() < 16 || t.0.chars().any(char::is_whitespace) {
            // The value is a secret: name its position, never echo it.
            p.push(format!(
                "{key}[{i}]: a token must be at least 16 characters without whitespace"
            ));
        } else {
            out.push(t.0);
        }
    }
    out
}

/// `info`, or `tracing` directives such as `info,journeyd=debug`: every directive must end in
/// a level.
fn check_log_level(level: &str, p: &mut Problems) {
    let ok = level.split(',').map(str::trim).all(|directive| {
        let lvl = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        LOG_LEVELS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(lvl))
    });
    if !ok && !level.trim().is_empty() {
        p.push(format!(
            "log.level: `{level}` is not a level ({}) or directives such as info,journeyd=debug",
            LOG_LEVELS.join(", ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use journey_core::time::{DAY, HOUR, MINUTE};

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn invalid(text: &str) -> Vec<String> {
        match Settings::from_toml_str(text, no_env()) {
            Err(ConfigError::Invalid(errs)) => errs,
            other => panic!("expected validation errors, got {other:?}"),
        }
    }

    fn error(text: &str, vars: &[(&str, &str)]) -> String {
        Settings::from_toml_str(text, env(vars))
            .expect_err("configuration should be rejected")
            .to_string()
    }

    fn repo_file(relative: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
    }

    #[test]
    fn defaults_are_documented_values() {
        let d = Settings::defaults();
        assert_eq!(d.engine, EngineConfig::default());
        assert_eq!(d.engine.session_gap, 30 * MINUTE);
        assert_eq!(d.engine.session_max_duration, 24 * HOUR);
        assert_eq!(d.engine.allowed_lateness, 5 * MINUTE);
        assert_eq!(d.engine.session_max_events, 10_000);
        assert_eq!(d.engine.journey_window, 30 * DAY);
        assert_eq!(d.engine.breakdown_max_values, 100);
        assert_eq!(d.engine.retention_fine, 48 * HOUR);
        assert_eq!(d.engine.retention_total, 90 * DAY);
        assert_eq!(d.rules.path, Path::new("config/rules.toml"));
        assert!(d.rules.watch);
        assert!(d.runtime.workers >= 1);
        assert_eq!(d.runtime.channel_capacity, 64);
        assert_eq!(d.runtime.publish_interval, Duration::from_secs(1));
        assert_eq!(d.runtime.tick_interval, Duration::from_secs(1));
        assert_eq!(d.http.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(d.http.max_body_bytes, 10_485_760);
        assert_eq!(d.http.max_batch_events, 10_000);
        assert_eq!(d.http.request_timeout, Duration::from_secs(30));
        assert_eq!(d.http.default_source, "http");
        assert_eq!(d.ingest.max_record_bytes, 1_048_576);
        assert!(!d.kafka.enabled);
        assert_eq!(d.kafka.brokers, "localhost:9092");
        assert_eq!(d.kafka.group_id, "journeyd");
        assert!(d.kafka.properties.is_empty() && d.kafka.topics.is_empty());
        assert_eq!(d.log.level, "info");
        assert!(!d.log.json);
    }

    #[test]
    fn empty_file_and_no_file_give_defaults() {
        assert_eq!(
            Settings::from_toml_str("", no_env()).unwrap(),
            Settings::defaults()
        );
        assert_eq!(
            Settings::load(None, no_env()).unwrap(),
            Settings::defaults()
        );
    }

    /// Left out or 0, the task count is the command's: `run` keeps the fixed default its
    /// checkpoints are restored under, `replay` takes one task per worker.
    #[test]
    fn task_count_left_to_the_command_unless_set() {
        for text in [
            "[runtime]\nworkers = 2\n",
            "[runtime]\nworkers = 2\ntasks = 0\n",
        ] {
            let s = Settings::from_toml_str(text, no_env()).unwrap();
            assert_eq!(s.runtime.tasks, None, "{text}");
            assert_eq!(s.runtime.serve_tasks(), journey_runtime::DEFAULT_TASKS);
            assert_eq!(s.runtime.replay_tasks(), 2);
        }
        let s = Settings::from_toml_str(
            "[runtime]\nworkers = 2\n",
            env(&[("JOURNEYD_RUNTIME__TASKS", "5")]),
        )
        .unwrap();
        assert_eq!((s.runtime.serve_tasks(), s.runtime.replay_tasks()), (5, 5));
    }

    /// Durations as long as `parse_duration` allows are judged, not overflowed: refused only
    /// for what they break (alerts' baseline would reach past `retention.fine`).
    #[test]
    fn the_longest_durations_are_judged_without_overflow() {
        for key in ["session.gap", "session.allowed_lateness"] {
            let (table, name) = key.split_once('.').unwrap();
            let text = format!("[{table}]\n{name} = \"106751991167d\"\n");
            if let Err(e) = Settings::from_toml_str(&text, no_env()) {
                assert!(e.to_string().contains(key), "{key}: {e}");
            }
            let errs = invalid(&format!("{text}[alerts]\nenabled = true\n"));
            assert!(
                errs.iter().any(|e| e.starts_with("alerts.baseline: ")),
                "{key}: {errs:?}"
            );
        }
    }

    #[test]
    fn shipped_file_equals_defaults() {
        let path = repo_file("../../config/journeyd.toml");
        assert_eq!(
            Settings::load(Some(&path), no_env()).unwrap(),
            Settings::defaults()
        );
    }

    /// Every setting is spelled out in the shipped file, so it documents them all: an absent
    /// key would deserialise to `None`, which shows up as `null` here.
    #[test]
    fn shipped_file_spells_out_every_setting() {
        fn nulls(v: &serde_json::Value, path: &str, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Null => out.push(path.to_string()),
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        nulls(v, &format!("{path}.{k}"), out);
                    }
                }
                _ => {}
            }
        }
        let text = std::fs::read_to_string(repo_file("../../config/journeyd.toml")).unwrap();
        let raw: RawConfig = toml::from_str(&text).unwrap();
        let mut missing = Vec::new();
        nulls(&serde_json::to_value(&raw).unwrap(), "", &mut missing);
        assert_eq!(missing, Vec::<String>::new());
    }

    /// `journeyd demo`'s configuration: persona segments and alerts on, a baseline its
    /// 90 minutes of recent history cover, a session gap that lets alerts follow in minutes.
    #[test]
    fn demo_config_is_valid() {
        let path = repo_file("../../config/demo.toml");
        let s = Settings::load(Some(&path), no_env()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.engine.segment_dimensions, ["persona"]);
        assert!(s.engine.breakdowns.contains(&"persona".to_string()));
        assert!(s.alerts.enabled);
        assert_eq!(
            s.alerts.eval.baseline,
            journey_alert::Baseline::Trailing(3_600_000)
        );
        assert!(
            s.alerts.eval.window + s.engine.session_gap + 3_600_000
                <= journey_gen::demo::DemoConfig::default().recent,
            "the demo's recent history covers the baseline"
        );
        assert!(s.deprecations.is_empty(), "{:?}", s.deprecations);
    }

    #[test]
    fn deployment_configs_are_valid() {
        for f in ["deploy/image/journeyd.toml", "deploy/compose/journeyd.toml"] {
            let path = repo_file(&format!("../../{f}"));
            let s = Settings::load(Some(&path), no_env()).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert!(s.state.url.is_some(), "{f}: deployments keep checkpoints");
            assert!(s.deprecations.is_empty(), "{f}: {:?}", s.deprecations);
            assert_eq!(s.http.listen.ip().to_string(), "0.0.0.0", "{f}");
        }
    }

    #[test]
    fn reads_every_setting() {
        let s = Settings::from_toml_str(
            r#"
            [session]
            gap = "45m"
            max_duration = "12h"
            allowed_lateness = "1m30s"
            max_events = 500
            [journey]
            window = "7d"
            [breakdown]
            attributes = ["persona", "utm.medium"]
            max_values = 20
            segment_dimensions = ["persona", "first_touchpoint"]
            [moments]
            goal_phases = ["retention", "decision"]
            [retention]
            fine = "6h"
            total = "2w"
            [rules]
            path = "/etc/journeyd/rules.toml"
            watch = false
            [runtime]
            workers = 3
            tasks = 24
            channel_capacity = 8
            publish_interval = "250ms"
            tick_interval = "2s"
            worker_nice = 5
            shutdown_timeout = "25s"
            [http]
            listen = "[::]:9000"
            max_body_bytes = 1024
            max_batch_events = 10
            request_timeout = "5s"
            default_source = "api"
            read_tokens = ["read-token-0123456789"]
            admin_tokens = ["admin-token-0123456789", "admin-token-9876543210"]
            segment_write_keys = [{ key = "wk-website-0123456789", source = "site" }]
            [ingest]
            max_record_bytes = 512
            [kafka]
            enabled = true
            brokers = "k1:9092,k2:9092"
            group_id = "jd"
            partitioner = "crc32"
            idle_timeout = "30s"
            max_task_idle = "2s"
            max_buffered_records = 50000
            repartition = true
            repartition_replication_factor = 3
            [kafka.properties]
            "security.protocol" = "SASL_SSL"
            "fetch.min.bytes" = 1024
            "enable.partition.eof" = false
            [[kafka.topics]]
            name = "web-events"
            source = "web"
            format = "segment"
            [[kafka.topics]]
            name = "crm"
            format = "mapping"
            mapping = { customer_id = "/user/id", event = "/type", ts = "/at" }
            repartition = true
            [dedup]
            horizon = "1h"
            max_ids = 5000
            [state]
            url = "s3://journeyd-state/prod"
            [checkpoint]
            interval = "30s"
            [dead_letter]
            sink = "kafka"
            topic = "rejects"
            [alerts]
            enabled = true
            interval = "30s"
            window = "30m"
            baseline = "trailing"
            trailing = "4h"
            threshold_relative = 2.0
            threshold_absolute = 0.1
            min_sessions = 200
            for = "10m"
            keep_resolved = "2h"
            touchpoints = ["cart", "checkout"]
            conversion = "from_start"
            conversion_relative = 0.7
            conversion_absolute = 0.1
            phases = ["decision"]
            segment = "persona:business"
            alertmanager_url = "http://alertmanager:9093"
            webhook_url = "https://hooks.example.com/journeyd"
            resend = "2m"
            [log]
            level = "info,journeyd=debug"
            format = "json"
            "#,
            no_env(),
        )
        .unwrap();
        let e = &s.engine;
        assert_eq!(
            (e.session_gap, e.session_max_duration, e.allowed_lateness),
            (45 * MINUTE, 12 * HOUR, 90_000)
        );
        assert_eq!((e.session_max_events, e.journey_window), (500, 7 * DAY));
        assert_eq!(e.breakdowns, ["persona", "utm.medium"]);
        assert_eq!(e.breakdown_max_values, 20);
        assert_eq!(e.segment_dimensions, ["persona", "first_touchpoint"]);
        assert_eq!(e.goal_phases, ["retention", "decision"]);
        let rules = journey_core::Rules::from_toml(
            &std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/rules.toml"),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(s.check_rules(&rules), Ok(()));
        let mut wrong = Settings::defaults();
        wrong.engine.goal_phases = vec!["decision".into(), "purchase".into()];
        assert_eq!(
            wrong.check_rules(&rules).unwrap_err(),
            "moments.goal_phases[1]: `purchase` is no phase of the rules (phases: awareness, consideration, decision, retention, advocacy)"
        );
        wrong.alerts.eval.phases = vec!["decisoin".into()];
        assert_eq!(
            wrong.check_rules(&rules).unwrap_err(),
            "moments.goal_phases[1]: `purchase` is no phase of the rules; \
             alerts.phases[0]: `decisoin` is no phase of the rules (phases: awareness, consideration, decision, retention, advocacy)"
        );
        assert_eq!((e.retention_fine, e.retention_total), (6 * HOUR, 14 * DAY));
        assert_eq!(
            s.rules,
            RulesSettings {
                path: "/etc/journeyd/rules.toml".into(),
                watch: false
            }
        );
        assert_eq!(
            s.runtime,
            RuntimeSettings {
                workers: 3,
                tasks: Some(24),
                channel_capacity: 8,
                publish_interval: Duration::from_millis(250),
                tick_interval: Duration::from_secs(2),
                worker_nice: 5,
                shutdown_timeout: Duration::from_secs(25),
            }
        );
        assert_eq!(
            s.http,
            HttpSettings {
                listen: "[::]:9000".parse().unwrap(),
                max_body_bytes: 1024,
                max_batch_events: 10,
                request_timeout: Duration::from_secs(5),
                default_source: "api".into(),
                tokens: Tokens {
                    read: vec!["read-token-0123456789".into()],
                    ingest: vec![],
                    admin: vec![
                        "admin-token-0123456789".into(),
                        "admin-token-9876543210".into()
                    ],
                },
                segment_write_keys: WriteKeys::new([(
                    "wk-website-0123456789".to_string(),
                    "site".to_string()
                )]),
            }
        );
        assert_eq!((e.dedup_horizon, e.dedup_max_ids), (HOUR, 5000));
        assert_eq!(s.state.url.as_deref(), Some("s3://journeyd-state/prod"));
        assert_eq!(
            s.checkpoint,
            CheckpointSettings {
                interval: Duration::from_secs(30),
            }
        );
        assert!(s.deprecations.is_empty());
        assert_eq!(
            s.dead_letter,
            DeadLetterSettings::Kafka {
                topic: "rejects".into()
            }
        );
        assert_eq!(s.ingest.max_record_bytes, 512);
        let k = &s.kafka;
        assert!(k.enabled);
        assert_eq!(
            (k.brokers.as_str(), k.group_id.as_str()),
            ("k1:9092,k2:9092", "jd")
        );
        assert_eq!(
            (k.partitioner, k.idle_timeout, k.max_task_idle),
            (
                Partitioner::Crc32,
                Duration::from_secs(30),
                Duration::from_secs(2)
            )
        );
        assert_eq!(k.max_buffered_records, 50_000);
        assert_eq!(
            k.properties,
            BTreeMap::from([
                ("enable.partition.eof".to_string(), "false".to_string()),
                ("fetch.min.bytes".to_string(), "1024".to_string()),
                ("security.protocol".to_string(), "SASL_SSL".to_string()),
            ])
        );
        assert_eq!(
            k.topics,
            vec![
                TopicSettings {
                    name: "web-events".into(),
                    source: "web".into(),
                    format: "segment".into(),
                    mapping: None,
                    repartition: false,
                },
                TopicSettings {
                    name: "crm".into(),
                    source: "crm".into(),
                    format: "mapping".into(),
                    mapping: Some(BTreeMap::from([
                        ("customer_id".to_string(), "/user/id".to_string()),
                        ("event".to_string(), "/type".to_string()),
                        ("ts".to_string(), "/at".to_string()),
                    ])),
                    repartition: true,
                },
            ]
        );
        assert!(k.repartition);
        assert_eq!(k.repartition_replication_factor, 3);
        assert_eq!(k.repartition_topic(), "jd-repartition");
        assert_eq!(
            s.alerts,
            AlertSettings {
                enabled: true,
                interval: Duration::from_secs(30),
                eval: AlertConfig {
                    window: 30 * MINUTE,
                    baseline: Baseline::Trailing(4 * HOUR),
                    threshold_relative: 2.0,
                    threshold_absolute: 0.1,
                    min_sessions: 200,
                    for_: 10 * MINUTE,
                    keep_resolved: 2 * HOUR,
                    touchpoints: vec!["cart".into(), "checkout".into()],
                    conversion: ConversionAlerts::FromStart,
                    conversion_relative: 0.7,
                    conversion_absolute: 0.1,
                    phases: vec!["decision".into()],
                    segment: SegmentFilter::parse("persona:business"),
                },
                alertmanager_url: Some("http://alertmanager:9093".into()),
                webhook_url: Some("https://hooks.example.com/journeyd".into()),
                resend: Duration::from_secs(120),
            }
        );
        assert_eq!(
            s.log,
            LogSettings {
                level: "info,journeyd=debug".into(),
                json: true
            }
        );
    }

    #[test]
    fn alert_settings_are_checked() {
        let err = error(
            r#"
            [alerts]
            enabled = true
            window = "0s"
            baseline = "last_week"
            threshold_relative = 0.5
            threshold_absolute = -0.1
            conversion = "cohort"
            conversion_relative = 1.5
            conversion_absolute = -1
            min_sessions = 0
            for = "-5m"
            webhook_url = "hooks.example.com"
            segment = "persona"
            "#,
            &[],
        );
        assert_eq!(
            err,
            "invalid configuration:\n  \
             alerts.window: must be positive, got 0s\n  \
             alerts.baseline: unknown baseline `last_week` (expected one of: day_before, trailing)\n  \
             alerts.threshold_relative: must be a number of at least 1, got 0.5\n  \
             alerts.threshold_absolute: must be a number of at least 0, got -0.1\n  \
             alerts.conversion_relative: must be a number above 0 and at most 1, got 1.5\n  \
             alerts.conversion_absolute: must be a number from 0 to 1, got -1\n  \
             alerts.conversion: unknown conversion `cohort` (expected one of: step, from_start, off)\n  \
             alerts.min_sessions: must be at least 1, got 0\n  \
             alerts.for: invalid duration `-5m`: expected a number, as in `30m`\n  \
             alerts.segment: `persona` is not DIM:VALUE (e.g. \"persona:business\")\n  \
             alerts.webhook_url: `hooks.example.com` is not an http:// or https:// URL"
        );
        // A segment of a dimension that carries no segment figures.
        let err = error(
            "[alerts]\nenabled = true\nsegment = \"utm_medium:cpc\"\n",
            &[],
        );
        assert!(
            err.contains(
                "alerts.segment: `utm_medium` is not in breakdown.segment_dimensions (none configured)"
            ),
            "{err}"
        );
        // The day-before baseline must lie within the minute buckets.
        let err = error(
            "[retention]\nfine = \"12h\"\n[alerts]\nenabled = true\n",
            &[],
        );
        assert!(
            err.contains("alerts.baseline: `day_before` reads data 1d")
                && err.contains("retention.fine (12h)"),
            "{err}"
        );
        // Disabled alerts are not held to it.
        assert!(Settings::from_toml_str("[retention]\nfine = \"12h\"\n", no_env()).is_ok());
    }

    #[test]
    fn durability_and_token_settings_are_checked() {
        let err = error(
            r#"
            [http]
            read_tokens = ["short", "fine-token-0123456789"]
            ingest_tokens = ["has whitespace in it, 32 chars"]
            [dedup]
            horizon = "-1m"
            [checkpoint]
            interval = "0s"
            [dead_letter]
            sink = "s3"
            "#,
            &[],
        );
        assert_eq!(
            err,
            "invalid configuration:\n  \
             dedup.horizon: invalid duration `-1m`: expected a number, as in `30m`\n  \
             http.read_tokens[0]: a token must be at least 16 characters without whitespace\n  \
             http.ingest_tokens[0]: a token must be at least 16 characters without whitespace\n  \
             checkpoint.interval: must be positive, got 0s\n  \
             dead_letter.sink: unknown sink `s3` (expected one of: none, file, kafka)"
        );
        assert!(!err.contains("short"), "a token never appears in a message");
        let looped = error(
            "[kafka]\nenabled = true\n[[kafka.topics]]\nname = \"web\"\n[dead_letter]\nsink = \"kafka\"\ntopic = \"web\"\n",
            &[],
        );
        assert!(
            looped.contains("dead_letter.topic: `web` is also consumed"),
            "{looped}"
        );
        let tokens = Settings::from_toml_str(
            "",
            env(&[(
                "JOURNEYD_HTTP__INGEST_TOKENS",
                r#"["producer-token-0123456789"]"#,
            )]),
        )
        .unwrap();
        assert_eq!(tokens.http.tokens.ingest, ["producer-token-0123456789"]);
        assert_eq!(
            format!("{:?}", tokens.http.tokens),
            "Tokens { read: 0, ingest: 1, admin: 0 }"
        );
    }

    #[test]
    fn cluster_settings_are_read_derived_and_checked() {
        let s = Settings::from_toml_str(
            "[http]\nlisten = \"127.0.0.1:9090\"\n[cluster]\nheartbeat = \"1s\"\n",
            env(&[("JOURNEYD_CLUSTER__PEER_TIMEOUT", "500ms")]),
        )
        .unwrap();
        assert_eq!(s.cluster.heartbeat, Duration::from_secs(1));
        assert_eq!(s.cluster.peer_timeout, Duration::from_millis(500));
        let url = s.cluster.advertised(s.http.listen);
        assert_eq!(url, "http://127.0.0.1:9090");
        assert_eq!(s.cluster.id(&url), "127.0.0.1-9090");
        let named = Settings::from_toml_str(
            "[cluster]\nadvertise_url = \"http://pod-3.journeyd:8080/\"\ninstance_id = \"pod-3\"\n",
            no_env(),
        )
        .unwrap();
        let url = named.cluster.advertised(named.http.listen);
        assert_eq!(url, "http://pod-3.journeyd:8080");
        assert_eq!(named.cluster.id(&url), "pod-3");
        let err = error(
            "[http]\nrequest_timeout = \"2s\"\n[cluster]\nadvertise_url = \"10.0.0.7:8080\"\ninstance_id = \"a/b\"\nheartbeat = \"10s\"\nmember_expiry = \"5s\"\npeer_timeout = \"3s\"\n",
            &[],
        );
        assert_eq!(
            err,
            "invalid configuration:\n  \
             cluster.advertise_url: `10.0.0.7:8080` is not a URL such as http://10.0.0.7:8080\n  \
             cluster.instance_id: `a/b` must be 1 to 128 letters, digits, `.`, `_` or `-`\n  \
             cluster.member_expiry: must be longer than cluster.heartbeat (10s), got 5s\n  \
             cluster.peer_timeout: must be shorter than http.request_timeout (2s), got 3s"
        );
    }

    #[test]
    fn env_overrides_the_file() {
        let s = Settings::from_toml_str(
            "[session]\ngap = \"10m\"\n[http]\nlisten = \"127.0.0.1:1\"\n",
            env(&[
                ("JOURNEYD_SESSION__GAP", "45m"),
                ("JOURNEYD_HTTP__LISTEN", "0.0.0.0:9000"),
                ("JOURNEYD_SESSION__MAX_EVENTS", "500"),
                ("journeyd_rules__watch", "false"),
                (
                    "JOURNEYD_BREAKDOWN__ATTRIBUTES",
                    r#"["persona", "utm_medium"]"#,
                ),
                ("JOURNEYD_KAFKA__PROPERTIES__SASL.USERNAME", "x"),
                // Verbatim, not the float 1.0 printed as "1".
                ("JOURNEYD_KAFKA__PROPERTIES__SASL.PASSWORD", "1.0"),
                ("JOURNEYD_KAFKA__GROUP_ID", "1_000"),
                ("JOURNEYD_HTTP__DEFAULT_SOURCE", "1.0"),
                ("JOURNEYD_LOG__FORMAT", "json"),
                // Not overrides: other programs' variables, and the command line's own.
                ("PATH", "/usr/bin"),
                ("JOURNEYD_CONFIG", "/etc/journeyd.toml"),
            ]),
        )
        .unwrap();
        let d = Settings::defaults();
        assert_eq!(s.engine.session_gap, 45 * MINUTE);
        assert_eq!(s.engine.session_max_events, 500);
        assert_eq!(s.engine.breakdowns, ["persona", "utm_medium"]);
        assert_eq!(s.http.listen, "0.0.0.0:9000".parse().unwrap());
        assert!(!s.rules.watch);
        assert_eq!(
            s.kafka.properties,
            BTreeMap::from([
                ("sasl.password".to_string(), "1.0".to_string()),
                ("sasl.username".to_string(), "x".to_string()),
            ])
        );
        assert_eq!(s.kafka.group_id, "1_000");
        assert_eq!(s.http.default_source, "1.0");
        assert!(s.log.json);
        assert_eq!(s.runtime, d.runtime);
        assert_eq!(s.ingest, d.ingest);
    }

    #[test]
    fn env_values_are_typed_like_toml() {
        assert_eq!(env_value("500"), toml::Value::Integer(500));
        assert_eq!(env_value("-3"), toml::Value::Integer(-3));
        assert_eq!(env_value("true"), toml::Value::Boolean(true));
        assert_eq!(env_value("0.5"), toml::Value::Float(0.5));
        assert_eq!(
            env_value("[1, 2]"),
            toml::Value::Array(vec![toml::Value::Integer(1), toml::Value::Integer(2)])
        );
        for text in [
            "45m",
            "0.0.0.0:9000",
            "1_000",
            "1e3",
            "True",
            "",
            "2026-01-01",
            "a b",
        ] {
            assert_eq!(env_value(text), toml::Value::String(text.into()), "{text}");
        }
    }

    #[test]
    fn env_numbers_in_string_settings_are_judged_as_text() {
        assert_eq!(
            error(
                "",
                &[
                    ("JOURNEYD_SESSION__GAP", "30"),
                    ("JOURNEYD_HTTP__LISTEN", "8080")
                ]
            ),
            "invalid configuration:\n  \
             session.gap: invalid duration `30`: missing unit (ms, s, m, h, d, w)\n  \
             http.listen: `8080` is not an address such as 127.0.0.1:8080"
        );
    }

    #[test]
    fn env_typo_names_the_variable() {
        assert_eq!(
            error("", &[("JOURNEYD_SESSION__GAPP", "45m")]),
            "unknown settings:\n  environment variable JOURNEYD_SESSION__GAPP: unknown key \
             `session.gapp`, did you mean `session.gap`?"
        );
        assert_eq!(
            error("", &[("JOURNEYD_SESSION____GAP", "45m")]),
            "invalid configuration:\n  JOURNEYD_SESSION____GAP: not a setting such as \
             JOURNEYD_SESSION__GAP (sections and keys joined by `__`)"
        );
        let minutes = [("JOURNEYD_SESSION__GAP__MINUTES", "45")];
        assert_eq!(
            error("[session]\ngap = \"30m\"\n", &minutes),
            "invalid configuration:\n  JOURNEYD_SESSION__GAP__MINUTES: session.gap is not a table"
        );
        assert_eq!(
            error("", &minutes),
            "environment variable JOURNEYD_SESSION__GAP__MINUTES: invalid type: map, \
             expected a string, number or boolean"
        );
    }

    #[test]
    fn unknown_section_is_named_with_its_place() {
        assert_eq!(
            error("# journeyd\n[sesion]\ngap = \"30m\"\n", &[]),
            "unknown settings:\n  <string>:2:2: unknown section `sesion`, did you mean `session`?"
        );
    }

    /// Every unknown key at once, the file's by position, then the environment's by name.
    #[test]
    fn unknown_keys_in_file_and_env_are_reported_together() {
        let text = "[session]\ngap = \"30m\"\ngapp = \"45m\"\n\n[kafka]\n  brokerz = \"k:9092\"\n";
        let err = Settings::from_toml_str(
            text,
            env(&[
                ("JOURNEYD_LOG__LEVL", "debug"),
                ("JOURNEYD_HTTP__LISTN", "0.0.0.0:80"),
                ("JOURNEYD_SESSION__GAP", "10m"),
                // Also in the file: both places need fixing.
                ("JOURNEYD_KAFKA__BROKERZ", "k:9093"),
            ]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown settings:\n  \
             <string>:3:1: unknown key `session.gapp`, did you mean `session.gap`?\n  \
             <string>:6:3: unknown key `kafka.brokerz`, did you mean `kafka.brokers`?\n  \
             environment variable JOURNEYD_HTTP__LISTN: unknown key `http.listn`, did you mean \
             `http.listen`?\n  \
             environment variable JOURNEYD_KAFKA__BROKERZ: unknown key `kafka.brokerz`, did you \
             mean `kafka.brokers`?\n  \
             environment variable JOURNEYD_LOG__LEVL: unknown key `log.levl`, did you mean \
             `log.level`?"
        );
    }

    /// A typo gets the known key it misses; a key that resembles none gets the list instead.
    #[test]
    fn near_miss_is_suggested_and_far_one_is_not() {
        let err = error("[runtime]\nwrokers = 2\ncolour = \"red\"\n", &[]);
        assert_eq!(
            err,
            "unknown settings:\n  \
             <string>:2:1: unknown key `runtime.wrokers`, did you mean `runtime.workers`?\n  \
             <string>:3:1: unknown key `runtime.colour` (expected one of `workers`, `tasks`, \
             `channel_capacity`, `publish_interval`, `tick_interval`, `worker_nice`, \
             `shutdown_timeout`)"
        );
        // Case and `-` for `_` are typos too; a transposition is one edit.
        assert_eq!(
            error("[session]\nMax-Events = 5\nmax_duratoin = \"1d\"\n", &[]),
            "unknown settings:\n  \
             <string>:2:1: unknown key `session.Max-Events`, did you mean `session.max_events`?\n  \
             <string>:3:1: unknown key `session.max_duratoin`, did you mean \
             `session.max_duration`?"
        );
    }

    /// A quoted key with a dot in it is one key: it is named quoted, as TOML writes it, not
    /// as the setting its dotted form would be.
    #[test]
    fn a_quoted_key_with_a_dot_is_named_quoted() {
        let err = error("\"session.gap\" = \"1m\"\n[session]\n\"gap.x\" = 1\n", &[]);
        assert!(err.contains("unknown section `\"session.gap\"`"), "{err}");
        assert!(err.contains("unknown key `session.\"gap.x\"`"), "{err}");
    }

    /// Unknown sections: from the file and from a variable (both named when both write one),
    /// and a section that is a key of another one.
    #[test]
    fn unknown_sections_are_reported_with_their_place() {
        assert_eq!(
            error(
                "[sesion]\ngap = \"30m\"\n[metrics]\nport = 9100\n[topics]\nname = \"a\"\n",
                &[
                    ("JOURNEYD_SESION__MAX_EVENTS", "5"),
                    ("JOURNEYD_CHEKPOINT__INTERVAL", "5s")
                ],
            ),
            "unknown settings:\n  \
             <string>:1:2: unknown section `sesion`, did you mean `session`?\n  \
             <string>:3:2: unknown section `metrics` (expected one of `session`, `journey`, \
             `breakdown`, `moments`, `retention`, `rules`, `runtime`, `http`, `ingest`, `kafka`, \
             `dedup`, `state`, `cluster`, `checkpoint`, `dead_letter`, `alerts`, `log`)\n  \
             <string>:5:2: unknown section `topics`, did you mean `kafka.topics`?\n  \
             environment variable JOURNEYD_CHEKPOINT__INTERVAL: unknown section `chekpoint`, \
             did you mean `checkpoint`?\n  \
             environment variable JOURNEYD_SESION__MAX_EVENTS: unknown section `sesion`, did you \
             mean `session`?"
        );
    }

    /// Keys below a known section: in an array of tables, in an inline table of an array, in
    /// a dotted key, and a key put in the wrong section.
    #[test]
    fn unknown_keys_nested_in_known_sections_are_located() {
        let text = "\
[[kafka.topics]]
name = \"a\"

[[kafka.topics]]
name = \"b\"
formt = \"segment\"

[http]
segment_write_keys = [{ key = \"0123456789abcdef\", source = \"web\", sorce = \"x\" }]

[session]
window = \"7d\"
alerts.enabled = true
";
        assert_eq!(
            error(text, &[]),
            "unknown settings:\n  \
             <string>:6:1: unknown key `kafka.topics[1].formt`, did you mean \
             `kafka.topics[1].format`?\n  \
             <string>:9:67: unknown key `http.segment_write_keys[0].sorce`, did you mean \
             `http.segment_write_keys[0].source`?\n  \
             <string>:12:1: unknown key `session.window`, did you mean `journey.window`?\n  \
             <string>:13:1: unknown key `session.alerts`, did you mean `alerts`?"
        );
        // Set whole by a variable, an array's keys are the variable's.
        assert_eq!(
            error(
                "[[kafka.topics]]\nname = \"a\"\nnme = \"x\"\n",
                &[("JOURNEYD_KAFKA__TOPICS", "[{ nmae = \"b\" }]")]
            ),
            "unknown settings:\n  environment variable JOURNEYD_KAFKA__TOPICS: unknown key \
             `kafka.topics[0].nmae`, did you mean `kafka.topics[0].name`?"
        );
    }

    #[test]
    fn checkpoint_dir_is_a_deprecated_alias_of_a_file_state_url() {
        let s = Settings::from_toml_str("[checkpoint]\ndir = \"/var/lib/j\"\n", no_env()).unwrap();
        assert_eq!(s.state.url.as_deref(), Some("file:///var/lib/j"));
        assert_eq!(
            s.deprecations,
            vec!["checkpoint.dir is deprecated: write [state] url = \"file:///var/lib/j\" instead"]
        );
        let both = "[state]\nurl = \"file:///a\"\n[checkpoint]\ndir = \"/b\"\n";
        let err = error(both, &[]);
        assert!(
            err.contains(
                "checkpoint.dir: deprecated, and state.url is set too; remove checkpoint.dir"
            ),
            "{err}"
        );
        let err = error("[state]\nurl = \"/var/lib/j\"\n", &[]);
        assert!(
            err.contains(
                "state.url: `/var/lib/j` is not file:///<absolute dir> or s3://<bucket>/<prefix>"
            ),
            "{err}"
        );
        let env = vec![(
            "JOURNEYD_STATE__URL".to_string(),
            "s3://bucket/prefix".to_string(),
        )];
        let s = Settings::from_toml_str("", env).unwrap();
        assert_eq!(s.state.url.as_deref(), Some("s3://bucket/prefix"));
    }

    #[test]
    fn unknown_key_in_a_file_names_the_file() {
        let path = repo_file("tests/config/unknown-key.toml");
        let err = Settings::load(Some(&path), no_env()).unwrap_err();
        assert!(matches!(err, ConfigError::Unknown(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "unknown settings:\n  {}:3:1: unknown key `session.gapp`, did you mean \
                 `session.gap`?",
                path.display()
            )
        );
    }

    #[test]
    fn wrong_type_is_named_with_its_place() {
        assert_eq!(
            error("[session]\nmax_events = \"many\"\n", &[]),
            "<string>:2:14: invalid type: string \"many\", expected usize"
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let path = repo_file("tests/config/does-not-exist.toml");
        let err = Settings::load(Some(&path), no_env()).unwrap_err();
        assert!(matches!(err, ConfigError::Io { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read config file {}: ", path.display())),
            "{err}"
        );
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let err = Settings::from_toml_str("[session]\ngap = 30m\n", no_env()).unwrap_err();
        let ConfigError::Syntax { line, column, .. } = &err else {
            panic!("expected a syntax error, got {err:?}");
        };
        assert_eq!((*line, *column), (2, 9));
        assert!(
            err.to_string().starts_with("<string>:2:9: invalid TOML: "),
            "{err}"
        );
    }

    #[test]
    fn bad_duration() {
        assert_eq!(
            invalid("[session]\ngap = \"30\"\n"),
            ["session.gap: invalid duration `30`: missing unit (ms, s, m, h, d, w)"]
        );
        assert_eq!(
            invalid("[runtime]\ntick_interval = \"0s\"\n"),
            ["runtime.tick_interval: must be positive, got 0s"]
        );
        assert_eq!(
            invalid("[runtime]\ntasks = 5000\n[kafka]\npartitioner = \"random\"\nidle_timeout = \"0s\"\n"),
            [
                "runtime.tasks: at most 4096 allowed, got 5000 (0 = chosen by the command)",
                "kafka.partitioner: unknown partitioner `random`: expected `murmur2` (Java clients) or `crc32` (librdkafka `consistent`)",
                "kafka.idle_timeout: must be positive, got 0s",
            ]
        );
    }

    #[test]
    fn repartition_settings_are_checked() {
        assert_eq!(
            invalid(
                "[kafka]\nenabled = true\ngroup_id = \"g\"\nrepartition_replication_factor = 0\n\
                 [[kafka.topics]]\nname = \"web\"\nrepartition = true\n\
                 [[kafka.topics]]\nname = \"g-repartition\"\n\
                 [dead_letter]\nsink = \"kafka\"\ntopic = \"g-repartition\"\n"
            ),
            [
                "kafka.repartition_replication_factor: must be -1 (the broker's default) or from \
                 1 to 32767, got 0",
                "kafka.topics[0].repartition: needs kafka.repartition = true (journeyd \
                 repartitions only when allowed to create the internal topic `g-repartition`)",
                "kafka.topics[1].name: `g-repartition` is journeyd's internal repartition topic \
                 (kafka.group_id + \"-repartition\"); list the topics it is made from instead",
                "dead_letter.topic: `g-repartition` is journeyd's internal repartition topic",
            ]
        );
        let s = Settings::from_toml_str(
            "[kafka]\nrepartition = true\nrepartition_replication_factor = 1\n\
             [[kafka.topics]]\nname = \"crm\"\nrepartition = true\n",
            no_env(),
        )
        .unwrap();
        assert!(s.kafka.repartition && s.kafka.topics[0].repartition);
        assert_eq!(s.kafka.repartition_replication_factor, 1);
        assert_eq!(
            error("[kafka]\nrepartition = \"yes\"\n", &[]),
            "<string>:2:15: invalid type: string \"yes\", expected a boolean"
        );
    }

    /// A value that could not be read is not judged again through its stand-in default.
    #[test]
    fn unreadable_duration_is_reported_once() {
        assert_eq!(
            invalid("[retention]\nfine = \"two days\"\ntotal = \"2h\"\n"),
            ["retention.fine: invalid duration `two days`: expected a number, as in `30m`"]
        );
    }

    #[test]
    fn bad_listen_address() {
        assert_eq!(
            invalid("[http]\nlisten = \"localhost\"\n"),
            ["http.listen: `localhost` is not an address such as 127.0.0.1:8080"]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        assert_eq!(
            invalid(
                r#"
                [session]
                gap = "30"
                max_events = 0
                [journey]
                window = "1m"
                [breakdown]
                attributes = ["source"]
                [runtime]
                channel_capacity = 0
                publish_interval = "soon"
                [http]
                listen = "localhost"
                request_timeout = "0ms"
                default_source = ""
                [ingest]
                max_record_bytes = 0
                [kafka]
                max_buffered_records = 0
                properties = { "group.id" = "x" }
                [[kafka.topics]]
                name = "web"
                format = "avro"
                [[kafka.topics]]
                name = "web"
                format = "segment"
                mapping = { customer_id = "/id" }
                [log]
                level = "verbose"
                format = "xml"
                "#
            ),
            [
                "session.gap: invalid duration `30`: missing unit (ms, s, m, h, d, w)",
                "journey.window (1m) must be at least session.allowed_lateness (5m)",
                "session.max_events must be at least 1",
                "breakdown.attributes[0]: `source` is built in, remove it",
                "runtime.channel_capacity: must be at least 1, got 0",
                "runtime.publish_interval: invalid duration `soon`: expected a number, as in `30m`",
                "http.listen: `localhost` is not an address such as 127.0.0.1:8080",
                "http.request_timeout: must be positive, got 0s",
                "http.default_source: must not be empty",
                "ingest.max_record_bytes: must be at least 1, got 0",
                "kafka.max_buffered_records: must be at least 1, got 0",
                "kafka.properties.group.id: set kafka.group_id instead",
                "kafka.topics[0].format: unknown format `avro` (expected one of: canonical, \
                 segment, cloudevents, mapping)",
                "kafka.topics[1].name: duplicate topic `web`",
                "kafka.topics[1].mapping: a field mapping is only used by format `mapping`, not \
                 by format `segment`",
                "log.level: `verbose` is not a level (trace, debug, info, warn, error, off) or \
                 directives such as info,journeyd=debug",
                "log.format: unknown format `xml` (expected one of: text, json)",
            ]
        );
    }

    #[test]
    fn invalid_message_lists_every_problem() {
        assert_eq!(
            error("[http]\nlisten = \"localhost\"\nmax_body_bytes = 0\n", &[]),
            "invalid configuration:\n  \
             http.listen: `localhost` is not an address such as 127.0.0.1:8080\n  \
             http.max_body_bytes: must be at least 1, got 0"
        );
    }

    #[test]
    fn kafka_enabled_needs_topics() {
        assert_eq!(
            invalid("[kafka]\nenabled = true\n"),
            ["kafka.topics: at least one [[kafka.topics]] entry is needed when kafka.enabled = true"]
        );
        // Disabled, no topics is fine.
        assert!(Settings::from_toml_str("[kafka]\nenabled = false\n", no_env()).is_ok());
    }

    #[test]
    fn mapping_format_needs_a_mapping() {
        assert_eq!(
            invalid("[[kafka.topics]]\nname = \"crm\"\nformat = \"mapping\"\n"),
            ["kafka.topics[0].mapping: format `mapping` needs a field mapping with at least the \
              keys customer_id, event and ts"]
        );
    }

    #[test]
    fn mapping_is_checked() {
        assert_eq!(
            invalid(
                "[[kafka.topics]]\nname = \"crm\"\nformat = \"mapping\"\n\
                 mapping = { customer_id = \"/user/id\", ts = \"at\", user = \"/u\" }\n"
            ),
            ["kafka.topics[0].mapping: invalid JSON pointer `at` for mapping key `ts`: must start \
              with `/`; unknown mapping key `user` (expected one of: customer_id, event, ts, \
              source, event_id, attributes); missing required mapping key `event`"]
        );
    }

    #[test]
    fn topic_needs_a_name() {
        assert_eq!(
            invalid("[[kafka.topics]]\nformat = \"segment\"\n"),
            ["kafka.topics[0].name: required"]
        );
    }

    #[test]
    fn workers_zero_means_one_per_core() {
        let cores = std::thread::available_parallelism().unwrap().get();
        let s = Settings::from_toml_str("[runtime]\nworkers = 0\n", no_env()).unwrap();
        assert_eq!(s.runtime.workers, cores);
        assert!(s.runtime.workers > 0);
        let s = Settings::from_toml_str("", env(&[("JOURNEYD_RUNTIME__WORKERS", "3")])).unwrap();
        assert_eq!(s.runtime.workers, 3);
    }
}
