//! Attribute projection: decode only the attribute paths journeyd reads.
//!
//! The engine reads an event's attributes in three places only: the `where` conditions of
//! the rules, the touchpoints' `score` paths (both [`Rules::attribute_paths`]) and the
//! configured breakdown dimensions ([`crate::EngineConfig::breakdowns`]). A [`Projection`] is
//! the set of those paths as a tree; [`Projection::seed`] deserializes an `attributes` object
//! keeping only the keys on a path and skipping everything else with [`IgnoredAny`], so a
//! 1 KB Segment-like record builds a handful of values instead of a tree of dozens.
//!
//! Guarantee (checked by a property test): for every path of the projection, looking it up in
//! the projected value ([`crate::event::lookup`]) gives what it gives in the full value. A
//! path's value is kept whole (with everything nested under it), because conditions such as
//! `exists` and `eq` on an object read all of it. Duplicate keys keep the last occurrence, as
//! `serde_json::Value` does.

use std::cell::Cell;
use std::fmt;
use std::sync::{Arc, RwLock};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::event::{CowStr, RawCanonical};
use crate::Rules;

mod scan;

/// The attribute paths to keep, as a tree of path segments (`page.url` is `page` → `url`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Projection {
    root: Node,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Node {
    /// A path ends here: keep the whole value.
    whole: bool,
    children: Children,
}

/// A node's children by key segment. Decoding looks up every key of every attributes object
/// here, and most keys lead nowhere: the set of key lengths turns those away without a
/// string comparison (a `BTreeMap` compared each key with several children, `memcmp` each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Children {
    /// Ascending by key.
    entries: Vec<(Box<str>, Node)>,
    /// Bit `min(len, 63)` is set for the byte length of every key held.
    lengths: u64,
}

/// A node that keeps nothing: where no path starts at an envelope's attribute.
static NOTHING: Node = Node {
    whole: false,
    children: Children::new(),
};

impl Children {
    const fn new() -> Children {
        Children {
            entries: Vec::new(),
            lengths: 0,
        }
    }

    fn length_bit(key: &str) -> u64 {
        1 << key.len().min(63)
    }

    #[inline]
    fn get(&self, key: &str) -> Option<&Node> {
        if self.lengths & Children::length_bit(key) == 0 {
            return None;
        }
        self.entries
            .iter()
            .find(|(k, _)| k.len() == key.len() && **k == *key)
            .map(|(_, n)| n)
    }

    fn entry(&mut self, key: &str) -> &mut Node {
        let i = match self.entries.binary_search_by(|(k, _)| (**k).cmp(key)) {
            Ok(i) => i,
            Err(i) => {
                self.entries.insert(i, (key.into(), Node::default()));
                self.lengths |= Children::length_bit(key);
                i
            }
        };
        &mut self.entries[i].1
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Projection {
    /// The projection onto `paths`, each split at dots (`page.url`), as rules and breakdowns
    /// write them.
    pub fn new<'p>(paths: impl IntoIterator<Item = &'p [Box<str>]>) -> Projection {
        let mut root = Node::default();
        for path in paths {
            let mut node = &mut root;
            for seg in path {
                node = node.children.entry(seg);
            }
            node.whole = true;
        }
        Projection { root }
    }

    /// Every attribute path the engine reads with `rules` and the breakdown dimensions
    /// `breakdowns` (dotted paths, `breakdown.attributes`).
    pub fn for_engine(rules: &Rules, breakdowns: &[String]) -> Projection {
        Projection::for_rule_sets(&[rules], breakdowns)
    }

    /// Every attribute path any of `rule_sets` or the breakdowns read. While rules are being
    /// replaced, records decoded now may still be applied under the old rules (they are
    /// queued behind the swap), so decoders keep the paths of both.
    pub fn for_rule_sets(rule_sets: &[&Rules], breakdowns: &[String]) -> Projection {
        let split: Vec<Vec<Box<str>>> = breakdowns
            .iter()
            .map(|b| b.split('.').map(Box::from).collect())
            .collect();
        Projection::new(
            rule_sets
                .iter()
                .flat_map(|r| r.attribute_paths())
                .chain(split.iter().map(Vec::as_slice)),
        )
    }

    /// Whether nothing is kept (no rule or breakdown reads an attribute).
    pub fn is_empty(&self) -> bool {
        !self.root.whole && self.root.children.is_empty()
    }

    /// A seed that deserializes an `attributes` value into its projection: an object keeps
    /// the keys on a path (recursively), anything else (an array, a scalar) becomes `null`,
    /// since no path leads into it. `null` stays `null`.
    pub fn seed(&self) -> ProjectedValue<'_> {
        ProjectedValue {
            node: &self.root,
            not_object: None,
        }
    }

