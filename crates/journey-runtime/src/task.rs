//! A task: partition index `p` of the co-partitioned input topics, owning one shard.
//!
//! Kafka Streams' `StreamTask` and `PartitionGroup`, reduced to what journeyd needs. A task's
//! inputs are the partitions `p` of every input topic plus the HTTP/file input the
//! partitioner routes to it. Each input tracks the largest event time it has applied; the
//! task's watermark is the minimum over the inputs that still hold it back, minus
//! `session.allowed_lateness` (Flink's per-split watermarks).
//!
//! Kafka inputs are merged by event time ([`Task::receive`]): each partition's decoded records
//! wait in a buffer of their own, and the task applies the record with the smallest event time
//! among the buffers' heads. While a Kafka partition that has lag (is not caught up) has
//! nothing buffered, the task holds the other inputs' records back until it delivers, catches
//! up, or `kafka.max_task_idle` has passed (Kafka Streams' `max.task.idle.ms`); past that wait,
//! or past [`MAX_BUFFERED`] buffered records, it applies anyway. So a sparse topic whose one
//! fetch spans weeks is applied in step with a dense topic's backlog, as `journeyd replay`
//! applies the file. The shard's figures are the same for every interleaving in which no input
//! runs more than `journey.window` of event time ahead of another (SPEC §3, docs/semantics.md
//! §5; the engine's model test `a_task_of_two_inputs_equals_the_reference_under_skew`); the
//! merge keeps the skew within each partition's own disorder. Equal event times at the heads
//! go in the order the inputs were added (Kafka Streams breaks ties by partition too). Push
//! input (HTTP, file, replay) is applied on arrival, as before: it is one input, so there is
//! nothing to merge.
//!
//! Buffered records are not part of the task's state: [`TaskSnapshot::positions`] gives each
//! partition's offset of the first record not applied, which is where a checkpoint resumes, and
//! a batch's acknowledgement is sent once its last record is applied. Revoking a partition
//! drops its buffered records; whoever reads it next starts from those positions.
//!
//! An input stops holding the watermark back once it is idle: a Kafka partition that reached
//! its end (no lag), delivered nothing for `kafka.idle_timeout` and has nothing buffered, or
//! push input that has been quiet for the tick interval. With every input idle, event time advances with the wall
//! clock in live mode, so sessions close when traffic stops.
//!
//! In live mode event time never runs ahead of the wall clock: an accepted event dated in the
//! future (up to `ingest.max_future`, a client whose clock is fast) counts, but moves the
//! watermark no further than now. Otherwise one such client would make every other event
//! late until the wall clock caught up with it.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use journey_core::time::Millis;
use journey_core::{Applied, ApplyError, Event, Shard};
use serde::{Deserialize, Serialize};

/// A task's id: the partition index of the input topics it owns.
pub type TaskId = u32;

/// One input of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Input {
    /// HTTP and file input routed here by the partitioner. Pushed to journeyd, so never known
    /// to be caught up: it holds the watermark while it keeps delivering.
    Push,
    /// Partition `p` (the task id) of the input topic with this index in `kafka.topics`.
    Topic(u16),
}

/// How long inputs may be quiet before they stop holding the watermark back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idleness {
    /// A caught-up Kafka partition (`kafka.idle_timeout`).
    pub topic: Duration,
    /// Push input (`runtime.tick_interval`).
    pub push: Duration,
}

/// How long a task holds its inputs back for a Kafka partition with lag and nothing buffered,
/// unless configured (`kafka.max_task_idle`).
pub const DEFAULT_MAX_TASK_IDLE: Duration = Duration::from_secs(5);

/// Records a task buffers over all its Kafka inputs before it applies the oldest one without
/// waiting for a lagging partition: bounds the memory one stalled partition can hold up.
pub const MAX_BUFFERED: usize = 65_536;

/// Sent once every record of a submitted batch is applied.
pub type Ack = flume::Sender<()>;

