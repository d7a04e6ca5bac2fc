//! Touchpoint and phase rules: a TOML rules file, validated in full, compiled into a classifier.
//!
//! Classification dispatches on the event name first (a hash lookup), then tests the few
//! candidate touchpoints in file order; regexes are compiled once and nothing allocates per event.

use std::fmt;

use regex::Regex;
use rustc_hash::FxHashMap;
use serde_json::Value;
use toml::Value as TomlValue;

use crate::event::Event;

/// The phases used when a rules file names none.
pub const DEFAULT_PHASES: [&str; 5] = [
    "awareness",
    "consideration",
    "decision",
    "retention",
    "advocacy",
];

/// At most this many phases: journeys keep one timestamp per phase.
pub const MAX_PHASES: usize = 16;
/// At most this many touchpoints, so an index fits in `u16` with room for markers.
pub const MAX_TOUCHPOINTS: usize = 4096;

const TOP_KEYS: &[&str] = &["phases", "touchpoint"];
const TOUCHPOINT_KEYS: &[&str] = &[
    "name",
    "phase",
    "description",
    "channel",
    "moment_of_truth",
    "goal",
    "score",
    "nps",
    "source",
    "event",
    "where",
];
const OPERATORS: &[&str] = &[
    "eq",
    "ne",
    "in",
    "not_in",
    "prefix",
    "suffix",
    "contains",
    "not_contains",
    "regex",
    "not_regex",
    "exists",
    "gt",
    "gte",
    "lt",
    "lte",
];

/// Every problem found in a rules file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RulesError {
    pub problems: Vec<String>,
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(f, "{n} problem{} in rules:", if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

/// A touchpoint as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct Touchpoint {
    pub name: String,
    /// Index into [`Rules::phases`].
    pub phase: usize,
    pub description: Option<String>,
    pub channel: Option<String>,
    pub moment_of_truth: bool,
    /// Reaching a goal touchpoint completes a session.
    pub goal: bool,
    pub score: Option<ScoreSpec>,
}

/// Where a touchpoint's experience score is read from.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreSpec {
    pub path: String,
    segments: Vec<Box<str>>,
    /// 0–10 scores: count promoters, passives and detractors and report NPS.
    pub nps: bool,
}

/// A compiled rule set. Cheap to share behind an `Arc`; replaced whole on reload.
#[derive(Debug)]
pub struct Rules {
    phases: Vec<String>,
    touchpoints: Vec<Touchpoint>,
    matchers: Vec<Matcher>,
    by_event: FxHashMap<Box<str>, Vec<u16>>,
    any_event: Vec<u16>,
    /// Every distinct attribute path used by a condition, split at dots.
    paths: Vec<Vec<Box<str>>>,
}

#[derive(Debug)]
struct Matcher {
    /// Empty: any source.
    sources: Vec<Box<str>>,
    /// Non-empty only for touchpoints outside the exact-name dispatch.
    globs: Vec<Box<str>>,
    conds: Vec<Cond>,
}

#[derive(Debug)]
struct Cond {
    /// Index into [`Rules::paths`]: each distinct path is looked up once per event.
    path: usize,
    op: Op,
}

/// Attribute values already looked up while classifying one event.
struct Lookups<'v> {
    slots: [Option<Option<&'v Value>>; LOOKUP_SLOTS],
}

/// Distinct condition paths beyond this many are looked up without caching.
const LOOKUP_SLOTS: usize = 16;

