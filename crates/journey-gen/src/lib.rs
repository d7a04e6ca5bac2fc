//! journey-gen: deterministic, seeded synthetic customer journeys.
//!
//! Personas browse the web shop (arriving from ads, social, search or directly; reading the
//! blog; viewing and comparing products; filling and abandoning carts), talk to sales through
//! the CRM, open support tickets, answer NPS surveys and refer friends. Event names and
//! attributes match `config/rules.toml`. The same seed always gives the same events, so tests
//! and benchmarks can rely on them.

use std::borrow::Cow;

use journey_core::time::{Millis, DAY, HOUR, MINUTE, SECOND};
use journey_core::Event;
use serde_json::{json, Value};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenConfig {
    pub seed: u64,
    pub customers: usize,
    /// Journeys start uniformly within `[start, start + span)`.
    pub start: Millis,
    pub span: Millis,
    /// Share of events delivered out of order (delayed by up to `max_delay`).
    pub out_of_order: f64,
    pub max_delay: Millis,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 42,
            customers: 1_000,
            start: 1_795_000_000_000 / DAY * DAY,
            span: DAY,
            out_of_order: 0.0,
            max_delay: 4 * MINUTE,
        }
    }
}

/// SplitMix64: tiny, fast, and stable across versions (unlike a library PRNG's stream).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo).max(1) as u64) as i64
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.next_u64() as usize % items.len()]
    }

    /// Roughly log-normal: many short gaps, a long tail.
    pub fn dwell(&mut self, median: Millis) -> Millis {
        let u = self.unit().max(1e-9);
        let factor = (-(u.ln()) * 0.9).exp() * 0.5 + 0.2;
        ((median as f64) * factor) as Millis + SECOND
    }
}

/// Who the customer is; each persona has its own habits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persona {
    BargainHunter,
    Researcher,
    Impulse,
    Business,
}

impl Persona {
    pub fn name(self) -> &'static str {
        match self {
            Persona::BargainHunter => "bargain-hunter",
            Persona::Researcher => "researcher",
            Persona::Impulse => "impulse",
            Persona::Business => "business",
        }
    }
}

struct Journey<'r> {
    rng: &'r mut Rng,
    customer: String,
    persona: Persona,
    t: Millis,
    out: Vec<Event<'static>>,
}

