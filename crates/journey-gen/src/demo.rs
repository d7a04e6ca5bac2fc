//! The event plan of `journeyd demo`: weeks of history, then a live stream, with an optional
//! drop-off spike a few minutes into the live part.
//!
//! Pure, like the generator: the caller passes the wall-clock time and submits what it gets.
//! [`DemoFeed::backfill`] returns every event dated up to the start, in time order; events of
//! those journeys that lie in the future (a sales deal closing next week, an NPS answer in
//! three days) wait and come out of [`DemoFeed::due`] when their time has come, together with
//! the journeys of new customers, generated a minute ahead at the live rate.
//!
//! Besides the generator's new customers, a tenth as many **returning customers** (bought
//! before the history began, so their journey starts after the purchase) log in, open support
//! tickets, answer NPS surveys, write reviews and refer friends: every range, also the last
//! hour, then has journeys in retention and advocacy, and CSAT and NPS differ by persona.
//!
//! History comes in two rates so that the backfill stays fast: the weeks before the last
//! `recent` at `history_per_day` customers a day (enough for every phase, touchpoint, score and
//! persona to show over any range), and the last `recent` at the live rate, which the drop-off
//! alerts' trailing baseline compares against.

use std::borrow::Cow;

use journey_core::time::{Millis, DAY, MINUTE};
use journey_core::Event;
use serde_json::json;

use crate::{generate, GenConfig, Persona, Rng, Spike, Step};

/// Returning customers per new customer.
const RETURNING_SHARE: f64 = 0.1;

/// What `journeyd demo` feeds.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoConfig {
    pub seed: u64,
    /// New customers per minute from `recent` before the start on.
    pub per_minute: usize,
    /// How far back journeys start (milliseconds), e.g. 28 days.
    pub history: Millis,
    /// New customers per day in the history older than `recent`.
    pub history_per_day: usize,
    /// The last stretch of history at the live rate (milliseconds): at least the alerts'
    /// baseline plus their window and `session.gap`.
    pub recent: Millis,
    /// A drop-off spike, timed from the start.
    pub spike: Option<DemoSpike>,
    /// [`GenConfig::max_pause`]: below the demo's `session.gap`, so visits stay whole.
    pub max_pause: Option<Millis>,
}

/// From `after` past the start, for `duration` (or for good), visitors reaching `step` leave
/// there with the extra probability `abandon`: the drop-off alert of that touchpoint goes
/// pending, then firing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemoSpike {
    pub step: Step,
    /// Milliseconds after the start.
    pub after: Millis,
    /// Milliseconds; `None`: no end.
    pub duration: Option<Millis>,
    pub abandon: f64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            seed: 7,
            per_minute: 100,
            history: 28 * DAY,
            history_per_day: 1_000,
            recent: 90 * MINUTE,
            spike: Some(DemoSpike {
                step: Step::Cart,
                after: 3 * MINUTE,
                duration: Some(30 * MINUTE),
                abandon: 0.7,
            }),
            max_pause: None,
        }
    }
}

/// The demo's events over time; see the module documentation.
#[derive(Debug)]
pub struct DemoFeed {
    cfg: DemoConfig,
    start: Millis,
    /// Generated events not yet handed out, in time order.
    pending: Vec<Event<'static>>,
    /// Start of the next live minute to generate.
    next_minute: Millis,
    round: u64,
}

impl DemoFeed {
    /// A feed whose live part starts at `start` (epoch milliseconds, the wall clock).
    pub fn new(cfg: DemoConfig, start: Millis) -> DemoFeed {
        DemoFeed {
            cfg,
            start,
            pending: Vec::new(),
            next_minute: start,
            round: 0,
        }
    }

    /// When the live part started.
    pub fn start(&self) -> Millis {
        self.start
    }

    /// The spike's time span as a generator [`Spike`], in epoch milliseconds.
    pub fn spike(&self) -> Option<Spike> {
        self.cfg.spike.map(|s| Spike {
            step: s.step,
            from: self.start + s.after,
            until: s.duration.map(|d| self.start + s.after + d),
            abandon: s.abandon,
        })
    }

