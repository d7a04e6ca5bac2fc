//! The consuming thread: poll rounds, submission to tasks, checkpoints and commits.
//!
//! This thread only moves bytes: each poll round's records are copied, per partition and in
//! offset order, into one buffer per partition and submitted undecoded to their task as that
//! partition's input. The task's worker decodes them with their topic's format right before
//! applying them ([`Decoders`]), so records of tasks on different workers decode in parallel
//! and the order within a partition is the offset order. Positions (next
//! offset per partition) are tracked as records are polled. With checkpoints, this thread asks
//! the workers for every task's snapshot between rounds: the workers' queues are FIFO, so each
//! task has received every record before its partitions' positions by then. A task merging its
//! partitions by event time may still buffer some of them unapplied; its snapshot names, per
//! partition, the offset of the first record not applied, and that is the checkpoint's
//! position ([`Tasks::positions_of`]), so restoring it and seeking gives exactly-once
//! aggregates (Flink's model). Offsets are committed to Kafka after each checkpoint for lag
//! monitoring only. Without checkpoints, offsets are stored for auto-commit once the tasks
//! involved have applied the round (at-least-once).
//!
//! Records of the internal repartition topic are decoded with the format and source of the
//! topic the repartitioner read them from, named by their [`SOURCE_TOPIC`] header.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use journey_api::Metrics;
use journey_core::time::Millis;
use journey_core::{DecodeLimits, SharedProjection};
use journey_ingest::{DeadLetter, DeadLetters, Decoder, Format, Position};
use journey_runtime::checkpoint::{Checkpointer, KafkaPosition};
use journey_runtime::{Deferred, Input, RuntimeHandle, Sink, Stopped, TaskId};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::assignment::{Run, TaskState, Tasks};
use crate::backpressure::Backpressure;
use crate::lag::report_lag;
use crate::repartition::SOURCE_TOPIC;
use crate::stall::Stalls;
use crate::topology::{client_config, Topology};
use crate::{KafkaSettings, KafkaSourceError, Part};

fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// Records handed to the workers per round.
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
    decoding: Decoding,
}

/// How one topic's records are decoded: an index into [`Decoders`]' upstreams.
enum Decoding {
    /// With the topic's own format.
    Direct(u16),
    /// The internal topic: with the format of the topic named by the record's header.
    ByHeader(HashMap<Vec<u8>, u16>),
}

/// The raw records of one partition from one poll round, in offset order: their payloads
/// back to back in one buffer, so the consuming thread makes one copy per record and one
/// allocation per run.
#[derive(Debug, Default)]
pub(crate) struct RawRecords {
    bytes: Vec<u8>,
    records: Vec<RawRecord>,
}

#[derive(Debug, Clone, Copy)]
struct RawRecord {
    /// End of the payload in [`RawRecords::bytes`] (it starts where the previous one ends).
    end: usize,
    offset: i64,
    /// Which of [`Decoders`]' upstreams decodes it.
    upstream: u16,
}

impl RawRecords {
    fn push(&mut self, payload: &[u8], offset: i64, upstream: u16) {
        self.bytes.extend_from_slice(payload);
        self.records.push(RawRecord {
            end: self.bytes.len(),
            offset,
            upstream,
        });
    }

    /// Each record's payload with its offset and upstream, in offset order.
    fn iter(&self) -> impl Iterator<Item = (&[u8], RawRecord)> + '_ {
        let mut start = 0;
        self.records.iter().map(move |r| {
            let payload = self.bytes.get(start..r.end).unwrap_or_default();
            start = r.end;
            (payload, *r)
        })
    }
}

/// Every configured topic's decoder, shared by the workers that decode submitted records:
/// accepted records become events, rejected ones dead letters that carry the raw record and
/// its Kafka position.
pub(crate) struct Decoders {
    upstreams: Vec<Upstream>,
    /// Topic names by index ([`crate::Part`]'s first element), for dead letters.
    names: Vec<String>,
    metrics: Arc<Metrics>,
    dead_letters: DeadLetters,
    /// Emptied record buffers the workers hand back to the consuming thread: a fresh buffer per
    /// run cost page faults and regrowth copies on one side and frees on the other.
    spares: (flume::Sender<RawRecords>, flume::Receiver<RawRecords>),
}

