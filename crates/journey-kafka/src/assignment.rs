//! Partitions → tasks: what happens when the consumer group assigns or revokes partitions.
//!
//! Kafka Streams' `TaskManager`, reduced. Partition `p` of every input topic belongs to task
//! `p`. When partitions are assigned, their task is claimed and restored from the state store
//! (its newest checkpoint generation, or the state this instance kept when it last gave the
//! task up if nobody wrote the task since) and each partition is sought to the position that
//! state reflects. When they are revoked, the task is checkpointed, kept in memory for a quick
//! return, and dropped from the workers. A checkpoint write refused by the store (fenced:
//! another instance took the task over while this one was paused) drops the task at once.
//!
//! A partition is caught up when librdkafka's statistics show its fetcher at the high
//! watermark with nothing queued; its task then lets it stop holding the watermark once it has
//! been quiet for `kafka.idle_timeout`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use journey_api::Metrics;
use journey_runtime::checkpoint::{Checkpointer, KafkaPosition, Restored, StoredTask, Written};
use journey_runtime::{Input, RestoredTask, RuntimeHandle, TaskId, TaskSnapshot};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use crate::source::{Decoders, RawRecords};
use crate::stall::{stalled_message, Change, Progress, Stalls};
use crate::Part;

/// The records of one partition read in one poll round, in offset order, still undecoded: the
/// worker of their task decodes them ([`crate::source::Decoders`]).
pub(crate) struct Run {
    pub(crate) part: Part,
    pub(crate) records: RawRecords,
    /// Offset of the last record read.
    pub(crate) last: i64,
}

/// What the rebalance callback and the consuming loop share.
pub(crate) struct TaskState {
    /// Next offset to read per partition: what the tasks' state reflects once the records
    /// in `unsubmitted` are applied.
    pub(crate) positions: HashMap<Part, i64>,
    /// Records of the current poll round not yet handed to their tasks. A rebalance callback
    /// (which runs inside a poll) hands them over first, so a revoked task's checkpoint holds
    /// exactly the records before its positions.
    pub(crate) unsubmitted: Vec<Run>,
    /// Tasks not running here whose state is at hand, kept when revoked so that a task that
    /// comes back continues at once, with the store generation that state continues (the
    /// state is used only if that is still the newest).
    pub(crate) stored: BTreeMap<TaskId, (StoredTask, Option<journey_state::Generation>)>,
    pub(crate) checkpointer: Option<Checkpointer>,
    /// Partitions the latest statistics showed caught up.
    pub(crate) caught_up: Vec<Part>,
    /// Without checkpoints: records a rebalance callback submitted, by partition with the
    /// offset of the last one, and the acknowledgement after which that offset is stored.
    pub(crate) submitted: Vec<(Part, i64, flume::Receiver<()>)>,
    /// Partitions paused because their task's merge buffer holds too many of their records
    /// (`kafka.max_buffered_records`); resumed when that drains or when they are revoked.
    pub(crate) paused: BTreeSet<Part>,
    /// Assigned partitions behind and not moving (`kafka.stall_timeout`).
    pub(crate) stalls: Stalls,
}

/// The consumer's context: restores tasks on assignment and checkpoints them on revocation.
pub(crate) struct Tasks {
    pub(crate) names: Vec<String>,
    /// The index of the internal repartition topic in `names`, and whether the repartitioner
    /// has written out everything it can read: until it has, an internal partition at its end
    /// is only waiting for records, not idle.
    pub(crate) repartitioned: Option<(usize, Arc<AtomicBool>)>,
    pub(crate) rt: RuntimeHandle,
    pub(crate) metrics: Arc<Metrics>,
    /// Decodes submitted records on the workers.
    pub(crate) decoders: Arc<Decoders>,
    pub(crate) state: Mutex<TaskState>,
}

impl TaskState {
    /// Forgets where `task`'s partitions were: its next state decides.
    pub(crate) fn forget_positions(&mut self, task: TaskId) {
        self.positions.retain(|part, _| part.1 != task as i32);
    }

    fn set_positions(&mut self, names: &[String], kafka: &[KafkaPosition]) {
        for p in kafka {
            if let Some(i) = names.iter().position(|n| *n == p.topic) {
                self.positions.insert((i, p.partition), p.next_offset);
            }
        }
    }
}