/// One attribute condition. The negations (`ne`, `not_in`, `not_contains`, `not_regex`) hold
/// exactly when their positive form does not, so a missing attribute satisfies them, as
/// PostHog's "is not" / "does not contain" filters do.
#[derive(Debug)]
enum Op {
    Eq(Value),
    Not(Box<Op>),
    In(Vec<Value>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Contains(Box<str>),
    Regex(Regex),
    Exists(bool),
    Gt(f64),
    Gte(f64),
    Lt(f64),
    Lte(f64),
}

impl Rules {
    /// Parses and validates a rules file, reporting every problem at once.
    pub fn from_toml(text: &str) -> Result<Rules, RulesError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| RulesError {
            problems: vec![toml_message(&e)],
        })?;
        compile(&table)
    }

    pub fn phases(&self) -> &[String] {
        &self.phases
    }

    pub fn touchpoints(&self) -> &[Touchpoint] {
        &self.touchpoints
    }

    pub fn touchpoint(&self, idx: u16) -> &Touchpoint {
        &self.touchpoints[idx as usize]
    }

    /// The first touchpoint in file order whose match holds, or `None` for unclassified.
    pub fn classify(&self, ev: &Event<'_>) -> Option<u16> {
        let exact: &[u16] = self.by_event.get(&*ev.name).map_or(&[], |v| v.as_slice());
        let any = self.any_event.as_slice();
        let mut seen = Lookups {
            slots: [None; LOOKUP_SLOTS],
        };
        let (mut i, mut j) = (0, 0);
        // Merge the two ascending candidate lists so file order decides.
        loop {
            let next = match (exact.get(i), any.get(j)) {
                (Some(&a), Some(&b)) if a < b => {
                    i += 1;
                    a
                }
                (_, Some(&b)) => {
                    j += 1;
                    b
                }
                (Some(&a), None) => {
                    i += 1;
                    a
                }
                (None, None) => return None,
            };
            if self.matchers[next as usize].matches(ev, &self.paths, &mut seen) {
                return Some(next);
            }
        }
    }

    /// Every attribute path these rules read, split at dots: the paths of the `where`
    /// conditions, then the touchpoints' `score` paths (possibly repeating one). What a
    /// decoder must keep of an event's attributes ([`crate::projection::Projection`]).
    pub fn attribute_paths(&self) -> impl Iterator<Item = &[Box<str>]> + '_ {
        self.paths.iter().map(Vec::as_slice).chain(
            self.touchpoints
                .iter()
                .filter_map(|t| t.score.as_ref().map(|s| s.segments.as_slice())),
        )
    }

    /// The experience score of an event classified as `tp`, if configured and numeric.
    pub fn score(&self, tp: u16, ev: &Event<'_>) -> Option<f64> {
        let spec = self.touchpoints[tp as usize].score.as_ref()?;
        as_number(ev.attribute(&spec.segments)?).filter(|v| v.is_finite())
    }
}

impl Matcher {
    fn matches<'v>(
        &self,
        ev: &'v Event<'_>,
        paths: &[Vec<Box<str>>],
        seen: &mut Lookups<'v>,
    ) -> bool {
        if !self.sources.is_empty() && !self.sources.iter().any(|s| **s == *ev.source) {
            return false;
        }
        if !self.globs.is_empty() && !self.globs.iter().any(|g| glob_match(g, &ev.name)) {
            return false;
        }
        self.conds.iter().all(|c| {
            let v = match seen.slots.get_mut(c.path) {
                Some(Some(v)) => *v,
                Some(slot) => *slot.insert(ev.attribute(&paths[c.path])),
                None => ev.attribute(&paths[c.path]),
            };
            c.op.holds(v)
        })
    }
}

impl Op {
    fn holds(&self, v: Option<&Value>) -> bool {
        match self {
            Op::Not(op) => !op.holds(v),
            Op::Exists(want) => v.is_some_and(|v| !v.is_null()) == *want,
            Op::Eq(want) => v.is_some_and(|v| json_eq(v, want)),
            Op::In(set) => v.is_some_and(|v| set.iter().any(|w| json_eq(v, w))),
            Op::Prefix(p) => v
                .and_then(Value::as_str)
                .is_some_and(|s| s.starts_with(&**p)),
            Op::Suffix(p) => v.and_then(Value::as_str).is_some_and(|s| s.ends_with(&**p)),
            Op::Contains(p) => v.and_then(Value::as_str).is_some_and(|s| s.contains(&**p)),
            Op::Regex(r) => v.and_then(Value::as_str).is_some_and(|s| r.is_match(s)),
            Op::Gt(x) => v.and_then(as_number).is_some_and(|n| n > *x),
            Op::Gte(x) => v.and_then(as_number).is_some_and(|n| n >= *x),
            Op::Lt(x) => v.and_then(as_number).is_some_and(|n| n < *x),
            Op::Lte(x) => v.and_then(as_number).is_some_and(|n| n <= *x),
        }
    }
}

/// Numbers compare by exact value (`5` equals `5.0`, but `9007199254740993` does not equal
/// `9007199254740992` although both round to the same `f64`); other types must match exactly.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number_eq(x, y),
        _ => a == b,
    }
}

