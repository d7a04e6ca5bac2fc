//! journeyd: the binary. Command line, configuration, wiring of sources, workers and the HTTP
//! API, and orderly shutdown. The work itself lives in the library crates.

mod alerts;
mod config;
mod deadletter;
mod decode_pool;
mod generate;
mod membership;
mod progress;

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use journey_api::{router, system_clock, AppState, IngestLimits, Metrics};
use journey_core::query::{funnel, moments, touchpoints, transitions, Include, Summary};
use journey_core::time::Millis;
use journey_core::{ApplyError, DecodeLimits, Event, Rules};
use journey_ingest::{DeadLetter, Decoder, Format, Position};
use journey_runtime::checkpoint::{CheckpointOutcome, CheckpointReport, Checkpointer, StoredTask};
use journey_runtime::{RejectHook, Runtime, RuntimeConfig, RuntimeHandle, TaskId};
use journey_state::StateStore;
use serde_json::{json, Value};

use crate::config::Settings;

/// Events are allocated by the thread that decodes them and freed by the worker that applies
/// them; mimalloc handles such cross-thread frees without glibc's arena lock contention.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "journeyd",
    version,
    about = "Live customer-journey analytics: funnels, drop-offs and dwell from the events you already emit"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service with the given configuration.
    Run {
        /// Configuration file (default: built-in defaults; JOURNEYD_* variables override).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the service on a live synthetic stream (web, CRM, service): no Kafka needed.
    ///
    /// Backfills weeks of history first, then feeds customers live; a drop-off spike at the
    /// cart a few minutes after the start makes its alert go pending, then firing.
    Demo(DemoArgs),
    /// Process NDJSON files (or `-` for stdin) as fast as possible and print the figures as JSON.
    ///
    /// The figures cover the whole input, from its first event to its last: replay keeps
    /// every hour of the data, whatever `retention.total` says. `--from/--to` restrict them
    /// exactly as the same range queried over the API would; the output gives that range
    /// (`from`, `to`) in RFC 3339, UTC, as the API's answers do.
    Replay {
        /// Configuration file for the engine settings (session gap, journey window, …;
        /// default: built-in defaults; JOURNEYD_* variables override).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Rules file (default: rules.path from the configuration).
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Wire format: canonical, segment or cloudevents.
        #[arg(long, default_value = "canonical")]
        format: String,
        /// `source` of events that name none.
        #[arg(long, default_value = "file")]
        source: String,
        /// Report only figures filed at or after this time (RFC 3339, epoch milliseconds or
        /// `now-30d`), as the API's `from` (default: the input's first event).
        #[arg(long)]
        from: Option<String>,
        /// Report only figures filed before this time, as the API's `to` (default: just
        /// after the input's last event).
        #[arg(long)]
        to: Option<String>,
        /// Threads decoding the input in parallel, in input order (default: one per worker;
        /// 0 decodes on the thread that reads; at most 1024).
        #[arg(long)]
        decoders: Option<usize>,
        /// NDJSON files, read in order as one stream; `-` reads standard input.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Validate a rules file and print every problem.
    CheckRules { file: PathBuf },
    /// Synthetic journeys (web, CRM, service) as NDJSON to stdout or a file, or to Kafka.
    Generate(generate::GenerateArgs),
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Address to serve on (default: `http.listen` of the configuration or
    /// `JOURNEYD_HTTP__LISTEN`, 127.0.0.1:8080 unless set).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// New synthetic customers per minute, live and over the last 90 minutes of history.
    #[arg(long, default_value_t = 100)]
    customers_per_minute: usize,
    /// Configuration (default: `config/demo.toml`: persona segments, alerts on, short session
    /// gap so that alerts follow within minutes).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// How far back the backfilled history starts, e.g. `28d`.
    #[arg(long, default_value = "28d")]
    history: String,
    /// New customers per day in the history before its last 90 minutes.
    #[arg(long, default_value_t = 1_000)]
    history_per_day: usize,
    /// When the drop-off spike starts, after the live stream does (e.g. `3m`, `30s`).
    #[arg(long, default_value = "3m")]
    spike_after: String,
    /// How long the spike lasts (`0s`: for good).
    #[arg(long, default_value = "30m")]
    spike_for: String,
    /// The step whose visitors leave: product_page, compare, cart or checkout.
    #[arg(long, default_value = "cart")]
    spike_at: String,
    /// Extra probability of leaving at that step during the spike.
    #[arg(long, default_value_t = 0.7)]
    spike_abandon: f64,
    /// No spike.
    #[arg(long, conflicts_with_all = ["spike_after", "spike_for", "spike_at", "spike_abandon"])]
    no_spike: bool,
}

impl DemoArgs {
    fn feed(&self) -> Result<journey_gen::demo::DemoConfig> {
        use journey_core::time::parse_duration;
        use journey_core::time::{HumanDuration, DAY};
        use journey_gen::demo::{DemoConfig, DemoSpike};
        // Bounded, so that no flag overflows event time or backfills without end.
        let duration = |flag: &str, v: &str, max: Millis| {
            let d = parse_duration(v).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))?;
            if d > max {
                bail!("--{flag}: at most {}, got {v}", HumanDuration(max));
            }
            Ok(d)
        };
        let spike = if self.no_spike {
            None
        } else {
            let step = journey_gen::Step::parse(&self.spike_at).with_context(|| {
                format!(
                    "--spike-at: unknown step `{}` (expected one of: product_page, compare, \
                     cart, checkout)",
                    self.spike_at
                )
            })?;
            if !(0.0..=1.0).contains(&self.spike_abandon) {
                bail!(
                    "--spike-abandon: must be between 0 and 1, got {}",
                    self.spike_abandon
                );
            }
            let length = duration("spike-for", &self.spike_for, 365 * DAY)?;
            Some(DemoSpike {
                step,
                after: duration("spike-after", &self.spike_after, 30 * DAY)?,
                duration: (length > 0).then_some(length),
                abandon: self.spike_abandon,
            })
        };
        if self.customers_per_minute > 100_000 {
            bail!(
                "--customers-per-minute: at most 100000, got {}",
                self.customers_per_minute
            );
        }
        if self.history_per_day > 1_000_000 {
            bail!(
                "--history-per-day: at most 1000000, got {}",
                self.history_per_day
            );
        }
        Ok(DemoConfig {
            per_minute: self.customers_per_minute.max(1),
            history: duration("history", &self.history, 365 * DAY)?,
            history_per_day: self.history_per_day,
            spike,
            ..DemoConfig::default()
        })
    }
}

