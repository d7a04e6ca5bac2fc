//! Pushes alert changes to Alertmanager's API (`POST /api/v2/alerts`) and to a generic
//! webhook (Alertmanager's webhook payload, plus journeyd's own fields).
//!
//! Alertmanager ends an alert whose `endsAt` has passed, so firing alerts are re-sent every
//! `resend` with an `endsAt` well beyond it, and resolved ones once with `endsAt` = now. Its
//! timestamps are wall-clock; event times travel as annotations. Webhook deliveries that fail
//! are retried on the next calls, a bounded number of times.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use journey_core::query::SegmentFilter;
use journey_core::time::Millis;
use serde_json::{json, Value};

use crate::{Alert, Change, Kind, State};

/// Where alerts go.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// Alertmanager's base URL, e.g. `http://alertmanager:9093`.
    pub alertmanager: Option<String>,
    pub webhook: Option<String>,
    /// Link back to journeyd in each alert, e.g. `http://journeyd:8080/`.
    pub generator_url: String,
}

/// The outcome of one delivery, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub target: &'static str,
    pub ok: bool,
}

const WEBHOOK_TRIES: u32 = 5;
const WEBHOOK_QUEUE: usize = 1_000;

#[derive(Debug)]
pub struct Notifier {
    agent: ureq::Agent,
    targets: Targets,
    resend: Duration,
    last_sent: Option<Instant>,
    /// Webhook payloads not yet delivered, with the tries left.
    retry: VecDeque<(Value, u32)>,
    /// The `segment` label: the scope of the alerts (`alerts.segment`), if any.
    segment: Option<String>,
}

fn wall_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

