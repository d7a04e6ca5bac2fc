//! Mergeable aggregates in minute and hour buckets with bounded retention.
//!
//! A shard writes into its own [`Aggregates`] by dense ids (no string hashing on the hot path);
//! readers turn the buckets of a time range into name-keyed summaries that merge exactly.

use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::sketch::Sketch;
use crate::time::{Millis, HOUR, MINUTE};

/// Transition endpoint for a session's start.
pub const START: u16 = u16::MAX - 1;
/// Transition endpoint for a session's exit.
pub const EXIT: u16 = u16::MAX;

/// Append-only string ↔ id table. Ids stay valid across rule reloads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "Vec<String>", into = "Vec<String>")]
pub struct Interner {
    names: Vec<String>,
    ids: FxHashMap<String, u16>,
}

impl From<Vec<String>> for Interner {
    fn from(names: Vec<String>) -> Self {
        let ids = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u16))
            .collect();
        Interner { names, ids }
    }
}

impl From<Interner> for Vec<String> {
    fn from(i: Interner) -> Self {
        i.names
    }
}

impl Interner {
    pub fn get(&self, name: &str) -> Option<u16> {
        self.ids.get(name).copied()
    }

    /// The id of `name`, adding it unless the table already holds `cap` names.
    pub fn intern(&mut self, name: &str, cap: usize) -> Option<u16> {
        if let Some(id) = self.ids.get(name) {
            return Some(*id);
        }
        if self.names.len() >= cap {
            return None;
        }
        let id = self.names.len() as u16;
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        Some(id)
    }

    pub fn name(&self, id: u16) -> &str {
        &self.names[id as usize]
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Experience scores of one touchpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreAgg {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub promoters: u64,
    pub passives: u64,
    pub detractors: u64,
}

impl ScoreAgg {
    pub fn add(&mut self, v: f64, nps: bool) {
        if self.count == 0 {
            self.min = v;
            self.max = v;
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.count += 1;
        self.sum += v;
        if nps {
            if v >= 9.0 {
                self.promoters += 1;
            } else if v >= 7.0 {
                self.passives += 1;
            } else {
                self.detractors += 1;
            }
        }
    }

    pub fn merge(&mut self, o: &ScoreAgg) {
        if o.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = o.clone();
            return;
        }
        self.count += o.count;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.promoters += o.promoters;
        self.passives += o.passives;
        self.detractors += o.detractors;
    }
}

/// Per-touchpoint figures of one bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TouchpointAgg {
    pub visits: u64,
    pub sessions: u64,
    pub exits: u64,
    pub dropoffs: u64,
    pub completions: u64,
    pub dwell: Sketch,
    pub score: ScoreAgg,
}

impl TouchpointAgg {
    /// Nothing recorded: every minute bucket holds every touchpoint, most of them idle.
    #[inline]
    pub fn is_empty(&self) -> bool {
        (self.visits | self.sessions | self.exits | self.dropoffs | self.completions) == 0
            && self.dwell.count() == 0
            && self.score.count == 0
    }

    pub fn merge(&mut self, o: &TouchpointAgg) {
        self.visits += o.visits;
        self.sessions += o.sessions;
        self.exits += o.exits;
        self.dropoffs += o.dropoffs;
        self.completions += o.completions;
        self.dwell.merge(&o.dwell);
        self.score.merge(&o.score);
    }
}

/// A bucket's figures by touchpoint id, held only for the touchpoints something was recorded
/// for, ascending by id.
///
/// Sparse because a minute bucket of one task sees few of the rule set's touchpoints: a dense
/// vector held every id up to the highest one seen, 160 bytes each, and with one task per
/// Kafka partition most of the aggregates' memory was idle entries (docs/benchmarks.md,
/// "Tasks"). Serialized as the dense vector was (an empty entry for every id in between, up to
/// the highest held), so snapshots and partials keep their format.
#[derive(Debug, Clone, Default)]
pub struct TouchpointFigures {
    entries: Vec<(u16, TouchpointAgg)>,
}

impl TouchpointFigures {
    /// The figures of touchpoint `id`, created empty if needed.
    #[inline]
    pub fn get_or_insert(&mut self, id: u16) -> &mut TouchpointAgg {
        let i = match self.entries.binary_search_by_key(&id, |e| e.0) {
            Ok(i) => i,
            Err(i) => {
                // One more at a time: most minute buckets hold one to three touchpoints, and
                // a vector's first growth to four entries would be mostly idle.
                self.entries.reserve_exact(1);
                self.entries.insert(i, (id, TouchpointAgg::default()));
                i
            }
        };
        &mut self.entries[i].1
    }

    /// The figures of touchpoint `id`, if any were recorded.
    pub fn get(&self, id: u16) -> Option<&TouchpointAgg> {
        self.entries
            .binary_search_by_key(&id, |e| e.0)
            .ok()
            .map(|i| &self.entries[i].1)
    }

