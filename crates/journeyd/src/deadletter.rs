//! The dead-letter sinks: an NDJSON file or a Kafka topic, each drained by a thread of its own.
//!
//! Dead letters are at-least-once: a record rejected again after a restart from a checkpoint
//! is written again. Consumers of the sink can key on source and position.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use journey_api::Metrics;
use journey_ingest::{DeadLetter, DeadLetters, Position};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use crate::config::{DeadLetterSettings, KafkaSettings};

/// Dead letters waiting for the sink before sources wait.
const QUEUE: usize = 10_000;

/// A running sink; [`Sink::stop`] drains what is queued.
#[derive(Debug)]
pub struct Sink {
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    /// Starts the configured sink and returns the handle sources send through.
    pub fn start(
        settings: &DeadLetterSettings,
        kafka: &KafkaSettings,
        metrics: Arc<Metrics>,
    ) -> Result<(DeadLetters, Sink)> {
        let (letters, rx) = DeadLetters::channel(QUEUE);
        let thread = match settings {
            DeadLetterSettings::None => {
                return Ok((DeadLetters::disabled(), Sink { thread: None }));
            }
            DeadLetterSettings::File(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| {
                        format!("cannot open the dead-letter file {}", path.display())
                    })?;
                tracing::info!(path = %path.display(), "dead letters go to a file");
                let path = path.clone();
                std::thread::Builder::new()
                    .name("journeyd-dead-letters".into())
                    .spawn(move || write_file(file, path, rx, metrics))?
            }
            DeadLetterSettings::Kafka { topic } => {
                let mut cfg = ClientConfig::new();
                cfg.set("bootstrap.servers", &kafka.brokers);
                for (k, v) in &kafka.properties {
                    cfg.set(k, v);
                }
                cfg.set("enable.idempotence", "true");
                let ctx = Delivery {
                    written: metrics
                        .dead_letters
                        .with_label_values(&["kafka", "written"]),
                    failed: metrics.dead_letters.with_label_values(&["kafka", "failed"]),
                };
                let producer: ThreadedProducer<Delivery> = cfg
                    .create_with_context(ctx)
                    .context("cannot create the dead-letter Kafka producer")?;
                tracing::info!(topic, "dead letters go to a Kafka topic");
                let topic = topic.clone();
                std::thread::Builder::new()
                    .name("journeyd-dead-letters".into())
                    .spawn(move || produce(producer, topic, rx))?
            }
        };
        Ok((
            letters,
            Sink {
                thread: Some(thread),
            },
        ))
    }

    /// Waits for every dead letter sent so far to be written. Call after dropping every
    /// [`DeadLetters`] handle (sources and the API), or it waits for them.
    pub fn stop(self) {
        if let Some(t) = self.thread {
            let _ = t.join();
        }
    }
}

fn write_file(
    file: std::fs::File,
    path: PathBuf,
    rx: flume::Receiver<DeadLetter>,
    metrics: Arc<Metrics>,
) {
    let written = metrics.dead_letters.with_label_values(&["file", "written"]);
    let failed = metrics.dead_letters.with_label_values(&["file", "failed"]);
    let mut out = BufWriter::new(file);
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let mut ok = true;
        for dl in &batch {
            ok &= out.write_all(&dl.to_ndjson()).is_ok();
        }
        // Flush whenever the queue runs dry, so a reader of the file sees letters promptly.
        ok &= out.flush().is_ok();
        if ok {
            written.inc_by(batch.len() as u64);
        } else {
            failed.inc_by(batch.len() as u64);
            tracing::error!(path = %path.display(), lost = batch.len(), "cannot write dead letters");
        }
    }
}

/// Counts each dead letter once Kafka has acknowledged it, or failed to.
struct Delivery {
    written: prometheus::IntCounter,
    failed: prometheus::IntCounter,
}

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.written.inc(),
            Err((e, _)) => {
                self.failed.inc();
                tracing::error!("a dead letter was not delivered to Kafka: {e}");
            }
        }
    }
}

fn produce(producer: ThreadedProducer<Delivery>, topic: String, rx: flume::Receiver<DeadLetter>) {
    while let Ok(dl) = rx.recv() {
        let position = dl.position_json().to_string();
        let at = dl.at.to_string();
        let headers = OwnedHeaders::new()
            .insert(header("journeyd.reason", dl.reason))
            .insert(header("journeyd.error", &dl.error))
            .insert(header("journeyd.source", &dl.source))
            .insert(header("journeyd.position", &position))
            .insert(header("journeyd.at", &at));
        let key = match &dl.position {
            Position::Kafka { topic, .. } => topic.as_str(),
            _ => dl.source.as_str(),
        };
        let mut record = BaseRecord::to(&topic)
            .payload(&dl.record)
            .key(key)
            .headers(headers);
        // A full local queue is the only error worth waiting out; anything else is final.
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    producer.context().failed.inc();
                    tracing::error!(topic, "cannot produce a dead letter: {e}");
                    break;
                }
            }
        }
    }
    if let Err(e) = producer.flush(Duration::from_secs(10)) {
        tracing::error!(topic, "dead letters may not all have reached Kafka: {e}");
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}
