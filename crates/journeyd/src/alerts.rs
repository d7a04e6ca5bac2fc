//! The drop-off alert loop: evaluates `[alerts]` every `interval` over the workers' published
//! partials, keeps the board the API reads, sets the gauges and delivers changes.
//!
//! In a consumer group, only the instance owning task 0 evaluates and delivers, over the
//! whole group's partials (so Alertmanager and webhooks get one notification); a round in
//! which some partition's partials are missing is skipped rather than judged on part of the
//! traffic. The leader keeps its alert states in the state store ([`STATE_PATH`]) whenever
//! they change; the next leader continues from them, so a task move neither restarts a
//! pending alert's `for` period nor lets a firing alert lapse and fire again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use journey_alert::notify::{Notifier, Targets};
use journey_alert::{tick, Board, Evaluator, Kind, Report, State};
use journey_api::cluster::Cluster;
use journey_api::Metrics;
use journey_runtime::RuntimeHandle;
use journey_state::StateStore;

use crate::config::AlertSettings;

/// Where the group's alert leader keeps its alert states (JSON, [`journey_alert::Alert`]s), in
/// the state store.
pub const STATE_PATH: &str = "alerts/states.json";

/// The alert states the previous leader left, if readable; a damaged or unreadable object is
/// logged and ignored (the alerts then start afresh).
fn load_states(store: &StateStore) -> Vec<journey_alert::Alert> {
    match store.get(STATE_PATH) {
        Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
            Ok(alerts) => alerts,
            Err(e) => {
                tracing::warn!(path = STATE_PATH, "ignoring unreadable alert states: {e}");
                Vec::new()
            }
        },
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::warn!(
                path = STATE_PATH,
                "cannot read the alert states, starting afresh: {e}"
            );
            Vec::new()
        }
    }
}

fn save_states(store: &StateStore, alerts: &[journey_alert::Alert]) {
    let written = serde_json::to_vec(alerts)
        .map_err(|e| e.to_string())
        .and_then(|bytes| store.put(STATE_PATH, bytes).map_err(|e| e.to_string()));
    if let Err(e) = written {
        tracing::warn!(
            path = STATE_PATH,
            "cannot keep the alert states for the next leader: {e}"
        );
    }
}

/// The group an instance evaluates alerts for: peers to gather partials from (on the async
/// runtime their requests run on) and the state store the leaders hand alert states over in.
pub struct Group {
    pub cluster: Arc<Cluster>,
    pub io: tokio::runtime::Handle,
    pub store: StateStore,
}

/// Starts the loop; it ends once `stop` is set. In a `group`, it evaluates only while this
/// instance owns task 0.
pub fn start(
    settings: &AlertSettings,
    generator_url: String,
    rt: RuntimeHandle,
    metrics: Arc<Metrics>,
    group: Option<Group>,
    stop: &'static AtomicBool,
) -> std::io::Result<(Board, JoinHandle<()>)> {
    let board = Board::new(settings.eval.clone());
    let mut ev = Evaluator::new(settings.eval.clone());
    let mut notifier = Notifier::new(
        Targets {
            alertmanager: settings.alertmanager_url.clone(),
            webhook: settings.webhook_url.clone(),
            generator_url,
        },
        settings.resend,
    )
    .with_segment(settings.eval.segment.as_ref());
    let interval = settings.interval;
    let eval_cfg = settings.eval.clone();
    let published = board.clone();
    let thread = std::thread::Builder::new()
        .name("journeyd-alerts".into())
        .spawn(move || {
            let mut next = Instant::now();
            let mut leading = false;
            let mut saved: Vec<journey_alert::Alert> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(50).min(interval));
                    continue;
                }
                next = Instant::now() + interval;
                let cfg = rt.engine_config().clone();
                let (parts, watermarks): (Vec<_>, Vec<journey_core::time::Millis>) = match &group {
                    None => (
                        rt.partials(),
                        rt.watermarks().into_iter().map(|(_, w)| w).collect(),
                    ),
                    Some(Group { cluster: c, io, store }) => {
                        if !rt.owns(0) {
                            if leading {
                                tracing::info!("task 0 moved: another instance evaluates the alerts");
                                leading = false;
                                ev = Evaluator::new(eval_cfg.clone());
                                published.publish(Report::default());
                            }
                            continue;
                        }
                        if !leading {
                            saved = load_states(store);
                            tracing::info!(continued = saved.len(), "this instance owns task 0: it evaluates the group's alerts");
                            ev = Evaluator::resume(eval_cfg.clone(), saved.clone());
                            leading = true;
                        }
                        let count = |ok: bool| {
                            let outcome = if ok { "ok" } else { "failed" };
                            metrics.peer_requests.with_label_values(&[outcome]).inc();
                        };
                        let g = io.block_on(c.gather(&rt, crate::now_ms(), &count));
                        if !g.missing.is_empty() {
                            tracing::warn!(missing = ?g.missing, "alerts not evaluated this round: partitions missing");
                            continue;
                        }
                        let watermarks = g.partials.iter().map(|(_, w, _)| *w).collect();
                        (g.partials.into_iter().map(|(_, _, a)| a).collect(), watermarks)
                    }
                };
                let Some(changes) = tick(
                    &mut ev,
                    &published,
                    &parts,
                    &rt.rules(),
                    &watermarks,
                    cfg.session_gap,
                ) else {
                    continue;
                };
                let report = published.report();
                if let Some(g) = &group {
                    if report.alerts != saved {
                        save_states(&g.store, &report.alerts);
                        saved = report.alerts.clone();
                    }
                }
                update_gauges(&metrics, &report);
                for c in &changes {
                    tracing::info!(
                        touchpoint = c.alert.touchpoint,
                        from = c.from.map_or("inactive", State::as_str),
                        to = c.alert.state.as_str(),
                        "{}",
                        c.alert.summary
                    );
                }
                for d in notifier.deliver(&changes, &report.alerts) {
                    let outcome = if d.ok { "sent" } else { "failed" };
                    metrics
                        .alert_notifications
                        .with_label_values(&[d.target, outcome])
                        .inc();
                }
            }
        })?;
    Ok((board, thread))
}