    /// `(id, figures)` of every touchpoint held, ascending by id; an entry may be empty.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &TouchpointAgg)> + '_ {
        self.entries.iter().map(|(id, t)| (*id, t))
    }

    /// Touchpoints held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn non_empty(&self) -> impl Iterator<Item = (u16, &TouchpointAgg)> + '_ {
        self.iter().filter(|(_, t)| !t.is_empty())
    }
}

impl IntoIterator for TouchpointFigures {
    type Item = (u16, TouchpointAgg);
    type IntoIter = std::vec::IntoIter<(u16, TouchpointAgg)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

/// Equal when the same touchpoints have the same figures; an empty entry equals none.
impl PartialEq for TouchpointFigures {
    fn eq(&self, o: &TouchpointFigures) -> bool {
        self.non_empty().eq(o.non_empty())
    }
}

impl Serialize for TouchpointFigures {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let len = self.non_empty().last().map_or(0, |(id, _)| id as usize + 1);
        let empty = TouchpointAgg::default();
        let mut held = self.non_empty().peekable();
        s.collect_seq((0..len).map(|i| match held.peek() {
            Some(&(id, t)) if id as usize == i => {
                held.next();
                t
            }
            _ => &empty,
        }))
    }
}

impl<'de> Deserialize<'de> for TouchpointFigures {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let dense = Vec::<TouchpointAgg>::deserialize(d)?;
        if dense.len() > u16::MAX as usize + 1 {
            return Err(serde::de::Error::custom("more touchpoints than ids"));
        }
        Ok(TouchpointFigures {
            entries: dense
                .into_iter()
                .enumerate()
                .filter(|(_, t)| !t.is_empty())
                .map(|(i, t)| (i as u16, t))
                .collect(),
        })
    }
}

/// Per-phase figures of one bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseAgg {
    /// Journeys starting in this bucket whose furthest phase is this one.
    pub furthest: i64,
    /// Time spent in this phase before moving on, bucketed by the move.
    pub dwell: Sketch,
    /// Time to convert (SPEC §4, docs/semantics.md §4): milliseconds from the journey's start
    /// `t0` to reaching this phase (under furthest-phase semantics, reaching it or a later one),
    /// one sample per journey and phase, bucketed by the time the phase was reached.
    pub time_to_convert: Sketch,
}

impl PhaseAgg {
    /// Adds `o` into `self`: exact for the counts, the sketches merge as sketches do.
    pub fn merge(&mut self, o: &PhaseAgg) {
        self.furthest += o.furthest;
        self.dwell.merge(&o.dwell);
        self.time_to_convert.merge(&o.time_to_convert);
    }
}

/// Moments of truth of one goal phase, over the journeys that start in one bucket
/// (SPEC §4, docs/semantics.md §6 "Moments of truth"): every journey counts once in
/// `journeys`, and once in `converted` if it reached the goal phase; `touched[id]` counts the
/// journeys whose touched-set holds touchpoint `id` (touched before the journey reached the
/// goal phase), `[journeys, of which converted]`. Counts are revised like the funnel's when a
/// journey changes, so they are signed; a merge adds them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MomentsAgg {
    pub journeys: i64,
    pub converted: i64,
    /// By touchpoint id: `[touched, touched and converted]`.
    pub touched: Vec<[i64; 2]>,
}

impl MomentsAgg {
    /// Adds `o` into `self`, exactly.
    pub fn merge(&mut self, o: &MomentsAgg) {
        self.journeys += o.journeys;
        self.converted += o.converted;
        for (i, t) in o.touched.iter().enumerate() {
            let m = self.touch(i as u16);
            m[0] += t[0];
            m[1] += t[1];
        }
    }

    /// The counts of touchpoint `id`, created if needed.
    #[inline]
    pub fn touch(&mut self, id: u16) -> &mut [i64; 2] {
        let i = id as usize;
        if i >= self.touched.len() {
            self.touched.resize(i + 1, [0, 0]);
        }
        &mut self.touched[i]
    }
}

/// Most goal phases whose moments of truth are tracked (`moments.goal_phases`): each costs
/// 8 bytes per tracked journey.
pub const MAX_MOMENT_GOALS: usize = 4;
/// Touchpoint ids below this one have a bit in a journey's touched-set; touchpoints with a
/// higher id (the 64th distinct touchpoint name a shard has seen, and later ones) are not
/// tracked for moments of truth. Bit 63 of the set says whether the journey is counted as
/// converted.
pub const MOMENT_TOUCHPOINTS: u16 = 63;

/// Most segment dimensions (`breakdown.segment_dimensions`): each multiplies the memory of
/// the touchpoint aggregates by up to its number of values.
pub const MAX_SEGMENT_DIMS: usize = 2;