    /// Every history event dated at or before the start, in time order. Later events of the
    /// same journeys are kept for [`DemoFeed::due`]. Call once, before `due`.
    pub fn backfill(&mut self) -> Vec<Event<'static>> {
        let recent = self.cfg.recent.clamp(0, self.cfg.history.max(0));
        let old_span = self.cfg.history.max(0) - recent;
        let old_customers =
            (self.cfg.history_per_day as i128 * old_span as i128 / DAY as i128) as usize;
        let spike = self.spike();
        let old = GenConfig {
            seed: self.cfg.seed,
            customers: old_customers,
            start: self.start - self.cfg.history,
            span: old_span.max(1),
            spike,
            planted_moment: true,
            max_pause: self.cfg.max_pause,
            ..GenConfig::default()
        };
        let recent_customers =
            (self.cfg.per_minute as i128 * recent as i128 / MINUTE as i128) as usize;
        let new = GenConfig {
            seed: self.cfg.seed ^ 0x5eed,
            customers: recent_customers,
            start: self.start - recent,
            span: recent.max(1),
            spike,
            planted_moment: true,
            max_pause: self.cfg.max_pause,
            ..GenConfig::default()
        };
        let mut events = Vec::new();
        if old_customers > 0 {
            events.extend(renamed(generate(&old), "h"));
            events.extend(returning_customers(&old, "hx"));
        }
        if recent_customers > 0 {
            events.extend(renamed(generate(&new), "r"));
            events.extend(returning_customers(&new, "rx"));
        }
        self.pending.extend(events);
        self.pending.sort_by_key(|e| e.ts);
        self.take_until(self.start)
    }

    /// The events whose time has come by `now`: history events still pending and those of
    /// customers arriving live, whose journeys are generated a minute ahead.
    pub fn due(&mut self, now: Millis) -> Vec<Event<'static>> {
        let mut added = false;
        while self.next_minute < now + MINUTE {
            let cfg = GenConfig {
                seed: self.cfg.seed.wrapping_add(1_000 + self.round),
                customers: self.cfg.per_minute.max(1),
                start: self.next_minute,
                span: MINUTE,
                spike: self.spike(),
                planted_moment: true,
                max_pause: self.cfg.max_pause,
                ..GenConfig::default()
            };
            let prefix = format!("l{}", self.round);
            self.pending.extend(renamed(generate(&cfg), &prefix));
            self.pending
                .extend(returning_customers(&cfg, &format!("l{}x", self.round)));
            self.round += 1;
            self.next_minute += MINUTE;
            added = true;
        }
        if added {
            // Stable: events of one customer at equal times keep their generated order.
            self.pending.sort_by_key(|e| e.ts);
        }
        self.take_until(now)
    }

    /// Events generated but not handed out yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn take_until(&mut self, now: Millis) -> Vec<Event<'static>> {
        let due = self.pending.partition_point(|e| e.ts <= now);
        self.pending.drain(..due).collect()
    }
}

