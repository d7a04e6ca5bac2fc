//! A shard: the customers it owns, their open sessions and journeys, and its partial aggregates.
//!
//! Events may arrive out of order. Per-event figures (visits, scores, the funnel) are applied at
//! once; session figures wait until the shard's watermark proves the session complete, so any
//! arrival order within the allowed lateness gives the same result as time order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::BuildHasher;
use std::sync::Arc;

use compact_str::CompactString;
use hashbrown::{DefaultHashBuilder, HashTable};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agg::{
    Aggregates, Bucket, EXIT, MAX_MOMENT_GOALS, MAX_SEGMENT_DIMS, MOMENT_TOUCHPOINTS, NONE_VALUE,
    OTHER_VALUE, START,
};
use crate::config::{EngineConfig, MAX_BREAKDOWNS};
use crate::dedup::Dedup;
use crate::event::{lookup, Event};
use crate::rules::Rules;
use crate::sketch::Bin;
use crate::slab::Slab;
use crate::time::Millis;

/// Touchpoint id of an unclassified event inside a session.
const UNCLASSIFIED: u16 = u16::MAX;
/// A phase the journey has not reached, or an unset breakdown slot.
const UNSEEN: i64 = i64::MAX;
/// Rank of a phase that the current rules no longer list.
const NO_RANK: u8 = u8::MAX;
const MAX_DIMS: usize = MAX_BREAKDOWNS + 2;

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Index of the touchpoint in the current rules, `None` if unclassified.
    pub touchpoint: Option<u16>,
    /// The event was older than the watermark on arrival.
    pub late: bool,
}

/// An event the shard refused. Nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("customer `{customer_id}` already has {limit} events in its open session")]
    TooManyEvents { customer_id: String, limit: usize },
    #[error("event `{event_id}` of customer `{customer_id}` was already applied")]
    Duplicate {
        customer_id: String,
        event_id: String,
    },
}

impl ApplyError {
    pub fn reason(&self) -> &'static str {
        match self {
            ApplyError::TooManyEvents { .. } => "too_many_events",
            ApplyError::Duplicate { .. } => "duplicate",
        }
    }
}

/// One buffered event of an open session. Buffers are ordered by `ts` only; events with equal
/// times keep their arrival order (SPEC §3, docs/semantics.md §3), so no `Ord` is derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Point {
    ts: Millis,
    tp: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Journey {
    t0: Millis,
    /// Phase-dwell records at times up to this one have been written.
    dwell_done: Millis,
    /// Phase id under which the journey is counted in the funnel.
    furthest: u8,
    n_phases: u8,
    /// First time per phase id, then per dimension `(ts << 16) | value id`, then the
    /// touched-sets of the goals after the first (see `touched`).
    slots: Box<[i64]>,
    /// Touched-set of the first goal of [`Aggregates::moment_goals`] (docs/semantics.md §6
    /// "Moments of truth"): bit `id` for each touchpoint id below [`MOMENT_TOUCHPOINTS`]
    /// touched before the journey reached the goal phase, bit 63 ([`CONVERTED`]) when the
    /// journey counts as converted. Inline, because the slots' allocation would move up a
    /// size class: 8 bytes per journey instead of 16.
    touched: u64,
}

impl Journey {
    /// Whether `ts` lies in the journey's window `[t0, t0 + window]`.
    fn holds(&self, ts: Millis, window: Millis) -> bool {
        self.t0 <= ts && ts <= self.t0.saturating_add(window)
    }

    /// The touched-set of goal `k` of `n_goals`.
    fn moments(&self, k: usize, n_goals: usize) -> u64 {
        match k {
            0 => self.touched,
            k => self.slots[self.slots.len() + k - n_goals] as u64,
        }
    }

    fn set_moments(&mut self, k: usize, n_goals: usize, set: u64) {
        match k {
            0 => self.touched = set,
            k => {
                let i = self.slots.len() + k - n_goals;
                self.slots[i] = set as i64;
            }
        }
    }
}

/// One customer. Kept small: most tracked customers have a journey and nothing else, so the
/// id is stored inline when short and the rarer parts live behind one pointer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Customer {
    id: CompactString,
    journey: Option<Journey>,
    rare: Option<Box<Rare>>,
    /// Earliest time queued for this customer in the timer heap.
    timer: Millis,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Rare {
    /// Journeys before the current one, oldest first, their windows disjoint. One is kept
    /// while an on-time event can still reach it or a session that began in its window is
    /// open (see [`Rare::retire`]); usually none or one.
    past: Vec<Journey>,
    /// Events not yet in a closed session, ordered by `ts`; equal times in arrival order.
    open: Vec<Point>,
}

impl Customer {
    fn is_empty(&self) -> bool {
        self.journey.is_none() && self.rare.is_none()
    }

    /// Buffered events of the open session(s), if any.
    fn open(&self) -> Option<&[Point]> {
        self.rare
            .as_deref()
            .map(|r| r.open.as_slice())
            .filter(|o| !o.is_empty())
    }

    fn open_mut(&mut self) -> &mut Vec<Point> {
        &mut self.rare.get_or_insert_with(Default::default).open
    }

    /// Journeys before the current one, oldest first.
    fn past(&self) -> &[Journey] {
        self.rare.as_deref().map_or(&[], |r| r.past.as_slice())
    }

    /// Past journeys, then the current one: in time order.
    fn journeys(&self) -> impl Iterator<Item = &Journey> + '_ {
        self.past().iter().chain(self.journey.as_ref())
    }

    /// The journey an event at `ts` belongs to: a past one if `ts` lies in its window, else
    /// the current one, else the latest past one (`window`: `journey.window`).
    fn journey_at(&self, ts: Millis, window: Millis) -> Option<&Journey> {
        journey_at(self.past(), self.journey.as_ref(), ts, window)
    }

    /// Drops the rare part once it holds nothing.
    fn tidy(&mut self) {
        if self
            .rare
            .as_ref()
            .is_some_and(|r| r.past.is_empty() && r.open.is_empty())
        {
            self.rare = None;
        }
    }
}

/// The past journey whose window holds `ts`, else `current`, else the latest past one.
fn journey_at<'j>(
    past: &'j [Journey],
    current: Option<&'j Journey>,
    ts: Millis,
    window: Millis,
) -> Option<&'j Journey> {
    past.iter()
        .find(|p| p.holds(ts, window))
        .or(current)
        .or(past.last())
}

impl Rare {
    /// Writes the past journeys' phase dwell up to the watermark `wm` and drops each one that
    /// nothing can change any more: the watermark has passed its window's end and no open
    /// session began inside that window (its figures go to the journey's segments on close).
    fn retire(&mut self, ctx: &Ctx, agg: &mut Aggregates, wm: Millis) {
        let w = ctx.cfg.journey_window;
        let open_from = self.open.first().map_or(Millis::MAX, |p| p.ts);
        self.past.retain_mut(|p| {
            emit_phase_dwell(ctx, agg, p, wm);
            let end = p.t0.saturating_add(w);
            !(wm > end && open_from > end)
        });
    }
}