impl Journey<'_> {
    fn emit(&mut self, source: &'static str, name: &'static str, attributes: Value) {
        self.out.push(Event {
            event_id: Some(Cow::Owned(format!("{}-{}", self.customer, self.out.len()))),
            customer_id: Cow::Owned(self.customer.clone()),
            ts: self.t,
            source: Cow::Borrowed(source),
            name: Cow::Borrowed(name),
            attributes,
        });
    }

    fn page(&mut self, url: &str, extra: Option<(&str, &str)>) {
        let mut attrs = json!({ "url": url, "persona": self.persona.name() });
        if let Some((k, v)) = extra {
            attrs[k] = json!(v);
        }
        self.emit("web", "page_view", attrs);
    }

    fn wait(&mut self, median: Millis) {
        self.t += self.rng.dwell(median);
    }

    /// One web visit. Returns whether it ended in an order.
    fn web_session(&mut self, first: bool) -> bool {
        let (p_cart, p_checkout, p_order, pages) = match self.persona {
            Persona::BargainHunter => (0.45, 0.55, 0.6, 5),
            Persona::Researcher => (0.25, 0.6, 0.7, 8),
            Persona::Impulse => (0.7, 0.75, 0.8, 2),
            Persona::Business => (0.15, 0.5, 0.5, 4),
        };
        let entry = self.rng.unit();
        let landing = if entry < 0.35 {
            let medium = *self.rng.pick(&["cpc", "display", "paid_social"]);
            ("/lp/spring-sale", Some(("utm_medium", medium)))
        } else if entry < 0.5 {
            ("/", Some(("utm_medium", "social")))
        } else if entry < 0.7 {
            ("/", Some(("utm_medium", "organic")))
        } else if entry < 0.8 && first {
            ("/blog/how-to-choose", None)
        } else {
            ("/", None)
        };
        self.page(landing.0, landing.1);
        if self.persona == Persona::Researcher && self.rng.chance(0.6) {
            self.wait(90 * SECOND);
            self.page("/blog/buyers-guide", None);
        }
        let n = self.rng.range(1, pages + 1);
        for _ in 0..n {
            self.wait(40 * SECOND);
            let id = self.rng.range(1, 400);
            self.page(&format!("/products/{id}"), None);
            if self.rng.chance(0.15) {
                self.wait(20 * SECOND);
                let v = self.rng.range(10, 100);
                self.emit("web", "scroll", json!({ "depth": v }));
            }
        }
        if self.rng.chance(if self.persona == Persona::Researcher {
            0.5
        } else {
            0.15
        }) {
            self.wait(60 * SECOND);
            self.page("/compare", None);
        }
        if self.rng.chance(0.05) {
            self.wait(30 * SECOND);
            self.emit(
                "web",
                "newsletter_signup",
                json!({ "persona": self.persona.name() }),
            );
        }
        if !self.rng.chance(p_cart) {
            return false;
        }
        self.wait(30 * SECOND);
        let v = self.rng.range(10, 300);
        self.emit("web", "add_to_cart", json!({ "price": v }));
        self.wait(20 * SECOND);
        self.page("/cart", None);
        if !self.rng.chance(p_checkout) {
            return false;
        }
        self.wait(45 * SECOND);
        self.emit("web", "checkout_started", json!({}));
        if !self.rng.chance(p_order) {
            return false;
        }
        self.wait(2 * MINUTE);
        let v = self.rng.range(20, 900);
        self.emit(
            "web",
            "order_completed",
            json!({ "total": v, "currency": "EUR" }),
        );
        true
    }

    fn sales(&mut self) -> bool {
        self.wait(2 * HOUR);
        self.emit(
            "crm",
            "lead_created",
            json!({ "persona": self.persona.name() }),
        );
        if !self.rng.chance(0.6) {
            return false;
        }
        self.t += self.rng.range(HOUR, 3 * DAY);
        let v = self.rng.range(60, 1800);
        self.emit("crm", "sales_call", json!({ "duration_s": v }));
        if !self.rng.chance(0.6) {
            return false;
        }
        self.t += self.rng.range(HOUR, 2 * DAY);
        let v = self.rng.range(1000, 50000);
        self.emit("crm", "quote_sent", json!({ "amount": v }));
        self.t += self.rng.range(HOUR, 7 * DAY);
        if self.rng.chance(0.45) {
            self.emit("crm", "deal_won", json!({}));
            true
        } else {
            self.emit("crm", "deal_lost", json!({}));
            false
        }
    }

    fn after_purchase(&mut self) {
        if self.rng.chance(0.2) {
            self.t += self.rng.range(HOUR, 5 * DAY);
            let v = *self.rng.pick(&["delivery", "refund", "defect"]);
            self.emit("service", "ticket_opened", json!({ "topic": v }));
            self.t += self.rng.range(10 * MINUTE, 2 * DAY);
            let csat = self.rng.range(1, 6);
            self.emit("service", "ticket_resolved", json!({ "csat": csat }));
        }
        if self.rng.chance(0.3) {
            self.t += self.rng.range(DAY, 10 * DAY);
            let score = self.rng.range(0, 11);
            self.emit(
                "service",
                "survey_answered",
                json!({ "survey": "nps", "score": score }),
            );
            if score >= 9 && self.rng.chance(0.4) {
                self.wait(3 * MINUTE);
                self.emit("web", "referral_sent", json!({}));
            }
        }
        if self.rng.chance(0.1) {
            self.t += self.rng.range(DAY, 5 * DAY);
            let v = self.rng.range(1, 6);
            self.emit("web", "review_submitted", json!({ "stars": v }));
        }
        if self.rng.chance(0.25) {
            self.t += self.rng.range(DAY, 14 * DAY);
            self.emit("web", "login", json!({}));
            self.wait(MINUTE);
            self.web_session(false);
        }
    }
}

/// All events of one customer, in time order.
pub fn customer_events(rng: &mut Rng, index: usize, start: Millis) -> Vec<Event<'static>> {
    let persona = *rng.pick(&[
        Persona::BargainHunter,
        Persona::BargainHunter,
        Persona::Researcher,
        Persona::Impulse,
        Persona::Business,
    ]);
    let mut j = Journey {
        rng,
        customer: format!("c-{index}"),
        persona,
        t: start,
        out: Vec::new(),
    };
    let visits = j.rng.range(1, 4);
    let mut bought = false;
    for v in 0..visits {
        if v > 0 {
            j.t += j.rng.range(2 * HOUR, 4 * DAY);
        }
        if j.web_session(v == 0) {
            bought = true;
            break;
        }
    }
    if persona == Persona::Business && j.rng.chance(0.7) {
        bought |= j.sales();
    }
    if bought {
        j.after_purchase();
    }
    j.out
}

