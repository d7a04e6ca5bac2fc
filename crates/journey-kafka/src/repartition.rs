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
//! The internal partition of a task merges many source partitions, and the task's watermark
//! follows the largest event time it has seen there. So the repartitioner merges in event-time
//! order, like Kafka Streams' `PartitionGroup`: records wait in a buffer per source partition,
//! and the head with the smallest event time is written next, once every assigned partition
//! has a head or has reached its end (or after [`ALIGN_WAIT`]). A backlog of several
//! partitions then reaches the tasks in event-time order instead of partition after partition.
//!
//! Delivery is at-least-once: a poll round's records are produced by an idempotent producer
//! and flushed before the round's source offsets are committed. A crash or a rebalance between
//! the two reads them again; journeyd's dedup drops the copies of events with an `event_id`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use journey_api::Metrics;
use journey_core::time::Millis;
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

/// Records read per round; the records written are flushed and their offsets committed after
/// each round.
const BATCH: usize = 2048;

/// How long a partition with nothing buffered, not at its end, may hold the others back.
pub const ALIGN_WAIT: Duration = Duration::from_secs(5);

/// Records buffered over all partitions beyond which the merge writes without waiting, so a
/// stalled partition cannot grow memory without bound.
const MAX_BUFFERED: usize = 100_000;

/// A source partition: (topic, partition).
type SourcePart = (String, i32);

/// A decoded record waiting for its turn.
struct Buffered {
    offset: i64,
    ts: Millis,
    /// `None`: dead-lettered; kept only so that its offset is committed in order.
    customer: Option<String>,
    payload: Vec<u8>,
}

/// One repartitioned topic.
struct Upstream {
    source: String,
    decoder: Decoder,
}

/// The consumer's context: the assigned partitions the latest statistics showed fetched to
/// their end.
struct Fetched(Mutex<HashSet<SourcePart>>);

impl Fetched {
    fn at_end(&self) -> HashSet<SourcePart> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ClientContext for Fetched {
    fn stats(&self, stats: Statistics) {
        let mut at_end = HashSet::new();
        for (name, t) in &stats.topics {
            for p in t.partitions.values() {
                if p.partition >= 0
                    && p.desired
                    && p.fetchq_cnt == 0
                    && p.hi_offset >= 0
                    && p.next_offset >= p.hi_offset
                {
                    at_end.insert((name.clone(), p.partition));
                }
            }
        }
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = at_end;
    }
}

impl ConsumerContext for Fetched {}

/// The producer's context: deliveries that failed since the round began, and the counters
/// of `journeyd_repartitioned_records_total`.
struct Failures(AtomicU64, prometheus::IntCounter, prometheus::IntCounter);

impl ClientContext for Failures {}

impl ProducerContext for Failures {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.1.inc(),
            Err((e, _)) => {
                tracing::warn!("cannot write a record to the internal repartition topic: {e}");
                self.0.fetch_add(1, Ordering::Relaxed);
                self.2.inc();
            }
        }
    }
}

/// Starts the repartitioner thread. `caught_up` is set while every repartitioned partition
/// assigned here has been read to its end and written out: until then the internal topic's
/// partitions must not count as idle on the task side.
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
        .set("enable.auto.commit", "false")
        // Buffered records are held for the merge; fetch less ahead than the default 64 MiB.
        .set("queued.max.messages.kbytes", "16384");
    for (k, v) in &settings.properties {
        cfg.set(k, v);
    }
    let consumer: BaseConsumer<Fetched> = cfg
        .create_with_context(Fetched(Mutex::new(HashSet::new())))
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
        .create_with_context(Failures(
            AtomicU64::new(0),
            metrics.repartitioned.with_label_values(&["written"]),
            metrics.repartitioned.with_label_values(&["failed"]),
        ))
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
    let mut r = Repartition {
        consumer,
        producer,
        internal,
        tasks: topology.tasks,
        partitioner: settings.partitioner,
        upstream,
        metrics,
        dead_letters,
        caught_up,
        buffers: HashMap::new(),
        blocked_since: None,
        flushed: BTreeMap::new(),
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
    /// Decoded records per source partition, in offset order, not yet written.
    buffers: HashMap<SourcePart, VecDeque<Buffered>>,
    /// Since when the merge has been waiting for a partition with nothing buffered.
    blocked_since: Option<Instant>,
    /// Next offset per source partition whose records are all flushed: committed again,
    /// synchronously, at shutdown, as the last asynchronous commit may not have completed.
    flushed: BTreeMap<SourcePart, i64>,
}

/// The offsets a round wrote: first and last per source partition.
type Written = BTreeMap<SourcePart, (i64, i64)>;