/// Record buffers kept for reuse, and the largest one kept (bytes): at most 64 MiB held.
const SPARE_BUFFERS: usize = 64;
const SPARE_MAX_BYTES: usize = 1 << 20;

impl Decoders {
    fn new(
        upstreams: Vec<Upstream>,
        names: Vec<String>,
        metrics: Arc<Metrics>,
        dead_letters: DeadLetters,
    ) -> Decoders {
        Decoders {
            upstreams,
            names,
            metrics,
            dead_letters,
            spares: flume::bounded(SPARE_BUFFERS),
        }
    }

    /// The decoding of `records` of partition `part`, to run on its task's worker. The
    /// emptied buffer goes back for [`Decoders::buffer`].
    pub(crate) fn deferred(self: &Arc<Self>, part: Part, records: RawRecords) -> Deferred {
        let decoders = self.clone();
        Box::new(move |sink| {
            decoders.decode(part, &records, sink);
            let mut records = records;
            if records.bytes.capacity() <= SPARE_MAX_BYTES {
                records.bytes.clear();
                records.records.clear();
                let _ = decoders.spares.0.try_send(records);
            }
        })
    }

    /// Submits one poll round's records of a partition to its task, undecoded (they are
    /// decoded on the task's worker); `ack`: ask for an acknowledgement once the task has
    /// applied them, which a task merging partitions by event time may do rounds later.
    pub(crate) fn submit(
        self: &Arc<Self>,
        rt: &RuntimeHandle,
        run: Run,
        ack: bool,
    ) -> Result<Option<flume::Receiver<()>>, Stopped> {
        let (task, input) = (run.part.1 as TaskId, Input::Topic(run.part.0 as u16));
        let decode = self.deferred(run.part, run.records);
        rt.submit_deferred_blocking(task, input, decode, run.last + 1, ack)
    }

    /// An empty record buffer, reused when one has come back.
    pub(crate) fn buffer(&self) -> RawRecords {
        self.spares.1.try_recv().unwrap_or_default()
    }

    /// Decodes `records` of `part` in offset order and hands each event, borrowing the
    /// records' bytes, with its offset to `sink`; rejected ones go to the dead letters.
    fn decode(&self, part: Part, records: &RawRecords, sink: &mut Sink<'_>) {
        let mut accepted = vec![0u64; self.upstreams.len()];
        let topic = self.names.get(part.0).map_or("", String::as_str);
        let batches: Vec<_> = self.upstreams.iter().map(|u| u.decoder.batch()).collect();
        for (payload, r) in records.iter() {
            let (Some(up), Some(decoder)) = (
                self.upstreams.get(usize::from(r.upstream)),
                batches.get(usize::from(r.upstream)),
            ) else {
                continue;
            };
            match decoder.decode(payload) {
                Ok(e) => {
                    accepted[usize::from(r.upstream)] += 1;
                    sink(e, r.offset);
                }
                Err(e) => {
                    let at = (topic, part.1, r.offset);
                    let letter = (e.reason(), e.to_string());
                    // A sink that has gone means shutdown: the events are still applied.
                    reject_record(
                        &self.metrics,
                        &self.dead_letters,
                        &up.source,
                        at,
                        payload,
                        letter,
                    );
                }
            }
        }
        for (up, n) in self.upstreams.iter().zip(accepted) {
            if n > 0 {
                up.accepted.inc_by(n);
            }
        }
    }
}

/// The format and source of one configured topic.
struct Upstream {
    source: String,
    decoder: Decoder,
    /// Resolved once: a labelled counter lookup per record would cost more than decoding.
    accepted: prometheus::IntCounter,
}

impl Upstream {
    fn new(
        t: &crate::TopicSettings,
        limits: DecodeLimits,
        metrics: &Metrics,
        projection: &SharedProjection,
    ) -> Result<Upstream, KafkaSourceError> {
        let format =
            Format::parse(&t.format, t.mapping.as_ref()).map_err(|e| KafkaSourceError::Format {
                topic: t.name.clone(),
                why: e.to_string(),
            })?;
        Ok(Upstream {
            source: t.source.clone(),
            decoder: Decoder::new(format, t.source.clone(), limits)
                .with_projection(projection.clone()),
            accepted: metrics
                .ingest_events
                .with_label_values(&[t.source.as_str(), "accepted"]),
        })
    }
}

