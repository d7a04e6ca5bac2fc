//! The Kafka source: a consumer-group member polled on its own thread.
//!
//! Like Quickwit, journeyd polls a `BaseConsumer` on a plain thread, because rdkafka's async
//! calls turn synchronous during rebalances. Each poll round's records are decoded with their
//! topic's format and submitted to the workers; their offsets are stored (for the next
//! auto-commit) only once every worker involved has applied them, so a crash never commits
//! an offset whose events were not applied.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use journey_api::Metrics;
use journey_core::{DecodeLimits, Event};
use journey_ingest::{Decoder, Format};
use journey_runtime::RuntimeHandle;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaSettings;

/// Records handed to the workers per submission.
const BATCH: usize = 2048;

/// A running Kafka consumer thread.
#[derive(Debug)]
pub struct KafkaSource {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

struct Topic {
    /// Index into the topic names, so offsets are tracked without a string per record.
    index: usize,
    source: String,
    decoder: Decoder,
    /// Resolved once: a labelled counter lookup per record would cost more than decoding.
    accepted: prometheus::IntCounter,
}

impl KafkaSource {
    pub fn start(
        settings: &KafkaSettings,
        limits: DecodeLimits,
        rt: RuntimeHandle,
        metrics: Arc<Metrics>,
    ) -> Result<KafkaSource> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &settings.brokers)
            .set("group.id", &settings.group_id)
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", "true")
            .set("auto.offset.reset", "earliest");
        for (k, v) in &settings.properties {
            cfg.set(k, v);
        }
        let consumer: BaseConsumer = cfg.create().context("cannot create the Kafka consumer")?;
        let mut topics = HashMap::new();
        for (index, t) in settings.topics.iter().enumerate() {
            let format = Format::parse(&t.format, t.mapping.as_ref())
                .map_err(|e| anyhow::anyhow!("kafka topic `{}`: {e}", t.name))?;
            topics.insert(
                t.name.clone(),
                Topic {
                    index,
                    source: t.source.clone(),
                    decoder: Decoder::new(format, t.source.clone(), limits),
                    accepted: metrics
                        .ingest_events
                        .with_label_values(&[t.source.as_str(), "accepted"]),
                },
            );
        }
        let names: Vec<&str> = settings.topics.iter().map(|t| t.name.as_str()).collect();
        consumer
            .subscribe(&names)
            .context("cannot subscribe to the Kafka topics")?;
        tracing::info!(brokers = %settings.brokers, group = %settings.group_id, topics = ?names, "consuming from Kafka");
        let stop = Arc::new(AtomicBool::new(false));
        let lag_client: BaseConsumer =
            cfg.create().context("cannot create the Kafka lag client")?;
        let (lag_topics, lag_metrics, lag_stop) = (
            settings.topics.iter().map(|t| t.name.clone()).collect(),
            metrics.clone(),
            stop.clone(),
        );
        let lag = std::thread::Builder::new()
            .name("journeyd-kafka-lag".into())
            .spawn(move || report_lag(lag_client, lag_topics, lag_metrics, lag_stop))
            .context("cannot start the Kafka lag thread")?;
        let flag = stop.clone();
        let lag_names: Vec<String> = settings.topics.iter().map(|t| t.name.clone()).collect();
        let thread = std::thread::Builder::new()
            .name("journeyd-kafka".into())
            .spawn(move || consume(consumer, topics, lag_names, rt, metrics, flag))
            .context("cannot start the Kafka thread")?;
        Ok(KafkaSource {
            stop,
            threads: vec![thread, lag],
        })
    }

    /// Stops polling, waits for submitted events to be applied, stores and commits their offsets.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Offsets to store once every worker that received part of a round has applied it.
struct Pending {
    acks: Vec<flume::Receiver<()>>,
    /// (topic index, partition) → offset.
    offsets: BTreeMap<(usize, i32), i64>,
}

