//! journey-gen: deterministic, seeded synthetic customer journeys.
//!
//! Personas browse the web shop (arriving from ads, social, search or directly; reading the
//! blog; viewing and comparing products; filling and abandoning carts), talk to sales through
//! the CRM, open support tickets, answer NPS surveys and refer friends. Event names and
//! attributes match `config/rules.toml`. The same seed always gives the same events, so tests
//! and benchmarks can rely on them.
//!
//! [`stream`] yields events in delivery order while holding only the pending events of
//! customers already started, so ten million customers need no more memory than their tails;
//! [`generate`] collects it. A [`Spike`] makes visitors abandon at one step from a chosen time,
//! to exercise drop-off alerts.
//!
//! Records come in two widths ([`Payload`]): `compact`, the few attributes the rules read, and
//! `realistic`, the same events widened by [`widen`] to what Segment or RudderStack trackers
//! send (a `context` object and 8–15 properties, about 1 KB per line). Widening only adds
//! keys that no rule or breakdown of `config/rules.toml` reads, and draws from its own random
//! stream keyed by the event, so both widths carry the same journeys and give the same figures.

pub mod demo;

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

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
    /// Extra abandonment at one web step from a chosen time.
    pub spike: Option<Spike>,
    /// A planted moment of truth: a visitor who signs up for the newsletter during a visit
    /// then adds to the cart with probability 0.95 instead of the persona's usual one, so
    /// `newsletter_signup` clearly raises conversion to `decision` (what `/v1/moments`
    /// should find). Off by default, so existing seeds keep their events: on, the visitors who
    /// sign up continue differently, and as all customers draw from one random stream, every
    /// customer started after the first such visitor differs too.
    pub planted_moment: bool,
    /// Longest pause between two events of one visit (milliseconds); `None`: as drawn, with a
    /// long tail (about 18 % of orders come more than 5 minutes after the checkout). Set it
    /// below `session.gap` so that no visit splits into two sessions (`journeyd demo` does).
    /// The random stream is the same either way: only the times change.
    pub max_pause: Option<Millis>,
}

/// Probability of adding to the cart after a newsletter signup, with
/// [`GenConfig::planted_moment`].
pub const PLANTED_CART_CHANCE: f64 = 0.95;

/// A web step where a [`Spike`] can make visitors leave; named after its touchpoint in
/// `config/rules.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    ProductPage,
    Compare,
    Cart,
    Checkout,
}

impl Step {
    pub const ALL: [Step; 4] = [Step::ProductPage, Step::Compare, Step::Cart, Step::Checkout];

    pub fn name(self) -> &'static str {
        match self {
            Step::ProductPage => "product_page",
            Step::Compare => "compare",
            Step::Cart => "cart",
            Step::Checkout => "checkout",
        }
    }

    pub fn parse(name: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// From `from` on (until `until`, if set), a visitor reaching `step` ends the visit there with
/// probability `abandon` (on top of the usual behaviour): a rising drop-off at that touchpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spike {
    pub step: Step,
    pub from: Millis,
    pub until: Option<Millis>,
    pub abandon: f64,
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
            spike: None,
            planted_moment: false,
            max_pause: None,
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
    spike: Option<Spike>,
    planted_moment: bool,
    max_pause: Millis,
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
        self.t += self.rng.dwell(median).min(self.max_pause);
    }

    /// Whether a configured spike makes the visitor leave at `step` now.
    fn spiked(&mut self, step: Step) -> bool {
        match self.spike {
            Some(s) if s.step == step && self.t >= s.from && s.until.is_none_or(|u| self.t < u) => {
                self.rng.chance(s.abandon)
            }
            _ => false,
        }
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
            if self.spiked(Step::ProductPage) {
                return false;
            }
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
            if self.spiked(Step::Compare) {
                return false;
            }
        }
        let mut p_cart = p_cart;
        if self.rng.chance(0.05) {
            self.wait(30 * SECOND);
            self.emit(
                "web",
                "newsletter_signup",
                json!({ "persona": self.persona.name() }),
            );
            if self.planted_moment {
                p_cart = PLANTED_CART_CHANCE;
            }
        }
        if !self.rng.chance(p_cart) {
            return false;
        }
        self.wait(30 * SECOND);
        let v = self.rng.range(10, 300);
        self.emit("web", "add_to_cart", json!({ "price": v }));
        self.wait(20 * SECOND);
        self.page("/cart", None);
        if self.spiked(Step::Cart) || !self.rng.chance(p_checkout) {
            return false;
        }
        self.wait(45 * SECOND);
        self.emit("web", "checkout_started", json!({}));
        if self.spiked(Step::Checkout) || !self.rng.chance(p_order) {
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
pub fn customer_events(
    rng: &mut Rng,
    index: usize,
    start: Millis,
    spike: Option<Spike>,
) -> Vec<Event<'static>> {
    events_of(rng, index, start, spike, false, None)
}