/// The returning customers that go with the new ones of `cfg` (a tenth as many, starting in
/// the same span): each logs in, has a support ticket resolved, answers the NPS survey, writes
/// a review or refers a friend, or several of these. How satisfied they are depends on the
/// persona: business customers are the happiest, impulse buyers the least.
fn returning_customers(cfg: &GenConfig, prefix: &str) -> Vec<Event<'static>> {
    let n = (cfg.customers as f64 * RETURNING_SHARE).ceil() as usize;
    let mut rng = Rng::new(cfg.seed ^ 0x7e7u64.rotate_left(32));
    let mut out = Vec::new();
    for i in 0..n {
        let start = cfg.start + rng.range(0, cfg.span.max(1));
        let persona = *rng.pick(&[
            Persona::BargainHunter,
            Persona::BargainHunter,
            Persona::Researcher,
            Persona::Impulse,
            Persona::Business,
        ]);
        // (lowest NPS answer, lowest CSAT): a persona's answers are uniform from there up.
        let (nps_low, csat_low) = match persona {
            Persona::Business => (6, 3),
            Persona::Researcher => (4, 2),
            Persona::BargainHunter => (2, 1),
            Persona::Impulse => (0, 1),
        };
        let customer = format!("{prefix}-{i}");
        let mut t = start;
        let mut events: Vec<(Millis, &'static str, &'static str, serde_json::Value)> = Vec::new();
        let mut any = false;
        if rng.chance(0.5) {
            events.push((t, "web", "login", json!({})));
            t += rng.range(MINUTE, 10 * MINUTE);
            any = true;
        }
        if rng.chance(0.3) {
            let topic = *rng.pick(&["delivery", "refund", "defect"]);
            events.push((t, "service", "ticket_opened", json!({ "topic": topic })));
            t += rng.range(10 * MINUTE, 3 * 60 * MINUTE);
            let csat = rng.range(csat_low, 6);
            events.push((t, "service", "ticket_resolved", json!({ "csat": csat })));
            t += rng.range(MINUTE, 30 * MINUTE);
            any = true;
        }
        if rng.chance(0.4) || !any {
            let score = rng.range(nps_low, 11);
            events.push((
                t,
                "service",
                "survey_answered",
                json!({ "survey": "nps", "score": score }),
            ));
            if score >= 9 && rng.chance(0.5) {
                t += rng.range(MINUTE, 5 * MINUTE);
                events.push((t, "web", "referral_sent", json!({})));
            }
        }
        if rng.chance(0.15) {
            t += rng.range(MINUTE, 20 * MINUTE);
            let stars = rng.range(nps_low / 2, 6).max(1);
            events.push((t, "web", "review_submitted", json!({ "stars": stars })));
        }
        for (k, (ts, source, name, mut attributes)) in events.into_iter().enumerate() {
            // CRM and service systems know the customer's segment: first touch carries it.
            attributes["persona"] = json!(persona.name());
            out.push(Event {
                event_id: Some(Cow::Owned(format!("{customer}-{k}"))),
                customer_id: Cow::Owned(customer.clone()),
                ts,
                source: Cow::Borrowed(source),
                name: Cow::Borrowed(name),
                attributes,
            });
        }
    }
    out
}