/// An integer as `i128` (every JSON integer serde_json keeps exactly: `i64` or `u64`).
fn exact_int(n: &serde_json::Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

fn number_eq(x: &serde_json::Number, y: &serde_json::Number) -> bool {
    match (exact_int(x), exact_int(y)) {
        (Some(a), Some(b)) => a == b,
        // An integer against a float: equal only if the float is that very integer.
        (Some(i), None) => y.as_f64().is_some_and(|f| float_is_int(f, i)),
        (None, Some(i)) => x.as_f64().is_some_and(|f| float_is_int(f, i)),
        (None, None) => x.as_f64() == y.as_f64(),
    }
}

/// `f` is exactly the integer `i` (`2^53 + 1` is not the float `2^53`).
fn float_is_int(f: f64, i: i128) -> bool {
    // Every float of magnitude below 2^100 that has no fraction converts to i128 exactly.
    f.fract() == 0.0 && f.abs() < 1e30 && f as i128 == i
}

/// A number, or a string holding one in JSON number syntax (form fields often arrive as
/// strings), with a finite value. `"Infinity"`, `"inf"`, `"NaN"`, `"0x10"`, `" 5"`, `"+5"`
/// and `"1e999"` are not numbers (SPEC §2).
fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64().filter(|f| f.is_finite()),
        Value::String(s) if is_json_number(s) => s.parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

/// RFC 8259 §6: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, nothing around it.
fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// Largest compiled form of one `regex`/`not_regex` condition, in bytes (the regex crate's
/// default is 10 MiB). URL and name patterns compile to a few KiB; a counted repetition such
/// as `[a-z]{100000}` compiles to megabytes and costs seconds per match, so a rules file of
/// a hundred of them held gigabytes. Such a pattern is refused with the others' problems.
pub const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// `*` matches any run of characters, `?` exactly one.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        // A `*` in the pattern is always a wildcard, even against a `*` in the text.
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            if p[pi] == b'?' {
                // Step over a whole UTF-8 character.
                ti += utf8_len(t[ti]);
            } else {
                ti += 1;
            }
            pi += 1;
        } else if let Some((sp, st)) = star {
            let next = st + utf8_len(t[st]);
            star = Some((sp, next));
            pi = sp + 1;
            ti = next;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

fn utf8_len(first: u8) -> usize {
    match first {
        0..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?'])
}

fn toml_message(e: &toml::de::Error) -> String {
    let msg = e.message().trim_end_matches('.').to_string();
    match e.span() {
        Some(_) => {
            // The full rendering carries line and column; keep its first line.
            let full = e.to_string();
            let loc = full
                .lines()
                .next()
                .unwrap_or("")
                .trim_end_matches(':')
                .to_string();
            format!("{loc}: {msg}")
        }
        None => msg,
    }
}

fn kind(v: &TomlValue) -> &'static str {
    match v {
        TomlValue::String(_) => "a string",
        TomlValue::Integer(_) => "an integer",
        TomlValue::Float(_) => "a float",
        TomlValue::Boolean(_) => "a boolean",
        TomlValue::Datetime(_) => "a datetime",
        TomlValue::Array(_) => "an array",
        TomlValue::Table(_) => "a table",
    }
}

fn to_json(v: &TomlValue) -> Value {
    match v {
        TomlValue::String(s) => Value::from(s.as_str()),
        TomlValue::Integer(i) => Value::from(*i),
        TomlValue::Float(f) => Value::from(*f),
        TomlValue::Boolean(b) => Value::from(*b),
        TomlValue::Datetime(d) => Value::from(d.to_string()),
        TomlValue::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        TomlValue::Table(t) => {
            Value::Object(t.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
    }
}

fn split_path(p: &str) -> Vec<Box<str>> {
    p.split('.').map(Box::from).collect()
}

/// One string, or a non-empty array of strings.
fn string_list(v: &TomlValue) -> Result<Vec<String>, String> {
    match v {
        TomlValue::String(s) if !s.is_empty() => Ok(vec![s.clone()]),
        TomlValue::Array(a) if !a.is_empty() => a
            .iter()
            .map(|x| match x {
                TomlValue::String(s) if !s.is_empty() => Ok(s.clone()),
                other => Err(format!(
                    "must hold non-empty strings, found {}",
                    kind(other)
                )),
            })
            .collect(),
        TomlValue::Array(_) => Err("must not be empty".into()),
        TomlValue::String(_) => Err("must not be empty".into()),
        other => Err(format!(
            "must be a string or an array of strings, found {}",
            kind(other)
        )),
    }
}

fn compile(table: &toml::Table) -> Result<Rules, RulesError> {
    let mut problems = Vec::new();
    for key in table.keys() {
        if !TOP_KEYS.contains(&key.as_str()) {
            problems.push(format!(
                "unknown key `{key}` (expected one of: {})",
                TOP_KEYS.join(", ")
            ));
        }
    }

    let phases: Vec<String> = match table.get("phases") {
        None => DEFAULT_PHASES.iter().map(|s| s.to_string()).collect(),
        Some(v) => match string_list(v) {
            Ok(list) => list,
            Err(e) => {
                problems.push(format!("`phases` {e}"));
                Vec::new()
            }
        },
    };
    for (i, p) in phases.iter().enumerate() {
        if phases[..i].contains(p) {
            problems.push(format!("`phases`: duplicate phase `{p}`"));
        }
    }
    if phases.len() > MAX_PHASES {
        problems.push(format!(
            "`phases`: {} phases given, at most {MAX_PHASES} allowed",
            phases.len()
        ));
    }

    let entries: &[TomlValue] = match table.get("touchpoint") {
        None => &[],
        Some(TomlValue::Array(a)) => a,
        Some(other) => {
            problems.push(format!(
                "`touchpoint` must be an array of tables (`[[touchpoint]]`), found {}",
                kind(other)
            ));
            &[]
        }
    };
    if entries.is_empty() && !table.contains_key("touchpoint") {
        problems.push("no touchpoints: add at least one `[[touchpoint]]`".into());
    }
    if entries.len() > MAX_TOUCHPOINTS {
        problems.push(format!(
            "{} touchpoints given, at most {MAX_TOUCHPOINTS} allowed",
            entries.len()
        ));
    }

    let mut touchpoints = Vec::with_capacity(entries.len());
    let mut matchers = Vec::with_capacity(entries.len());
    let mut exact_names: Vec<Option<Vec<String>>> = Vec::with_capacity(entries.len());
    let mut seen: FxHashMap<String, usize> = FxHashMap::default();
    let mut paths: Vec<Vec<Box<str>>> = Vec::new();

    for (i, entry) in entries.iter().enumerate() {
        let n = i + 1;
        let Some(tp) = entry.as_table() else {
            problems.push(format!(
                "touchpoint {n}: must be a table, found {}",
                kind(entry)
            ));
            continue;
        };
        let name = match tp.get("name") {
            Some(TomlValue::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            Some(TomlValue::String(_)) => {
                problems.push(format!("touchpoint {n}: `name` must not be empty"));
                None
            }
            Some(other) => {
                problems.push(format!(
                    "touchpoint {n}: `name` must be a string, found {}",
                    kind(other)
                ));
                None
            }
            None => {
                problems.push(format!("touchpoint {n}: missing `name`"));
                None
            }
        };
        let label = match &name {
            Some(s) => format!("touchpoint {n} `{s}`"),
            None => format!("touchpoint {n}"),
        };
        let mut err = |msg: String| problems.push(format!("{label}: {msg}"));

        for key in tp.keys() {
            if !TOUCHPOINT_KEYS.contains(&key.as_str()) {
                err(format!(
                    "unknown key `{key}` (expected one of: {})",
                    TOUCHPOINT_KEYS.join(", ")
                ));
            }
        }
        if let Some(s) = &name {
            if let Some(first) = seen.get(s) {
                err(format!(
                    "duplicate name `{s}` (first used by touchpoint {first})"
                ));
            } else {
                seen.insert(s.clone(), n);
            }
        }

        let phase = match tp.get("phase") {
            Some(TomlValue::String(p)) => match phases.iter().position(|x| x == p) {
                Some(idx) => Some(idx),
                None => {
                    err(format!(
                        "unknown phase `{p}` (phases: {})",
                        phases.join(", ")
                    ));
                    None
                }
            },
            Some(other) => {
                err(format!("`phase` must be a string, found {}", kind(other)));
                None
            }
            None => {
                err("missing `phase`".into());
                None
            }
        };

        let mut text = |key: &str| match tp.get(key) {
            None => None,
            Some(TomlValue::String(s)) => Some(s.clone()),
            Some(other) => {
                err(format!("`{key}` must be a string, found {}", kind(other)));
                None
            }
        };
        let description = text("description");
        let channel = text("channel");
        let score_path = text("score");

        let mut flag = |key: &str| match tp.get(key) {
            None => false,
            Some(TomlValue::Boolean(b)) => *b,
            Some(other) => {
                err(format!("`{key}` must be a boolean, found {}", kind(other)));
                false
            }
        };
        let moment_of_truth = flag("moment_of_truth");
        let goal = flag("goal");
        let nps = flag("nps");
        if nps && score_path.is_none() {
            err("`nps = true` needs a `score` attribute path".into());
        }
        let score = score_path.map(|path| ScoreSpec {
            segments: split_path(&path),
            path,
            nps,
        });

        let sources = match tp.get("source").map(string_list) {
            None => Vec::new(),
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                err(format!("`source` {e}"));
                Vec::new()
            }
        };
        let events = match tp.get("event").map(string_list) {
            None => Vec::new(),
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                err(format!("`event` {e}"));
                Vec::new()
            }
        };
        let mut conds = Vec::new();
        match tp.get("where") {
            None => {}
            Some(TomlValue::Table(w)) => {
                if w.is_empty() {
                    err("`where` must not be empty".into());
                }
                for (path, spec) in w {
                    compile_conditions(path, spec, &mut paths, &mut conds, &mut err);
                }
            }
            Some(other) => err(format!("`where` must be a table, found {}", kind(other))),
        }
        if !tp.contains_key("source") && !tp.contains_key("event") && !tp.contains_key("where") {
            err("empty match: give at least one of `source`, `event`, `where`".into());
        }

        let all_exact = !events.is_empty() && !events.iter().any(|e| is_glob(e));
        exact_names.push(all_exact.then(|| events.clone()));
        let globs = if all_exact {
            Vec::new()
        } else {
            events.into_iter().map(Box::from).collect()
        };
        matchers.push(Matcher {
            sources: sources.into_iter().map(Box::from).collect(),
            globs,
            conds,
        });
        touchpoints.push(Touchpoint {
            name: name.unwrap_or_default(),
            phase: phase.unwrap_or(0),
            description,
            channel,
            moment_of_truth,
            goal,
            score,
        });
    }

    if !problems.is_empty() {
        return Err(RulesError { problems });
    }

    let mut by_event: FxHashMap<Box<str>, Vec<u16>> = FxHashMap::default();
    let mut any_event = Vec::new();
    for (i, names) in exact_names.into_iter().enumerate() {
        let idx = i as u16;
        match names {
            Some(names) => {
                for name in names {
                    let list = by_event.entry(name.into()).or_default();
                    if list.last() != Some(&idx) {
                        list.push(idx);
                    }
                }
            }
            None => any_event.push(idx),
        }
    }
    Ok(Rules {
        phases,
        touchpoints,
        matchers,
        by_event,
        any_event,
        paths,
    })
}

fn compile_conditions(
    path: &str,
    spec: &TomlValue,
    paths: &mut Vec<Vec<Box<str>>>,
    out: &mut Vec<Cond>,
    err: &mut impl FnMut(String),
) {
    let split = split_path(path);
    if path.is_empty() || split.iter().any(|s| s.is_empty()) {
        err(format!("where.\"{path}\": empty segment in attribute path"));
        return;
    }
    let segments = match paths.iter().position(|p| *p == split) {
        Some(i) => i,
        None => {
            paths.push(split);
            paths.len() - 1
        }
    };
    let ops = match spec {
        TomlValue::Table(t) => t,
        // Shorthand: `url = "/checkout"` means `url = { eq = "/checkout" }`.
        TomlValue::String(_)
        | TomlValue::Integer(_)
        | TomlValue::Float(_)
        | TomlValue::Boolean(_) => {
            out.push(Cond {
                path: segments,
                op: Op::Eq(to_json(spec)),
            });
            return;
        }
        other => {
            err(format!(
                "where.\"{path}\" must be a value or a table of operators, found {}",
                kind(other)
            ));
            return;
        }
    };
    if ops.is_empty() {
        err(format!("where.\"{path}\": no operator given"));
    }
    for (op, v) in ops {
        let at = format!("where.\"{path}\".{op}");
        let number = |v: &TomlValue| match v {
            TomlValue::Integer(i) => Some(*i as f64),
            TomlValue::Float(f) if f.is_finite() => Some(*f),
            _ => None,
        };
        let string = |v: &TomlValue| v.as_str().map(Box::<str>::from);
        let not = |op: Op| Op::Not(Box::new(op));
        let compiled = match op.as_str() {
            "eq" | "ne" => match v {
                TomlValue::String(_)
                | TomlValue::Integer(_)
                | TomlValue::Float(_)
                | TomlValue::Boolean(_) => Some(Op::Eq(to_json(v))),
                _ => None,
            },
            "in" | "not_in" => match v {
                TomlValue::Array(a) if !a.is_empty() => {
                    Some(Op::In(a.iter().map(to_json).collect()))
                }
                _ => None,
            },
            "prefix" => string(v).map(Op::Prefix),
            "suffix" => string(v).map(Op::Suffix),
            "contains" | "not_contains" => string(v).map(Op::Contains),
            "regex" | "not_regex" => match v.as_str() {
                Some(re) => match regex::RegexBuilder::new(re)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                {
                    Ok(r) => Some(Op::Regex(r)),
                    Err(e) => {
                        let detail = e.to_string();
                        let last = detail.lines().last().unwrap_or("").trim().to_string();
                        err(format!(
                            "{at}: bad regex `{re}`: {}",
                            last.trim_start_matches("error: ")
                        ));
                        continue;
                    }
                },
                None => None,
            },
            "exists" => v.as_bool().map(Op::Exists),
            "gt" => number(v).map(Op::Gt),
            "gte" => number(v).map(Op::Gte),
            "lt" => number(v).map(Op::Lt),
            "lte" => number(v).map(Op::Lte),
            other => {
                err(format!(
                    "where.\"{path}\": unknown operator `{other}` (expected one of: {})",
                    OPERATORS.join(", ")
                ));
                continue;
            }
        };
        let negated = matches!(op.as_str(), "ne" | "not_in" | "not_contains" | "not_regex");
        match compiled {
            Some(c) if negated => out.push(Cond {
                path: segments,
                op: not(c),
            }),
            Some(op) => out.push(Cond { path: segments, op }),
            None => {
                let expected = match op.as_str() {
                    "eq" | "ne" => "a string, number or boolean",
                    "in" | "not_in" => "a non-empty array",
                    "exists" => "a boolean",
                    "gt" | "gte" | "lt" | "lte" => "a number",
                    _ => "a string",
                };
                err(format!("{at} must be {expected}, found {}", kind(v)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn ev<'a>(source: &'a str, name: &'a str, attrs: Value) -> Event<'a> {
        Event {
            event_id: None,
            customer_id: Cow::Borrowed("c"),
            ts: 1_795_341_600_000,
            source: Cow::Borrowed(source),
            name: Cow::Borrowed(name),
            attributes: attrs,
        }
    }

    const RULES: &str = r#"
        [[touchpoint]]
        name = "product"
        phase = "consideration"
        source = "web"
        event = "page_view"
        where = { url = { prefix = "/products/" } }

        [[touchpoint]]
        name = "any_web"
        phase = "awareness"
        source = ["web", "app"]
        event = "page_*"

        [[touchpoint]]
        name = "nps"
        phase = "advocacy"
        event = "survey"
        score = "answer.score"
        nps = true
        where = { "answer.score" = { gte = 0, lte = 10 }, kind = "nps" }

        [[touchpoint]]
        name = "big_order"
        phase = "decision"
        where = { total = { gt = 100 }, currency = { in = ["EUR", "USD"] }, coupon = { exists = false } }

        [[touchpoint]]
        name = "re"
        phase = "retention"
        event = ["ticket_opened", "ticket_reopened"]
        where = { subject = { regex = "^(refund|return)" }, channel = { suffix = "mail", contains = "e" } }
    "#;

    #[test]
    fn first_match_in_file_order_wins() {
        let r = Rules::from_toml(RULES).unwrap();
        let name = |e: &Event<'_>| r.classify(e).map(|i| r.touchpoint(i).name.as_str());
        assert_eq!(
            name(&ev(
                "web",
                "page_view",
                serde_json::json!({"url": "/products/1"})
            )),
            Some("product")
        );
        assert_eq!(
            name(&ev("web", "page_view", serde_json::json!({"url": "/blog"}))),
            Some("any_web")
        );
        assert_eq!(name(&ev("app", "page_open", Value::Null)), Some("any_web"));
        assert_eq!(name(&ev("crm", "page_view", Value::Null)), None);
        let survey = ev(
            "service",
            "survey",
            serde_json::json!({"answer": {"score": 9}, "kind": "nps"}),
        );
        assert_eq!(name(&survey), Some("nps"));
        assert_eq!(r.score(r.classify(&survey).unwrap(), &survey), Some(9.0));
        let order = serde_json::json!({"total": "150.5", "currency": "EUR"});
        assert_eq!(name(&ev("shop", "order", order)), Some("big_order"));
        let coupon = serde_json::json!({"total": 150, "currency": "EUR", "coupon": "X"});
        assert_eq!(name(&ev("shop", "order", coupon)), None);
        let t = serde_json::json!({"subject": "refund please", "channel": "email"});
        assert_eq!(name(&ev("service", "ticket_reopened", t)), Some("re"));
        let t = serde_json::json!({"subject": "refund please", "channel": "phone"});
        assert_eq!(name(&ev("service", "ticket_opened", t)), None);
    }

    fn one_rule(conds: &str) -> Rules {
        Rules::from_toml(&format!(
            "[[touchpoint]]\nname = \"t\"\nphase = \"awareness\"\nwhere = {conds}\n"
        ))
        .unwrap()
    }

    fn holds(r: &Rules, attrs: Value) -> bool {
        r.classify(&ev("web", "x", attrs)).is_some()
    }

    #[test]
    fn numeric_strings_follow_json_number_syntax_and_are_finite() {
        let r = one_rule("{ total = { gte = 100 } }");
        for ok in ["150", "100", "1e3", "1E+3", "100.0", "2.5e2"] {
            assert!(holds(&r, serde_json::json!({ "total": ok })), "{ok}");
        }
        let not_numbers = [
            "Infinity",
            "inf",
            "+inf",
            "-infinity",
            "NaN",
            "nan",
            "1e999",
            "0x200",
            " 150",
            "150 ",
            "+150",
            "150.",
            ".5e3",
            "1_000",
            "",
            "01000",
            "1e",
            "--1",
        ];
        for bad in not_numbers {
            assert!(!holds(&r, serde_json::json!({ "total": bad })), "{bad}");
        }
        let lt = one_rule("{ total = { lt = 10 } }");
        for bad in ["-Infinity", "-inf", "-1e999", "NaN"] {
            assert!(!holds(&lt, serde_json::json!({ "total": bad })), "{bad}");
        }
        assert!(holds(&lt, serde_json::json!({ "total": "-1e300" })));
        assert!(holds(&lt, serde_json::json!({ "total": 5 })));
    }

    #[test]
    fn integers_beyond_2_pow_53_compare_exactly() {
        let big = 9_007_199_254_740_993_i64; // 2^53 + 1: rounds to 2^53 as f64
        let r = one_rule(&format!("{{ id = {{ eq = {big} }} }}"));
        assert!(holds(&r, serde_json::json!({ "id": big })));
        assert!(!holds(&r, serde_json::json!({ "id": big - 1 })));
        assert!(!holds(&r, serde_json::json!({ "id": (big - 1) as f64 })));
        let r = one_rule(&format!("{{ id = {{ in = [{}, 1] }} }}", big - 1));
        assert!(!holds(&r, serde_json::json!({ "id": big })));
        assert!(holds(&r, serde_json::json!({ "id": big - 1 })));
        let r = one_rule("{ id = { eq = 18446744073709551615.0 } }");
        assert!(
            !holds(&r, serde_json::json!({ "id": u64::MAX })),
            "2^64 - 1 is not 2^64"
        );
        let r = one_rule("{ n = 5 }");
        assert!(holds(&r, serde_json::json!({ "n": 5.0 })), "5 equals 5.0");
        assert!(!holds(&r, serde_json::json!({ "n": 5.5 })));
        assert!(
            !holds(&r, serde_json::json!({ "n": "5" })),
            "types must match"
        );
    }

    #[test]
    fn negations_hold_exactly_when_the_positive_form_does_not() {
        let r = one_rule(r#"{ dept = { ne = "toys" } }"#);
        assert!(holds(&r, serde_json::json!({ "dept": "shoes" })));
        assert!(!holds(&r, serde_json::json!({ "dept": "toys" })));
        assert!(holds(&r, serde_json::json!({})), "missing: not equal");
        let r = one_rule(r#"{ dept = { not_in = ["toys", "food", "books"] } }"#);
        assert!(holds(&r, serde_json::json!({ "dept": "shoes" })));
        assert!(!holds(&r, serde_json::json!({ "dept": "food" })));
        let r = one_rule(r#"{ url = { not_contains = "sale" } }"#);
        assert!(holds(&r, serde_json::json!({ "url": "/shoes" })));
        assert!(!holds(&r, serde_json::json!({ "url": "/summer-sale" })));
        let r = one_rule(
            r#"{ url = { not_regex = "^/(admin|internal)/" }, kind = { exists = true } }"#,
        );
        assert!(holds(&r, serde_json::json!({ "url": "/shop/", "kind": 1 })));
        assert!(!holds(
            &r,
            serde_json::json!({ "url": "/admin/x", "kind": 1 })
        ));
        assert!(
            !holds(&r, serde_json::json!({ "url": "/shop/" })),
            "exists still applies"
        );
        let r = one_rule("{ n = { ne = 5 } }");
        assert!(!holds(&r, serde_json::json!({ "n": 5.0 })));
    }

    #[test]
    fn negations_are_validated_like_the_others() {
        let bad = r#"
            [[touchpoint]]
            name = "a"
            phase = "awareness"
            where = { a = { ne = [1] }, b = { not_in = [] }, c = { not_contains = 3 }, d = { not_regex = "(" } }
        "#;
        assert_eq!(
            Rules::from_toml(bad).unwrap_err().problems,
            vec![
                "touchpoint 1 `a`: where.\"a\".ne must be a string, number or boolean, found an array",
                "touchpoint 1 `a`: where.\"b\".not_in must be a non-empty array, found an array",
                "touchpoint 1 `a`: where.\"c\".not_contains must be a string, found an integer",
                "touchpoint 1 `a`: where.\"d\".not_regex: bad regex `(`: unclosed group",
            ]
        );
    }

    /// A pattern whose compiled form is huge is refused and named, like a bad one.
    #[test]
    fn huge_regexes_are_refused() {
        let rules = |re: &str| {
            format!(
                "[[touchpoint]]\nname = \"x\"\nphase = \"awareness\"\nevent = \"v\"\n\
                 where = {{ url = {{ regex = \"{re}\" }} }}\n"
            )
        };
        assert!(Rules::from_toml(&rules("^/(landing|lp/.+)?$")).is_ok());
        let errs = Rules::from_toml(&rules("[a-z]{100000}")).unwrap_err();
        assert!(
            errs.to_string().contains("bad regex `[a-z]{100000}`")
                && errs.to_string().contains("size limit"),
            "{errs}"
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match("page_*", "page_view"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("a?c", "aéc"));
        assert!(glob_match("*view*", "page_view_x"));
        assert!(!glob_match("page_?", "page_xy"));
        assert!(!glob_match("x*", "page"));
        // A `*` in the text is matched by the pattern's `*` as any other character is.
        assert!(glob_match("a*", "a*b"));
        assert!(glob_match("a*", "a*b*c"));
        assert!(glob_match("a*c", "a**c"));
        assert!(!glob_match("a*c", "a*b"));
    }

    proptest::proptest! {
        /// `*` and `?` mean what the regular expression `.*` and `.` mean, whatever the text
        /// holds (including `*` and `?` themselves and non-ASCII characters).
        #[test]
        fn globs_match_as_their_regular_expression(
            pattern in "[ab*?é]{0,6}",
            text in "[ab*?é]{0,8}",
        ) {
            let re: String = pattern
                .chars()
                .map(|c| match c {
                    '*' => ".*".to_string(),
                    '?' => ".".to_string(),
                    c => regex::escape(&c.to_string()),
                })
                .collect();
            let re = regex::Regex::new(&format!("^(?s:{re})$")).unwrap();
            proptest::prop_assert_eq!(glob_match(&pattern, &text), re.is_match(&text));
        }
    }

    #[test]
    fn reports_every_problem_at_once() {
        let bad = r#"
            phases = ["awareness", "decision"]
            colour = 1
            [[touchpoint]]
            name = "a"
            phase = "purchase"
            event = "x"
            [[touchpoint]]
            name = "a"
            phase = "decision"
            event = "y"
            [[touchpoint]]
            name = "c"
            phase = "decision"
            [[touchpoint]]
            name = "d"
            phase = "decision"
            where = { url = { startswith = "/x" }, path = { regex = "(" } }
            [[touchpoint]]
            phase = "decision"
            event = "z"
            sorce = "web"
        "#;
        let e = Rules::from_toml(bad).unwrap_err();
        assert_eq!(
            e.problems,
            vec![
                "unknown key `colour` (expected one of: phases, touchpoint)",
                "touchpoint 1 `a`: unknown phase `purchase` (phases: awareness, decision)",
                "touchpoint 2 `a`: duplicate name `a` (first used by touchpoint 1)",
                "touchpoint 3 `c`: empty match: give at least one of `source`, `event`, `where`",
                "touchpoint 4 `d`: where.\"path\".regex: bad regex `(`: unclosed group",
                "touchpoint 4 `d`: where.\"url\": unknown operator `startswith` (expected one of: eq, ne, in, not_in, prefix, suffix, contains, not_contains, regex, not_regex, exists, gt, gte, lt, lte)",
                "touchpoint 5: missing `name`",
                "touchpoint 5: unknown key `sorce` (expected one of: name, phase, description, channel, moment_of_truth, goal, score, nps, source, event, where)",
            ]
        );
    }

    #[test]
    fn reports_toml_syntax_with_location() {
        let e = Rules::from_toml("[[touchpoint]\nname = 1").unwrap_err();
        assert_eq!(e.problems.len(), 1);
        assert!(e.problems[0].contains("line 1"), "{}", e.problems[0]);
    }
}