/// [`customer_events`], with [`GenConfig::planted_moment`].
fn events_of(
    rng: &mut Rng,
    index: usize,
    start: Millis,
    spike: Option<Spike>,
    planted_moment: bool,
    max_pause: Option<Millis>,
) -> Vec<Event<'static>> {
    let persona = *rng.pick(&[
        Persona::BargainHunter,
        Persona::BargainHunter,
        Persona::Researcher,
        Persona::Impulse,
        Persona::Business,
    ]);
    let mut j = Journey {
        rng,
        spike,
        planted_moment,
        max_pause: max_pause.unwrap_or(Millis::MAX),
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

/// Every customer's events in delivery order: by time, with the configured share delayed.
pub fn generate(cfg: &GenConfig) -> Vec<Event<'static>> {
    stream(cfg).collect()
}

/// The events of [`generate`], one at a time. Customers start in order (journey starts are
/// spread evenly over the span, jittered within their slot), so an event can be released as
/// soon as no customer still to come can start before its delivery time.
pub fn stream(cfg: &GenConfig) -> Stream {
    Stream {
        cfg: cfg.clone(),
        rng: Rng::new(cfg.seed),
        next: 0,
        seq: 0,
        pending: BinaryHeap::new(),
    }
}

/// Iterator returned by [`stream`].
#[derive(Debug)]
pub struct Stream {
    cfg: GenConfig,
    rng: Rng,
    next: usize,
    seq: u64,
    pending: BinaryHeap<Pending>,
}

/// An event waiting for its delivery time; the heap's top is the earliest.
#[derive(Debug)]
struct Pending {
    deliver: Millis,
    seq: u64,
    event: Event<'static>,
}

impl Ord for Pending {
    fn cmp(&self, o: &Self) -> Ordering {
        (o.deliver, o.seq).cmp(&(self.deliver, self.seq))
    }
}

impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.deliver, self.seq) == (o.deliver, o.seq)
    }
}

impl Eq for Pending {}

impl Stream {
    /// Start of customer `i`'s slot: `[start + i·span/n, start + (i+1)·span/n)`.
    fn slot_start(&self, i: usize) -> Millis {
        let n = self.cfg.customers.max(1) as i128;
        self.cfg.start + (i as i128 * self.cfg.span.max(1) as i128 / n) as Millis
    }

    /// Customers generated so far.
    pub fn customers_started(&self) -> usize {
        self.next
    }
}

impl Iterator for Stream {
    type Item = Event<'static>;

    fn next(&mut self) -> Option<Event<'static>> {
        loop {
            let more = self.next < self.cfg.customers;
            let horizon = if more {
                self.slot_start(self.next)
            } else {
                Millis::MAX
            };
            if self.pending.peek().is_some_and(|p| p.deliver < horizon) || !more {
                return self.pending.pop().map(|p| p.event);
            }
            let (lo, hi) = (self.slot_start(self.next), self.slot_start(self.next + 1));
            let start = self.rng.range(lo, hi.max(lo + 1));
            let spike = self.cfg.spike;
            let (planted, pause) = (self.cfg.planted_moment, self.cfg.max_pause);
            for event in events_of(&mut self.rng, self.next, start, spike, planted, pause) {
                // Deliver some events late, by at most `max_delay` behind the newest one seen.
                let delay = if self.cfg.out_of_order > 0.0 && self.rng.chance(self.cfg.out_of_order)
                {
                    self.rng.range(0, self.cfg.max_delay + 1)
                } else {
                    0
                };
                self.seq += 1;
                self.pending.push(Pending {
                    deliver: event.ts + delay,
                    seq: self.seq,
                    event,
                });
            }
            self.next += 1;
        }
    }
}

