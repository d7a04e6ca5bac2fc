//! A task reads several partitions whose records arrive in any interleaving (librdkafka's
//! fetch batches, a backlog read partition by partition). As long as each partition's own
//! stream is ordered within the allowed lateness, the task's figures must equal those of one
//! shard fed the whole stream in time order, and no event may be counted late (SPEC §3).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use journey_core::query::{Include, Summary};
use journey_core::time::{Millis, DAY, MINUTE};
use journey_core::{EngineConfig, Event, Rules, Shard};
use journey_runtime::{Idleness, Input, Partitioner, Tally, Task};
use proptest::prelude::*;

const RULES: &str = r#"
[[touchpoint]]
name = "ad"
phase = "awareness"
event = "ad"
[[touchpoint]]
name = "product"
phase = "consideration"
event = "product"
[[touchpoint]]
name = "lead"
phase = "consideration"
source = "crm"
event = "lead"
[[touchpoint]]
name = "order"
phase = "decision"
event = "order"
goal = true
[[touchpoint]]
name = "ticket"
phase = "retention"
source = "service"
event = "ticket"
"#;

const T0: Millis = 1_795_000_000_000;
const NAMES: [&str; 5] = ["ad", "product", "lead", "order", "ticket"];
const SOURCES: [&str; 3] = ["web", "crm", "service"];

fn config() -> EngineConfig {
    EngineConfig {
        allowed_lateness: 5 * MINUTE,
        retention_fine: 60 * DAY,
        retention_total: 90 * DAY,
        ..EngineConfig::default()
    }
}

/// One event: customer, minutes after T0 (before the jitter), kind, jitter back in seconds.
type Spec = (u8, u16, u8, u16);

fn event(&(c, minute, kind, jitter): &Spec) -> Event<'static> {
    let kind = kind as usize % NAMES.len();
    Event {
        event_id: None,
        customer_id: Cow::Owned(format!("customer-{c}")),
        ts: T0 + minute as Millis * MINUTE - (jitter as Millis % 240) * 1000,
        source: Cow::Borrowed(SOURCES[kind % SOURCES.len()]),
        name: Cow::Borrowed(NAMES[kind]),
        attributes: serde_json::Value::Null,
    }
}

/// The events of `specs`, a millisecond apart where their times would be equal: one customer's
/// events at one time on two partitions keep their arrival order (SPEC §3), which depends on
/// the interleaving, so the reference's stable sort could not match them.
fn distinct_times(specs: &[Spec]) -> Vec<Event<'static>> {
    specs
        .iter()
        .zip(0..)
        .map(|(s, i)| {
            let e = event(s);
            Event { ts: e.ts + i, ..e }
        })
        .collect()
}