/// The value of `msg`'s header `key`, if it has one.
fn header<'a>(msg: &'a BorrowedMessage<'_>, key: &str) -> Option<&'a [u8]> {
    msg.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
}

/// Counts a rejected record and sends it to the dead letters with its Kafka position.
/// `false` when the dead-letter sink has gone (shutdown).
pub(crate) fn reject(
    metrics: &Metrics,
    dead_letters: &DeadLetters,
    source: &str,
    msg: &BorrowedMessage<'_>,
    letter: (&'static str, String),
) -> bool {
    let at = (msg.topic(), msg.partition(), msg.offset());
    let payload = msg.payload().unwrap_or_default();
    reject_record(metrics, dead_letters, source, at, payload, letter)
}

/// [`reject`] for a record at `(topic, partition, offset)` with `payload`.
fn reject_record(
    metrics: &Metrics,
    dead_letters: &DeadLetters,
    source: &str,
    (topic, partition, offset): (&str, i32, i64),
    payload: &[u8],
    (reason, error): (&'static str, String),
) -> bool {
    metrics
        .ingest_events
        .with_label_values(&[source, "rejected"])
        .inc();
    metrics
        .ingest_rejected
        .with_label_values(&[source, reason])
        .inc();
    tracing::debug!(topic, partition, offset, "rejected: {error}");
    dead_letters.send_blocking(DeadLetter {
        at: now_ms(),
        reason,
        error,
        source: source.to_string(),
        position: Position::Kafka {
            topic: topic.to_string(),
            partition,
            offset,
        },
        record: payload.to_vec(),
    })
}

impl KafkaSource {
    /// Starts consuming `topology.inputs`, and the repartitioner when some topics are
    /// repartitioned. With a `checkpointer`, tasks are restored from its state store when
    /// their partitions are assigned, and this thread takes the checkpoints.
    pub fn start(
        settings: &KafkaSettings,
        topology: &Topology,
        limits: DecodeLimits,
        rt: RuntimeHandle,
        metrics: Arc<Metrics>,
        dead_letters: DeadLetters,
        checkpointer: Option<Checkpointer>,
    ) -> Result<KafkaSource, KafkaSourceError> {
        let mut cfg = client_config(settings);
        // With checkpoints, offsets are committed explicitly after each one.
        cfg.set(
            "enable.auto.commit",
            if checkpointer.is_some() {
                "false"
            } else {
                "true"
            },
        );
        for (k, v) in &settings.properties {
            cfg.set(k, v);
        }
        let names = topology.inputs.clone();
        let internal = settings.repartition_topic();
        let upstream_caught_up = Arc::new(AtomicBool::new(false));
        let repartitioned = (!topology.repartitioned.is_empty()).then(|| {
            let index = names
                .iter()
                .position(|n| *n == internal)
                .unwrap_or(usize::MAX);
            (index, upstream_caught_up.clone())
        });
        let mut upstreams = Vec::new();
        let mut add = |t: &crate::TopicSettings| -> Result<u16, KafkaSourceError> {
            upstreams.push(Upstream::new(t, limits, &metrics, &rt.projection())?);
            Ok(u16::try_from(upstreams.len() - 1).unwrap_or(u16::MAX))
        };
        let mut topics = HashMap::new();
        for (index, name) in names.iter().enumerate() {
            let decoding = if *name == internal {
                let mut by = HashMap::new();
                for t in settings
                    .topics
                    .iter()
                    .filter(|t| topology.repartitioned.contains(&t.name))
                {
                    by.insert(t.name.as_bytes().to_vec(), add(t)?);
                }
                Decoding::ByHeader(by)
            } else {
                match settings.topics.iter().find(|t| t.name == *name) {
                    Some(t) => Decoding::Direct(add(t)?),
                    None => continue,
                }
            };
            topics.insert(name.clone(), Topic { index, decoding });
        }
        let decoders = Arc::new(Decoders::new(
            upstreams,
            names.clone(),
            metrics.clone(),
            dead_letters.clone(),
        ));
        let consumer: BaseConsumer<Tasks> = cfg
            .clone()
            .create_with_context(Tasks {
                names: names.clone(),
                repartitioned,
                rt: rt.clone(),
                metrics: metrics.clone(),
                decoders: decoders.clone(),
                state: Mutex::new(TaskState {
                    positions: HashMap::new(),
                    stored: BTreeMap::new(),
                    unsubmitted: Vec::new(),
                    checkpointer,
                    caught_up: Vec::new(),
                    submitted: Vec::new(),
                    paused: BTreeSet::new(),
                    stalls: Stalls::new(settings.stall_timeout),
                }),
            })
            .map_err(|source| KafkaSourceError::Client {
                what: "consumer",
                source,
            })?;
        let subscribed: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer
            .subscribe(&subscribed)
            .map_err(|source| KafkaSourceError::Client {
                what: "subscription",
                source,
            })?;
        tracing::info!(brokers = %settings.brokers, group = %settings.group_id, topics = ?subscribed, tasks = rt.tasks(), "consuming from Kafka");
        let stop = Arc::new(AtomicBool::new(false));
        cfg.set("statistics.interval.ms", "0");
        let lag_client: BaseConsumer = cfg.create().map_err(|source| KafkaSourceError::Client {
            what: "lag client",
            source,
        })?;
        let (lag_topics, lag_metrics, lag_stop) = (names.clone(), metrics.clone(), stop.clone());
        let lag = std::thread::Builder::new()
            .name("journeyd-kafka-lag".into())
            .spawn(move || report_lag(lag_client, lag_topics, lag_metrics, lag_stop))
            .map_err(|e| KafkaSourceError::Thread("Kafka lag", e))?;
        let mut threads = vec![lag];
        if !topology.repartitioned.is_empty() {
            threads.push(crate::repartition::start(
                settings,
                topology,
                limits,
                metrics.clone(),
                dead_letters.clone(),
                upstream_caught_up,
                stop.clone(),
            )?);
            // The repartitioner's lag, under its own group.
            cfg.set("group.id", &internal);
            let client: BaseConsumer = cfg.create().map_err(|source| KafkaSourceError::Client {
                what: "lag client",
                source,
            })?;
            let (topics, m, s) = (
                topology.repartitioned.clone(),
                metrics.clone(),
                stop.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name("journeyd-repartition-lag".into())
                    .spawn(move || report_lag(client, topics, m, s))
                    .map_err(|e| KafkaSourceError::Thread("Kafka lag", e))?,
            );
        }
        let source = Consume {
            consumer,
            topics,
            decoders,
            rt,
            metrics,
            dead_letters,
            committed: Vec::new(),
            pressure: Backpressure::new(settings.max_buffered_records),
        };
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("journeyd-kafka".into())
            .spawn(move || source.run(&flag))
            .map_err(|e| KafkaSourceError::Thread("Kafka", e))?;
        threads.insert(0, thread);
        Ok(KafkaSource { stop, threads })
    }

    /// Stops polling, checkpoints (or waits for submitted events to be applied and stores
    /// their offsets) and commits.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Offsets to store once every task that received part of a round has applied it (a task
/// merging several partitions by event time may apply a round's records rounds later).
struct Pending {
    acks: Vec<flume::Receiver<()>>,
    offsets: BTreeMap<Part, i64>,
}

/// The consuming thread's state.
struct Consume {
    consumer: BaseConsumer<Tasks>,
    topics: HashMap<String, Topic>,
    decoders: Arc<Decoders>,
    rt: RuntimeHandle,
    metrics: Arc<Metrics>,
    dead_letters: DeadLetters,
    /// Positions last committed to Kafka, so an idle stream commits nothing.
    committed: Vec<KafkaPosition>,
    /// Which partitions to pause for their tasks' merge buffers.
    pressure: Backpressure,
}

impl Consume {
    fn checkpointing(&self) -> bool {
        self.consumer.context().lock().checkpointer.is_some()
    }

    fn run(mut self, stop: &AtomicBool) {
        let checkpointing = self.checkpointing();
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut told_caught_up: HashSet<Part> = HashSet::new();
        while !stop.load(Ordering::Relaxed) {
            self.refresh_assignment();
            let Some(runs) = self.poll_round() else {
                break;
            };
            let mut acks = Vec::new();
            let mut offsets = BTreeMap::new();
            let mut submitted = true;
            for run in runs {
                told_caught_up.remove(&run.part);
                offsets.insert(run.part, run.last);
                let (part, records) = (run.part, run.records.records.len());
                match self.decoders.submit(&self.rt, run, true) {
                    Ok(Some(ack)) => {
                        self.pressure.submitted(part, records, ack.clone());
                        if !checkpointing {
                            acks.push(ack);
                        }
                    }
                    Ok(None) => {}
                    Err(_) => submitted = false,
                }
            }
            if !submitted {
                break;
            }
            self.pressure.settle();
            self.resume();
            // Records a rebalance callback submitted during this round came before the rest.
            let early = std::mem::take(&mut self.consumer.context().lock().submitted);
            if !early.is_empty() {
                let mut round = Pending {
                    acks: Vec::new(),
                    offsets: BTreeMap::new(),
                };
                for (part, last, ack) in early {
                    round.offsets.insert(part, last);
                    round.acks.push(ack);
                }
                pending.push_back(round);
            }
            // After the round's records, so the task sees them first. Statistics taken before
            // this round's records of a partition are stale for it: the next ones tell (a task
            // merging by event time would otherwise stop waiting for a partition with lag).
            let caught_up = {
                let mut st = self.consumer.context().lock();
                st.caught_up.retain(|part| !offsets.contains_key(part));
                st.caught_up.clone()
            };
            for part in caught_up {
                if told_caught_up.insert(part) {
                    let _ = self
                        .rt
                        .caught_up_blocking(part.1 as TaskId, Input::Topic(part.0 as u16));
                }
            }
            if checkpointing {
                let due = self
                    .consumer
                    .context()
                    .lock()
                    .checkpointer
                    .as_ref()
                    .is_some_and(Checkpointer::due);
                if due {
                    self.checkpoint(CommitMode::Async);
                }
            } else {
                if !offsets.is_empty() {
                    pending.push_back(Pending { acks, offsets });
                }
                store_applied(&self.consumer, &mut pending, false);
            }
        }
        if checkpointing {
            self.checkpoint(CommitMode::Sync);
            return;
        }
        // Records held back for partitions that will not be read further are applied now, so
        // that their offsets can be stored.
        let _ = self.rt.drain_blocking();
        store_applied(&self.consumer, &mut pending, true);
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            // Nothing stored yet is a normal reason.
            tracing::debug!("final Kafka commit: {e}");
        }
    }

    /// Resumes the paused partitions whose tasks have applied enough of their records
    /// ([`Backpressure::resumable`]).
    fn resume(&mut self) {
        let ctx = self.consumer.context();
        let mut st = ctx.lock();
        let resume = self.pressure.resumable(&st.paused);
        if !resume.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for &(topic, partition) in &resume {
                tpl.add_partition(&ctx.names[topic], partition);
            }
            match self.consumer.resume(&tpl) {
                Ok(()) => {
                    tracing::debug!(partitions = ?resume, "resumed");
                    for part in &resume {
                        st.paused.remove(part);
                    }
                }
                Err(e) => tracing::warn!("cannot resume Kafka partitions {resume:?}: {e}"),
            }
        }
        self.metrics
            .kafka_paused_partitions
            .set(st.paused.len() as i64);
        self.metrics
            .kafka_unapplied
            .set(self.pressure.total() as i64);
    }

    /// The partitions assigned here now, for their shares of `kafka.max_buffered_records`.
    fn refresh_assignment(&mut self) {
        if let Ok(list) = self.consumer.assignment() {
            let topics = &self.topics;
            self.pressure.assigned(
                list.elements()
                    .iter()
                    .filter_map(|e| Some((topics.get(e.topic())?.index, e.partition()))),
            );
        }
    }

    /// Pauses `part` (of `topic`): its task holds more than its share of its records
    /// unapplied ([`Backpressure::over`]).
    fn pause(&self, st: &mut TaskState, part: Part, topic: &str) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, part.1);
        match self.consumer.pause(&tpl) {
            Ok(()) => {
                tracing::debug!(
                    topic,
                    partition = part.1,
                    share = self.pressure.share(),
                    "paused: its task has not applied its records yet"
                );
                st.paused.insert(part);
                self.metrics.kafka_partition_pauses.inc();
            }
            Err(e) => tracing::warn!(topic, partition = part.1, "cannot pause: {e}"),
        }
    }

    /// Up to [`BATCH`] records or 50 ms, grouped into runs of one partition in arrival order,
    /// undecoded. `None` when the dead-letter sink has gone (shutdown).
    fn poll_round(&mut self) -> Option<Vec<Run>> {
        let mut read = 0;
        // Per partition, records of this round: not yet handed over, but counted for pausing.
        let mut reading: HashMap<Part, usize> = HashMap::new();
        let deadline = Instant::now() + Duration::from_millis(50);
        while read < BATCH && Instant::now() < deadline {
            let Some(result) = self.consumer.poll(Duration::from_millis(20)) else {
                continue;
            };
            let msg = match result {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("Kafka: {e}");
                    continue;
                }
            };
            let Some(topic) = self.topics.get(msg.topic()) else {
                continue;
            };
            read += 1;
            let part = (topic.index, msg.partition());
            let upstream = match &topic.decoding {
                Decoding::Direct(up) => Some(*up),
                Decoding::ByHeader(by) => {
                    header(&msg, SOURCE_TOPIC).and_then(|t| by.get(t)).copied()
                }
            };
            let mut st = self.consumer.context().lock();
            // The task's state already holds every record before its position: a record
            // below it is one fetched again (after a seek, or before a rebalance).
            if st
                .positions
                .get(&part)
                .is_some_and(|&next| msg.offset() < next)
            {
                tracing::debug!(
                    topic = msg.topic(),
                    partition = msg.partition(),
                    offset = msg.offset(),
                    "record already applied; skipped"
                );
                continue;
            }
            st.positions.insert(part, msg.offset() + 1);
            tracing::trace!(
                topic = msg.topic(),
                partition = msg.partition(),
                offset = msg.offset(),
                "record read"
            );
            let runs = &mut st.unsubmitted;
            let run = match runs.last_mut() {
                Some(run) if run.part == part => {
                    run.last = msg.offset();
                    run
                }
                _ => {
                    runs.push(Run {
                        part,
                        records: self.decoders.buffer(),
                        last: msg.offset(),
                    });
                    match runs.last_mut() {
                        Some(run) => run,
                        None => continue,
                    }
                }
            };
            match upstream {
                Some(up) => {
                    run.records
                        .push(msg.payload().unwrap_or_default(), msg.offset(), up);
                    let n = reading.entry(part).or_default();
                    *n += 1;
                    if self.pressure.over(part, *n) && !st.paused.contains(&part) {
                        self.pause(&mut st, part, msg.topic());
                    }
                }
                None => {
                    drop(st);
                    // Written by something else, or by a journeyd reading other topics.
                    let why = "no `journeyd-topic` header naming a repartitioned topic";
                    let letter = ("unknown_source_topic", why.to_string());
                    if !reject(&self.metrics, &self.dead_letters, msg.topic(), &msg, letter) {
                        return None;
                    }
                }
            }
        }
        // What a rebalance callback did not already hand to the tasks.
        Some(std::mem::take(
            &mut self.consumer.context().lock().unsubmitted,
        ))
    }

    /// Checkpoints every task with the positions of its partitions, then commits those
    /// positions to Kafka: each checkpoint's, not the positions read, which run ahead by the
    /// records tasks hold for their merge by event time. So a committed offset is covered by a
    /// checkpoint.
    fn checkpoint(&mut self, mode: CommitMode) {
        let ctx = self.consumer.context();
        let mut st = ctx.lock();
        let Some(mut cp) = st.checkpointer.take() else {
            return;
        };
        let (written, fenced) = cp.take(
            &self.rt,
            &|snap| ctx.positions_of(&st, snap),
            &|task, before| ctx.moved(&st, task, before),
        );
        let checkpointed = cp.written_positions();
        st.checkpointer = Some(cp);
        for task in fenced {
            // Dropped: its partitions stay assigned until the group's next rebalance, and
            // their records are ignored; the new owner reads them from its checkpoint.
            st.forget_positions(task);
        }
        if !written {
            return;
        }
        let mut positions: Vec<KafkaPosition> = checkpointed
            .into_iter()
            .filter(|p| TaskId::try_from(p.partition).is_ok_and(|task| self.rt.owns(task)))
            .map(|p| KafkaPosition { max_ts: None, ..p })
            .collect();
        drop(st);
        positions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let at: Vec<String> = positions
            .iter()
            .map(|p| format!("{}/{}@{}", p.topic, p.partition, p.next_offset))
            .collect();
        tracing::debug!(positions = ?at, "tasks checkpointed");
        if positions == self.committed {
            return;
        }
        let mut list = TopicPartitionList::new();
        for p in &positions {
            if let Err(e) =
                list.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next_offset))
            {
                tracing::warn!(topic = p.topic, partition = p.partition, "{e}");
            }
        }
        if list.count() > 0 {
            match self.consumer.commit(&list, mode) {
                Ok(()) => self.committed = positions,
                // Lag monitoring only: the checkpoints hold the positions that matter, and
                // the next checkpoint commits again.
                Err(e) => tracing::debug!("cannot commit offsets to Kafka after a checkpoint: {e}"),
            }
        }
    }
}