/// Everything recorded for one time bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub touchpoints: TouchpointFigures,
    pub phases: Vec<PhaseAgg>,
    pub transitions: FxHashMap<(u16, u16), u64>,
    /// Per breakdown dimension: value id → journeys by furthest phase id.
    pub breakdowns: Vec<FxHashMap<u16, Vec<i64>>>,
    /// Closed sessions, classified or not.
    pub sessions: u64,
    /// Per segment dimension (by its position in `breakdown.segment_dimensions`): value id →
    /// the figures of the journeys with that first-touch value, in the same shape (their own
    /// `segments` stay empty). For every figure, the values of one dimension sum to this
    /// bucket's own.
    pub segments: Vec<FxHashMap<u16, Bucket>>,
    /// Moments of truth of the journeys starting in this bucket, by goal (position in
    /// [`Aggregates::moment_goals`]).
    pub moments: Vec<MomentsAgg>,
}

impl Bucket {
    /// Adds `o` into `self`: the merge of two partials of the same time span, segments
    /// included.
    pub fn merge(&mut self, o: &Bucket) {
        self.merge_dims(o, |_| true);
        for (k, values) in o.segments.iter().enumerate() {
            for (v, b) in values {
                self.segment(k, *v).merge(b);
            }
        }
    }

    /// The figures of value `value` of segment dimension `k`, created if needed.
    pub fn segment(&mut self, k: usize, value: u16) -> &mut Bucket {
        if k >= self.segments.len() {
            self.segments.resize_with(k + 1, Default::default);
        }
        self.segments[k].entry(value).or_default()
    }

    /// The figures of value `value` of segment dimension `k`, if any were recorded.
    pub fn segment_of(&self, k: usize, value: u16) -> Option<&Bucket> {
        self.segments.get(k).and_then(|m| m.get(&value))
    }

    /// Applies `f` to this bucket and to the bucket of each segment in `key` (value id by
    /// segment dimension, as in `breakdown.segment_dimensions`): how a figure is recorded for
    /// the total and for the segments its journey belongs to.
    #[inline]
    pub fn with_segments(&mut self, key: &[u16], mut f: impl FnMut(&mut Bucket)) {
        f(self);
        for (k, &v) in key.iter().enumerate() {
            f(self.segment(k, v));
        }
    }

    /// [`Bucket::merge`] without the segments, carrying only the breakdown dimensions `keep`
    /// accepts (they cost the most to merge).
    pub fn merge_dims(&mut self, o: &Bucket, keep: impl Fn(usize) -> bool) {
        self.sessions += o.sessions;
        for (id, t) in o.touchpoints.iter() {
            if !t.is_empty() {
                self.touchpoint(id).merge(t);
            }
        }
        for (i, p) in o.phases.iter().enumerate() {
            self.phase(i as u8).merge(p);
        }
        for (k, n) in &o.transitions {
            *self.transitions.entry(*k).or_default() += n;
        }
        for (k, m) in o.moments.iter().enumerate() {
            self.moments(k).merge(m);
        }
        for (d, values) in o.breakdowns.iter().enumerate().filter(|(d, _)| keep(*d)) {
            for (v, row) in values {
                for (p, n) in row.iter().enumerate() {
                    *self.breakdown(d, *v, p as u8) += n;
                }
            }
        }
    }

    /// The figures of touchpoint `id`, created if needed.
    #[inline]
    pub fn touchpoint(&mut self, id: u16) -> &mut TouchpointAgg {
        self.touchpoints.get_or_insert(id)
    }

    #[inline]
    pub fn phase(&mut self, id: u8) -> &mut PhaseAgg {
        let i = id as usize;
        if i >= self.phases.len() {
            // Exactly: a minute bucket mostly sees the first phase (journeys starting), and
            // four entries of 136 bytes would be mostly idle.
            self.phases.reserve_exact(i + 1 - self.phases.len());
            self.phases.resize_with(i + 1, Default::default);
        }
        &mut self.phases[i]
    }

    /// The moments of truth of goal `k` (position in [`Aggregates::moment_goals`]).
    #[inline]
    pub fn moments(&mut self, k: usize) -> &mut MomentsAgg {
        if k >= self.moments.len() {
            self.moments.resize_with(k + 1, Default::default);
        }
        &mut self.moments[k]
    }

    pub fn breakdown(&mut self, dim: usize, value: u16, phase: u8) -> &mut i64 {
        if dim >= self.breakdowns.len() {
            self.breakdowns.resize_with(dim + 1, Default::default);
        }
        let row = self.breakdowns[dim].entry(value).or_default();
        if phase as usize >= row.len() {
            row.resize(phase as usize + 1, 0);
        }
        &mut row[phase as usize]
    }
}