/// The demo's configuration when `--config` is not given (relative to the working directory,
/// as `config/rules.toml` is).
const DEMO_CONFIG: &str = "config/demo.toml";

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckRules { file } => check_rules(&file),
        Command::Generate(args) => generate::run(args),
        Command::Replay {
            config,
            rules,
            format,
            source,
            from,
            to,
            decoders,
            files,
        } => load_settings(config.as_deref()).and_then(|s| {
            let range = ReplayRange::parse(from.as_deref(), to.as_deref(), now_ms())?;
            let decoders = decoders.unwrap_or(s.runtime.workers);
            if decoders > config::MAX_WORKERS {
                bail!(
                    "--decoders: at most {} threads, got {decoders}",
                    config::MAX_WORKERS
                );
            }
            replay(s, rules, &format, &source, range, decoders, &files)
        }),
        Command::Run { config } => load_settings(config.as_deref()).and_then(|s| serve(s, None)),
        Command::Demo(args) => args.feed().and_then(|mut feed| {
            let config = args.config.clone().unwrap_or_else(|| DEMO_CONFIG.into());
            if args.config.is_none() && !config.exists() {
                bail!(
                    "cannot find {DEMO_CONFIG} in the working directory: run the demo from the \
                     repository root, or pass --config"
                );
            }
            let mut s = load_settings(Some(&config))?;
            if let Some(listen) = args.listen {
                s.http.listen = listen;
            }
            // A minute below the gap: a generated visit that paused longer would count as two
            // sessions, the first ending in a drop-off at checkout.
            let gap = s.engine.session_gap;
            feed.max_pause = Some(gap.saturating_sub(journey_core::time::MINUTE).max(gap / 2));
            serve(s, Some(feed))
        }),
    };
    if let Err(e) = result {
        fatal(&format!("{e:#}"));
        std::process::exit(1);
    }
}

/// The logger's format once [`init_logging`] has set it up (`true`: JSON); unset before.
static LOG_JSON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Says `why` journeyd stops, in one line on standard error. Once [`init_logging`] has set up
/// the logger, through it at level ERROR, so in `log.format`: a log shipper reading a JSON log
/// must be able to parse every line. Before that (command line, configuration) the format is
/// not known yet, and the line is plain text.
fn fatal(why: &str) {
    match LOG_JSON.get() {
        Some(_) if tracing::event_enabled!(tracing::Level::ERROR) => tracing::error!("{why}"),
        // `log.level` hides errors, but the reason to stop is still said, in the log's shape.
        // Written out in the logger's own key order, so the line reads as every other one.
        Some(true) => say(&format!(
            r#"{{"timestamp":"{}","level":"ERROR","fields":{{"message":{}}},"target":"journeyd"}}"#,
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            Value::String(why.to_string())
        )),
        _ => say(&format!("journeyd: {why}")),
    }
}

/// Writes `line` to standard error. Unlike `eprintln!` it does not panic when standard error
/// is a closed pipe (a log shipper that went away): journeyd must still shut down in order.
pub(crate) fn say(line: &str) {
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{line}\n").as_bytes());
}

fn load_settings(path: Option<&Path>) -> Result<Settings> {
    let env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    Settings::load(path, env).map_err(|e| anyhow::anyhow!("{e}"))
}

fn load_rules(path: &Path) -> Result<Rules> {
    let text = std::fs::read_to_string(path).with_context(|| {
        let relative = if path.is_relative() {
            format!(
                " (relative to the working directory {}: run from the repository root, or set \
                 rules.path / JOURNEYD_RULES__PATH to an absolute path)",
                std::env::current_dir().map_or_else(|_| "?".into(), |d| d.display().to_string())
            )
        } else {
            String::new()
        };
        format!("cannot read rules file {}{relative}", path.display())
    })?;
    Rules::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn check_rules(file: &Path) -> Result<()> {
    let rules = load_rules(file)?;
    print_line(&format!(
        "{}: ok, {} touchpoints in {} phases ({})",
        file.display(),
        rules.touchpoints().len(),
        rules.phases().len(),
        rules.phases().join(" → ")
    ))
}

fn init_logging(s: &Settings) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(&s.log.level).unwrap_or_else(|_| "info".into());
    // Colours only for a terminal: a log file or a journal would keep the escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        // A line that cannot be written is lost; reporting it with `eprintln!` would panic
        // the thread that logged when standard error is a closed pipe.
        .log_internal_errors(false);
    if s.log.json {
        builder.json().init();
    } else {
        builder.init();
    }
    let _ = LOG_JSON.set(s.log.json);
}

fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// `run` and `demo`: workers (restored from a checkpoint if there is one), sources, the HTTP
/// API, rule reloads, checkpoints, and a synthetic feed for `demo`.
fn serve(settings: Settings, demo: Option<journey_gen::demo::DemoConfig>) -> Result<()> {
    // First of all: a SIGTERM that found the default disposition would end the process at
    // once (status 143) whatever it was doing, such as the demo's backfill or waiting for
    // brokers.
    let mut shutdown = Shutdown::install(
        settings.runtime.shutdown_timeout,
        settings.state.url.is_some(),
    )?;
    init_logging(&settings);
    set_step("starting, before serving");
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    for d in &settings.deprecations {
        tracing::warn!("{d}");
    }
    let rules = Arc::new(load_rules(&settings.rules.path)?);
    settings.check_rules(&rules).map_err(anyhow::Error::msg)?;
    let metrics = Arc::new(Metrics::new());
    let (dead_letters, sink) =
        deadletter::Sink::start(&settings.dead_letter, &settings.kafka, metrics.clone())?;
    let on_reject = dead_letters.enabled().then(|| {
        let letters = dead_letters.clone();
        RejectHook(Arc::new(move |e: &Event<'static>, err: &ApplyError| {
            letters.send_blocking(DeadLetter {
                at: now_ms(),
                reason: err.reason(),
                error: err.to_string(),
                source: e.source.to_string(),
                position: Position::Engine,
                record: serde_json::to_vec(e).unwrap_or_default(),
            });
        }))
    });
    // With Kafka a task is one partition index of the input topics; otherwise a setting.
    let kafka_on = settings.kafka.enabled;
    let topology = if kafka_on {
        set_step("reading the partition counts of the input topics from Kafka");
        let kafka = settings.kafka.clone();
        let read = unless_shutdown(&tokio, &mut shutdown, move || {
            journey_kafka::topology(&kafka)
        })?;
        set_step("starting, before serving");
        match read {
            Some(topology) => Some(topology?),
            None => {
                // Nothing was taken in yet: nothing to apply or checkpoint.
                tracing::info!("shut down before serving, while reading from Kafka");
                drop((on_reject, dead_letters));
                sink.stop();
                return Ok(());
            }
        }
    } else {
        None
    };
    let tasks = topology
        .as_ref()
        .map_or(settings.runtime.serve_tasks(), |t| t.tasks);
    let engine = Arc::new(per_task(&settings.engine, tasks));
    let rc = RuntimeConfig {
        workers: settings.runtime.workers,
        tasks,
        partitioner: settings.kafka.partitioner,
        own_all_tasks: !kafka_on,
        channel_capacity: settings.runtime.channel_capacity,
        publish_interval: settings.runtime.publish_interval,
        tick_interval: settings.runtime.tick_interval,
        idle_timeout: settings.kafka.idle_timeout,
        max_task_idle: settings.kafka.max_task_idle,
        live: true,
        on_reject,
        worker_nice: settings.runtime.worker_nice,
    };
    let topics: Vec<String> = settings
        .kafka
        .topics
        .iter()
        .map(|t| t.name.clone())
        .collect();
    // Held until the process ends.
    let _state_lock = match (&settings.state.url, kafka_on) {
        (Some(url), false) => lock_state_dir(url)?,
        _ => None,
    };
    let mut checkpointer = match &settings.state.url {
        Some(url) => {
            let store = StateStore::open(url)?;
            let c = Checkpointer::new(
                store,
                tasks,
                settings.checkpoint.interval,
                checkpoint_report(metrics.clone()),
            );
            c.check_layout()
                .map_err(|e| anyhow::anyhow!("{e}; {}", restore_advice(&e, url)))?;
            Some(c)
        }
        None => {
            if demo.is_none() {
                tracing::warn!("state.url is not set: a restart starts with empty state");
            }
            None
        }
    };
    // Without Kafka every task is this instance's: restore them all now.
    let stored = match (&mut checkpointer, kafka_on) {
        (Some(c), false) => restore(c, &topics, &engine, &rules)?,
        _ => BTreeMap::new(),
    };
    // With Kafka, tasks start when their partitions are assigned and the Kafka thread
    // checkpoints between rounds; otherwise every task starts now and the service checkpoints.
    let (runtime, kafka, mut checkpointer) = if let Some(topology) = &topology {
        let runtime = Runtime::start(engine, rules, rc, Vec::new());
        let limits = DecodeLimits {
            max_record_bytes: settings.ingest.max_record_bytes,
            max_future: settings.ingest.max_future,
        };
        let source = journey_kafka::KafkaSource::start(
            &settings.kafka,
            topology,
            limits,
            runtime.handle(),
            metrics.clone(),
            dead_letters.clone(),
            checkpointer,
        )?;
        (runtime, Some(source), None)
    } else {
        let restored = stored.into_values().map(|s| s.task).collect();
        (
            Runtime::start(engine, rules, rc, restored),
            None,
            checkpointer,
        )
    };
    let handle = runtime.handle();
    // A consumer group sharing a state store: every instance answers for all tasks.
    let (cluster, members) = match (&settings.state.url, kafka_on) {
        (Some(url), true) => {
            let (c, thread) = start_cluster(&settings, url, &handle)?;
            (Some(c), Some(thread))
        }
        _ => (None, None),
    };
    let alerts = if settings.alerts.enabled {
        let a = alerts::start(
            &settings.alerts,
            format!("http://{}/", settings.http.listen),
            handle.clone(),
            metrics.clone(),
            match (&cluster, &settings.state.url) {
                (Some(c), Some(url)) => Some(alerts::Group {
                    cluster: c.clone(),
                    io: tokio.handle().clone(),
                    store: StateStore::open(url)?,
                }),
                _ => None,
            },
            &SHUTTING_DOWN,
        )
        .context("cannot start the alert thread")?;
        Some(a)
    } else {
        None
    };
    let result = tokio.block_on(async {
        let state = AppState {
            runtime: handle.clone(),
            metrics: metrics.clone(),
            limits: IngestLimits {
                write_keys: settings.http.segment_write_keys.clone(),
                max_body_bytes: settings.http.max_body_bytes,
                max_batch_events: settings.http.max_batch_events,
                max_record_bytes: settings.ingest.max_record_bytes,
                max_future: settings.ingest.max_future,
                default_source: settings.http.default_source.clone(),
                decode_nice: settings.runtime.worker_nice,
            },
            clock: system_clock(),
            tokens: settings.http.tokens.clone(),
            dead_letters: dead_letters.clone(),
            alerts: alerts.as_ref().map(|(board, _)| board.clone()),
            cluster: cluster.clone(),
        };
        let app = router(state).layer(axum::middleware::from_fn_with_state(
            settings.http.request_timeout,
            request_timeout,
        ));
        let listener = tokio::net::TcpListener::bind(settings.http.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.http.listen))?;
        // The history goes in before the first request is answered: on first open every
        // phase and touchpoint already has figures.
        let feed = match demo {
            Some(cfg) => {
                set_step("backfilling the demo's history");
                backfill(&handle, cfg, shutdown.clone()).await?
            }
            None => None,
        };
        if shutdown.requested() {
            // Signalled while starting (restoring tasks, backfilling): what was taken in so
            // far is applied and checkpointed below, as after serving.
            tracing::info!("shutting down before serving");
            return anyhow::Ok(());
        }
        tracing::info!(address = %listener.local_addr()?, workers = handle.workers(), "journeyd is serving");
        if handle.owned_tasks().is_empty() && settings.kafka.enabled {
            // Joining the group takes seconds (tens on some brokers): say why /readyz waits.
            tracing::info!(
                group = %settings.kafka.group_id,
                "not ready (/readyz answers 503) until the consumer group assigns partitions to \
                 this instance and their tasks are restored"
            );
        }
        for warning in open_access(settings.http.listen, &settings.http.tokens) {
            tracing::warn!("{warning}");
        }
        if settings.rules.watch {
            tokio::spawn(watch_rules(settings.rules.path.clone(), handle.clone()));
        }
        if let Some(feed) = feed {
            tokio::spawn(demo_feed(handle.clone(), feed));
        }
        let periodic = checkpointer.take().map(|c| {
            let rt = handle.clone();
            tokio::task::spawn_blocking(move || periodic_checkpoints(c, rt))
        });
        let signalled = Arc::new(tokio::sync::Notify::new());
        let notify = signalled.clone();
        let mut stop = shutdown.clone();
        let server = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                stop.wait().await;
                shutdown_step("answering the open HTTP requests");
                notify.notify_one();
            })
            .into_future();
        tokio::pin!(server);
        // Requests end within http.request_timeout, but a client that sent part of a request
        // and went quiet would hold the graceful shutdown for good.
        let drain = settings.http.request_timeout + Duration::from_secs(1);
        tokio::select! {
            served = &mut server => served?,
            () = async {
                signalled.notified().await;
                tokio::time::sleep(drain).await;
            } => tracing::warn!(
                "HTTP connections still open {drain:?} after the shutdown signal (a client that \
                 sent part of a request and went quiet): left behind, the shutdown goes on"
            ),
        }
        tracing::info!("shutting down");
        shutdown_step("stopping the periodic checkpoints");
        if let Some(p) = periodic {
            checkpointer = p.await.ok();
        }
        anyhow::Ok(())
    });
    SHUTTING_DOWN.store(true, Ordering::Relaxed);
    // Before the async runtime goes: the alert thread may be waiting on peers through it.
    shutdown_step("stopping the alert evaluator");
    if let Some((_, thread)) = alerts {
        let _ = thread.join();
    }
    // Deregisters: peers stop asking this instance at once instead of after the expiry.
    shutdown_step("leaving the cluster's membership");
    if let Some(thread) = members {
        let _ = thread.join();
    }
    drop(tokio);
    shutdown_step("stopping the Kafka consumer (its final checkpoint and offset commit)");
    if let Some(k) = kafka {
        k.stop();
    }
    let mut result = result;
    if let Some(mut c) = checkpointer {
        shutdown_step("writing the final checkpoint");
        let (written, _) = c.take(&handle, &|_| Vec::new(), &|_, _| false);
        // A clean exit would tell the orchestrator nothing was lost.
        if !written && result.is_ok() {
            result = Err(anyhow::anyhow!(
                "the checkpoint at shutdown was not written for every task (the log above names \
                 them and why): events ingested over HTTP since such a task's previous \
                 checkpoint are lost"
            ));
        }
    }
    drop(handle);
    drop(dead_letters);
    shutdown_step("applying the queued events and stopping the workers");
    runtime.shutdown();
    shutdown_step("writing the last dead letters");
    sink.stop();
    result
}