/// Every customer's events, merged in time order, then the configured share delayed.
pub fn generate(cfg: &GenConfig) -> Vec<Event<'static>> {
    let mut rng = Rng::new(cfg.seed);
    let mut events = Vec::new();
    for i in 0..cfg.customers {
        let start = cfg.start + rng.range(0, cfg.span.max(1));
        events.extend(customer_events(&mut rng, i, start));
    }
    events.sort_by_key(|e| e.ts);
    if cfg.out_of_order > 0.0 {
        // Deliver some events late, by at most `max_delay` behind the newest one seen.
        let mut keyed: Vec<(Millis, usize)> = events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let d = if rng.chance(cfg.out_of_order) {
                    rng.range(0, cfg.max_delay + 1)
                } else {
                    0
                };
                (e.ts + d, i)
            })
            .collect();
        keyed.sort_unstable();
        let mut slots: Vec<Option<Event<'static>>> = events.into_iter().map(Some).collect();
        events = keyed
            .into_iter()
            .filter_map(|(_, i)| slots[i].take())
            .collect();
    }
    events
}

/// One canonical NDJSON line (without the newline).
pub fn to_canonical_json(e: &Event<'_>) -> String {
    serde_json::to_string(e).expect("events always serialise")
}

fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// The event as a Segment `track` call.
pub fn to_segment_json(e: &Event<'_>) -> String {
    let properties = if e.attributes.is_null() {
        json!({})
    } else {
        e.attributes.clone()
    };
    json!({
        "type": "track", "event": e.name, "userId": e.customer_id, "timestamp": rfc3339(e.ts),
        "messageId": e.event_id, "properties": properties,
    })
    .to_string()
}

/// The event as a structured CloudEvents 1.0 record.
pub fn to_cloudevents_json(e: &Event<'_>) -> String {
    let data = if e.attributes.is_null() {
        json!({})
    } else {
        e.attributes.clone()
    };
    json!({
        "specversion": "1.0", "type": e.name, "source": format!("/{}", e.source), "id": e.event_id,
        "subject": e.customer_id, "time": rfc3339(e.ts), "data": data,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_events() {
        let cfg = GenConfig {
            customers: 200,
            out_of_order: 0.1,
            ..Default::default()
        };
        assert_eq!(generate(&cfg), generate(&cfg));
        let other = GenConfig {
            seed: 7,
            ..cfg.clone()
        };
        assert_ne!(generate(&cfg), generate(&other));
    }

    #[test]
    fn out_of_order_stays_within_the_delay() {
        let cfg = GenConfig {
            customers: 500,
            out_of_order: 0.2,
            ..Default::default()
        };
        let events = generate(&cfg);
        let mut max_seen = 0;
        let mut behind = 0;
        for e in &events {
            assert!(
                max_seen - e.ts <= cfg.max_delay,
                "{} behind",
                max_seen - e.ts
            );
            behind += (e.ts < max_seen) as usize;
            max_seen = max_seen.max(e.ts);
        }
        assert!(behind > 0, "some events arrive out of order");
    }

    #[test]
    fn segment_and_cloudevents_lines_carry_the_same_fields() {
        let ts = |v: &serde_json::Value| {
            journey_core::event::parse_rfc3339(v.as_str().unwrap()).unwrap()
        };
        for e in &generate(&GenConfig {
            customers: 20,
            ..Default::default()
        }) {
            let seg: serde_json::Value = serde_json::from_str(&to_segment_json(e)).unwrap();
            assert_eq!(
                (seg["userId"].as_str(), seg["event"].as_str()),
                (Some(&*e.customer_id), Some(&*e.name))
            );
            assert_eq!(ts(&seg["timestamp"]), e.ts);
            let ce: serde_json::Value = serde_json::from_str(&to_cloudevents_json(e)).unwrap();
            assert_eq!(
                (ce["subject"].as_str(), ce["type"].as_str()),
                (Some(&*e.customer_id), Some(&*e.name))
            );
            assert_eq!(ts(&ce["time"]), e.ts);
        }
    }

    #[test]
    fn lines_decode_as_canonical_events() {
        let events = generate(&GenConfig {
            customers: 20,
            ..Default::default()
        });
        for e in &events {
            let line = to_canonical_json(e);
            let back = journey_core::decode_canonical(line.as_bytes(), "web", &Default::default())
                .unwrap();
            assert_eq!(&back, e);
        }
    }
}
