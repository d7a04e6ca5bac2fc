//! The repartitioner: topics that are not co-partitioned, rewritten to the internal topic.
//!
//! Kafka Streams' repartition step. A consumer of its own (group `<group_id>-repartition`, so
//! its rebalances never move tasks) reads the repartitioned topics on its own thread, decodes
//! each record with its topic's format to learn the customer id, and produces the original
//! bytes to `<group_id>-repartition`, keyed by customer id, to the partition
//! `kafka.partitioner` gives that key among the tasks, with the header [`SOURCE_TOPIC`] naming
//! the topic it came from (the task side decodes with that topic's format and source).
//! Undecodable records go to the dead letters here and never reach the internal topic.
//!
//! Delivery is at-least-once: a poll round's records are produced by an idempotent producer
//! and flushed before the round's source offsets are committed. A crash or a rebalance between
//! the two reads them again; journeyd's dedup drops the copies of events with an `event_id`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use journey_api::Metrics;
use journey_core::DecodeLimits;
use journey_ingest::{DeadLetters, Decoder, Format};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use crate::source::reject;
use crate::topology::{client_config, Topology};
use crate::{KafkaSettings, KafkaSourceError};

/// Header of every record in the internal topic: the name of the topic it was read from.
pub const SOURCE_TOPIC: &str = "journeyd-topic";

/// Records produced per round before the producer is flushed and offsets are committed.
const BATCH: usize = 2048;

/// One repartitioned topic.
struct Upstream {
    source: String,
    decoder: Decoder,
}

/// The consumer's context: whether every assigned partition has been fetched to its end.
struct Fetched(AtomicBool);

impl ClientContext for Fetched {
    fn stats(&self, stats: Statistics) {
        let mut any = false;
        let all = stats.topics.values().all(|t| {
            t.partitions.values().all(|p| {
                if p.partition < 0 || !p.desired {
                    return true;
                }
                any = true;
                p.fetchq_cnt == 0 && p.hi_offset >= 0 && p.next_offset >= p.hi_offset
            })
        });
        self.0.store(any && all, Ordering::Relaxed);
    }
}

impl ConsumerContext for Fetched {}

/// The producer's context: deliveries that failed since the round began.
struct Failures(AtomicU64);

impl ClientContext for Failures {}

impl ProducerContext for Failures {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::warn!("cannot write a record to the internal repartition topic: {e}");
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts the repartitioner thread. `caught_up` is set while every repartitioned partition
/// assigned here has been read to its end and written out: until then the internal topic's
/// partitions must not count as idle on the task side.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start(
    settings: &KafkaSettings,
    topology: &Topology,
    limits: DecodeLimits,
    metrics: Arc<Metrics>,
    dead_letters: DeadLetters,
    caught_up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, KafkaSourceError> {
    let internal = settings.repartition_topic();
    let mut cfg = client_config(settings);
    cfg.set("group.id", &internal)
        .set("enable.auto.commit", "false");
    for (k, v) in &settings.properties {
        cfg.set(k, v);
    }
    let consumer: BaseConsumer<Fetched> = cfg
        .create_with_context(Fetched(AtomicBool::new(false)))
        .map_err(|source| KafkaSourceError::Client {
            what: "repartition consumer",
            source,
        })?;
    let mut pcfg = rdkafka::ClientConfig::new();
    pcfg.set("bootstrap.servers", &settings.brokers);
    for (k, v) in &settings.properties {
        pcfg.set(k, v);
    }
    // Retries keep the order and write no copies within one producer session.
    pcfg.set("enable.idempotence", "true");
    let producer: BaseProducer<Failures> = pcfg
        .create_with_context(Failures(AtomicU64::new(0)))
        .map_err(|source| KafkaSourceError::Client {
            what: "repartition producer",
            source,
        })?;
    let mut upstream = HashMap::new();
    for t in settings
        .topics
        .iter()
        .filter(|t| topology.repartitioned.contains(&t.name))
    {
        let format =
            Format::parse(&t.format, t.mapping.as_ref()).map_err(|e| KafkaSourceError::Format {
                topic: t.name.clone(),
                why: e.to_string(),
            })?;
        upstream.insert(
            t.name.clone(),
            Upstream {
                source: t.source.clone(),
                decoder: Decoder::new(format, t.source.clone(), limits),
            },
        );
    }
    let topics: Vec<&str> = topology.repartitioned.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|source| KafkaSourceError::Client {
            what: "repartition subscription",
            source,
        })?;
    tracing::info!(topics = ?topics, internal, tasks = topology.tasks, "repartitioning");
    let r = Repartition {
        consumer,
        producer,
        internal,
        tasks: topology.tasks,
        partitioner: settings.partitioner,
        upstream,
        metrics,
        dead_letters,
        caught_up,
    };
    std::thread::Builder::new()
        .name("journeyd-repartition".into())
        .spawn(move || r.run(&stop))
        .map_err(|e| KafkaSourceError::Thread("repartition", e))
}