impl Tasks {
    pub(crate) fn lock(&self) -> MutexGuard<'_, TaskState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn index(&self, topic: &str) -> Option<usize> {
        self.names.iter().position(|n| n == topic)
    }

    /// Hands the round's records read so far to their tasks, before a rebalance changes who
    /// owns what. Without checkpoints their offsets are stored for auto-commit once applied
    /// (by the consuming loop; a revoked partition's by [`Tasks::revoke`]). Not waited for
    /// here: a task merging partitions by event time may hold them back.
    fn submit_unsubmitted(&self, st: &mut TaskState) {
        let checkpointing = st.checkpointer.is_some();
        for run in std::mem::take(&mut st.unsubmitted) {
            let (part, last) = (run.part, run.last);
            match self.decoders.submit(&self.rt, run, !checkpointing) {
                Ok(Some(ack)) => st.submitted.push((part, last, ack)),
                Ok(None) => {}
                Err(_) => return,
            }
        }
    }

    /// The Kafka positions of a task's partitions for its checkpoint: the offset of each one's
    /// first record the snapshot does not hold. That is the task's own position where it knows
    /// one (records it buffers for the merge by event time are not applied, so not in the
    /// snapshot), else the next offset to read (nothing read since it started).
    pub(crate) fn positions_of(&self, st: &TaskState, snap: &TaskSnapshot) -> Vec<KafkaPosition> {
        snap.inputs
            .iter()
            .filter_map(|&(input, max_ts)| {
                let Input::Topic(i) = input else { return None };
                let part = (i as usize, snap.task as i32);
                let own = snap.positions.iter().find(|(p, _)| *p == input);
                let next_offset = match own {
                    Some(&(_, at)) => at,
                    None => *st.positions.get(&part)?,
                };
                Some(KafkaPosition {
                    topic: self.names[part.0].clone(),
                    partition: part.1,
                    next_offset,
                    max_ts,
                })
            })
            .collect()
    }

    /// Whether `task`'s partitions are no longer at the positions `before` lists (records read
    /// since, applied or dead-lettered, or a partition gained or lost).
    pub(crate) fn moved(&self, st: &TaskState, task: TaskId, before: &[KafkaPosition]) -> bool {
        let mut now = 0;
        for (&(topic, partition), &next) in &st.positions {
            if partition != task as i32 {
                continue;
            }
            now += 1;
            let same = before.iter().any(|p| {
                p.partition == partition && p.next_offset == next && p.topic == self.names[topic]
            });
            if !same {
                return true;
            }
        }
        now != before.len()
    }

    /// Partitions assigned: restore each task not running here, then seek every partition to
    /// the position its task's state reflects.
    fn assign(&self, tpl: &mut TopicPartitionList) {
        let mut by_task: BTreeMap<TaskId, Vec<(String, usize)>> = BTreeMap::new();
        for e in tpl.elements() {
            if let (Some(i), Ok(task)) = (self.index(e.topic()), TaskId::try_from(e.partition())) {
                by_task
                    .entry(task)
                    .or_default()
                    .push((e.topic().to_string(), i));
            }
        }
        let mut guard = self.lock();
        let st = &mut *guard;
        self.submit_unsubmitted(st);
        let mut resumed = Vec::new();
        // Named in the log: the workers mark tasks owned asynchronously, so asking the runtime
        // right after assigning could miss the last ones.
        let assigned: Vec<TaskId> = by_task.keys().copied().collect();
        // Not ready until every assigned task runs here with its state.
        let mut restoring = by_task.keys().filter(|&&t| !self.rt.owns(t)).count();
        self.rt.set_restoring(restoring);
        for (task, parts) in by_task {
            let restored: Option<RestoredTask> = if self.rt.owns(task) {
                None
            } else {
                let kept = st.stored.remove(&task);
                match st.checkpointer.as_mut() {
                    None => kept.map(|(s, _)| {
                        st.set_positions(&self.names, &s.kafka);
                        s.task
                    }),
                    Some(cp) => {
                        let have = kept.as_ref().and_then(|(_, g)| *g);
                        let cfg = self.rt.engine_config().clone();
                        match cp.restore(task, have, &self.names, &cfg, &self.rt.rules()) {
                            Ok(Restored::Kept) => kept.map(|(s, _)| {
                                st.set_positions(&self.names, &s.kafka);
                                s.task
                            }),
                            Ok(Restored::Stored(s)) => {
                                st.forget_positions(task);
                                st.set_positions(&self.names, &s.kafka);
                                Some(s.task)
                            }
                            Ok(Restored::Empty) => {
                                st.forget_positions(task);
                                None
                            }
                            Err(e) => {
                                // Running the task without its state would silently lose what
                                // it holds; another instance (or this one restarted) retries.
                                // Said once, in the log's format; `eprintln!` would print it
                                // twice and panic (abort, here) on a closed standard error.
                                tracing::error!(task, "cannot restore the task, stopping: {e}");
                                std::process::exit(1);
                            }
                        }
                    }
                }
            };
            let inputs = parts.iter().map(|(_, i)| Input::Topic(*i as u16)).collect();
            let new = !self.rt.owns(task);
            if self.rt.assign_blocking(task, restored, inputs).is_err() {
                return;
            }
            if new {
                restoring = restoring.saturating_sub(1);
                self.rt.set_restoring(restoring);
            }
            for (topic, i) in parts {
                if let Some(&next) = st.positions.get(&(i, task as i32)) {
                    if tpl
                        .set_partition_offset(&topic, task as i32, Offset::Offset(next))
                        .is_ok()
                    {
                        resumed.push(format!("{topic}/{task}@{next}"));
                    }
                }
            }
        }
        self.rt.set_restoring(0);
        tracing::info!(partitions = tpl.count(), tasks = ?assigned, resumed = ?resumed, "Kafka partitions assigned");
    }

    /// Resumes the revoked partitions this instance paused: librdkafka keeps a partition's
    /// pause across a rebalance, and whoever is assigned it next (this instance included)
    /// must fetch it.
    fn resume_revoked(
        &self,
        consumer: &BaseConsumer<Self>,
        st: &mut TaskState,
        tpl: &TopicPartitionList,
    ) {
        let mut resume = TopicPartitionList::new();
        for e in tpl.elements() {
            if let Some(i) = self.index(e.topic()) {
                if st.paused.remove(&(i, e.partition())) {
                    resume.add_partition(e.topic(), e.partition());
                }
            }
        }
        if resume.count() > 0 {
            if let Err(e) = consumer.resume(&resume) {
                tracing::debug!("cannot resume revoked partitions: {e}");
            }
        }
        self.metrics
            .kafka_paused_partitions
            .set(st.paused.len() as i64);
    }

    /// Partitions revoked: each task left without partitions is checkpointed, kept for a quick
    /// return, and dropped.
    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let mut by_task: BTreeMap<TaskId, Vec<Input>> = BTreeMap::new();
        for e in tpl.elements() {
            if let (Some(i), Ok(task)) = (self.index(e.topic()), TaskId::try_from(e.partition())) {
                by_task
                    .entry(task)
                    .or_default()
                    .push(Input::Topic(i as u16));
            }
        }
        let mut guard = self.lock();
        let st = &mut *guard;
        self.submit_unsubmitted(st);
        self.resume_revoked(consumer, st, tpl);
        let checkpointing = st.checkpointer.is_some();
        for (task, inputs) in by_task {
            let Ok(revoked) = self.rt.revoke_positions_blocking(task, inputs) else {
                continue;
            };
            // Records the task held back are dropped: the partitions are read again from the
            // first record not applied, by whoever gets them (this instance included).
            for &(input, next) in &revoked.positions {
                let Input::Topic(i) = input else { continue };
                let part = (i as usize, task as i32);
                st.positions.insert(part, next);
                if !checkpointing && next > 0 {
                    let topic = self.names[part.0].as_str();
                    if let Err(e) = consumer.store_offset(topic, part.1, next - 1) {
                        tracing::debug!(topic, partition = part.1, "cannot store the offset: {e}");
                    }
                }
            }
            let Some(snap) = revoked.snapshot else {
                continue;
            };
            let kafka = self.positions_of(st, &snap);
            let generation = match st.checkpointer.as_mut() {
                Some(cp) => {
                    if cp.write(&snap, kafka.clone()) == Written::Fenced {
                        // Another instance owns the task: nothing of this state is kept.
                        st.forget_positions(task);
                        continue;
                    }
                    cp.release(task)
                }
                None => None,
            };
            let rt = &self.rt;
            match journey_core::Shard::restore(&snap.shard, rt.engine_config().clone(), rt.rules())
            {
                Ok(shard) => {
                    let task = RestoredTask {
                        task,
                        shard,
                        inputs: snap.inputs.clone(),
                    };
                    st.stored
                        .insert(task.task, (StoredTask { task, kafka }, generation));
                }
                Err(e) => tracing::error!(task, "cannot keep the revoked task's state: {e}"),
            }
        }
        tracing::info!(partitions = tpl.count(), tasks = ?self.rt.owned_tasks(), "Kafka partitions revoked");
    }
}