fn summary(parts: &[&Shard]) -> Summary {
    let mut s = Summary::collect(
        parts.iter().map(|s| s.aggregates()),
        T0 - DAY,
        T0 + 30 * DAY,
        &Include::default(),
    );
    // When state is freed depends on when the watermark passes, which is not a figure.
    s.counters.customers_evicted = 0;
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_interleaving_of_partitions_gives_the_time_ordered_figures(
        mut specs in prop::collection::vec((0u8..40, 0u16..(48 * 60), 0u8..5, 0u16..240), 1..400),
        picks in prop::collection::vec(0usize..1000, 1..2000),
        batch in 1usize..64,
    ) {
        let cfg = Arc::new(config());
        let rules = Arc::new(Rules::from_toml(RULES).unwrap());
        // Each partition (input topic) is in time order up to the jitter, as producers write it.
        specs.sort_by_key(|s| s.1);
        let events = distinct_times(&specs);
        let task_of = |e: &Event<'_>| Partitioner::Murmur2.partition(e.customer_id.as_bytes(), 2);
        let topic_of = |e: &Event<'_>| SOURCES.iter().position(|s| *s == e.source).unwrap() as u16;

        // Reference: one shard, the whole stream sorted by event time.
        let mut reference = Shard::new(cfg.clone(), rules.clone());
        let mut sorted = events.clone();
        sorted.sort_by_key(|e| e.ts);
        for e in &sorted {
            reference.apply(e).unwrap();
        }
        reference.flush();

        // Tasks: per-partition queues drained in an arbitrary interleaving, in batches.
        let now = Instant::now();
        let idle = Idleness { topic: std::time::Duration::from_secs(10), push: std::time::Duration::from_secs(1) };
        let mut tasks: Vec<Task> = (0..2).map(|p| {
            let mut t = Task::new(p, Shard::new(cfg.clone(), rules.clone()), now, false, idle);
            for topic in 0..3 {
                t.add_input(Input::Topic(topic), None, now);
            }
            t
        }).collect();
        let mut queues: Vec<std::collections::VecDeque<&Event<'static>>> = vec![Default::default(); 6];
        for e in &events {
            queues[task_of(e) as usize * 3 + topic_of(e) as usize].push_back(e);
        }
        let mut late = 0;
        let mut pick = picks.iter().cycle();
        while queues.iter().any(|q| !q.is_empty()) {
            let open: Vec<usize> = (0..6).filter(|&q| !queues[q].is_empty()).collect();
            let q = open[pick.next().unwrap() % open.len()];
            let (task, topic) = (q / 3, (q % 3) as u16);
            for _ in 0..batch {
                let Some(e) = queues[q].pop_front() else { break };
                late += tasks[task].apply(Input::Topic(topic), e, now).unwrap().late as u64;
            }
            tasks[task].advance(now, 0);
        }
        for t in &mut tasks {
            t.shard_mut().flush();
        }
        prop_assert_eq!(late, 0, "no event of an ordered partition is late");
        let got = summary(&tasks.iter().map(Task::shard).collect::<Vec<_>>());
        let want = summary(&[&reference]);
        prop_assert_eq!(got, want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A task merging its partitions by event time gives the time-ordered figures even when
    /// batches of one partition arrive days of event time ahead of another's and the journey
    /// window is 20 minutes, which arrival order does not (docs/semantics.md §5).
    #[test]
    fn partitions_merged_by_event_time_give_the_time_ordered_figures_under_any_skew(
        mut specs in prop::collection::vec((0u8..20, 0u16..(48 * 60), 0u8..5, 0u16..240), 1..300),
        picks in prop::collection::vec(0usize..1000, 1..2000),
        batch in 1usize..200,
    ) {
        let cfg = Arc::new(EngineConfig { journey_window: 20 * MINUTE, ..config() });
        let rules = Arc::new(Rules::from_toml(RULES).unwrap());
        specs.sort_by_key(|s| s.1);
        let events = distinct_times(&specs);
        let topic_of = |e: &Event<'_>| SOURCES.iter().position(|s| *s == e.source).unwrap() as u16;
        let mut reference = Shard::new(cfg.clone(), rules.clone());
        let mut sorted = events.clone();
        sorted.sort_by_key(|e| e.ts);
        for e in &sorted {
            reference.apply(e).unwrap();
        }
        reference.flush();

        let now = Instant::now();
        let idle = Idleness { topic: std::time::Duration::from_secs(10), push: std::time::Duration::from_secs(1) };
        let mut task = Task::new(0, Shard::new(cfg.clone(), rules.clone()), now, false, idle);
        for topic in 0..3 {
            task.add_input(Input::Topic(topic), None, now);
        }
        let mut queues: Vec<std::collections::VecDeque<(Event<'static>, Option<i64>)>> =
            vec![Default::default(); 3];
        for e in &events {
            let q = &mut queues[topic_of(e) as usize];
            let offset = q.len() as i64;
            q.push_back((e.clone(), Some(offset)));
        }
        let mut tally = Tally::default();
        for (q, queue) in queues.iter().enumerate() {
            if queue.is_empty() {
                task.caught_up(Input::Topic(q as u16), now);
            }
        }
        let mut pick = picks.iter().cycle();
        while queues.iter().any(|q| !q.is_empty()) {
            let open: Vec<usize> = (0..3).filter(|&q| !queues[q].is_empty()).collect();
            let q = open[pick.next().unwrap() % open.len()];
            let n = batch.min(queues[q].len());
            let records: Vec<_> = queues[q].drain(..n).collect();
            let input = Input::Topic(q as u16);
            task.receive(input, records, None, None, now, &mut tally);
            if queues[q].is_empty() {
                // Read to its end: nothing older can come.
                task.caught_up(input, now);
                task.drain(now, false, &mut tally);
            }
        }
        prop_assert_eq!(task.buffered(), 0);
        prop_assert_eq!((tally.late, tally.forced), (0, 0));
        task.shard_mut().flush();
        prop_assert_eq!(summary(&[task.shard()]), summary(&[&reference]));
    }
}

/// The same backlog with one watermark for the whole task (the layout before tasks): a
/// partition read ahead makes the others' events late, and the figures differ. This is the
/// fault the per-input watermark exists for.
#[test]
fn one_watermark_for_all_partitions_counts_a_backlog_late() {
    let cfg = Arc::new(config());
    let rules = Arc::new(Rules::from_toml(RULES).unwrap());
    let web: Vec<Event<'static>> = (0..60).map(|m| event(&(1, m * 10, 0, 0))).collect();
    let crm: Vec<Event<'static>> = (0..60).map(|m| event(&(2, m * 10, 2, 0))).collect();
    let mut single = Shard::new(cfg.clone(), rules.clone());
    let mut late_single = 0;
    for e in web.iter().chain(&crm) {
        late_single += single.apply(e).unwrap().late as u64;
    }
    let now = Instant::now();
    let idle = Idleness {
        topic: std::time::Duration::from_secs(10),
        push: std::time::Duration::from_secs(1),
    };
    let mut task = Task::new(0, Shard::new(cfg, rules), now, false, idle);
    task.add_input(Input::Topic(0), None, now);
    task.add_input(Input::Topic(1), None, now);
    let mut late_task = 0;
    for (input, part) in [(Input::Topic(0), &web), (Input::Topic(1), &crm)] {
        for e in part.iter() {
            late_task += task.apply(input, e, now).unwrap().late as u64;
        }
    }
    assert!(late_single > 50, "one watermark: {late_single} late");
    assert_eq!(late_task, 0);
}

/// Figures of `events` submitted as push input in batches of `batch` to a non-live runtime of
/// `tasks` tasks on 2 workers.
fn push_figures(events: &[Event<'static>], tasks: u32, batch: usize) -> Summary {
    let rc = journey_runtime::RuntimeConfig {
        workers: 2,
        tasks,
        live: false,
        ..journey_runtime::RuntimeConfig::default()
    };
    let rt = journey_runtime::Runtime::start(
        Arc::new(config()),
        Arc::new(Rules::from_toml(RULES).unwrap()),
        rc,
        Vec::new(),
    );
    let h = rt.handle();
    for chunk in events.chunks(batch) {
        h.submit_blocking(chunk.to_vec()).unwrap();
    }
    h.flush_blocking().unwrap();
    let parts = h.partials();
    let mut s = Summary::collect(
        parts.iter().map(|p| p.as_ref()),
        T0 - DAY,
        T0 + 30 * DAY,
        &Include::default(),
    );
    s.counters.customers_evicted = 0;
    rt.shutdown();
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// HTTP and file input are one stream shared by every task: whatever the disorder (even
    /// beyond the allowed lateness, so events are late), the figures do not depend on the task
    /// count or the batching, and equal one shard fed the stream in the same order.
    #[test]
    fn push_input_figures_do_not_depend_on_the_task_count(
        specs in prop::collection::vec((0u8..40, 0u16..(48 * 60), 0u8..5, 0u16..240), 1..300),
        batch in 1usize..100,
    ) {
        let events: Vec<Event<'static>> = specs.iter().map(event).collect();
        let mut shard = Shard::new(Arc::new(config()), Arc::new(Rules::from_toml(RULES).unwrap()));
        for e in &events {
            shard.apply(e).unwrap();
        }
        shard.flush();
        let want = summary(&[&shard]);
        for tasks in [1, 4, 13] {
            prop_assert_eq!(&push_figures(&events, tasks, batch), &want, "tasks = {}", tasks);
        }
    }
}