fn update_gauges(metrics: &Metrics, report: &journey_alert::Report) {
    if let Some(t) = report.evaluated_at {
        metrics.alert_evaluated.set(t / 1000);
    }
    let state_of = |kind: Kind, name: &str| {
        report
            .alerts
            .iter()
            .find(|a| a.kind == kind && a.touchpoint == name)
            .map_or(0, |a| match a.state {
                State::Pending => 1,
                State::Firing => 2,
                State::Resolved => 0,
            })
    };
    for (phase, recent, baseline) in &report.conversions {
        let p = phase.as_str();
        metrics
            .conversion_alert_state
            .with_label_values(&[p])
            .set(state_of(Kind::Conversion, p));
        metrics
            .conversion_rate
            .with_label_values(&[p, "recent"])
            .set(*recent);
        metrics
            .conversion_rate
            .with_label_values(&[p, "baseline"])
            .set(*baseline);
    }
    for (touchpoint, recent, baseline) in &report.rates {
        let state = report
            .alerts
            .iter()
            .find(|a| a.kind == Kind::DropOff && &a.touchpoint == touchpoint)
            .map_or(0, |a| match a.state {
                State::Pending => 1,
                State::Firing => 2,
                State::Resolved => 0,
            });
        metrics
            .alert_state
            .with_label_values(&[touchpoint.as_str()])
            .set(state);
        metrics
            .alert_rate
            .with_label_values(&[touchpoint.as_str(), "recent"])
            .set(*recent);
        metrics
            .alert_rate
            .with_label_values(&[touchpoint.as_str(), "baseline"])
            .set(*baseline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use journey_alert::{Alert, State};

    fn alert(touchpoint: &str, state: State) -> Alert {
        Alert {
            kind: journey_alert::Kind::DropOff,
            touchpoint: touchpoint.into(),
            phase: Some("decision".into()),
            state,
            drop_off_rate: 0.4,
            baseline_rate: 0.1,
            sessions: 120,
            baseline_sessions: 100,
            active_since: 1_795_000_000_000,
            fired_at: (state == State::Firing).then_some(1_795_000_300_000),
            resolved_at: None,
            summary: "drop-off at cart rose".into(),
        }
    }

    #[test]
    fn gauges_show_each_kind_under_its_own_metric() {
        let metrics = Metrics::new();
        let conversion = Alert {
            kind: Kind::Conversion,
            touchpoint: "decision".into(),
            ..alert("decision", State::Firing)
        };
        let report = Report {
            evaluated_at: Some(1_795_000_000_000),
            alerts: vec![alert("cart", State::Pending), conversion],
            rates: vec![("cart".into(), 0.4, 0.1), ("decision".into(), 0.2, 0.2)],
            conversions: vec![("decision".into(), 0.3, 0.6)],
        };
        update_gauges(&metrics, &report);
        let state = |g: &prometheus::IntGaugeVec, l: &str| g.with_label_values(&[l]).get();
        assert_eq!(state(&metrics.alert_state, "cart"), 1);
        // A touchpoint named like the firing phase: its drop-off alert is not that one.
        assert_eq!(state(&metrics.alert_state, "decision"), 0);
        assert_eq!(state(&metrics.conversion_alert_state, "decision"), 2);
        let rate = |w: &str| {
            metrics
                .conversion_rate
                .with_label_values(&["decision", w])
                .get()
        };
        assert_eq!((rate("recent"), rate("baseline")), (0.3, 0.6));
    }

    #[test]
    fn the_next_leader_reads_the_states_the_last_one_kept() {
        let store = StateStore::in_memory().unwrap();
        assert!(load_states(&store).is_empty(), "nothing kept yet");
        let kept = vec![alert("cart", State::Firing), alert("blog", State::Pending)];
        save_states(&store, &kept);
        assert_eq!(load_states(&store), kept);
        // A damaged object is ignored: the alerts start afresh rather than not at all.
        store.put(STATE_PATH, b"{not json".to_vec()).unwrap();
        assert!(load_states(&store).is_empty());
    }
}