impl ClientContext for Tasks {
    fn stats(&self, stats: Statistics) {
        let now = Instant::now();
        let mut caught_up = Vec::new();
        let mut st = self.lock();
        st.stalls.report(now);
        let mut assigned = HashSet::new();
        for (name, topic) in &stats.topics {
            let Some(i) = self.index(name) else { continue };
            // The internal topic's end means nothing while its writer is behind.
            let ends_count = match &self.repartitioned {
                Some((internal, upstream)) => i != *internal || upstream.load(Ordering::Relaxed),
                None => true,
            };
            for p in topic.partitions.values() {
                if p.partition < 0 || !p.desired {
                    continue;
                }
                let part = (i, p.partition);
                assigned.insert(part);
                if ends_count && at_end(p) {
                    caught_up.push(part);
                }
                let progress = Progress::of(p, st.paused.contains(&part));
                match st.stalls.observe(part, progress, now) {
                    Some(Change::Stalled { progress, since }) => tracing::warn!(
                        topic = %name,
                        partition = p.partition,
                        leader = p.leader,
                        fetch_state = %p.fetch_state,
                        "{}",
                        stalled_message(name, p.partition, &progress, since)
                    ),
                    Some(Change::Moving { after }) => tracing::info!(
                        topic = %name,
                        partition = p.partition,
                        "Kafka partition {name}/{} is moving again after {}s",
                        p.partition,
                        after.as_secs()
                    ),
                    None => {}
                }
            }
        }
        st.stalls.retain(|p| assigned.contains(p));
        self.metrics
            .kafka_stalled_partitions
            .set(st.stalls.stalled() as i64);
        st.caught_up = caught_up;
    }
}

