//! The Kafka source: a consumer-group member polled on its own thread.
//!
//! Like Quickwit, journeyd polls a `BaseConsumer` on a plain thread, because rdkafka's async
//! calls turn synchronous during rebalances. Each poll round's records are decoded with their
//! topic's format and submitted to the workers.
//!
//! With checkpoints, the position of every partition (the next offset to read) is tracked as
//! records are polled. Between rounds this thread asks every worker for its snapshot: the
//! workers' queues are FIFO, so the snapshots hold exactly the records before the positions.
//! On every assignment the consumer resumes each partition at its tracked position, which a
//! restart takes from the checkpoint: exactly-once aggregates. Offsets are committed to Kafka
//! after each checkpoint for lag monitoring only.
//!
//! Without checkpoints, offsets are stored for auto-commit once every worker involved has
//! applied the round (at-least-once; a restart starts with empty state).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use journey_api::Metrics;
use journey_core::{DecodeLimits, Event};
use journey_ingest::{DeadLetter, DeadLetters, Decoder, Format, Position};
use journey_runtime::checkpoint::KafkaPosition;
use journey_runtime::RuntimeHandle;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use crate::checkpoint::Checkpointer;
use crate::config::KafkaSettings;
use crate::now_ms;

/// Last offset read per (topic index, partition) in one round.
type Offsets = BTreeMap<(usize, i32), i64>;

/// Next offset to read per (topic index, partition): what the workers' state reflects.
type Positions = Arc<Mutex<HashMap<(usize, i32), i64>>>;

/// Resumes every assigned partition at its tracked position, so a rebalance or a restart
/// neither skips nor repeats a record the state already holds.
struct Resume {
    names: Vec<String>,
    positions: Positions,
}

impl ClientContext for Resume {}

impl ConsumerContext for Resume {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let assigned: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                let positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
                let mut resumed = Vec::new();
                for (topic, partition) in &assigned {
                    let Some(index) = self.names.iter().position(|n| n == topic) else {
                        continue;
                    };
                    if let Some(&next) = positions.get(&(index, *partition)) {
                        if tpl
                            .set_partition_offset(topic, *partition, Offset::Offset(next))
                            .is_ok()
                        {
                            resumed.push(format!("{topic}/{partition}@{next}"));
                        }
                    }
                }
                drop(positions);
                tracing::info!(partitions = assigned.len(), resumed = ?resumed, "Kafka partitions assigned");
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    tracing::error!("cannot take the Kafka assignment: {e}");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Also at shutdown. The customers' state stays with this instance either way.
                tracing::info!(partitions = tpl.count(), "Kafka partitions revoked");
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    tracing::error!("cannot give up the Kafka assignment: {e}");
                }
            }
            other => {
                tracing::error!("Kafka rebalance failed: {other:?}");
                let _ = consumer.unassign();
            }
        }
    }
}

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
    /// Starts consuming. With a `checkpointer`, partitions resume at `restored` (from the
    /// checkpoint the workers were restored from) and this thread takes the checkpoints.
    pub fn start(
        settings: &KafkaSettings,
        limits: DecodeLimits,
        rt: RuntimeHandle,
        metrics: Arc<Metrics>,
        dead_letters: DeadLetters,
        checkpointer: Option<Checkpointer>,
        restored: Vec<KafkaPosition>,
    ) -> Result<KafkaSource> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &settings.brokers)
            .set("group.id", &settings.group_id)
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // When the prefetch queue is full, librdkafka waits this long before fetching a
            // partition again. Its default (1 s) starves a consumer that decodes as it reads:
            // every partition stalls together. 10 ms tripled throughput (docs/benchmarks.md).
            .set("fetch.queue.backoff.ms", "10");
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
        let names: Vec<String> = settings.topics.iter().map(|t| t.name.clone()).collect();
        let mut start_at = HashMap::new();
        for p in restored {
            match names.iter().position(|n| *n == p.topic) {
                Some(i) => {
                    start_at.insert((i, p.partition), p.next_offset);
                }
                None => tracing::warn!(
                    topic = p.topic,
                    "the checkpoint has a position for a topic no longer configured; ignored"
                ),
            }
        }
        let positions: Positions = Arc::new(Mutex::new(start_at));
        let consumer: BaseConsumer<Resume> = cfg
            .create_with_context(Resume {
                names: names.clone(),
                positions: positions.clone(),
            })
            .context("cannot create the Kafka consumer")?;
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
        let subscribed: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer
            .subscribe(&subscribed)
            .context("cannot subscribe to the Kafka topics")?;
        tracing::info!(brokers = %settings.brokers, group = %settings.group_id, topics = ?subscribed, "consuming from Kafka");
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
        let source = Consume {
            consumer,
            topics,
            names,
            rt,
            metrics,
            dead_letters,
            positions,
            checkpointer,
            committed: Vec::new(),
        };
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("journeyd-kafka".into())
            .spawn(move || source.run(&flag))
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

