//! `journeyd generate`: synthetic journeys as NDJSON to stdout or a file, or produced to Kafka
//! at a target rate. Events stream from the generator, so memory stays flat at any size.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use journey_core::time::{parse_duration, Millis};
use journey_core::Event;
use journey_gen::{
    to_canonical_json, to_cloudevents_json, to_segment_json, GenConfig, Payload, Spike, Step,
};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Customers whose journeys start within `--span` (each has one or more sessions, some
    /// returning weeks later).
    #[arg(long, default_value_t = 10_000)]
    customers: usize,
    /// Seed of the random generator: the same seed and flags give the same events.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// canonical, segment or cloudevents.
    #[arg(long, default_value = "canonical")]
    format: String,
    /// compact (the attributes the rules read, about 160 bytes per canonical line) or
    /// realistic (Segment-like `context` and 8-15 properties, about 1 KB per line; the same
    /// journeys and figures).
    #[arg(long, default_value = "compact")]
    payload: String,
    /// Share of events delivered out of order (within 4 minutes).
    #[arg(long, default_value_t = 0.0)]
    out_of_order: f64,
    /// Journeys start within `--span` from this time (RFC 3339).
    #[arg(long, default_value = "2026-11-20T00:00:00Z")]
    start: String,
    /// How long journeys keep starting, e.g. `1d` or `7d`.
    #[arg(long, default_value = "1d")]
    span: String,
    /// Only events of this source (web, crm or service), e.g. one file per Kafka topic.
    /// Segment and CloudEvents records carry no source: replay them with `--source`.
    #[arg(long)]
    only_source: Option<String>,
    /// Drop-off spike: visitors leave at this step (product_page, compare, cart, checkout)...
    #[arg(long)]
    spike: Option<String>,
    /// ...from this time (RFC 3339)...
    #[arg(long, requires = "spike")]
    spike_from: Option<String>,
    /// ...until this time (RFC 3339; default: no end)...
    #[arg(long, requires = "spike")]
    spike_until: Option<String>,
    /// ...with this extra probability.
    #[arg(long, default_value_t = 0.5, requires = "spike")]
    spike_abandon: f64,
    /// Write to this file instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Produce to Kafka (bootstrap servers) instead of writing NDJSON; needs `--topic`.
    #[arg(long, requires = "topic")]
    kafka_brokers: Option<String>,
    /// Kafka topic to produce to (with `--kafka-brokers`), keyed by customer id.
    #[arg(long)]
    topic: Option<String>,
    /// Extra librdkafka producer property, `key=value` (repeatable), e.g. for SASL/SSL.
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    kafka_property: Vec<String>,
    /// Events per second to produce or write (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

impl GenerateArgs {
    fn config(&self) -> Result<GenConfig> {
        if !(0.0..=1.0).contains(&self.out_of_order) {
            bail!(
                "--out-of-order: must be between 0 and 1, got {}",
                self.out_of_order
            );
        }
        let time = |flag: &str, v: &str| -> Result<Millis> {
            journey_core::event::parse_rfc3339(v)
                .with_context(|| format!("{flag}: `{v}` is not an RFC 3339 time"))
        };
        let start = time("--start", &self.start)?;
        let span = parse_duration(&self.span).map_err(|e| anyhow::anyhow!("--span: {e}"))?;
        let spike = match &self.spike {
            None => None,
            Some(step) => {
                let step = Step::parse(step).with_context(|| {
                    let names: Vec<_> = Step::ALL.iter().map(|s| s.name()).collect();
                    format!(
                        "--spike: unknown step `{step}` (expected one of: {})",
                        names.join(", ")
                    )
                })?;
                if !(0.0..=1.0).contains(&self.spike_abandon) {
                    bail!(
                        "--spike-abandon: must be between 0 and 1, got {}",
                        self.spike_abandon
                    );
                }
                let from = match &self.spike_from {
                    Some(t) => time("--spike-from", t)?,
                    None => start + span / 2,
                };
                let until = match &self.spike_until {
                    Some(t) => Some(time("--spike-until", t)?),
                    None => None,
                };
                if until.is_some_and(|u| u <= from) {
                    bail!("--spike-until: must be after the spike's start");
                }
                Some(Spike {
                    step,
                    from,
                    until,
                    abandon: self.spike_abandon,
                })
            }
        };
        Ok(GenConfig {
            seed: self.seed,
            customers: self.customers,
            start,
            span,
            out_of_order: self.out_of_order,
            spike,
            ..GenConfig::default()
        })
    }
}

/// Sleeps as needed to hold `rate` events per second, checked every 1 000 events.
struct Pace {
    rate: u64,
    started: Instant,
}

impl Pace {
    fn wait(&self, done: u64) {
        if self.rate == 0 || !done.is_multiple_of(1_000) {
            return;
        }
        let due = Duration::from_secs_f64(done as f64 / self.rate as f64);
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let encode: fn(&Event<'_>) -> String = match args.format.as_str() {
        "canonical" => to_canonical_json,
        "segment" => to_segment_json,
        "cloudevents" => to_cloudevents_json,
        other => bail!(
            "--format: unknown format `{other}` (expected one of: canonical, segment, cloudevents)"
        ),
    };
    let payload = Payload::parse(&args.payload).with_context(|| {
        format!(
            "--payload: unknown payload `{}` (expected one of: compact, realistic)",
            args.payload
        )
    })?;
    let cfg = args.config()?;
    // Events a service or replay would reject as dated in the future (`ingest.max_future`).
    let horizon = crate::now_ms().saturating_add(journey_core::time::DAY);
    let future = std::cell::Cell::new(0u64);
    let events = journey_gen::stream(&cfg)
        .filter(|e| args.only_source.as_deref().is_none_or(|s| s == e.source))
        .inspect(|e| future.set(future.get() + u64::from(e.ts > horizon)))
        .map(|e| payload.apply(e, cfg.seed));
    let pace = Pace {
        rate: args.rate,
        started: Instant::now(),
    };
    let bar = crate::progress::bar(None, "events");
    let mut n = 0u64;
    let report = |n: u64| {
        if n.is_multiple_of(4096) {
            bar.set_position(n);
        }
    };
    if let Some(brokers) = &args.kafka_brokers {
        let topic = args.topic.as_deref().unwrap_or_default();
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", brokers)
            .set("linger.ms", "5")
            .set("compression.type", "lz4");
        for kv in &args.kafka_property {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("-X: expected key=value, got `{kv}`"))?;
            cc.set(k, v);
        }
        let producer: BaseProducer = cc.create().context("cannot create the Kafka producer")?;
        // Without a broker, sends would queue and wait for good: fail fast and say where.
        producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("cannot reach Kafka at {brokers} within 10 s"))?;
        for e in events {
            let line = encode(&e);
            let mut record = BaseRecord::to(topic).key(&*e.customer_id).payload(&line);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => return Err(e).context("cannot produce to Kafka"),
                }
            }
            producer.poll(Duration::ZERO);
            n += 1;
            pace.wait(n);
            report(n);
        }
        producer
            .flush(Duration::from_secs(60))
            .context("Kafka did not acknowledge every event within 60 s")?;
    } else {
        let sink: Box<dyn Write> = match &args.output {
            Some(p) => Box::new(
                std::fs::File::create(p)
                    .with_context(|| format!("cannot create {}", p.display()))?,
            ),
            None => Box::new(std::io::stdout().lock()),
        };
        let mut out = std::io::BufWriter::with_capacity(1 << 20, sink);
        for e in events {
            writeln!(out, "{}", encode(&e))?;
            n += 1;
            pace.wait(n);
            report(n);
        }
        out.flush()?;
    }
    bar.set_position(n);
    bar.finish();
    if future.get() > 0 {
        crate::say(&format!(
            "journeyd generate: {} of {n} events are dated more than a day after now, which \
             journeyd rejects (ingest.max_future); journeys run weeks past --start, so pass an \
             earlier --start to have every event accepted",
            future.get()
        ));
    }
    Ok(())
}