/// Whether a partition's statistics show every record up to its high watermark handed to the
/// application: the fetcher has reached the high watermark with nothing queued, and the
/// application's position (the offset after the last record handed over) is there too, or
/// nothing was handed over since the partition was assigned or sought. The fetcher's position
/// alone does not do: pausing a partition drops what was fetched ahead and leaves that
/// position at the end, while the records from the application's position on are still to
/// come.
fn at_end(p: &rdkafka::statistics::Partition) -> bool {
    p.fetchq_cnt == 0
        && p.hi_offset >= 0
        && p.next_offset >= p.hi_offset
        && (p.app_offset < 0 || p.app_offset >= p.hi_offset)
}

impl ConsumerContext for Tasks {
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
                self.metrics
                    .rebalances
                    .with_label_values(&["assigned"])
                    .inc();
                self.assign(tpl);
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
                self.metrics
                    .rebalances
                    .with_label_values(&["revoked"])
                    .inc();
                self.revoke(consumer, tpl);
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

#[cfg(test)]
mod tests {
    use super::at_end;
    use rdkafka::statistics::Partition;

    fn partition(fetchq_cnt: i64, next_offset: i64, app_offset: i64) -> Partition {
        Partition {
            fetchq_cnt,
            next_offset,
            app_offset,
            hi_offset: 100,
            ..Partition::default()
        }
    }

    /// A paused partition's fetcher stays where it had fetched to, the end, while the
    /// application has only had the records before 60: not caught up, or its task would stop
    /// waiting for those 40 records and apply newer ones of its other partitions first.
    #[test]
    fn a_partition_is_at_its_end_once_the_application_has_every_record() {
        assert!(at_end(&partition(0, 100, 100)));
        assert!(
            !at_end(&partition(0, 100, 60)),
            "paused after fetching ahead"
        );
        assert!(!at_end(&partition(5, 100, 95)), "records queued");
        assert!(!at_end(&partition(0, 90, 90)), "the fetcher is behind");
        assert!(
            at_end(&partition(0, 100, -1001)),
            "nothing handed over since assigned at the end"
        );
    }
}