/// How wide each generated record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Payload {
    /// Only the attributes the shipped rules and breakdowns read (about 160 bytes per
    /// canonical line).
    #[default]
    Compact,
    /// Segment-like wide records: the compact attributes plus a `context` object (page,
    /// userAgent, locale, campaign, library, ip, ...) and noise properties up to 8–15 in all,
    /// about 1 KB per canonical line ([`widen`]).
    Realistic,
}

impl Payload {
    pub const ALL: [Payload; 2] = [Payload::Compact, Payload::Realistic];

    pub fn name(self) -> &'static str {
        match self {
            Payload::Compact => "compact",
            Payload::Realistic => "realistic",
        }
    }

    pub fn parse(name: &str) -> Option<Payload> {
        Payload::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The event as this payload width gives it: unchanged, or [`widen`]ed with `seed`.
    pub fn apply(self, e: Event<'static>, seed: u64) -> Event<'static> {
        match self {
            Payload::Compact => e,
            Payload::Realistic => widen(&e, seed),
        }
    }
}

/// Attribute keys the generator itself writes, which [`widen`] never adds (so classification,
/// scores and first-touch breakdowns stay the same): every key of `config/rules.toml` and of
/// the compact events.
const COMPACT_KEYS: &[&str] = &[
    "url",
    "utm_medium",
    "persona",
    "depth",
    "price",
    "total",
    "currency",
    "duration_s",
    "amount",
    "topic",
    "csat",
    "survey",
    "score",
    "stars",
];

const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.81 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
];
const LOCALES: &[&str] = &["de-DE", "en-US", "en-GB", "fr-FR", "nl-NL", "es-ES"];
const TIMEZONES: &[&str] = &[
    "Europe/Berlin",
    "America/New_York",
    "Europe/London",
    "Europe/Paris",
    "Europe/Amsterdam",
];
const REFERRERS: &[&str] = &[
    "https://www.google.com/search?q=trail+running+shoes",
    "https://www.bing.com/search?q=wasserdichte+laufschuhe",
    "https://www.instagram.com/",
    "https://news.example.org/best-shoes-2026",
    "",
];
const CAMPAIGNS: &[(&str, &str, &str)] = &[
    ("spring-sale", "google", "trail shoes"),
    ("newsletter-47", "mailchimp", ""),
    ("brand-awareness", "facebook", "running"),
    ("retargeting-q4", "criteo", "shoes für damen"),
];
const TITLES: &[&str] = &[
    "Trail Runner – Example Shop",
    "Wasserdichte Laufschuhe für Damen | Example Shop",
    "The \"Summit\" GTX – Example Shop",
    "Compare products · Example Shop",
    "Your cart (2 items)",
];
const BRANDS: &[&str] = &["Northpeak", "Salto", "Ærø Outdoor", "Kestrel", "Mistral"];
const CATEGORIES: &[&str] = &[
    "shoes/trail",
    "shoes/road",
    "apparel/jackets",
    "accessories",
];

