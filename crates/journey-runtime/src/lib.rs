//! journey-runtime: worker threads that own shards.
//!
//! Each worker thread owns one [`Shard`] outright, so the hot path takes no lock. Events reach
//! a worker through a bounded channel (routing by a stable hash of the customer id), which
//! gives backpressure: producers wait when a worker falls behind. Workers publish their
//! partial aggregates for readers at a fixed interval, so queries never block ingest, and in
//! live mode they let the watermark follow the wall clock so sessions close while traffic
//! pauses. This crate reads the clock; `journey-core` never does.

pub mod checkpoint;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use journey_core::agg::Aggregates;
use journey_core::time::Millis;
use journey_core::{ApplyError, CustomerView, EngineConfig, Event, Rules, Shard};

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
    /// Batches queued per worker before producers wait.
    pub channel_capacity: usize,
    pub publish_interval: Duration,
    pub tick_interval: Duration,
    /// Live mode: while a worker receives no events, its watermark advances with the wall
    /// clock, so sessions close when traffic pauses. Off for replays.
    pub live: bool,
    pub on_reject: Option<RejectHook>,
    /// Nice value of the worker threads (0: unchanged). Above 0, the scheduler prefers the
    /// threads answering queries over the workers whenever both want a core, which is what
    /// keeps query latency low while ingest saturates the machine.
    pub worker_nice: i32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            channel_capacity: 64,
            publish_interval: Duration::from_secs(1),
            tick_interval: Duration::from_secs(1),
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

/// Counters the workers keep for metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub applied: AtomicU64,
    pub late: AtomicU64,
    pub rejected_too_many_events: AtomicU64,
    pub duplicates: AtomicU64,
    /// Sum and count of the time from submission to applied, in microseconds.
    pub latency_us_sum: AtomicU64,
    pub latency_count: AtomicU64,
}

enum Msg {
    /// Events, when they were submitted, and who to tell once they are applied.
    Events(Vec<Event<'static>>, Instant, Option<flume::Sender<()>>),
    Rules(Arc<Rules>),
    Customer(String, flume::Sender<Option<CustomerView>>),
    /// Apply everything queued before, publish, acknowledge.
    Sync(flume::Sender<()>),
    /// Apply everything queued before and reply with the shard's snapshot.
    Snapshot(flume::Sender<Vec<u8>>),
    /// End of input: close every session, publish, acknowledge.
    Flush(flume::Sender<()>),
    /// Publish and exit; handles still around get [`Stopped`] from then on.
    Stop,
}

/// What workers write and readers read. Workers never hold the senders, so dropping the
/// last handle disconnects the channels and lets them finish.
struct Shared {
    published: Vec<RwLock<Arc<Aggregates>>>,
    stats: Stats,
}

struct Inner {
    senders: Vec<flume::Sender<Msg>>,
    shared: Arc<Shared>,
    rules: RwLock<Arc<Rules>>,
    cfg: Arc<EngineConfig>,
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

/// The worker that owns a customer: a stable FNV-1a hash, so ownership survives restarts.
pub fn worker_for(customer_id: &str, workers: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in customer_id.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % workers.max(1) as u64) as usize
}

impl Runtime {
    /// Starts `rc.workers` worker threads, each owning an empty shard.
    pub fn start(cfg: Arc<EngineConfig>, rules: Arc<Rules>, rc: RuntimeConfig) -> Runtime {
        let shards = (0..rc.workers.max(1))
            .map(|_| Shard::new(cfg.clone(), rules.clone()))
            .collect();
        Runtime::start_with(shards, cfg, rules, rc)
    }

