//! A byte scanner for records on the projected path (issue 14).
//!
//! serde_json spends most of a realistic record's decode walking values nobody reads: its
//! `ignore_value` through visitor calls, and a string search per key and per value. This
//! scanner walks the bytes once, checks the JSON grammar as it skips, and builds only the
//! envelope and the projected attributes. Three entry points: [`canonical`] for a whole
//! canonical record; [`envelope_objects`] for the objects a Segment call or a CloudEvent
//! files under attributes, while it checks the rest of the record; [`object`] for one
//! object's text.
//!
//! It takes the common shape only. Whenever a record is anything else (an escaped key or
//! envelope string, a number as an identifier, a `ts` that is not an integer or a plain RFC
//! 3339 string, bad syntax, nesting deeper than [`MAX_DEPTH`]) it gives up and the serde path
//! decodes the record, so accepted records, their events and every error are the serde
//! path's. Kept values that need more than a plain string (numbers, escapes, objects) are
//! parsed by serde_json from their own bytes. A property test holds the two paths equal.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::{Node, Projection};
use crate::event::RawCanonical;
use crate::time::Millis;

/// Nesting (objects and arrays, the record itself included) beyond which the scanner gives up:
/// well inside serde_json's limit of 128, so the serde path decides every deep record.
const MAX_DEPTH: usize = 48;

/// The envelope and projected attributes of a canonical record, or `None` when the serde path
/// must decode it (see the module note). `text` is the whole record.
pub(crate) fn canonical<'a>(text: &'a str, projection: &Projection) -> Option<RawCanonical<'a>> {
    let mut raw = RawCanonical::default();
    Scanner::new(text).record(|s, key| {
        match key {
            "customer_id" => raw.customer_id = s.plain_string_or_null()?,
            "event_id" => raw.event_id = s.plain_string_or_null()?,
            "event" => raw.name = s.plain_string_or_null()?,
            "source" => raw.source = s.plain_string_or_null()?,
            "ts" => raw.ts = s.ts()?,
            "attributes" => {
                raw.attributes = Some(match s.peek()? {
                    b'{' => s.projected(&projection.root, 1)?,
                    b'n' => {
                        s.literal(b"null")?;
                        Value::Null
                    }
                    // Not an object: the serde path reports the type.
                    _ => return None,
                })
            }
            _ => s.skip_value(1)?,
        }
        Some(())
    })?;
    Some(raw)
}

/// The projection below `node` of `text`, the text of a value that must be an object (an
/// envelope's `properties`, `context` or `data`), or `None` when serde must decide it: what
/// [`super::Projection::object_seed`] deserializes from the same text.
pub(crate) fn object(text: &str, node: &Node) -> Option<Value> {
    let mut s = Scanner::new(text);
    s.ws();
    if s.peek()? != b'{' {
        return None;
    }
    let v = s.projected(node, 1)?;
    s.end()?;
    Some(v)
}

/// The objects at top-level keys `keys` of `text`, a whole record (an envelope such as a
/// Segment call), projected below `nodes` (one per key): each as the byte range of its value
/// and its projection, in record order. Every other value of the record is skipped, its
/// grammar checked, so a record this returns is JSON throughout. `None` (serde must decide)
/// for anything unusual: a key with escapes, one of `keys` twice, a value at one of `keys`
/// that is not an object, or what [`canonical`] gives up on.
pub(crate) fn envelope_objects(
    text: &str,
    keys: &[&str],
    nodes: &[&Node],
) -> Option<Vec<(usize, std::ops::Range<usize>, Value)>> {
    let mut found: Vec<(usize, std::ops::Range<usize>, Value)> = Vec::new();
    Scanner::new(text).record(|s, key| {
        match keys.iter().position(|k| *k == key) {
            Some(k) => {
                if s.peek()? != b'{' || found.iter().any(|(f, _, _)| *f == k) {
                    return None;
                }
                let start = s.i;
                let v = s.projected(nodes.get(k)?, 1)?;
                found.push((k, start..s.i, v));
            }
            None => s.skip_value(1)?,
        }
        Some(())
    })?;
    Some(found)
}

struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    /// The next byte to read.
    i: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Scanner<'a> {
        Scanner {
            text,
            b: text.as_bytes(),
            i: 0,
        }
    }

    /// Walks a whole record, a top-level object: `field` reads or skips the value of each key
    /// (without escapes), positioned at the value. Checks that nothing but whitespace follows.
    fn record(&mut self, mut field: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.ws();
        self.expect(b'{')?;
        self.ws();
        if !self.eat(b'}') {
            loop {
                let key = self.key()?;
                field(self, key)?;
                self.ws();
                match self.next()? {
                    b',' => self.ws(),
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        self.end()
    }

    /// Only whitespace is left.
    fn end(&mut self) -> Option<()> {
        self.ws();
        (self.i == self.b.len()).then_some(())
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    /// Consumes `c` if it is next.
    #[inline]
    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        self.i += usize::from(hit);
        hit
    }

    #[inline]
    fn expect(&mut self, c: u8) -> Option<()> {
        self.eat(c).then_some(())
    }

    /// Skips JSON whitespace (RFC 8259 §2: space, tab, line feed, carriage return).
    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    #[inline]
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// An object key without escapes, and the `:` after it with the whitespace around it.
    #[inline(always)]
    fn key(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let (s, escaped) = self.string()?;
        if escaped {
            return None;
        }
        self.colon()?;
        Some(s)
    }

    /// A key that is skipped with its object (any escapes), and the `:` after it.
    #[inline(always)]
    fn skip_key(&mut self) -> Option<()> {
        self.expect(b'"')?;
        self.skip_string()?;
        self.colon()
    }

    #[inline(always)]
    fn colon(&mut self) -> Option<()> {
        self.ws();
        self.expect(b':')?;
        self.ws();
        Some(())
    }

    /// The rest of a string whose opening quote was read: its raw text (escapes as written)
    /// and whether it has escapes ([`Scanner::skip_string`]).
    #[inline(always)]
    fn string(&mut self) -> Option<(&'a str, bool)> {
        let start = self.i;
        let escaped = self.skip_string()?;
        Some((self.text.get(start..self.i - 1)?, escaped))
    }

    /// Skips the rest of a string whose opening quote was read; whether it has escapes. Checks
    /// escapes as serde_json does when it skips a string (`\u` needs four hex digits, lone
    /// surrogates pass) and refuses control characters.
    #[inline(always)]
    fn skip_string(&mut self) -> Option<bool> {
        let mut escaped = false;
        loop {
            self.i = string_stop(self.b, self.i);
            match self.next()? {
                b'"' => return Some(escaped),
                b'\\' => {
                    escaped = true;
                    match self.next()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let hex = self.b.get(self.i..self.i + 4)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.i += 4;
                        }
                        _ => return None,
                    }
                }
                // A control character.
                _ => return None,
            }
        }
    }

    /// A string without escapes (borrowed), or `null` (absent, SPEC §1).
    fn plain_string_or_null(&mut self) -> Option<Option<Cow<'a, str>>> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                match self.string()? {
                    (s, false) => Some(Some(Cow::Borrowed(s))),
                    _ => None,
                }
            }
            b'n' => self.literal(b"null").map(|()| None),
            _ => None,
        }
    }

    /// `ts`: integer epoch milliseconds within `i64`, an RFC 3339 string without escapes, or
    /// `null`.
    fn ts(&mut self) -> Option<Option<Millis>> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                match self.string()? {
                    (s, false) => crate::event::parse_rfc3339(s).map(Some),
                    _ => None,
                }
            }
            b'n' => self.literal(b"null").map(|()| None),
            _ => {
                let start = self.i;
                if !self.number()? {
                    return None;
                }
                self.text.get(start..self.i)?.parse().ok().map(Some)
            }
        }
    }

    /// A number by RFC 8259's grammar (no leading zeros, digits after `.` and `e`); whether it
    /// is an integer (no fraction, no exponent).
    #[inline]
    fn number(&mut self) -> Option<bool> {
        self.eat(b'-');
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let mut integer = true;
        if self.eat(b'.') {
            integer = false;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            integer = false;
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.some_digits()?;
        }
        Some(integer)
    }

    #[inline]
    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    #[inline]
    fn some_digits(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }

    /// The projection of the value that starts here at nesting `depth`: `node`'s keys of an
    /// object (recursively), the whole value where a path ends, and `null` for anything a
    /// path leads into that is not an object (as [`super::ProjectedValue`] does).
    fn projected(&mut self, node: &Node, depth: usize) -> Option<Value> {
        if node.whole {
            return self.whole(depth);
        }
        match self.peek()? {
            b'{' => {}
            b'"' => {
                let start = self.i;
                self.i += 1;
                // serde reads the string itself here: escapes must form valid text.
                if self.skip_string()? {
                    serde_json::from_str::<String>(self.text.get(start..self.i)?).ok()?;
                }
                return Some(Value::Null);
            }
            b'-' | b'0'..=b'9' => {
                // serde reads the number itself here: out of range (`1e400`) is an error.
                let start = self.i;
                self.number()?;
                serde_json::from_str::<Value>(self.text.get(start..self.i)?).ok()?;
                return Some(Value::Null);
            }
            _ => {
                self.skip_value(depth)?;
                return Some(Value::Null);
            }
        }
        if depth >= MAX_DEPTH {
            return None;
        }
        self.i += 1;
        let mut out = Map::new();
        self.ws();
        if self.eat(b'}') {
            return Some(Value::Object(out));
        }
        loop {
            let key = self.key()?;
            match node.children.get(key) {
                Some(child) => {
                    let v = self.projected(child, depth + 1)?;
                    out.insert(key.to_owned(), v);
                }
                // Most unread values are strings: skipped here, without a call.
                None if self.eat(b'"') => {
                    self.skip_string()?;
                }
                None => self.skip_value(depth + 1)?,
            }
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b'}' => return Some(Value::Object(out)),
                _ => return None,
            }
        }
    }

    /// A whole value kept: a plain string directly, anything else parsed by serde_json from
    /// its own bytes once skipped.
    fn whole(&mut self, depth: usize) -> Option<Value> {
        let start = self.i;
        if self.peek()? == b'"' {
            self.i += 1;
            if let (s, false) = self.string()? {
                return Some(Value::String(s.to_owned()));
            }
        } else {
            self.skip_value(depth)?;
        }
        serde_json::from_str(self.text.get(start..self.i)?).ok()
    }

    /// Skips one value that starts here (whitespace before it already skipped), checking its
    /// grammar as serde_json's `ignore_value` does. `depth` is the nesting it starts at.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        // The open containers, innermost in the lowest bit: 1 an object, 0 an array.
        let mut open: u64 = 0;
        let mut n = 0usize;
        'value: loop {
            match self.next()? {
                b'"' => {
                    self.skip_string()?;
                }
                c @ (b'{' | b'[') => {
                    self.ws();
                    if !self.eat(if c == b'{' { b'}' } else { b']' }) {
                        if depth + n >= MAX_DEPTH {
                            return None;
                        }
                        open = open << 1 | u64::from(c == b'{');
                        n += 1;
                        if c == b'{' {
                            self.skip_key()?;
                        }
                        continue 'value;
                    }
                }
                b't' => {
                    self.i -= 1;
                    self.literal(b"true")?;
                }
                b'f' => {
                    self.i -= 1;
                    self.literal(b"false")?;
                }
                b'n' => {
                    self.i -= 1;
                    self.literal(b"null")?;
                }
                b'-' | b'0'..=b'9' => {
                    self.i -= 1;
                    self.number()?;
                }
                _ => return None,
            }
            // After a value: the next element, or the ends of the containers it closes.
            while n > 0 {
                self.ws();
                let object = open & 1 == 1;
                match self.next()? {
                    b',' => {
                        self.ws();
                        if object {
                            self.skip_key()?;
                        }
                        continue 'value;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return None,
                }
                open >>= 1;
                n -= 1;
            }
            return Some(());
        }
    }
}