/// The event widened as a Segment or RudderStack tracker would send it: a `context` object
/// (`page` with url/referrer/title/path/search, `userAgent`, `locale`, `timezone`, `campaign`
/// with name/source/medium/term/content, `library`, `ip`, `screen`) and noise properties until
/// the event has 8–15 top-level properties besides `context`. Values include escapes (`\"`)
/// and non-ASCII text, a nested object and an array. About 1 KB per canonical line.
///
/// Deterministic: the noise comes from a random stream seeded by `seed`, the event id and the
/// event time, never from the journey's own stream, and keys the event already has (and every
/// key the rules read, [`COMPACT_KEYS`]) are left alone. So a compact and a realistic file of
/// the same seed classify, session and count the same.
pub fn widen(e: &Event<'_>, seed: u64) -> Event<'static> {
    let mut key = seed ^ (e.ts as u64).rotate_left(17);
    for b in e.event_id.as_deref().unwrap_or(&e.customer_id).bytes() {
        key = (key ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    let mut rng = Rng::new(key);
    let mut attrs = match &e.attributes {
        Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    let path = match attrs.get("url").and_then(Value::as_str) {
        Some(u) => u.to_string(),
        None => format!("/account/{}", rng.pick(&["orders", "profile", "wishlist"])),
    };
    let search = format!(
        "?ref={}&sid={:08x}",
        rng.pick(&["nav", "search", "banner", "email"]),
        rng.next_u64() as u32
    );
    let title = *rng.pick(TITLES);
    let referrer = *rng.pick(REFERRERS);
    let (campaign, campaign_source, term) = *rng.pick(CAMPAIGNS);
    let medium = attrs
        .get("utm_medium")
        .and_then(Value::as_str)
        .unwrap_or("email")
        .to_string();
    let ip = format!(
        "{}.{}.{}.{}",
        rng.range(11, 223),
        rng.range(0, 256),
        rng.range(0, 256),
        rng.range(1, 255)
    );
    let context = json!({
        "page": {
            "url": format!("https://shop.example.com{path}{search}"),
            "referrer": referrer,
            "title": title,
            "path": path,
            "search": search,
        },
        "userAgent": *rng.pick(USER_AGENTS),
        "locale": *rng.pick(LOCALES),
        "timezone": *rng.pick(TIMEZONES),
        "campaign": {
            "name": campaign,
            "source": campaign_source,
            "medium": medium,
            "term": term,
            "content": format!("banner-{}", rng.range(1, 9)),
        },
        "library": { "name": "analytics.js", "version": "next-1.74.0" },
        "ip": ip,
        "screen": { "width": *rng.pick(&[390, 1280, 1440, 1920]), "height": *rng.pick(&[844, 800, 900, 1080]), "density": *rng.pick(&[1, 2, 3]) },
    });
    let target = rng.range(8, 16) as usize;
    let sku = format!("SKU-{:05}", rng.range(0, 100_000));
    let noise: [(&str, Value); 15] = [
        ("path", json!(path)),
        ("title", json!(title)),
        ("referrer", json!(referrer)),
        ("search", json!(search)),
        ("sku", json!(sku)),
        ("brand", json!(*rng.pick(BRANDS))),
        ("category", json!(*rng.pick(CATEGORIES))),
        (
            "variant",
            json!(*rng.pick(&["black/42", "blue/39", "grey/44.5"])),
        ),
        ("quantity", json!(rng.range(1, 4))),
        ("position", json!(rng.range(1, 49))),
        ("in_stock", json!(rng.chance(0.9))),
        ("rating", json!(rng.range(10, 51) as f64 / 10.0)),
        ("list_id", json!(format!("plp-{}", rng.range(100, 999)))),
        (
            "experiment",
            json!({ "id": format!("exp-{}", rng.range(1, 40)), "variation": *rng.pick(&["control", "b"]) }),
        ),
        (
            "tags",
            json!([
                *rng.pick(&["sale", "new"]),
                *rng.pick(&["gtx", "wide-fit", "vegan"])
            ]),
        ),
    ];
    for (k, v) in noise {
        if attrs.len() >= target {
            break;
        }
        if !COMPACT_KEYS.contains(&k) && !attrs.contains_key(k) {
            attrs.insert(k.to_string(), v);
        }
    }
    attrs.insert("context".to_string(), context);
    Event {
        event_id: e.event_id.as_ref().map(|s| Cow::Owned(s.to_string())),
        customer_id: Cow::Owned(e.customer_id.to_string()),
        ts: e.ts,
        source: Cow::Owned(e.source.to_string()),
        name: Cow::Owned(e.name.to_string()),
        attributes: Value::Object(attrs),
    }
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
///
/// A `context` attribute (a [`widen`]ed event) becomes the call's `context`, where trackers put
/// it; journeyd's Segment decoder files it under the attribute `context` again.
pub fn to_segment_json(e: &Event<'_>) -> String {
    let mut properties = if e.attributes.is_null() {
        json!({})
    } else {
        e.attributes.clone()
    };
    let context = properties.as_object_mut().and_then(|m| m.remove("context"));
    let mut call = json!({
        "type": "track", "event": e.name, "userId": e.customer_id, "timestamp": rfc3339(e.ts),
        "messageId": e.event_id, "properties": properties,
    });
    if let Some(context) = context {
        call["context"] = context;
    }
    call.to_string()
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

    /// The planted moment of truth makes visitors who sign up for the newsletter add to the
    /// cart far more often; customers before the first one who signs up are unchanged.
    #[test]
    fn the_planted_moment_makes_newsletter_visitors_add_to_cart() {
        let base = GenConfig {
            customers: 3_000,
            ..Default::default()
        };
        let planted = GenConfig {
            planted_moment: true,
            ..base.clone()
        };
        let by_customer = |events: Vec<Event<'static>>| {
            let mut m: std::collections::BTreeMap<usize, Vec<Event<'static>>> = Default::default();
            for e in events {
                let i = e.customer_id[2..].parse().unwrap();
                m.entry(i).or_default().push(e);
            }
            m
        };
        let (a, b) = (
            by_customer(generate(&base)),
            by_customer(generate(&planted)),
        );
        let signed = |evs: &[Event<'_>]| evs.iter().any(|e| e.name == "newsletter_signup");
        let share = |m: &std::collections::BTreeMap<usize, Vec<Event<'static>>>| {
            let signers: Vec<_> = m.values().filter(|e| signed(e)).collect();
            let carted = signers
                .iter()
                .filter(|e| e.iter().any(|x| x.name == "add_to_cart"))
                .count();
            (carted as f64 / signers.len() as f64, signers.len())
        };
        let ((without, n_a), (with, n_b)) = (share(&a), share(&b));
        assert!(n_a > 100 && n_b > 100, "{n_a} {n_b}");
        assert!(with > 0.9 && with > without + 0.2, "{without} → {with}");
        let first = *a.iter().find(|(_, e)| signed(e)).unwrap().0;
        assert!(first > 0);
        for i in 0..first {
            assert_eq!(a[&i], b[&i], "customer {i} comes before any signup");
        }
    }

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

    /// Orders follow their checkout within `max_pause`, while without it some come more than
    /// 5 minutes later; the same customers do the same things either way.
    #[test]
    fn max_pause_keeps_a_visit_within_the_gap() {
        let cfg = GenConfig {
            customers: 2_000,
            ..Default::default()
        };
        let capped = GenConfig {
            max_pause: Some(4 * MINUTE),
            ..cfg.clone()
        };
        let order_delays = |events: &[Event<'static>]| -> Vec<Millis> {
            let mut by_customer = events.to_vec();
            by_customer.sort_by(|a, b| (&a.customer_id, a.ts).cmp(&(&b.customer_id, b.ts)));
            let mut last: std::collections::HashMap<&str, Millis> = Default::default();
            let mut delays = Vec::new();
            for e in &by_customer {
                if e.name == "order_completed" {
                    if let Some(&t) = last.get(&*e.customer_id) {
                        delays.push(e.ts - t);
                    }
                }
                last.insert(&e.customer_id, e.ts);
            }
            delays
        };
        let (free, held) = (generate(&cfg), generate(&capped));
        let (long, short) = (order_delays(&free), order_delays(&held));
        assert!(short.len() > 100);
        assert!(long.iter().filter(|&&d| d > 5 * MINUTE).count() > short.len() / 10);
        assert!(short.iter().all(|&d| d <= 4 * MINUTE));
        let names = |events: &[Event<'static>]| -> Vec<(String, String)> {
            let mut v: Vec<_> = events
                .iter()
                .map(|e| (e.customer_id.to_string(), e.name.to_string()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&free), names(&held));
    }

    #[test]
    fn events_arrive_in_time_order_without_reordering() {
        let events = generate(&GenConfig {
            customers: 500,
            ..Default::default()
        });
        assert!(events.len() > 2_000);
        assert!(events.windows(2).all(|w| w[0].ts <= w[1].ts));
        let customers: std::collections::HashSet<_> =
            events.iter().map(|e| e.customer_id.clone()).collect();
        assert_eq!(customers.len(), 500);
    }

    #[test]
    fn spike_raises_abandonment_at_its_step_from_its_time() {
        let base = GenConfig {
            customers: 4_000,
            ..Default::default()
        };
        let from = base.start + base.span / 2;
        let spiked = GenConfig {
            spike: Some(Spike {
                step: Step::Cart,
                from,
                until: None,
                abandon: 0.9,
            }),
            ..base.clone()
        };
        // Share of cart views followed by a checkout in the same customer's history.
        let checkout_share = |events: &[Event<'static>], after: bool| {
            let mut carts = 0;
            let mut checkouts = 0;
            for e in events {
                if (e.ts >= from) != after || e.source != "web" {
                    continue;
                }
                if e.name == "page_view" && e.attributes["url"] == "/cart" {
                    carts += 1;
                }
                if e.name == "checkout_started" {
                    checkouts += 1;
                }
            }
            checkouts as f64 / carts as f64
        };
        let (plain, spike) = (generate(&base), generate(&spiked));
        let before = (checkout_share(&plain, false), checkout_share(&spike, false));
        assert!((before.0 - before.1).abs() < 0.05, "{before:?}");
        let after = (checkout_share(&plain, true), checkout_share(&spike, true));
        assert!(after.1 < after.0 * 0.3, "{after:?}");

        // A spike that ended before `from` leaves the later behaviour alone.
        let ended = GenConfig {
            spike: Some(Spike {
                step: Step::Cart,
                from: base.start,
                until: Some(from),
                abandon: 0.9,
            }),
            ..base.clone()
        };
        let ended = generate(&ended);
        assert!(checkout_share(&ended, false) < before.0 * 0.3);
        let later = checkout_share(&ended, true);
        assert!((later - after.0).abs() < 0.05, "{later} vs {}", after.0);
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

    fn realistic(customers: usize) -> (Vec<Event<'static>>, Vec<Event<'static>>) {
        let compact = generate(&GenConfig {
            customers,
            ..Default::default()
        });
        let wide = compact.iter().map(|e| widen(e, 42)).collect();
        (compact, wide)
    }

    #[test]
    fn realistic_lines_are_about_a_kilobyte_with_8_to_15_properties() {
        let (_, wide) = realistic(200);
        let mut total = 0;
        for e in &wide {
            let len = to_canonical_json(e).len();
            assert!(
                (600..=1_600).contains(&len),
                "{len} bytes: {}",
                to_canonical_json(e)
            );
            total += len;
            let attrs = e.attributes.as_object().unwrap();
            let properties = attrs.len() - 1;
            assert!((8..=15).contains(&properties), "{properties}: {attrs:?}");
            let context = &attrs["context"];
            for path in ["page", "userAgent", "locale", "campaign", "library", "ip"] {
                assert!(!context[path].is_null(), "context.{path} missing");
            }
            for key in ["url", "referrer", "title", "path", "search"] {
                assert!(context["page"][key].is_string(), "context.page.{key}");
            }
            for key in ["name", "source", "medium", "term", "content"] {
                assert!(
                    context["campaign"][key].is_string(),
                    "context.campaign.{key}"
                );
            }
        }
        let mean = total / wide.len();
        assert!((900..=1_200).contains(&mean), "mean {mean} bytes per line");
    }

    #[test]
    fn widening_is_deterministic_and_keeps_every_compact_attribute() {
        let (compact, wide) = realistic(100);
        assert_eq!(
            wide,
            compact.iter().map(|e| widen(e, 42)).collect::<Vec<_>>()
        );
        assert_ne!(wide[0], widen(&compact[0], 7), "the seed picks the noise");
        for (c, w) in compact.iter().zip(&wide) {
            assert_eq!(
                (&c.event_id, &c.customer_id, c.ts, &c.source, &c.name),
                (&w.event_id, &w.customer_id, w.ts, &w.source, &w.name)
            );
            for (k, v) in c.attributes.as_object().unwrap() {
                assert_eq!(&w.attributes[k], v, "{k}");
            }
            for k in COMPACT_KEYS {
                assert_eq!(c.attributes.get(k), w.attributes.get(k), "{k} added");
            }
        }
    }

    #[test]
    fn realistic_events_classify_and_score_as_compact_ones() {
        let rules =
            journey_core::Rules::from_toml(include_str!("../../../config/rules.toml")).unwrap();
        let (compact, wide) = realistic(300);
        let mut classified = 0;
        for (c, w) in compact.iter().zip(&wide) {
            let tp = rules.classify(c);
            assert_eq!(tp, rules.classify(w), "{}", to_canonical_json(w));
            if let Some(tp) = tp {
                classified += 1;
                assert_eq!(rules.score(tp, c), rules.score(tp, w));
            }
        }
        assert!(classified > compact.len() / 2);
    }

    #[test]
    fn realistic_segment_calls_carry_context_in_the_envelope() {
        let (_, wide) = realistic(20);
        for e in &wide {
            let call: serde_json::Value = serde_json::from_str(&to_segment_json(e)).unwrap();
            assert_eq!(call["context"], e.attributes["context"]);
            assert!(call["properties"].get("context").is_none());
            let ce: serde_json::Value = serde_json::from_str(&to_cloudevents_json(e)).unwrap();
            assert_eq!(ce["data"], e.attributes);
        }
    }
}
