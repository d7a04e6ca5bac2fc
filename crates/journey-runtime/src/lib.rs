//! journey-runtime: worker threads that own tasks.
//!
//! A task is partition index `p` of the co-partitioned input topics and owns one
//! [`Shard`] ([`task`]); Kafka Streams calls it a `StreamTask`. Each worker thread owns any
//! number of tasks outright, so the hot path takes no lock: task `p` always runs on worker
//! `p mod workers` ([`RuntimeHandle::worker_of`]). Kafka records reach the task of their
//! partition; HTTP and file input reach the task of the partition the producers' partitioner
//! gives the customer id ([`partitioner`]), so one customer is always in one task.
//!
//! Events reach a worker through a bounded channel, which gives backpressure. A task merges its
//! Kafka partitions' records by event time, holding them in per-partition buffers while a
//! lagging partition has nothing buffered ([`task`]); the worker wakes every tick to apply
//! those whose wait is over. Workers publish each task's partial aggregates for readers at a
//! fixed interval, so queries never block ingest, and move each task's watermark from its
//! inputs' event times ([`task::Task`]). This crate reads the clock; `journey-core` never does.

pub mod checkpoint;
pub mod partitioner;
pub mod task;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use journey_core::agg::Aggregates;
use journey_core::time::Millis;
use journey_core::{
    ApplyError, CustomerView, EngineConfig, Event, Projection, Rules, Shard, SharedProjection,
};

pub use partitioner::Partitioner;
pub use task::{
    Idleness, Input, Tally, Task, TaskId, TaskSnapshot, DEFAULT_MAX_TASK_IDLE, MAX_BUFFERED,
};

/// Called by a worker for each event its shard refused (other than a duplicate), so the
/// service can keep it as a dead letter.
#[derive(Clone)]
pub struct RejectHook(pub Arc<RejectFn>);

pub type RejectFn = dyn Fn(&Event<'static>, &ApplyError) + Send + Sync;

impl std::fmt::Debug for RejectHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RejectHook")
    }
}

/// How the workers run.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub workers: usize,
    /// Number of tasks: the partition count of the input topics with Kafka, else
    /// `runtime.tasks`. Routing of HTTP and file input depends on it, figures do not.
    pub tasks: u32,
    /// How HTTP and file input find their task (`kafka.partitioner`).
    pub partitioner: Partitioner,
    /// Create every task at start (no Kafka). With Kafka, tasks are created when their
    /// partitions are assigned ([`RuntimeHandle::assign`]).
    pub own_all_tasks: bool,
    /// Batches queued per worker before producers wait.
    pub channel_capacity: usize,
    pub publish_interval: Duration,
    pub tick_interval: Duration,
    /// A caught-up Kafka partition quiet this long stops holding its task's watermark
    /// (`kafka.idle_timeout`).
    pub idle_timeout: Duration,
    /// How long a task holds its other inputs' records back for a Kafka partition that has lag
    /// and nothing buffered, before applying them anyway (`kafka.max_task_idle`; Kafka
    /// Streams' `max.task.idle.ms`). See [`task`].
    pub max_task_idle: Duration,
    /// Live mode: idle inputs stop holding the watermark, and with every input idle event time
    /// advances with the wall clock, so sessions close when traffic pauses. Off for replays.
    pub live: bool,
    pub on_reject: Option<RejectHook>,
    /// Nice value of the worker threads (0: unchanged). Above 0, the scheduler prefers the
    /// threads answering queries over the workers whenever both want a core, which is what
    /// keeps query latency low while ingest saturates the machine.
    pub worker_nice: i32,
}

/// Tasks without Kafka (`runtime.tasks`): divisible by 1, 2, 3, 4 and 6 workers.
pub const DEFAULT_TASKS: u32 = 12;

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            tasks: DEFAULT_TASKS,
            partitioner: Partitioner::Murmur2,
            own_all_tasks: true,
            channel_capacity: 64,
            publish_interval: Duration::from_secs(1),
            tick_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            max_task_idle: DEFAULT_MAX_TASK_IDLE,
            live: true,
            on_reject: None,
            worker_nice: 0,
        }
    }
}

/// The runtime has shut down; nothing more can be submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the runtime has stopped")]
pub struct Stopped;

/// Why events were not queued. Nothing of the submission was queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the runtime has stopped")]
    Stopped,
    /// The partitions of these tasks are not assigned to this instance (yet): a retry can
    /// succeed once the consumer group has assigned them.
    #[error("partitions {0:?} are not assigned to this instance")]
    NotAssigned(Vec<TaskId>),
}

impl From<Stopped> for SubmitError {
    fn from(_: Stopped) -> SubmitError {
        SubmitError::Stopped
    }
}

/// Counters the workers keep for metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub applied: AtomicU64,
    pub late: AtomicU64,
    pub rejected_too_many_events: AtomicU64,
    pub duplicates: AtomicU64,
    /// Kafka records applied while a partition of their task with lag had nothing buffered,
    /// after `kafka.max_task_idle` or past [`MAX_BUFFERED`]: possibly ahead of its records.
    pub merge_forced: AtomicU64,
    /// Sum and count of the time from submission to applied, in microseconds.
    pub latency_us_sum: AtomicU64,
    pub latency_count: AtomicU64,
}

/// A task restored from a checkpoint, ready to run.
#[derive(Debug)]
pub struct RestoredTask {
    pub task: TaskId,
    pub shard: Shard,
    /// Largest event time per input, from the checkpoint.
    pub inputs: Vec<(Input, Option<Millis>)>,
}

/// Records of one Kafka partition whose decoding is left to the worker that applies them:
/// called once, on that worker's thread, when the batch reaches its task, it hands the events
/// in offset order to the sink, each with its record's offset (the task's checkpoint position
/// is the offset of its first record not applied). The events may borrow the records' bytes:
/// a task with nothing to merge applies them as they come, without copying their strings
/// ([`Task::receive_with`]). Whatever it cannot decode it reports itself (dead letters,
/// metrics); the Kafka source submits these so that its own thread only moves bytes.
pub type Deferred = Box<dyn FnOnce(&mut Sink<'_>) + Send>;

/// Where a [`Deferred`] decoding hands each event and its record's offset.
pub type Sink<'s> = dyn FnMut(Event<'_>, i64) + 's;