    /// Starts one worker per given shard (for restored state).
    pub fn start_with(
        shards: Vec<Shard>,
        cfg: Arc<EngineConfig>,
        rules: Arc<Rules>,
        rc: RuntimeConfig,
    ) -> Runtime {
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        let mut published = Vec::new();
        for shard in &shards {
            let (tx, rx) = flume::bounded(rc.channel_capacity.max(1));
            senders.push(tx);
            receivers.push(rx);
            published.push(RwLock::new(Arc::new(shard.aggregates().clone())));
        }
        let shared = Arc::new(Shared {
            published,
            stats: Stats::default(),
        });
        let inner = Arc::new(Inner {
            senders,
            shared: shared.clone(),
            rules: RwLock::new(rules),
            cfg,
        });
        let threads = shards
            .into_iter()
            .zip(receivers)
            .enumerate()
            .map(|(i, (shard, rx))| {
                let shared = shared.clone();
                let rc = rc.clone();
                std::thread::Builder::new()
                    .name(format!("journeyd-worker-{i}"))
                    .spawn(move || worker(i, shard, rx, shared, rc))
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

fn worker(
    i: usize,
    mut shard: Shard,
    rx: flume::Receiver<Msg>,
    shared: Arc<Shared>,
    rc: RuntimeConfig,
) {
    if let Err(e) = set_thread_nice(rc.worker_nice) {
        tracing::warn!(
            worker = i,
            nice = rc.worker_nice,
            "cannot set the worker's nice value: {e}"
        );
    }
    let publish = |shard: &Shard| {
        let snapshot = Arc::new(shard.aggregates().clone());
        *shared.published[i]
            .write()
            .unwrap_or_else(|p| p.into_inner()) = snapshot;
    };
    let stats = &shared.stats;
    let mut dirty = false;
    let mut last_event = Instant::now();
    let mut next_publish = Instant::now() + rc.publish_interval;
    let mut next_tick = Instant::now() + rc.tick_interval;
    loop {
        let now = Instant::now();
        let wake = if rc.live {
            next_publish.min(next_tick)
        } else {
            next_publish
        };
        match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(Msg::Events(batch, submitted, ack)) => {
                let (mut applied, mut late, mut rejected, mut duplicates) = (0, 0, 0, 0);
                for e in &batch {
                    match shard.apply(e) {
                        Ok(a) => {
                            applied += 1;
                            late += a.late as u64;
                        }
                        Err(ApplyError::Duplicate { .. }) => duplicates += 1,
                        Err(err) => {
                            rejected += 1;
                            if let Some(hook) = &rc.on_reject {
                                (hook.0)(e, &err);
                            }
                        }
                    }
                }
                stats.duplicates.fetch_add(duplicates, Ordering::Relaxed);
                stats.applied.fetch_add(applied, Ordering::Relaxed);
                stats.late.fetch_add(late, Ordering::Relaxed);
                stats
                    .rejected_too_many_events
                    .fetch_add(rejected, Ordering::Relaxed);
                stats
                    .latency_us_sum
                    .fetch_add(submitted.elapsed().as_micros() as u64, Ordering::Relaxed);
                stats.latency_count.fetch_add(1, Ordering::Relaxed);
                if let Some(ack) = ack {
                    let _ = ack.send(());
                }
                last_event = Instant::now();
                dirty = true;
            }
            Ok(Msg::Rules(rules)) => shard.set_rules(rules),
            Ok(Msg::Customer(id, reply)) => {
                let _ = reply.send(shard.customer(&id));
            }
            Ok(Msg::Sync(reply)) => {
                publish(&shard);
                dirty = false;
                let _ = reply.send(());
            }
            Ok(Msg::Snapshot(reply)) => {
                let _ = reply.send(shard.snapshot());
            }
            Ok(Msg::Flush(reply)) => {
                shard.flush();
                publish(&shard);
                dirty = false;
                let _ = reply.send(());
            }
            Ok(Msg::Stop) | Err(flume::RecvTimeoutError::Disconnected) => break,
            Err(flume::RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        if rc.live && now >= next_tick {
            // Event time is taken to run with the wall clock only while no events arrive, so a
            // backlog being caught up is not declared late, and a pause still closes sessions.
            let idle = now.duration_since(last_event);
            if let (Some(max), true) = (shard.aggregates().max_event_time, idle >= rc.tick_interval)
            {
                shard.advance_clock(max.saturating_add(idle.as_millis() as Millis));
                dirty = true;
            }
            next_tick = now + rc.tick_interval;
        }
        if now >= next_publish {
            if dirty {
                publish(&shard);
                dirty = false;
            }
            next_publish = now + rc.publish_interval;
        }
    }
    publish(&shard);
}

impl RuntimeHandle {
    pub fn workers(&self) -> usize {
        self.inner.senders.len()
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

    /// The latest published partial aggregates, one per worker.
    pub fn partials(&self) -> Vec<Arc<Aggregates>> {
        self.inner
            .shared
            .published
            .iter()
            .map(|p| p.read().unwrap_or_else(|p| p.into_inner()).clone())
            .collect()
    }

    fn split(&self, events: Vec<Event<'static>>) -> Vec<Vec<Event<'static>>> {
        let n = self.workers();
        let mut parts: Vec<Vec<Event<'static>>> = (0..n).map(|_| Vec::new()).collect();
        for e in events {
            parts[worker_for(&e.customer_id, n)].push(e);
        }
        parts
    }

    /// Queues events, waiting while a worker's queue is full.
    pub async fn submit(&self, events: Vec<Event<'static>>) -> Result<(), Stopped> {
        let now = Instant::now();
        for (i, part) in self.split(events).into_iter().enumerate() {
            if !part.is_empty() {
                self.inner.senders[i]
                    .send_async(Msg::Events(part, now, None))
                    .await
                    .map_err(|_| Stopped)?;
            }
        }
        Ok(())
    }

    /// Blocking [`RuntimeHandle::submit`], for threads outside an async runtime.
    pub fn submit_blocking(&self, events: Vec<Event<'static>>) -> Result<(), Stopped> {
        let now = Instant::now();
        for (i, part) in self.split(events).into_iter().enumerate() {
            if !part.is_empty() {
                self.inner.senders[i]
                    .send(Msg::Events(part, now, None))
                    .map_err(|_| Stopped)?;
            }
        }
        Ok(())
    }

    /// Queues events, waiting while a queue is full, and returns one receiver per worker
    /// involved that yields once that worker has applied its part. Sources that must not
    /// acknowledge input before it is applied (Kafka offsets) wait on these.
    pub fn submit_acked_blocking(
        &self,
        events: Vec<Event<'static>>,
    ) -> Result<Vec<flume::Receiver<()>>, Stopped> {
        let now = Instant::now();
        let mut acks = Vec::new();
        for (i, part) in self.split(events).into_iter().enumerate() {
            if !part.is_empty() {
                let (tx, rx) = flume::bounded(1);
                self.inner.senders[i]
                    .send(Msg::Events(part, now, Some(tx)))
                    .map_err(|_| Stopped)?;
                acks.push(rx);
            }
        }
        Ok(acks)
    }

    /// Swaps the rules: events queued before keep the old ones, events after get the new.
    pub async fn set_rules(&self, rules: Arc<Rules>) -> Result<(), Stopped> {
        *self.inner.rules.write().unwrap_or_else(|p| p.into_inner()) = rules.clone();
        for s in &self.inner.senders {
            s.send_async(Msg::Rules(rules.clone()))
                .await
                .map_err(|_| Stopped)?;
        }
        Ok(())
    }

    /// One customer's live journey, from the worker that owns it.
    pub async fn customer(&self, id: &str) -> Result<Option<CustomerView>, Stopped> {
        let (tx, rx) = flume::bounded(1);
        let w = worker_for(id, self.workers());
        self.inner.senders[w]
            .send_async(Msg::Customer(id.to_string(), tx))
            .await
            .map_err(|_| Stopped)?;
        rx.recv_async().await.map_err(|_| Stopped)
    }

    /// Waits until everything submitted before is applied and published.
    pub async fn sync(&self) -> Result<(), Stopped> {
        self.ack_all(Msg::Sync).await
    }

    /// End of input: closes every session in every worker and publishes the result.
    pub async fn flush(&self) -> Result<(), Stopped> {
        self.ack_all(Msg::Flush).await
    }

    /// Every shard's snapshot, in worker order, taken once each worker has applied everything
    /// queued before this call. Events submitted before it by the calling thread are all in it,
    /// and none submitted after: the consistent cut a checkpoint needs.
    pub fn snapshot_blocking(&self) -> Result<Vec<Vec<u8>>, Stopped> {
        let mut waits = Vec::new();
        for s in &self.inner.senders {
            let (tx, rx) = flume::bounded(1);
            s.send(Msg::Snapshot(tx)).map_err(|_| Stopped)?;
            waits.push(rx);
        }
        waits
            .into_iter()
            .map(|rx| rx.recv().map_err(|_| Stopped))
            .collect()
    }

    /// Blocking [`RuntimeHandle::flush`].
    pub fn flush_blocking(&self) -> Result<(), Stopped> {
        let mut waits = Vec::new();
        for s in &self.inner.senders {
            let (tx, rx) = flume::bounded(1);
            s.send(Msg::Flush(tx)).map_err(|_| Stopped)?;
            waits.push(rx);
        }
        for rx in waits {
            rx.recv().map_err(|_| Stopped)?;
        }
        Ok(())
    }

    async fn ack_all(&self, make: fn(flume::Sender<()>) -> Msg) -> Result<(), Stopped> {
        let mut waits = Vec::new();
        for s in &self.inner.senders {
            let (tx, rx) = flume::bounded(1);
            s.send_async(make(tx)).await.map_err(|_| Stopped)?;
            waits.push(rx);
        }
        for rx in waits {
            rx.recv_async().await.map_err(|_| Stopped)?;
        }
        Ok(())
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

    fn start(workers: usize) -> Runtime {
        let rc = RuntimeConfig {
            workers,
            live: false,
            ..RuntimeConfig::default()
        };
        Runtime::start(
            Arc::new(EngineConfig::default()),
            Arc::new(Rules::from_toml(RULES).unwrap()),
            rc,
        )
    }

    #[test]
    fn routing_is_stable_and_spreads() {
        assert_eq!(worker_for("customer-42", 4), worker_for("customer-42", 4));
        let mut counts = [0; 4];
        for i in 0..1000 {
            counts[worker_for(&format!("c{i}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&n| n > 150), "{counts:?}");
    }

    #[test]
    fn workers_apply_and_publish_merged_results() {
        let rt = start(3);
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
        let parts = h.partials();
        assert_eq!(parts.len(), 3);
        // Ranges select whole buckets by their start: begin at the hour.
        let from = t / 3_600_000 * 3_600_000;
        let s = Summary::collect(
            parts.iter().map(|p| p.as_ref()),
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

    #[test]
    fn customer_queries_reach_the_owning_worker() {
        let rt = start(2);
        let h = rt.handle();
        h.submit_blocking(vec![ev(7, 1_795_000_000_000, "page_view")])
            .unwrap();
        let rtm = tokio_free_block_on(h.customer("c7")).unwrap();
        assert_eq!(rtm.unwrap().journeys.len(), 1);
        assert!(tokio_free_block_on(h.customer("nobody")).unwrap().is_none());
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
    fn tokio_free_block_on<F: std::future::Future>(f: F) -> F::Output {
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