/// A classified event on its way into a journey.
struct Hit<'a, 'e> {
    ev: &'a Event<'e>,
    rule_tp: u16,
    tp_id: u16,
    /// The event also joins the open session, whose timer will reschedule journey work.
    in_session: bool,
    /// The event was older than the watermark on arrival: it may change a retained journey but
    /// never starts one.
    late: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Contribution {
    t0: Millis,
    furthest: u8,
    dims: [u16; MAX_DIMS],
    /// The touched-set of each goal, as in the journey's slots.
    moments: [u64; MAX_MOMENT_GOALS],
}

/// Bit 63 of a touched-set: the journey counts as converted.
const CONVERTED: u64 = 1 << 63;

/// Rule indices translated to the shard's stable aggregate ids.
#[derive(Debug)]
struct Ctx {
    cfg: Arc<EngineConfig>,
    rules: Arc<Rules>,
    tp_id: Vec<u16>,
    phase_id: Vec<u8>,
    /// By phase id: position in the current rules' phase order.
    rank: Vec<u8>,
    /// By touchpoint id.
    goal: Vec<bool>,
    breakdown_paths: Vec<Vec<Box<str>>>,
    /// The segment dimensions, as indices into the breakdown dimensions.
    seg_dims: Vec<usize>,
    /// By goal of [`Aggregates::moment_goals`]: the goal phase's rank in the current rules,
    /// [`NO_RANK`] when they do not list it.
    goal_rank: Vec<u8>,
}

/// The segments a figure is recorded for: the value id of each segment dimension, taken from
/// the journey the figure belongs to (docs/semantics.md §9, "Segments").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SegKey {
    n: u8,
    values: [u16; MAX_SEGMENT_DIMS],
}

impl SegKey {
    /// The key of a journey's figures; without a journey every segment dimension is `(none)`.
    fn of(ctx: &Ctx, j: Option<&Journey>) -> SegKey {
        let mut values = [NONE_VALUE; MAX_SEGMENT_DIMS];
        for (slot, &d) in values.iter_mut().zip(&ctx.seg_dims) {
            *slot = j.map_or(NONE_VALUE, |j| dim_value(j, d));
        }
        SegKey {
            n: ctx.seg_dims.len().min(MAX_SEGMENT_DIMS) as u8,
            values,
        }
    }