/// The group view of the API and the thread keeping this instance's membership entry.
fn start_cluster(
    settings: &Settings,
    url: &str,
    rt: &RuntimeHandle,
) -> Result<(
    Arc<journey_api::cluster::Cluster>,
    std::thread::JoinHandle<()>,
)> {
    let c = &settings.cluster;
    let advertised = c.advertised(settings.http.listen);
    let tokens = &settings.http.tokens;
    let cfg = journey_api::cluster::ClusterConfig {
        id: c.id(&advertised),
        url: advertised,
        peer_timeout: c.peer_timeout,
        member_expiry: Millis::try_from(c.member_expiry.as_millis()).unwrap_or(Millis::MAX),
        token: tokens.read.first().or(tokens.admin.first()).cloned(),
    };
    tracing::info!(id = %cfg.id, url = %cfg.url, "global queries: registering in the state store");
    let cluster = Arc::new(
        journey_api::cluster::Cluster::new(cfg)
            .context("cannot build the HTTP client for peers")?,
    );
    let thread = membership::start(
        StateStore::open(url)?,
        cluster.clone(),
        rt.clone(),
        c.heartbeat,
        &SHUTTING_DOWN,
    )
    .context("cannot start the membership thread")?;
    Ok((cluster, thread))
}

/// Checkpoints on schedule until the runtime stops; returns the checkpointer for the final one.
fn periodic_checkpoints(mut c: Checkpointer, rt: RuntimeHandle) -> Checkpointer {
    while !SHUTTING_DOWN.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if c.due() {
            c.take(&rt, &|_| Vec::new(), &|_, _| false);
        }
    }
    c
}

/// The engine settings of one task: `dedup.max_ids` bounds the ids remembered by the whole
/// instance, so each of `tasks` tasks keeps its share (at least one).
fn per_task(engine: &journey_core::EngineConfig, tasks: u32) -> journey_core::EngineConfig {
    journey_core::EngineConfig {
        dedup_max_ids: engine.dedup_max_ids.div_ceil(tasks.max(1) as usize).max(1),
        ..engine.clone()
    }
}