/// Buckets of one resolution, newest last, at most `capacity` of them.
///
/// Buckets are shared behind `Arc`s and copied on write, so cloning a ring for readers costs
/// a reference count per bucket, and only buckets written since then are ever copied. Most
/// writes go to the newest minute, so a publish copies about one bucket per resolution.
///
/// A step nothing was written to holds no bucket: a task of a Kafka partition sees a few
/// events a minute or fewer, and an empty bucket per minute in between cost 170 bytes and an
/// allocation each (with 180 tasks, `journeyd replay` used 368 MB instead of 135 MB).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ring {
    step: Millis,
    capacity: usize,
    /// Bucket index (time / step) of the front.
    start: i64,
    /// Serialized as before empty steps were left out: an empty bucket per empty step.
    #[serde(with = "steps")]
    buckets: VecDeque<Option<Arc<Bucket>>>,
}

/// An empty step is equal to one holding an empty bucket.
impl PartialEq for Ring {
    fn eq(&self, o: &Ring) -> bool {
        let empty = Bucket::default();
        self.step == o.step
            && self.capacity == o.capacity
            && self.start == o.start
            && self.buckets.len() == o.buckets.len()
            && self
                .buckets
                .iter()
                .zip(&o.buckets)
                .all(|(a, b)| a.as_deref().unwrap_or(&empty) == b.as_deref().unwrap_or(&empty))
    }
}

/// Serde of [`Ring`]'s steps in the format of snapshots v5 and partials v3: a sequence of
/// buckets, an empty one for an empty step.
mod steps {
    use super::*;

    pub fn serialize<S: serde::Serializer>(
        steps: &VecDeque<Option<Arc<Bucket>>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let empty = Bucket::default();
        s.collect_seq(steps.iter().map(|b| b.as_deref().unwrap_or(&empty)))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<VecDeque<Option<Arc<Bucket>>>, D::Error> {
        let buckets = VecDeque::<Bucket>::deserialize(d)?;
        let empty = Bucket::default();
        Ok(buckets
            .into_iter()
            .map(|b| (b != empty).then(|| Arc::new(b)))
            .collect())
    }
}

impl Ring {
    pub fn new(step: Millis, retention: Millis) -> Ring {
        let capacity = (retention / step).max(1) as usize;
        Ring {
            step,
            capacity,
            start: 0,
            buckets: VecDeque::new(),
        }
    }

    /// The bucket holding time `t`, created if needed; `None` if `t` is older than retention.
    pub fn slot(&mut self, t: Millis) -> Option<&mut Bucket> {
        let idx = t.div_euclid(self.step);
        let len = self.buckets.len() as i64;
        let cap = self.capacity as i64;
        if len == 0 {
            self.start = idx;
            self.buckets.push_back(None);
        } else if idx < self.start {
            if self.start + len - idx > cap {
                return None;
            }
            for _ in idx..self.start {
                self.buckets.push_front(None);
            }
            self.start = idx;
        } else if idx >= self.start + len {
            let needed = idx - self.start + 1;
            if needed - cap >= len {
                self.buckets.clear();
                self.start = idx;
                self.buckets.push_back(None);
            } else {
                if needed > cap {
                    let drop = needed - cap;
                    self.buckets.drain(..drop as usize);
                    self.start += drop;
                }
                // One resize, not a push per empty step: a task of a sparse partition jumps
                // many minutes between events.
                let len = (idx - self.start + 1) as usize;
                if self.buckets.len() < len {
                    self.buckets.resize(len, None);
                }
            }
        }
        self.buckets
            .get_mut((idx - self.start) as usize)
            .map(|b| Arc::make_mut(b.get_or_insert_with(Arc::default)))
    }

    /// The bucket starting at time `t` (a multiple of the step), if retained.
    pub fn get(&self, t: Millis) -> Option<&Bucket> {
        let idx = t.div_euclid(self.step) - self.start;
        if idx < 0 {
            return None;
        }
        self.buckets.get(idx as usize).and_then(|b| b.as_deref())
    }

    /// Start time of the oldest retained bucket.
    pub fn first_time(&self) -> Option<Millis> {
        (!self.buckets.is_empty()).then_some(self.start * self.step)
    }

    /// Oldest time this ring can still hold: older buckets have slid out of retention.
    pub fn horizon(&self) -> Option<Millis> {
        self.end_time()
            .map(|end| end - self.capacity as i64 * self.step)
    }

    /// End time of the newest retained bucket.
    pub fn end_time(&self) -> Option<Millis> {
        (!self.buckets.is_empty()).then_some((self.start + self.buckets.len() as i64) * self.step)
    }

    pub fn step(&self) -> Millis {
        self.step
    }