/// The repartitioning thread's state.
struct Repartition {
    consumer: BaseConsumer<Fetched>,
    producer: BaseProducer<Failures>,
    internal: String,
    tasks: u32,
    partitioner: journey_runtime::Partitioner,
    upstream: HashMap<String, Upstream>,
    metrics: Arc<Metrics>,
    dead_letters: DeadLetters,
    caught_up: Arc<AtomicBool>,
}

/// The offsets a round read: first and last per (topic, partition).
type Read = BTreeMap<(String, i32), (i64, i64)>;

impl Repartition {
    fn run(self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let Some(read) = self.round(stop) else {
                break;
            };
            if read.is_empty() {
                let fetched = self.consumer.context().0.load(Ordering::Relaxed);
                self.caught_up.store(fetched, Ordering::Relaxed);
                continue;
            }
            self.caught_up.store(false, Ordering::Relaxed);
            self.settle(&read, stop);
        }
        self.caught_up.store(false, Ordering::Relaxed);
    }

    /// Flushes the producer, then commits the round's offsets; when some records were not
    /// written, seeks back to the round's first offsets to read them again.
    fn settle(&self, read: &Read, stop: &AtomicBool) {
        let mut flushed = self.producer.flush(Duration::from_secs(30));
        // A broker away for a while: wait for it rather than drop or skip records.
        while let Err(e) = &flushed {
            tracing::warn!("flushing the repartitioned records: {e}");
            if stop.load(Ordering::Relaxed) {
                // Uncommitted: the next start reads them again.
                return;
            }
            flushed = self.producer.flush(Duration::from_secs(30));
        }
        let failed = self.producer.context().0.swap(0, Ordering::Relaxed);
        if failed > 0 {
            for ((topic, partition), (first, _)) in read {
                if let Err(e) = self.consumer.seek(
                    topic,
                    *partition,
                    Offset::Offset(*first),
                    Duration::from_secs(10),
                ) {
                    tracing::warn!(topic, partition, "cannot seek back to re-read: {e}");
                }
            }
            return;
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), (_, last)) in read {
            if let Err(e) = list.add_partition_offset(topic, *partition, Offset::Offset(last + 1)) {
                tracing::warn!(topic, partition, "{e}");
            }
        }
        if let Err(e) = self.consumer.commit(&list, CommitMode::Async) {
            // The next round's commit covers these offsets too.
            tracing::debug!("cannot commit the repartitioned offsets: {e}");
        }
    }

    /// Up to [`BATCH`] records or 50 ms, each decoded and produced (or dead-lettered). `None`
    /// when the dead-letter sink has gone (shutdown).
    fn round(&self, stop: &AtomicBool) -> Option<Read> {
        let mut read = Read::new();
        let mut n = 0;
        let deadline = Instant::now() + Duration::from_millis(50);
        while n < BATCH && Instant::now() < deadline {
            let Some(result) = self.consumer.poll(Duration::from_millis(20)) else {
                continue;
            };
            let msg = match result {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("Kafka (repartition): {e}");
                    continue;
                }
            };
            let Some(up) = self.upstream.get(msg.topic()) else {
                continue;
            };
            n += 1;
            read.entry((msg.topic().to_string(), msg.partition()))
                .and_modify(|r| r.1 = msg.offset())
                .or_insert((msg.offset(), msg.offset()));
            let payload = msg.payload().unwrap_or_default();
            let customer = match up.decoder.decode(payload) {
                Ok(e) => e.customer_id.into_owned(),
                Err(e) => {
                    let letter = (e.reason(), e.to_string());
                    if !reject(&self.metrics, &self.dead_letters, &up.source, &msg, letter) {
                        return None;
                    }
                    continue;
                }
            };
            let key = customer.as_bytes();
            let partition = self.partitioner.partition(key, self.tasks);
            let headers = OwnedHeaders::new().insert(Header {
                key: SOURCE_TOPIC,
                value: Some(msg.topic()),
            });
            let mut record = BaseRecord::to(&self.internal)
                .key(key)
                .payload(payload)
                .partition(i32::try_from(partition).unwrap_or(0))
                .headers(headers);
            // A full queue empties as deliveries complete.
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        self.producer.poll(Duration::from_millis(50));
                        if stop.load(Ordering::Relaxed) {
                            return Some(read);
                        }
                    }
                    Err((e, _)) => {
                        tracing::warn!("cannot write to the internal repartition topic: {e}");
                        self.producer.context().0.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
        self.producer.poll(Duration::ZERO);
        Some(read)
    }
}
