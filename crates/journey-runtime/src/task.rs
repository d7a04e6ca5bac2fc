//! A task: partition index `p` of the co-partitioned input topics, owning one shard.
//!
//! Kafka Streams' `StreamTask` and `PartitionGroup`, reduced to what journeyd needs. A task's
//! inputs are the partitions `p` of every input topic plus the HTTP/file input the
//! partitioner routes to it. Each input tracks the largest event time it has delivered; the
//! task's watermark is the minimum over the inputs that still hold it back, minus
//! `session.allowed_lateness` (Flink's per-split watermarks). Records of different inputs are
//! applied in arrival order: since no input's records fall behind that minimum, the shard's
//! figures are the same for every interleaving in which no input runs more than
//! `journey.window` of event time ahead of another (SPEC §3, docs/semantics.md §5; the
//! engine's model test `a_task_of_two_inputs_equals_the_reference_under_skew`).
//!
//! An input stops holding the watermark back once it is idle: a Kafka partition that reached
//! its end (no lag) and delivered nothing for `kafka.idle_timeout`, or push input that has
//! been quiet for the tick interval. With every input idle, event time advances with the wall
//! clock in live mode, so sessions close when traffic stops.
//!
//! In live mode event time never runs ahead of the wall clock: an accepted event dated in the
//! future (up to `ingest.max_future`, a client whose clock is fast) counts, but moves the
//! watermark no further than now. Otherwise one such client would make every other event
//! late until the wall clock caught up with it.

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

#[derive(Debug, Clone)]
struct InputClock {
    input: Input,
    /// Largest event time delivered; `None` before the first event (holds the task at the
    /// beginning of time until the input delivers or goes idle).
    max_ts: Option<Millis>,
    last_arrival: Instant,
    /// Kafka: reached the end of the partition, with nothing newer since.
    caught_up: bool,
}

impl InputClock {
    fn idle(&self, now: Instant, idle: Idleness) -> bool {
        let quiet = now.saturating_duration_since(self.last_arrival);
        match self.input {
            Input::Push => quiet >= idle.push,
            Input::Topic(_) => self.caught_up && quiet >= idle.topic,
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
        }
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
        self.inputs.push(InputClock {
            input,
            max_ts,
            last_arrival: now,
            caught_up: false,
        });
    }

    /// Removes an input (a revoked partition); it no longer holds the watermark.
    pub fn remove_input(&mut self, input: Input) {
        self.changes += 1;
        self.inputs.retain(|i| i.input != input);
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
        let clock = self.clock(input, now);
        clock.last_arrival = now;
        clock.caught_up = false;
        let raised = clock.max_ts.is_none_or(|m| ev.ts > m);
        if raised {
            clock.max_ts = Some(ev.ts);
        }
        self.last_event = now;
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