    /// How much time the ring spans at most (its retention), in milliseconds.
    pub fn retention(&self) -> Millis {
        self.capacity as Millis * self.step
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Minute buckets for recent data and hour buckets for the long tail.
///
/// Writes go to the minute bucket only; an hour is rolled up from its minutes once event time
/// has moved [`Timeline::seal_delay`] past its end ("sealed"). A late write into a sealed hour
/// goes to both resolutions. This halves bucket writes on the hot path; readers take a sealed
/// hour from the hour bucket and an unsealed one from its minutes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub fine: Ring,
    pub coarse: Ring,
    /// Hours before this time are sealed: their hour buckets are complete. `Millis::MAX` when
    /// the minute retention is too short to roll up (every write then goes to both).
    sealed_until: Millis,
    seal_delay: Millis,
}

impl Timeline {
    pub fn new(fine_retention: Millis, total_retention: Millis) -> Timeline {
        // Rolling up needs an hour's minutes to outlive the hour by the seal delay.
        let seal_delay = (fine_retention - HOUR - MINUTE).min(HOUR);
        Timeline {
            fine: Ring::new(MINUTE, fine_retention),
            coarse: Ring::new(HOUR, total_retention),
            sealed_until: if seal_delay > 0 {
                Millis::MIN
            } else {
                Millis::MAX
            },
            seal_delay,
        }
    }

    /// How far event time must pass an hour's end before the hour is rolled up.
    pub fn seal_delay(&self) -> Millis {
        self.seal_delay
    }

    /// Applies `f` to the bucket(s) of `t`. Returns false if `t` has expired.
    #[inline]
    pub fn update(&mut self, t: Millis, mut f: impl FnMut(&mut Bucket)) -> bool {
        if t < self.sealed_until {
            let mut applied = false;
            if let Some(b) = self.fine.slot(t) {
                f(b);
                applied = true;
            }
            if let Some(b) = self.coarse.slot(t) {
                f(b);
                applied = true;
            }
            return applied;
        }
        if self.fine.end_time().is_some_and(|end| t >= end) {
            self.seal(t.div_euclid(MINUTE) * MINUTE + MINUTE - self.seal_delay);
        }
        if let Some(b) = self.fine.slot(t) {
            f(b);
            return true;
        }
        // Older than the minute retention: its minutes are gone, so the hour takes it directly
        // (the roll-up only ever adds minutes that exist).
        match self.coarse.slot(t) {
            Some(b) => {
                f(b);
                true
            }
            None => false,
        }
    }

    /// Rolls up every unsealed hour that ends at or before `line`. Runs before the minute
    /// ring advances, so the minutes of those hours are all still there.
    fn seal(&mut self, line: Millis) {
        let until = line.div_euclid(HOUR) * HOUR;
        if until <= self.sealed_until {
            return;
        }
        let (Some(first), Some(end)) = (self.fine.first_time(), self.fine.end_time()) else {
            self.sealed_until = until;
            return;
        };
        // Only the minutes the ring holds: a task of a sparse partition seals many hours at
        // once, most of them without a minute bucket.
        let mut h = self.sealed_until.max(first.div_euclid(HOUR) * HOUR);
        while h < until.min(end) {
            let (fine, coarse) = (&self.fine, &mut self.coarse);
            let mut minutes = (h.max(first)..(h + HOUR).min(end))
                .step_by(MINUTE as usize)
                .filter_map(|m| fine.get(m))
                .peekable();
            if minutes.peek().is_some() {
                if let Some(slot) = coarse.slot(h) {
                    minutes.for_each(|b| slot.merge(b));
                }
            }
            h += HOUR;
        }
        self.sealed_until = until;
    }

    /// Visits each bucket covering `[from, to)` once: whole sealed hours from the hour
    /// buckets, the rest from minute buckets; where minute buckets have expired, the hour
    /// buckets whose start lies in the range.
    pub fn for_each(&self, from: Millis, to: Millis, mut f: impl FnMut(&Bucket)) {
        // Only where buckets are held: a range reaching the ends of time (a flushed replay's
        // watermark, `to` far ahead) costs the buckets held, not a walk over every minute.
        let held = |r: &Ring| r.first_time().zip(r.end_time());
        let (first, last) = match (held(&self.fine), held(&self.coarse)) {
            (None, None) => return,
            (Some(a), None) | (None, Some(a)) => a,
            (Some(a), Some(b)) => (a.0.min(b.0), a.1.max(b.1)),
        };
        let mut m = ceil_to(from, MINUTE).max(first);
        let end = ceil_to(to, MINUTE).min(last);
        let fine_start = self.fine.horizon().unwrap_or(Millis::MAX);
        while m < end {
            if m.rem_euclid(HOUR) == 0 && m.saturating_add(HOUR) <= end && m < self.sealed_until {
                if let Some(b) = self.coarse.get(m) {
                    f(b);
                }
                m += HOUR;
            } else if m >= fine_start {
                if let Some(b) = self.fine.get(m) {
                    f(b);
                }
                m = m.saturating_add(MINUTE);
            } else {
                let h = m.div_euclid(HOUR) * HOUR;
                if h >= from {
                    if let Some(b) = self.coarse.get(h) {
                        f(b);
                    }
                }
                m = h.saturating_add(HOUR);
            }
        }
    }

