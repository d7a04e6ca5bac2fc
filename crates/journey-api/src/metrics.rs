//! Prometheus metrics, declared once. No customer identifier is ever a label: labels are
//! sources, reasons, touchpoints and phases, all bounded by configuration.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use journey_core::query::{funnel, touchpoints, DurationStats, Include, Summary};
use journey_core::time::{Millis, HOUR};
use journey_runtime::RuntimeHandle;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Distinct `source` label values the ingest counters take; later ones count as
/// [`OTHER_SOURCE`], so that clients naming sources (`?source=`) cannot grow `/metrics`
/// without bound.
pub const MAX_SOURCE_LABELS: usize = 64;
/// The `source` label of sources beyond [`MAX_SOURCE_LABELS`].
pub const OTHER_SOURCE: &str = "other";

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The `source` label values handed out so far (see [`Metrics::source_label`]).
    source_labels: Mutex<std::collections::BTreeSet<String>>,
    pub ingest_events: IntCounterVec,
    pub ingest_rejected: IntCounterVec,
    applied: IntCounter,
    late: IntCounter,
    rejected_too_many: IntCounter,
    duplicates: IntCounter,
    merge_forced: IntCounter,
    /// Kafka records handed to their tasks and not yet applied, set by the Kafka source.
    pub kafka_unapplied: IntGauge,
    /// Kafka partitions paused because their task's merge buffer holds too many of their
    /// records (`kafka.max_buffered_records`), set by the Kafka source.
    pub kafka_paused_partitions: IntGauge,
    /// Times a Kafka partition was paused for that reason.
    pub kafka_partition_pauses: IntCounter,
    /// Kafka partitions assigned here that are behind and have not moved for
    /// `kafka.stall_timeout` (journey-kafka's `stall` module).
    pub kafka_stalled_partitions: IntGauge,
    /// Dead letters by sink and outcome (written, failed), set by the sink.
    pub dead_letters: IntCounterVec,
    /// Checkpoints by outcome (written, failed).
    pub checkpoints: IntCounterVec,
    /// Unix time of the last checkpoint written, in seconds.
    pub checkpoint_last_success: IntGauge,
    /// Size of the last checkpoint written.
    pub checkpoint_bytes: IntGauge,
    /// Checkpoint writes refused by the state store because another instance took the task
    /// over (fencing); each drops the task here.
    pub checkpoint_fenced: IntCounter,
    /// Tasks claimed and restored from the state store (or started empty there).
    pub task_restores: IntCounter,
    /// Seconds each task restore took (claim, read, decode).
    pub task_restore_seconds: Histogram,
    /// Tasks running on this instance, refreshed at each scrape.
    tasks_owned: IntGauge,
    /// Kafka rebalance callbacks, by event (assigned, revoked).
    pub rebalances: IntCounterVec,
    /// Records the repartitioner wrote to the internal topic, by outcome (written, failed:
    /// read again).
    pub repartitioned: IntCounterVec,
    /// Requests refused for a missing or wrong bearer token, by access kind.
    pub unauthorized: IntCounterVec,
    /// Requests to peers of the group (partials, forwarded calls), by outcome (ok, failed).
    pub peer_requests: IntCounterVec,
    latency_sum_us: IntCounter,
    latency_count: IntCounter,
    tp_visits: IntCounterVec,
    tp_sessions: IntCounterVec,
    tp_exits: IntCounterVec,
    tp_drop_offs: IntCounterVec,
    tp_completions: IntCounterVec,
    phase_reached: IntCounterVec,
    workers: IntGauge,
    /// Records behind the end of each assigned partition, set by the Kafka source.
    pub kafka_lag: IntGaugeVec,
    /// journeyd's own drop-off alerts per touchpoint: 0 inactive, 1 pending, 2 firing.
    pub alert_state: IntGaugeVec,
    /// Drop-off rate per touchpoint in the alert windows (`recent`, `baseline`).
    pub alert_rate: GaugeVec,
    /// journeyd's own conversion alerts per phase: 0 inactive, 1 pending, 2 firing.
    pub conversion_alert_state: IntGaugeVec,
    /// Conversion per phase in the alert windows (`recent`, `baseline`), as the conversion
    /// alerts compute it (`alerts.conversion`).
    pub conversion_rate: GaugeVec,
    /// Alert deliveries by target (alertmanager, webhook) and outcome (sent, failed).
    pub alert_notifications: IntCounterVec,
    /// Unix time of the end of the last evaluated window (event time).
    pub alert_evaluated: IntGauge,
    /// Dwell quantiles over the last hour, per touchpoint and per phase.
    tp_dwell: GaugeVec,
    phase_dwell: GaugeVec,
    /// Last cumulative value exported per series, so counters advance by the difference.
    seen: Mutex<HashMap<(usize, String), u64>>,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// The `source` label for ingest counters: `source` itself for the first
    /// [`MAX_SOURCE_LABELS`] distinct sources, [`OTHER_SOURCE`] after that.
    pub fn source_label<'a>(&self, source: &'a str) -> &'a str {
        let mut seen = self.source_labels.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(source) {
            return source;
        }
        if seen.len() < MAX_SOURCE_LABELS {
            seen.insert(source.to_string());
            return source;
        }
        OTHER_SOURCE
    }

    pub fn new() -> Metrics {
        let r = Registry::new();
        let workers = IntGauge::new(
            "journeyd_workers",
            "Worker threads, each running any number of tasks",
        )
        .expect("valid metric");
        r.register(Box::new(workers.clone()))
            .expect("registered once");
        let kafka_lag = IntGaugeVec::new(
            Opts::new(
                "journeyd_kafka_consumer_lag",
                "Records between the consumer group's committed offset and the end of the partition",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        r.register(Box::new(kafka_lag.clone()))
            .expect("registered once");
        let alert_state = IntGaugeVec::new(
            Opts::new(
                "journeyd_dropoff_alert_state",
                "journeyd's drop-off alert per touchpoint: 0 inactive or resolved, 1 pending, 2 firing",
            ),
            &["touchpoint"],
        )
        .expect("valid metric");
        r.register(Box::new(alert_state.clone()))
            .expect("registered once");
        let alert_rate = GaugeVec::new(
            Opts::new(
                "journeyd_dropoff_rate",
                "Drop-off rate per touchpoint in the alert windows (window: recent, baseline)",
            ),
            &["touchpoint", "window"],
        )
        .expect("valid metric");
        r.register(Box::new(alert_rate.clone()))
            .expect("registered once");
        let conversion_alert_state = IntGaugeVec::new(
            Opts::new(
                "journeyd_conversion_alert_state",
                "journeyd's conversion alert per phase: 0 inactive or resolved, 1 pending, 2 firing",
            ),
            &["phase"],
        )
        .expect("valid metric");
        r.register(Box::new(conversion_alert_state.clone()))
            .expect("registered once");
        let conversion_rate = GaugeVec::new(
            Opts::new(
                "journeyd_phase_conversion",
                "Conversion per phase in the alert windows (window: recent, baseline), over the \
                 journeys that reached phases in each window",
            ),
            &["phase", "window"],
        )
        .expect("valid metric");
        r.register(Box::new(conversion_rate.clone()))
            .expect("registered once");
        let dwell_gauge = |name: &str, help: &str, label: &str| {
            let g =
                GaugeVec::new(Opts::new(name, help), &[label, "quantile"]).expect("valid metric");
            r.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let tp_dwell = dwell_gauge(
            "journeyd_touchpoint_dwell_seconds",
            "Time from an event at the touchpoint to the session's next classified event, over \
             the last hour (event time); quantiles from a 1 % sketch",
            "touchpoint",
        );
        let phase_dwell = dwell_gauge(
            "journeyd_phase_dwell_seconds",
            "Time journeys spent in the phase before moving on, recorded over the last hour \
             (event time); quantiles from a 1 % sketch",
            "phase",
        );
        Metrics {
            source_labels: Mutex::new(std::collections::BTreeSet::new()),
            tp_dwell,
            phase_dwell,
            alert_state,
            alert_rate,
            conversion_alert_state,
            conversion_rate,
            alert_notifications: counter_vec(
                &r,
                "journeyd_alert_notifications_total",
                "Alert deliveries by target (alertmanager, webhook) and outcome (sent, failed)",
                &["target", "outcome"],
            ),
            alert_evaluated: gauge(
                &r,
                "journeyd_alert_evaluated_timestamp_seconds",
                "End of the window the alerts were last evaluated over (event time)",
            ),
            ingest_events: counter_vec(
                &r,
                "journeyd_ingest_events_total",
                "Records received, by source and outcome (accepted, rejected)",
                &["source", "outcome"],
            ),
            ingest_rejected: counter_vec(
                &r,
                "journeyd_ingest_rejected_total",
                "Records rejected, by source and reason",
                &["source", "reason"],
            ),
            applied: counter(
                &r,
                "journeyd_events_applied_total",
                "Events applied by the engine",
            ),
            late: counter(
                &r,
                "journeyd_events_late_total",
                "Events older than the watermark on arrival",
            ),
            rejected_too_many: counter(
                &r,
                "journeyd_events_rejected_too_many_events_total",
                "Events refused because their session already held session.max_events",
            ),
            duplicates: counter(
                &r,
                "journeyd_events_duplicate_total",
                "Events dropped because their event_id was already applied (dedup.horizon)",
            ),
            merge_forced: counter(
                &r,
                "journeyd_kafka_merge_forced_total",
                "Kafka records applied without waiting for a partition of their task that had lag and nothing buffered (kafka.max_task_idle passed, or 65536 records buffered)",
            ),
            kafka_unapplied: gauge(
                &r,
                "journeyd_kafka_unapplied_records",
                "Kafka records read and handed to their tasks but not applied yet: queued for a worker, or waiting in a task's merge buffer for a partition behind them in event time",
            ),
            kafka_paused_partitions: gauge(
                &r,
                "journeyd_kafka_paused_partitions",
                "Kafka partitions not fetched because more than their share of kafka.max_buffered_records of their records wait in their task (merge by event time)",
            ),
            kafka_partition_pauses: counter(
                &r,
                "journeyd_kafka_partition_pauses_total",
                "Times a Kafka partition was paused because more than its share of kafka.max_buffered_records of its records waited in its task",
            ),
            kafka_stalled_partitions: gauge(
                &r,
                "journeyd_kafka_stalled_partitions",
                "Kafka partitions assigned to this instance, not paused by it, with records past its position, whose position has not moved for kafka.stall_timeout",
            ),
            dead_letters: counter_vec(
                &r,
                "journeyd_dead_letters_total",
                "Rejected records handed to the dead-letter sink, by sink and outcome (written, failed)",
                &["sink", "outcome"],
            ),
            checkpoints: counter_vec(
                &r,
                "journeyd_checkpoints_total",
                "Checkpoints attempted, by outcome (written, failed)",
                &["outcome"],
            ),
            checkpoint_last_success: gauge(
                &r,
                "journeyd_checkpoint_last_success_timestamp_seconds",
                "Unix time of the last checkpoint written",
            ),
            checkpoint_bytes: gauge(
                &r,
                "journeyd_checkpoint_bytes",
                "Size of the last checkpoint written",
            ),
            checkpoint_fenced: counter(
                &r,
                "journeyd_checkpoint_fenced_total",
                "Task checkpoint writes refused because another instance took the task over",
            ),
            task_restores: counter(
                &r,
                "journeyd_task_restores_total",
                "Tasks claimed and restored from the state store",
            ),
            task_restore_seconds: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "journeyd_task_restore_seconds",
                        "Time to claim, read and decode one task from the state store",
                    )
                    .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                )
                .expect("valid metric");
                r.register(Box::new(h.clone())).expect("registered once");
                h
            },
            tasks_owned: gauge(
                &r,
                "journeyd_tasks_owned",
                "Tasks (partition indexes) running on this instance",
            ),
            rebalances: counter_vec(
                &r,
                "journeyd_rebalances_total",
                "Kafka consumer-group rebalance callbacks, by event (assigned, revoked)",
                &["event"],
            ),
            repartitioned: counter_vec(
                &r,
                "journeyd_repartitioned_records_total",
                "Records written to the internal repartition topic, by outcome (written, failed)",
                &["outcome"],
            ),
            unauthorized: counter_vec(
                &r,
                "journeyd_http_unauthorized_total",
                "Requests refused for a missing or wrong bearer token, by access kind",
                &["access"],
            ),
            peer_requests: counter_vec(
                &r,
                "journeyd_peer_requests_total",
                "Requests to other instances of the group (partials, forwarded calls), by outcome (ok, failed)",
                &["outcome"],
            ),
            latency_sum_us: counter(
                &r,
                "journeyd_processing_latency_microseconds_sum",
                "Time from submission to applied, summed over batches",
            ),
            latency_count: counter(
                &r,
                "journeyd_processing_latency_microseconds_count",
                "Batches applied",
            ),
            tp_visits: counter_vec(
                &r,
                "journeyd_touchpoint_visits_total",
                "Events classified as the touchpoint",
                &["touchpoint"],
            ),
            tp_sessions: counter_vec(
                &r,
                "journeyd_touchpoint_sessions_total",
                "Closed sessions that touched the touchpoint",
                &["touchpoint"],
            ),
            tp_exits: counter_vec(
                &r,
                "journeyd_touchpoint_exits_total",
                "Closed sessions whose last classified event was the touchpoint",
                &["touchpoint"],
            ),
            tp_drop_offs: counter_vec(
                &r,
                "journeyd_touchpoint_drop_offs_total",
                "Exits of sessions without a goal touchpoint",
                &["touchpoint"],
            ),
            tp_completions: counter_vec(
                &r,
                "journeyd_touchpoint_completions_total",
                "Closed sessions that reached this goal touchpoint",
                &["touchpoint"],
            ),
            phase_reached: counter_vec(
                &r,
                "journeyd_phase_reached_total",
                "Journeys that reached the phase or a later one",
                &["phase"],
            ),
            workers,
            kafka_lag,
            registry: r,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Brings engine counters and the last hour's dwell quantiles (up to `now`) up to date
    /// from the runtime, then renders the text format.
    pub fn render(&self, rt: &RuntimeHandle, now: Millis) -> String {
        self.refresh(rt);
        self.refresh_dwell(rt, now);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding never fails");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    fn refresh_dwell(&self, rt: &RuntimeHandle, now: Millis) {
        let parts = rt.partials();
        let sum = Summary::collect(
            parts.iter().map(|p| p.as_ref()),
            now - HOUR,
            now,
            &Include::default(),
        );
        let rules = rt.rules();
        let set = |g: &GaugeVec, name: &str, d: &DurationStats| {
            for (q, v) in [("0.5", d.p50_ms), ("0.9", d.p90_ms), ("0.99", d.p99_ms)] {
                let g = g.with_label_values(&[name, q]);
                // No dwell in the hour: NaN, so a panel shows a gap rather than a stale value.
                g.set(v.map_or(f64::NAN, |ms| ms / 1000.0));
            }
        };
        for t in touchpoints(&sum, &rules) {
            set(&self.tp_dwell, &t.name, &t.dwell);
        }
        for step in funnel(&sum, rules.phases(), None, 1).steps {
            if let Some(d) = &step.dwell {
                set(&self.phase_dwell, &step.phase, d);
            }
        }
    }

    fn refresh(&self, rt: &RuntimeHandle) {
        self.tasks_owned.set(rt.owned_tasks().len() as i64);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut advance = |slot: usize, label: &str, total: u64, c: &IntCounter| {
            let last = seen.entry((slot, label.to_string())).or_insert(0);
            if total > *last {
                c.inc_by(total - *last);
                *last = total;
            }
        };
        let s = rt.stats();
        advance(0, "", s.applied.load(Ordering::Relaxed), &self.applied);
        advance(1, "", s.late.load(Ordering::Relaxed), &self.late);
        advance(
            2,
            "",
            s.rejected_too_many_events.load(Ordering::Relaxed),
            &self.rejected_too_many,
        );
        advance(
            5,
            "",
            s.duplicates.load(Ordering::Relaxed),
            &self.duplicates,
        );
        advance(
            6,
            "",
            s.merge_forced.load(Ordering::Relaxed),
            &self.merge_forced,
        );
        advance(
            3,
            "",
            s.latency_us_sum.load(Ordering::Relaxed),
            &self.latency_sum_us,
        );
        advance(
            4,
            "",
            s.latency_count.load(Ordering::Relaxed),
            &self.latency_count,
        );
        self.workers.set(rt.workers() as i64);

        let mut tps: HashMap<String, [u64; 5]> = HashMap::new();
        let mut phases: HashMap<String, u64> = HashMap::new();
        for p in rt.partials() {
            for (id, t) in p.totals.touchpoints.iter().enumerate() {
                let row = tps
                    .entry(p.touchpoints.name(id as u16).to_string())
                    .or_default();
                for (k, v) in [t.visits, t.sessions, t.exits, t.drop_offs, t.completions]
                    .into_iter()
                    .enumerate()
                {
                    row[k] += v;
                }
            }
            for (id, n) in p.totals.phase_reached.iter().enumerate() {
                *phases
                    .entry(p.phases.name(id as u16).to_string())
                    .or_default() += n;
            }
        }
        let vecs = [
            &self.tp_visits,
            &self.tp_sessions,
            &self.tp_exits,
            &self.tp_drop_offs,
            &self.tp_completions,
        ];
        for (name, row) in &tps {
            for (k, v) in vecs.iter().enumerate() {
                advance(10 + k, name, row[k], &v.with_label_values(&[name.as_str()]));
            }
        }
        for (name, n) in &phases {
            advance(
                20,
                name,
                *n,
                &self.phase_reached.with_label_values(&[name.as_str()]),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_labels_are_bounded() {
        let m = Metrics::new();
        let names: Vec<String> = (0..MAX_SOURCE_LABELS + 10)
            .map(|i| format!("s{i}"))
            .collect();
        let labels: Vec<&str> = names.iter().map(|n| m.source_label(n)).collect();
        assert_eq!(labels[..MAX_SOURCE_LABELS], names[..MAX_SOURCE_LABELS]);
        assert!(labels[MAX_SOURCE_LABELS..]
            .iter()
            .all(|l| *l == OTHER_SOURCE));
        // A source seen before the cap keeps its own label.
        assert_eq!(m.source_label("s3"), "s3");
    }
}