    /// Like [`Projection::seed`], for a value that must be an object or `null` (canonical
    /// `attributes`): anything else fails to deserialize and sets `not_object`, so the caller
    /// can report a type error rather than bad JSON.
    pub fn object_seed<'p>(&'p self, not_object: &'p Cell<bool>) -> ProjectedValue<'p> {
        ProjectedValue {
            node: &self.root,
            not_object: Some(not_object),
        }
    }

    /// Like [`Projection::object_seed`], for the value the attribute `key` will hold: the
    /// envelope objects that formats file under one attribute (Segment's `context` and
    /// `traits`). Keeps nothing, but still checks the type, when no path starts at `key`.
    pub fn object_seed_under<'p>(
        &'p self,
        key: &str,
        not_object: &'p Cell<bool>,
    ) -> ProjectedValue<'p> {
        ProjectedValue {
            node: self.root.children.get(key).unwrap_or(&NOTHING),
            not_object: Some(not_object),
        }
    }

    /// A canonical record's envelope and projected attributes by the byte scanner, or `None`
    /// where the serde path must decode it (`projection::scan`).
    pub(crate) fn scan_canonical<'a>(&self, text: &'a str) -> Option<RawCanonical<'a>> {
        scan::canonical(text, self)
    }

    /// What [`Projection::object_seed`] (`under: None`) or [`Projection::object_seed_under`]
    /// deserializes from `text`, the text of a JSON object, built by the byte scanner
    /// (`projection::scan`); `None` where the seed must decide it (anything that is not an
    /// object of the usual shape, including every error).
    pub fn scan_object(&self, text: &str, under: Option<&str>) -> Option<Value> {
        let node = match under {
            None => &self.root,
            Some(key) => self.root.children.get(key).unwrap_or(&NOTHING),
        };
        scan::object(text, node)
    }

    /// For a record whose top-level `fields` hold objects filed under attributes (a Segment
    /// call's `properties`, `context` and `traits`: `(field, None)` projects from the root,
    /// `(field, Some(key))` from the attribute `key`): each object that is present as its
    /// byte range in `text` and what [`Projection::scan_object`] gives for it, in record
    /// order, after the byte scanner checked the grammar of the whole record. `None` where
    /// serde must decide the record: a field twice or not an object, escaped keys, bad JSON.
    pub fn scan_envelope(
        &self,
        text: &str,
        fields: &[(&str, Option<&str>)],
    ) -> Option<Vec<(usize, std::ops::Range<usize>, Value)>> {
        let keys: Vec<&str> = fields.iter().map(|(f, _)| *f).collect();
        let nodes: Vec<&Node> = fields
            .iter()
            .map(|(_, under)| match under {
                None => &self.root,
                Some(key) => self.root.children.get(key).unwrap_or(&NOTHING),
            })
            .collect();
        scan::envelope_objects(text, &keys, &nodes)
    }

    /// The projection of an already parsed value (for formats that build the value first).
    pub fn apply(&self, v: Value) -> Value {
        project(&self.root, v)
    }
}

/// The projection decoders apply, shared by every decoder of a process and replaced whole when
/// the rules change: a record decoded after [`SharedProjection::store`] gets the new one
/// (events already decoded and queued keep what they were decoded with). Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct SharedProjection(Arc<RwLock<Arc<Projection>>>);

impl SharedProjection {
    pub fn new(p: Projection) -> SharedProjection {
        SharedProjection(Arc::new(RwLock::new(Arc::new(p))))
    }

    /// Replaces the projection for records decoded from now on.
    pub fn store(&self, p: Projection) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(p);
    }

    /// The current projection.
    pub fn load(&self) -> Arc<Projection> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn project(node: &Node, v: Value) -> Value {
    if node.whole {
        return v;
    }
    match v {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                if let Some(child) = node.children.get(k.as_str()) {
                    out.insert(k, project(child, v));
                }
            }
            Value::Object(out)
        }
        _ => Value::Null,
    }
}

/// [`DeserializeSeed`] of [`Projection::seed`].
#[derive(Debug, Clone, Copy)]
pub struct ProjectedValue<'p> {
    node: &'p Node,
    /// Set (and the value rejected) when the value is neither an object nor `null`; `None`
    /// accepts any value.
    not_object: Option<&'p Cell<bool>>,
}