/// The consuming thread's state.
struct Consume {
    consumer: BaseConsumer<Resume>,
    topics: HashMap<String, Topic>,
    names: Vec<String>,
    rt: RuntimeHandle,
    metrics: Arc<Metrics>,
    dead_letters: DeadLetters,
    positions: Positions,
    checkpointer: Option<Checkpointer>,
    /// Positions last committed to Kafka, so an idle stream commits nothing.
    committed: Vec<KafkaPosition>,
}

impl Consume {
    fn run(mut self, stop: &AtomicBool) {
        let mut pending: VecDeque<Pending> = VecDeque::new();
        while !stop.load(Ordering::Relaxed) {
            let Some((events, offsets)) = self.poll_round() else {
                break;
            };
            if self.checkpointer.is_some() {
                if !events.is_empty() && self.rt.submit_blocking(events).is_err() {
                    break;
                }
                if self.checkpointer.as_ref().is_some_and(Checkpointer::due) {
                    self.checkpoint(CommitMode::Async);
                }
            } else {
                if !offsets.is_empty() {
                    match self.rt.submit_acked_blocking(events) {
                        Ok(acks) => pending.push_back(Pending { acks, offsets }),
                        Err(_) => break,
                    }
                }
                store_applied(&self.consumer, &self.names, &mut pending, false);
            }
        }
        if self.checkpointer.is_some() {
            self.checkpoint(CommitMode::Sync);
            return;
        }
        store_applied(&self.consumer, &self.names, &mut pending, true);
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            // Nothing stored yet is a normal reason.
            tracing::debug!("final Kafka commit: {e}");
        }
    }

    /// Up to [`BATCH`] records or 50 ms: the decoded events and the offsets they end at.
    /// `None` when the dead-letter sink has gone (shutdown).
    fn poll_round(&mut self) -> Option<(Vec<Event<'static>>, Offsets)> {
        let mut events: Vec<Event<'static>> = Vec::new();
        let mut offsets: BTreeMap<(usize, i32), i64> = BTreeMap::new();
        let mut accepted: HashMap<usize, u64> = HashMap::new();
        let deadline = Instant::now() + Duration::from_millis(50);
        while events.len() < BATCH && Instant::now() < deadline {
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
            let key = (topic.index, msg.partition());
            offsets.insert(key, msg.offset());
            self.positions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, msg.offset() + 1);
            let payload = msg.payload().unwrap_or_default();
            match topic.decoder.decode(payload) {
                Ok(e) => {
                    *accepted.entry(topic.index).or_default() += 1;
                    events.push(e.into_owned());
                }
                Err(e) => {
                    let source = topic.source.as_str();
                    self.metrics
                        .ingest_events
                        .with_label_values(&[source, "rejected"])
                        .inc();
                    self.metrics
                        .ingest_rejected
                        .with_label_values(&[source, e.reason()])
                        .inc();
                    tracing::debug!(
                        topic = msg.topic(),
                        partition = msg.partition(),
                        offset = msg.offset(),
                        "rejected: {e}"
                    );
                    let letter = DeadLetter {
                        at: now_ms(),
                        reason: e.reason(),
                        error: e.to_string(),
                        source: source.to_string(),
                        position: Position::Kafka {
                            topic: msg.topic().to_string(),
                            partition: msg.partition(),
                            offset: msg.offset(),
                        },
                        record: payload.to_vec(),
                    };
                    if !self.dead_letters.send_blocking(letter) {
                        return None;
                    }
                }
            }
        }
        for t in self.topics.values() {
            if let Some(n) = accepted.get(&t.index) {
                t.accepted.inc_by(*n);
            }
        }
        Some((events, offsets))
    }

    /// Checkpoints the workers with the positions of everything submitted so far, then
    /// commits those positions to Kafka.
    fn checkpoint(&mut self, mode: CommitMode) {
        let Some(cp) = self.checkpointer.as_mut() else {
            return;
        };
        let mut positions: Vec<KafkaPosition> = self
            .positions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(&(topic, partition), &next_offset)| KafkaPosition {
                topic: self.names[topic].clone(),
                partition,
                next_offset,
            })
            .collect();
        positions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        if !cp.take(&self.rt, positions.clone()) || positions == self.committed {
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
                // Lag monitoring only: the checkpoint holds the positions that matter, and
                // the next checkpoint commits again.
                Err(e) => tracing::debug!("cannot commit offsets to Kafka after a checkpoint: {e}"),
            }
        }
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
    consumer: &BaseConsumer<Resume>,
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
