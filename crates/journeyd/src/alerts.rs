//! The drop-off alert loop: evaluates `[alerts]` every `interval` over the workers' published
//! partials, keeps the board the API reads, sets the gauges and delivers changes.
//!
//! In a consumer group, only the instance owning task 0 evaluates and delivers, over the
//! whole group's partials (so Alertmanager and webhooks get one notification); a round in
//! which some partition's partials are missing is skipped rather than judged on part of the
//! traffic. An instance that stops leading forgets its alert states; the next leader starts
//! afresh (pending alerts restart their `for` period).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use journey_alert::notify::{Notifier, Targets};
use journey_alert::{tick, Board, Evaluator, Report, State};
use journey_api::cluster::Cluster;
use journey_api::Metrics;
use journey_runtime::RuntimeHandle;

use crate::config::AlertSettings;

/// Starts the loop; it ends once `stop` is set. With `cluster` (and the async runtime its
/// requests run on), it evaluates only while this instance owns task 0.
pub fn start(
    settings: &AlertSettings,
    generator_url: String,
    rt: RuntimeHandle,
    metrics: Arc<Metrics>,
    cluster: Option<(Arc<Cluster>, tokio::runtime::Handle)>,
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
    );
    let interval = settings.interval;
    let eval_cfg = settings.eval.clone();
    let published = board.clone();
    let thread = std::thread::Builder::new()
        .name("journeyd-alerts".into())
        .spawn(move || {
            let mut next = Instant::now();
            let mut leading = false;
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(50).min(interval));
                    continue;
                }
                next = Instant::now() + interval;
                let cfg = rt.engine_config().clone();
                let (parts, watermarks): (Vec<_>, Vec<journey_core::time::Millis>) = match &cluster {
                    None => (
                        rt.partials(),
                        rt.watermarks().into_iter().map(|(_, w)| w).collect(),
                    ),
                    Some((c, io)) => {
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
                            tracing::info!("this instance owns task 0: it evaluates the group's alerts");
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
    for (touchpoint, recent, baseline) in &report.rates {
        let state = report
            .alerts
            .iter()
            .find(|a| &a.touchpoint == touchpoint)
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