/// Counts checkpoint writes in the service's metrics.
fn checkpoint_report(metrics: Arc<Metrics>) -> CheckpointReport {
    Arc::new(move |outcome| match outcome {
        CheckpointOutcome::Written { .. } => {
            metrics.checkpoints.with_label_values(&["written"]).inc()
        }
        CheckpointOutcome::Failed => metrics.checkpoints.with_label_values(&["failed"]).inc(),
        CheckpointOutcome::Fenced => metrics.checkpoint_fenced.inc(),
        CheckpointOutcome::Restored { seconds } => {
            metrics.task_restores.inc();
            metrics.task_restore_seconds.observe(seconds);
        }
        CheckpointOutcome::Round { bytes, at_ms } => {
            metrics.checkpoint_bytes.set(bytes as i64);
            metrics.checkpoint_last_success.set(at_ms / 1000);
        }
    })
}

/// Locks the directory of a `file://` state store for this process (`None` for other
/// stores). An instance without Kafka claims every task, so a second one on the same
/// directory fences the first, which then loses the HTTP input it took in since its last
/// checkpoint. The operating system releases the lock when the process ends, however it ends.
fn lock_state_dir(url: &str) -> Result<Option<std::fs::File>> {
    let Some(dir) = url.strip_prefix("file://") else {
        return Ok(None);
    };
    let path = Path::new(dir).join(".journeyd.lock");
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the state directory {dir}"))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the state lock {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another journeyd without Kafka uses the state directory {dir} (it holds {}): each \
             claims every task, so one would lose the events it took in since its last \
             checkpoint; give each instance its own [state] url, or run them as a consumer \
             group with Kafka",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// What to do when restoring from the store at `url` failed with `e`. Only checkpoints that
/// cannot be used are worth moving away; a store that cannot be read (network, credentials,
/// permissions) may hold good ones.
fn restore_advice(e: &journey_runtime::checkpoint::RestoreError, url: &str) -> String {
    if e.is_unusable_checkpoint() {
        move_away(url)
    } else {
        format!("check that the state store {url} is reachable and readable, then start again")
    }
}

/// What to do about a store whose checkpoints cannot be used.
fn move_away(url: &str) -> String {
    match url.strip_prefix("file://") {
        Some(dir) => {
            format!("to start with empty state instead, move the files in {dir} out of the way")
        }
        None => {
            format!("to start with empty state instead, delete or move the objects under {url}")
        }
    }
}

/// Claims and restores every task from the state store (no Kafka: this instance owns them
/// all). One that cannot be used whole stops the start: starting empty instead would
/// silently lose what it holds.
fn restore(
    c: &mut Checkpointer,
    topics: &[String],
    cfg: &Arc<journey_core::EngineConfig>,
    rules: &Arc<Rules>,
) -> Result<BTreeMap<TaskId, StoredTask>> {
    let url = c.store().url().to_string();
    let stored = c
        .restore_all(topics, cfg, rules)
        .map_err(|e| anyhow::anyhow!("{e}; {}", restore_advice(&e, &url)))?;
    if stored.is_empty() {
        tracing::info!(state = %url, "no checkpoint yet; starting with empty state");
    } else {
        let customers: usize = stored.values().map(|s| s.task.shard.customers()).sum();
        tracing::info!(state = %url, tasks = stored.len(), customers, "restored task checkpoints");
    }
    Ok(stored)
}

/// What anyone who can reach `listen` may do without a token: one sentence per kind of access
/// left open, none when `listen` is a loopback address (reachable from this host only).
fn open_access(listen: std::net::SocketAddr, tokens: &journey_api::auth::Tokens) -> Vec<String> {
    if listen.ip().is_loopback() {
        return Vec::new();
    }
    [
        (
            &tokens.read,
            "read",
            "read every figure, customer journeys and /metrics",
        ),
        (&tokens.ingest, "ingest", "send events"),
        (&tokens.admin, "admin", "replace the rules (PUT /v1/rules)"),
    ]
    .into_iter()
    .filter(|(list, _, _)| list.is_empty())
    .map(|(_, kind, what)| {
        format!(
            "http.listen {listen} is reachable from other hosts and http.{kind}_tokens is \
             empty: anyone who can reach it may {what} (docs/operations.md, \"Access tokens\")"
        )
    })
    .collect()
}

/// Set once a shutdown signal arrives.
static SHUTTING_DOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Abandons requests that take longer than `http.request_timeout`.
async fn request_timeout(
    axum::extract::State(limit): axum::extract::State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => axum::response::IntoResponse::into_response(journey_api::Problem::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "the request took longer than http.request_timeout and was abandoned; an ingest \
             request whose events were already being queued still applies them in full, so \
             retry with event ids (duplicates within dedup.horizon are dropped)",
        )),
    }
}

/// What journeyd is doing (starting, or a step of the orderly shutdown), for the message of
/// [`arm_shutdown_deadline`].
static SHUTDOWN_STEP: std::sync::Mutex<&str> = std::sync::Mutex::new("");

fn set_step(step: &'static str) {
    *SHUTDOWN_STEP.lock().unwrap_or_else(|p| p.into_inner()) = step;
}

fn current_step() -> &'static str {
    *SHUTDOWN_STEP.lock().unwrap_or_else(|p| p.into_inner())
}

fn shutdown_step(step: &'static str) {
    tracing::debug!("shutdown: {step}");
    set_step(step);
}

/// SIGTERM and SIGINT (Ctrl-C), each as a stream: registered once, they are caught from
/// then on, even between two waits.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Registers the handlers; within a Tokio runtime with I/O enabled.
    fn register() -> Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
                int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The name of the next signal received.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// Whether the orderly shutdown was requested (a SIGTERM or Ctrl-C since `serve` began).