/// The index of the first `"`, `\` or control character (below 0x20) at or after `i` in `b`,
/// or `b.len()`. Eight bytes at a time: a byte below `k` sets its top bit in `(x - k) & !x`
/// (Mycroft's zero-byte test), and only the lowest flagged byte is exact, which is the one
/// used.
#[inline(always)]
fn string_stop(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::MAX / 255;
    const TOPS: u64 = ONES << 7;
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or([b'"'; 8]));
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        let hits = (x.wrapping_sub(ONES * 0x20) & !x)
            | (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash);
        let hits = hits & TOPS;
        if hits != 0 {
            return i + hits.trailing_zeros() as usize / 8;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            break;
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::super::tests::{json, key, paths};
    use super::*;
    use crate::event::decode_raw_canonical;
    use proptest::prelude::*;

    /// One envelope field as producers write it, in the forms the scanner takes and the forms
    /// it leaves to serde.
    fn field() -> impl Strategy<Value = String> {
        let id = prop::sample::select(vec![
            r#""c-1""#,
            r#""c-ü\"1""#,
            "42",
            "-7",
            "1.0",
            "null",
            r#""""#,
            "true",
            "{}",
        ]);
        let ts = prop::sample::select(vec![
            "1767225600000",
            r#""2026-01-01T00:00:00Z""#,
            r#""2026-01-01T00:00:00.5+02:00""#,
            "1.7e12",
            "-0",
            "01",
            r#""yesterday""#,
            "99999999999999999999",
            "null",
            "[]",
        ]);
        prop_oneof![
            id.clone().prop_map(|v| format!(r#""customer_id":{v}"#)),
            id.clone().prop_map(|v| format!(r#""event_id" : {v}"#)),
            id.clone().prop_map(|v| format!(r#""event":{v}"#)),
            id.prop_map(|v| format!("\"source\":\t{v}")),
            ts.prop_map(|v| format!(r#""ts":{v}"#)),
            json().prop_map(|v| format!(r#""attributes":{v}"#)),
            (key(), json()).prop_map(|(k, v)| format!("{}:{v}", Value::from(k))),
            // What a `serde_json::Value` cannot hold, where serde skips it and where it reads it.
            prop::sample::select(vec![
                r#""attributes":{"url":{"a":1e400},"ü":[-1e999]}"#,
                r#""attributes":{"a":1e400,"b":{"a":"\ud800"}}"#,
                r#""attributes":{"b":"\ud800\u00fc","url":"x\udc00"}"#,
            ])
            .prop_map(str::to_string),
        ]
    }

    /// A canonical record: the usual fields, some of [`field`] in any order, and sometimes one
    /// byte mutated (deleted, or replaced by a byte that matters to JSON) to make it invalid.
    fn record() -> impl Strategy<Value = String> {
        let usual = r#""customer_id":"c-1","ts":1767225600000,"event":"e""#;
        let bytes = prop::sample::select(vec![
            None,
            Some(b'"'),
            Some(b'\\'),
            Some(b','),
            Some(b':'),
            Some(b'}'),
            Some(b']'),
            Some(b'0'),
            Some(b'e'),
            Some(b'u'),
            Some(b' '),
            Some(0x01),
        ]);
        (
            prop::collection::vec(field(), 0..5),
            any::<bool>(),
            prop::option::of((any::<prop::sample::Index>(), bytes)),
        )
            .prop_map(move |(fields, lead, mutation)| {
                let mut parts = vec![usual.to_string()];
                parts.extend(fields);
                if lead {
                    parts.rotate_right(1);
                }
                let mut text = format!(" {{{}}} ", parts.join(" , "));
                if let Some((at, byte)) = mutation {
                    let i = at.index(text.len());
                    if text.is_char_boundary(i) && text.is_char_boundary(i + 1) {
                        let mut b = std::mem::take(&mut text).into_bytes();
                        match byte {
                            None => drop(b.remove(i)),
                            Some(c) => b[i] = c,
                        }
                        text = String::from_utf8(b).unwrap_or_default();
                    }
                }
                text
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        /// Whatever the scanner decodes, the serde path decodes the same (envelope and
        /// projected attributes); what it gives up on, the serde path decides.
        #[test]
        fn scanned_records_equal_the_serde_path(text in record(), paths in paths()) {
            let projection = Projection::new(paths.iter().map(Vec::as_slice));
            if let Some(raw) = canonical(&text, &projection) {
                let serde = decode_raw_canonical(&text, Some(&projection));
                prop_assert_eq!(Ok(&raw), serde.as_ref(), "{}", text);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]
        /// An object's text projected by the scanner equals what the projection's seed
        /// deserializes from it, whenever the scanner decides.
        #[test]
        fn scanned_objects_equal_the_seed(
            kv in prop::collection::vec((key(), json()), 0..6),
            paths in paths(),
            cut in any::<prop::sample::Index>(),
        ) {
            use serde::de::DeserializeSeed;
            let projection = Projection::new(paths.iter().map(Vec::as_slice));
            let text = Value::Object(kv.into_iter().collect()).to_string();
            // Whole, and cut short (no longer JSON).
            let short = text.get(..cut.index(text.len() + 1)).unwrap_or_default();
            for text in [text.as_str(), short] {
                if let Some(scanned) = object(text, &projection.root) {
                    let flag = std::cell::Cell::new(false);
                    let seed = projection
                        .object_seed(&flag)
                        .deserialize(&mut serde_json::Deserializer::from_str(text))
                        .ok();
                    prop_assert_eq!(Some(&scanned), seed.as_ref(), "{}", text);
                }
            }
        }
    }

    fn split(p: &str) -> Vec<Box<str>> {
        p.split('.').map(Box::from).collect()
    }

    #[test]
    fn the_usual_records_are_scanned_not_left_to_serde() {
        let paths = [split("url"), split("page.url"), split("n")];
        let projection = Projection::new(paths.iter().map(Vec::as_slice));
        for text in [
            r#"{"customer_id":"c","ts":1767225600000,"event":"e","attributes":{"url":"/p"}}"#,
            r#"{"event_id":"x","customer_id":"c","ts":"2026-01-01T00:00:00Z","event":"e","source":"web","attributes":{"context":{"a":[1,-2.5e3,true,null,"q\"\u00fc"],"b":{"c":[],"d":{}}},"page":{"url":"/é","t":{}},"n":[1,{"b":2,"c":false}],"x":"y"}}"#,
            " { \"customer_id\" : \"c\" , \"ts\" : 0 , \"event\" : \"e\" , \"attributes\" : null }  ",
        ] {
            let raw = canonical(text, &projection);
            assert!(raw.is_some(), "{text}");
            assert_eq!(raw, decode_raw_canonical(text, Some(&projection)).ok(), "{text}");
        }
        let raw = canonical(
            r#"{"customer_id":"c","ts":1,"event":"e","attributes":{"page":{"url":"/é","t":1},"n":[1,{"b":2}],"url":"a\"b","x":"y"}}"#,
            &projection,
        );
        assert_eq!(
            raw.and_then(|r| r.attributes),
            Some(serde_json::json!({"page": {"url": "/é"}, "n": [1, {"b": 2}], "url": "a\"b"}))
        );
    }

    #[test]
    fn what_serde_must_decide_is_left_to_it() {
        let projection =
            Projection::new([split("url"), split("page.url")].iter().map(Vec::as_slice));
        let head = r#"{"customer_id":"c","ts":1,"event":"e","#;
        for rest in [
            r#""attributes":{"url":"/p"}x}"#.to_string(),
            r#""customer_\u0069d":"d"}"#.to_string(),
            r#""event":"\u0065"}"#.to_string(),
            r#""ts":1.5}"#.to_string(),
            r#""ts":9223372036854775808}"#.to_string(),
            r#""ts":"\u0032026-01-01T00:00:00Z"}"#.to_string(),
            r#""attributes":[]}"#.to_string(),
            r#""attributes":{"url":{"x":1e400}}}"#.to_string(),
            r#""attributes":{"url":"\ud800"}}"#.to_string(),
            r#""attributes":{"page":1e400}}"#.to_string(),
            r#""attributes":{"page":"\udc00"}}"#.to_string(),
            r#""x":01}"#.to_string(),
            r#""x":"a\qb"}"#.to_string(),
            format!(r#""x":{}1{}}}"#, "[".repeat(60), "]".repeat(60)),
        ] {
            let text = format!("{head}{rest}");
            assert_eq!(canonical(&text, &projection), None, "{text}");
        }
    }

    #[test]
    fn string_stop_finds_the_first_quote_backslash_or_control_character() {
        for (text, at) in [
            ("abcdefghij\"", 10),
            ("ab\\\"", 2),
            ("abcdefgh\u{1}", 8),
            ("ü\u{1F600}xxxxxxxxxxx\"", 17),
            ("\u{7f}\u{80} ~", 5),
            ("", 0),
            ("short", 5),
        ] {
            assert_eq!(string_stop(text.as_bytes(), 0), at, "{text:?}");
        }
        // Every byte value in every position of a chunk and of the tail, from every start.
        for start in 0..3 {
            for pos in start..12 {
                for c in 0..=255u8 {
                    let mut b = vec![b'a'; 12];
                    b[pos] = c;
                    let stops = c == b'"' || c == b'\\' || c < 0x20;
                    let want = if stops { pos } else { 12 };
                    assert_eq!(string_stop(&b, start), want, "{c} at {pos} from {start}");
                }
            }
        }
    }
}