    fn as_slice(&self) -> &[u16] {
        &self.values[..self.n as usize]
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    customers: Slab<Customer>,
    free: Vec<u32>,
    max_seen: Millis,
    watermark: Millis,
    agg: Aggregates,
    dedup: Dedup,
}

/// Owns a set of customers. Single-threaded by design: one worker owns each shard.
#[derive(Debug)]
pub struct Shard {
    ctx: Ctx,
    st: State,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    timers: BinaryHeap<Reverse<(Millis, u32)>>,
    scratch: Vec<u16>,
    /// The owner moves the watermark with [`Shard::advance_clock`] (a task with several
    /// inputs); otherwise every event moves it to the largest event time minus lateness.
    external_watermark: bool,
}

/// A customer's live state, for `/v1/customers/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomerView {
    pub customer_id: String,
    pub journeys: Vec<JourneyView>,
    pub open_events: Vec<PointView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JourneyView {
    pub started_at: Millis,
    pub window_ends_at: Millis,
    pub furthest_phase: String,
    /// Phase name and the first time the journey was seen in it.
    pub phases: Vec<(String, Millis)>,
    pub breakdown: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointView {
    pub ts: Millis,
    pub touchpoint: Option<String>,
}

impl Shard {
    /// A fresh shard. `cfg` must have passed [`EngineConfig::validate`].
    pub fn new(cfg: Arc<EngineConfig>, rules: Arc<Rules>) -> Shard {
        let mut agg = Aggregates::new(
            &cfg.dimension_names(),
            cfg.retention_fine,
            cfg.retention_total,
        );
        agg.segment_dims = cfg.segment_indices();
        agg.moment_goals = cfg.moment_goals(&rules);
        agg.moment_goals.truncate(MAX_MOMENT_GOALS);
        let st = State {
            customers: Slab::default(),
            free: Vec::new(),
            max_seen: Millis::MIN,
            watermark: Millis::MIN,
            agg,
            dedup: Dedup::default(),
        };
        Shard::from_state(cfg, rules, st)
    }

    fn from_state(cfg: Arc<EngineConfig>, rules: Arc<Rules>, mut st: State) -> Shard {
        let ctx = Ctx::build(cfg, rules, &mut st.agg);
        let hasher = DefaultHashBuilder::default();
        let mut index = HashTable::with_capacity(st.customers.len());
        let mut timers = BinaryHeap::new();
        for (i, c) in st.customers.iter().enumerate() {
            if c.is_empty() {
                continue;
            }
            let h = hasher.hash_one(&*c.id);
            index.insert_unique(h, i as u32, |&j| {
                hasher.hash_one(&*st.customers[j as usize].id)
            });
            if c.timer != Millis::MAX {
                timers.push(Reverse((c.timer, i as u32)));
            }
        }
        Shard {
            ctx,
            st,
            index,
            hasher,
            timers,
            scratch: Vec::new(),
            external_watermark: false,
        }
    }

    /// Hands the watermark to the owner: events no longer move it, only
    /// [`Shard::advance_clock`] does. A task whose inputs are several Kafka partitions sets
    /// this, so its watermark is the minimum over its inputs (SPEC §3), not the largest
    /// event time of whichever partition was read furthest.
    pub fn set_external_watermark(&mut self, external: bool) {
        self.external_watermark = external;
    }

    pub fn rules(&self) -> &Arc<Rules> {
        &self.ctx.rules
    }

    pub fn config(&self) -> &Arc<EngineConfig> {
        &self.ctx.cfg
    }

    /// Swaps the rule set; it applies to events applied after this call.
    pub fn set_rules(&mut self, rules: Arc<Rules>) {
        self.ctx = Ctx::build(self.ctx.cfg.clone(), rules, &mut self.st.agg);
    }

    pub fn aggregates(&self) -> &Aggregates {
        &self.st.agg
    }

    /// Time before which arriving events are late. `Millis::MIN` before the first event.
    pub fn watermark(&self) -> Millis {
        self.st.watermark
    }

    /// Customers with state in memory.
    pub fn customers(&self) -> usize {
        self.index.len()
    }

    /// Event ids remembered for duplicate suppression.
    pub fn remembered_ids(&self) -> usize {
        self.st.dedup.len()
    }

    /// Customers with a session not yet closed.
    pub fn open_sessions(&self) -> usize {
        self.st
            .customers
            .iter()
            .filter(|c| c.open().is_some())
            .count()
    }

    /// Applies one event.
    pub fn apply(&mut self, ev: &Event<'_>) -> Result<Applied, ApplyError> {
        let ts = ev.ts;
        let late = ts < self.st.watermark;
        let idx = self.slot_for(&ev.customer_id);
        let in_session = match self.st.customers[idx].open() {
            None => !late,
            Some(open) => {
                let inside = !late || (open[0].ts <= ts && ts <= open[open.len() - 1].ts);
                let cfg = &self.ctx.cfg;
                // The joined session is part of the buffer: only a buffer at the limit can
                // hold one at the limit, and the walk costs the session's length per event.
                if inside
                    && open.len() >= cfg.session_max_events
                    && joined_session_len(open, ts, cfg) >= cfg.session_max_events
                {
                    self.st.agg.counters.rejected_too_many_events += 1;
                    return Err(ApplyError::TooManyEvents {
                        customer_id: ev.customer_id.to_string(),
                        limit: self.ctx.cfg.session_max_events,
                    });
                }
                inside
            }
        };
        if let (Some(id), true) = (ev.event_id.as_deref(), self.ctx.cfg.dedup_horizon > 0) {
            let cfg = &self.ctx.cfg;
            let (horizon, max_ids) = (cfg.dedup_horizon, cfg.dedup_max_ids);
            let seen = self.st.max_seen;
            if self
                .st
                .dedup
                .check(&ev.customer_id, id, ts, seen, horizon, max_ids)
            {
                self.st.agg.counters.duplicates += 1;
                if self.st.customers[idx].is_empty() {
                    self.st.evict(idx, &mut self.index, &self.hasher);
                }
                return Err(ApplyError::Duplicate {
                    customer_id: ev.customer_id.to_string(),
                    event_id: id.to_string(),
                });
            }
        }

        let counters = &mut self.st.agg.counters;
        counters.events += 1;
        counters.late += late as u64;
        let rule_tp = self.ctx.rules.classify(ev);
        let tp = match rule_tp {
            Some(r) => {
                counters.classified += 1;
                let id = self.ctx.tp_id[r as usize];
                let score = self.ctx.rules.score(r, ev);
                let nps = score.is_some()
                    && self
                        .ctx
                        .rules
                        .touchpoint(r)
                        .score
                        .as_ref()
                        .is_some_and(|s| s.nps);
                if late {
                    // Phase dwell samples before the watermark are final when a late event
                    // arrives, whether or not a timer has written them yet: so what a late
                    // event may revise depends on the watermark, not on when timers ran.
                    self.st.settle_dwell(&self.ctx, idx);
                }
                self.st.journey_event(
                    &self.ctx,
                    idx,
                    Hit {
                        ev,
                        rule_tp: r,
                        tp_id: id,
                        in_session,
                        late,
                    },
                    &mut self.timers,
                );
                // After the journey has taken the event: its segments are the journey's.
                let c = &self.st.customers[idx];
                let key = SegKey::of(&self.ctx, c.journey_at(ts, self.ctx.cfg.journey_window));
                let fresh = self.st.agg.timeline.update(ts, |b| {
                    b.with_segments(key.as_slice(), |b| {
                        let t = b.touchpoint(id);
                        t.visits += 1;
                        if let Some(s) = score {
                            t.score.add(s, nps);
                        }
                    })
                });
                if !fresh {
                    self.st.agg.counters.expired += 1;
                }
                self.st.agg.totals.touchpoint(id).visits += 1;
                id
            }
            None => {
                counters.unclassified += 1;
                UNCLASSIFIED
            }
        };

        if in_session {
            let p = Point { ts, tp };
            let c = &mut self.st.customers[idx];
            let open = c.open_mut();
            // After every buffered event of the same time: ties keep arrival order.
            let pos = open.partition_point(|q| q.ts <= ts);
            open.insert(pos, p);
            if pos == 0 {
                // A new earliest event can only bring the first session's end forward.
                let cfg = &self.ctx.cfg;
                let hint = ts.saturating_add(
                    cfg.session_gap
                        .saturating_add(1)
                        .min(cfg.session_max_duration),
                );
                schedule(&mut self.timers, c, idx, hint);
            }
        }

        let c = &self.st.customers[idx];
        if c.is_empty() {
            self.st.evict(idx, &mut self.index, &self.hasher);
        }
        if ts > self.st.max_seen {
            self.st.max_seen = ts;
            self.st.agg.max_event_time = Some(ts);
            let wm = ts.saturating_sub(self.ctx.cfg.allowed_lateness);
            if !self.external_watermark && wm > self.st.watermark {
                self.st.watermark = wm;
                self.fire_timers();
            }
        }
        Ok(Applied {
            touchpoint: rule_tp,
            late,
        })
    }

    /// Moves the watermark to `now − allowed_lateness` if that is later: `now` is the event
    /// time the owner has proven (the minimum over a task's inputs), or in live mode a time
    /// derived from the wall clock so sessions close while traffic pauses.
    pub fn advance_clock(&mut self, now: Millis) {
        let wm = now.saturating_sub(self.ctx.cfg.allowed_lateness);
        if wm > self.st.watermark {
            self.st.watermark = wm;
            self.fire_timers();
        }
    }

    /// End of input: closes every session and finalises every journey. Later events are late.
    pub fn flush(&mut self) {
        self.st.watermark = Millis::MAX;
        self.fire_timers();
    }

    fn fire_timers(&mut self) {
        let wm = self.st.watermark;
        while let Some(&Reverse((hint, idx))) = self.timers.peek() {
            if hint > wm {
                break;
            }
            self.timers.pop();
            let c = &mut self.st.customers[idx as usize];
            if c.timer != hint {
                continue;
            }
            c.timer = Millis::MAX;
            self.st.process(&self.ctx, idx as usize, &mut self.scratch);
            let c = &mut self.st.customers[idx as usize];
            if c.is_empty() {
                self.st.agg.counters.customers_evicted += 1;
                self.st.evict(idx as usize, &mut self.index, &self.hasher);
            } else {
                let next = next_deadline(&self.ctx, c, wm);
                schedule(&mut self.timers, c, idx as usize, next);
            }
        }
    }

    fn find(&self, id: &str) -> Option<usize> {
        let h = self.hasher.hash_one(id);
        let customers = &self.st.customers;
        self.index
            .find(h, |&i| &*customers[i as usize].id == id)
            .map(|&i| i as usize)
    }

    fn slot_for(&mut self, id: &str) -> usize {
        if let Some(i) = self.find(id) {
            return i;
        }
        let c = Customer {
            id: id.into(),
            timer: Millis::MAX,
            ..Default::default()
        };
        let idx = match self.st.free.pop() {
            Some(i) => {
                self.st.customers[i as usize] = c;
                i as usize
            }
            None => {
                self.st.customers.push(c);
                self.st.customers.len() - 1
            }
        };
        let customers = &self.st.customers;
        let hasher = &self.hasher;
        self.index
            .insert_unique(hasher.hash_one(id), idx as u32, |&j| {
                hasher.hash_one(&*customers[j as usize].id)
            });
        idx
    }

    /// One customer's live journey and open session.
    pub fn customer(&self, id: &str) -> Option<CustomerView> {
        let c = &self.st.customers[self.find(id)?];
        let agg = &self.st.agg;
        let cfg = &self.ctx.cfg;
        let journey = |j: &Journey| JourneyView {
            started_at: j.t0,
            window_ends_at: j.t0.saturating_add(cfg.journey_window),
            furthest_phase: agg.phases.name(j.furthest as u16).to_string(),
            phases: (0..j.n_phases as usize)
                .filter(|&p| j.slots[p] != UNSEEN)
                .map(|p| (agg.phases.name(p as u16).to_string(), j.slots[p]))
                .collect(),
            breakdown: agg
                .dimensions
                .iter()
                .enumerate()
                .map(|(d, dim)| {
                    (
                        dim.name.clone(),
                        dim.values.name(dim_value(j, d)).to_string(),
                    )
                })
                .collect(),
        };
        Some(CustomerView {
            customer_id: c.id.to_string(),
            journeys: c.journeys().map(journey).collect(),
            open_events: c
                .open()
                .map(|o| {
                    o.iter()
                        .map(|p| PointView {
                            ts: p.ts,
                            touchpoint: (p.tp != UNCLASSIFIED)
                                .then(|| agg.touchpoints.name(p.tp).to_string()),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// Serialises the full state (customers, sessions, journeys, aggregates, watermark).
    pub fn snapshot(&self) -> Vec<u8> {
        crate::snapshot::encode(&self.st)
    }

    /// Rebuilds a shard from [`Shard::snapshot`] output.
    pub fn restore(
        bytes: &[u8],
        cfg: Arc<EngineConfig>,
        rules: Arc<Rules>,
    ) -> Result<Shard, crate::snapshot::SnapshotError> {
        let (version, payload) = crate::snapshot::open(bytes)?;
        let st: State = match version {
            5 => crate::snapshot::payload::<v5::State>(payload)?.into(),
            _ => crate::snapshot::payload(payload)?,
        };
        let dims = cfg.dimension_names();
        let have: Vec<&str> = st.agg.dimensions.iter().map(|d| d.name.as_str()).collect();
        if have != dims.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err(crate::snapshot::SnapshotError::Incompatible(format!(
                "snapshot has breakdown dimensions [{}], the configuration [{}]",
                have.join(", "),
                dims.join(", ")
            )));
        }
        if st.agg.segment_dims != cfg.segment_indices() {
            let names = |ix: &[usize]| {
                ix.iter()
                    .filter_map(|&i| st.agg.dimensions.get(i).map(|d| d.name.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(crate::snapshot::SnapshotError::Incompatible(format!(
                "snapshot has segment dimensions [{}], the configuration [{}]",
                names(&st.agg.segment_dims),
                cfg.segment_dimensions.join(", ")
            )));
        }
        if !cfg.goal_phases.is_empty() && st.agg.moment_goals != cfg.goal_phases {
            return Err(crate::snapshot::SnapshotError::Incompatible(format!(
                "snapshot tracks moments for goal phases [{}], the configuration [{}]",
                st.agg.moment_goals.join(", "),
                cfg.goal_phases.join(", ")
            )));
        }
        Ok(Shard::from_state(cfg, rules, st))
    }
}

impl Ctx {
    fn build(cfg: Arc<EngineConfig>, rules: Arc<Rules>, agg: &mut Aggregates) -> Ctx {
        let tp_id: Vec<u16> = rules
            .touchpoints()
            .iter()
            .map(|t| agg.touchpoints.intern(&t.name, usize::MAX).unwrap_or(0))
            .collect();
        let phase_id: Vec<u8> = rules
            .phases()
            .iter()
            .map(|p| agg.phases.intern(p, usize::MAX).unwrap_or(0) as u8)
            .collect();
        let mut rank = vec![NO_RANK; agg.phases.len()];
        for (r, &id) in phase_id.iter().enumerate() {
            rank[id as usize] = r as u8;
        }
        let mut goal = vec![false; agg.touchpoints.len()];
        for (t, &id) in rules.touchpoints().iter().zip(&tp_id) {
            goal[id as usize] = t.goal;
        }
        let breakdown_paths = cfg
            .breakdowns
            .iter()
            .map(|p| p.split('.').map(Box::from).collect())
            .collect();
        let seg_dims = agg.segment_dims.clone();
        let goal_rank = agg
            .moment_goals
            .iter()
            .map(|g| {
                rules
                    .phases()
                    .iter()
                    .position(|p| p == g)
                    .map_or(NO_RANK, |r| r as u8)
            })
            .collect();
        Ctx {
            cfg,
            rules,
            tp_id,
            phase_id,
            rank,
            goal,
            breakdown_paths,
            seg_dims,
            goal_rank,
        }
    }

    fn rank(&self, phase: usize) -> u8 {
        self.rank.get(phase).copied().unwrap_or(NO_RANK)
    }

    /// Whether a journey whose furthest phase is `furthest` has reached goal `k`.
    fn converted(&self, furthest: u8, k: usize) -> bool {
        let (r, g) = (self.rank(furthest as usize), self.goal_rank[k]);
        r != NO_RANK && g != NO_RANK && r >= g
    }

    /// Sets the converted bit of every goal's touched-set from the journey's furthest phase.
    fn mark_converted(&self, j: &mut Journey) {
        let n_goals = self.goal_rank.len();
        for k in 0..n_goals {
            let bits = j.moments(k, n_goals) & !CONVERTED;
            let conv = if self.converted(j.furthest, k) {
                CONVERTED
            } else {
                0
            };
            j.set_moments(k, n_goals, bits | conv);
        }
    }
}

fn schedule(
    timers: &mut BinaryHeap<Reverse<(Millis, u32)>>,
    c: &mut Customer,
    idx: usize,
    at: Millis,
) {
    if at < c.timer {
        c.timer = at;
        timers.push(Reverse((at, idx as u32)));
    }
}

/// End of the first buffered session: `(start, index past its last event)`.
fn first_session(open: &[Point], cfg: &EngineConfig) -> (Millis, usize) {
    let s = open[0].ts;
    let mut i = 1;
    while i < open.len()
        && open[i].ts - open[i - 1].ts <= cfg.session_gap
        && open[i].ts - s < cfg.session_max_duration
    {
        i += 1;
    }
    (s, i)
}

/// Events already buffered in the session that an event at `ts` would join: the session of
/// the buffer with the new event inserted after every buffered event of the same time, cut
/// exactly as [`first_session`] cuts. Sessions that are complete but still wait for the
/// watermark do not count (SPEC §3: limits per session count the session an event joins).
fn joined_session_len(open: &[Point], ts: Millis, cfg: &EngineConfig) -> usize {
    let pos = open.partition_point(|q| q.ts <= ts);
    // Times of the buffer with the new event at `pos`.
    let at = |i: usize| match i.cmp(&pos) {
        std::cmp::Ordering::Less => open[i].ts,
        std::cmp::Ordering::Equal => ts,
        std::cmp::Ordering::Greater => open[i - 1].ts,
    };
    let n = open.len() + 1;
    // A gap longer than `session.gap` always starts a session: walk from the last one before
    // `pos`, so the cost is the length of the run around the new event, not of the buffer.
    let mut start = pos;
    while start > 0 && at(start) - at(start - 1) <= cfg.session_gap {
        start -= 1;
    }
    let mut session_start = start;
    let mut i = start + 1;
    while i < n {
        let split = at(i) - at(i - 1) > cfg.session_gap
            || at(i) - at(session_start) >= cfg.session_max_duration;
        if split {
            if i > pos {
                break;
            }
            session_start = i;
        }
        i += 1;
    }
    // `i` is one past the joined session's last event; the new event is not counted.
    i - session_start - 1
}

/// Earliest watermark at which something is due for this customer.
fn next_deadline(ctx: &Ctx, c: &Customer, wm: Millis) -> Millis {
    let cfg = &ctx.cfg;
    let mut d = Millis::MAX;
    if let Some(open) = c.open() {
        let (s, end) = first_session(open, cfg);
        let last = open[end - 1].ts;
        d = d
            .min(last.saturating_add(cfg.session_gap).saturating_add(1))
            .min(s.saturating_add(cfg.session_max_duration));
    }
    for j in c.journeys() {
        let end = j.t0.saturating_add(cfg.journey_window).saturating_add(1);
        // Past its end, a journey waits for its open session, whose deadline is above.
        if end > wm {
            d = d.min(end);
        }
        // A move happens at some phase's time: with none of them ahead, nothing is due (most
        // firings; the walk below sorts the phases).
        let due = |t: Millis| t != UNSEEN && t > j.dwell_done && t >= wm;
        if !j.slots[..j.n_phases as usize].iter().any(|&t| due(t)) {
            continue;
        }
        phase_moves(ctx, j, |t, _, _| {
            if due(t) {
                d = d.min(t.saturating_add(1));
            }
        });
    }
    d
}

/// Calls `f(time, phase, dwell)` for every move of the journey's furthest phase, in time order.
fn phase_moves(ctx: &Ctx, j: &Journey, mut f: impl FnMut(Millis, u8, Millis)) {
    let mut seen = [(0i64, 0u8, 0u8); 16];
    let mut n = 0;
    for p in 0..j.n_phases as usize {
        let r = ctx.rank(p);
        if j.slots[p] != UNSEEN && r != NO_RANK && n < seen.len() {
            seen[n] = (j.slots[p], r, p as u8);
            n += 1;
        }
    }
    let seen = &mut seen[..n];
    // Ties in time: the higher phase first, so a simultaneous pair records no zero dwell.
    seen.sort_unstable_by_key(|&(t, r, _)| (t, Reverse(r)));
    let mut cur: Option<(u8, u8, Millis)> = None;
    for &(t, r, p) in seen.iter() {
        match cur {
            None => cur = Some((r, p, t)),
            Some((cr, cp, entered)) if r > cr => {
                f(t, cp, t - entered);
                cur = Some((r, p, t));
            }
            _ => {}
        }
    }
}

fn dim_value(j: &Journey, d: usize) -> u16 {
    let v = j.slots[j.n_phases as usize + d];
    if v == UNSEEN {
        NONE_VALUE
    } else {
        (v & 0xffff) as u16
    }
}

fn contribution(ctx: &Ctx, j: &Journey, n_dims: usize) -> Contribution {
    let mut dims = [0u16; MAX_DIMS];
    for (d, slot) in dims.iter_mut().enumerate().take(n_dims) {
        *slot = dim_value(j, d);
    }
    let mut moments = [0u64; MAX_MOMENT_GOALS];
    let n_goals = ctx.goal_rank.len();
    for (k, m) in moments.iter_mut().enumerate().take(n_goals) {
        *m = j.moments(k, n_goals);
    }
    Contribution {
        t0: j.t0,
        furthest: j.furthest,
        dims,
        moments,
    }
}

fn contribute(agg: &mut Aggregates, c: &Contribution, n_dims: usize, delta: i64) {
    let mut key = [NONE_VALUE; MAX_SEGMENT_DIMS];
    let n = agg.segment_dims.len().min(MAX_SEGMENT_DIMS);
    for (k, &d) in agg.segment_dims.iter().take(n).enumerate() {
        key[k] = c.dims.get(d).copied().unwrap_or(NONE_VALUE);
    }
    let n_goals = agg.moment_goals.len().min(MAX_MOMENT_GOALS);
    agg.timeline.update(c.t0, |b| {
        b.with_segments(&key[..n], |b| {
            b.phase(c.furthest).furthest += delta;
            for (d, &v) in c.dims[..n_dims].iter().enumerate() {
                *b.breakdown(d, v, c.furthest) += delta;
            }
            for (k, &set) in c.moments[..n_goals].iter().enumerate() {
                let conv = delta * (set & CONVERTED != 0) as i64;
                let m = b.moments(k);
                m.journeys += delta;
                m.converted += conv;
                let mut bits = set & !CONVERTED;
                while bits != 0 {
                    let id = bits.trailing_zeros() as u16;
                    bits &= bits - 1;
                    let t = m.touch(id);
                    t[0] += delta;
                    t[1] += conv;
                }
            }
        })
    });
}

/// The time a journey reached the phase of rank `goal` (under furthest-phase semantics: its
/// first event in that phase or a later one); [`UNSEEN`] if it has not.
fn reach_time(ctx: &Ctx, j: &Journey, goal: u8) -> Millis {
    (0..j.n_phases as usize)
        .filter(|&p| {
            let r = ctx.rank(p);
            r != NO_RANK && r >= goal
        })
        .map(|p| j.slots[p])
        .min()
        .unwrap_or(UNSEEN)
}

/// Adds the touchpoints of one closed session to the touched-sets of their journeys
/// (docs/semantics.md §6 "Moments of truth"): each classified event goes to the journey whose
/// window holds it, and counts for a goal only if it happened before the journey reached the
/// goal phase. Decided when the session closes, as every session figure is: an event arriving
/// after that (late) does not revise it. A touchpoint new to a touched-set is added to the
/// journey's moments figures at once, in the bucket of its `t0`, for its segments.
fn record_touches(
    ctx: &Ctx,
    agg: &mut Aggregates,
    past: &mut [Journey],
    cur: &mut Option<Journey>,
    points: &[Point],
) {
    let n_goals = ctx.goal_rank.len();
    if n_goals == 0 {
        return;
    }
    let w = ctx.cfg.journey_window;
    for p in points.iter().filter(|p| p.tp < MOMENT_TOUCHPOINTS) {
        let j = match past.iter_mut().find(|j| j.holds(p.ts, w)) {
            Some(j) => j,
            None => match cur.as_mut().filter(|j| j.holds(p.ts, w)) {
                Some(j) => j,
                None => continue,
            },
        };
        for k in 0..n_goals {
            let g = ctx.goal_rank[k];
            let set = j.moments(k, n_goals);
            let bit = 1u64 << p.tp;
            if g == NO_RANK || set & bit != 0 || p.ts >= reach_time(ctx, j, g) {
                continue;
            }
            j.set_moments(k, n_goals, set | bit);
            let conv = (set & CONVERTED != 0) as i64;
            let key = SegKey::of(ctx, Some(j));
            agg.timeline.update(j.t0, |b| {
                b.with_segments(key.as_slice(), |b| {
                    let t = b.moments(k).touch(p.tp);
                    t[0] += 1;
                    t[1] += conv;
                })
            });
        }
    }
}

/// Longest breakdown value kept, in bytes (docs/semantics.md §9): the count of values is
/// capped by `breakdown.max_values`, and this caps their size, so one producer sending
/// megabyte values cannot make every shard hold megabytes per value.
pub const MAX_VALUE_BYTES: usize = 256;

/// `text` cut to at most [`MAX_VALUE_BYTES`] at a character boundary, ending in `…` when cut.
fn clip_value(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_VALUE_BYTES {
        return text.into();
    }
    let mut end = MAX_VALUE_BYTES - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end]).into()
}

/// A breakdown value as text: strings as they are, numbers and booleans printed.
fn value_text(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.as_str().into()),
        Value::Number(n) => Some(n.to_string().into()),
        Value::Bool(b) => Some(if *b { "true" } else { "false" }.into()),
        _ => None,
    }
}

impl State {
    fn evict(&mut self, idx: usize, index: &mut HashTable<u32>, hasher: &DefaultHashBuilder) {
        let c = &mut self.customers[idx];
        let h = hasher.hash_one(&*c.id);
        if let Ok(e) = index.find_entry(h, |&i| i as usize == idx) {
            e.remove();
        }
        *c = Customer {
            timer: Millis::MAX,
            ..Default::default()
        };
        self.free.push(idx as u32);
    }

    /// Routes a classified event to the customer's journey and updates its funnel contribution.
    /// Writes the customer's phase dwell samples that the watermark has passed.
    fn settle_dwell(&mut self, ctx: &Ctx, idx: usize) {
        let wm = self.watermark;
        let c = &mut self.customers[idx];
        for p in c.rare.iter_mut().flat_map(|r| r.past.iter_mut()) {
            emit_phase_dwell(ctx, &mut self.agg, p, wm);
        }
        if let Some(j) = c.journey.as_mut() {
            emit_phase_dwell(ctx, &mut self.agg, j, wm);
        }
    }

    fn journey_event(
        &mut self,
        ctx: &Ctx,
        idx: usize,
        hit: Hit<'_, '_>,
        timers: &mut BinaryHeap<Reverse<(Millis, u32)>>,
    ) {
        let Hit {
            ev,
            rule_tp,
            tp_id,
            in_session,
            late,
        } = hit;
        let ts = ev.ts;
        let w = ctx.cfg.journey_window;
        let pid = ctx.phase_id[ctx.rules.touchpoint(rule_tp).phase];
        let n_dims = self.agg.dimensions.len();
        let n_phases = self.agg.phases.len() as u8;
        let wm = self.watermark;
        let c = &mut self.customers[idx];

        let in_past = c.past().iter().position(|p| p.holds(ts, w));
        let j: &mut Journey = if let Some(i) = in_past {
            &mut c
                .rare
                .as_deref_mut()
                .expect("a past journey is in the rare part")
                .past[i]
        } else {
            // Between or before past journeys' windows: no journey can take it.
            let before_prev = c.past().last().is_some_and(|p| ts < p.t0);
            let start_new = match &c.journey {
                None => !before_prev,
                Some(j) if ts > j.t0.saturating_add(w) => true,
                Some(j) if ts >= j.t0 => false,
                // Earlier than t0: the start moves back if every phase stays inside the window.
                Some(j) => {
                    let latest = (0..j.n_phases as usize)
                        .map(|p| j.slots[p])
                        .filter(|&t| t != UNSEEN)
                        .max();
                    if before_prev || latest.is_some_and(|l| l > ts.saturating_add(w)) {
                        self.agg.counters.late_outside_journey += 1;
                        return;
                    }
                    false
                }
            };
            // A late event never creates journey state: a customer whose journey is final or
            // evicted, or who was never seen, gets a visit only (SPEC §3, semantics §5, §11).
            if (before_prev && c.journey.is_none()) || (start_new && late) {
                self.agg.counters.late_outside_journey += 1;
                return;
            }
            if start_new {
                if let Some(old) = c.journey.take() {
                    let rare = c.rare.get_or_insert_with(Default::default);
                    // Older past journeys stay while an open session or an on-time event
                    // still needs them: with a slow input holding the watermark back, a
                    // customer can be several journeys ahead of it.
                    rare.retire(ctx, &mut self.agg, wm);
                    rare.past.reserve_exact(1);
                    rare.past.push(old);
                }
                let more_goals = ctx.goal_rank.len().saturating_sub(1);
                let mut slots = vec![UNSEEN; n_phases as usize + n_dims + more_goals];
                // Touched-sets start empty.
                slots[n_phases as usize + n_dims..].fill(0);
                let mut slots = slots.into_boxed_slice();
                slots[pid as usize] = ts;
                let j = Journey {
                    t0: ts,
                    dwell_done: Millis::MIN,
                    furthest: pid,
                    n_phases,
                    slots,
                    touched: 0,
                };
                self.agg.counters.journeys_started += 1;
                reach(ctx, &mut self.agg, None, ctx.rank(pid as usize));
                if !in_session {
                    // In a session, the session's timer comes first and reschedules.
                    schedule(timers, c, idx, ts.saturating_add(w).saturating_add(1));
                }
                let j = c.journey.insert(j);
                ctx.mark_converted(j);
                let before = contribution(ctx, j, n_dims);
                set_dims(ctx, &mut self.agg, j, ev, tp_id);
                contribute(&mut self.agg, &contribution(ctx, j, n_dims), n_dims, 1);
                debug_assert_eq!(before.t0, j.t0);
                return;
            }
            c.journey
                .as_mut()
                .expect("journey exists when not starting one")
        };

        if pid >= j.n_phases {
            // Phases grow; dimensions and touched-sets move up behind them.
            let rest = j.slots.len() - j.n_phases as usize;
            let mut slots = vec![UNSEEN; n_phases as usize + rest];
            slots[..j.n_phases as usize].copy_from_slice(&j.slots[..j.n_phases as usize]);
            slots[n_phases as usize..].copy_from_slice(&j.slots[j.n_phases as usize..]);
            j.slots = slots.into_boxed_slice();
            j.n_phases = n_phases;
        }
        // Most events are no earlier than the journey's start, their phase's first time and
        // every first-touch value: they change nothing the journey counts in.
        let dims_open = (0..n_dims).any(|d| {
            let slot = j.slots[j.n_phases as usize + d];
            slot == UNSEEN || ts < slot >> 16
        });
        if ts >= j.t0 && ts >= j.slots[pid as usize] && !dims_open {
            return;
        }
        let before = contribution(ctx, j, n_dims);
        let moved_start = ts < j.t0;
        if moved_start {
            j.t0 = ts;
        }
        let new_phase_time = ts < j.slots[pid as usize];
        if new_phase_time {
            j.slots[pid as usize] = ts;
            let mut best = (ctx.rank(j.furthest as usize), j.furthest);
            for p in 0..j.n_phases as usize {
                let r = ctx.rank(p);
                if j.slots[p] != UNSEEN && r != NO_RANK && (best.0 == NO_RANK || r > best.0) {
                    best = (r, p as u8);
                }
            }
            if best.1 != j.furthest {
                reach(
                    ctx,
                    &mut self.agg,
                    Some(ctx.rank(j.furthest as usize)),
                    best.0,
                );
            }
            j.furthest = best.1;
            ctx.mark_converted(j);
        }
        set_dims(ctx, &mut self.agg, j, ev, tp_id);
        let after = contribution(ctx, j, n_dims);
        if after != before {
            contribute(&mut self.agg, &before, n_dims, -1);
            contribute(&mut self.agg, &after, n_dims, 1);
        }
        if !in_session && (new_phase_time || moved_start) {
            // A phase move at or after `ts` may now be due.
            let t0 = j.t0;
            schedule(timers, c, idx, ts.saturating_add(1));
            schedule(timers, c, idx, t0.saturating_add(w).saturating_add(1));
        }
    }

    /// Closes complete sessions, writes due phase dwell, finalises journeys past their window.
    fn process(&mut self, ctx: &Ctx, idx: usize, scratch: &mut Vec<u16>) {
        let wm = self.watermark;
        let cfg = &ctx.cfg;
        let c = &mut self.customers[idx];
        let journey = &mut c.journey;
        if let Some(Rare { past, open }) = c.rare.as_deref_mut() {
            let mut closed = 0;
            while closed < open.len() {
                let rest = &open[closed..];
                let (s, end) = first_session(rest, cfg);
                let last = rest[end - 1].ts;
                if !(wm > last.saturating_add(cfg.session_gap)
                    || wm >= s.saturating_add(cfg.session_max_duration))
                {
                    break;
                }
                // The session's journey: the one its first classified event belongs to.
                let at = rest[..end]
                    .iter()
                    .find(|p| p.tp != UNCLASSIFIED)
                    .map_or(s, |p| p.ts);
                record_touches(ctx, &mut self.agg, past, journey, &rest[..end]);
                let j = journey_at(past, journey.as_ref(), at, cfg.journey_window);
                let key = SegKey::of(ctx, j);
                close_session(ctx, &mut self.agg, &rest[..end], scratch, key);
                closed += end;
            }
            open.drain(..closed);
            if open.is_empty() {
                *open = Vec::new();
            }
        }
        let w = cfg.journey_window;
        // A journey stays while a session that began in its window is open, so that the
        // session's figures go to the journey's segments when it closes.
        let open_from = c.open().map_or(Millis::MAX, |o| o[0].ts);
        if let Some(rare) = c.rare.as_deref_mut().filter(|r| !r.past.is_empty()) {
            rare.retire(ctx, &mut self.agg, wm);
        }
        c.tidy();
        if let Some(j) = c.journey.as_mut() {
            emit_phase_dwell(ctx, &mut self.agg, j, wm);
            let end = j.t0.saturating_add(w);
            if wm > end && open_from > end {
                c.journey = None;
            }
        }
    }
}

/// Counts a journey as having reached the phases of ranks `(from, to]` (all up to `to` for a
/// new journey), in the cumulative totals.
fn reach(ctx: &Ctx, agg: &mut Aggregates, from: Option<u8>, to: u8) {
    if to == NO_RANK {
        return;
    }
    let start = match from {
        Some(NO_RANK) | None => 0,
        Some(r) if r >= to => return,
        Some(r) => r as usize + 1,
    };
    for r in start..=to as usize {
        agg.totals.reached(ctx.phase_id[r]);
    }
}

fn set_dims(ctx: &Ctx, agg: &mut Aggregates, j: &mut Journey, ev: &Event<'_>, tp_id: u16) {
    let base = j.n_phases as usize;
    let cap = ctx.cfg.breakdown_max_values.saturating_add(2);

    for d in 0..agg.dimensions.len() {
        let slot = j.slots[base + d];
        let cur_ts = if slot == UNSEEN {
            Millis::MAX
        } else {
            slot >> 16
        };
        // Only an earlier event replaces the value. At the same instant the event that
        // arrived first keeps it, as equal times keep their arrival order everywhere (SPEC §3).
        if ev.ts >= cur_ts {
            continue;
        }
        let text: Option<std::borrow::Cow<'_, str>> = match d {
            0 => Some(ev.source.as_ref().into()),
            1 => Some(agg.touchpoints.name(tp_id).into()),
            _ => ctx
                .breakdown_paths
                .get(d - 2)
                .and_then(|p| lookup(&ev.attributes, p))
                .and_then(value_text),
        };
        let Some(text) = text else { continue };
        let values = &mut agg.dimensions[d].values;
        let v = values
            .intern(&clip_value(&text), cap)
            .unwrap_or(OTHER_VALUE);
        j.slots[base + d] = (ev.ts << 16) | v as i64;
    }
}

fn emit_phase_dwell(ctx: &Ctx, agg: &mut Aggregates, j: &mut Journey, wm: Millis) {
    let done = j.dwell_done;
    write_phase_samples(ctx, agg, j, |t| t > done && t < wm);
    j.dwell_done = j.dwell_done.max(wm.saturating_sub(1));
}

/// Writes the journey's phase dwell and time-to-convert samples at the times `due` accepts,
/// for the total and the journey's segments.
fn write_phase_samples(ctx: &Ctx, agg: &mut Aggregates, j: &Journey, due: impl Fn(Millis) -> bool) {
    // Every sample is written at the time some phase was first seen, so a journey none of
    // whose phase times is due has nothing to write: most timer firings end here.
    let phase_times = &j.slots[..j.n_phases as usize];
    if !phase_times.iter().any(|&t| t != UNSEEN && due(t)) {
        return;
    }
    let key = SegKey::of(ctx, Some(j));
    phase_moves(ctx, j, |t, phase, dwell| {
        if due(t) {
            agg.timeline.update(t, |b| {
                b.with_segments(key.as_slice(), |b| b.phase(phase).dwell.add(dwell as u64))
            });
        }
    });
    phase_reaches(ctx, j, |t, phase, since_start| {
        if due(t) {
            agg.timeline.update(t, |b| {
                b.with_segments(key.as_slice(), |b| {
                    b.phase(phase).time_to_convert.add(since_start as u64)
                })
            });
        }
    });
}

/// Calls `f(time, phase, time since t0)` once for every phase of the current rules the
/// journey has reached, at the time it reached it: under furthest-phase semantics (SPEC §4) a
/// phase is reached when the journey is first seen in it or in any later phase, so the phases
/// before the first one seen are reached at `t0`, and a skipped phase when the journey moves
/// past it.
fn phase_reaches(ctx: &Ctx, j: &Journey, mut f: impl FnMut(Millis, u8, Millis)) {
    let mut seen = [(0i64, 0u8); 16];
    let mut n = 0;
    for p in 0..j.n_phases as usize {
        let r = ctx.rank(p);
        if j.slots[p] != UNSEEN && r != NO_RANK && n < seen.len() {
            seen[n] = (j.slots[p], r);
            n += 1;
        }
    }
    let seen = &mut seen[..n];
    seen.sort_unstable_by_key(|&(t, r)| (t, Reverse(r)));
    let mut next_rank = 0usize;
    for &(t, r) in seen.iter() {
        while next_rank <= r as usize {
            if let Some(&phase) = ctx.phase_id.get(next_rank) {
                f(t, phase, t.saturating_sub(j.t0).max(0));
            }
            next_rank += 1;
        }
    }
}

/// Writes the session figures of one complete session.
/// `key`: the segments of the session's journey.
fn close_session(
    ctx: &Ctx,
    agg: &mut Aggregates,
    points: &[Point],
    touched: &mut Vec<u16>,
    key: SegKey,
) {
    agg.counters.sessions_closed += 1;
    let last_ts = points[points.len() - 1].ts;
    let mut steps = points.iter().filter(|p| p.tp != UNCLASSIFIED);
    let Some(first) = steps.next().map(|p| p.tp) else {
        agg.timeline.update(last_ts, |b| {
            b.with_segments(key.as_slice(), |b| b.sessions += 1)
        });
        return;
    };
    let exit = points
        .iter()
        .rev()
        .find(|p| p.tp != UNCLASSIFIED)
        .map_or(first, |p| p.tp);
    let goal = |tp: u16| ctx.goal.get(tp as usize).copied().unwrap_or(false);
    touched.clear();
    touched.extend(points.iter().filter(|p| p.tp != UNCLASSIFIED).map(|p| p.tp));
    touched.sort_unstable();
    touched.dedup();
    let completed = touched.iter().any(|&t| goal(t));
    let e = agg.totals.touchpoint(exit);
    e.exits += 1;
    e.drop_offs += !completed as u64;
    for &t in touched.iter() {
        let a = agg.totals.touchpoint(t);
        a.sessions += 1;
        a.completions += goal(t) as u64;
    }
    let touched = &*touched;
    agg.timeline.update(last_ts, |b| {
        b.with_segments(key.as_slice(), |b| {
            session_figures(b, points, first, exit, touched, completed, goal)
        })
    });
    // Dwell: from each classified event to the next classified one, bucketed by the first.
    let mut prev: Option<Point> = None;
    for p in points.iter().filter(|p| p.tp != UNCLASSIFIED) {
        if let Some(q) = prev {
            let gap = (p.ts - q.ts) as u64;
            let bin = Bin::of(gap);
            agg.timeline.update(q.ts, |b| {
                b.with_segments(key.as_slice(), |b| {
                    b.touchpoint(q.tp).dwell.add_binned(gap, bin)
                })
            });
        }
        prev = Some(*p);
    }
}

/// The bucketed figures of one closed session that touched at least one touchpoint.
fn session_figures(
    b: &mut Bucket,
    points: &[Point],
    first: u16,
    exit: u16,
    touched: &[u16],
    completed: bool,
    goal: impl Fn(u16) -> bool,
) {
    b.sessions += 1;
    *b.transitions.entry((START, first)).or_default() += 1;
    let mut prev = first;
    for p in points.iter().filter(|p| p.tp != UNCLASSIFIED) {
        if p.tp != prev {
            *b.transitions.entry((prev, p.tp)).or_default() += 1;
            prev = p.tp;
        }
    }
    *b.transitions.entry((exit, EXIT)).or_default() += 1;
    let e = b.touchpoint(exit);
    e.exits += 1;
    if !completed {
        e.dropoffs += 1;
    }
    for &t in touched.iter() {
        let a = b.touchpoint(t);
        a.sessions += 1;
        if goal(t) {
            a.completions += 1;
        }
    }
}

/// The state layout of snapshot format version 5, read and converted on restore: a customer
/// kept at most one past journey. Only the customer record changed since.
mod v5 {
    use super::{Aggregates, CompactString, Dedup, Journey, Millis, Point, Slab};
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub(super) struct State {
        customers: Slab<Customer>,
        free: Vec<u32>,
        max_seen: Millis,
        watermark: Millis,
        agg: Aggregates,
        dedup: Dedup,
    }

    #[derive(Deserialize)]
    struct Customer {
        id: CompactString,
        journey: Option<Journey>,
        rare: Option<Box<Rare>>,
        timer: Millis,
    }

    #[derive(Deserialize)]
    struct Rare {
        prev: Option<Journey>,
        open: Vec<Point>,
    }

    impl From<State> for super::State {
        fn from(st: State) -> Self {
            let customers = st
                .customers
                .into_iter()
                .map(|c| super::Customer {
                    id: c.id,
                    journey: c.journey,
                    rare: c.rare.map(|r| {
                        Box::new(super::Rare {
                            past: r.prev.into_iter().collect(),
                            open: r.open,
                        })
                    }),
                    timer: c.timer,
                })
                .collect();
            super::State {
                customers,
                free: st.free,
                max_seen: st.max_seen,
                watermark: st.watermark,
                agg: st.agg,
                dedup: st.dedup,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory per tracked customer (SPEC §9: ≤ 200 B, docs/benchmarks.md): the record of a
    /// customer without an open session. The first goal's touched-set (moments of truth)
    /// costs 8 of these bytes; its journey's slot array is unchanged.
    #[test]
    fn a_customer_record_stays_small() {
        assert_eq!(std::mem::size_of::<Journey>(), 48);
        assert_eq!(std::mem::size_of::<Customer>(), 88);
    }
}