/// Each phase of `serve`, from the start to the end of serving, stops when it is.
#[derive(Clone)]
struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    /// Catches SIGTERM and Ctrl-C from now until the process ends, on a thread of its own: the
    /// service's Tokio runtime goes before the end of the shutdown. The first signal sets
    /// [`SHUTTING_DOWN`], requests the shutdown and arms its deadline (`limit`, `checkpoints`:
    /// see [`arm_shutdown_deadline`]); a second one ends the process at once with status 1,
    /// as the deadline would.
    fn install(limit: Duration, checkpoints: bool) -> Result<Shutdown> {
        let io = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("cannot start the signal thread's runtime")?;
        let mut signals = {
            let _in = io.enter();
            Signals::register()?
        };
        let (requested, rx) = tokio::sync::watch::channel(false);
        std::thread::Builder::new()
            .name("journeyd-signals".into())
            .spawn(move || {
                io.block_on(async move {
                    let signal = signals.recv().await;
                    // The request and the deadline before any log line: writing the line may
                    // fail (standard error a closed pipe) and must not keep them from happening.
                    SHUTTING_DOWN.store(true, Ordering::Relaxed);
                    arm_shutdown_deadline(limit, checkpoints);
                    let _ = requested.send(true);
                    tracing::info!(
                        "{signal}: shutting down (a second SIGTERM or Ctrl-C ends journeyd at once)"
                    );
                    // Whoever sends a second signal would rather lose what the orderly
                    // shutdown keeps than wait for it (Kafka Streams, Vector, Prometheus).
                    let again = signals.recv().await;
                    exit_now(&format!(
                        "a second signal ({again}) while the shutdown was {}: journeyd exits now \
                         without finishing it: {}",
                        current_step(),
                        lost(checkpoints)
                    ));
                })
            })
            .context("cannot start the signal thread")?;
        Ok(Shutdown(rx))
    }

    /// Whether the shutdown was requested.
    fn requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Returns once the shutdown is requested.
    async fn wait(&mut self) {
        if self.0.wait_for(|r| *r).await.is_err() {
            // The signal thread is gone: no request can come any more.
            std::future::pending::<()>().await;
        }
    }
}

/// Runs `work` on a thread of its own and returns what it returns, or `None` as soon as the
/// shutdown is requested. A blocking call (a metadata request to brokers that do not answer)
/// cannot be interrupted: it is left behind, and the process ends without waiting for it.
fn unless_shutdown<T: Send + 'static>(
    tokio: &tokio::runtime::Runtime,
    shutdown: &mut Shutdown,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<Option<T>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("journeyd-start".into())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .context("cannot start a thread")?;
    tokio.block_on(async {
        tokio::select! {
            done = rx => done.map(Some).context("a starting thread stopped"),
            () = shutdown.wait() => Ok(None),
        }
    })
}

/// Ends the process with status 1 unless the orderly shutdown that starts now returns from
/// `main` within `limit`: a state store or broker that stopped answering, or rules slow
/// enough that the queued records take longer to apply, would otherwise hold the exit until
/// the orchestrator's SIGKILL, which says nothing.
/// `checkpoints`: whether a state store keeps them (`state.url`), which decides what is lost.
fn arm_shutdown_deadline(limit: Duration, checkpoints: bool) {
    let spawned = std::thread::Builder::new()
        .name("journeyd-shutdown-deadline".into())
        .spawn(move || {
            std::thread::sleep(limit);
            let why = format!(
                "the shutdown did not finish within runtime.shutdown_timeout ({limit:?}) and \
                 was stuck {}, so journeyd exits now: {}",
                current_step(),
                lost(checkpoints)
            );
            exit_now(&why);
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot arm the shutdown deadline: {e}");
    }
}

/// What an exit before the end of the orderly shutdown loses, and where a restart resumes;
/// `checkpoints`: whether a state store keeps them (`state.url`).
fn lost(checkpoints: bool) -> &'static str {
    if checkpoints {
        "tasks whose final checkpoint was not written restart from their previous checkpoint \
         (Kafka input is read again, HTTP input since then is lost)"
    } else {
        "state.url is not set, so the state held in memory is lost (Kafka input is read again \
         from the committed offsets)"
    }
}

/// Ends the process at once with status 1, after saying `why` in one line ([`fatal`]). The
/// logger writes each line to standard error as it is made, with no buffer or background
/// thread, so the line is out before `exit`; the flush only makes sure.
fn exit_now(why: &str) -> ! {
    fatal(why);
    let _ = std::io::Write::flush(&mut std::io::stderr());
    std::process::exit(1);
}

/// Reloads the rules file when it changes; an invalid file is reported and the old rules stay.
async fn watch_rules(path: PathBuf, rt: RuntimeHandle) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last = modified(&path);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = modified(&path);
        if now == last {
            continue;
        }
        last = now;
        match load_rules(&path) {
            Ok(rules) => {
                if rt.set_rules(Arc::new(rules)).await.is_err() {
                    return;
                }
                tracing::info!(path = %path.display(), "rules reloaded");
            }
            Err(e) => tracing::error!(
                "rules file changed but was rejected, the current rules stay: {e:#}"
            ),
        }
    }
}

/// Generates the demo's history ([`journey_gen::demo`]) and submits it in time order. No
/// flush: that would close every open session as at the end of a replay. `None` when the
/// shutdown is requested first: the generator is left behind, and what was submitted stays.
async fn backfill(
    rt: &RuntimeHandle,
    cfg: journey_gen::demo::DemoConfig,
    mut shutdown: Shutdown,
) -> Result<Option<journey_gen::demo::DemoFeed>> {
    let started = Instant::now();
    let (history, per_day, spike) = (cfg.history, cfg.history_per_day, cfg.spike);
    let mut feed = journey_gen::demo::DemoFeed::new(cfg, now_ms());
    // A thread of its own rather than spawn_blocking: dropping the Tokio runtime would wait
    // for the generator to finish.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("journeyd-demo-history".into())
        .spawn(move || {
            let events = feed.backfill();
            let _ = tx.send((feed, events));
        })
        .context("cannot start the demo generator")?;
    let (feed, events) = tokio::select! {
        generated = rx => generated.context("the demo generator stopped")?,
        () = shutdown.wait() => return Ok(None),
    };
    let generated = started.elapsed();
    let count = events.len();
    let mut events = events.into_iter();
    loop {
        let chunk: Vec<Event<'static>> = events.by_ref().take(8_192).collect();
        if chunk.is_empty() {
            break;
        }
        tokio::select! {
            submitted = rt.submit(chunk) => submitted.map_err(|e| anyhow::anyhow!("{e}"))?,
            () = shutdown.wait() => return Ok(None),
        }
    }
    tracing::info!(
        events = count,
        days = history / journey_core::time::DAY,
        customers_per_day = per_day,
        generated_s = format!("{:.1}", generated.as_secs_f64()),
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "demo: history backfilled; going live"
    );
    if let Some(s) = spike {
        tracing::info!(
            step = s.step.name(),
            after_s = s.after / 1000,
            for_s = s.duration.map(|d| d / 1000),
            abandon = s.abandon,
            "demo: drop-off spike scheduled"
        );
    }
    Ok(Some(feed))
}