fn iso(t: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(t).map_or_else(
        || t.to_string(),
        |d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// The alert name, as the Prometheus rules of `deploy/prometheus/` call the same alert.
fn alertname(a: &Alert) -> &'static str {
    match a.kind {
        Kind::DropOff => "JourneyDropOffRising",
        Kind::Conversion => "JourneyConversionFalling",
    }
}

/// An alert's labels; `segment`: the `alerts.segment` scope (`DIM:VALUE`), if any.
fn labels(a: &Alert, segment: Option<&str>) -> Value {
    let mut l = json!({
        "alertname": alertname(a),
        "severity": "warning",
        "source": "journeyd",
    });
    if let Some(s) = segment {
        l["segment"] = json!(s);
    }
    if a.kind == Kind::DropOff {
        l["touchpoint"] = json!(a.touchpoint);
    }
    if let Some(p) = &a.phase {
        l["phase"] = json!(p);
    }
    l
}

fn annotations(a: &Alert) -> Value {
    match a.kind {
        Kind::DropOff => json!({
            "summary": a.summary,
            "drop_off_rate": format!("{:.4}", a.drop_off_rate),
            "baseline_rate": format!("{:.4}", a.baseline_rate),
            "sessions": a.sessions.to_string(),
            "active_since": iso(a.active_since),
        }),
        Kind::Conversion => json!({
            "summary": a.summary,
            "conversion": format!("{:.4}", 1.0 - a.drop_off_rate),
            "baseline_conversion": format!("{:.4}", 1.0 - a.baseline_rate),
            "journeys": a.sessions.to_string(),
            "active_since": iso(a.active_since),
        }),
    }
}

impl Notifier {
    /// Labels every alert with `segment="DIM:VALUE"`, the scope `alerts.segment` judges, so
    /// Alertmanager can route the alerts of several scoped deployments apart.
    pub fn with_segment(mut self, segment: Option<&SegmentFilter>) -> Notifier {
        self.segment = segment.map(|s| format!("{}:{}", s.dimension, s.value));
        self
    }

    /// `resend`: how often firing alerts are repeated to Alertmanager.
    pub fn new(targets: Targets, resend: Duration) -> Notifier {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .provider(ureq::tls::TlsProvider::NativeTls)
                    .build(),
            )
            .build()
            .into();
        Notifier {
            agent,
            targets,
            resend,
            last_sent: None,
            retry: VecDeque::new(),
            segment: None,
        }
    }

    fn post(&self, url: &str, body: &Value) -> Result<(), String> {
        self.agent
            .post(url)
            .header("content-type", "application/json")
            .send(body.to_string())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Delivers `changes` and, when due, repeats the firing alerts in `current`.
    pub fn deliver(&mut self, changes: &[Change], current: &[Alert]) -> Vec<Delivery> {
        let mut out = Vec::new();
        let now = wall_ms();
        if let Some(base) = self.targets.alertmanager.clone() {
            let due = self.last_sent.is_none_or(|t| t.elapsed() >= self.resend);
            let resolved: Vec<&Alert> = changes
                .iter()
                .filter(|c| c.alert.state == State::Resolved)
                .map(|c| &c.alert)
                .collect();
            let newly_firing = changes.iter().any(|c| c.alert.state == State::Firing);
            if due || newly_firing || !resolved.is_empty() {
                // Firing alerts stay open for four resend periods unless repeated.
                let open_until = now + 4 * self.resend.as_millis() as Millis;
                let mut list: Vec<Value> = current
                    .iter()
                    .filter(|a| a.state == State::Firing)
                    .map(|a| self.am_alert(a, open_until))
                    .collect();
                list.extend(resolved.iter().map(|a| self.am_alert(a, now)));
                if !list.is_empty() {
                    let url = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
                    let r = self.post(&url, &Value::Array(list));
                    if let Err(e) = &r {
                        tracing::warn!(url, "cannot push alerts to Alertmanager: {e}");
                    }
                    out.push(Delivery {
                        target: "alertmanager",
                        ok: r.is_ok(),
                    });
                }
                self.last_sent = Some(Instant::now());
            }
        }
        if let Some(url) = self.targets.webhook.clone() {
            let notable: Vec<&Change> = changes
                .iter()
                .filter(|c| matches!(c.alert.state, State::Firing | State::Resolved))
                .collect();
            if !notable.is_empty() {
                if self.retry.len() >= WEBHOOK_QUEUE {
                    self.retry.pop_front();
                    tracing::warn!("webhook retry queue full: the oldest notification is dropped");
                }
                self.retry
                    .push_back((self.webhook_payload(&notable, now), WEBHOOK_TRIES));
            }
            while let Some((body, tries)) = self.retry.pop_front() {
                match self.post(&url, &body) {
                    Ok(()) => out.push(Delivery {
                        target: "webhook",
                        ok: true,
                    }),
                    Err(e) => {
                        tracing::warn!(
                            url,
                            tries_left = tries - 1,
                            "cannot post alerts to the webhook: {e}"
                        );
                        out.push(Delivery {
                            target: "webhook",
                            ok: false,
                        });
                        if tries > 1 {
                            self.retry.push_front((body, tries - 1));
                        }
                        // The endpoint is down: try the rest on the next evaluation.
                        break;
                    }
                }
            }
        }
        out
    }

    /// No `startsAt`: Alertmanager stamps the first receipt and keeps it across repeats.
    fn am_alert(&self, a: &Alert, ends: Millis) -> Value {
        json!({
            "labels": labels(a, self.segment.as_deref()),
            "annotations": annotations(a),
            "endsAt": iso(ends),
            "generatorURL": self.targets.generator_url,
        })
    }

    fn webhook_payload(&self, changes: &[&Change], now: Millis) -> Value {
        let status = if changes.iter().any(|c| c.alert.state == State::Firing) {
            "firing"
        } else {
            "resolved"
        };
        let alerts: Vec<Value> = changes
            .iter()
            .map(|c| {
                let a = &c.alert;
                json!({
                    "status": a.state.as_str(),
                    "labels": labels(a, self.segment.as_deref()),
                    "annotations": annotations(a),
                    // Wall-clock time of the change; event times are under `journeyd`.
                    "startsAt": iso(now),
                    "endsAt": if a.state == State::Resolved { iso(now) } else { "0001-01-01T00:00:00Z".to_string() },
                    "generatorURL": self.targets.generator_url,
                    "journeyd": {
                        "kind": a.kind.as_str(),
                        "touchpoint": a.touchpoint,
                        "phase": a.phase,
                        "state": a.state.as_str(),
                        "previous_state": c.from.map(State::as_str),
                        "drop_off_rate": a.drop_off_rate,
                        "baseline_rate": a.baseline_rate,
                        "sessions": a.sessions,
                        "baseline_sessions": a.baseline_sessions,
                        "active_since": iso(a.active_since),
                        "fired_at": a.fired_at.map(iso),
                        "resolved_at": a.resolved_at.map(iso),
                    },
                })
            })
            .collect();
        // Alertmanager's webhook groups by alert name; a batch of both kinds has none in common.
        let names: Vec<&str> = changes.iter().map(|c| alertname(&c.alert)).collect();
        let common = names
            .first()
            .filter(|n| names.iter().all(|m| m == *n))
            .copied();
        json!({
            "version": "4",
            "receiver": "journeyd",
            "status": status,
            "alerts": alerts,
            "groupLabels": { "alertname": common },
            "commonLabels": { "alertname": common, "source": "journeyd" },
            "externalURL": self.targets.generator_url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(kind: Kind) -> Alert {
        Alert {
            kind,
            touchpoint: "cart".into(),
            phase: Some("decision".into()),
            state: State::Firing,
            drop_off_rate: 0.5,
            baseline_rate: 0.2,
            sessions: 40,
            baseline_sessions: 400,
            active_since: 1_795_000_000_000,
            fired_at: Some(1_795_000_060_000),
            resolved_at: None,
            summary: "drop-off at cart rose".into(),
        }
    }

    /// Alertmanager and webhook alerts carry the scope of a segment-scoped instance.
    #[test]
    fn a_scoped_instance_labels_its_alerts_with_the_segment() {
        let targets = || Targets {
            alertmanager: None,
            webhook: None,
            generator_url: "http://journeyd:8080/".into(),
        };
        let plain = Notifier::new(targets(), Duration::from_secs(60));
        let a = alert(Kind::DropOff);
        assert_eq!(
            plain.am_alert(&a, 0)["labels"],
            json!({"alertname": "JourneyDropOffRising", "severity": "warning",
                   "source": "journeyd", "touchpoint": "cart", "phase": "decision"})
        );
        let segment = SegmentFilter::parse("persona:business");
        let scoped =
            Notifier::new(targets(), Duration::from_secs(60)).with_segment(segment.as_ref());
        assert_eq!(
            scoped.am_alert(&a, 0)["labels"]["segment"],
            "persona:business"
        );
        let change = Change {
            alert: alert(Kind::Conversion),
            from: Some(State::Pending),
        };
        let hook = scoped.webhook_payload(&[&change], 0);
        assert_eq!(hook["alerts"][0]["labels"]["segment"], "persona:business");
        assert_eq!(
            hook["alerts"][0]["labels"]["alertname"],
            "JourneyConversionFalling"
        );
    }
}