/// Customer ids (and event ids) made unique across the generator runs of one demo.
fn renamed<'a>(
    events: Vec<Event<'static>>,
    prefix: &'a str,
) -> impl Iterator<Item = Event<'static>> + 'a {
    events.into_iter().map(move |mut e| {
        e.customer_id = format!("{prefix}-{}", e.customer_id).into();
        e.event_id = e.event_id.map(|id| format!("{prefix}-{id}").into());
        e
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const START: Millis = 1_795_000_000_000;

    fn small() -> DemoConfig {
        DemoConfig {
            per_minute: 20,
            history: 14 * DAY,
            history_per_day: 300,
            recent: 60 * MINUTE,
            ..DemoConfig::default()
        }
    }

    #[test]
    fn backfill_is_history_in_time_order_and_the_rest_comes_live() {
        let mut feed = DemoFeed::new(small(), START);
        let history = feed.backfill();
        assert!(history.len() > 10_000, "{} events", history.len());
        assert!(history.windows(2).all(|w| w[0].ts <= w[1].ts));
        assert!(history.iter().all(|e| e.ts <= START));
        assert!(history.first().is_some_and(|e| e.ts < START - 13 * DAY));
        assert!(feed.pending() > 0, "journeys go on after the start");
        let live = feed.due(START + 5 * MINUTE);
        assert!(live
            .iter()
            .all(|e| e.ts > START && e.ts <= START + 5 * MINUTE));
        assert!(live.windows(2).all(|w| w[0].ts <= w[1].ts));
        // New customers arrive at the live rate: 5 minutes of 20 a minute.
        let new: HashSet<&str> = live
            .iter()
            .filter(|e| e.customer_id.starts_with('l') && !e.customer_id.contains("x-"))
            .map(|e| &*e.customer_id)
            .collect();
        assert!(
            (80..=100).contains(&new.len()),
            "{} new customers",
            new.len()
        );
        // Nothing is handed out twice.
        assert!(feed.due(START + 5 * MINUTE).is_empty());
    }

    #[test]
    fn history_covers_every_source_and_the_recent_stretch_at_the_live_rate() {
        let mut feed = DemoFeed::new(small(), START);
        let history = feed.backfill();
        let sources: HashSet<&str> = history.iter().map(|e| &*e.source).collect();
        assert_eq!(sources, HashSet::from(["web", "crm", "service"]));

        let starts = |prefix: &str| {
            history
                .iter()
                .filter(|e| e.customer_id.starts_with(prefix))
                .map(|e| &*e.customer_id)
                .collect::<HashSet<_>>()
                .len()
        };
        // 13 days 23 hours at 300 a day (300 × 335 / 24), and the last hour at 20 a minute.
        assert_eq!(starts("h-"), 4_187);
        assert_eq!(starts("r-"), 1_200);
        // Returning customers: a tenth of the new ones, rounded up per generator run (some
        // start before and answer after the start: at most all of them here).
        assert!((400..=419).contains(&starts("hx-")), "{}", starts("hx-"));
        assert!((100..=120).contains(&starts("rx-")), "{}", starts("rx-"));
        let ids: HashSet<(&str, Option<&str>)> = history
            .iter()
            .map(|e| (&*e.customer_id, e.event_id.as_deref()))
            .collect();
        assert_eq!(ids.len(), history.len(), "event ids are unique");
    }

    #[test]
    fn returning_customers_reach_retention_and_advocacy_and_personas_differ_in_nps() {
        let cfg = GenConfig {
            customers: 20_000,
            ..GenConfig::default()
        };
        let events = returning_customers(&cfg, "x");
        let names: HashSet<&str> = events.iter().map(|e| &*e.name).collect();
        for name in [
            "login",
            "ticket_opened",
            "ticket_resolved",
            "survey_answered",
            "review_submitted",
            "referral_sent",
        ] {
            assert!(names.contains(name), "{name}");
        }
        assert!(events.iter().all(|e| e.attributes["persona"].is_string()));
        let mean_nps = |persona: &str| {
            let scores: Vec<f64> = events
                .iter()
                .filter(|e| e.name == "survey_answered" && e.attributes["persona"] == persona)
                .filter_map(|e| e.attributes["score"].as_f64())
                .collect();
            scores.iter().sum::<f64>() / scores.len() as f64
        };
        // Uniform from the persona's lowest answer to 10: means 8 and 5 (a few hundred
        // answers each, from a fixed seed).
        let (business, impulse) = (mean_nps("business"), mean_nps("impulse"));
        assert!((business - 8.0).abs() < 1.0, "{business}");
        assert!((impulse - 5.0).abs() < 1.0, "{impulse}");
        assert!(business > impulse + 1.5, "{business} vs {impulse}");
        let customers: HashSet<&str> = events.iter().map(|e| &*e.customer_id).collect();
        assert_eq!(customers.len(), 2_000);
    }

    #[test]
    fn the_spike_starts_after_its_delay() {
        let feed = DemoFeed::new(small(), START);
        let spike = feed.spike().expect("a spike by default");
        assert_eq!(spike.from, START + 3 * MINUTE);
        assert_eq!(spike.until, Some(START + 33 * MINUTE));
        assert_eq!(spike.step, Step::Cart);
        let calm = DemoFeed::new(
            DemoConfig {
                spike: None,
                ..small()
            },
            START,
        );
        assert_eq!(calm.spike(), None);
    }

    #[test]
    fn same_start_same_events() {
        let a = DemoFeed::new(small(), START).backfill();
        let b = DemoFeed::new(small(), START).backfill();
        assert_eq!(a, b);
    }
}