/// Submits the demo's events as their time comes (every 250 ms).
async fn demo_feed(rt: RuntimeHandle, mut feed: journey_gen::demo::DemoFeed) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let ready = feed.due(now_ms());
        if !ready.is_empty() && rt.submit(ready).await.is_err() {
            return;
        }
    }
}

/// The range `replay` reports, each end as the API's `from`/`to` parameters are written.
#[derive(Debug, Clone, Copy, Default)]
struct ReplayRange {
    /// Epoch milliseconds, inclusive; `None`: the input's first event.
    from: Option<Millis>,
    /// Epoch milliseconds, exclusive; `None`: just after the input's last event.
    to: Option<Millis>,
}

impl ReplayRange {
    fn parse(from: Option<&str>, to: Option<&str>, now: Millis) -> Result<ReplayRange> {
        let time = |flag: &str, v: Option<&str>| {
            v.map(|v| {
                journey_api::range::parse_time(v, now).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
            })
            .transpose()
        };
        let range = ReplayRange {
            from: time("--from", from)?,
            to: time("--to", to)?,
        };
        if let (Some(f), Some(t)) = (range.from, range.to) {
            if f >= t {
                bail!("--from must be before --to");
            }
        }
        Ok(range)
    }
}

/// `replay`: decode files as fast as possible with all workers, then print the figures.
///
/// The reading thread cuts the input into chunks of lines; `decoders` threads decode them
/// ([`decode_pool`]; 0: the reading thread decodes), and the reading thread submits the events
/// in input order. Retention follows the data: hour buckets are kept for the whole accepted
/// time range (2000–2100), so memory grows with the span of the input, one hour bucket per
/// hour it covers, and nothing is dropped as `expired`. Minute buckets keep `retention.fine`.
fn replay(
    settings: Settings,
    rules: Option<PathBuf>,
    format: &str,
    source: &str,
    range: ReplayRange,
    decoders: usize,
    files: &[PathBuf],
) -> Result<()> {
    let rules_path = rules.unwrap_or_else(|| settings.rules.path.clone());
    let rules = Arc::new(load_rules(&rules_path)?);
    settings.check_rules(&rules).map_err(anyhow::Error::msg)?;
    let format = Format::parse(format, None).map_err(|e| anyhow::anyhow!("--format: {e}"))?;
    let decoder = Decoder::new(
        format,
        source,
        DecodeLimits {
            max_record_bytes: settings.ingest.max_record_bytes,
            max_future: settings.ingest.max_future,
        },
    );
    let tasks = settings.runtime.replay_tasks();
    let rc = RuntimeConfig {
        workers: settings.runtime.workers,
        tasks,
        partitioner: settings.kafka.partitioner,
        own_all_tasks: true,
        channel_capacity: settings.runtime.channel_capacity,
        publish_interval: Duration::from_secs(3600),
        tick_interval: Duration::from_secs(3600),
        idle_timeout: settings.kafka.idle_timeout,
        max_task_idle: settings.kafka.max_task_idle,
        live: false,
        on_reject: None,
        worker_nice: 0,
    };
    let engine = journey_core::EngineConfig {
        retention_total: journey_core::time::MAX_EVENT_TIME - journey_core::time::MIN_EVENT_TIME,
        ..per_task(&settings.engine, tasks)
    };
    let runtime = Runtime::start(Arc::new(engine), rules.clone(), rc, Vec::new());
    let rt = runtime.handle();
    let decoder = decoder.with_projection(rt.projection());
    let total_bytes = files
        .iter()
        .map(|f| {
            (f.as_os_str() != "-")
                .then(|| std::fs::metadata(f).ok().map(|m| m.len()))
                .flatten()
        })
        .sum::<Option<u64>>();
    let bar = progress::bar(total_bytes, "lines");
    let started = Instant::now();
    let (mut read, mut accepted) = (0u64, 0u64);
    let mut rejected: std::collections::BTreeMap<&'static str, u64> = Default::default();
    let mut submit_error = None;
    let mut pool = decode_pool::DecodePool::new(decoder, decoders, 0)
        .context("cannot start the decoding threads")?;
    // Decoded chunks, in input order: submitted at once, so a chunk's events reach the
    // workers while later chunks are still being read and decoded.
    let mut ready = |d: decode_pool::Decoded| {
        read += d.lines;
        if total_bytes.is_none() {
            bar.set_position(read);
        }
        bar.set_message(format!("{read} lines"));
        accepted += d.events.len() as u64;
        for reason in d.rejected {
            *rejected.entry(reason).or_default() += 1;
        }
        if submit_error.is_none() && !d.events.is_empty() {
            if let Err(e) = rt.submit_blocking(d.events) {
                submit_error = Some(e);
            }
        }
    };
    let mut on_read = |n: u64| {
        if total_bytes.is_some() {
            bar.inc(n);
        }
    };
    for file in files {
        let input: Box<dyn std::io::Read> = if file.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(
                std::fs::File::open(file)
                    .with_context(|| format!("cannot open {}", file.display()))?,
            )
        };
        pool.read_input(input, &mut on_read, &mut ready)
            .with_context(|| format!("cannot read {}", file.display()))?;
    }
    pool.finish(&mut ready);
    if let Some(e) = submit_error {
        bail!("{e}");
    }
    rt.flush_blocking().map_err(|e| anyhow::anyhow!("{e}"))?;
    bar.finish_with_message(format!(
        "{read} lines, {accepted} accepted in {:.2} s",
        started.elapsed().as_secs_f64()
    ));
    if !rejected.is_empty() {
        // The figures leave these out: say so where a user looks, not only in the JSON.
        let reasons: Vec<String> = rejected.iter().map(|(r, n)| format!("{r} {n}")).collect();
        say(&format!(
            "journeyd replay: {} of {read} lines rejected ({}), left out of the figures; \
             reasons: docs/operations.md, \"Dead letters\"",
            read - accepted,
            reasons.join(", ")
        ));
    }
    let parts = rt.partials();
    let span = parts.iter().filter_map(|p| p.time_span()).fold(
        None,
        |acc: Option<(Millis, Millis)>, (a, b)| {
            Some(acc.map_or((a, b), |(x, y)| (x.min(a), y.max(b))))
        },
    );
    let (first, last) = span.unwrap_or((0, 0));
    let (from, to) = (range.from.unwrap_or(first), range.to.unwrap_or(last));
    let sum = Summary::collect(
        parts.iter().map(|p| p.as_ref()),
        from,
        to,
        &Include::default(),
    );
    let stats = rt.stats();
    // Moments of truth for every goal phase the tasks track, the first being the API's default.
    let goals = parts.first().map_or_else(
        || settings.engine.moment_goals(&rules),
        |p| p.moment_goals.clone(),
    );
    let moments: Vec<_> = goals.iter().map(|g| moments(&sum, &rules, g)).collect();
    let out = json!({
        "events": {
            "read": read,
            "accepted": accepted,
            "rejected": rejected,
            "applied": stats.applied.load(Ordering::Relaxed),
            "classified": sum.counters.classified,
            "unclassified": sum.counters.unclassified,
            "late": stats.late.load(Ordering::Relaxed),
            "duplicates": stats.duplicates.load(Ordering::Relaxed),
            "expired": sum.counters.expired,
            "rejected_by_engine": { "too_many_events": stats.rejected_too_many_events.load(Ordering::Relaxed) },
        },
        "from": rfc3339(from),
        "to": rfc3339(to),
        "sessions": sum.sessions,
        "funnel": funnel(&sum, rules.phases(), None, settings.engine.breakdown_max_values),
        "touchpoints": touchpoints(&sum, &rules),
        "transitions": transitions(&sum),
        "moments": moments,
    });
    runtime.shutdown();
    print_line(&serde_json::to_string_pretty(&out)?)
}