impl ProjectedValue<'_> {
    /// `null` for a value no path leads into, or an error where an object was required.
    fn scalar<E: de::Error>(self) -> Result<Value, E> {
        match self.not_object {
            None => Ok(Value::Null),
            Some(flag) => {
                flag.set(true);
                Err(E::custom("expected an object"))
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for ProjectedValue<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.node.whole {
            Value::deserialize(d)
        } else {
            d.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for ProjectedValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<CowStr<'de>>()? {
            match self.node.children.get(&key.0) {
                Some(child) => {
                    let v = map.next_value_seed(ProjectedValue {
                        node: child,
                        not_object: None,
                    })?;
                    out.insert(key.0.into_owned(), v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.not_object.is_some() {
            return self.scalar();
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Null)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Value, E> {
        self.scalar()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Value, E> {
        self.scalar()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Value, E> {
        self.scalar()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Value, E> {
        self.scalar()
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Value, E> {
        self.scalar()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::lookup;
    use proptest::prelude::*;

    fn split(p: &str) -> Vec<Box<str>> {
        p.split('.').map(Box::from).collect()
    }

    /// Keys from a small alphabet, so that random paths often hit, with escapes and unicode.
    pub(super) fn key() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "a", "b", "url", "pa\"ge", "ü", "x.y", "", "\\n", "ключ",
        ])
        .prop_map(str::to_string)
    }

    pub(super) fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-z\"\\\\ü\u{1F600}/\n]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    pub(super) fn paths() -> impl Strategy<Value = Vec<Vec<Box<str>>>> {
        prop::collection::vec(prop::collection::vec(key().prop_map(Box::from), 1..4), 0..5)
    }

    /// Text of `v` with a duplicate of its first key appended (the full decoder keeps the
    /// last occurrence, so must the projection).
    fn with_duplicate(v: &Value) -> String {
        let text = v.to_string();
        match v.as_object().and_then(|m| m.keys().next()) {
            Some(k) if text.len() > 2 => format!(
                "{},{}:{{\"dup\":true}}}}",
                &text[..text.len() - 1],
                Value::from(k.as_str())
            ),
            _ => text,
        }
    }

    proptest! {
        #[test]
        fn projected_lookups_equal_full_lookups(v in json(), paths in paths(), dup in any::<bool>()) {
            let text = if dup { with_duplicate(&v) } else { v.to_string() };
            let full: Value = serde_json::from_str(&text).unwrap();
            let projection = Projection::new(paths.iter().map(Vec::as_slice));
            let mut de = serde_json::Deserializer::from_str(&text);
            let projected = projection.seed().deserialize(&mut de).unwrap();
            de.end().unwrap();
            for p in &paths {
                prop_assert_eq!(lookup(&projected, p), lookup(&full, p), "path {:?} of {}", p, text);
            }
            prop_assert_eq!(&projection.apply(full), &projected);
        }
    }

    /// A canonical record around `attributes` (any JSON text).
    fn record(attributes: &str) -> String {
        format!(
            r#"{{"customer_id":"c-ü\"1","ts":1767225600000,"event":"e","attributes":{attributes}}}"#
        )
    }

    proptest! {
        /// Issue 14: the projected canonical decoder gives, for every path of the projection,
        /// what the full decoder gives, and the same envelope (ids with escapes and unicode),
        /// or the same error.
        #[test]
        fn projected_decoding_equals_full_decoding(v in json(), paths in paths(), dup in any::<bool>()) {
            use crate::event::{decode_canonical, decode_canonical_projected};
            let attrs = if dup { with_duplicate(&v) } else { v.to_string() };
            let line = record(&attrs);
            let projection = Projection::new(paths.iter().map(Vec::as_slice));
            let limits = Default::default();
            let full = decode_canonical(line.as_bytes(), "web", &limits);
            let projected = decode_canonical_projected(line.as_bytes(), "web", &limits, Some(&projection));
            match (&full, &projected) {
                (Ok(f), Ok(p)) => {
                    for path in &paths {
                        prop_assert_eq!(f.attribute(path), p.attribute(path), "path {:?} of {}", path, line);
                    }
                    prop_assert_eq!((&f.customer_id, f.ts, &f.name, &f.source), (&p.customer_id, p.ts, &p.name, &p.source));
                }
                (Err(f), Err(p)) => prop_assert_eq!(f, p),
                _ => prop_assert!(false, "{}: {:?} vs {:?}", line, full, projected),
            }
        }
    }

    #[test]
    fn children_are_found_by_length_then_bytes() {
        let (long, longer) = ("k".repeat(63), "k".repeat(70));
        let paths = [
            split("url"),
            split("utm_medium"),
            split(&longer),
            split("page.url"),
        ];
        let p = Projection::new(paths.iter().map(Vec::as_slice));
        let root = &p.root.children;
        for key in ["url", "utm_medium", longer.as_str(), "page"] {
            assert!(root.get(key).is_some(), "{key}");
        }
        // Same length as a child, a length no child has, and one sharing the top length bit.
        for key in ["uri", "ur", "", long.as_str(), "k".repeat(71).as_str()] {
            assert!(root.get(key).is_none(), "{key}");
        }
        assert!(root
            .get("page")
            .is_some_and(|n| n.children.get("url").is_some()));
        let keys: Vec<&str> = root.entries.iter().map(|(k, _)| &**k).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "ascending: {keys:?}");
    }

    #[test]
    fn keeps_only_the_paths_and_whole_values_under_them() {
        let text = r#"{"url":"/p","context":{"page":{"url":"u","title":"t"},"ip":"1"},
                      "tags":["a"],"score":{"v":1},"other":{"deep":[1,{"x":2}]}}"#;
        let p = Projection::new(
            [split("url"), split("context.page.url"), split("score")]
                .iter()
                .map(Vec::as_slice),
        );
        let mut de = serde_json::Deserializer::from_str(text);
        let v = p.seed().deserialize(&mut de).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"url": "/p", "context": {"page": {"url": "u"}}, "score": {"v": 1}})
        );
        // A path through a non-object finds nothing, in both forms.
        let p = Projection::new([split("url.x")].iter().map(Vec::as_slice));
        let v = p
            .seed()
            .deserialize(&mut serde_json::Deserializer::from_str(text))
            .unwrap();
        assert_eq!(v, serde_json::json!({"url": null}));
        assert_eq!(lookup(&v, &split("url.x")), None);
    }

    #[test]
    fn projected_canonical_decoding_accepts_and_rejects_what_full_decoding_does() {
        use crate::event::{decode_canonical, decode_canonical_projected};
        let p = Projection::new([split("url")].iter().map(Vec::as_slice));
        let limits = Default::default();
        let head = r#"{"customer_id":"c","ts":1767225600000,"event":"e","attributes":"#;
        for attrs in [
            r#"{"url":"/p","noise":{"a":[1,2,{"b":"ü"x"}]}}"#,
            r#"null"#,
            r#"[1,2]"#,
            r#""text""#,
            r#"5"#,
            r#"{"url":"/p","noise":[1,}"#,
        ] {
            let line = format!("{head}{attrs}}}");
            let full = decode_canonical(line.as_bytes(), "web", &limits);
            let projected = decode_canonical_projected(line.as_bytes(), "web", &limits, Some(&p));
            match (&full, &projected) {
                (Ok(f), Ok(pr)) => {
                    assert_eq!(f.attribute(&split("url")), pr.attribute(&split("url")));
                    assert_eq!((&f.customer_id, f.ts), (&pr.customer_id, pr.ts));
                }
                (Err(f), Err(pr)) => assert_eq!(f.reason(), pr.reason(), "{line}"),
                _ => panic!("{line}: {full:?} vs {projected:?}"),
            }
        }
        let ok = format!("{head}{{\"url\":\"/p\",\"big\":{{\"x\":1}}}}}}");
        let ev = decode_canonical_projected(ok.as_bytes(), "web", &limits, Some(&p)).unwrap();
        assert_eq!(ev.attributes, serde_json::json!({"url": "/p"}));
    }

    #[test]
    fn engine_projection_holds_rule_score_and_breakdown_paths() {
        let rules = Rules::from_toml(
            r#"
            [[touchpoint]]
            name = "a"
            phase = "awareness"
            where = { "page.url" = { prefix = "/" }, utm = "x" }
            [[touchpoint]]
            name = "b"
            phase = "advocacy"
            event = "survey"
            score = "answer.nps"
            "#,
        )
        .unwrap();
        let p = Projection::for_engine(&rules, &["persona".to_string()]);
        let expected = Projection::new(
            [
                split("page.url"),
                split("utm"),
                split("answer.nps"),
                split("persona"),
            ]
            .iter()
            .map(Vec::as_slice),
        );
        assert_eq!(p, expected);
        assert!(!p.is_empty());
        let none = Rules::from_toml(
            "[[touchpoint]]\nname = \"a\"\nphase = \"awareness\"\nevent = \"x\"\n",
        )
        .unwrap();
        assert!(Projection::for_engine(&none, &[]).is_empty());
    }
}