    /// The hour-aligned span of event time held, if any.
    /// Start of the oldest hour that retention still keeps complete, epoch milliseconds:
    /// `retention.total` back from the newest bucket's end, rounded up to the hour (docs/
    /// semantics.md §10). Figures of earlier times are gone or were never kept; `None` before
    /// the first write.
    pub fn retained_from(&self) -> Option<Millis> {
        let end = self.fine.end_time().max(self.coarse.end_time())?;
        Some(ceil_to(end.saturating_sub(self.coarse.retention()), HOUR))
    }

    pub fn span(&self) -> Option<(Millis, Millis)> {
        let hour_floor = |t: Millis| t.div_euclid(HOUR) * HOUR;
        let fine = self
            .fine
            .first_time()
            .zip(self.fine.end_time())
            .map(|(a, b)| (hour_floor(a), ceil_to(b, HOUR)));
        let coarse = self.coarse.first_time().zip(self.coarse.end_time());
        match (fine, coarse) {
            (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
            (x, y) => x.or(y),
        }
    }
}

fn ceil_to(t: Millis, step: Millis) -> Millis {
    let f = t.div_euclid(step).saturating_mul(step);
    if f == t {
        t
    } else {
        f.saturating_add(step)
    }
}

/// Shard-wide counts, not bucketed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub events: u64,
    pub classified: u64,
    pub unclassified: u64,
    pub late: u64,
    /// Late events that fit no retained journey and so reached no funnel.
    pub late_outside_journey: u64,
    /// Events whose bucket had already expired.
    pub expired: u64,
    pub sessions_closed: u64,
    pub journeys_started: u64,
    pub customers_evicted: u64,
    pub rejected_too_many_events: u64,
    /// Events dropped because their `event_id` was seen before within the dedup horizon.
    pub duplicates: u64,
}

impl Counters {
    pub fn merge(&mut self, o: &Counters) {
        self.events += o.events;
        self.classified += o.classified;
        self.unclassified += o.unclassified;
        self.late += o.late;
        self.late_outside_journey += o.late_outside_journey;
        self.expired += o.expired;
        self.sessions_closed += o.sessions_closed;
        self.journeys_started += o.journeys_started;
        self.customers_evicted += o.customers_evicted;
        self.rejected_too_many_events += o.rejected_too_many_events;
        self.duplicates += o.duplicates;
    }
}

/// Cumulative figures of one touchpoint since the shard started: never expire, only grow, so
/// they can be exported as Prometheus counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TouchpointTotals {
    pub visits: u64,
    pub sessions: u64,
    pub exits: u64,
    pub drop_offs: u64,
    pub completions: u64,
}

/// Cumulative per-touchpoint and per-phase figures, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub touchpoints: Vec<TouchpointTotals>,
    /// By phase id: journeys that reached the phase (or a later one).
    pub phase_reached: Vec<u64>,
}

impl Totals {
    #[inline]
    pub fn touchpoint(&mut self, id: u16) -> &mut TouchpointTotals {
        let i = id as usize;
        if i >= self.touchpoints.len() {
            self.touchpoints.resize_with(i + 1, Default::default);
        }
        &mut self.touchpoints[i]
    }

    pub fn reached(&mut self, phase: u8) {
        let i = phase as usize;
        if i >= self.phase_reached.len() {
            self.phase_reached.resize(i + 1, 0);
        }
        self.phase_reached[i] += 1;
    }
}

/// One breakdown dimension and the values seen for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dimension {
    pub name: String,
    pub values: Interner,
}

/// Value id of "the journey has no value for this dimension".
pub const NONE_VALUE: u16 = 0;
/// Value id of "more distinct values than the cap".
pub const OTHER_VALUE: u16 = 1;
pub const NONE_LABEL: &str = "(none)";
pub const OTHER_LABEL: &str = "other";

/// A shard's partial aggregates: what the API merges across shards and instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aggregates {
    pub touchpoints: Interner,
    pub phases: Interner,
    pub dimensions: Vec<Dimension>,
    /// The segment dimensions (`breakdown.segment_dimensions`), as indices into `dimensions`,
    /// in the order of [`Bucket::segments`].
    pub segment_dims: Vec<usize>,
    /// The goal phases whose moments of truth are tracked, in the order of
    /// [`Bucket::moments`] (`moments.goal_phases`, or derived from the rules when the shard
    /// was created: [`crate::EngineConfig::moment_goals`]).
    pub moment_goals: Vec<String>,
    pub timeline: Timeline,
    pub counters: Counters,
    pub totals: Totals,
    /// Largest event time applied, for relative time ranges.
    pub max_event_time: Option<Millis>,
}