/// The events of a submission: decoded already, or decoded by the worker.
enum Batch {
    Decoded(Vec<Event<'static>>),
    Deferred(Deferred),
}

/// What revoking partitions of a task gives back.
#[derive(Debug)]
pub struct Revoked {
    /// The task's final snapshot, once it has no partition left (it is dropped).
    pub snapshot: Option<TaskSnapshot>,
    /// Each revoked partition's offset of its first record not applied (records it had
    /// buffered are dropped), where the task knows it: where it must be read from again.
    pub positions: Vec<(Input, i64)>,
}

enum Msg {
    /// Events of one input of one task, when they were submitted, and who to tell once they
    /// are applied.
    Events {
        task: TaskId,
        input: Input,
        events: Batch,
        /// Push input: the stream time of the HTTP/file stream before each event (epoch ms).
        stream_before: Vec<Millis>,
        /// Kafka: the offset after the batch's last record.
        read_to: Option<i64>,
        submitted: Instant,
        ack: Option<flume::Sender<()>>,
    },
    /// The HTTP/file stream has reached this event time (after everything queued before).
    PushTime(Millis),
    /// A Kafka partition reached its end.
    CaughtUp {
        task: TaskId,
        input: Input,
    },
    /// Partitions assigned: create the task from `restored` if it is not here,
    /// then add the inputs.
    Assign {
        task: TaskId,
        restored: Box<RestoredTask>,
        inputs: Vec<Input>,
    },
    /// Partitions revoked: remove the inputs (dropping their buffered records); once the task
    /// has no partition left, reply with its final snapshot and drop it.
    Revoke {
        task: TaskId,
        inputs: Vec<Input>,
        reply: flume::Sender<Revoked>,
    },
    Rules(Arc<Rules>),
    Customer(TaskId, String, flume::Sender<Option<CustomerView>>),
    /// Apply everything queued before, publish, acknowledge.
    Sync(flume::Sender<()>),
    /// Apply everything queued before and reply with every task's snapshot.
    Snapshot(flume::Sender<Vec<TaskSnapshot>>),
    /// Apply everything queued before and reply with the snapshots of the tasks whose
    /// [`task::Task::changes`] differ from the given ones (tasks not listed count as changed).
    SnapshotChanged(Arc<BTreeMap<TaskId, u64>>, flume::Sender<Vec<TaskSnapshot>>),
    /// End of input: apply every buffered record, close every session, publish, acknowledge.
    Flush(flume::Sender<()>),
    /// Apply every buffered record without waiting for lagging partitions (the source stops).
    Drain(flume::Sender<()>),
    /// Publish and exit; handles still around get [`Stopped`] from then on.
    Stop,
}

/// Push input of one submission by task: the events, and the push stream time before each.
type PushParts = BTreeMap<TaskId, (Vec<Event<'static>>, Vec<Millis>)>;

/// One worker's tasks with their latest partial aggregates and watermark (epoch ms).
type Published = Vec<(TaskId, Arc<Aggregates>, Millis)>;

/// What workers write and readers read. Workers never hold the senders, so dropping the
/// last handle disconnects the channels and lets them finish.
struct Shared {
    /// Per worker: its tasks' published aggregates.
    published: Vec<RwLock<Published>>,
    /// Per task: whether this instance owns it.
    owned: Vec<AtomicBool>,
    stats: Stats,
}

struct Inner {
    senders: Vec<flume::Sender<Msg>>,
    shared: Arc<Shared>,
    rules: RwLock<Arc<Rules>>,
    /// The attribute paths the rules and breakdowns read, for the decoders feeding this runtime.
    projection: SharedProjection,
    /// Shared by producers from before they decode a batch until it is submitted
    /// ([`RuntimeHandle::decoding`]); a rules swap holds it exclusively.
    decode_gate: Arc<tokio::sync::RwLock<()>>,
    cfg: Arc<EngineConfig>,
    tasks: u32,
    partitioner: Partitioner,
    /// Largest event time submitted by HTTP and file input (epoch ms): its stream time.
    push_time: std::sync::atomic::AtomicI64,
    /// Tasks assigned to this instance whose restore from the state store has not finished.
    restoring: std::sync::atomic::AtomicUsize,
}

/// A cheap, cloneable handle for producers and readers.
#[derive(Clone)]
pub struct RuntimeHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RuntimeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeHandle")
            .field("workers", &self.workers())
            .field("tasks", &self.tasks())
            .finish()
    }
}

/// The running workers. Dropping the last handle and calling [`Runtime::shutdown`] stops them.
#[derive(Debug)]
pub struct Runtime {
    handle: RuntimeHandle,
    threads: Vec<JoinHandle<()>>,
}

/// Sets the calling thread's nice value (0 leaves it alone). On Linux the nice value is per
/// thread, so only the caller changes; elsewhere this does nothing.
pub fn set_thread_nice(nice: i32) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    if nice != 0 {
        rustix::process::setpriority_process(None, nice)?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
    Ok(())
}

/// The acknowledgement of a submission, when asked for: the worker sends once it is applied.
type AckChannel = (Option<flume::Sender<()>>, Option<flume::Receiver<()>>);

fn ack_channel(ack: bool) -> AckChannel {
    if ack {
        let (tx, rx) = flume::bounded(1);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    }
}

fn wall_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

impl Runtime {
    /// Starts `rc.workers` worker threads. With `rc.own_all_tasks`, every task not in
    /// `restored` starts empty; otherwise only the restored ones run until [`RuntimeHandle::assign`].
    pub fn start(
        cfg: Arc<EngineConfig>,
        rules: Arc<Rules>,
        rc: RuntimeConfig,
        restored: Vec<RestoredTask>,
    ) -> Runtime {
        let workers = rc.workers.max(1);
        let tasks = rc.tasks.max(1);
        let now = Instant::now();
        let mut initial: Vec<BTreeMap<TaskId, Task>> =
            (0..workers).map(|_| BTreeMap::new()).collect();
        let owned: Vec<AtomicBool> = (0..tasks).map(|_| AtomicBool::new(false)).collect();
        for r in restored {
            if r.task >= tasks {
                continue;
            }
            let mut t = Task::new(r.task, r.shard, now, rc.live, idleness(&rc));
            t.set_max_idle(rc.max_task_idle);
            for (input, max_ts) in r.inputs {
                t.add_input(input, max_ts, now);
            }
            owned[r.task as usize].store(true, Ordering::Relaxed);
            initial[r.task as usize % workers].insert(r.task, t);
        }
        if rc.own_all_tasks {
            for task in 0..tasks {
                initial[task as usize % workers]
                    .entry(task)
                    .or_insert_with(|| {
                        let shard = Shard::new(cfg.clone(), rules.clone());
                        let mut t = Task::new(task, shard, now, rc.live, idleness(&rc));
                        t.set_max_idle(rc.max_task_idle);
                        t
                    });
                owned[task as usize].store(true, Ordering::Relaxed);
            }
        }
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        let mut published = Vec::new();
        for w in &initial {
            let (tx, rx) = flume::bounded(rc.channel_capacity.max(1));
            senders.push(tx);
            receivers.push(rx);
            published.push(RwLock::new(w.values().map(publication).collect()));
        }
        let shared = Arc::new(Shared {
            published,
            owned,
            stats: Stats::default(),
        });
        let inner = Arc::new(Inner {
            senders,
            shared: shared.clone(),
            projection: SharedProjection::new(Projection::for_engine(&rules, &cfg.breakdowns)),
            decode_gate: Arc::default(),
            rules: RwLock::new(rules),
            cfg,
            tasks,
            partitioner: rc.partitioner,
            push_time: std::sync::atomic::AtomicI64::new(Millis::MIN),
            restoring: std::sync::atomic::AtomicUsize::new(0),
        });
        let threads = initial
            .into_iter()
            .zip(receivers)
            .enumerate()
            .map(|(i, (tasks, rx))| {
                let w = Worker {
                    index: i,
                    tasks,
                    shared: shared.clone(),
                    rc: rc.clone(),
                    dirty: false,
                };
                std::thread::Builder::new()
                    .name(format!("journeyd-worker-{i}"))
                    .spawn(move || w.run(rx))
                    .expect("spawning a worker thread")
            })
            .collect();
        Runtime {
            handle: RuntimeHandle { inner },
            threads,
        }
    }