impl Repartition {
    fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            if !self.round(stop) {
                break;
            }
            let written = self.merge(stop);
            let buffered = self.buffers.values().any(|b| !b.is_empty());
            if written.is_empty() {
                let assigned = self.assigned();
                let at_end = self.consumer.context().at_end();
                let done = !buffered && !assigned.is_empty() && assigned.is_subset(&at_end);
                self.caught_up.store(done, Ordering::Relaxed);
                continue;
            }
            self.caught_up.store(false, Ordering::Relaxed);
            self.settle(&written, stop);
        }
        self.caught_up.store(false, Ordering::Relaxed);
        self.commit(CommitMode::Sync);
    }

    /// Commits the flushed offsets of every partition still assigned here: all of them each
    /// time, so a failed asynchronous commit is repaired by the next. Others are forgotten, so
    /// that this member never moves back the offsets of a partition's new owner.
    fn commit(&mut self, mode: CommitMode) {
        let assigned = self.assigned();
        self.flushed.retain(|part, _| assigned.contains(part));
        let mut list = TopicPartitionList::new();
        for ((topic, partition), next) in &self.flushed {
            if let Err(e) = list.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
                tracing::warn!(topic, partition, "{e}");
            }
        }
        if list.count() == 0 {
            return;
        }
        if let Err(e) = self.consumer.commit(&list, mode) {
            tracing::debug!("cannot commit the repartitioned offsets (again next round): {e}");
        }
    }

    fn assigned(&self) -> HashSet<SourcePart> {
        self.consumer.assignment().map_or_else(
            |_| HashSet::new(),
            |tpl| {
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect()
            },
        )
    }

    /// Writes buffered records in event-time order while every assigned partition has a head
    /// or has reached its end; after [`ALIGN_WAIT`] of waiting, or with more than
    /// [`MAX_BUFFERED`] records held, writes what it has.
    fn merge(&mut self, stop: &AtomicBool) -> Written {
        let assigned = self.assigned();
        // Records of partitions given up: their next owner reads them from the committed offset.
        self.buffers.retain(|part, _| assigned.contains(part));
        let at_end = self.consumer.context().at_end();
        let waiting = assigned.iter().any(|part| {
            self.buffers.get(part).is_none_or(VecDeque::is_empty) && !at_end.contains(part)
        });
        let held: usize = self.buffers.values().map(VecDeque::len).sum();
        let mut written = Written::new();
        if waiting && held > 0 {
            let since = *self.blocked_since.get_or_insert_with(Instant::now);
            if since.elapsed() < ALIGN_WAIT && held <= MAX_BUFFERED {
                return written;
            }
        } else {
            self.blocked_since = None;
        }
        loop {
            // The partition whose head is the oldest; ties by partition, so runs repeat.
            let next = self
                .buffers
                .iter()
                .filter_map(|(part, b)| b.front().map(|r| (r.ts, part)))
                .min()
                .map(|(_, part)| part.clone());
            let Some(part) = next else { break };
            let Some(rec) = self.buffers.get_mut(&part).and_then(VecDeque::pop_front) else {
                break;
            };
            if rec.customer.is_some() && !self.produce(&part.0, &rec, stop) {
                break;
            }
            written
                .entry(part.clone())
                .and_modify(|w| w.1 = rec.offset)
                .or_insert((rec.offset, rec.offset));
            // Without all heads, write only until a partition runs dry.
            if !waiting
                && self.buffers.get(&part).is_some_and(VecDeque::is_empty)
                && !at_end.contains(&part)
            {
                break;
            }
        }
        written
    }

    /// Produces one record to the internal topic; `false` when stopping with the queue full.
    fn produce(&self, topic: &str, rec: &Buffered, stop: &AtomicBool) -> bool {
        let key = rec.customer.as_deref().unwrap_or_default().as_bytes();
        let partition = self.partitioner.partition(key, self.tasks);
        let headers = OwnedHeaders::new().insert(Header {
            key: SOURCE_TOPIC,
            value: Some(topic),
        });
        let mut record = BaseRecord::to(&self.internal)
            .key(key)
            .payload(&rec.payload)
            .partition(i32::try_from(partition).unwrap_or(0))
            .headers(headers);
        // A full queue empties as deliveries complete.
        loop {
            match self.producer.send(record) {
                Ok(()) => return true,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(50));
                    if stop.load(Ordering::Relaxed) {
                        return false;
                    }
                }
                Err((e, _)) => {
                    tracing::warn!("cannot write to the internal repartition topic: {e}");
                    self.producer.context().0.fetch_add(1, Ordering::Relaxed);
                    self.producer.context().2.inc();
                    return true;
                }
            }
        }
    }

    /// Flushes the producer, then commits the written records' offsets; when some records were
    /// not written, seeks back to the first offsets written to read them again.
    fn settle(&mut self, read: &Written, stop: &AtomicBool) {
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
                self.buffers.remove(&(topic.clone(), *partition));
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
        for ((topic, partition), (_, last)) in read {
            self.flushed.insert((topic.clone(), *partition), last + 1);
        }
        self.commit(CommitMode::Async);
    }

    /// Up to [`BATCH`] records or 50 ms, each decoded and buffered (or dead-lettered). `false`
    /// when the dead-letter sink has gone (shutdown).
    fn round(&mut self, stop: &AtomicBool) -> bool {
        let mut n = 0;
        let deadline = Instant::now() + Duration::from_millis(50);
        while n < BATCH && Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
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
            let payload = msg.payload().unwrap_or_default();
            let (customer, ts) = match up.decoder.decode(payload) {
                Ok(e) => (Some(e.customer_id.into_owned()), e.ts),
                Err(e) => {
                    let letter = (e.reason(), e.to_string());
                    if !reject(&self.metrics, &self.dead_letters, &up.source, &msg, letter) {
                        return false;
                    }
                    // Nothing to write: its turn comes at once.
                    (None, Millis::MIN)
                }
            };
            let payload = if customer.is_some() {
                payload.to_vec()
            } else {
                Vec::new()
            };
            self.buffers
                .entry((msg.topic().to_string(), msg.partition()))
                .or_default()
                .push_back(Buffered {
                    offset: msg.offset(),
                    ts,
                    customer,
                    payload,
                });
        }
        self.producer.poll(Duration::ZERO);
        true
    }
}