/// Stores the offsets of every leading round whose events are all applied.
fn store_applied(consumer: &BaseConsumer<Tasks>, pending: &mut VecDeque<Pending>, wait: bool) {
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
        let Some(round) = pending.pop_front() else {
            return;
        };
        for a in &round.acks {
            let _ = a.try_recv();
        }
        for ((topic, partition), offset) in round.offsets {
            let topic = consumer.context().names[topic].as_str();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> crate::TopicSettings {
        crate::TopicSettings {
            name: name.into(),
            source: "web".into(),
            format: "canonical".into(),
            mapping: None,
            repartition: false,
        }
    }

    /// Issue 14: the consuming thread hands raw bytes over; the worker's decoding gives the
    /// events in offset order and dead-letters the rest with the raw record and its position.
    #[test]
    fn deferred_decoding_keeps_offset_order_and_dead_letters_the_raw_record() {
        let metrics = Arc::new(Metrics::new());
        let (dead_letters, letters) = DeadLetters::channel(8);
        let up = Upstream::new(
            &topic("web"),
            DecodeLimits::default(),
            &metrics,
            &SharedProjection::default(),
        )
        .unwrap();
        let decoders = Arc::new(Decoders::new(
            vec![up],
            vec!["web".into()],
            metrics.clone(),
            dead_letters,
        ));
        let line = |c: u32| format!(r#"{{"customer_id":"c{c}","ts":1767225600000,"event":"e"}}"#);
        let mut raw = RawRecords::default();
        raw.push(line(1).as_bytes(), 10, 0);
        raw.push(b"{not json", 11, 0);
        raw.push(b"", 12, 0);
        raw.push(line(2).as_bytes(), 13, 0);
        let mut ids: Vec<(String, i64)> = Vec::new();
        decoders.deferred((0, 3), raw)(&mut |e, offset| {
            ids.push((e.customer_id.into_owned(), offset));
        });
        assert_eq!(ids, [("c1".into(), 10), ("c2".into(), 13)]);
        // The emptied buffer comes back for the next run.
        let spare = decoders.buffer();
        assert!(spare.bytes.is_empty() && spare.records.is_empty());
        assert!(spare.bytes.capacity() > 0);
        let got: Vec<DeadLetter> = letters.try_iter().collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].record, b"{not json");
        assert_eq!(
            got[0].position,
            Position::Kafka {
                topic: "web".into(),
                partition: 3,
                offset: 11
            }
        );
        assert_eq!(got[0].reason, "not_json");
        assert_eq!(got[1].record, b"");
        assert_eq!(
            metrics
                .ingest_events
                .with_label_values(&["web", "accepted"])
                .get(),
            2
        );
    }
}