fn consume(
    consumer: BaseConsumer,
    topics: HashMap<String, Topic>,
    names: Vec<String>,
    rt: RuntimeHandle,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) {
    let mut pending: VecDeque<Pending> = VecDeque::new();
    while !stop.load(Ordering::Relaxed) {
        let mut events: Vec<Event<'static>> = Vec::new();
        let mut offsets: BTreeMap<(usize, i32), i64> = BTreeMap::new();
        let mut accepted: HashMap<usize, u64> = HashMap::new();
        let deadline = Instant::now() + Duration::from_millis(50);
        while events.len() < BATCH && Instant::now() < deadline {
            let Some(result) = consumer.poll(Duration::from_millis(20)) else {
                continue;
            };
            let msg = match result {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("Kafka: {e}");
                    continue;
                }
            };
            let Some(topic) = topics.get(msg.topic()) else {
                continue;
            };
            offsets.insert((topic.index, msg.partition()), msg.offset());
            let payload = msg.payload().unwrap_or_default();
            match topic.decoder.decode(payload) {
                Ok(e) => {
                    *accepted.entry(topic.index).or_default() += 1;
                    events.push(e.into_owned());
                }
                Err(e) => {
                    metrics
                        .ingest_events
                        .with_label_values(&[topic.source.as_str(), "rejected"])
                        .inc();
                    metrics
                        .ingest_rejected
                        .with_label_values(&[topic.source.as_str(), e.reason()])
                        .inc();
                    tracing::debug!(
                        topic = msg.topic(),
                        partition = msg.partition(),
                        offset = msg.offset(),
                        "rejected: {e}"
                    );
                }
            }
        }
        for t in topics.values() {
            if let Some(n) = accepted.get(&t.index) {
                t.accepted.inc_by(*n);
            }
        }
        if !offsets.is_empty() {
            match rt.submit_acked_blocking(events) {
                Ok(acks) => pending.push_back(Pending { acks, offsets }),
                Err(_) => break,
            }
        }
        store_applied(&consumer, &names, &mut pending, false);
    }
    store_applied(&consumer, &names, &mut pending, true);
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        // Nothing stored yet is a normal reason; offsets are also in the next checkpoint.
        tracing::debug!("final Kafka commit: {e}");
    }
}

/// Reports consumer-group lag (end of partition minus committed offset, as Kafka's own tools
/// define it) every few seconds, from a client of its own that does not join the group, so the
/// consuming thread never waits on these round trips. Every partition of every topic gets a
/// gauge, so a stuck one shows.
fn report_lag(
    client: BaseConsumer,
    topics: Vec<String>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) {
    let timeout = Duration::from_secs(2);
    while !stop.load(Ordering::Relaxed) {
        for topic in &topics {
            let Ok(meta) = client.fetch_metadata(Some(topic), timeout) else {
                continue;
            };
            let mut list = TopicPartitionList::new();
            for t in meta.topics() {
                for p in t.partitions() {
                    list.add_partition(topic, p.id());
                }
            }
            let Ok(committed) = client.committed_offsets(list.clone(), timeout) else {
                continue;
            };
            for e in list.elements() {
                let Ok((low, high)) = client.fetch_watermarks(topic, e.partition(), timeout) else {
                    continue;
                };
                let at = match committed
                    .find_partition(topic, e.partition())
                    .map(|c| c.offset())
                {
                    Some(Offset::Offset(o)) => o,
                    _ => low,
                };
                let label = e.partition().to_string();
                metrics
                    .kafka_lag
                    .with_label_values(&[topic.as_str(), label.as_str()])
                    .set((high - at).max(0));
            }
        }
        for _ in 0..50 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Stores the offsets of every leading round whose events are all applied.
fn store_applied(
    consumer: &BaseConsumer,
    names: &[String],
    pending: &mut VecDeque<Pending>,
    wait: bool,
) {
    while let Some(front) = pending.front() {
        let done = front.acks.iter().all(|a| {
            if wait {
                a.recv_timeout(Duration::from_secs(30)).is_ok() || a.is_disconnected()
            } else {
                !a.is_empty() || a.is_disconnected()
            }
        });
        if !done {
            return;
        }
        let round = pending.pop_front().expect("front exists");
        for a in &round.acks {
            let _ = a.try_recv();
        }
        for ((topic, partition), offset) in round.offsets {
            let topic = names[topic].as_str();
            if let Err(e) = consumer.store_offset(topic, partition, offset) {
                tracing::warn!(
                    topic,
                    partition,
                    offset,
                    "cannot store the Kafka offset: {e}"
                );
            }
        }
    }
}