impl Aggregates {
    /// The hour-aligned span of event time these aggregates hold, if any.
    pub fn time_span(&self) -> Option<(Millis, Millis)> {
        self.timeline.span()
    }

    /// Start of the oldest hour retention keeps complete (see [`Timeline::retained_from`]):
    /// a query range that begins earlier is truncated, epoch milliseconds.
    pub fn retained_from(&self) -> Option<Millis> {
        self.timeline.retained_from()
    }

    pub fn new(
        dimensions: &[String],
        fine_retention: Millis,
        total_retention: Millis,
    ) -> Aggregates {
        Aggregates {
            touchpoints: Interner::default(),
            phases: Interner::default(),
            dimensions: dimensions
                .iter()
                .map(|name| Dimension {
                    name: name.clone(),
                    values: Interner::from(vec![NONE_LABEL.to_string(), OTHER_LABEL.to_string()]),
                })
                .collect(),
            segment_dims: Vec::new(),
            moment_goals: Vec::new(),
            timeline: Timeline::new(fine_retention, total_retention),
            counters: Counters::default(),
            totals: Totals::default(),
            max_event_time: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps nothing was written to hold no bucket, and a ring still serialises as it did when
    /// they held empty ones (snapshots v5, partials v3), and reads back equal.
    #[test]
    fn empty_steps_hold_no_bucket_and_serialise_as_empty_buckets() {
        let mut ring = Ring::new(MINUTE, 10 * MINUTE);
        for t in [0, 5 * MINUTE, 2 * MINUTE] {
            ring.slot(t).unwrap().sessions += 1;
        }
        let held = ring.buckets.iter().filter(|b| b.is_some()).count();
        assert_eq!((ring.buckets.len(), held), (6, 3));
        assert!(ring.get(MINUTE).is_none());
        assert_eq!(ring.get(5 * MINUTE).map(|b| b.sessions), Some(1));

        #[derive(Serialize)]
        struct Before {
            step: Millis,
            capacity: usize,
            start: i64,
            buckets: VecDeque<Arc<Bucket>>,
        }
        let before = Before {
            step: MINUTE,
            capacity: 10,
            start: 0,
            buckets: (0..6)
                .map(|m| {
                    let sessions = u64::from(matches!(m, 0 | 2 | 5));
                    Arc::new(Bucket {
                        sessions,
                        ..Bucket::default()
                    })
                })
                .collect(),
        };
        let bytes = bincode::serialize(&ring).unwrap();
        assert_eq!(bytes, bincode::serialize(&before).unwrap());
        let back: Ring = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back, ring);
        assert_eq!(back.buckets.iter().filter(|b| b.is_some()).count(), 3);
    }

    /// A bucket holds only the touchpoints written to, and serialises them as the dense vector
    /// it held before (snapshots v5, partials v3): an empty entry for every id in between.
    #[test]
    fn touchpoints_are_sparse_and_serialise_dense() {
        let mut b = Bucket::default();
        for id in [7, 0, 3, 7] {
            b.touchpoint(id).visits += 1;
        }
        b.touchpoint(3).dwell.add(40);
        assert_eq!(b.touchpoints.len(), 3);
        let ids: Vec<u16> = b.touchpoints.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, [0, 3, 7]);

        let mut dense = vec![TouchpointAgg::default(); 8];
        dense[0].visits = 1;
        dense[3].visits = 1;
        dense[3].dwell.add(40);
        dense[7].visits = 2;
        let bytes = bincode::serialize(&b.touchpoints).unwrap();
        assert_eq!(bytes, bincode::serialize(&dense).unwrap());
        let back: TouchpointFigures = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back, b.touchpoints);
        assert_eq!(back.len(), 3, "the empty entries in between are not held");
        assert_eq!(back.get(7).map(|t| t.visits), Some(2));
        assert!(back.get(5).is_none());