    pub fn handle(&self) -> RuntimeHandle {
        self.handle.clone()
    }

    /// Lets the workers finish what is queued, publishes, and joins them. Handles still held
    /// elsewhere get [`Stopped`] from then on.
    pub fn shutdown(self) {
        for s in &self.handle.inner.senders {
            let _ = s.send(Msg::Stop);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// One worker thread and the tasks it owns.
struct Worker {
    index: usize,
    tasks: BTreeMap<TaskId, Task>,
    shared: Arc<Shared>,
    rc: RuntimeConfig,
    /// Something changed since the last publish.
    dirty: bool,
}

fn publication(t: &Task) -> (TaskId, Arc<Aggregates>, Millis) {
    let shard = t.shard();
    (
        t.id(),
        Arc::new(shard.aggregates().clone()),
        shard.watermark(),
    )
}

fn idleness(rc: &RuntimeConfig) -> Idleness {
    Idleness {
        topic: rc.idle_timeout,
        push: rc.tick_interval,
    }
}

impl Worker {
    fn publish(&mut self) {
        let snapshot = self.tasks.values().map(publication).collect();
        *self.shared.published[self.index]
            .write()
            .unwrap_or_else(|p| p.into_inner()) = snapshot;
        self.dirty = false;
    }

    fn run(mut self, rx: flume::Receiver<Msg>) {
        if let Err(e) = set_thread_nice(self.rc.worker_nice) {
            tracing::warn!(
                worker = self.index,
                nice = self.rc.worker_nice,
                "cannot set the worker's nice value: {e}"
            );
        }
        let mut next_publish = Instant::now() + self.rc.publish_interval;
        let mut next_tick = Instant::now() + self.rc.tick_interval;
        loop {
            let now = Instant::now();
            let waiting = self.tasks.values().any(Task::waiting);
            let wake = if self.rc.live || waiting {
                next_publish.min(next_tick)
            } else {
                next_publish
            };
            match rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(Msg::Stop) | Err(flume::RecvTimeoutError::Disconnected) => break,
                Ok(msg) => self.handle(msg),
                Err(flume::RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            if now >= next_tick {
                // Records held back for a lagging partition whose wait is over.
                self.drain(false);
                if self.rc.live {
                    let wall = wall_ms();
                    for t in self.tasks.values_mut() {
                        self.dirty |= t.advance(now, wall);
                    }
                }
                next_tick = now + self.rc.tick_interval;
            }
            if now >= next_publish {
                if self.dirty {
                    self.publish();
                }
                next_publish = now + self.rc.publish_interval;
            }
        }
        self.publish();
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Events {
                task,
                input,
                events,
                stream_before,
                read_to,
                submitted,
                ack,
            } => {
                let ack = match (input, events) {
                    (Input::Push, Batch::Decoded(events)) => {
                        self.apply(task, input, &events, &stream_before);
                        ack
                    }
                    (Input::Push, Batch::Deferred(decode)) => {
                        let mut events = Vec::new();
                        decode(&mut |e, _| events.push(e.into_owned()));
                        self.apply(task, input, &events, &stream_before);
                        ack
                    }
                    (_, Batch::Decoded(events)) => {
                        let records = events.into_iter().map(|e| (e, None)).collect();
                        self.receive(task, input, records, read_to, ack)
                    }
                    (_, Batch::Deferred(decode)) => {
                        self.receive_deferred(task, input, decode, read_to, ack)
                    }
                };
                let stats = &self.shared.stats;
                stats
                    .latency_us_sum
                    .fetch_add(submitted.elapsed().as_micros() as u64, Ordering::Relaxed);
                stats.latency_count.fetch_add(1, Ordering::Relaxed);
                if let Some(ack) = ack {
                    let _ = ack.send(());
                }
            }
            Msg::PushTime(t) => {
                let now = Instant::now();
                for task in self.tasks.values_mut() {
                    self.dirty |= task.observe_push(t, now);
                }
            }
            Msg::CaughtUp { task, input } => {
                if let Some(t) = self.tasks.get_mut(&task) {
                    t.caught_up(input, Instant::now());
                }
            }
            Msg::Assign {
                task,
                restored,
                inputs,
            } => {
                let now = Instant::now();
                let (live, idle) = (self.rc.live, idleness(&self.rc));
                let max_idle = self.rc.max_task_idle;
                let t = self.tasks.entry(task).or_insert_with(|| {
                    let r = *restored;
                    let mut t = Task::new(task, r.shard, now, live, idle);
                    t.set_max_idle(max_idle);
                    for (input, max_ts) in r.inputs {
                        t.add_input(input, max_ts, now);
                    }
                    t
                });
                for input in inputs {
                    t.add_input(input, None, now);
                }
                self.shared.owned[task as usize].store(true, Ordering::Relaxed);
                self.publish();
            }
            Msg::Revoke {
                task,
                inputs,
                reply,
            } => {
                let mut dropped = None;
                let mut positions = Vec::new();
                let mut tally = Tally::default();
                if let Some(t) = self.tasks.get_mut(&task) {
                    if t.inputs().all(|i| i == Input::Push || inputs.contains(&i)) {
                        // Taken with the revoked inputs still in: the checkpoint needs each
                        // partition's clock, and the source its position.
                        dropped = Some(t.snapshot());
                    }
                    let now = Instant::now();
                    for input in inputs {
                        if let Some(p) = t.remove_input(input, now, &mut tally) {
                            positions.push((input, p));
                        }
                    }
                    if dropped.is_some() {
                        self.tasks.remove(&task);
                        self.shared.owned[task as usize].store(false, Ordering::Relaxed);
                        self.publish();
                    }
                }
                self.count(&tally);
                let _ = reply.send(Revoked {
                    snapshot: dropped,
                    positions,
                });
            }
            Msg::Rules(rules) => {
                for t in self.tasks.values_mut() {
                    t.shard_mut().set_rules(rules.clone());
                }
            }
            Msg::Customer(task, id, reply) => {
                let _ = reply.send(self.tasks.get(&task).and_then(|t| t.shard().customer(&id)));
            }
            Msg::Sync(reply) => {
                self.publish();
                let _ = reply.send(());
            }
            Msg::Snapshot(reply) => {
                let _ = reply.send(self.tasks.values().map(Task::snapshot).collect());
            }
            Msg::SnapshotChanged(since, reply) => {
                let changed = self
                    .tasks
                    .values()
                    .filter(|t| since.get(&t.id()) != Some(&t.changes()))
                    .map(Task::snapshot)
                    .collect();
                let _ = reply.send(changed);
            }
            Msg::Flush(reply) => {
                self.drain(true);
                for t in self.tasks.values_mut() {
                    t.shard_mut().flush();
                }
                self.publish();
                let _ = reply.send(());
            }
            Msg::Drain(reply) => {
                self.drain(true);
                self.publish();
                let _ = reply.send(());
            }
            Msg::Stop => {}
        }
    }

    /// Applies what the merge of each task's Kafka inputs allows now; `force`: everything.
    fn drain(&mut self, force: bool) {
        let now = Instant::now();
        let mut tally = Tally::default();
        for t in self.tasks.values_mut().filter(|t| t.waiting()) {
            t.drain(now, force, &mut tally);
        }
        self.count(&tally);
    }

    /// Records of a Kafka input for the merge of `task` ([`Task::receive`]). Returns `ack` when
    /// the task is not here (revoked while they were queued), for the caller to send.
    fn receive(
        &mut self,
        task: TaskId,
        input: Input,
        records: Vec<(Event<'static>, Option<i64>)>,
        read_to: Option<i64>,
        ack: Option<flume::Sender<()>>,
    ) -> Option<flume::Sender<()>> {
        let Some(t) = self.tasks.get_mut(&task) else {
            // Only a partition revoked while its records were queued gets here; whoever takes
            // the task over reads them again from its checkpointed offsets.
            tracing::debug!(
                task,
                events = records.len(),
                "events for a task this worker no longer owns"
            );
            return ack;
        };
        let mut tally = Tally::default();
        let now = Instant::now();
        t.receive(input, records, read_to, ack, now, &mut tally);
        self.count(&tally);
        None
    }

    /// [`Worker::receive`] for records decoded here, into the task ([`Task::receive_with`]).
    fn receive_deferred(
        &mut self,
        task: TaskId,
        input: Input,
        decode: Deferred,
        read_to: Option<i64>,
        ack: Option<flume::Sender<()>>,
    ) -> Option<flume::Sender<()>> {
        let Some(t) = self.tasks.get_mut(&task) else {
            // Decoded all the same, so rejected records reach the dead letters as before.
            let mut events = 0;
            decode(&mut |_, _| events += 1);
            tracing::debug!(task, events, "events for a task this worker no longer owns");
            return ack;
        };
        let mut tally = Tally::default();
        t.receive_with(input, decode, read_to, ack, Instant::now(), &mut tally);
        self.count(&tally);
        None
    }

    /// Adds what the tasks applied to the shared counters, then acknowledges the batches
    /// applied in full.
    fn count(&mut self, tally: &Tally) {
        let stats = &self.shared.stats;
        stats
            .duplicates
            .fetch_add(tally.duplicates, Ordering::Relaxed);
        stats.applied.fetch_add(tally.applied, Ordering::Relaxed);
        stats.late.fetch_add(tally.late, Ordering::Relaxed);
        stats
            .rejected_too_many_events
            .fetch_add(tally.rejected.len() as u64, Ordering::Relaxed);
        if let Some(hook) = &self.rc.on_reject {
            for (e, err) in &tally.rejected {
                (hook.0)(e, err);
            }
        }
        stats
            .merge_forced
            .fetch_add(tally.forced, Ordering::Relaxed);
        for ack in &tally.acks {
            let _ = ack.send(());
        }
        self.dirty |= tally.applied + tally.duplicates > 0 || !tally.rejected.is_empty();
    }

    fn apply(
        &mut self,
        task: TaskId,
        input: Input,
        events: &[Event<'static>],
        stream_before: &[Millis],
    ) {
        let Some(t) = self.tasks.get_mut(&task) else {
            // Only a partition revoked while its records were queued gets here; whoever takes
            // the task over reads them again from its checkpointed offsets.
            tracing::debug!(
                task,
                events = events.len(),
                "events for a task this worker no longer owns"
            );
            return;
        };
        let now = Instant::now();
        if !stream_before.is_empty() {
            // Held at the beginning of time until the stream time below raises it.
            t.add_input(Input::Push, None, now);
        }
        let mut tally = Tally::default();
        for (i, e) in events.iter().enumerate() {
            if let Some(&before) = stream_before.get(i) {
                t.observe_push(before, now);
            }
            match t.apply(input, e, now) {
                Ok(a) => {
                    tally.applied += 1;
                    tally.late += u64::from(a.late);
                }
                Err(ApplyError::Duplicate { .. }) => tally.duplicates += 1,
                // Rare (a session at session.max_events): the copy is for the reject hook.
                Err(err) => tally.rejected.push((e.clone(), err)),
            }
        }
        self.count(&tally);
        self.dirty = true;
    }
}

impl RuntimeHandle {
    pub fn workers(&self) -> usize {
        self.inner.senders.len()
    }

    /// Number of tasks (partitions), owned here or not.
    pub fn tasks(&self) -> u32 {
        self.inner.tasks
    }

    /// Tasks this instance owns now.
    pub fn owned_tasks(&self) -> Vec<TaskId> {
        (0..self.inner.tasks).filter(|&t| self.owns(t)).collect()
    }

    /// Tasks assigned but not yet restored (set by whoever restores them, e.g. the Kafka
    /// source during a rebalance); `/readyz` waits for 0.
    pub fn restoring(&self) -> usize {
        self.inner.restoring.load(Ordering::Relaxed)
    }

    /// Says that `n` assigned tasks are being restored from now on (0: all done).
    pub fn set_restoring(&self, n: usize) {
        self.inner.restoring.store(n, Ordering::Relaxed);
    }

    pub fn owns(&self, task: TaskId) -> bool {
        self.inner
            .shared
            .owned
            .get(task as usize)
            .is_some_and(|o| o.load(Ordering::Relaxed))
    }

    /// The worker that runs `task`.
    pub fn worker_of(&self, task: TaskId) -> usize {
        task as usize % self.workers()
    }

    /// The task (partition) of a customer: where a producer keyed by customer id with the
    /// configured partitioner writes its records.
    pub fn task_for(&self, customer_id: &str) -> TaskId {
        self.inner
            .partitioner
            .partition(customer_id.as_bytes(), self.inner.tasks)
    }

    pub fn engine_config(&self) -> &Arc<EngineConfig> {
        &self.inner.cfg
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.shared.stats
    }

    /// The rule set that events submitted from now on are classified with.
    pub fn rules(&self) -> Arc<Rules> {
        self.inner
            .rules
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The latest published partial aggregates, one per owned task, in task order.
    pub fn partials(&self) -> Vec<Arc<Aggregates>> {
        self.task_partials().into_iter().map(|(_, a)| a).collect()
    }

    /// [`RuntimeHandle::partials`] with their task ids.
    pub fn task_partials(&self) -> Vec<(TaskId, Arc<Aggregates>)> {
        self.published()
            .into_iter()
            .map(|(t, a, _)| (t, a))
            .collect()
    }

    /// Each owned task's watermark (epoch ms; `Millis::MIN` before its first event) as last
    /// published, in task order: sessions ending before it, less the gap, are closed.
    pub fn watermarks(&self) -> Vec<(TaskId, Millis)> {
        self.published()
            .into_iter()
            .map(|(t, _, w)| (t, w))
            .collect()
    }

    /// Each owned task's latest published partial with its watermark (epoch ms), in task
    /// order, read at one moment.
    pub fn publications(&self) -> Vec<(TaskId, Millis, Arc<Aggregates>)> {
        self.published()
            .into_iter()
            .map(|(t, a, w)| (t, w, a))
            .collect()
    }

    fn published(&self) -> Published {
        let mut all: Published = self
            .inner
            .shared
            .published
            .iter()
            .flat_map(|p| p.read().unwrap_or_else(|p| p.into_inner()).clone())
            .collect();
        all.sort_by_key(|(t, _, _)| *t);
        all
    }

    fn send(&self, task: TaskId, msg: Msg) -> Result<(), Stopped> {
        self.inner.senders[self.worker_of(task)]
            .send(msg)
            .map_err(|_| Stopped)
    }

    async fn send_async(&self, task: TaskId, msg: Msg) -> Result<(), Stopped> {
        self.inner.senders[self.worker_of(task)]
            .send_async(msg)
            .await
            .map_err(|_| Stopped)
    }

    /// Push input by task, refusing the whole submission if a task is not owned here. Each
    /// event comes with the stream time of the HTTP/file stream before it, and the stream time
    /// after the whole submission is returned. HTTP and file input are one stream whose event
    /// time every task shares, as a single partition's would be: so figures do not depend on
    /// the task count, and one customer's newer event moves every task's watermark.
    fn split(&self, events: Vec<Event<'static>>) -> Result<(PushParts, Millis), SubmitError> {
        let mut parts: PushParts = BTreeMap::new();
        let mut time = self.inner.push_time.load(Ordering::Relaxed);
        for e in events {
            let (evs, before) = parts.entry(self.task_for(&e.customer_id)).or_default();
            before.push(time);
            time = time.max(e.ts);
            evs.push(e);
        }
        let missing: Vec<TaskId> = parts.keys().copied().filter(|&t| !self.owns(t)).collect();
        if !missing.is_empty() {
            return Err(SubmitError::NotAssigned(missing));
        }
        self.inner.push_time.fetch_max(time, Ordering::Relaxed);
        Ok((parts, time))
    }

    fn events(
        task: TaskId,
        input: Input,
        events: Vec<Event<'static>>,
        stream_before: Vec<Millis>,
        ack: Option<flume::Sender<()>>,
    ) -> Msg {
        Msg::Events {
            task,
            input,
            events: Batch::Decoded(events),
            stream_before,
            read_to: None,
            submitted: Instant::now(),
            ack,
        }
    }

    /// Queues HTTP or file input, routed to tasks by the partitioner, waiting while a worker's
    /// queue is full.
    pub async fn submit(&self, events: Vec<Event<'static>>) -> Result<(), SubmitError> {
        let (parts, time) = self.split(events)?;
        for (task, (part, before)) in parts {
            self.send_async(task, Self::events(task, Input::Push, part, before, None))
                .await?;
        }
        for s in &self.inner.senders {
            s.send_async(Msg::PushTime(time))
                .await
                .map_err(|_| Stopped)?;
        }
        Ok(())
    }

    /// Blocking [`RuntimeHandle::submit`], for threads outside an async runtime.
    pub fn submit_blocking(&self, events: Vec<Event<'static>>) -> Result<(), SubmitError> {
        let (parts, time) = self.split(events)?;
        for (task, (part, before)) in parts {
            self.send(task, Self::events(task, Input::Push, part, before, None))?;
        }
        for s in &self.inner.senders {
            s.send(Msg::PushTime(time)).map_err(|_| Stopped)?;
        }
        Ok(())
    }

    /// Queues records of one input of one task (a Kafka partition), waiting while the
    /// worker's queue is full. With `ack`, the receiver yields once they are applied.
    pub fn submit_input_blocking(
        &self,
        task: TaskId,
        input: Input,
        events: Vec<Event<'static>>,
        ack: bool,
    ) -> Result<Option<flume::Receiver<()>>, Stopped> {
        let (tx, rx) = ack_channel(ack);
        self.send(task, Self::events(task, input, events, Vec::new(), tx))?;
        Ok(rx)
    }

    /// [`RuntimeHandle::submit_input_blocking`] for records still to be decoded: `decode` runs
    /// on the worker of `task`, in queue order with everything else submitted for it, so a
    /// task's records are decoded in parallel with other workers'. `read_to` is the offset
    /// after the batch's last record. A snapshot taken after this call has the batch's
    /// records either applied or counted out of its positions ([`TaskSnapshot::positions`]).
    /// With `ack`, the receiver yields once they are decoded and applied (merged by event
    /// time with the task's other partitions, so possibly after later submissions).
    pub fn submit_deferred_blocking(
        &self,
        task: TaskId,
        input: Input,
        decode: Deferred,
        read_to: i64,
        ack: bool,
    ) -> Result<Option<flume::Receiver<()>>, Stopped> {
        let (tx, rx) = ack_channel(ack);
        self.send(
            task,
            Msg::Events {
                task,
                input,
                events: Batch::Deferred(decode),
                stream_before: Vec::new(),
                read_to: Some(read_to),
                submitted: Instant::now(),
                ack: tx,
            },
        )?;
        Ok(rx)
    }

    /// A Kafka partition of `task` reached its end (no lag), so once quiet for the idle
    /// timeout it stops holding the task's watermark back.
    pub fn caught_up_blocking(&self, task: TaskId, input: Input) -> Result<(), Stopped> {
        self.send(task, Msg::CaughtUp { task, input })
    }

    /// Partitions of `task` were assigned: the task starts from `restored` (or empty) unless it
    /// already runs here, and reads `inputs` from now on.
    pub fn assign_blocking(
        &self,
        task: TaskId,
        restored: Option<RestoredTask>,
        inputs: Vec<Input>,
    ) -> Result<(), Stopped> {
        if task >= self.inner.tasks {
            return Ok(());
        }
        let restored = Box::new(restored.unwrap_or_else(|| RestoredTask {
            task,
            shard: Shard::new(self.inner.cfg.clone(), self.rules()),
            inputs: Vec::new(),
        }));
        self.send(
            task,
            Msg::Assign {
                task,
                restored,
                inputs,
            },
        )
    }

    /// Partitions of `task` were revoked. Once the task has no partition left it is dropped
    /// and its final snapshot returned (after everything queued before for it is received).
    pub fn revoke_blocking(
        &self,
        task: TaskId,
        inputs: Vec<Input>,
    ) -> Result<Option<TaskSnapshot>, Stopped> {
        Ok(self.revoke_positions_blocking(task, inputs)?.snapshot)
    }

    /// [`RuntimeHandle::revoke_blocking`], with where each revoked partition must be read from
    /// again: records the task had buffered are dropped, not applied.
    pub fn revoke_positions_blocking(
        &self,
        task: TaskId,
        inputs: Vec<Input>,
    ) -> Result<Revoked, Stopped> {
        let (tx, rx) = flume::bounded(1);
        self.send(
            task,
            Msg::Revoke {
                task,
                inputs,
                reply: tx,
            },
        )?;
        rx.recv().map_err(|_| Stopped)
    }

    /// Swaps the rules: events queued before keep the old ones, events after get the new.
    /// The decoders' [`RuntimeHandle::projection`] switches first, to the paths of the old
    /// and the new rules together: records decoded from now on (in a decoder's batch begun
    /// from now on) keep every attribute the new rules read, and those applied before the
    /// swap reaches their worker every attribute the old rules read. Waits until every batch
    /// a producer began decoding under [`RuntimeHandle::decoding`] is submitted, so none
    /// decoded without the new rules' attributes is applied under them.
    pub async fn set_rules(&self, rules: Arc<Rules>) -> Result<(), Stopped> {
        let _gate = self.inner.decode_gate.write().await;
        {
            let mut current = self.inner.rules.write().unwrap_or_else(|p| p.into_inner());
            self.inner.projection.store(Projection::for_rule_sets(
                &[&current, &rules],
                &self.inner.cfg.breakdowns,
            ));
            *current = rules.clone();
        }
        for s in &self.inner.senders {
            s.send_async(Msg::Rules(rules.clone()))
                .await
                .map_err(|_| Stopped)?;
        }
        Ok(())
    }

    /// The attribute projection for decoders feeding this runtime: the paths of the current
    /// rules and of the breakdown dimensions, replaced by [`RuntimeHandle::set_rules`].
    pub fn projection(&self) -> SharedProjection {
        self.inner.projection.clone()
    }

    /// A permit to decode a batch with [`RuntimeHandle::projection`] and submit it: take it
    /// before decoding, drop it once the batch is submitted. A rules swap waits for the
    /// permits out, and new permits wait for the swap, so a batch decoded under the old
    /// projection reaches every worker before the new rules do. Kafka input needs none: its
    /// records are decoded on the worker, in queue order with the swap.
    pub async fn decoding(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.inner.decode_gate.clone().read_owned().await
    }

    /// One customer's live journey, from the task that owns it (`None` if unknown here).
    pub async fn customer(&self, id: &str) -> Result<Option<CustomerView>, Stopped> {
        let task = self.task_for(id);
        let (tx, rx) = flume::bounded(1);
        self.send_async(task, Msg::Customer(task, id.to_string(), tx))
            .await?;
        rx.recv_async().await.map_err(|_| Stopped)
    }

    /// Waits until everything submitted before is applied and published.
    pub async fn sync(&self) -> Result<(), Stopped> {
        for rx in self.to_all_async(Msg::Sync).await? {
            rx.recv_async().await.map_err(|_| Stopped)?;
        }
        Ok(())
    }

    /// End of input: closes every session in every task and publishes the result.
    pub async fn flush(&self) -> Result<(), Stopped> {
        for rx in self.to_all_async(Msg::Flush).await? {
            rx.recv_async().await.map_err(|_| Stopped)?;
        }
        Ok(())
    }

    /// Applies every record the tasks hold back for lagging Kafka partitions, without waiting
    /// for them: for a source that stops reading.
    pub fn drain_blocking(&self) -> Result<(), Stopped> {
        for rx in self.to_all(Msg::Drain)? {
            rx.recv().map_err(|_| Stopped)?;
        }
        Ok(())
    }

    /// Blocking [`RuntimeHandle::flush`].
    pub fn flush_blocking(&self) -> Result<(), Stopped> {
        for rx in self.to_all(Msg::Flush)? {
            rx.recv().map_err(|_| Stopped)?;
        }
        Ok(())
    }

    /// Every owned task's snapshot, in task order, taken once its worker has applied
    /// everything queued before this call. Events submitted before it by the calling thread
    /// are all in it, and none submitted after: the consistent cut a checkpoint needs.
    pub fn snapshot_blocking(&self) -> Result<Vec<TaskSnapshot>, Stopped> {
        let mut all = Vec::new();
        for rx in self.to_all(Msg::Snapshot)? {
            all.extend(rx.recv().map_err(|_| Stopped)?);
        }
        all.sort_by_key(|s| s.task);
        Ok(all)
    }

    /// [`RuntimeHandle::snapshot_blocking`] of only the tasks that changed since the
    /// [`TaskSnapshot::changes`] in `since` (a task not in it counts as changed): a
    /// checkpoint round skips what its previous round already holds.
    pub fn snapshot_changed_blocking(
        &self,
        since: BTreeMap<TaskId, u64>,
    ) -> Result<Vec<TaskSnapshot>, Stopped> {
        let since = Arc::new(since);
        let mut waits = Vec::new();
        for s in &self.inner.senders {
            let (tx, rx) = flume::bounded(1);
            s.send(Msg::SnapshotChanged(since.clone(), tx))
                .map_err(|_| Stopped)?;
            waits.push(rx);
        }
        let mut all = Vec::new();
        for rx in waits {
            all.extend(rx.recv().map_err(|_| Stopped)?);
        }
        all.sort_by_key(|s| s.task);
        Ok(all)
    }

    async fn to_all_async<T>(
        &self,
        make: fn(flume::Sender<T>) -> Msg,
    ) -> Result<Vec<flume::Receiver<T>>, Stopped> {
        let mut waits = Vec::new();
        for s in &self.inner.senders {
            let (tx, rx) = flume::bounded(1);
            s.send_async(make(tx)).await.map_err(|_| Stopped)?;
            waits.push(rx);
        }
        Ok(waits)
    }

    /// Sends one message to every worker and returns their reply channels.
    fn to_all<T>(
        &self,
        make: fn(flume::Sender<T>) -> Msg,
    ) -> Result<Vec<flume::Receiver<T>>, Stopped> {
        let mut waits = Vec::new();
        for s in &self.inner.senders {
            let (tx, rx) = flume::bounded(1);
            s.send(make(tx)).map_err(|_| Stopped)?;
            waits.push(rx);
        }
        Ok(waits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use journey_core::query::{Include, Summary};
    use std::borrow::Cow;

    const RULES: &str = r#"
        [[touchpoint]]
        name = "visit"
        phase = "awareness"
        event = "page_view"
        [[touchpoint]]
        name = "order"
        phase = "decision"
        event = "order"
        goal = true
    "#;

    fn ev(c: usize, ts: Millis, name: &'static str) -> Event<'static> {
        Event {
            event_id: None,
            customer_id: Cow::Owned(format!("c{c}")),
            ts,
            source: Cow::Borrowed("web"),
            name: Cow::Borrowed(name),
            attributes: serde_json::Value::Null,
        }
    }

    fn start(workers: usize, tasks: u32) -> Runtime {
        start_with(workers, tasks, true)
    }

    /// A runtime that owns no task until one is assigned, as in a consumer group.
    fn start_unassigned(workers: usize, tasks: u32) -> Runtime {
        start_with(workers, tasks, false)
    }

    fn start_with(workers: usize, tasks: u32, own_all_tasks: bool) -> Runtime {
        let rc = RuntimeConfig {
            workers,
            tasks,
            own_all_tasks,
            live: false,
            ..RuntimeConfig::default()
        };
        Runtime::start(
            Arc::new(EngineConfig::default()),
            Arc::new(Rules::from_toml(RULES).unwrap()),
            rc,
            Vec::new(),
        )
    }

    /// Rules that read an attribute the test rules do not: `plan.tier`.
    const PLAN_RULES: &str = r#"
        [[touchpoint]]
        name = "upgrade"
        phase = "retention"
        where = { "plan.tier" = "pro" }
    "#;

    /// A batch decoded under the old projection is submitted before the new rules reach any
    /// worker: the swap waits for the permits out ([`RuntimeHandle::decoding`]).
    #[test]
    fn a_rules_swap_waits_for_batches_being_decoded() {
        let rt = start(1, 1);
        let h = rt.handle();
        let before = (*h.projection().load()).clone();
        let permit = block_on(h.decoding());
        let swap = h.set_rules(Arc::new(Rules::from_toml(PLAN_RULES).unwrap()));
        let mut swap = std::pin::pin!(swap);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            std::future::Future::poll(swap.as_mut(), &mut cx).is_pending(),
            "a batch is being decoded"
        );
        assert_eq!(*h.projection().load(), before, "nothing switched yet");
        drop(permit);
        block_on(swap).unwrap();
        assert_ne!(*h.projection().load(), before);
        // Permits are free again once the swap is done.
        drop(block_on(h.decoding()));
    }

    /// Issue 14: decoders keep only the attributes the rules read, and a rules swap widens
    /// what they keep before any worker applies the new rules.
    #[test]
    fn set_rules_switches_the_decoders_projection_to_old_and_new_paths() {
        let rt = Runtime::start(
            Arc::new(EngineConfig {
                breakdowns: vec!["persona".into()],
                ..EngineConfig::default()
            }),
            Arc::new(Rules::from_toml(RULES_WITH_URL).unwrap()),
            RuntimeConfig {
                live: false,
                ..RuntimeConfig::default()
            },
            Vec::new(),
        );
        let h = rt.handle();
        let split = |p: &str| -> Vec<Box<str>> { p.split('.').map(Box::from).collect() };
        let paths = |ps: &[&str]| {
            let v: Vec<Vec<Box<str>>> = ps.iter().map(|p| split(p)).collect();
            Projection::new(v.iter().map(Vec::as_slice))
        };
        let projection = h.projection();
        assert_eq!(*projection.load(), paths(&["url", "persona"]));
        block_on(h.set_rules(Arc::new(Rules::from_toml(PLAN_RULES).unwrap()))).unwrap();
        assert_eq!(*projection.load(), paths(&["url", "plan.tier", "persona"]));
        block_on(h.set_rules(Arc::new(Rules::from_toml(RULES).unwrap()))).unwrap();
        assert_eq!(*projection.load(), paths(&["plan.tier", "persona"]));
    }

    const RULES_WITH_URL: &str = r#"
        [[touchpoint]]
        name = "product"
        phase = "consideration"
        where = { url = { prefix = "/p/" } }
    "#;

    #[test]
    fn workers_apply_and_publish_one_partial_per_task() {
        let rt = start(3, 7);
        let h = rt.handle();
        let t = 1_795_000_000_000;
        let mut events = Vec::new();
        for c in 0..50 {
            events.push(ev(c, t + c as Millis, "page_view"));
            if c % 2 == 0 {
                events.push(ev(c, t + 60_000 + c as Millis, "order"));
            }
        }
        h.submit_blocking(events).unwrap();
        h.flush_blocking().unwrap();
        let parts = h.task_partials();
        assert_eq!(
            parts.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            (0..7).collect::<Vec<_>>()
        );
        // Ranges select whole buckets by their start: begin at the hour.
        let from = t / 3_600_000 * 3_600_000;
        let s = Summary::collect(
            parts.iter().map(|(_, p)| p.as_ref()),
            from,
            from + 7_200_000,
            &Include::default(),
        );
        assert_eq!(s.touchpoints["visit"].visits, 50);
        assert_eq!(s.touchpoints["order"].completions, 25);
        assert_eq!(s.sessions, 50);
        assert_eq!(h.stats().applied.load(Ordering::Relaxed), 75);
        rt.shutdown();
    }

    /// Issue 14: records submitted undecoded are decoded on the task's worker, in queue order
    /// with the task's other submissions, and acknowledged once applied.
    #[test]
    fn deferred_records_are_decoded_by_the_worker_in_queue_order() {
        let rt = start_unassigned(2, 2);
        let h = rt.handle();
        h.assign_blocking(1, None, vec![Input::Topic(0)]).unwrap();
        let t = 1_795_000_000_000;
        let decoded_on = Arc::new(std::sync::Mutex::new(None));
        let seen = decoded_on.clone();
        let decode: Deferred = Box::new(move |sink| {
            *seen.lock().unwrap() = std::thread::current().name().map(str::to_string);
            sink(ev(1, t, "page_view"), 5);
            sink(ev(1, t + 1_000, "order"), 6);
        });
        h.submit_input_blocking(1, Input::Topic(0), vec![ev(2, t, "page_view")], false)
            .unwrap();
        let ack = h
            .submit_deferred_blocking(1, Input::Topic(0), decode, 7, true)
            .unwrap()
            .unwrap();
        ack.recv().unwrap();
        assert_eq!(
            decoded_on.lock().unwrap().as_deref(),
            Some("journeyd-worker-1")
        );
        assert_eq!(h.stats().applied.load(Ordering::Relaxed), 3);
        let snap = h
            .revoke_blocking(1, vec![Input::Topic(0)])
            .unwrap()
            .unwrap();
        let shard = Shard::restore(&snap.shard, h.engine_config().clone(), h.rules()).unwrap();
        assert_eq!(shard.aggregates().counters.events, 3);
        rt.shutdown();
    }

    #[test]
    fn customers_go_to_the_task_a_kafka_producer_would_pick() {
        let rt = start(2, 6);
        let h = rt.handle();
        for c in ["c7", "customer-42", ""] {
            assert_eq!(
                h.task_for(c),
                Partitioner::Murmur2.partition(c.as_bytes(), 6)
            );
        }
        assert_eq!(h.worker_of(5), 1);
        assert_eq!(h.worker_of(4), 0);
        h.submit_blocking(vec![ev(7, 1_795_000_000_000, "page_view")])
            .unwrap();
        let view = block_on(h.customer("c7")).unwrap();
        assert_eq!(view.unwrap().journeys.len(), 1);
        assert!(block_on(h.customer("nobody")).unwrap().is_none());
        rt.shutdown();
    }

    #[test]
    fn push_input_for_unassigned_tasks_is_refused_whole() {
        let rt = start_unassigned(2, 4);
        let h = rt.handle();
        assert!(h.owned_tasks().is_empty());
        let e = ev(1, 1_795_000_000_000, "page_view");
        let task = h.task_for(&e.customer_id);
        assert_eq!(
            h.submit_blocking(vec![e.clone()]),
            Err(SubmitError::NotAssigned(vec![task]))
        );
        h.assign_blocking(task, None, vec![Input::Topic(0)])
            .unwrap();
        block_on(h.sync()).unwrap();
        assert_eq!(h.owned_tasks(), vec![task]);
        h.submit_blocking(vec![e]).unwrap();
        // Revoking the task's last partition drops it and hands back its state.
        let snap = h
            .revoke_blocking(task, vec![Input::Topic(0)])
            .unwrap()
            .unwrap();
        assert_eq!(snap.task, task);
        let shard = Shard::restore(&snap.shard, h.engine_config().clone(), h.rules()).unwrap();
        assert_eq!(shard.aggregates().counters.events, 1);
        assert!(h.owned_tasks().is_empty());
        assert!(h.partials().is_empty());
        rt.shutdown();
    }

    /// A batch the merge holds back (its partition is ahead of another that has lag) is
    /// acknowledged only once applied, a snapshot meanwhile resumes its partition at its first
    /// record, and revoking that partition drops it and says where to read it again.
    #[test]
    fn held_back_records_are_acknowledged_once_applied_and_left_out_of_snapshots() {
        let rt = start_unassigned(1, 1);
        let h = rt.handle();
        let (web, crm) = (Input::Topic(0), Input::Topic(1));
        h.assign_blocking(0, None, vec![web, crm]).unwrap();
        let t = 1_795_000_000_000;
        let batch = |records: Vec<(Event<'static>, i64)>| -> Deferred {
            Box::new(move |sink| records.into_iter().for_each(|(e, offset)| sink(e, offset)))
        };
        let crm_ack = h
            .submit_deferred_blocking(
                0,
                crm,
                batch(vec![(ev(1, t + 60_000, "order"), 40)]),
                41,
                true,
            )
            .unwrap()
            .unwrap();
        let snap = h.snapshot_blocking().unwrap().remove(0);
        assert_eq!(snap.positions, vec![(crm, 40)], "web has read nothing yet");
        assert!(
            crm_ack.recv_timeout(Duration::from_millis(200)).is_err(),
            "web, with lag, may deliver older records: crm's are held back"
        );
        // web delivers older and newer records: crm's goes in between.
        let web_records = vec![
            (ev(1, t, "page_view"), 7),
            (ev(1, t + 120_000, "page_view"), 8),
        ];
        let web_ack = h
            .submit_deferred_blocking(0, web, batch(web_records), 9, true)
            .unwrap()
            .unwrap();
        crm_ack.recv().unwrap();
        // web's newest waits for crm until crm is seen at its end.
        h.caught_up_blocking(0, crm).unwrap();
        web_ack.recv().unwrap();
        assert_eq!(h.stats().applied.load(Ordering::Relaxed), 3);
        // crm's next record waits again; revoking crm drops it.
        h.submit_deferred_blocking(
            0,
            crm,
            batch(vec![(ev(2, t + 180_000, "order"), 41)]),
            42,
            false,
        )
        .unwrap();
        let revoked = h.revoke_positions_blocking(0, vec![crm]).unwrap();
        assert!(revoked.snapshot.is_none(), "web is still assigned");
        assert_eq!(revoked.positions, vec![(crm, 41)]);
        let snap = h.snapshot_blocking().unwrap().remove(0);
        assert_eq!(snap.positions, vec![(web, 9)]);
        assert_eq!(h.stats().applied.load(Ordering::Relaxed), 3);
        rt.shutdown();
    }

    #[test]
    fn a_revoked_task_hands_back_its_partitions_with_their_clocks() {
        let rt = start_unassigned(RuntimeConfig::default().workers, 2);
        let h = rt.handle();
        let e = ev(1, 1_795_000_000_000, "page_view");
        let task = h.task_for(&e.customer_id);
        let (web, crm) = (Input::Topic(0), Input::Topic(1));
        h.assign_blocking(task, None, vec![web, crm]).unwrap();
        h.submit_input_blocking(task, web, vec![e], false).unwrap();
        // Part of the task's partitions: it keeps running with the rest.
        assert_eq!(h.revoke_blocking(task, vec![crm]).unwrap(), None);
        assert_eq!(h.owned_tasks(), vec![task]);
        h.assign_blocking(task, None, vec![crm]).unwrap();
        // The last ones: its final snapshot still lists them, so that its checkpoint carries
        // each partition's position and clock; without them the next owner would read the
        // partitions from the group's committed offsets and apply records twice.
        let snap = h
            .revoke_blocking(task, vec![web, crm])
            .unwrap()
            .expect("dropped with its state");
        assert_eq!(
            snap.inputs,
            vec![(web, Some(1_795_000_000_000)), (crm, None)]
        );
        assert!(h.owned_tasks().is_empty());
        rt.shutdown();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn workers_take_the_configured_nice_value() {
        let rt = Runtime::start(
            Arc::new(EngineConfig::default()),
            Arc::new(Rules::from_toml(RULES).unwrap()),
            RuntimeConfig {
                workers: 2,
                live: false,
                worker_nice: 7,
                ..RuntimeConfig::default()
            },
            Vec::new(),
        );
        // Each worker sets its value before it takes its first message.
        rt.handle().flush_blocking().unwrap();
        let niced = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
            .filter(|stat| stat.contains("(journeyd-worker)"))
            .filter(|stat| {
                // Fields after the command name; the nice value is the 19th field overall.
                let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
                rest.split_whitespace().nth(16) == Some("7")
            })
            .count();
        assert_eq!(niced, 2, "both workers of this runtime run at nice 7");
        rt.shutdown();
    }

    /// Drives a future to completion on this thread (flume's futures need no runtime).
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        use std::task::{Context, Poll, Wake, Waker};
        struct ThreadWaker(std::thread::Thread);
        impl Wake for ThreadWaker {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            match f.as_mut().poll(&mut cx) {
                Poll::Ready(v) => return v,
                Poll::Pending => std::thread::park(),
            }
        }
    }
}