/// `t` as the HTTP API writes the times of its answers (`from`, `to`: RFC 3339 in UTC, to the
/// millisecond), so that a replay's output reads, and compares, as the API's answers do.
/// A time chrono cannot represent stays epoch milliseconds, as in the API.
fn rfc3339(t: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(t).map_or_else(
        || t.to_string(),
        |d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// Writes `text` and a line end to standard output. A failed write (a closed pipe, a full
/// disk) is an error naming standard output, where `println!` would panic.
fn print_line(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .context("cannot write to standard output")
}

#[cfg(test)]
mod tests {
    use super::{open_access, per_task, Cli, Command};
    use clap::Parser;
    use journey_core::EngineConfig;

    /// `journeyd demo` flags are bounded: none overflows event time or backfills without end.

    #[test]
    fn open_access_beyond_loopback_is_named_per_kind() {
        let tokens = journey_api::auth::Tokens {
            read: vec!["read-token-0123456789".into()],
            ..Default::default()
        };
        assert!(open_access("127.0.0.1:8080".parse().unwrap(), &tokens).is_empty());
        assert!(open_access("[::1]:8080".parse().unwrap(), &tokens).is_empty());
        let open = open_access("0.0.0.0:8080".parse().unwrap(), &tokens);
        assert_eq!(open.len(), 2, "{open:?}");
        assert!(open[0].contains("http.ingest_tokens is empty") && open[0].contains("send events"));
        assert!(open[1].contains("http.admin_tokens") && open[1].contains("PUT /v1/rules"));
        assert!(
            !open.iter().any(|w| w.contains("read-token")),
            "never a token in a log"
        );
    }
    #[test]
    fn demo_flags_out_of_bounds_are_refused_naming_the_flag() {
        let feed = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["journeyd", "demo"], args].concat()).unwrap();
            let Command::Demo(demo) = cli.command else {
                panic!("a demo command")
            };
            demo.feed().map(|_| ()).map_err(|e| e.to_string())
        };
        assert_eq!(feed(&[]), Ok(()));
        assert_eq!(feed(&["--spike-for", "0s"]), Ok(()));
        for (args, flag) in [
            (&["--history", "400d"][..], "--history: at most"),
            (&["--spike-after", "100000d"][..], "--spike-after: at most"),
            (
                &["--history-per-day", "999999999"][..],
                "--history-per-day: at most",
            ),
            (
                &["--customers-per-minute", "999999999"][..],
                "--customers-per-minute: at most",
            ),
        ] {
            let err = feed(args).unwrap_err();
            assert!(err.starts_with(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn remembered_event_ids_are_split_over_the_tasks() {
        let engine = EngineConfig {
            dedup_max_ids: 1_000_000,
            ..EngineConfig::default()
        };
        assert_eq!(per_task(&engine, 1).dedup_max_ids, 1_000_000);
        assert_eq!(per_task(&engine, 12).dedup_max_ids, 83_334);
        let few = EngineConfig {
            dedup_max_ids: 3,
            ..EngineConfig::default()
        };
        assert_eq!(
            per_task(&few, 64).dedup_max_ids,
            1,
            "every task keeps at least one"
        );
        assert_eq!(per_task(&engine, 12).session_gap, engine.session_gap);
    }
}