        // An entry created but left empty neither counts for equality nor is written.
        let mut idle = b.touchpoints.clone();
        idle.get_or_insert(12);
        assert_eq!(idle, b.touchpoints);
        assert_eq!(bincode::serialize(&idle).unwrap(), bytes);
    }
    use crate::time::DAY;
    use proptest::prelude::*;

    #[test]
    fn ring_is_bounded_and_drops_expired() {
        let mut r = Ring::new(MINUTE, 10 * MINUTE);
        r.slot(100 * MINUTE).unwrap().sessions = 1;
        r.slot(95 * MINUTE).unwrap().sessions = 2;
        assert_eq!(r.len(), 6);
        assert!(r.slot(85 * MINUTE).is_none(), "older than retention");
        r.slot(104 * MINUTE + 59_999).unwrap().sessions = 3;
        assert_eq!(r.len(), 10);
        r.slot(109 * MINUTE).unwrap();
        assert_eq!(r.len(), 10);
        assert!(r.get(95 * MINUTE).is_none(), "slid out");
        assert_eq!(r.get(100 * MINUTE).unwrap().sessions, 1);
        assert_eq!(r.get(104 * MINUTE).unwrap().sessions, 3);
        // A jump far ahead keeps memory bounded.
        r.slot(1_000_000 * MINUTE).unwrap();
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn range_uses_hours_inside_and_minutes_at_edges() {
        let mut t = Timeline::new(2 * DAY, 90 * DAY);
        let base = 1_000 * DAY;
        for m in 0..180 {
            t.update(base + m * MINUTE, |b| b.sessions += 1);
        }
        let count = |from, to| {
            let mut n = 0;
            t.for_each(from, to, |b| n += b.sessions);
            n
        };
        assert_eq!(count(base, base + 180 * MINUTE), 180);
        assert_eq!(count(base + 30 * MINUTE, base + 150 * MINUTE), 120);
        assert_eq!(count(base + 30 * MINUTE + 1, base + 150 * MINUTE), 119);
        assert_eq!(count(base - DAY, base + DAY), 180);
    }

    #[test]
    fn expired_minutes_fall_back_to_hours() {
        let mut t = Timeline::new(HOUR, 90 * DAY);
        let base = 1_000 * DAY;
        for m in 0..(5 * 60) {
            t.update(base + m * MINUTE, |b| b.sessions += 1);
        }
        let mut n = 0;
        // Minute buckets before the last hour are gone: the partial first hour is left out,
        // the partial hour at the end (start inside the range) is counted whole.
        t.for_each(base + 30 * MINUTE, base + 90 * MINUTE, |b| n += b.sessions);
        assert_eq!(n, 60);
    }

    /// Writes at mostly increasing times with stragglers, some older than minute retention.
    fn writes() -> impl Strategy<Value = Vec<Millis>> {
        proptest::collection::vec((0i64..40, 0i64..(6 * HOUR), any::<bool>()), 1..400).prop_map(
            |steps| {
                let mut now = 1_000 * DAY;
                steps
                    .into_iter()
                    .map(|(advance, back, late)| {
                        now += advance * MINUTE;
                        if late {
                            now - back
                        } else {
                            now
                        }
                    })
                    .collect()
            },
        )
    }

    proptest! {
        /// Rolling minutes up into hours loses and doubles nothing: every whole-hour range
        /// counts exactly the writes inside it, whether its hours are sealed or not.
        #[test]
        fn roll_up_preserves_every_write(
            ts in writes(),
            fine_hours in 1i64..5,
            range in (0i64..60, 1i64..60),
        ) {
            let mut t = Timeline::new(fine_hours * HOUR, 90 * DAY);
            for &w in &ts {
                prop_assert!(t.update(w, |b| b.sessions += 1));
            }
            let base = (1_000 * DAY).div_euclid(HOUR) * HOUR - 6 * HOUR;
            let (from, to) = (base + range.0 * HOUR, base + (range.0 + range.1) * HOUR);
            let mut got = 0;
            t.for_each(from, to, |b| got += b.sessions);
            let want = ts.iter().filter(|&&w| w >= from && w < to).count() as u64;
            prop_assert_eq!(got, want);
        }

        /// A range reaching the ends of time (a flushed replay's watermark, `to` far ahead)
        /// counts every write, without overflowing or walking every minute up to it.
        #[test]
        fn ranges_to_the_ends_of_time_count_every_write(ts in writes(), fine_hours in 1i64..5) {
            let mut t = Timeline::new(fine_hours * HOUR, 90 * DAY);
            for &w in &ts {
                t.update(w, |b| b.sessions += 1);
            }
            for (from, to) in [(Millis::MIN, Millis::MAX), (0, Millis::MAX - 1), (Millis::MIN, 4_000 * DAY)] {
                let mut got = 0;
                t.for_each(from, to, |b| got += b.sessions);
                prop_assert_eq!(got, ts.len() as u64, "[{}, {})", from, to);
            }
        }

        /// Inside the minute retention, any minute-aligned range is exact.
        #[test]
        fn minute_ranges_are_exact_within_retention(
            ts in writes(),
            range in (0i64..(60 * 60), 1i64..(60 * 30)),
        ) {
            let mut t = Timeline::new(30 * DAY, 90 * DAY);
            for &w in &ts {
                t.update(w, |b| b.sessions += 1);
            }
            let base = 1_000 * DAY - 6 * HOUR;
            let (from, to) = (base + range.0 * MINUTE, base + (range.0 + range.1) * MINUTE);
            let mut got = 0;
            t.for_each(from, to, |b| got += b.sessions);
            let want = ts.iter().filter(|&&w| w >= from && w < to).count() as u64;
            prop_assert_eq!(got, want);
        }
    }
}