/// One decoded Kafka record waiting to be merged in, with its offset (`None`: not known, for
/// events submitted already decoded).
type Buffered = (Event<'static>, Option<i64>);

/// What applying records did, for the worker's counters, and the acknowledgements now due.
#[derive(Debug, Default)]
pub struct Tally {
    pub applied: u64,
    pub late: u64,
    pub duplicates: u64,
    /// Refused for another reason than being a duplicate, with why (for the reject hook).
    pub rejected: Vec<(Event<'static>, ApplyError)>,
    /// Applied while a partition with lag had nothing buffered, after `kafka.max_task_idle`
    /// or past [`MAX_BUFFERED`]: these may be applied ahead of that partition's records.
    pub forced: u64,
    /// Of batches now applied in full: to send once the counters above are published.
    pub acks: Vec<Ack>,
}

#[derive(Debug)]
struct InputClock {
    input: Input,
    /// Largest event time applied; `None` before the first event (holds the task at the
    /// beginning of time until the input delivers or goes idle).
    max_ts: Option<Millis>,
    last_arrival: Instant,
    /// Kafka: reached the end of the partition, with nothing newer since.
    caught_up: bool,
    /// Kafka: received but not yet applied, in offset order.
    buffer: VecDeque<Buffered>,
    /// Kafka: the offset after the last record received (the source's position then).
    read_to: Option<i64>,
    /// Kafka: records received and applied (or refused) so far, and the acknowledgements of
    /// batches, each due once `done` reaches its batch's end.
    received: u64,
    done: u64,
    acks: VecDeque<(u64, Ack)>,
    /// Kafka: since when this partition, lagging, has had nothing buffered while another
    /// input's records waited for it (Kafka Streams' idle partition deadline, less the wait).
    empty_since: Option<Instant>,
}

impl InputClock {
    fn new(input: Input, max_ts: Option<Millis>, now: Instant) -> InputClock {
        InputClock {
            input,
            max_ts,
            last_arrival: now,
            caught_up: false,
            buffer: VecDeque::new(),
            read_to: None,
            received: 0,
            done: 0,
            acks: VecDeque::new(),
            empty_since: None,
        }
    }

    /// Where this partition resumes: the offset of its first record not applied.
    fn position(&self) -> Option<i64> {
        match self.buffer.front() {
            Some((_, offset)) => *offset,
            None => self.read_to,
        }
    }

    /// Whether this input keeps the others' records waiting: a Kafka partition with lag and
    /// nothing buffered may yet deliver older records.
    fn holds_back(&self) -> bool {
        matches!(self.input, Input::Topic(_)) && !self.caught_up && self.buffer.is_empty()
    }

    /// Hands over the acknowledgements of batches applied in full.
    fn acknowledge(&mut self, due: &mut Vec<Ack>) {
        while self.acks.front().is_some_and(|(end, _)| *end <= self.done) {
            if let Some((_, ack)) = self.acks.pop_front() {
                due.push(ack);
            }
        }
    }

    fn idle(&self, now: Instant, idle: Idleness) -> bool {
        let quiet = now.saturating_duration_since(self.last_arrival);
        match self.input {
            Input::Push => quiet >= idle.push,
            // Records still buffered would be late once it stopped holding the watermark.
            Input::Topic(_) => self.caught_up && quiet >= idle.topic && self.buffer.is_empty(),
        }
    }
}

/// What a task's checkpoint needs besides source positions: the shard and each input's
/// largest event time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSnapshot {
    pub task: TaskId,
    /// [`Shard::snapshot`] bytes.
    pub shard: Vec<u8>,
    /// Largest event time per input (`None`: nothing delivered yet).
    pub inputs: Vec<(Input, Option<Millis>)>,
    /// [`Task::changes`] when taken.
    pub changes: u64,
    /// Per Kafka input, the offset of its first record not applied (records received but still
    /// buffered are not in `shard`): where a checkpoint of this snapshot resumes the partition.
    /// Inputs whose position the task does not know (nothing received since it started) are
    /// left out; the source's own position holds for them.
    pub positions: Vec<(Input, i64)>,
}

/// One partition's worth of journey state and event time.
#[derive(Debug)]
pub struct Task {
    id: TaskId,
    shard: Shard,
    inputs: Vec<InputClock>,
    /// Last arrival on any input.
    last_event: Instant,
    /// Live mode: idle inputs stop holding the watermark (off for replays).
    live: bool,
    idle: Idleness,
    /// Counts what a checkpoint would need to hold anew: events applied, inputs added or
    /// removed, direct access to the shard. Moving the watermark alone does not count: what it
    /// closes or expires, restoring the previous checkpoint and moving it again repeats.
    changes: u64,
    /// The wall clock (epoch ms) at `clock_at`: the wall time of any `Instant` follows without
    /// a system call per event.
    clock: (Instant, Millis),
    /// How long to hold inputs back for a lagging partition with nothing buffered.
    max_idle: Duration,
    /// Records in the inputs' buffers.
    buffered: usize,
}

impl Task {
    /// A task around `shard` (fresh or restored); the shard's watermark is the task's to move.
    /// `live`: idle inputs stop holding the watermark after `idle` (off for replays).
    pub fn new(id: TaskId, mut shard: Shard, now: Instant, live: bool, idle: Idleness) -> Task {
        shard.set_external_watermark(true);
        Task {
            id,
            shard,
            changes: 0,
            inputs: Vec::new(),
            last_event: now,
            live,
            idle,
            clock: (
                now,
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as Millis),
            ),
            max_idle: DEFAULT_MAX_TASK_IDLE,
            buffered: 0,
        }
    }

    /// Sets how long the task holds its inputs back for a Kafka partition with lag and nothing
    /// buffered (`kafka.max_task_idle`).
    pub fn set_max_idle(&mut self, max_idle: Duration) {
        self.max_idle = max_idle;
    }

    /// The wall clock (epoch ms) at `now`.
    fn wall_at(&self, now: Instant) -> Millis {
        let (at, wall) = self.clock;
        match now.checked_duration_since(at) {
            Some(d) => wall.saturating_add(d.as_millis() as Millis),
            None => wall.saturating_sub(at.duration_since(now).as_millis() as Millis),
        }
    }

    pub fn id(&self) -> TaskId {
        self.id
    }

    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    pub fn shard_mut(&mut self) -> &mut Shard {
        self.changes += 1;
        &mut self.shard
    }

    /// Adds an input (a newly assigned partition) that holds the watermark from now on:
    /// at `max_ts` if restored from a checkpoint, else at the beginning of time until it
    /// delivers or goes idle. Adding an input the task already has keeps its clock.
    pub fn add_input(&mut self, input: Input, max_ts: Option<Millis>, now: Instant) {
        if self.inputs.iter().any(|i| i.input == input) {
            return;
        }
        self.changes += 1;
        self.inputs.push(InputClock::new(input, max_ts, now));
    }

    /// Removes an input (a revoked partition); it no longer holds the watermark. Its buffered
    /// records are dropped unapplied (their batches' acknowledgements with them): whoever reads
    /// the partition next starts at the position returned, the offset of its first record not
    /// applied. Records of the other inputs it held back are applied.
    pub fn remove_input(&mut self, input: Input, now: Instant, tally: &mut Tally) -> Option<i64> {
        self.changes += 1;
        let at = self.inputs.iter().position(|i| i.input == input)?;
        let gone = self.inputs.remove(at);
        self.buffered -= gone.buffer.len();
        let position = gone.position();
        self.drain(now, false, tally);
        position
    }

    /// How often the task changed in a way its checkpoint must record (see the field).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The inputs this task reads.
    pub fn inputs(&self) -> impl Iterator<Item = Input> + '_ {
        self.inputs.iter().map(|i| i.input)
    }

    fn clock(&mut self, input: Input, now: Instant) -> &mut InputClock {
        let at = match self.inputs.iter().position(|i| i.input == input) {
            Some(at) => at,
            None => {
                self.add_input(input, None, now);
                self.inputs.len() - 1
            }
        };
        &mut self.inputs[at]
    }

    /// Applies one event of `input`, then moves the watermark if the event raised the
    /// minimum over the inputs, as a single-input shard does after every event (so figures
    /// never depend on how events are batched).
    pub fn apply(
        &mut self,
        input: Input,
        ev: &Event<'_>,
        now: Instant,
    ) -> Result<Applied, ApplyError> {
        self.apply_at(input, ev, now, true)
    }

    /// [`Task::apply`]; `arrived`: the event arrives now (not from a buffer, whose records
    /// counted as arrivals when received).
    fn apply_at(
        &mut self,
        input: Input,
        ev: &Event<'_>,
        now: Instant,
        arrived: bool,
    ) -> Result<Applied, ApplyError> {
        let clock = self.clock(input, now);
        if arrived {
            clock.last_arrival = now;
            clock.caught_up = false;
        }
        let raised = clock.max_ts.is_none_or(|m| ev.ts > m);
        if raised {
            clock.max_ts = Some(ev.ts);
        }
        if arrived {
            self.last_event = now;
        }
        self.changes += 1;
        let applied = self.shard.apply(ev);
        if raised {
            // The input just delivered, so it holds the watermark: no wall clock is needed.
            self.advance(now, Millis::MIN);
        }
        applied
    }

    /// The HTTP/file stream, which every task shares, has reached event time `t` (epoch ms):
    /// raises this task's push clock, if it has push input, and moves the watermark. Returns
    /// whether the watermark moved.
    pub fn observe_push(&mut self, t: Millis, now: Instant) -> bool {
        let Some(clock) = self.inputs.iter_mut().find(|i| i.input == Input::Push) else {
            return false;
        };
        if clock.max_ts.is_some_and(|m| m >= t) || t == Millis::MIN {
            return false;
        }
        clock.max_ts = Some(t);
        self.advance(now, Millis::MIN)
    }

    /// A Kafka partition reached its end: it has no lag until its next record.
    pub fn caught_up(&mut self, input: Input, now: Instant) {
        self.clock(input, now).caught_up = true;
    }

    /// The event time every input has reached, if one is proven: the minimum largest event
    /// time over the inputs still holding the watermark. In live mode, with every input idle,
    /// the largest event time plus the time since the last arrival, or an input's clock if
    /// the shared HTTP stream raised it further, or the wall clock (`wall_ms`) when a Kafka
    /// partition is among the inputs, since caught-up partitions prove nothing older is coming.
    pub fn stream_time(&self, now: Instant, wall_ms: Millis) -> Option<Millis> {
        let t = self.uncapped_stream_time(now, wall_ms)?;
        // Live: never past the wall clock (see the module's note on future-dated events).
        Some(if self.live {
            t.min(self.wall_at(now))
        } else {
            t
        })
    }

    fn uncapped_stream_time(&self, now: Instant, wall_ms: Millis) -> Option<Millis> {
        let mut holding = self
            .inputs
            .iter()
            .filter(|i| !(self.live && i.idle(now, self.idle)))
            .peekable();
        if holding.peek().is_some() {
            return holding.map(|i| i.max_ts).min().flatten();
        }
        if !self.live {
            return None;
        }
        let quiet = now.saturating_duration_since(self.last_event).as_millis() as Millis;
        let own = self
            .shard
            .aggregates()
            .max_event_time
            .map(|m| m.saturating_add(quiet));
        // What an idle input's clock was raised to without an event for this task (the HTTP
        // stream's time moves every task) is proven too. Ignoring it left this task's sessions
        // open after a quiet spell, however far the shared stream had moved on.
        let raised = self.inputs.iter().filter_map(|i| i.max_ts).max();
        let max = own.max(raised);
        let reading_kafka = self.inputs.iter().any(|i| i.input != Input::Push);
        match (max, reading_kafka) {
            (Some(m), true) => Some(m.max(wall_ms)),
            (Some(m), false) => Some(m),
            (None, true) => Some(wall_ms),
            (None, false) => None,
        }
    }

    /// Moves the shard's watermark to the task's stream time minus the allowed lateness,
    /// closing the sessions that proves complete. Returns whether it moved.
    pub fn advance(&mut self, now: Instant, wall_ms: Millis) -> bool {
        let Some(t) = self.stream_time(now, wall_ms) else {
            return false;
        };
        let before = self.shard.watermark();
        self.shard.advance_clock(t);
        self.shard.watermark() != before
    }

    /// The shard's state and input clocks, for a checkpoint.
    pub fn snapshot(&self) -> TaskSnapshot {
        TaskSnapshot {
            task: self.id,
            shard: self.shard.snapshot(),
            inputs: self.inputs.iter().map(|i| (i.input, i.max_ts)).collect(),
            changes: self.changes,
            positions: self.positions(),
        }
    }

    /// Each Kafka input's offset of its first record not applied, where known.
    pub fn positions(&self) -> Vec<(Input, i64)> {
        self.inputs
            .iter()
            .filter(|i| i.input != Input::Push)
            .filter_map(|i| Some((i.input, i.position()?)))
            .collect()
    }

    /// Records received from Kafka inputs and not yet applied.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Records of a Kafka input, in offset order, each with its offset if known; `read_to` is
    /// the offset after the last record read (rejected records included). Applies whatever the
    /// merge by event time allows now (see the module doc); `ack` is sent once the last of
    /// these records is applied.
    pub fn receive(
        &mut self,
        input: Input,
        records: Vec<Buffered>,
        read_to: Option<i64>,
        ack: Option<Ack>,
        now: Instant,
        tally: &mut Tally,
    ) {
        let at = match self.inputs.iter().position(|i| i.input == input) {
            Some(at) => at,
            None => {
                self.add_input(input, None, now);
                self.inputs.len() - 1
            }
        };
        self.changes += 1;
        if !records.is_empty() {
            self.last_event = now;
        }
        let alone = self
            .inputs
            .iter()
            .all(|i| i.input == input || i.input == Input::Push);
        let clock = &mut self.inputs[at];
        if !records.is_empty() {
            clock.last_arrival = now;
            clock.caught_up = false;
        }
        if read_to.is_some() {
            clock.read_to = read_to;
        }
        let n = records.len() as u64;
        clock.received += n;
        if alone && clock.buffer.is_empty() {
            // Nothing to merge with: applied at once, as records of a single partition are.
            clock.done += n;
            for (e, _) in records {
                self.apply_counted(input, &e, now, tally);
            }
            tally.acks.extend(ack);
            return;
        }
        let end = clock.received;
        self.buffered += records.len();
        clock.buffer.extend(records);
        if let Some(ack) = ack {
            clock.acks.push_back((end, ack));
        }
        clock.acknowledge(&mut tally.acks);
        self.drain(now, false, tally);
    }

    /// [`Task::receive`] for records decoded on the spot: `decode` hands each event with its
    /// offset to a sink. With nothing to merge (this is the task's only Kafka input and has
    /// nothing buffered) the sink applies each event at once, borrowed from the records'
    /// bytes; otherwise it buffers an owned copy.
    pub fn receive_with(
        &mut self,
        input: Input,
        decode: impl FnOnce(&mut dyn FnMut(Event<'_>, i64)),
        read_to: Option<i64>,
        ack: Option<Ack>,
        now: Instant,
        tally: &mut Tally,
    ) {
        let alone = self
            .inputs
            .iter()
            .all(|i| i.input == input || i.input == Input::Push);
        let at = self.inputs.iter().position(|i| i.input == input);
        if !alone || at.is_some_and(|at| !self.inputs[at].buffer.is_empty()) {
            let mut records = Vec::new();
            decode(&mut |e, offset| records.push((e.into_owned(), Some(offset))));
            return self.receive(input, records, read_to, ack, now, tally);
        }
        let at = at.unwrap_or_else(|| {
            self.add_input(input, None, now);
            self.inputs.len() - 1
        });
        // As `receive` does on its way to applying at once, in the same order.
        self.changes += 1;
        if read_to.is_some() {
            self.inputs[at].read_to = read_to;
        }
        let mut n = 0u64;
        decode(&mut |e, _| {
            if n == 0 {
                self.last_event = now;
                let clock = &mut self.inputs[at];
                clock.last_arrival = now;
                clock.caught_up = false;
            }
            n += 1;
            self.apply_counted(input, &e, now, tally);
        });
        let clock = &mut self.inputs[at];
        clock.received += n;
        clock.done += n;
        tally.acks.extend(ack);
    }

    /// Applies buffered records in event-time order as far as the merge allows: until a Kafka
    /// input with lag has nothing buffered (for at most `max_idle`, and while fewer than
    /// [`MAX_BUFFERED`] records wait), or everything is applied. `force` applies everything
    /// buffered (end of input, shutdown).
    pub fn drain(&mut self, now: Instant, force: bool, tally: &mut Tally) {
        while self.buffered > 0 {
            let mut next: Option<(usize, Millis)> = None;
            // Whether a lagging input with nothing buffered holds the others back, and whether
            // one of them has waited less than `max_idle` for it.
            let (mut held, mut waiting) = (false, false);
            for (k, i) in self.inputs.iter_mut().enumerate() {
                if let Some((e, _)) = i.buffer.front() {
                    if next.is_none_or(|(_, ts)| e.ts < ts) {
                        next = Some((k, e.ts));
                    }
                }
                if i.holds_back() {
                    held = true;
                    let since = *i.empty_since.get_or_insert(now);
                    waiting |= now.saturating_duration_since(since) < self.max_idle;
                } else {
                    i.empty_since = None;
                }
            }
            let Some((k, _)) = next else { break };
            let forced = held && !force;
            if forced && waiting && self.buffered < MAX_BUFFERED {
                return;
            }
            let clock = &mut self.inputs[k];
            let Some((e, _)) = clock.buffer.pop_front() else {
                break;
            };
            clock.done += 1;
            let input = clock.input;
            self.buffered -= 1;
            tally.forced += u64::from(forced);
            self.apply_counted(input, &e, now, tally);
            self.inputs[k].acknowledge(&mut tally.acks);
        }
    }

    /// Whether the task holds records back for a lagging input, so its worker must wake to
    /// apply them once `max_idle` has passed.
    pub fn waiting(&self) -> bool {
        self.buffered > 0
    }

    fn apply_counted(&mut self, input: Input, e: &Event<'_>, now: Instant, tally: &mut Tally) {
        match self.apply_at(input, e, now, false) {
            Ok(a) => {
                tally.applied += 1;
                tally.late += u64::from(a.late);
            }
            Err(ApplyError::Duplicate { .. }) => tally.duplicates += 1,
            // Rare (a session at `session.max_events`): the copy is for the reject hook.
            Err(err) => tally.rejected.push((e.clone().into_owned(), err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use journey_core::{EngineConfig, Rules};
    use std::borrow::Cow;
    use std::sync::Arc;

    const MIN: Millis = 60_000;
    const IDLE: Idleness = Idleness {
        topic: Duration::from_secs(10),
        push: Duration::from_secs(1),
    };

    /// The wall clock in epoch milliseconds.
    fn wall_clock() -> Millis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as Millis
    }

    fn task() -> Task {
        task_with(true)
    }

    fn task_with(live: bool) -> Task {
        let rules = Rules::from_toml(
            "[[touchpoint]]\nname = \"visit\"\nphase = \"awareness\"\nevent = \"page_view\"\n",
        )
        .unwrap();
        let shard = Shard::new(Arc::new(EngineConfig::default()), Arc::new(rules));
        Task::new(3, shard, Instant::now(), live, IDLE)
    }

    fn ev(c: &str, ts: Millis) -> Event<'static> {
        Event {
            event_id: None,
            customer_id: Cow::Owned(c.to_string()),
            ts,
            source: Cow::Borrowed("web"),
            name: Cow::Borrowed("page_view"),
            attributes: serde_json::Value::Null,
        }
    }

    #[test]
    fn live_event_time_never_runs_ahead_of_the_wall_clock() {
        let wall = wall_clock();
        let now = Instant::now();
        // A client whose clock is 23 h fast: its event counts, the watermark stays at now.
        let mut t = task();
        t.add_input(Input::Push, None, now);
        t.apply(Input::Push, &ev("fast", wall + 23 * 60 * MIN), now)
            .unwrap();
        let st = t.stream_time(now, 0).unwrap();
        assert!(
            st <= wall + 1_000,
            "stream time {st} ran ahead of the wall clock {wall}"
        );
        // So an event of a correct client one minute ago is not late.
        let applied = t.apply(Input::Push, &ev("right", wall - MIN), now).unwrap();
        assert!(!applied.late, "an on-time event counted as late");
        // A replay has no wall clock to respect.
        let mut r = task_with(false);
        r.add_input(Input::Push, None, now);
        r.apply(Input::Push, &ev("fast", wall + 23 * 60 * MIN), now)
            .unwrap();
        assert_eq!(r.stream_time(now, 0), Some(wall + 23 * 60 * MIN));
    }

    #[test]
    fn the_slowest_partition_holds_the_watermark() {
        let mut t = task();
        let now = Instant::now();
        let (web, crm) = (Input::Topic(0), Input::Topic(1));
        t.add_input(web, None, now);
        t.add_input(crm, None, now);
        // A backlog: the web partition is read hours ahead of the crm one.
        t.apply(web, &ev("a", 600 * MIN), now).unwrap();
        assert_eq!(t.stream_time(now, 0), None, "crm has not delivered");
        assert!(!t.advance(now, 0));
        t.apply(crm, &ev("b", 10 * MIN), now).unwrap();
        assert_eq!(t.stream_time(now, 0), Some(10 * MIN));
        t.advance(now, 0);
        assert_eq!(
            t.shard().watermark(),
            5 * MIN,
            "10 min minus 5 min lateness"
        );
        // crm's next event is hours behind web's but not late.
        let applied = t.apply(crm, &ev("c", 11 * MIN), now).unwrap();
        assert!(!applied.late);
    }

    #[test]
    fn a_caught_up_partition_stops_holding_after_the_idle_timeout() {
        let mut t = task();
        let t0 = Instant::now();
        let (web, service) = (Input::Topic(0), Input::Topic(2));
        t.add_input(web, None, t0);
        t.add_input(service, None, t0);
        t.apply(web, &ev("a", 100 * MIN), t0).unwrap();
        t.caught_up(service, t0);
        assert_eq!(t.stream_time(t0, 0), None);
        let later = t0 + Duration::from_secs(11);
        // web is not caught up: it holds at its own time; the empty service topic no longer does.
        assert_eq!(t.stream_time(later, 0), Some(100 * MIN));
        // A partition with lag never goes idle, however long it is quiet.
        let mut u = task();
        u.add_input(service, None, t0);
        assert_eq!(u.stream_time(later, 0), None);
        // Replays wait for every input: idleness is a live-mode notion.
        let mut replay = task_with(false);
        replay.apply(web, &ev("a", 100 * MIN), t0).unwrap();
        replay.caught_up(service, t0);
        assert_eq!(replay.stream_time(later, 0), None);
    }

    #[test]
    fn with_every_input_idle_event_time_follows_the_clock() {
        let mut t = task();
        let t0 = Instant::now();
        t.apply(Input::Push, &ev("a", 100 * MIN), t0).unwrap();
        let later = t0 + Duration::from_secs(3);
        // Push input only: the time since the last event is added to the newest event time.
        assert_eq!(t.stream_time(later, 0), Some(100 * MIN + 3_000));
        // With a caught-up Kafka partition, the wall clock when it is later.
        t.add_input(Input::Topic(0), None, t0);
        t.caught_up(Input::Topic(0), t0);
        let much_later = t0 + Duration::from_secs(11);
        assert_eq!(t.stream_time(much_later, 500 * MIN), Some(500 * MIN));
        assert!(t.advance(much_later, 500 * MIN));
        assert_eq!(t.shard().watermark(), 495 * MIN);
    }

    /// The HTTP stream moved on (another task's event) after this task's push input went idle:
    /// the stream's time counts, so this task's sessions close.
    #[test]
    fn an_idle_push_input_raised_by_the_shared_stream_moves_event_time() {
        let mut t = task();
        let t0 = Instant::now();
        t.apply(Input::Push, &ev("a", 100 * MIN), t0).unwrap();
        let idle = t0 + IDLE.push + Duration::from_millis(1);
        assert!(t.observe_push(300 * MIN, idle));
        assert_eq!(t.stream_time(idle, 0), Some(300 * MIN));
        assert_eq!(t.shard().watermark(), 295 * MIN);
    }

    /// Records of `customer` at these minutes, with offsets from `first`.
    fn records(customer: &str, minutes: &[Millis], first: i64) -> Vec<Buffered> {
        minutes
            .iter()
            .zip(first..)
            .map(|(&m, offset)| (ev(customer, m * MIN), Some(offset)))
            .collect()
    }

    fn events(t: &Task) -> u64 {
        t.shard().aggregates().counters.events
    }

    fn newest(t: &Task) -> Option<Millis> {
        t.shard().aggregates().max_event_time
    }

    /// Records handed over one by one as they are decoded ([`Task::receive_with`]) are taken as
    /// the same records received whole: applied at once by a task with one Kafka input,
    /// merged by one with two; same figures, positions and acknowledgements either way.
    #[test]
    fn records_decoded_on_the_spot_are_taken_as_received_ones() {
        let now = Instant::now();
        let (web, crm) = (Input::Topic(0), Input::Topic(1));
        let batches = [
            (web, records("a", &[1, 3, 2], 0), 3),
            (crm, records("b", &[2, 40], 7), 9),
            (web, Vec::new(), 4),
            (web, records("b", &[5, 30, 60], 4), 7),
        ];
        for inputs in [&[web][..], &[web, crm][..]] {
            let (mut whole, mut by_one) = (task(), task());
            for t in [&mut whole, &mut by_one] {
                for &i in inputs {
                    t.add_input(i, None, now);
                }
            }
            let (mut a, mut b) = (Tally::default(), Tally::default());
            let mut acks = Vec::new();
            for (input, batch, read_to) in batches.iter().cloned() {
                let (tx, rx) = flume::bounded(2);
                acks.push(rx);
                whole.receive(
                    input,
                    batch.clone(),
                    Some(read_to),
                    Some(tx.clone()),
                    now,
                    &mut a,
                );
                let decode = |sink: &mut dyn FnMut(Event<'_>, i64)| {
                    for (e, offset) in batch {
                        sink(e, offset.unwrap());
                    }
                };
                by_one.receive_with(input, decode, Some(read_to), Some(tx), now, &mut b);
                assert_eq!(whole.positions(), by_one.positions(), "inputs {inputs:?}");
                assert_eq!(a.acks.len(), b.acks.len(), "inputs {inputs:?}");
            }
            for t in [&mut whole, &mut by_one] {
                t.drain(now, true, &mut Tally::default());
            }
            assert_eq!((a.applied, a.forced), (b.applied, b.forced));
            assert_eq!(whole.snapshot(), by_one.snapshot(), "inputs {inputs:?}");
            assert_eq!(events(&by_one), 8);
        }
    }

    /// A sparse topic's one fetch spans weeks: its records wait until the dense topic has
    /// delivered the records older than them, and are applied in event-time order in between.
    #[test]
    fn kafka_inputs_are_merged_by_event_time() {
        let mut t = task();
        let now = Instant::now();
        let (web, crm) = (Input::Topic(0), Input::Topic(1));
        t.add_input(web, None, now);
        t.add_input(crm, None, now);
        let mut tally = Tally::default();
        t.receive(
            crm,
            records("a", &[25, 10_000], 0),
            Some(2),
            None,
            now,
            &mut tally,
        );
        assert_eq!(
            events(&t),
            0,
            "web, with lag, may still deliver older records"
        );
        t.receive(
            web,
            records("a", &[10, 20, 30], 0),
            Some(3),
            None,
            now,
            &mut tally,
        );
        // 10, 20, 25 (crm), 30; crm's next is weeks ahead and web has nothing left buffered.
        assert_eq!((events(&t), newest(&t)), (4, Some(30 * MIN)));
        assert_eq!(t.buffered(), 1);
        assert_eq!(t.positions(), vec![(web, 3), (crm, 1)]);
        t.receive(
            web,
            records("a", &[40, 9_000], 3),
            Some(5),
            None,
            now,
            &mut tally,
        );
        assert_eq!((events(&t), newest(&t)), (6, Some(9_000 * MIN)));
        assert_eq!((tally.applied, tally.forced), (6, 0));
        // The snapshot leaves the buffered record out: a checkpoint resumes crm at it.
        assert_eq!(t.snapshot().positions, vec![(web, 5), (crm, 1)]);
    }

    #[test]
    fn a_caught_up_input_with_nothing_buffered_holds_nothing_back() {
        let mut t = task();
        let now = Instant::now();
        let (web, crm) = (Input::Topic(0), Input::Topic(1));
        t.add_input(web, None, now);
        t.add_input(crm, None, now);
        let mut tally = Tally::default();
        t.receive(
            crm,
            records("a", &[25, 50], 0),
            Some(2),
            None,
            now,
            &mut tally,
        );
        assert_eq!(events(&t), 0);
        // web reached its end: nothing older can come.
        t.caught_up(web, now);
        t.drain(now, false, &mut tally);
        assert_eq!((events(&t), t.buffered(), tally.forced), (2, 0, 0));
        // A record ends caught up: holding back again.
        t.receive(web, records("a", &[60], 0), Some(1), None, now, &mut tally);
        t.receive(crm, records("a", &[70], 2), Some(3), None, now, &mut tally);
        assert_eq!((events(&t), t.buffered()), (3, 1));
    }

    /// Kafka Streams' `max.task.idle.ms`: a lagging partition that delivers nothing holds the
    /// others back for at most the wait, then they are applied (counted as forced).
    #[test]
    fn a_lagging_input_holds_the_others_back_for_at_most_the_wait() {
        let mut t = task();
        t.set_max_idle(Duration::from_secs(2));
        let t0 = Instant::now();
        let (web, crm) = (Input::Topic(0), Input::Topic(1));
        t.add_input(web, None, t0);
        t.add_input(crm, None, t0);
        let mut tally = Tally::default();
        let (tx, acked) = flume::bounded(1);
        t.receive(
            crm,
            records("a", &[25, 50], 0),
            Some(2),
            Some(tx),
            t0,
            &mut tally,
        );
        t.drain(t0 + Duration::from_secs(1), false, &mut tally);
        assert_eq!(events(&t), 0);
        assert!(
            tally.acks.is_empty(),
            "acknowledged before its records are applied"
        );
        t.drain(t0 + Duration::from_secs(2), false, &mut tally);
        assert_eq!((events(&t), tally.forced), (2, 2));
        assert_eq!(tally.acks.len(), 1, "acknowledged once applied");
        drop(acked);
        // Still lagging and empty: the wait is over, so the next records go on at once.
        let later = t0 + Duration::from_secs(3);
        t.receive(
            crm,
            records("a", &[60], 2),
            Some(3),
            None,
            later,
            &mut tally,
        );
        assert_eq!(events(&t), 3);
        // Once web delivers the wait is reset: its 70 waits for crm, then crm's 80 for web.
        t.receive(
            web,
            records("a", &[70], 0),
            Some(1),
            None,
            later,
            &mut tally,
        );
        assert_eq!(events(&t), 3);
        t.receive(
            crm,
            records("a", &[80], 3),
            Some(4),
            None,
            later,
            &mut tally,
        );
        assert_eq!(events(&t), 4);
        // Forced past the cap, however short the wait.
        let many: Vec<Millis> = (0..=MAX_BUFFERED as Millis).map(|i| 100 + i).collect();
        t.receive(crm, records("b", &many, 4), None, None, later, &mut tally);
        assert_eq!(t.buffered(), MAX_BUFFERED - 1);
        assert_eq!(events(&t), 7, "80 and two of b's");
    }

    /// Revoking a partition drops its buffered records and says where to read it again; the
    /// records it held back are applied.
    #[test]
    fn a_revoked_input_hands_back_the_position_of_its_first_record_not_applied() {
        let mut t = task();
        let now = Instant::now();
        let (web, crm) = (Input::Topic(0), Input::Topic(1));
        t.add_input(web, None, now);
        t.add_input(crm, None, now);
        let mut tally = Tally::default();
        t.receive(
            web,
            records("a", &[10, 40], 7),
            Some(9),
            None,
            now,
            &mut tally,
        );
        let (tx, acked) = flume::bounded(1);
        t.receive(
            crm,
            records("b", &[20, 30], 3),
            Some(5),
            Some(tx),
            now,
            &mut tally,
        );
        // 10, 20, 30 (then crm is empty with lag): web's 40 waits.
        assert_eq!((events(&t), t.positions()), (3, vec![(web, 8), (crm, 5)]));
        assert_eq!(tally.acks.len(), 1);
        drop(acked);
        assert_eq!(t.remove_input(web, now, &mut tally), Some(8));
        assert_eq!(t.buffered(), 0);
        t.receive(crm, records("b", &[50], 5), Some(6), None, now, &mut tally);
        assert_eq!(events(&t), 4, "alone, crm's records are applied on arrival");
    }

    /// A caught-up partition whose records wait for another is not idle: once idle it would no
    /// longer hold the watermark, and its records would be late when applied.
    #[test]
    fn a_partition_with_records_held_back_is_never_idle() {
        let mut t = task();
        t.set_max_idle(Duration::from_secs(60));
        let t0 = Instant::now();
        let (web, crm) = (Input::Topic(0), Input::Topic(1));
        t.add_input(web, None, t0);
        t.add_input(crm, None, t0);
        let mut tally = Tally::default();
        t.receive(web, records("a", &[10], 0), Some(1), None, t0, &mut tally);
        t.receive(
            crm,
            records("b", &[20, 30], 0),
            Some(2),
            None,
            t0,
            &mut tally,
        );
        t.caught_up(crm, t0);
        // web's 10 was applied; crm's wait for web, which has lag.
        assert_eq!((events(&t), t.buffered()), (1, 2));
        let later = t0 + IDLE.topic + Duration::from_secs(1);
        assert_eq!(
            t.stream_time(later, 0),
            None,
            "crm, caught up and quiet but with records buffered, still holds"
        );
    }

    /// Push input is applied on arrival, never held back by a lagging partition.
    #[test]
    fn push_input_is_not_merged() {
        let mut t = task();
        let now = Instant::now();
        t.add_input(Input::Topic(0), None, now);
        t.apply(Input::Push, &ev("a", 10 * MIN), now).unwrap();
        assert_eq!((events(&t), t.buffered()), (1, 0));
    }

    #[test]
    fn a_record_ends_caught_up() {
        let mut t = task();
        let t0 = Instant::now();
        let web = Input::Topic(0);
        t.caught_up(web, t0);
        t.apply(web, &ev("a", 100 * MIN), t0).unwrap();
        let later = t0 + Duration::from_secs(60);
        assert_eq!(t.stream_time(later, 0), Some(100 * MIN));
    }

    /// In live mode, figures depend on when records dated after the wall clock are read: event
    /// time stops at the wall clock, so the same records read two minutes later close a session
    /// they left open before. Dated in the past, they give the same figures whenever they are
    /// read. So a run restarted from a checkpoint, which reads the rest of its records later than
    /// an uninterrupted run, equals it only for data in the past (the crash test's premise).
    #[test]
    fn only_records_dated_after_the_wall_clock_make_figures_depend_on_when_they_are_read() {
        let wall = wall_clock();
        let t0 = Instant::now();
        let closed = |b_ts: Millis, later: Duration| {
            let mut t = task();
            let now = t0 + later;
            // A session complete once event time is past its event + 30 min gap + 5 min
            // lateness: the wall clock + 1 min.
            t.apply(Input::Topic(0), &ev("a", wall - 34 * MIN), now)
                .unwrap();
            t.apply(Input::Topic(0), &ev("b", b_ts), now).unwrap();
            t.shard().aggregates().counters.sessions_closed
        };
        let (at_once, two_minutes) = (Duration::ZERO, Duration::from_secs(120));
        // Customer b's event an hour ahead: event time is the wall clock when it is read.
        assert_eq!(closed(wall + 60 * MIN, at_once), 0);
        assert_eq!(
            closed(wall + 60 * MIN, two_minutes),
            1,
            "read later, a will have closed"
        );
        // A minute ago: event time is b's, however late it is read.
        assert_eq!(closed(wall - MIN, at_once), 0);
        assert_eq!(closed(wall - MIN, two_minutes), 0);
    }

    #[test]
    fn snapshots_carry_the_input_clocks() {
        let mut t = task();
        let now = Instant::now();
        t.add_input(Input::Topic(1), Some(7 * MIN), now);
        t.apply(Input::Topic(0), &ev("a", 9 * MIN), now).unwrap();
        let s = t.snapshot();
        assert_eq!(s.task, 3);
        assert_eq!(
            s.inputs,
            vec![
                (Input::Topic(1), Some(7 * MIN)),
                (Input::Topic(0), Some(9 * MIN))
            ]
        );
        assert!(!s.shard.is_empty());
    }
}
